/* relay.c: tern.v1.Tern served by tern-server, relayed to the coordinator
 * (tern-relay.h). It is a tern_service, so grpc/'s server serves it exactly
 * as it serves the scheduler: same auth, limits and status codes.
 *
 * A generation is one upstream stream on a thread of its own: the thread
 * starts the call, hands every reply to the sink and, when the client
 * cancels, cancels upstream (the coordinator frees the sequence). Unary calls
 * are made on the gRPC server's unary worker thread, with a deadline. */
#include "tern-relay.h"

#include "tern-hold.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RELAY_POLL_S 0.05  /* how often a stream looks for a cancel */
#define RELAY_UNARY_S 30.0 /* deadline of Tokenize/Detokenize upstream */
#define RELAY_STATUS_S 5.0 /* deadline of Health/Stats upstream */

typedef struct relay_gen relay_gen;

struct tern_relay {
	tern_grpc_client *up;
	tern_supervisor *sup; /* may be NULL */
	tern_service svc;
	pthread_mutex_t mu;
	pthread_cond_t idle; /* signalled when n_live drops to 0 */
	relay_gen *live;     /* every generation still running */
	unsigned n_live;
	uint64_t next_handle;
	int closing;
};

struct relay_gen {
	tern_relay *r;
	relay_gen *next;
	uint64_t handle;
	atomic_int cancelled;
	Tern__V1__GenerateRequest *req; /* a copy: the caller's is gone when generate() returns */
	tern_gen_sink sink;
};

static void unlink_gen(tern_relay *r, relay_gen *g)
{
	pthread_mutex_lock(&r->mu);
	for (relay_gen **p = &r->live; *p; p = &(*p)->next)
		if (*p == g) {
			*p = g->next;
			break;
		}
	if (--r->n_live == 0)
		pthread_cond_broadcast(&r->idle);
	pthread_mutex_unlock(&r->mu);
}

static void *gen_thread(void *arg)
{
	relay_gen *g = arg;
	tern_err err;
	tern_held *st = NULL;
	char detail[512] = "";
	int status;
	Tern__V1__GenerateResponse *final = NULL;
	if (tern_held_start(g->r->sup, g->r->up, g->req, &st, &err) < 0) {
		status = TERN_STATUS_RESOURCE_EXHAUSTED;
		snprintf(detail, sizeof detail, "%s", err.msg);
	} else {
		int cancelled = 0;
		for (;;) {
			if (!cancelled && atomic_load(&g->cancelled)) {
				tern_held_cancel(st);
				cancelled = 1;
			}
			Tern__V1__GenerateResponse *msg;
			const int got = tern_held_next(st, RELAY_POLL_S, &msg);
			if (got < 0)
				break;
			if (got == 0)
				continue;
			if (msg->done) {
				if (final)
					tern__v1__generate_response__free_unpacked(final, NULL);
				final = msg;
			} else {
				if (!cancelled)
					g->sink.piece(g->sink.ctx, msg);
				tern__v1__generate_response__free_unpacked(msg, NULL);
			}
		}
		status = tern_held_finish(st, detail, sizeof detail);
		if (status == TERN_STATUS_OK && !final) {
			status = TERN_STATUS_INTERNAL;
			snprintf(detail, sizeof detail, "the coordinator ended the stream without its last message");
		}
	}
	if (atomic_load(&g->cancelled) && status == TERN_STATUS_OK)
		status = TERN_STATUS_CANCELLED;
	g->sink.done(g->sink.ctx, status == TERN_STATUS_OK ? final : NULL, status, detail);
	if (final)
		tern__v1__generate_response__free_unpacked(final, NULL);
	tern__v1__generate_request__free_unpacked(g->req, NULL);
	unlink_gen(g->r, g);
	free(g);
	return NULL;
}

/* Admits every request (the coordinator judges it: a refusal arrives as the
 * stream's status through done()), unless the relay is closing. */
static int relay_generate(void *self, const Tern__V1__GenerateRequest *req, const tern_gen_sink *sink, uint64_t *handle,
			  char *msg, size_t msg_len)
{
	tern_relay *r = self;
	const size_t n = protobuf_c_message_get_packed_size(&req->base);
	uint8_t *buf = malloc(n ? n : 1);
	relay_gen *g = calloc(1, sizeof *g);
	if (buf && g) {
		protobuf_c_message_pack(&req->base, buf);
		g->req = tern__v1__generate_request__unpack(NULL, n, buf);
	}
	free(buf);
	if (!g || !g->req) {
		if (g && g->req)
			tern__v1__generate_request__free_unpacked(g->req, NULL);
		free(g);
		snprintf(msg, msg_len, "out of memory");
		return TERN_STATUS_RESOURCE_EXHAUSTED;
	}
	g->r = r;
	g->sink = *sink;
	pthread_mutex_lock(&r->mu);
	if (r->closing) {
		pthread_mutex_unlock(&r->mu);
		tern__v1__generate_request__free_unpacked(g->req, NULL);
		free(g);
		snprintf(msg, msg_len, "the server is shutting down");
		return TERN_STATUS_UNAVAILABLE;
	}
	g->handle = ++r->next_handle;
	g->next = r->live;
	r->live = g;
	r->n_live++;
	pthread_mutex_unlock(&r->mu);
	*handle = g->handle;
	if (tern_thread_detached(gen_thread, g) < 0) {
		unlink_gen(r, g);
		tern__v1__generate_request__free_unpacked(g->req, NULL);
		free(g);
		snprintf(msg, msg_len, "cannot start a thread for the stream");
		return TERN_STATUS_RESOURCE_EXHAUSTED;
	}
	return TERN_STATUS_OK;
}

static void relay_cancel(void *self, uint64_t handle)
{
	tern_relay *r = self;
	pthread_mutex_lock(&r->mu);
	for (relay_gen *g = r->live; g; g = g->next)
		if (g->handle == handle)
			atomic_store(&g->cancelled, 1);
	pthread_mutex_unlock(&r->mu);
}

/* One unary call upstream; its reply unpacked into *out (a struct of the
 * reply's type, freed by relay_free_response). */
static int relay_unary(tern_relay *r, const char *method, const ProtobufCMessage *req, double timeout_s,
		       ProtobufCMessage *out, char *msg, size_t msg_len)
{
	char detail[512] = "";
	int st;
	ProtobufCMessage *m = tern_grpc_unary(r->up, method, req, timeout_s, out->descriptor, &st, detail, sizeof detail);
	if (m) {
		memcpy(out, m, out->descriptor->sizeof_message);
		free(m); /* the struct only: its fields now belong to *out */
	} else if (st == TERN_STATUS_OK) {
		st = TERN_STATUS_INTERNAL;
		snprintf(detail, sizeof detail, "the coordinator's reply is malformed");
	}
	if (st != TERN_STATUS_OK && msg)
		snprintf(msg, msg_len, "%s", detail);
	return st;
}

static int relay_tokenize(void *self, const Tern__V1__TokenizeRequest *req, Tern__V1__TokenizeResponse *out, char *msg,
			  size_t msg_len)
{
	return relay_unary(self, "/tern.v1.Tern/Tokenize", &req->base, RELAY_UNARY_S, &out->base, msg, msg_len);
}

static int relay_detokenize(void *self, const Tern__V1__DetokenizeRequest *req, Tern__V1__DetokenizeResponse *out,
			    char *msg, size_t msg_len)
{
	return relay_unary(self, "/tern.v1.Tern/Detokenize", &req->base, RELAY_UNARY_S, &out->base, msg, msg_len);
}

static int relay_health(void *self, Tern__V1__HealthResponse *out)
{
	tern_relay *r = self;
	Tern__V1__HealthRequest q = TERN__V1__HEALTH_REQUEST__INIT;
	const int st = relay_unary(r, "/tern.v1.Tern/Health", &q.base, RELAY_STATUS_S, &out->base, NULL, 0);
	if (st == TERN_STATUS_OK && r->sup) {
		unsigned gen = 0;
		if (tern_supervisor_state(r->sup, &gen) != TERN_JOB_UP)
			out->ready = 0;
		out->generation = gen;
		/* "FAILED -> SPARE" strings, freed with the reply (relay_free_response). */
		tern_host_swap sw[TERN_MAX_HOSTS];
		const int n = tern_supervisor_swaps(r->sup, sw, TERN_MAX_HOSTS);
		if (n > 0 && (out->replaced_hosts = calloc((size_t)n, sizeof *out->replaced_hosts))) {
			for (int i = 0; i < n; i++) {
				const size_t len = strlen(sw[i].failed) + strlen(sw[i].spare) + 5;
				if (!(out->replaced_hosts[i] = malloc(len)))
					break;
				snprintf(out->replaced_hosts[i], len, "%s -> %s", sw[i].failed, sw[i].spare);
				out->n_replaced_hosts = (size_t)i + 1;
			}
		}
	}
	return st;
}

static int relay_stats(void *self, Tern__V1__StatsResponse *out)
{
	Tern__V1__StatsRequest q = TERN__V1__STATS_REQUEST__INIT;
	return relay_unary(self, "/tern.v1.Tern/Stats", &q.base, RELAY_STATUS_S, &out->base, NULL, 0);
}

/* *out's fields came from protobuf-c's unpacker (malloc'd one by one), or
 * are the INIT defaults: a heap copy of the struct frees them all. */
static void relay_free_response(void *self, ProtobufCMessage *out)
{
	(void)self;
	ProtobufCMessage *copy = malloc(out->descriptor->sizeof_message);
	if (!copy)
		return; /* leaks one reply rather than crash */
	memcpy(copy, out, out->descriptor->sizeof_message);
	protobuf_c_message_free_unpacked(copy, NULL);
}

int tern_relay_create(tern_grpc_client *up, tern_supervisor *sup, tern_relay **out, tern_err *err)
{
	*out = NULL;
	tern_relay *r = calloc(1, sizeof *r);
	TERN_RETURN_IF(!r, err, TERN_ENOMEM, "out of memory");
	r->up = up;
	r->sup = sup;
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->idle, NULL);
	r->svc = (tern_service){.self = r,
				.generate = relay_generate,
				.cancel = relay_cancel,
				.tokenize = relay_tokenize,
				.health = relay_health,
				.stats = relay_stats,
				.free_response = relay_free_response,
				.detokenize = relay_detokenize};
	*out = r;
	return 0;
}

const tern_service *tern_relay_service(tern_relay *r)
{
	return &r->svc;
}

void tern_relay_free(tern_relay *r)
{
	if (!r)
		return;
	pthread_mutex_lock(&r->mu);
	r->closing = 1;
	for (relay_gen *g = r->live; g; g = g->next)
		atomic_store(&g->cancelled, 1);
	while (r->n_live > 0)
		pthread_cond_wait(&r->idle, &r->mu);
	pthread_mutex_unlock(&r->mu);
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->idle);
	free(r);
}
