/* pipeline.c: the scheduler's back end over MPI (see tern-pipeline.h).
 *
 * Sends are non-blocking: the coordinator must always be free to receive
 * from the last stage, or the ring of blocking sends could deadlock.
 *
 * What comes back from the last stage is outside data: every frame is
 * checked against the micro-batch it answers (kind, step, width, rows, the
 * rows' sequence ids and positions, payload size) before anything is copied
 * into the caller's buffer, which is sized by what was sent. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tern-pipeline.h"
#include "tern-link.h"

/* A micro-batch sent and not yet collected: what its answer must match. */
typedef struct sent_mb {
	uint64_t id;
	int n;           /* rows */
	uint64_t *slots; /* (cap) each row's sequence id, as in the frame header */
	uint32_t *pos;   /* (cap) each row's position */
	size_t cap;
} sent_mb;

typedef struct pipe_be {
	int n_stages;
	int n_embd;
	int n_req;
	tern_link_send_req *req; /* (n_req) sends in flight */
	sent_mb *sent;           /* (n_req) ring of micro-batches in the pipeline, oldest at sent_head */
	int sent_head, n_sent;
	char host[TERN_PIPE_MAX_STAGES][64]; /* each stage's host, binding and pid, from its READY */
	char binding[TERN_PIPE_MAX_STAGES][128];
	int pid[TERN_PIPE_MAX_STAGES];
} pipe_be;

/* How many micro-batches can make progress at once: one per group of stages
 * that run on the same CPUs (same host and binding), plus one for the
 * coordinator's head unless a stage shares its host (the head's threads then
 * run on that stage's cores). A stage not yet known counts as a group of its
 * own. On one box with one NUMA domain this is 1: every rank's pool already
 * uses all of its cores, so a second micro-batch in flight adds no compute and
 * only sets two pools against each other (each product then waits for a
 * thread the other pool preempted; node/README.md, how ranks wait). */
static int pipe_depth(const pipe_be *p)
{
	char me[256] = "";
	if (gethostname(me, sizeof me - 1) != 0)
		me[0] = '\0';
	int groups = 0, head_shares = 0;
	for (int s = 0; s < p->n_stages; s++) {
		const int known = s < TERN_PIPE_MAX_STAGES && p->host[s][0];
		int seen = 0;
		for (int t = 0; known && t < s && !seen; t++)
			seen = !strcmp(p->host[t], p->host[s]) && !strcmp(p->binding[t], p->binding[s]);
		groups += !seen;
		if (known && me[0] && !strcmp(p->host[s], me))
			head_shares = 1;
	}
	const int depth = groups + !head_shares;
	return depth < 1 ? 1 : depth > p->n_req ? p->n_req : depth;
}

void tern_coord_pipeline_set_stage(tern_sched_backend *be, int stage, const char *host, const char *binding,
				   uint32_t pid)
{
	pipe_be *p = be->self;
	if (!p || stage < 1 || stage > p->n_stages || stage > TERN_PIPE_MAX_STAGES)
		return;
	snprintf(p->host[stage - 1], sizeof p->host[0], "%s", host ? host : "");
	snprintf(p->binding[stage - 1], sizeof p->binding[0], "%s", binding ? binding : "");
	p->pid[stage - 1] = pid <= INT32_MAX ? (int)pid : 0;
	be->max_in_flight = pipe_depth(p);
}

/* The state letter of a process of this host (/proc/PID/stat), 'X' when it
 * is gone. */
static char proc_state(int pid)
{
	char path[64], line[512];
	snprintf(path, sizeof path, "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 'X';
	const size_t n = fread(line, 1, sizeof line - 1, f);
	fclose(f);
	line[n] = '\0';
	const char *rp = strrchr(line, ')');
	return rp && rp[1] == ' ' && rp[2] ? rp[2] : '?';
}

/* Only stages on this host can be looked at: their pid means nothing here
 * otherwise. */
static int pipe_diagnose(void *self, char *buf, size_t len)
{
	pipe_be *p = self;
	char me[256] = "";
	if (gethostname(me, sizeof me - 1) != 0)
		return 0;
	for (int s = 0; s < p->n_stages && s < TERN_PIPE_MAX_STAGES; s++) {
		if (p->pid[s] <= 0 || strcmp(p->host[s], me) != 0)
			continue;
		const char st = proc_state(p->pid[s]);
		const char *what = st == 'X' || st == 'Z' ? "died" : st == 'T' || st == 't' ? "is stopped" : NULL;
		if (what) {
			snprintf(buf, len, "stage %d (rank %d on host %s, pid %d) %s", s + 1, s + 1, p->host[s], p->pid[s],
				 what);
			return 1;
		}
	}
	return 0;
}

static int pipe_submit(void *self, uint64_t id, const tern_row *rows, int n, const float *hidden, tern_err *err)
{
	pipe_be *p = self;
	TERN_RETURN_IF(n < 1, err, TERN_EINVAL, "empty micro-batch");
	TERN_RETURN_IF(p->n_sent == p->n_req, err, TERN_ESTATE, "%d micro-batches already in the pipeline", p->n_req);
	sent_mb *sm = &p->sent[(p->sent_head + p->n_sent) % p->n_req];
	if ((size_t)n > sm->cap) {
		uint64_t *ns = realloc(sm->slots, (size_t)n * sizeof *ns);
		if (ns)
			sm->slots = ns;
		uint32_t *np = realloc(sm->pos, (size_t)n * sizeof *np);
		if (np)
			sm->pos = np;
		TERN_RETURN_IF(!ns || !np, err, TERN_ENOMEM, "out of memory");
		sm->cap = (size_t)n;
	}
	for (int i = 0; i < n; i++) {
		sm->slots[i] = (uint64_t)rows[i].slot;
		sm->pos[i] = (uint32_t)rows[i].pos;
	}
	/* A free send request: earlier sends have normally long completed. */
	tern_link_send_req *r = NULL;
	for (int i = 0; i < p->n_req && !r; i++)
		if (tern_link_test(&p->req[i]))
			r = &p->req[i];
	if (!r) {
		r = &p->req[0];
		TERN_FORWARD_IF_ERROR(tern_link_wait(r, 10.0, err));
	}
	Tern__V1__Frame f = TERN__V1__FRAME__INIT;
	f.kind = TERN__V1__FRAME_KIND__FRAME_KIND_ACTIVATIONS;
	f.step = id;
	f.n_embd = (uint32_t)p->n_embd;
	f.n_seq_ids = (size_t)n;
	f.seq_ids = sm->slots;
	f.n_positions = (size_t)n;
	f.positions = sm->pos;
	TERN_FORWARD_IF_ERROR(
		tern_link_isend(1, TERN_TAG_ACT, &f, hidden, (size_t)n * (size_t)p->n_embd * sizeof(float), r, err));
	sm->id = id;
	sm->n = n;
	p->n_sent++;
	return 0;
}

/* 0 when frame h (payload of pl bytes) answers micro-batch sm, else
 * TERN_ECOMM with a one-line reason. */
static int check_reply(const pipe_be *p, const sent_mb *sm, const Tern__V1__Frame *h, size_t pl, tern_err *err)
{
	TERN_RETURN_IF(h->kind != TERN__V1__FRAME_KIND__FRAME_KIND_ACTIVATIONS, err, TERN_ECOMM,
		       "pipeline returned a frame of kind %d", (int)h->kind);
	TERN_RETURN_IF(h->error && h->error[0], err, TERN_ECOMM, "%s", h->error);
	TERN_RETURN_IF(h->step != sm->id, err, TERN_ECOMM, "pipeline returned micro-batch %llu, expected %llu",
		       (unsigned long long)h->step, (unsigned long long)sm->id);
	TERN_RETURN_IF((int64_t)h->n_embd != p->n_embd, err, TERN_ECOMM,
		       "pipeline returned rows of width %u, expected %d", h->n_embd, p->n_embd);
	TERN_RETURN_IF(h->n_seq_ids != (size_t)sm->n || h->n_positions != (size_t)sm->n, err, TERN_ECOMM,
		       "pipeline returned micro-batch %llu with %zu sequence ids and %zu positions for %d rows",
		       (unsigned long long)sm->id, h->n_seq_ids, h->n_positions, sm->n);
	for (int i = 0; i < sm->n; i++)
		TERN_RETURN_IF(h->seq_ids[i] != sm->slots[i] || h->positions[i] != sm->pos[i], err, TERN_ECOMM,
			       "pipeline returned row %d of micro-batch %llu as sequence %llu position %u, "
			       "sent as sequence %llu position %u",
			       i, (unsigned long long)sm->id, (unsigned long long)h->seq_ids[i], h->positions[i],
			       (unsigned long long)sm->slots[i], sm->pos[i]);
	const size_t want = (size_t)sm->n * (size_t)p->n_embd * sizeof(float);
	TERN_RETURN_IF(pl != want, err, TERN_ECOMM,
		       "pipeline returned %zu payload bytes for micro-batch %llu, expected %zu (%d rows of %d)", pl,
		       (unsigned long long)sm->id, want, sm->n, p->n_embd);
	return 0;
}

static int pipe_collect(void *self, double timeout_s, uint64_t *id, float *hidden, float *stage_ms, int *n_stage_ms,
			tern_err *err)
{
	pipe_be *p = self;
	for (int i = 0; i < p->n_req; i++)
		tern_link_test(&p->req[i]);
	uint8_t *buf = NULL;
	Tern__V1__Frame *h = NULL;
	const uint8_t *payload = NULL;
	size_t pl = 0;
	TERN_FORWARD_IF_ERROR(
		tern_link_recv(p->n_stages, TERN_TAG_ACT, timeout_s, &buf, &h, &payload, &pl, NULL, err));
	int rc = p->n_sent == 0 ? TERN_ERR(err, TERN_ECOMM, "pipeline returned a frame with nothing in flight")
				: check_reply(p, &p->sent[p->sent_head], h, pl, err);
	if (rc == 0) {
		memcpy(hidden, payload, pl);
		p->sent_head = (p->sent_head + 1) % p->n_req;
		p->n_sent--;
		*id = h->step;
		if (n_stage_ms) {
			int n = (int)h->n_stage_ms;
			if (n > 64)
				n = 64;
			if (stage_ms && n > 0) /* a frame with no timings has h->stage_ms NULL */
				memcpy(stage_ms, h->stage_ms, (size_t)n * sizeof(float));
			*n_stage_ms = n;
		}
	}
	tern__v1__frame__free_unpacked(h, NULL);
	free(buf);
	return rc;
}

int tern_coord_pipeline_backend(int n_stages, int n_embd, int max_in_flight, tern_sched_backend *out, tern_err *err)
{
	memset(out, 0, sizeof *out);
	TERN_RETURN_IF(n_stages < 1 || max_in_flight < 1, err, TERN_EINVAL, "bad pipeline shape");
	pipe_be *p = calloc(1, sizeof *p);
	TERN_RETURN_IF(!p, err, TERN_ENOMEM, "out of memory");
	p->n_stages = n_stages;
	p->n_embd = n_embd;
	p->n_req = max_in_flight;
	p->req = calloc((size_t)max_in_flight, sizeof *p->req);
	p->sent = calloc((size_t)max_in_flight, sizeof *p->sent);
	if (!p->req || !p->sent) {
		free(p->req);
		free(p->sent);
		free(p);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	}
	out->self = p;
	out->max_in_flight = max_in_flight;
	out->n_stages = n_stages;
	out->submit = pipe_submit;
	out->collect = pipe_collect;
	out->diagnose = pipe_diagnose;
	return 0;
}

int tern_coord_pipeline_shutdown(tern_sched_backend *be, double timeout_s, tern_err *err)
{
	pipe_be *p = be->self;
	if (!p)
		return 0;
	int rc = 0;
	for (int i = 0; i < p->n_req; i++)
		tern_link_wait(&p->req[i], timeout_s, NULL);
	Tern__V1__Frame f = TERN__V1__FRAME__INIT;
	f.kind = TERN__V1__FRAME_KIND__FRAME_KIND_SHUTDOWN;
	rc = tern_link_send(1, TERN_TAG_ACT, &f, NULL, 0, err);
	/* Wait for it to come round: everything before it has drained. */
	if (rc == 0)
		rc = tern_link_recv_until(p->n_stages, TERN_TAG_ACT, timeout_s, TERN__V1__FRAME_KIND__FRAME_KIND_SHUTDOWN,
					  err);
	for (int i = 0; i < p->n_req; i++) {
		free(p->sent[i].slots);
		free(p->sent[i].pos);
	}
	free(p->sent);
	free(p->req);
	free(p);
	be->self = NULL;
	return rc;
}
