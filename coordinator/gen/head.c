/* head.c: token embeddings, final RMSNorm and the LM head (tern-head.h):
 * the embedding matrix when tied, the output matrix when not.
 *
 * The LM head reads its whole matrix per call (657 MB for the 2b4t shape in
 * F16): it is the largest single read of a decode step. Its dot
 * products, the final RMSNorm and the element conversions are kernels/'s
 * float kernels (tern-float.h) of the ISA chosen at creation: every ISA
 * computes the same logits bit for bit. A quantized head (Q8/Q4) reads its
 * own packed copy (tern_qh_* layout) with the integer dot products of the
 * same kernels. */
#include "tern-head.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tern-float.h"

struct tern_head {
	tern_head_config cfg;
	tern_dot_type dot;            /* cfg.dtype as the dot kernels name it */
	const tern_float_kernels *fk; /* the ISA's float kernels */
	size_t elem; /* bytes per element */
	/* the matrix the logits read: cfg.head (untied) or cfg.emb (tied) */
	tern_dot_type hdot;
	size_t helem;
	const void *hw; /* (n_vocab, hrow) */
	size_t hrow;
	float *norm; /* (n_embd) copy of the final norm weight */
	float *xn;   /* (cap, n_embd) normed rows */
	int cap;
	tern_head_format qfmt;  /* format of qw (TERN_HEAD_FILE: none) */
	const uint8_t *qw;      /* tern_qh_bytes(qfmt) packed head: owned (qw_own) or borrowed (a plan's shard) */
	uint8_t *qw_own;
	int use_q;              /* logits from qw */
	int8_t *xq;             /* (cap, nb * 32) the normed rows quantized for the integer dots */
	float *xd;              /* (cap, nb) */
	int32_t *xs;            /* (cap, nb) */
};

static tern_qh_type qh_type(tern_head_format f)
{
	return f == TERN_HEAD_Q4 ? TERN_QH_Q4 : TERN_QH_Q8;
}

/* The embedding types the dot kernels read; -1 for any other. */
static int dot_type(tern_dtype dt)
{
	switch (dt) {
	case TERN_DTYPE_F32: return TERN_DOT_F32;
	case TERN_DTYPE_F16: return TERN_DOT_F16;
	case TERN_DTYPE_BF16: return TERN_DOT_BF16;
	default: return -1;
	}
}

/* ---- public ------------------------------------------------------------------ */

tern_isa tern_head_isa(const tern_head *h)
{
	return h->fk->isa;
}

int tern_head_create(const tern_head_config *cfg, tern_head **out, tern_err *err)
{
	*out = NULL;
	TERN_RETURN_IF(!cfg || !cfg->emb || !cfg->out_norm, err, TERN_EINVAL, "head: no embeddings or norm");
	TERN_RETURN_IF(cfg->n_vocab <= 0 || cfg->n_embd <= 0 || cfg->n_embd > (1 << 20), err, TERN_EINVAL,
		       "head: bad shape %d x %d", cfg->n_vocab, cfg->n_embd);
	TERN_RETURN_IF(cfg->qhead && cfg->qformat != TERN_HEAD_Q8 && cfg->qformat != TERN_HEAD_Q4, err, TERN_EINVAL,
		       "head: packed LM head of unknown format %d", (int)cfg->qformat);
	TERN_RETURN_IF(cfg->packed_only && (!cfg->qhead || cfg->head), err, TERN_EINVAL,
		       "head: a packed-only LM head needs the packed head and no head matrix");
	const int dot = dot_type(cfg->dtype), hdot = cfg->head ? dot_type(cfg->head_dtype) : dot;
	TERN_RETURN_IF(dot < 0, err, TERN_EINVAL, "head: unsupported embedding type %d", (int)cfg->dtype);
	TERN_RETURN_IF(hdot < 0, err, TERN_EINVAL, "head: unsupported output matrix type %d", (int)cfg->head_dtype);
	const size_t elem = dot == TERN_DOT_F32 ? 4 : 2, helem = hdot == TERN_DOT_F32 ? 4 : 2;
	TERN_RETURN_IF(cfg->row_bytes && cfg->row_bytes < elem * (size_t)cfg->n_embd, err, TERN_EINVAL,
		       "head: row stride %zu below a row of %d elements", cfg->row_bytes, cfg->n_embd);
	TERN_RETURN_IF(cfg->head && cfg->head_row_bytes && cfg->head_row_bytes < helem * (size_t)cfg->n_embd, err,
		       TERN_EINVAL, "head: output row stride %zu below a row of %d elements", cfg->head_row_bytes,
		       cfg->n_embd);
	const tern_float_kernels *fk = tern_float_kernels_get(cfg->isa);
	TERN_RETURN_IF(!fk, err, TERN_EINVAL, "head: kernel ISA %s not available here", tern_isa_name(cfg->isa));
	tern_head *h = calloc(1, sizeof *h);
	TERN_RETURN_IF(!h, err, TERN_ENOMEM, "head: out of memory");
	h->cfg = *cfg;
	h->dot = (tern_dot_type)dot;
	h->fk = fk;
	h->elem = elem;
	if (!h->cfg.row_bytes)
		h->cfg.row_bytes = elem * (size_t)cfg->n_embd;
	h->hdot = (tern_dot_type)hdot;
	h->helem = helem;
	h->hw = cfg->head ? cfg->head : cfg->emb;
	h->hrow = !cfg->head ? h->cfg.row_bytes : cfg->head_row_bytes ? cfg->head_row_bytes : helem * (size_t)cfg->n_embd;
	h->norm = tern_aligned_alloc((size_t)cfg->n_embd * sizeof(float), TERN_ALIGN);
	if (!h->norm) {
		free(h);
		return TERN_ERR(err, TERN_ENOMEM, "head: out of memory");
	}
	memcpy(h->norm, cfg->out_norm, (size_t)cfg->n_embd * sizeof(float));
	h->cfg.out_norm = h->norm;
	if (cfg->qhead) {
		h->qfmt = cfg->qformat;
		h->qw = cfg->qhead;
		h->use_q = 1;
	}
	*out = h;
	return 0;
}

void tern_head_free(tern_head *h)
{
	if (!h)
		return;
	tern_aligned_free(h->norm);
	tern_aligned_free(h->xn);
	tern_aligned_free(h->qw_own);
	tern_aligned_free(h->xq);
	free(h->xd);
	free(h->xs);
	free(h);
}

uint64_t tern_head_bytes(const tern_head *h)
{
	if (h->use_q)
		return tern_qh_bytes(qh_type(h->qfmt), h->cfg.n_vocab, h->cfg.n_embd);
	return (uint64_t)h->cfg.n_vocab * h->helem * (uint64_t)h->cfg.n_embd;
}

static const uint8_t *emb_row(const tern_head *h, int64_t v)
{
	return (const uint8_t *)h->cfg.emb + (size_t)v * h->cfg.row_bytes;
}

int tern_head_embed(const tern_head *h, const int32_t *tokens, int n, float *hidden, tern_err *err)
{
	const int d = h->cfg.n_embd;
	for (int j = 0; j < n; j++) {
		TERN_RETURN_IF(tokens[j] < 0 || tokens[j] >= h->cfg.n_vocab, err, TERN_EINVAL,
			       "head: token id %d outside the vocabulary of %d", (int)tokens[j], h->cfg.n_vocab);
		const uint8_t *row = emb_row(h, tokens[j]);
		float *o = hidden + (size_t)j * (size_t)d;
		for (int i = 0; i < d; i++)
			o[i] = tern_dot_elem(row, h->dot, i);
	}
	return 0;
}

typedef struct {
	const tern_head *h;
	int n;
	float *logits;
} logits_job;

static void logits_run(void *ctx, int tid, int nth)
{
	const logits_job *job = ctx;
	const tern_head *h = job->h;
	const int V = h->cfg.n_vocab, d = h->cfg.n_embd;
	/* contiguous vocabulary ranges (whole 16-row groups when quantized), so
	 * each thread streams its own part */
	if (h->use_q) {
		const int G = (V + TERN_QH_GROUP - 1) / TERN_QH_GROUP;
		const int g0 = (int)((int64_t)G * tid / nth), g1 = (int)((int64_t)G * (tid + 1) / nth);
		const tern_qdot_args a = {qh_type(h->qfmt), h->qw, d, V, h->xq, h->xd, h->xs, job->n, job->logits, (size_t)V};
		if (g0 < g1)
			h->fk->qdot_groups(&a, g0, g1);
		return;
	}
	const int v0 = (int)((int64_t)V * tid / nth), v1 = (int)((int64_t)V * (tid + 1) / nth);
	const tern_dot_args a = {h->hdot, h->hw, h->hrow, NULL, d, h->xn, (size_t)d, job->n, job->logits, (size_t)V};
	if (v0 < v1)
		h->fk->dot_rows(&a, v0, v1);
}

int tern_head_logits(tern_head *h, tern_pool *pool, const float *hidden, int n, float *logits, tern_err *err)
{
	if (n <= 0)
		return 0;
	const int d = h->cfg.n_embd;
	const size_t nb = (size_t)tern_qh_blocks(d);
	if (n > h->cap) {
		float *xn = tern_aligned_alloc((size_t)n * (size_t)d * sizeof(float), TERN_ALIGN);
		int8_t *xq = tern_aligned_alloc((size_t)n * nb * TERN_QH_BLOCK, TERN_ALIGN);
		float *xd = malloc((size_t)n * nb * sizeof(float));
		int32_t *xs = malloc((size_t)n * nb * sizeof(int32_t));
		if (!xn || !xq || !xd || !xs) {
			tern_aligned_free(xn);
			tern_aligned_free(xq);
			free(xd);
			free(xs);
			return TERN_ERR(err, TERN_ENOMEM, "head: cannot hold %d normed rows", n);
		}
		tern_aligned_free(h->xn);
		tern_aligned_free(h->xq);
		free(h->xd);
		free(h->xs);
		h->xn = xn, h->xq = xq, h->xd = xd, h->xs = xs;
		h->cap = n;
	}
	for (int j = 0; j < n; j++) {
		float *xn = h->xn + (size_t)j * (size_t)d;
		h->fk->rmsnorm(hidden + (size_t)j * (size_t)d, h->norm, d, h->cfg.eps, xn);
		if (h->use_q)
			tern_qx_quantize(xn, d, h->xq + (size_t)j * nb * TERN_QH_BLOCK, h->xd + (size_t)j * nb,
					 h->xs + (size_t)j * nb);
	}
	logits_job job = {h, n, logits};
	tern_pool_run(pool, logits_run, &job);
	return 0;
}

/* ---- quantized LM head ---------------------------------------------------------------- */

typedef struct {
	tern_head *h;
	tern_qh_type t;
	uint8_t *qw;
	int failed; /* a thread could not get its scratch rows */
} pack_job;

static void pack_run(void *ctx, int tid, int nth)
{
	pack_job *job = ctx;
	const tern_head *h = job->h;
	const int V = h->cfg.n_vocab, d = h->cfg.n_embd, G = (V + TERN_QH_GROUP - 1) / TERN_QH_GROUP;
	const int g0 = (int)((int64_t)G * tid / nth), g1 = (int)((int64_t)G * (tid + 1) / nth);
	float *rows = malloc((size_t)TERN_QH_GROUP * (size_t)d * sizeof(float)); /* (16, n_embd) */
	if (!rows) {
		__atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
		return;
	}
	tern_qh_pack_rows(job->t, h->hw, h->hdot, h->hrow, V, d, g0, g1, rows, job->qw);
	free(rows);
}

int tern_head_quantize(tern_head *h, tern_head_format f, tern_pool *pool, tern_err *err)
{
	TERN_RETURN_IF(h->cfg.packed_only && f != h->qfmt, err, TERN_EUNSUP,
		       "the plan stores only the %s LM head of this untied model, not its output matrix: %s needs a plan "
		       "cut with --lm-head %s",
		       tern_head_format_name(h->qfmt), tern_head_format_name(f), tern_head_format_name(f));
	if (f == TERN_HEAD_FILE) {
		h->use_q = 0;
		return 0;
	}
	TERN_RETURN_IF(f != TERN_HEAD_Q8 && f != TERN_HEAD_Q4, err, TERN_EINVAL, "head: unknown LM head format %d",
		       (int)f);
	if (h->qw && h->qfmt == f) {
		h->use_q = 1;
		return 0;
	}
	const size_t bytes = tern_qh_bytes(qh_type(f), h->cfg.n_vocab, h->cfg.n_embd);
	uint8_t *qw = tern_aligned_alloc(bytes, TERN_ALIGN);
	TERN_RETURN_IF(!qw, err, TERN_ENOMEM, "head: cannot hold the %s LM head (%zu bytes)", tern_head_format_name(f),
		       bytes);
	pack_job job = {h, qh_type(f), qw, 0};
	tern_pool_run(pool, pack_run, &job);
	if (job.failed) {
		tern_aligned_free(qw);
		return TERN_ERR(err, TERN_ENOMEM, "head: out of memory");
	}
	tern_aligned_free(h->qw_own);
	h->qw_own = qw;
	h->qw = qw;
	h->qfmt = f;
	h->use_q = 1;
	return 0;
}

tern_head_format tern_head_active(const tern_head *h)
{
	return h->use_q ? h->qfmt : TERN_HEAD_FILE;
}

const void *tern_head_packed(const tern_head *h, size_t *bytes)
{
	*bytes = h->qw ? tern_qh_bytes(qh_type(h->qfmt), h->cfg.n_vocab, h->cfg.n_embd) : 0;
	return h->qw;
}

const char *tern_head_format_name(tern_head_format f)
{
	switch (f) {
	case TERN_HEAD_FILE: return "file";
	case TERN_HEAD_Q8: return "q8";
	case TERN_HEAD_Q4: return "q4";
	default: return "?";
	}
}

int tern_head_format_parse(const char *s)
{
	if (!strcmp(s, "file"))
		return TERN_HEAD_FILE;
	if (!strcmp(s, "q8") || !strcmp(s, "int8"))
		return TERN_HEAD_Q8;
	if (!strcmp(s, "q4"))
		return TERN_HEAD_Q4;
	return -1;
}

static int32_t argmax_row(const float *x, int n)
{
	int32_t best = 0;
	for (int i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}

int tern_head_agreement(tern_head *h, tern_pool *pool, const float *hidden, int n, int *agree, tern_err *err)
{
	*agree = 0;
	TERN_RETURN_IF(!h->use_q, err, TERN_ESTATE, "head: no quantized LM head in use");
	TERN_RETURN_IF(h->cfg.packed_only, err, TERN_EUNSUP, "head: no full-precision LM head to compare with");
	const int V = h->cfg.n_vocab, d = h->cfg.n_embd, chunk = 16;
	float *a = malloc((size_t)chunk * (size_t)V * sizeof(float));
	float *b = malloc((size_t)chunk * (size_t)V * sizeof(float));
	const int was = h->use_q;
	int rc = 0;
	if (!a || !b) {
		rc = TERN_ERR(err, TERN_ENOMEM, "head: out of memory");
		goto done;
	}
	for (int j = 0; j < n && rc == 0; j += chunk) {
		const int c = n - j < chunk ? n - j : chunk;
		h->use_q = 0;
		rc = tern_head_logits(h, pool, hidden + (size_t)j * (size_t)d, c, a, err);
		h->use_q = 1;
		if (rc == 0)
			rc = tern_head_logits(h, pool, hidden + (size_t)j * (size_t)d, c, b, err);
		for (int r = 0; rc == 0 && r < c; r++)
			*agree += argmax_row(a + (size_t)r * V, V) == argmax_row(b + (size_t)r * V, V);
	}
done:
	h->use_q = was;
	free(a);
	free(b);
	return rc;
}
