/* grpc-server.c: service tern.v1.Tern on the gRPC C core (see tern-grpc.h).
 *
 * Life of a call: a pending request per method is always armed; when a call
 * arrives its payload is parsed, the request re-armed, and a RECV_CLOSE batch
 * started to learn of cancellation. Replies go through a per-call queue with
 * at most one send batch in flight. A call is freed when three references
 * are gone: the RECV_CLOSE completion, the completion of the status send,
 * and (for Generate) the back end's done(). */
#include "tern-grpc.h"

#include "grpc-gate.h"
#include "tern-cq.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <strings.h>

enum { M_GENERATE, M_TOKENIZE, M_HEALTH, M_STATS, M_DETOKENIZE, M_COUNT };
static const char *const method_paths[M_COUNT] = {
	"/tern.v1.Tern/Generate",
	"/tern.v1.Tern/Tokenize",
	"/tern.v1.Tern/Health",
	"/tern.v1.Tern/Stats",
	"/tern.v1.Tern/Detokenize",
};

typedef struct call_ctx call_ctx;

/* Every tag on the queue is a tern_cq_tag (tern-cq.h): the server's own
 * (a new call, RECV_CLOSE, a send, the shutdown) and a back end's (the
 * relay's upstream calls, tern_gen_sink.cq). */
typedef struct tag {
	tern_cq_tag cq;
	tern_grpc_server *srv;
	int method;       /* a new call's */
	call_ctx *call;   /* RECV_CLOSE's, a send's */
} tag;

typedef struct request_slot {
	tag t;
	grpc_call *call;
	gpr_timespec deadline;
	grpc_metadata_array md;
	grpc_byte_buffer *payload;
} request_slot;

typedef struct out_item {
	grpc_byte_buffer *bb; /* NULL for a status-only item */
	int is_status;
	grpc_status_code code;
	char *details;
} out_item;

struct call_ctx {
	tern_grpc_server *srv;
	grpc_call *call;
	int method;
	pthread_mutex_t mu;
	int refs;                /* see the file comment */
	tag close_tag, send_tag;
	int close_cancelled;     /* RECV_CLOSE said cancelled */
	int closed;              /* RECV_CLOSE completed */
	int sent_md;
	int status_queued;
	out_item *q;             /* (q_cap) queued replies, q_head..q_len pending */
	size_t q_head, q_len, q_cap;
	int in_flight;
	out_item cur;            /* the item whose batch is in flight */
	grpc_slice cur_details;
	uint64_t handle;
	int has_handle, backend_done, cancel_pending;
	tern_gen_sink sink;
};

/* Failed bearer attempts of one peer (its address without the port). After
 * AUTH_FREE_FAILS failures within AUTH_WINDOW_S seconds, every call from the
 * peer is refused without looking at its token until blocked_until, and each
 * further failure doubles the block (AUTH_BLOCK0_S, 2x, 4x, ... up to
 * AUTH_BLOCK_MAX_S): guessing runs at a few tries per minute, however many
 * calls a client has in flight. A success clears the record. */
#define AUTH_PEERS 256
#define AUTH_FREE_FAILS 5
#define AUTH_WINDOW_S 60.0
#define AUTH_BLOCK0_S 2.0
#define AUTH_BLOCK_MAX_S 60.0
typedef struct auth_peer {
	char host[64];
	int fails;
	double last_fail_s, blocked_until_s;
} auth_peer;

struct tern_grpc_server {
	grpc_server *server;
	grpc_completion_queue *cq;
	void *methods[M_COUNT];
	request_slot slots[M_COUNT];
	tag shutdown_tag;
	const tern_service *svc;
	char *auth_token;        /* the bearer token, or NULL: no authentication */
	auth_peer peers[AUTH_PEERS]; /* failed-attempt records, touched by the CQ thread only */
	int port;
	tern_grpc_gate *gate;    /* the plaintext TCP listener (NULL with TLS or a unix: address) */
	pthread_t thread;
	atomic_int stopping;
	atomic_int shutdown_done; /* the shutdown tag came back: every call has completed */
	int shutdown_seen;        /* the CQ thread's: draining since stop_deadline - grace_s */
	double stop_deadline;
	atomic_int live_calls;
	atomic_int unary_workers; /* threads running a unary call (handle_unary) */
	double grace_s;
};

/* Unary calls run on a thread of their own, so a slow one (tern-server's
 * relay waits on the coordinator) never holds the completion queue; more at
 * once than this get RESOURCE_EXHAUSTED. */
#define TERN_GRPC_MAX_UNARY 64

/* ---- helpers ----------------------------------------------------------- */

static grpc_byte_buffer *pack_message(const ProtobufCMessage *m)
{
	const size_t n = protobuf_c_message_get_packed_size(m);
	grpc_slice s = grpc_slice_malloc(n);
	protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
	grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
	grpc_slice_unref(s);
	return bb;
}

/* Reads a whole byte buffer into one slice (caller unrefs). */
static grpc_slice read_payload(grpc_byte_buffer *bb)
{
	grpc_byte_buffer_reader r;
	if (!bb || !grpc_byte_buffer_reader_init(&r, bb))
		return grpc_empty_slice();
	grpc_slice s = grpc_byte_buffer_reader_readall(&r);
	grpc_byte_buffer_reader_destroy(&r);
	return s;
}

static void tag_new_call(tern_cq_tag *t, int ok);
static void tag_close(tern_cq_tag *t, int ok);
static void tag_send(tern_cq_tag *t, int ok);

static int arm_slot(tern_grpc_server *s, int m)
{
	request_slot *r = &s->slots[m];
	r->t.cq.done = tag_new_call;
	r->t.srv = s;
	r->t.method = m;
	r->t.call = NULL;
	r->call = NULL;
	r->payload = NULL;
	grpc_metadata_array_init(&r->md);
	grpc_call_error e = grpc_server_request_registered_call(s->server, s->methods[m], &r->call, &r->deadline,
							       &r->md, &r->payload, s->cq, s->cq, &r->t);
	if (e != GRPC_CALL_OK) {
		TERN_LOGE("grpc", "cannot arm %s: call error %d", method_paths[m], (int)e);
		grpc_metadata_array_destroy(&r->md);
		return -1;
	}
	return 0;
}

/* ---- call lifetime ----------------------------------------------------- */

static void call_free(call_ctx *c)
{
	for (size_t i = c->q_head; i < c->q_len; i++) {
		if (c->q[i].bb)
			grpc_byte_buffer_destroy(c->q[i].bb);
		free(c->q[i].details);
	}
	free(c->q);
	if (c->call)
		grpc_call_unref(c->call);
	pthread_mutex_destroy(&c->mu);
	atomic_fetch_sub(&c->srv->live_calls, 1);
	free(c);
}

static void call_unref(call_ctx *c)
{
	pthread_mutex_lock(&c->mu);
	const int left = --c->refs;
	pthread_mutex_unlock(&c->mu);
	if (left == 0)
		call_free(c);
}

/* Starts the next queued send if none is in flight. Caller holds c->mu. */
static void start_next_locked(call_ctx *c)
{
	if (c->in_flight || c->q_head == c->q_len)
		return;
	c->cur = c->q[c->q_head++];
	grpc_op ops[3];
	memset(ops, 0, sizeof ops);
	size_t n = 0;
	/* Initial metadata goes with the first send, status included: a status
	 * sent without it is never delivered (PLATFORM.md section 5). */
	if (!c->sent_md) {
		ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
		ops[n].data.send_initial_metadata.count = 0;
		n++;
		c->sent_md = 1;
	}
	if (c->cur.bb) {
		ops[n].op = GRPC_OP_SEND_MESSAGE;
		ops[n].data.send_message.send_message = c->cur.bb;
		n++;
	}
	if (c->cur.is_status) {
		c->cur_details = grpc_slice_from_copied_string(c->cur.details ? c->cur.details : "");
		ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
		ops[n].data.send_status_from_server.trailing_metadata_count = 0;
		ops[n].data.send_status_from_server.status = c->cur.code;
		ops[n].data.send_status_from_server.status_details = &c->cur_details;
		n++;
	}
	c->in_flight = 1;
	grpc_call_error e = grpc_call_start_batch(c->call, ops, n, &c->send_tag, NULL);
	if (e != GRPC_CALL_OK) {
		/* The batch will never complete: account for it as if it had. */
		TERN_LOGE("grpc", "start_batch failed: %d", (int)e);
		c->in_flight = 0;
	}
}

static void enqueue(call_ctx *c, grpc_byte_buffer *bb, int is_status, grpc_status_code code, const char *details)
{
	pthread_mutex_lock(&c->mu);
	if (c->status_queued) { /* nothing may follow the status */
		pthread_mutex_unlock(&c->mu);
		if (bb)
			grpc_byte_buffer_destroy(bb);
		return;
	}
	if (c->q_len == c->q_cap) {
		/* Compact first: sent items at the front are dead. */
		if (c->q_head > 0) {
			memmove(c->q, c->q + c->q_head, (c->q_len - c->q_head) * sizeof *c->q);
			c->q_len -= c->q_head;
			c->q_head = 0;
		}
		if (c->q_len == c->q_cap) {
			size_t cap = c->q_cap ? c->q_cap * 2 : 8;
			out_item *nq = realloc(c->q, cap * sizeof *nq);
			if (!nq) {
				pthread_mutex_unlock(&c->mu);
				if (bb)
					grpc_byte_buffer_destroy(bb);
				TERN_LOGE("grpc", "out of memory queueing a reply");
				return;
			}
			c->q = nq;
			c->q_cap = cap;
		}
	}
	out_item it = {bb, is_status, code, details ? strdup(details) : NULL};
	c->q[c->q_len++] = it;
	if (is_status)
		c->status_queued = 1;
	start_next_locked(c);
	pthread_mutex_unlock(&c->mu);
}

static void finish(call_ctx *c, grpc_status_code code, const char *details)
{
	enqueue(c, NULL, 1, code, details);
}

static void reply_and_finish(call_ctx *c, const ProtobufCMessage *m)
{
	enqueue(c, pack_message(m), 0, GRPC_STATUS_OK, NULL);
	finish(c, GRPC_STATUS_OK, "");
}

/* ---- the sink the back end writes a generation into -------------------- */

static void sink_piece(void *ctx, const Tern__V1__GenerateResponse *msg)
{
	call_ctx *c = ctx;
	enqueue(c, pack_message(&msg->base), 0, GRPC_STATUS_OK, NULL);
}

static void sink_done(void *ctx, const Tern__V1__GenerateResponse *final, int status, const char *details)
{
	call_ctx *c = ctx;
	if (final && status == TERN_STATUS_OK)
		enqueue(c, pack_message(&final->base), 0, GRPC_STATUS_OK, NULL);
	finish(c, (grpc_status_code)status, details ? details : "");
	pthread_mutex_lock(&c->mu);
	c->backend_done = 1;
	pthread_mutex_unlock(&c->mu);
	call_unref(c); /* the back end's reference */
}

/* ---- request handling -------------------------------------------------- */

/* The peer's address without its port ("ipv4:127.0.0.1:5000" -> "ipv4:127.0.0.1"). */
static void peer_host(grpc_call *call, char *out, size_t cap)
{
	char *peer = grpc_call_get_peer(call);
	snprintf(out, cap, "%s", peer ? peer : "?");
	gpr_free(peer);
	char *colon = strrchr(out, ':');
	if (colon && colon != strchr(out, ':'))
		*colon = '\0';
}

/* The record of host, or NULL; with create, a free or the oldest slot. */
static auth_peer *auth_find(tern_grpc_server *s, const char *host, int create)
{
	auth_peer *oldest = &s->peers[0];
	for (int i = 0; i < AUTH_PEERS; i++) {
		auth_peer *p = &s->peers[i];
		if (p->host[0] && strcmp(p->host, host) == 0)
			return p;
		if (!p->host[0] || (oldest->host[0] && p->last_fail_s < oldest->last_fail_s))
			oldest = p;
	}
	if (!create)
		return NULL;
	memset(oldest, 0, sizeof *oldest);
	snprintf(oldest->host, sizeof oldest->host, "%s", host);
	return oldest;
}

/* 1 when the metadata carries "authorization: <scheme> <token>" with the
 * scheme "Bearer" in any case (RFC 7235: schemes are case-insensitive) and
 * the token, compared in constant time over its length. */
static int token_matches(const tern_grpc_server *s, const grpc_metadata_array *md)
{
	const size_t want = strlen(s->auth_token);
	for (size_t i = 0; i < md->count; i++) {
		if (grpc_slice_str_cmp(md->metadata[i].key, "authorization") != 0)
			continue;
		const grpc_slice v = md->metadata[i].value;
		const unsigned char *p = GRPC_SLICE_START_PTR(v);
		size_t n = GRPC_SLICE_LENGTH(v);
		if (n < 7 || strncasecmp((const char *)p, "bearer", 6) != 0 || (p[6] != ' ' && p[6] != '\t'))
			continue;
		p += 6;
		n -= 6;
		while (n > 0 && (*p == ' ' || *p == '\t')) {
			p++;
			n--;
		}
		if (n != want)
			continue;
		unsigned char diff = 0;
		for (size_t k = 0; k < want; k++)
			diff |= (unsigned char)(p[k] ^ (unsigned char)s->auth_token[k]);
		if (diff == 0)
			return 1;
	}
	return 0;
}

/* NULL when the call may proceed, else the UNAUTHENTICATED details. */
static const char *authorize(tern_grpc_server *s, grpc_call *call, const grpc_metadata_array *md)
{
	if (!s->auth_token)
		return NULL;
	char host[64];
	peer_host(call, host, sizeof host);
	const double now = tern_now_s();
	auth_peer *p = auth_find(s, host, 0);
	if (p && now < p->blocked_until_s)
		return "too many failed bearer token attempts from this address; retry later";
	if (token_matches(s, md)) {
		if (p)
			memset(p, 0, sizeof *p);
		return NULL;
	}
	if (!p)
		p = auth_find(s, host, 1);
	if (now - p->last_fail_s > AUTH_WINDOW_S)
		p->fails = 0;
	p->fails++;
	p->last_fail_s = now;
	if (p->fails >= AUTH_FREE_FAILS) {
		double block = AUTH_BLOCK0_S;
		for (int k = AUTH_FREE_FAILS; k < p->fails && block < AUTH_BLOCK_MAX_S; k++)
			block *= 2;
		p->blocked_until_s = now + (block < AUTH_BLOCK_MAX_S ? block : AUTH_BLOCK_MAX_S);
		TERN_LOGW("grpc", "%d failed bearer token attempts from %s: refusing it for %.0f s", p->fails, host,
			  p->blocked_until_s - now);
	}
	return "missing or wrong bearer token";
}

static void handle_generate(call_ctx *c, const uint8_t *p, size_t n)
{
	tern_grpc_server *s = c->srv;
	Tern__V1__GenerateRequest *req = tern__v1__generate_request__unpack(NULL, n, p);
	if (!req) {
		finish(c, GRPC_STATUS_INVALID_ARGUMENT, "malformed GenerateRequest");
		return;
	}
	c->sink.ctx = c;
	c->sink.cq = s->cq;
	c->sink.piece = sink_piece;
	c->sink.done = sink_done;
	pthread_mutex_lock(&c->mu);
	c->refs++; /* the back end's, released by sink_done */
	pthread_mutex_unlock(&c->mu);
	char msg[512] = "";
	uint64_t handle = 0;
	int st = s->svc->generate(s->svc->self, req, &c->sink, &handle, msg, sizeof msg);
	tern__v1__generate_request__free_unpacked(req, NULL);
	if (st != TERN_STATUS_OK) {
		finish(c, (grpc_status_code)st, msg[0] ? msg : "request rejected");
		call_unref(c);
		return;
	}
	pthread_mutex_lock(&c->mu);
	c->handle = handle;
	c->has_handle = 1;
	const int cancel_now = c->cancel_pending && !c->backend_done;
	pthread_mutex_unlock(&c->mu);
	if (cancel_now)
		s->svc->cancel(s->svc->self, handle);
}

/* The request of descriptor d from p[0..n), or NULL after finishing the call
 * with INVALID_ARGUMENT ("malformed TokenizeRequest"). */
static ProtobufCMessage *unpack_request(call_ctx *c, const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n)
{
	ProtobufCMessage *req = protobuf_c_message_unpack(d, NULL, n, p);
	if (!req) {
		char msg[128];
		snprintf(msg, sizeof msg, "malformed %s", d->short_name);
		finish(c, GRPC_STATUS_INVALID_ARGUMENT, msg);
	}
	return req;
}

/* Ends a unary call with the back end's answer: out on TERN_STATUS_OK, else
 * status st with msg (fallback when msg is empty); then frees out. */
static void answer(call_ctx *c, int st, ProtobufCMessage *out, const char *msg, const char *fallback)
{
	tern_grpc_server *s = c->srv;
	if (st == TERN_STATUS_OK)
		reply_and_finish(c, out);
	else
		finish(c, (grpc_status_code)st, msg[0] ? msg : fallback);
	s->svc->free_response(s->svc->self, out);
}

static void handle_unary(call_ctx *c, const uint8_t *p, size_t n)
{
	tern_grpc_server *s = c->srv;
	char msg[512] = "";
	switch (c->method) {
	case M_TOKENIZE: {
		Tern__V1__TokenizeRequest *req =
		    (Tern__V1__TokenizeRequest *)unpack_request(c, &tern__v1__tokenize_request__descriptor, p, n);
		if (!req)
			return;
		Tern__V1__TokenizeResponse out = TERN__V1__TOKENIZE_RESPONSE__INIT;
		const int st = s->svc->tokenize(s->svc->self, req, &out, msg, sizeof msg);
		tern__v1__tokenize_request__free_unpacked(req, NULL);
		answer(c, st, &out.base, msg, "");
		return;
	}
	case M_DETOKENIZE: {
		Tern__V1__DetokenizeRequest *req =
		    (Tern__V1__DetokenizeRequest *)unpack_request(c, &tern__v1__detokenize_request__descriptor, p, n);
		if (!req)
			return;
		Tern__V1__DetokenizeResponse out = TERN__V1__DETOKENIZE_RESPONSE__INIT;
		const int st = s->svc->detokenize ? s->svc->detokenize(s->svc->self, req, &out, msg, sizeof msg)
						  : GRPC_STATUS_UNIMPLEMENTED;
		tern__v1__detokenize_request__free_unpacked(req, NULL);
		answer(c, st, &out.base, msg, "detokenize unavailable");
		return;
	}
	case M_HEALTH:
	case M_STATS: {
		/* Empty requests: only checked, then the back end answers. */
		const int health = c->method == M_HEALTH;
		ProtobufCMessage *req = unpack_request(
		    c, health ? &tern__v1__health_request__descriptor : &tern__v1__stats_request__descriptor, p, n);
		if (!req)
			return;
		protobuf_c_message_free_unpacked(req, NULL);
		union {
			ProtobufCMessage base;
			Tern__V1__HealthResponse health;
			Tern__V1__StatsResponse stats;
		} out;
		protobuf_c_message_init(health ? &tern__v1__health_response__descriptor : &tern__v1__stats_response__descriptor,
					&out);
		const int st = health ? s->svc->health(s->svc->self, &out.health) : s->svc->stats(s->svc->self, &out.stats);
		answer(c, st, &out.base, "", health ? "health unavailable" : "stats unavailable");
		return;
	}
	default:
		finish(c, GRPC_STATUS_UNIMPLEMENTED, "unknown method");
	}
}

typedef struct unary_job {
	call_ctx *c;
	grpc_slice payload;
} unary_job;

static void *unary_worker(void *arg)
{
	unary_job *j = arg;
	tern_grpc_server *s = j->c->srv;
	handle_unary(j->c, GRPC_SLICE_START_PTR(j->payload), GRPC_SLICE_LENGTH(j->payload));
	grpc_slice_unref(j->payload);
	call_unref(j->c);
	free(j);
	atomic_fetch_sub(&s->unary_workers, 1);
	return NULL;
}

/* Runs handle_unary on its own detached thread, which takes a reference on
 * c and owns payload; -1 (nothing taken) when too many run already. */
static int start_unary(call_ctx *c, grpc_slice payload)
{
	tern_grpc_server *s = c->srv;
	if (atomic_fetch_add(&s->unary_workers, 1) >= TERN_GRPC_MAX_UNARY) {
		atomic_fetch_sub(&s->unary_workers, 1);
		return -1;
	}
	unary_job *j = malloc(sizeof *j);
	int ok = j != NULL;
	if (ok) {
		*j = (unary_job){c, payload};
		pthread_mutex_lock(&c->mu);
		c->refs++;
		pthread_mutex_unlock(&c->mu);
		ok = tern_thread_detached(unary_worker, j) == 0;
		if (!ok)
			call_unref(c);
	}
	if (!ok) {
		free(j);
		atomic_fetch_sub(&s->unary_workers, 1);
		return -1;
	}
	return 0;
}

static void on_new_call(tern_grpc_server *s, int m, int success)
{
	request_slot *r = &s->slots[m];
	if (!success || atomic_load(&s->stopping)) {
		/* Shutting down: the pending request came back unused. */
		if (r->call)
			grpc_call_unref(r->call);
		if (r->payload)
			grpc_byte_buffer_destroy(r->payload);
		grpc_metadata_array_destroy(&r->md);
		return;
	}
	call_ctx *c = calloc(1, sizeof *c);
	grpc_slice payload = read_payload(r->payload);
	if (r->payload)
		grpc_byte_buffer_destroy(r->payload);
	const char *auth_refusal = authorize(s, r->call, &r->md);
	grpc_metadata_array_destroy(&r->md);
	grpc_call *call = r->call;
	arm_slot(s, m); /* keep accepting while this one is served */
	if (!c) {
		grpc_slice_unref(payload);
		grpc_call_cancel_with_status(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
		grpc_call_unref(call);
		return;
	}
	atomic_fetch_add(&s->live_calls, 1);
	c->srv = s;
	c->call = call;
	c->method = m;
	pthread_mutex_init(&c->mu, NULL);
	c->refs = 2; /* RECV_CLOSE completion + status send completion */
	c->close_tag.cq.done = tag_close;
	c->close_tag.call = c;
	c->send_tag.cq.done = tag_send;
	c->send_tag.call = c;
	grpc_op op;
	memset(&op, 0, sizeof op);
	op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
	op.data.recv_close_on_server.cancelled = &c->close_cancelled;
	if (grpc_call_start_batch(call, &op, 1, &c->close_tag, NULL) != GRPC_CALL_OK) {
		grpc_slice_unref(payload);
		c->refs = 1;
		finish(c, GRPC_STATUS_INTERNAL, "cannot start call");
		return;
	}
	if (auth_refusal)
		finish(c, GRPC_STATUS_UNAUTHENTICATED, auth_refusal);
	else if (m == M_GENERATE)
		handle_generate(c, GRPC_SLICE_START_PTR(payload), GRPC_SLICE_LENGTH(payload));
	else if (start_unary(c, payload) == 0)
		return; /* the worker owns payload */
	else
		finish(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "too many calls at once");
	grpc_slice_unref(payload);
}

static void on_close(call_ctx *c)
{
	tern_grpc_server *s = c->srv;
	pthread_mutex_lock(&c->mu);
	c->closed = 1;
	int cancel = 0;
	uint64_t h = 0;
	if (c->close_cancelled && c->method == M_GENERATE && !c->backend_done) {
		if (c->has_handle) {
			cancel = 1;
			h = c->handle;
		} else {
			c->cancel_pending = 1;
		}
	}
	pthread_mutex_unlock(&c->mu);
	if (cancel)
		s->svc->cancel(s->svc->self, h);
	call_unref(c);
}

static void on_send_done(call_ctx *c)
{
	pthread_mutex_lock(&c->mu);
	out_item done = c->cur;
	c->in_flight = 0;
	if (done.bb)
		grpc_byte_buffer_destroy(done.bb);
	free(done.details);
	if (done.is_status)
		grpc_slice_unref(c->cur_details);
	memset(&c->cur, 0, sizeof c->cur);
	start_next_locked(c);
	pthread_mutex_unlock(&c->mu);
	if (done.is_status)
		call_unref(c);
}

static void tag_new_call(tern_cq_tag *t, int ok)
{
	tag *g = (tag *)t;
	on_new_call(g->srv, g->method, ok);
}

static void tag_close(tern_cq_tag *t, int ok)
{
	(void)ok;
	on_close(((tag *)t)->call);
}

static void tag_send(tern_cq_tag *t, int ok)
{
	(void)ok;
	on_send_done(((tag *)t)->call);
}

static void tag_shutdown(tern_cq_tag *t, int ok)
{
	(void)ok;
	tern_grpc_server *s = ((tag *)t)->srv;
	atomic_store(&s->shutdown_done, 1);
	s->shutdown_seen = 1;
	s->stop_deadline = tern_now_s() + s->grace_s;
}

/* The event loop: every event's tag runs on this thread, the back end's
 * tick at least every TERN_SERVICE_TICK_MS when it has one. */
static void *serve(void *arg)
{
	tern_grpc_server *s = arg;
	const int wait_ms = s->svc->tick ? TERN_SERVICE_TICK_MS : 200;
	double next_tick = tern_now_s() + wait_ms / 1000.0;
	for (;;) {
		gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(wait_ms, GPR_TIMESPAN));
		grpc_event ev = grpc_completion_queue_next(s->cq, dl, NULL);
		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
		if (ev.type == GRPC_OP_COMPLETE) {
			tern_cq_tag *t = ev.tag;
			t->done(t, ev.success);
		}
		if (s->svc->tick) {
			const double now = tern_now_s();
			if (now >= next_tick) {
				s->svc->tick(s->svc->self);
				next_tick = now + wait_ms / 1000.0;
			}
		}
		if (s->shutdown_seen &&
		    (atomic_load(&s->live_calls) == 0 || tern_now_s() > s->stop_deadline)) {
			if (atomic_load(&s->live_calls) != 0)
				TERN_LOGW("grpc", "%d calls still held by the back end at shutdown",
					  atomic_load(&s->live_calls));
			grpc_completion_queue_shutdown(s->cq);
			s->shutdown_seen = 0; /* drain until GRPC_QUEUE_SHUTDOWN */
			s->stop_deadline = 1e300;
		}
	}
	return NULL;
}

/* ---- start / stop ------------------------------------------------------ */

/* A PEM file (certificate or key), NUL-terminated as gRPC wants it. */
static char *read_pem(const char *path, tern_err *err)
{
	char *buf;
	size_t len;
	return tern_read_file(path, 16u << 20, &buf, &len, err) < 0 ? NULL : buf;
}

int tern_grpc_start(const tern_grpc_opts *opts, const tern_service *svc, tern_grpc_server **out, tern_err *err)
{
	*out = NULL;
	tern_grpc_server *s = calloc(1, sizeof *s);
	TERN_RETURN_IF(!s, err, TERN_ENOMEM, "out of memory");
	s->svc = svc;
	s->grace_s = 5.0;
	const char *listen = opts && opts->listen ? opts->listen : "127.0.0.1:50051";
	if (opts && opts->auth_token && opts->auth_token[0]) {
		s->auth_token = strdup(opts->auth_token);
		if (!s->auth_token) {
			free(s);
			return TERN_ERR(err, TERN_ENOMEM, "out of memory");
		}
	}
	grpc_server_credentials *creds = NULL;
	const int tls = opts && opts->tls_cert_file && opts->tls_key_file;
	if (tls) {
		char *cert = read_pem(opts->tls_cert_file, err);
		char *key = cert ? read_pem(opts->tls_key_file, err) : NULL;
		if (!cert || !key) {
			free(cert);
			free(key);
			free(s->auth_token);
			free(s);
			return TERN_EINVAL;
		}
		grpc_ssl_pem_key_cert_pair pair = {key, cert};
		grpc_init();
		creds = grpc_ssl_server_credentials_create_ex(NULL, &pair, 1, GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
							      NULL);
		free(cert);
		free(key);
	} else {
		grpc_init();
		creds = grpc_insecure_server_credentials_create();
	}
	const int max_msg = opts && opts->max_message_bytes > 0 ? opts->max_message_bytes : (1 << 20);
	/* A connection must finish its HTTP/2 (and TLS) handshake within
	 * TERN_GRPC_HANDSHAKE_MS, and one without calls is closed after
	 * TERN_GRPC_IDLE_MS: silent connections cannot pile up to the fd limit.
	 * gRPC core 1.51 has no cap on the number of connections: over plain TCP
	 * tern listens itself (grpc-gate.c), caps them and enforces the
	 * handshake time; with TLS gRPC listens and only the timeouts hold. */
	grpc_arg args[4] = {
		{.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_ALLOW_REUSEPORT, .value.integer = 0},
		{.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, .value.integer = max_msg},
		{.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
		 .value.integer = TERN_GRPC_HANDSHAKE_MS},
		{.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_CONNECTION_IDLE_MS, .value.integer = TERN_GRPC_IDLE_MS},
	};
	grpc_channel_args ch = {4, args};
	s->server = grpc_server_create(&ch, NULL);
	s->cq = grpc_completion_queue_create_for_next(NULL);
	grpc_server_register_completion_queue(s->server, s->cq, NULL);
	for (int m = 0; m < M_COUNT; m++)
		s->methods[m] = grpc_server_register_method(s->server, method_paths[m], NULL,
							    GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
	const int own_listener = creds && !tls && strncmp(listen, "unix:", 5) != 0;
	if (own_listener) {
		const unsigned cap = opts && opts->max_connections ? opts->max_connections : TERN_GRPC_MAX_CONNECTIONS;
		if (tern_grpc_gate_open(listen, cap, TERN_GRPC_HANDSHAKE_MS, &s->gate, err) == 0)
			s->port = tern_grpc_gate_port(s->gate);
	} else {
		s->port = creds ? grpc_server_add_http2_port(s->server, listen, creds) : 0;
	}
	if (creds)
		grpc_server_credentials_release(creds);
	if (s->port == 0) {
		const int gate_said = own_listener && !s->gate;
		grpc_server_destroy(s->server);
		grpc_completion_queue_shutdown(s->cq);
		while (grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
		       GRPC_QUEUE_SHUTDOWN)
			;
		grpc_completion_queue_destroy(s->cq);
		grpc_shutdown();
		free(s->auth_token);
		free(s);
		return gate_said ? TERN_EIO
				 : TERN_ERR(err, TERN_EIO, "cannot listen on %s (address in use or invalid)", listen);
	}
	grpc_server_start(s->server);
	for (int m = 0; m < M_COUNT; m++)
		arm_slot(s, m);
	s->shutdown_tag.cq.done = tag_shutdown;
	s->shutdown_tag.srv = s;
	if (pthread_create(&s->thread, NULL, serve, s) != 0) {
		atomic_store(&s->stopping, 1);
		tern_grpc_gate_close(s->gate);
		grpc_server_shutdown_and_notify(s->server, s->cq, &s->shutdown_tag);
		grpc_server_cancel_all_calls(s->server);
		serve(s);
		grpc_server_destroy(s->server);
		grpc_completion_queue_destroy(s->cq);
		grpc_shutdown();
		free(s->auth_token);
		free(s);
		return TERN_ERR(err, TERN_ESTATE, "cannot start the gRPC thread");
	}
	if (s->gate && tern_grpc_gate_start(s->gate, s->server, err) < 0) {
		tern_grpc_stop(s, 0.1);
		return TERN_ESTATE;
	}
	*out = s;
	return 0;
}

int tern_grpc_port(const tern_grpc_server *s)
{
	return s ? s->port : 0;
}

void tern_grpc_stop(tern_grpc_server *s, double grace_s)
{
	if (!s)
		return;
	s->grace_s = grace_s > 0 ? grace_s : 5.0;
	atomic_store(&s->stopping, 1);
	tern_grpc_gate_close(s->gate);
	grpc_server_shutdown_and_notify(s->server, s->cq, &s->shutdown_tag);
	/* Calls still sending (a drained stream's last tokens and its final
	 * status) finish within the grace period; only then are the rest cut. */
	const double until = tern_now_s() + s->grace_s;
	while (!atomic_load(&s->shutdown_done) && tern_now_s() < until) {
		const struct timespec ts = {0, 10 * 1000000};
		nanosleep(&ts, NULL);
	}
	grpc_server_cancel_all_calls(s->server);
	pthread_join(s->thread, NULL);
	/* Unary workers end with their back end's call (the relay's have
	 * deadlines); they must not outlive s. */
	while (atomic_load(&s->unary_workers) > 0) {
		const struct timespec ts = {0, 5 * 1000000};
		nanosleep(&ts, NULL);
	}
	grpc_server_destroy(s->server);
	grpc_completion_queue_destroy(s->cq);
	grpc_shutdown();
	free(s->auth_token);
	free(s);
}
