/* pipeline.c: the scheduler's back end over MPI (see tern-pipeline.h).
 *
 * Sends are non-blocking: the coordinator must always be free to receive
 * from the last stage, or the ring of blocking sends could deadlock. */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "tern-pipeline.h"
#include "tern-link.h"

typedef struct pipe_be {
	int n_stages;
	int n_embd;
	int n_req;
	tern_link_send_req *req; /* (n_req) sends in flight */
	uint64_t *slots;         /* (rows) scratch for the frame header */
	uint32_t *pos;
	size_t cap;
} pipe_be;

static int pipe_submit(void *self, uint64_t id, const tern_row *rows, int n, const float *hidden, tern_err *err)
{
	pipe_be *p = self;
	if ((size_t)n > p->cap) {
		uint64_t *ns = realloc(p->slots, (size_t)n * sizeof *ns);
		if (ns)
			p->slots = ns;
		uint32_t *np = realloc(p->pos, (size_t)n * sizeof *np);
		if (np)
			p->pos = np;
		TERN_RETURN_IF(!ns || !np, err, TERN_ENOMEM, "out of memory");
		p->cap = (size_t)n;
	}
	for (int i = 0; i < n; i++) {
		p->slots[i] = (uint64_t)rows[i].slot;
		p->pos[i] = (uint32_t)rows[i].pos;
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
	f.seq_ids = p->slots;
	f.n_positions = (size_t)n;
	f.positions = p->pos;
	return tern_link_isend(1, TERN_TAG_ACT, &f, hidden, (size_t)n * (size_t)p->n_embd * sizeof(float), r, err);
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
	int rc = 0;
	if (h->kind != TERN__V1__FRAME_KIND__FRAME_KIND_ACTIVATIONS)
		rc = TERN_ERR(err, TERN_ECOMM, "pipeline returned a frame of kind %d", (int)h->kind);
	else if (h->error && h->error[0])
		rc = TERN_ERR(err, TERN_ECOMM, "%s", h->error);
	else if ((int)h->n_embd != p->n_embd)
		rc = TERN_ERR(err, TERN_ECOMM, "pipeline returned rows of width %u", h->n_embd);
	if (rc == 0) {
		memcpy(hidden, payload, pl);
		*id = h->step;
		if (n_stage_ms) {
			int n = (int)h->n_stage_ms;
			if (n > 64)
				n = 64;
			if (stage_ms)
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
	if (!p->req) {
		free(p);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	}
	out->self = p;
	out->max_in_flight = max_in_flight;
	out->n_stages = n_stages;
	out->submit = pipe_submit;
	out->collect = pipe_collect;
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
	free(p->slots);
	free(p->pos);
	free(p->req);
	free(p);
	be->self = NULL;
	return rc;
}
