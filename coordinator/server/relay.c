/* relay.c: tern.v1.Tern served by tern-server, relayed to the coordinator
 * (tern-relay.h). It is a tern_service, so grpc/'s server serves it exactly
 * as it serves the scheduler: same auth, limits and status codes.
 *
 * A generation has no thread: it is a held call (tern-hold.h) on the gRPC
 * server's own completion queue (tern_gen_sink.cq), so the server's one
 * event-loop thread receives each upstream message, hands it to the sink
 * (which starts the send to the client) and starts the next receive, with no
 * hand-off between threads. generate, cancel and tick all run on that
 * thread, so the list of live generations needs no lock. A client's cancel
 * cancels upstream at once (the coordinator frees the sequence). Unary calls
 * are made on the gRPC server's unary worker threads, with a deadline. */
#include "tern-relay.h"

#include "tern-hold.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RELAY_UNARY_S 30.0 /* deadline of Tokenize/Detokenize upstream */
#define RELAY_STATUS_S 5.0 /* deadline of Health/Stats upstream */

typedef struct relay_gen relay_gen;

struct tern_relay {
	tern_grpc_client *up;
	tern_supervisor *sup; /* may be NULL */
	tern_service svc;
	relay_gen *live;      /* every generation still running (the loop thread's) */
	unsigned n_live;
	uint64_t next_handle;
};

struct relay_gen {
	tern_relay *r;
	relay_gen *next, *prev;
	uint64_t handle;
	int cancelled;
	tern_held *held;
	Tern__V1__GenerateResponse *final; /* the last message, kept until the end */
	tern_gen_sink sink;
};

static void unlink_gen(tern_relay *r, relay_gen *g)
{
	if (g->prev)
		g->prev->next = g->next;
	else
		r->live = g->next;
	if (g->next)
		g->next->prev = g->prev;
	r->n_live--;
}

static void gen_msg(void *ctx, Tern__V1__GenerateResponse *msg)
{
	relay_gen *g = ctx;
	if (msg->done) {
		if (g->final)
			tern__v1__generate_response__free_unpacked(g->final, NULL);
		g->final = msg;
		return;
	}
	if (!g->cancelled)
		g->sink.piece(g->sink.ctx, msg);
	tern__v1__generate_response__free_unpacked(msg, NULL);
}

static void gen_end(void *ctx, int status, const char *detail)
{
	relay_gen *g = ctx;
	if (status == TERN_STATUS_OK && !g->final) {
		status = TERN_STATUS_INTERNAL;
		detail = "the coordinator ended the stream without its last message";
	}
	if (g->cancelled && status == TERN_STATUS_OK)
		status = TERN_STATUS_CANCELLED;
	g->sink.done(g->sink.ctx, status == TERN_STATUS_OK ? g->final : NULL, status, detail);
	if (g->final)
		tern__v1__generate_response__free_unpacked(g->final, NULL);
	unlink_gen(g->r, g);
	free(g);
}

/* Admits every request (the coordinator judges it: a refusal arrives as the
 * stream's status through done()). */
static int relay_generate(void *self, const Tern__V1__GenerateRequest *req, const tern_gen_sink *sink, uint64_t *handle,
			  char *msg, size_t msg_len)
{
	tern_relay *r = self;
	if (!sink->cq) {
		snprintf(msg, msg_len, "the relay needs the server's completion queue");
		return TERN_STATUS_INTERNAL;
	}
	relay_gen *g = calloc(1, sizeof *g);
	if (!g) {
		snprintf(msg, msg_len, "out of memory");
		return TERN_STATUS_RESOURCE_EXHAUSTED;
	}
	g->r = r;
	g->sink = *sink;
	const tern_held_cb cb = {g, gen_msg, gen_end};
	tern_err err;
	if (tern_held_open(r->sup, r->up, req, sink->cq, &cb, &g->held, &err) < 0) {
		free(g);
		snprintf(msg, msg_len, "%s", err.msg);
		return TERN_STATUS_RESOURCE_EXHAUSTED;
	}
	g->handle = *handle = ++r->next_handle;
	g->next = r->live;
	if (r->live)
		r->live->prev = g;
	r->live = g;
	r->n_live++;
	return TERN_STATUS_OK;
}

static void relay_cancel(void *self, uint64_t handle)
{
	tern_relay *r = self;
	for (relay_gen *g = r->live; g; g = g->next)
		if (g->handle == handle) {
			if (!g->cancelled) {
				g->cancelled = 1;
				tern_held_cancel(g->held); /* may end g at once */
			}
			return;
		}
}

/* Held calls waiting for the job look again. A tick may end one (gen_end
 * unlinks and frees it): the next is read first. */
static void relay_tick(void *self)
{
	tern_relay *r = self;
	for (relay_gen *g = r->live, *next; g; g = next) {
		next = g->next;
		tern_held_tick(g->held);
	}
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
	r->svc = (tern_service){.self = r,
				.generate = relay_generate,
				.cancel = relay_cancel,
				.tokenize = relay_tokenize,
				.health = relay_health,
				.stats = relay_stats,
				.free_response = relay_free_response,
				.detokenize = relay_detokenize,
				.tick = relay_tick};
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
	/* The server's stop cancelled every call and drained its queue, so every
	 * generation has ended; one that has not can no longer move (no loop). */
	if (r->n_live > 0)
		TERN_LOGW("relay", "%u streams still open when the relay is freed (left as they are)", r->n_live);
	else
		free(r);
}
