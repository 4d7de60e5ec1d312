/* sched-local.c: the in-process back end (tern_sched_local_backend): the
 * scheduler's micro-batches run through an engine in this process (tern-run,
 * tern-coordinator --stages 0). */
#include "sched-internal.h"

/* ---- the in-process back end ---------------------------------------------- */

typedef struct local_be {
	tern_engine *e;
	int n_embd;
	uint64_t id;
	int n;
	int full;
	float *hidden; /* (n, n_embd) result */
	size_t cap;
	float ms;
} local_be;

static int local_submit(void *self, uint64_t id, const tern_row *rows, int n, const float *hidden, tern_err *err)
{
	local_be *b = self;
	TERN_RETURN_IF(b->full, err, TERN_ESTATE, "local back end takes one micro-batch at a time");
	const size_t need = (size_t)n * (size_t)b->n_embd;
	if (need > b->cap) {
		tern_aligned_free(b->hidden);
		b->hidden = tern_aligned_alloc(need * sizeof(float), TERN_ALIGN);
		b->cap = b->hidden ? need : 0;
		TERN_RETURN_IF(!b->hidden, err, TERN_ENOMEM, "out of memory");
	}
	memcpy(b->hidden, hidden, need * sizeof(float));
	const double t0 = tern_now_s();
	TERN_FORWARD_IF_ERROR(tern_engine_forward(b->e, rows, n, b->hidden, err));
	b->ms = (float)((tern_now_s() - t0) * 1e3);
	b->id = id;
	b->n = n;
	b->full = 1;
	return 0;
}

static int local_collect(void *self, double timeout_s, uint64_t *id, float *hidden, float *stage_ms, int *n_stage_ms,
			 tern_err *err)
{
	(void)timeout_s;
	local_be *b = self;
	TERN_RETURN_IF(!b->full, err, TERN_ETIMEOUT, "nothing in flight");
	memcpy(hidden, b->hidden, (size_t)b->n * (size_t)b->n_embd * sizeof(float));
	*id = b->id;
	if (stage_ms)
		stage_ms[0] = b->ms;
	if (n_stage_ms)
		*n_stage_ms = 1;
	b->full = 0;
	return 0;
}

static int local_attach(void *self, int slot, const int32_t *tok, int n, tern_err *err)
{
	local_be *b = self;
	return tern_kv_prefix_attach(tern_engine_kv(b->e), slot, tok, n, err);
}

static int local_publish(void *self, int slot, const int32_t *tok, int n, tern_err *err)
{
	local_be *b = self;
	return tern_kv_prefix_publish(tern_engine_kv(b->e), slot, tok, n, err);
}

int tern_sched_local_backend(tern_engine *e, tern_sched_backend *out, tern_err *err)
{
	memset(out, 0, sizeof *out);
	local_be *b = calloc(1, sizeof *b);
	TERN_RETURN_IF(!b, err, TERN_ENOMEM, "out of memory");
	b->e = e;
	b->n_embd = tern_engine_layers(e)->hp.n_embd;
	out->self = b;
	out->max_in_flight = 1;
	out->n_stages = 1;
	out->submit = local_submit;
	out->collect = local_collect;
	out->prefix_attach = local_attach;
	out->prefix_publish = local_publish;
	return 0;
}

void tern_sched_local_free(tern_sched_backend *be)
{
	if (!be || !be->self)
		return;
	local_be *b = be->self;
	tern_aligned_free(b->hidden);
	free(b);
	be->self = NULL;
}

