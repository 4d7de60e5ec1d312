/* hold.c: Generate calls that resume on the MPI job's next start
 * (tern-hold.h).
 *
 * One state machine (STREAMING -> WAITING -> STREAMING ... -> ENDED) on a
 * completion queue (tern_held_open: the relay's and the HTTP side's event
 * loops), pushed by its tern_grpc_astream's callbacks and by tern_held_tick,
 * through three steps: take() for a message, stream_ended() when the
 * upstream call ends, poll_job() while waiting for the job. */
#include "tern-hold.h"
#include "tern-service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* An UNAVAILABLE from a job that is still up after this long was the
 * coordinator's own answer (not a death): it is passed through. */
#define HOLD_CONFIRM_S 15.0

typedef enum { HELD_STREAMING, HELD_WAITING, HELD_ENDED } held_state;

struct tern_held {
	tern_supervisor *sup; /* NULL: no resume */
	tern_grpc_client *up;
	void *cq;                 /* the queue */
	tern_held_cb cb;          /* where messages and the end go */
	tern_grpc_astream *as;    /* the upstream call, NULL between calls */
	Tern__V1__GenerateRequest *req; /* our copy */
	uint32_t *ids;                  /* (n_ids, cap) token ids handed out, index order */
	size_t n_ids, cap;
	held_state state;
	unsigned gen;      /* generation of the job the current call went to */
	int final_seen;    /* the last message was handed out */
	int cancelled;
	int status;
	char detail[512];
	double t_fail;     /* when the stream failed (the pause starts); 0: no pause pending */
};

/* A deep copy of m through its wire form. */
static Tern__V1__GenerateRequest *copy_request(const Tern__V1__GenerateRequest *m)
{
	const size_t n = protobuf_c_message_get_packed_size(&m->base);
	uint8_t *buf = malloc(n ? n : 1);
	if (!buf)
		return NULL;
	protobuf_c_message_pack(&m->base, buf);
	Tern__V1__GenerateRequest *c = tern__v1__generate_request__unpack(NULL, n, buf);
	free(buf);
	return c;
}

/* The statuses a dying job leaves its calls with (the coordinator's
 * "a stage died", a broken connection, a stream cut short). */
static int job_status(int st)
{
	return st == TERN_STATUS_UNAVAILABLE || st == TERN_STATUS_INTERNAL || st == TERN_STATUS_UNKNOWN ||
	       st == TERN_STATUS_ABORTED;
}

static int resumes(const tern_held *h)
{
	return h->sup && tern_supervisor_restarts_jobs(h->sup);
}

static void as_msg(void *ctx, const uint8_t *m, size_t n);
static void as_end(void *ctx, int status, const char *detail);

static int call(tern_held *h, tern_err *err)
{
	/* The resume ids ride on the copy only while it is packed. */
	h->req->resume_token_ids = h->n_ids ? h->ids : NULL;
	h->req->n_resume_token_ids = h->n_ids;
	const tern_grpc_astream_cb cb = {h, as_msg, as_end};
	const int rc = tern_grpc_astream_start(h->up, "/tern.v1.Tern/Generate", &h->req->base, 0, h->cq, &cb, &h->as,
					       err);
	h->req->resume_token_ids = NULL;
	h->req->n_resume_token_ids = 0;
	return rc;
}

static int held_new(tern_supervisor *sup, tern_grpc_client *up, const Tern__V1__GenerateRequest *req, void *cq,
		    const tern_held_cb *cb, tern_held **out, tern_err *err)
{
	*out = NULL;
	tern_held *h = calloc(1, sizeof *h);
	if (!h || !(h->req = copy_request(req))) {
		free(h);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	}
	h->sup = sup;
	h->up = up;
	h->cq = cq;
	if (cb)
		h->cb = *cb;
	/* A caller's own resume ids (a front end before us resuming) are the
	 * first of the ids handed out: the stream starts at their count. */
	h->ids = h->req->resume_token_ids;
	h->n_ids = h->cap = h->req->n_resume_token_ids;
	h->req->resume_token_ids = NULL;
	h->req->n_resume_token_ids = 0;
	if (resumes(h)) {
		/* The seed is ours from the start, so a resumed stream draws the
		 * same numbers (the final message reports it, as it would). */
		if (!h->req->sampling) {
			h->req->sampling = malloc(sizeof *h->req->sampling);
			if (!h->req->sampling) {
				tern__v1__generate_request__free_unpacked(h->req, NULL);
				free(h->ids);
				free(h);
				return TERN_ERR(err, TERN_ENOMEM, "out of memory");
			}
			tern__v1__sampling_params__init(h->req->sampling);
		}
		if (!h->req->sampling->has_seed) {
			uint64_t seed = 0;
			if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed)
				seed = (uint64_t)(tern_now_s() * 1e9);
			h->req->sampling->seed = seed;
			h->req->sampling->has_seed = 1;
		}
		tern_supervisor_state(sup, &h->gen);
	}
	if (call(h, err) < 0) {
		tern__v1__generate_request__free_unpacked(h->req, NULL);
		free(h->ids);
		free(h);
		return -1;
	}
	*out = h;
	return 0;
}

int tern_held_open(tern_supervisor *sup, tern_grpc_client *up, const Tern__V1__GenerateRequest *req, void *cq,
		   const tern_held_cb *cb, tern_held **out, tern_err *err)
{
	return held_new(sup, up, req, cq, cb, out, err);
}

static int end(tern_held *h, int status, const char *detail)
{
	h->state = HELD_ENDED;
	h->status = status;
	if (detail != h->detail) {
		/* Cut to fit (a reason may be longer than the buffer). */
		const size_t n = strnlen(detail, sizeof h->detail - 1);
		memmove(h->detail, detail, n);
		h->detail[n] = '\0';
	}
	return -1;
}

/* Records a message about to be handed out: 0, -1 when it breaks the
 * stream's order (a coordinator that did not resume where it was asked
 * to), -2 out of memory. */
static int note(tern_held *h, const Tern__V1__GenerateResponse *r)
{
	if (r->done) {
		h->final_seen = 1;
		return 0;
	}
	if (r->index != h->n_ids)
		return -1;
	if (h->n_ids == h->cap) {
		const size_t cap = h->cap ? 2 * h->cap : 64; /* the unpacker's array: realloc-able */
		uint32_t *p = realloc(h->ids, cap * sizeof *p);
		if (!p)
			return -2;
		h->ids = p;
		h->cap = cap;
	}
	h->ids[h->n_ids++] = r->token_id;
	return 0;
}

/* A message from the upstream call, unpacked into *out: 0, or -1 after
 * ending the call (malformed, out of order, out of memory); the caller then
 * cancels the upstream call. */
static int take(tern_held *h, const uint8_t *m, size_t n, Tern__V1__GenerateResponse **out)
{
	*out = NULL;
	Tern__V1__GenerateResponse *resp = tern__v1__generate_response__unpack(NULL, n, m);
	const int k = resp ? note(h, resp) : -3;
	if (k < 0) {
		if (resp)
			tern__v1__generate_response__free_unpacked(resp, NULL);
		return end(h, k == -2 ? TERN_STATUS_RESOURCE_EXHAUSTED : TERN_STATUS_INTERNAL,
			   k == -2   ? "out of memory"
			   : k == -3 ? "a malformed message from the coordinator"
				     : "the resumed stream did not continue in order");
	}
	if (h->t_fail > 0) {
		tern_supervisor_resumed(h->sup, tern_now_s() - h->t_fail);
		h->t_fail = 0;
	}
	*out = resp;
	return 0;
}

/* The upstream call ended with st (details in h->detail): 1 when the call
 * now waits for the job's next start, -1 when it has ended. */
static int stream_ended(tern_held *h, int st)
{
	if (st == TERN_STATUS_OK || h->final_seen || h->cancelled || !job_status(st) || !resumes(h))
		return end(h, h->cancelled && st == TERN_STATUS_OK ? TERN_STATUS_CANCELLED : st, h->detail);
	h->status = st;
	h->state = HELD_WAITING;
	if (h->t_fail <= 0)
		h->t_fail = tern_now_s();
	tern_log(TERN_LOG_INFO, "hold", "a stream failed after %zu tokens (%s: %s): waiting for the job", h->n_ids,
		 tern_grpc_status_name(st), h->detail);
	return 1;
}

/* While waiting: looks for the job's next generation (up to wait_s). 1 when
 * the call is sent again (streaming), 0 still waiting, -1 ended. */
static int poll_job(tern_held *h, double wait_s)
{
	if (h->cancelled)
		return end(h, TERN_STATUS_CANCELLED, "cancelled");
	unsigned gen = 0;
	char why[512];
	const int r = tern_supervisor_await(h->sup, h->gen + 1, wait_s, &gen, NULL, 0, why, sizeof why);
	if (r < 0) {
		/* What broke the stream, then why it will not resume. */
		char d[sizeof h->detail + sizeof why + 2];
		snprintf(d, sizeof d, "%s; %s", h->detail[0] ? h->detail : "the stream failed", why);
		return end(h, TERN_STATUS_UNAVAILABLE, d);
	}
	if (r == 0) {
		unsigned now_gen;
		if (tern_supervisor_state(h->sup, &now_gen) == TERN_JOB_UP && now_gen == h->gen &&
		    tern_now_s() - h->t_fail > HOLD_CONFIRM_S)
			return end(h, h->status, h->detail);
		return 0;
	}
	h->gen = gen;
	tern_err err;
	if (call(h, &err) < 0)
		return end(h, TERN_STATUS_RESOURCE_EXHAUSTED, err.msg);
	h->state = HELD_STREAMING;
	return 1;
}

/* ---- the event-driven driver ------------------------------------------ */

/* Tells the owner the call has ended and frees h. */
static void deliver_end(tern_held *h)
{
	h->cb.end(h->cb.ctx, h->status, h->detail);
	tern__v1__generate_request__free_unpacked(h->req, NULL);
	free(h->ids);
	free(h);
}

static void as_msg(void *ctx, const uint8_t *m, size_t n)
{
	tern_held *h = ctx;
	if (h->state != HELD_STREAMING)
		return; /* ended by an earlier message: the rest is dropped */
	Tern__V1__GenerateResponse *resp;
	if (take(h, m, n, &resp) < 0) {
		tern_grpc_astream_cancel(h->as); /* as_end delivers the end */
		return;
	}
	h->cb.msg(h->cb.ctx, resp);
}

static void as_end(void *ctx, int status, const char *detail)
{
	tern_held *h = ctx;
	h->as = NULL;
	if (h->state == HELD_ENDED) { /* take() ended it: its status stands */
		deliver_end(h);
		return;
	}
	snprintf(h->detail, sizeof h->detail, "%s", detail);
	if (stream_ended(h, status) < 0)
		deliver_end(h);
	/* else waiting: tern_held_tick carries on */
}

void tern_held_tick(tern_held *h)
{
	if (h->state == HELD_WAITING && poll_job(h, 0) < 0)
		deliver_end(h);
}

void tern_held_cancel(tern_held *h)
{
	h->cancelled = 1;
	if (h->as)
		tern_grpc_astream_cancel(h->as);
	else if (h->state == HELD_WAITING) {
		end(h, TERN_STATUS_CANCELLED, "cancelled");
		deliver_end(h);
	}
}
