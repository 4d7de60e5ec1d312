/* head.c: token embeddings, final RMSNorm and the tied LM head (tern-head.h).
 *
 * The LM head reads the whole embedding matrix per call (657 MB for the 2b4t
 * shape in F16): it is the largest single read of a decode step. Its dot
 * products, the final RMSNorm and the element conversions are kernels/'s
 * float kernels (tern-float.h) of the ISA chosen at creation: every ISA
 * computes the same logits bit for bit. */
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
	float *norm; /* (n_embd) copy of the final norm weight */
	float *xn;   /* (cap, n_embd) normed rows */
	int cap;
	int8_t *q8;     /* (n_vocab, n_embd) int8 LM head, NULL until tern_head_int8_build */
	float *q8scale; /* (n_vocab) per-row scale: row ~= q8 * scale */
	int use_q8;
};

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
	const int dot = dot_type(cfg->dtype);
	TERN_RETURN_IF(dot < 0, err, TERN_EINVAL, "head: unsupported embedding type %d", (int)cfg->dtype);
	const size_t elem = dot == TERN_DOT_F32 ? 4 : 2;
	TERN_RETURN_IF(cfg->row_bytes && cfg->row_bytes < elem * (size_t)cfg->n_embd, err, TERN_EINVAL,
		       "head: row stride %zu below a row of %d elements", cfg->row_bytes, cfg->n_embd);
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
	h->norm = tern_aligned_alloc((size_t)cfg->n_embd * sizeof(float), TERN_ALIGN);
	if (!h->norm) {
		free(h);
		return TERN_ERR(err, TERN_ENOMEM, "head: out of memory");
	}
	memcpy(h->norm, cfg->out_norm, (size_t)cfg->n_embd * sizeof(float));
	h->cfg.out_norm = h->norm;
	*out = h;
	return 0;
}

void tern_head_free(tern_head *h)
{
	if (!h)
		return;
	tern_aligned_free(h->norm);
	tern_aligned_free(h->xn);
	tern_aligned_free(h->q8);
	free(h->q8scale);
	free(h);
}

uint64_t tern_head_bytes(const tern_head *h)
{
	const uint64_t elem = h->use_q8 ? 1 : h->elem;
	return (uint64_t)h->cfg.n_vocab * elem * (uint64_t)h->cfg.n_embd;
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
	int q8; /* use the int8 matrix */
	float *logits;
} logits_job;

static void logits_run(void *ctx, int tid, int nth)
{
	const logits_job *job = ctx;
	const tern_head *h = job->h;
	const int V = h->cfg.n_vocab, d = h->cfg.n_embd;
	/* contiguous vocabulary ranges, so each thread streams its own part */
	const int v0 = (int)((int64_t)V * tid / nth), v1 = (int)((int64_t)V * (tid + 1) / nth);
	const tern_dot_args a = {
	    job->q8 ? TERN_DOT_I8 : h->dot,
	    job->q8 ? (const void *)h->q8 : h->cfg.emb,
	    job->q8 ? (size_t)d : h->cfg.row_bytes,
	    job->q8 ? h->q8scale : NULL,
	    d,
	    h->xn,
	    (size_t)d,
	    job->n,
	    job->logits,
	    (size_t)V,
	};
	if (v0 < v1)
		h->fk->dot_rows(&a, v0, v1);
}

int tern_head_logits(tern_head *h, tern_pool *pool, const float *hidden, int n, float *logits, tern_err *err)
{
	if (n <= 0)
		return 0;
	const int d = h->cfg.n_embd;
	if (n > h->cap) {
		float *xn = tern_aligned_alloc((size_t)n * (size_t)d * sizeof(float), TERN_ALIGN);
		TERN_RETURN_IF(!xn, err, TERN_ENOMEM, "head: cannot hold %d normed rows", n);
		tern_aligned_free(h->xn);
		h->xn = xn;
		h->cap = n;
	}
	for (int j = 0; j < n; j++)
		h->fk->rmsnorm(hidden + (size_t)j * (size_t)d, h->norm, d, h->cfg.eps, h->xn + (size_t)j * (size_t)d);
	logits_job job = {h, n, h->use_q8, logits};
	tern_pool_run(pool, logits_run, &job);
	return 0;
}

/* ---- optional int8 LM head ----------------------------------------------------- */

typedef struct {
	tern_head *h;
} q8_job;

static void q8_run(void *ctx, int tid, int nth)
{
	tern_head *h = ((q8_job *)ctx)->h;
	const int V = h->cfg.n_vocab, d = h->cfg.n_embd;
	const int v0 = (int)((int64_t)V * tid / nth), v1 = (int)((int64_t)V * (tid + 1) / nth);
	for (int v = v0; v < v1; v++) {
		const uint8_t *row = emb_row(h, v);
		float amax = 0.0f;
		for (int i = 0; i < d; i++) {
			const float a = fabsf(tern_dot_elem(row, h->dot, i));
			amax = a > amax ? a : amax;
		}
		const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
		int8_t *q = h->q8 + (size_t)v * (size_t)d;
		for (int i = 0; i < d; i++) {
			const float r = rintf(tern_dot_elem(row, h->dot, i) / scale);
			q[i] = (int8_t)(r > 127.0f ? 127 : r < -127.0f ? -127 : (int)r);
		}
		h->q8scale[v] = scale;
	}
}

int tern_head_int8_build(tern_head *h, tern_pool *pool, tern_err *err)
{
	if (!h->q8) {
		h->q8 = tern_aligned_alloc((size_t)h->cfg.n_vocab * (size_t)h->cfg.n_embd, TERN_ALIGN);
		h->q8scale = malloc((size_t)h->cfg.n_vocab * sizeof(float));
		if (!h->q8 || !h->q8scale) {
			tern_aligned_free(h->q8);
			free(h->q8scale);
			h->q8 = NULL;
			h->q8scale = NULL;
			return TERN_ERR(err, TERN_ENOMEM, "head: cannot hold the int8 LM head (%d x %d)",
					h->cfg.n_vocab, h->cfg.n_embd);
		}
		q8_job job = {h};
		tern_pool_run(pool, q8_run, &job);
	}
	h->use_q8 = 1;
	return 0;
}

void tern_head_int8_use(tern_head *h, int on)
{
	h->use_q8 = on && h->q8;
}

int tern_head_int8_active(const tern_head *h)
{
	return h->use_q8;
}

static int32_t argmax_row(const float *x, int n)
{
	int32_t best = 0;
	for (int i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}

int tern_head_int8_agreement(tern_head *h, tern_pool *pool, const float *hidden, int n, int *agree, tern_err *err)
{
	*agree = 0;
	TERN_RETURN_IF(!h->q8, err, TERN_ESTATE, "head: no int8 LM head built");
	const int V = h->cfg.n_vocab, d = h->cfg.n_embd, chunk = 16;
	float *a = malloc((size_t)chunk * (size_t)V * sizeof(float));
	float *b = malloc((size_t)chunk * (size_t)V * sizeof(float));
	const int was = h->use_q8;
	int rc = 0;
	if (!a || !b) {
		rc = TERN_ERR(err, TERN_ENOMEM, "head: out of memory");
		goto done;
	}
	for (int j = 0; j < n && rc == 0; j += chunk) {
		const int c = n - j < chunk ? n - j : chunk;
		h->use_q8 = 0;
		rc = tern_head_logits(h, pool, hidden + (size_t)j * (size_t)d, c, a, err);
		h->use_q8 = 1;
		if (rc == 0)
			rc = tern_head_logits(h, pool, hidden + (size_t)j * (size_t)d, c, b, err);
		for (int r = 0; rc == 0 && r < c; r++)
			*agree += argmax_row(a + (size_t)r * V, V) == argmax_row(b + (size_t)r * V, V);
	}
done:
	h->use_q8 = was;
	free(a);
	free(b);
	return rc;
}
