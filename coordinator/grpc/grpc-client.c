/* grpc-client.c: calls of tern.v1.Tern on the gRPC C core (tern-grpc-client.h).
 *
 * Each stream owns a pluck completion queue, so threads never share one and
 * a wait with a timeout leaves the pending receive in place: the next wait
 * picks it up. The first receive also carries RECV_INITIAL_METADATA, so
 * starting a call never waits for the server.
 *
 * An event-driven stream (tern_grpc_astream) starts three batches on the
 * shared queue at once: the request, the first receive, and the status.
 * Each completed receive hands its message to msg() and starts the next;
 * end() runs when all three have come back (the status alone may complete
 * before the last receive). */
#include "tern-grpc-client.h"

#include "tern-cq.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tern_grpc_client {
	grpc_channel *ch;
	char auth[1100]; /* "Bearer <token>" or "" */
};

struct tern_grpc_stream {
	grpc_call *call;
	grpc_completion_queue *cq;
	grpc_metadata md;
	grpc_metadata_array init_md, trail_md;
	grpc_byte_buffer *in;
	grpc_slice last; /* the message handed out by next() */
	int has_last;
	int recv_pending, got_initial, ended, cancelled;
	int tag_send, tag_recv, tag_status;
};

const char *tern_grpc_status_name(int code)
{
	static const char *const names[] = {"OK",
					    "CANCELLED",
					    "UNKNOWN",
					    "INVALID_ARGUMENT",
					    "DEADLINE_EXCEEDED",
					    "NOT_FOUND",
					    "ALREADY_EXISTS",
					    "PERMISSION_DENIED",
					    "RESOURCE_EXHAUSTED",
					    "FAILED_PRECONDITION",
					    "ABORTED",
					    "OUT_OF_RANGE",
					    "UNIMPLEMENTED",
					    "INTERNAL",
					    "UNAVAILABLE",
					    "DATA_LOSS",
					    "UNAUTHENTICATED"};
	return code >= 0 && (size_t)code < sizeof names / sizeof names[0] ? names[code] : "?";
}

int tern_grpc_client_open(const tern_grpc_client_opts *o, tern_grpc_client **out, tern_err *err)
{
	*out = NULL;
	if (o->bearer_token && strlen(o->bearer_token) > 1000)
		return TERN_ERR(err, TERN_EINVAL, "the bearer token is longer than 1000 bytes");
	char *ca = NULL;
	if (o->tls_ca_file) {
		size_t len;
		if (tern_read_file(o->tls_ca_file, 1 << 20, &ca, &len, err) < 0)
			return TERN_ERR(err, TERN_EINVAL, "cannot read the CA file %s", o->tls_ca_file);
	}
	tern_grpc_client *c = calloc(1, sizeof *c);
	if (!c) {
		free(ca);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	}
	grpc_init();
	grpc_channel_credentials *creds = ca ? grpc_ssl_credentials_create(ca, NULL, NULL, NULL)
					     : grpc_insecure_credentials_create();
	free(ca);
	/* A server that went away (tern-server's coordinator, restarted) is
	 * tried again within a second, not after gRPC's back-off of up to two
	 * minutes. Only the cap: in gRPC 1.51 a short initial or minimum
	 * back-off also cuts the connect timeout, and a handshake through the
	 * coordinator's connection gate then never completes over TCP. */
	grpc_arg args[1] = {
		{.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, .value.integer = 1000},
	};
	const grpc_channel_args ca_args = {.num_args = 1, .args = args};
	c->ch = grpc_channel_create(o->target, creds, &ca_args);
	grpc_channel_credentials_release(creds);
	if (o->bearer_token && o->bearer_token[0])
		snprintf(c->auth, sizeof c->auth, "Bearer %s", o->bearer_token);
	*out = c;
	return 0;
}

void tern_grpc_client_close(tern_grpc_client *c)
{
	if (!c)
		return;
	grpc_channel_destroy(c->ch);
	free(c);
	grpc_shutdown();
}

static gpr_timespec deadline_in(double s)
{
	if (s < 0)
		return gpr_inf_future(GPR_CLOCK_REALTIME);
	return gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_micros((int64_t)(s * 1e6), GPR_TIMESPAN));
}

/* 1 = the tag completed with success, 0 = completed with failure, -1 = timeout. */
static int wait_tag(tern_grpc_stream *s, void *tag, double wait_s)
{
	grpc_event ev = grpc_completion_queue_pluck(s->cq, tag, deadline_in(wait_s), NULL);
	if (ev.type == GRPC_QUEUE_TIMEOUT)
		return -1;
	return ev.type == GRPC_OP_COMPLETE && ev.success;
}

/* Creates a call of method on cq and its request batch (initial metadata
 * with the bearer token, the packed req, close): the ops in ops[0..3), the
 * byte buffer in *bb (the caller destroys it once the batch is started). */
static grpc_call *new_call(tern_grpc_client *c, const char *method, const ProtobufCMessage *req, double timeout_s,
			   grpc_completion_queue *cq, grpc_metadata *md, grpc_op ops[3], grpc_byte_buffer **bb)
{
	grpc_slice m = grpc_slice_from_copied_string(method);
	grpc_call *call = grpc_channel_create_call(c->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, m, NULL,
						   deadline_in(timeout_s > 0 ? timeout_s : -1), NULL);
	grpc_slice_unref(m);
	const size_t n = protobuf_c_message_get_packed_size(req);
	grpc_slice body = grpc_slice_malloc(n);
	protobuf_c_message_pack(req, GRPC_SLICE_START_PTR(body));
	*bb = grpc_raw_byte_buffer_create(&body, 1);
	grpc_slice_unref(body);
	md->key = grpc_slice_from_static_string("authorization");
	md->value = grpc_slice_from_copied_string(c->auth);
	memset(ops, 0, 3 * sizeof *ops);
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[0].data.send_initial_metadata.count = c->auth[0] ? 1 : 0;
	ops[0].data.send_initial_metadata.metadata = md;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = *bb;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	return call;
}

int tern_grpc_stream_start(tern_grpc_client *c, const char *method, const ProtobufCMessage *req, double timeout_s,
			   tern_grpc_stream **out, tern_err *err)
{
	*out = NULL;
	tern_grpc_stream *s = calloc(1, sizeof *s);
	if (!s)
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	s->cq = grpc_completion_queue_create_for_pluck(NULL);
	grpc_metadata_array_init(&s->init_md);
	grpc_metadata_array_init(&s->trail_md);
	grpc_op ops[3];
	grpc_byte_buffer *bb;
	s->call = new_call(c, method, req, timeout_s, s->cq, &s->md, ops, &bb);
	grpc_call_error ce = grpc_call_start_batch(s->call, ops, 3, &s->tag_send, NULL);
	/* A send fails only when the call is already dead; the status says why. */
	if (ce == GRPC_CALL_OK)
		wait_tag(s, &s->tag_send, -1);
	grpc_byte_buffer_destroy(bb);
	*out = s;
	return 0;
}

static void drop_last(tern_grpc_stream *s)
{
	if (s->has_last) {
		grpc_slice_unref(s->last);
		s->has_last = 0;
	}
}

int tern_grpc_stream_next(tern_grpc_stream *s, double wait_s, const uint8_t **msg, size_t *len)
{
	drop_last(s);
	if (s->ended)
		return -1;
	if (!s->recv_pending) {
		grpc_op ops[2];
		memset(ops, 0, sizeof ops);
		size_t n = 0;
		if (!s->got_initial) {
			ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
			ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->init_md;
		}
		ops[n].op = GRPC_OP_RECV_MESSAGE;
		ops[n++].data.recv_message.recv_message = &s->in;
		s->in = NULL;
		if (grpc_call_start_batch(s->call, ops, n, &s->tag_recv, NULL) != GRPC_CALL_OK) {
			s->ended = 1;
			return -1;
		}
		s->got_initial = 1;
		s->recv_pending = 1;
	}
	const int r = wait_tag(s, &s->tag_recv, wait_s);
	if (r < 0)
		return 0;
	s->recv_pending = 0;
	if (!r || !s->in) {
		s->ended = 1;
		return -1;
	}
	grpc_byte_buffer_reader rd;
	grpc_byte_buffer_reader_init(&rd, s->in);
	s->last = grpc_byte_buffer_reader_readall(&rd);
	grpc_byte_buffer_reader_destroy(&rd);
	grpc_byte_buffer_destroy(s->in);
	s->in = NULL;
	s->has_last = 1;
	*msg = GRPC_SLICE_START_PTR(s->last);
	*len = GRPC_SLICE_LENGTH(s->last);
	return 1;
}

void tern_grpc_stream_cancel(tern_grpc_stream *s)
{
	if (s && !s->cancelled) {
		s->cancelled = 1;
		grpc_call_cancel(s->call, NULL);
	}
}

int tern_grpc_stream_finish(tern_grpc_stream *s, char *detail, size_t detail_len)
{
	if (detail_len)
		detail[0] = '\0';
	drop_last(s);
	if (!s->ended)
		tern_grpc_stream_cancel(s);
	if (s->recv_pending) {
		wait_tag(s, &s->tag_recv, -1);
		grpc_byte_buffer_destroy(s->in);
		s->in = NULL;
	}
	grpc_status_code status = GRPC_STATUS_UNKNOWN;
	grpc_slice details = grpc_empty_slice();
	grpc_op st;
	memset(&st, 0, sizeof st);
	st.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	st.data.recv_status_on_client.trailing_metadata = &s->trail_md;
	st.data.recv_status_on_client.status = &status;
	st.data.recv_status_on_client.status_details = &details;
	if (grpc_call_start_batch(s->call, &st, 1, &s->tag_status, NULL) == GRPC_CALL_OK)
		wait_tag(s, &s->tag_status, -1);
	if (detail_len)
		snprintf(detail, detail_len, "%.*s", (int)GRPC_SLICE_LENGTH(details),
			 (const char *)GRPC_SLICE_START_PTR(details));
	grpc_slice_unref(details);
	grpc_slice_unref(s->md.value);
	grpc_metadata_array_destroy(&s->init_md);
	grpc_metadata_array_destroy(&s->trail_md);
	grpc_call_unref(s->call);
	grpc_completion_queue_shutdown(s->cq);
	while (grpc_completion_queue_pluck(s->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
	       GRPC_QUEUE_SHUTDOWN)
		;
	grpc_completion_queue_destroy(s->cq);
	free(s);
	return (int)status;
}

int tern_grpc_call(tern_grpc_client *c, const char *method, const ProtobufCMessage *req, double timeout_s,
		   tern_grpc_on_msg on_msg, void *ctx, char *detail, size_t detail_len)
{
	tern_grpc_stream *s;
	tern_err err;
	if (tern_grpc_stream_start(c, method, req, timeout_s, &s, &err) < 0) {
		snprintf(detail, detail_len, "%s", err.msg);
		return GRPC_STATUS_RESOURCE_EXHAUSTED;
	}
	const uint8_t *m;
	size_t n;
	while (tern_grpc_stream_next(s, -1, &m, &n) == 1)
		on_msg(ctx, m, n);
	return tern_grpc_stream_finish(s, detail, detail_len);
}

/* Keeps a copy of the last message of a call (NULL when out of memory). */
typedef struct last_msg {
	uint8_t *p;
	size_t n;
} last_msg;

static void keep_last(void *ctx, const uint8_t *msg, size_t len)
{
	last_msg *b = ctx;
	free(b->p);
	b->p = malloc(len ? len : 1);
	b->n = b->p ? len : 0;
	if (b->p && len)
		memcpy(b->p, msg, len);
}

ProtobufCMessage *tern_grpc_unary(tern_grpc_client *c, const char *method, const ProtobufCMessage *req,
				  double timeout_s, const ProtobufCMessageDescriptor *desc, int *status, char *detail,
				  size_t detail_len)
{
	last_msg b = {0};
	*status = tern_grpc_call(c, method, req, timeout_s, keep_last, &b, detail, detail_len);
	ProtobufCMessage *m = *status == 0 && b.p ? protobuf_c_message_unpack(desc, NULL, b.n, b.p) : NULL;
	free(b.p);
	return m;
}

/* ---- event-driven streams -------------------------------------------- */

struct tern_grpc_astream {
	grpc_call *call;
	tern_grpc_astream_cb cb;
	tern_cq_tag t_send, t_recv, t_status;
	int pending; /* batches started and not yet back */
	int cancelled;
	grpc_metadata md;
	grpc_metadata_array init_md, trail_md;
	grpc_byte_buffer *send_bb, *in;
	grpc_status_code status;
	grpc_slice details;
};

static void astream_maybe_end(tern_grpc_astream *s)
{
	if (--s->pending > 0)
		return;
	char detail[512];
	snprintf(detail, sizeof detail, "%.*s", (int)GRPC_SLICE_LENGTH(s->details),
		 (const char *)GRPC_SLICE_START_PTR(s->details));
	s->cb.end(s->cb.ctx, (int)s->status, detail);
	grpc_slice_unref(s->details);
	grpc_slice_unref(s->md.value);
	grpc_metadata_array_destroy(&s->init_md);
	grpc_metadata_array_destroy(&s->trail_md);
	grpc_call_unref(s->call);
	free(s);
}

/* Starts a receive (with the initial metadata the first time): 0, or -1
 * when the call is already over (nothing pending). */
static int astream_recv(tern_grpc_astream *s, int first)
{
	grpc_op ops[2];
	memset(ops, 0, sizeof ops);
	size_t n = 0;
	if (first) {
		ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
		ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->init_md;
	}
	ops[n].op = GRPC_OP_RECV_MESSAGE;
	ops[n++].data.recv_message.recv_message = &s->in;
	s->in = NULL;
	if (grpc_call_start_batch(s->call, ops, n, &s->t_recv, NULL) != GRPC_CALL_OK)
		return -1;
	s->pending++;
	return 0;
}

static void astream_sent(tern_cq_tag *t, int ok)
{
	(void)ok; /* a failed send shows in the status */
	tern_grpc_astream *s = TERN_CQ_OWNER(t, tern_grpc_astream, t_send);
	grpc_byte_buffer_destroy(s->send_bb);
	s->send_bb = NULL;
	astream_maybe_end(s);
}

static void astream_received(tern_cq_tag *t, int ok)
{
	tern_grpc_astream *s = TERN_CQ_OWNER(t, tern_grpc_astream, t_recv);
	if (ok && s->in) {
		grpc_byte_buffer_reader rd;
		grpc_slice m = grpc_empty_slice();
		if (grpc_byte_buffer_reader_init(&rd, s->in)) {
			m = grpc_byte_buffer_reader_readall(&rd);
			grpc_byte_buffer_reader_destroy(&rd);
		}
		grpc_byte_buffer_destroy(s->in);
		s->in = NULL;
		/* The next receive first, so it is in flight while msg() works. */
		if (!s->cancelled)
			astream_recv(s, 0);
		s->cb.msg(s->cb.ctx, GRPC_SLICE_START_PTR(m), GRPC_SLICE_LENGTH(m));
		grpc_slice_unref(m);
	} else if (s->in) {
		grpc_byte_buffer_destroy(s->in);
		s->in = NULL;
	}
	astream_maybe_end(s);
}

static void astream_status(tern_cq_tag *t, int ok)
{
	(void)ok;
	astream_maybe_end(TERN_CQ_OWNER(t, tern_grpc_astream, t_status));
}

int tern_grpc_astream_start(tern_grpc_client *c, const char *method, const ProtobufCMessage *req, double timeout_s,
			    void *cq, const tern_grpc_astream_cb *cb, tern_grpc_astream **out, tern_err *err)
{
	*out = NULL;
	tern_grpc_astream *s = calloc(1, sizeof *s);
	if (!s)
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	s->cb = *cb;
	s->t_send.done = astream_sent;
	s->t_recv.done = astream_received;
	s->t_status.done = astream_status;
	s->status = GRPC_STATUS_UNKNOWN;
	s->details = grpc_empty_slice();
	grpc_metadata_array_init(&s->init_md);
	grpc_metadata_array_init(&s->trail_md);
	grpc_op ops[3];
	s->call = new_call(c, method, req, timeout_s, cq, &s->md, ops, &s->send_bb);
	grpc_op st;
	memset(&st, 0, sizeof st);
	st.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	st.data.recv_status_on_client.trailing_metadata = &s->trail_md;
	st.data.recv_status_on_client.status = &s->status;
	st.data.recv_status_on_client.status_details = &s->details;
	/* On a fresh call these fail only on a programming error; then nothing
	 * is pending and the call is dropped here. */
	const int sent = grpc_call_start_batch(s->call, ops, 3, &s->t_send, NULL) == GRPC_CALL_OK;
	if (!sent)
		grpc_byte_buffer_destroy(s->send_bb);
	const int status = grpc_call_start_batch(s->call, &st, 1, &s->t_status, NULL) == GRPC_CALL_OK;
	if (!sent || !status) {
		grpc_call_cancel(s->call, NULL);
		if (sent || status) {
			/* One batch is out: it completes on the queue; end() then
			 * reports the status as the call's owner would have seen it. */
			s->pending = 1;
			s->cancelled = 1;
			*out = s;
			return 0;
		}
		grpc_slice_unref(s->md.value);
		grpc_metadata_array_destroy(&s->init_md);
		grpc_metadata_array_destroy(&s->trail_md);
		grpc_call_unref(s->call);
		free(s);
		return TERN_ERR(err, TERN_EIO, "cannot start the call %s", method);
	}
	s->pending = 2;
	astream_recv(s, 1);
	*out = s;
	return 0;
}

void tern_grpc_astream_cancel(tern_grpc_astream *s)
{
	if (s && !s->cancelled) {
		s->cancelled = 1;
		grpc_call_cancel(s->call, NULL);
	}
}

void tern_grpc_wake(tern_grpc_client *c, void *cq, tern_cq_tag *t)
{
	gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(1000, GPR_TIMESPAN));
	grpc_channel_watch_connectivity_state(c->ch, GRPC_CHANNEL_SHUTDOWN, dl, cq, t);
}

void *tern_grpc_cq_create(void)
{
	return grpc_completion_queue_create_for_next(NULL);
}

int tern_grpc_cq_run(void *cq, int wait_ms)
{
	gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(wait_ms, GPR_TIMESPAN));
	grpc_event ev = grpc_completion_queue_next(cq, dl, NULL);
	if (ev.type == GRPC_QUEUE_SHUTDOWN)
		return -1;
	if (ev.type != GRPC_OP_COMPLETE)
		return 0;
	tern_cq_tag *t = ev.tag;
	t->done(t, ev.success);
	return 1;
}

void tern_grpc_cq_shutdown(void *cq)
{
	grpc_completion_queue_shutdown(cq);
}

void tern_grpc_cq_destroy(void *cq)
{
	grpc_completion_queue_destroy(cq);
}
