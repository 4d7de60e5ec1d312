/* layers.c: the layer forward pass over a micro-batch (see tern-engine.h
 * for the math and the batch-invariance contract), and the float
 * primitives it is made of. What differs between architectures (sub-norms,
 * QK-norm, the FFN activation) is read from the arch row (tern_arch) once at create.
 *
 * Every float loop below runs in one order that depends only on the row's
 * own width and position: no reduction is split by batch size, chunking or
 * thread. Threads split GEMMs by output rows (through the pool: each output
 * element is still computed by one kernel call over its whole K) and
 * attention by (row, head) items, each item computed by one thread start to
 * finish. RMSNorm, RoPE and softmax are kernels/'s float kernels
 * (tern-float.h) of the engine's ISA, with the same fixed orders on every
 * ISA. This file must be compiled without -ffast-math and with
 * -ffp-contract=off, so the compiler cannot re-associate or fuse anything. */
#include "tern-engine.h"
#include "tern-float.h"
#include "tern-half.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

/* ---- primitives --------------------------------------------------------- */

/* Inlined into attention, so that its AVX-512 copy (attn_run_avx512) runs
 * these loops in wide registers: the same operations in the same order. */
static inline __attribute__((always_inline)) double dot_f64(const float *a, const float *b, int n)
{
	double l[8] = {0};
	int i = 0;
	for (; i + 8 <= n; i += 8)
		for (int j = 0; j < 8; j++)
			l[j] += (double)a[i + j] * (double)b[i + j];
	for (int j = 0; i < n; i++, j++)
		l[j] += (double)a[i] * (double)b[i];
	const double s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
	return (s0 + s2) + (s1 + s3);
}

double tern_engine_dot_f64(const float *a, const float *b, int n)
{
	return dot_f64(a, b, n);
}

float tern_engine_dot(const float *a, const float *b, int n)
{
	float l[8] = {0};
	int i = 0;
	for (; i + 8 <= n; i += 8)
		for (int j = 0; j < 8; j++)
			l[j] += a[i + j] * b[i + j];
	for (int j = 0; i < n; i++, j++)
		l[j] += a[i] * b[i];
	const float s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
	return (s0 + s2) + (s1 + s3);
}

/* ---- the engine ----------------------------------------------------------- */

/* Up to three products with the same input, in one pool run: each thread
 * computes its share of the (row-tile aligned) output rows of every matrix
 * with the single-threaded kernel, so results do not depend on the thread
 * count, and decode pays one synchronisation instead of three. */
/* The activations of one projection input, in the form the layers' matrices
 * take: packed ternary (tern_act) or group-scaled Q2_0 (tern_gq_act). */
typedef struct {
	tern_act t;
	tern_gq_act g;
} proj_act;

typedef struct {
	const tern_matrix *mat[3];
	const tern_gq_matrix *gq[3]; /* instead of mat when the layers are group-scaled */
	float *y[3];
	int ldy[3];
	int count;
	const proj_act *a;
	tern_isa isa;
	int rc[TERN_POOL_MAX_THREADS];
	tern_err err[TERN_POOL_MAX_THREADS];
} proj_job;

struct tern_engine {
	const tern_layers *w;
	tern_hparams hp;
	tern_engine_config cfg;
	tern_isa isa;
	const tern_float_kernels *fk; /* RMSNorm, RoPE, softmax of that ISA */
	const tern_arch *arch;        /* sub-norms or not, QK-norm or not, the FFN activation */
	void (*ffn_act)(const float *g, const float *u, int n, float *out); /* the arch's gated product */
	int kv_dim;
	int n_threads;
	tern_kv_cache *kv;
	float *rope;    /* (n_ctx, head_dim/2, 2) cos, sin */
	float *xn;      /* (max_rows, n_embd) normed input of a projection */
	float *q;       /* (max_rows, n_embd) */
	float *k;       /* (max_rows, kv_dim) */
	float *v;       /* (max_rows, kv_dim) */
	float *att;     /* (max_rows, n_embd) attention output */
	float *y;       /* (max_rows, n_embd) projection output before the residual */
	float *g;       /* (max_rows, n_ff) */
	float *u;       /* (max_rows, n_ff) */
	float *scores;  /* (n_threads, n_ctx) per-thread attention scores */
	double *acc;    /* (n_threads, head_dim) per-thread weighted V sums */
	float *kvrow;   /* (n_threads, 2, head_dim) per-thread K and V of one head widened to f32 */
	int *slot_next; /* (n_slots) validation scratch: next position expected in this call */
	int *slot_first; /* (n_slots) validation scratch: the slot's first position in this call */
	proj_job *pjob; /* bookkeeping of the product runs (per-thread errors) */
	proj_act act_e; /* activations of width n_embd */
	proj_act act_f; /* activations of width n_ff */
};

static float *alloc_f32(size_t n)
{
	return tern_aligned_alloc(n * sizeof(float), TERN_ALIGN);
}

int tern_engine_create(const tern_layers *w, const tern_engine_config *cfg, tern_engine **out, tern_err *err)
{
	*out = NULL;
	TERN_RETURN_IF(!w || w->n <= 0 || !w->l, err, TERN_EINVAL, "engine: no layers");
	TERN_FORWARD_IF_ERROR(tern_hparams_validate(&w->hp, err));
	TERN_RETURN_IF(cfg->n_slots <= 0 || cfg->n_ctx <= 0 || cfg->max_rows <= 0 || cfg->max_rows > (1 << 20), err,
		       TERN_EINVAL, "engine: bad config (slots %d, context %d, rows %d)", cfg->n_slots, cfg->n_ctx,
		       cfg->max_rows);
	TERN_RETURN_IF(cfg->n_ctx > (1 << 22), err, TERN_ERANGE, "engine: absurd context %d", cfg->n_ctx);
	tern_isa isa = cfg->isa == TERN_ISA_AUTO ? tern_isa_default() : cfg->isa;
	TERN_RETURN_IF(!tern_isa_available(isa), err, TERN_EINVAL, "engine: kernel ISA %s not available here",
		       tern_isa_name(isa));
	for (int l = 0; l < w->n; l++)
		for (int p = 0; p < TERN_PROJ_COUNT; p++) {
			int m, k;
			tern_proj_shape(&w->hp, (tern_proj)p, &m, &k);
			if (w->group_scaled) {
				const tern_gq_matrix *g = &w->l[l].gq[p];
				TERN_RETURN_IF(g->m != m || g->k != k || !g->blocks, err, TERN_EINVAL,
					       "engine: layer %d %s is %dx%d (q2_0), expected %dx%d", w->first + l,
					       tern_proj_gguf((tern_proj)p), g->m, g->k, m, k);
				continue;
			}
			const tern_matrix *mat = &w->l[l].proj[p];
			TERN_RETURN_IF(mat->m != m || mat->k != k || mat->packing != w->packing || !mat->data, err,
				       TERN_EINVAL, "engine: layer %d %s is %dx%d (%s), expected %dx%d (%s)",
				       w->first + l, tern_proj_gguf((tern_proj)p), mat->m, mat->k,
				       tern_packing_name(mat->packing), m, k, tern_packing_name(w->packing));
		}

	const tern_arch *arch = tern_arch_find(w->hp.arch);
	TERN_RETURN_IF(!arch || arch->bias, err, TERN_EUNSUP,
		       "engine: architecture '%s' is not one the engine runs", w->hp.arch);

	tern_engine *e = calloc(1, sizeof *e);
	TERN_RETURN_IF(!e, err, TERN_ENOMEM, "engine: out of memory");
	e->arch = arch;
	e->w = w;
	e->hp = w->hp;
	e->cfg = *cfg;
	e->isa = isa;
	e->fk = tern_float_kernels_get(isa);
	e->ffn_act = arch->ffn_act == TERN_FFN_SILU ? e->fk->swiglu : e->fk->relu2;
	e->kv_dim = w->hp.n_head_kv * w->hp.head_dim;
	e->n_threads = tern_pool_size(cfg->pool);
	int rc = tern_kv_create(&e->kv, w->n, cfg->n_slots, cfg->n_ctx, e->kv_dim, cfg->kv_type, cfg->kv_block,
				cfg->kv_blocks, cfg->kv_alloc, err);
	if (rc < 0)
		goto fail;
	const size_t R = (size_t)cfg->max_rows, d = (size_t)e->hp.n_embd, ff = (size_t)e->hp.n_ff;
	e->rope = alloc_f32((size_t)cfg->n_ctx * (size_t)e->hp.head_dim);
	e->xn = alloc_f32(R * (ff > d ? ff : d));
	e->q = alloc_f32(R * d);
	e->k = alloc_f32(R * (size_t)e->kv_dim);
	e->v = alloc_f32(R * (size_t)e->kv_dim);
	e->att = alloc_f32(R * d);
	e->y = alloc_f32(R * d);
	e->g = alloc_f32(R * ff);
	e->u = alloc_f32(R * ff);
	e->scores = alloc_f32((size_t)e->n_threads * (size_t)cfg->n_ctx);
	e->acc = tern_aligned_alloc((size_t)e->n_threads * (size_t)e->hp.head_dim * sizeof(double), TERN_ALIGN);
	e->kvrow = alloc_f32((size_t)e->n_threads * 2 * (size_t)e->hp.head_dim);
	e->slot_next = malloc((size_t)cfg->n_slots * sizeof *e->slot_next);
	e->slot_first = malloc((size_t)cfg->n_slots * sizeof *e->slot_first);
	e->pjob = calloc(1, sizeof *e->pjob);
	if (!e->rope || !e->xn || !e->q || !e->k || !e->v || !e->att || !e->y || !e->g || !e->u || !e->scores ||
	    !e->acc || !e->kvrow || !e->slot_next || !e->slot_first || !e->pjob) {
		rc = TERN_ERR(err, TERN_ENOMEM, "engine: cannot allocate scratch for %d rows", cfg->max_rows);
		goto fail;
	}
	tern_rope_table(e->hp.rope_theta, e->hp.head_dim, cfg->n_ctx, e->rope);
	*out = e;
	return 0;
fail:
	tern_engine_free(e);
	return rc;
}

void tern_engine_free(tern_engine *e)
{
	if (!e)
		return;
	tern_kv_free(e->kv);
	tern_aligned_free(e->rope);
	tern_aligned_free(e->xn);
	tern_aligned_free(e->q);
	tern_aligned_free(e->k);
	tern_aligned_free(e->v);
	tern_aligned_free(e->att);
	tern_aligned_free(e->y);
	tern_aligned_free(e->g);
	tern_aligned_free(e->u);
	tern_aligned_free(e->scores);
	tern_aligned_free(e->acc);
	tern_aligned_free(e->kvrow);
	free(e->slot_next);
	free(e->slot_first);
	free(e->pjob);
	tern_act_free(&e->act_e.t);
	tern_act_free(&e->act_f.t);
	tern_gq_act_free(&e->act_e.g);
	tern_gq_act_free(&e->act_f.g);
	free(e);
}

tern_kv_cache *tern_engine_kv(tern_engine *e)
{
	return e->kv;
}

const tern_layers *tern_engine_layers(const tern_engine *e)
{
	return e->w;
}

/* Attention of one layer: items (row j, head h), j-major, split into
 * contiguous ranges per thread; each item is computed by one thread alone. */
typedef struct {
	tern_engine *e;
	int layer; /* index within the range */
	const tern_row *rows;
	int n;
} attn_job;

/* Widens n half-precision KV elements (F16 or BF16 bits, as type says) to
 * f32. Every such value is a float, so each ISA's widening gives the same
 * bits (tern-half.h); the vector ones only do it 8 or 16 at a time. */
typedef void (*kv_widen_fn)(const uint16_t *h, int type, int n, float *out);

static void kv_widen_scalar(const uint16_t *h, int type, int n, float *out)
{
	if (type == TERN_DTYPE_F16)
		for (int i = 0; i < n; i++)
			out[i] = tern_f16_to_f32(h[i]);
	else
		for (int i = 0; i < n; i++)
			out[i] = tern_bf16_to_f32(h[i]);
}

/* K (or V) of one head at one position as f32: the cache itself when it is
 * f32, else that head's elements widened into tmp. */
static inline __attribute__((always_inline)) const float *kv_head_row(const void *cache, size_t off, int type, int hd,
								      kv_widen_fn widen, float *tmp)
{
	if (type == TERN_DTYPE_F32)
		return (const float *)cache + off;
	widen((const uint16_t *)cache + off, type, hd, tmp);
	return tmp;
}

/* Optional fused forms for a half-precision cache, what an ISA copy may pass
 * instead of widening a row first, over all positions 0..count-1 of one head
 * (rows `stride` elements apart), each element widened exactly on the way:
 * - scores: sc[t] = (float)(q.k_t) * scale, every q.k_t in dot_f64's order;
 * - attend: acc[d] += (double)sc[t] * v_t[d] for t = 0, 1, ... in that order
 *   for every d (a product, then a sum).
 * Each output runs exactly the loops' operations in their order, so the
 * copies may interleave positions or elements for throughput. The body calls
 * them once per KV block, in block order: every q.k_t is its own sum, and acc
 * carries each element's sum in double from one block to the next, so the
 * numbers are those of one call over a contiguous cache. next is the same head
 * in the following block (rows from 0, at least 12 of them, read only by
 * prefetches) or NULL. NULL
 * functions: widen each row, then the loops below. */
typedef void (*kv_scores_half_fn)(const float *q, const uint16_t *k, const uint16_t *next, size_t stride, int type,
				  int n, int count, float scale, float *sc);
typedef void (*kv_attend_half_fn)(double *acc, const float *sc, const uint16_t *v, const uint16_t *next, size_t stride,
				  int type, int n, int count);

static inline __attribute__((always_inline)) void attn_body(void *ctx, int tid, int nth, kv_widen_fn widen,
							    kv_scores_half_fn scores_half, kv_attend_half_fn attend_half)
{
	const attn_job *job = ctx;
	tern_engine *e = job->e;
	const tern_hparams *hp = &e->hp;
	const int hd = hp->head_dim, n_head = hp->n_head, kvd = e->kv_dim;
	const int group = hp->n_head / hp->n_head_kv;
	const size_t n_items = (size_t)job->n * (size_t)n_head;
	const size_t i0 = n_items * (size_t)tid / (size_t)nth, i1 = n_items * (size_t)(tid + 1) / (size_t)nth;
	const float scale = 1.0f / sqrtf((float)hd);
	float *sc = e->scores + (size_t)tid * (size_t)e->cfg.n_ctx;
	double *acc = e->acc + (size_t)tid * (size_t)hd;
	float *ktmp = e->kvrow + (size_t)tid * 2 * (size_t)hd, *vtmp = ktmp + hd;
	const tern_kv_cache *kv = e->kv;
	const void *kc = kv->k[job->layer], *vc = kv->v[job->layer];
	const int type = kv->type, bs = kv->block;
	const size_t bstride = (size_t)bs * (size_t)kvd;
	/* the half copies prefetch up to 11 rows past a block's end: from the
	 * next block only when it has that many, so every address is in the pool */
	const int pf_next = bs >= 12;
	for (size_t it = i0; it < i1; it++) {
		const int j = (int)(it / (size_t)n_head), h = (int)(it % (size_t)n_head);
		const int kvh = h / group, pos = job->rows[j].pos;
		const int32_t *tab = kv->table + (size_t)job->rows[j].slot * (size_t)kv->max_blocks;
		const size_t hoff = (size_t)kvh * hd;
		const int nb = pos / bs + 1; /* blocks holding positions 0..pos */
		const float *qh = e->q + (size_t)j * hp->n_embd + (size_t)h * hd;
		/* products of floats are exact in double, so these sums are close
		 * to correctly rounded once cast back: few int8 rounding flips
		 * against any other careful implementation */
		for (int b = 0; b < nb; b++) {
			const int t0 = b * bs, cnt = b + 1 < nb ? bs : pos + 1 - t0;
			const size_t base = (size_t)tab[b] * bstride + hoff;
			if (scores_half && type != TERN_DTYPE_F32) {
				const uint16_t *next =
				    pf_next && b + 1 < nb ? (const uint16_t *)kc + (size_t)tab[b + 1] * bstride + hoff
							  : NULL;
				scores_half(qh, (const uint16_t *)kc + base, next, (size_t)kvd, type, hd, cnt, scale,
					    sc + t0);
			} else {
				for (int t = 0; t < cnt; t++) {
					const float *kt =
					    kv_head_row(kc, base + (size_t)t * kvd, type, hd, widen, ktmp);
					sc[t0 + t] = (float)dot_f64(qh, kt, hd) * scale;
				}
			}
		}
		e->fk->softmax(sc, pos + 1);
		for (int d = 0; d < hd; d++)
			acc[d] = 0.0;
		for (int b = 0; b < nb; b++) {
			const int t0 = b * bs, cnt = b + 1 < nb ? bs : pos + 1 - t0;
			const size_t base = (size_t)tab[b] * bstride + hoff;
			if (attend_half && type != TERN_DTYPE_F32) {
				const uint16_t *next =
				    pf_next && b + 1 < nb ? (const uint16_t *)vc + (size_t)tab[b + 1] * bstride + hoff
							  : NULL;
				attend_half(acc, sc + t0, (const uint16_t *)vc + base, next, (size_t)kvd, type, hd,
					    cnt);
			} else {
				for (int t = 0; t < cnt; t++) {
					const double p = (double)sc[t0 + t];
					const float *vt =
					    kv_head_row(vc, base + (size_t)t * kvd, type, hd, widen, vtmp);
					for (int d = 0; d < hd; d++)
						acc[d] += p * (double)vt[d];
				}
			}
		}
		float *o = e->att + (size_t)j * hp->n_embd + (size_t)h * hd;
		for (int d = 0; d < hd; d++)
			o[d] = (float)acc[d];
	}
}

static void attn_run(void *ctx, int tid, int nth)
{
	attn_body(ctx, tid, nth, kv_widen_scalar, NULL, NULL);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* The same attention compiled for AVX2 (+F16C) and for AVX-512: the q.k and
 * p.v loops in double are a tenth of a decode step at a few hundred
 * positions (most of it at a few thousand), and the baseline build runs them
 * two doubles at a time. -ffp-contract=off holds for these copies too, so
 * they compute what attn_run computes, bit for bit. */
__attribute__((target("avx2,f16c"))) static void kv_widen_avx2(const uint16_t *h, int type, int n, float *out)
{
	int i = 0;
	if (type == TERN_DTYPE_F16) {
		for (; i + 8 <= n; i += 8)
			_mm256_storeu_ps(out + i,
					 _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(h + i))));
	} else {
		for (; i + 8 <= n; i += 8) {
			const __m256i w =
			    _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(h + i)));
			_mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
		}
	}
	kv_widen_scalar(h + i, type, n - i, out + i);
}

__attribute__((target("avx2,f16c"))) static void attn_run_avx2(void *ctx, int tid, int nth)
{
	attn_body(ctx, tid, nth, kv_widen_avx2, NULL, NULL);
}

__attribute__((target("avx512f"))) static void kv_widen_avx512(const uint16_t *h, int type, int n, float *out)
{
	int i = 0;
	if (type == TERN_DTYPE_F16) {
		for (; i + 16 <= n; i += 16)
			_mm512_storeu_ps(out + i,
					 _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(h + i))));
	} else {
		for (; i + 16 <= n; i += 16) {
			const __m512i w =
			    _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(h + i)));
			_mm512_storeu_ps(out + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
		}
	}
	kv_widen_scalar(h + i, type, n - i, out + i);
}

/* 8 half elements as doubles, exactly. (F16C: as kernels/x86/float-avx512.c,
 * every AVX-512 CPU has it.) */
__attribute__((target("avx512f,f16c"))) static inline __m512d half8_pd(const uint16_t *h, int type)
{
	const __m128i x = _mm_loadu_si128((const __m128i *)(const void *)h);
	const __m256 f = type == TERN_DTYPE_F16 ? _mm256_cvtph_ps(x)
						: _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(x), 16));
	return _mm512_cvtps_pd(f);
}

static inline float half1(uint16_t h, int type)
{
	return type == TERN_DTYPE_F16 ? tern_f16_to_f32(h) : tern_bf16_to_f32(h);
}

/* The end of one dot_f64(q, widened k, n) whose 8 lanes are in acc: the
 * tail into lanes 0.., the same combining tree. */
__attribute__((target("avx512f,f16c"))) static inline double dot_half_finish(__m512d acc, const float *q,
									      const uint16_t *k, int type, int i,
									      int n)
{
	double l[8];
	_mm512_storeu_pd(l, acc);
	for (int j = 0; i < n; i++, j++)
		l[j] += (double)q[i] * (double)half1(k[i], type);
	const double s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
	return (s0 + s2) + (s1 + s3);
}

/* kv_scores_half_fn: each dot is dot_f64's order (lane j sums elements
 * i = j mod 8 in i order, one vector add per 8), four positions at a time so
 * four independent add chains fill the pipeline instead of one. */
__attribute__((target("avx512f,f16c"))) static void scores_half_avx512(const float *q, const uint16_t *k,
								       const uint16_t *next, size_t stride, int type,
								       int n, int count, float scale, float *sc)
{
	int t = 0;
	for (; t + 4 <= count; t += 4) {
		const uint16_t *k0 = k + (size_t)t * stride, *k1 = k0 + stride, *k2 = k1 + stride, *k3 = k2 + stride;
		/* the rows 8 positions on, which the prefetchers lose at every page,
		 * from the next block past this one's end */
		for (int r = 0; r < 4; r++) {
			const int tp = t + 8 + r;
			const uint16_t *kp = tp < count ? k + (size_t)tp * stride
					     : next     ? next + (size_t)(tp - count) * stride
							: NULL;
			if (kp)
				for (int l = 0; l < n; l += 32)
					_mm_prefetch((const char *)(kp + l), _MM_HINT_T0);
		}
		__m512d a0 = _mm512_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
		int i = 0;
		for (; i + 8 <= n; i += 8) {
			const __m512d qv = _mm512_cvtps_pd(_mm256_loadu_ps(q + i));
			a0 = _mm512_add_pd(a0, _mm512_mul_pd(qv, half8_pd(k0 + i, type)));
			a1 = _mm512_add_pd(a1, _mm512_mul_pd(qv, half8_pd(k1 + i, type)));
			a2 = _mm512_add_pd(a2, _mm512_mul_pd(qv, half8_pd(k2 + i, type)));
			a3 = _mm512_add_pd(a3, _mm512_mul_pd(qv, half8_pd(k3 + i, type)));
		}
		sc[t] = (float)dot_half_finish(a0, q, k0, type, i, n) * scale;
		sc[t + 1] = (float)dot_half_finish(a1, q, k1, type, i, n) * scale;
		sc[t + 2] = (float)dot_half_finish(a2, q, k2, type, i, n) * scale;
		sc[t + 3] = (float)dot_half_finish(a3, q, k3, type, i, n) * scale;
	}
	for (; t < count; t++) {
		const uint16_t *kt = k + (size_t)t * stride;
		__m512d a = _mm512_setzero_pd();
		int i = 0;
		for (; i + 8 <= n; i += 8)
			a = _mm512_add_pd(a, _mm512_mul_pd(_mm512_cvtps_pd(_mm256_loadu_ps(q + i)), half8_pd(kt + i, type)));
		sc[t] = (float)dot_half_finish(a, q, kt, type, i, n) * scale;
	}
}

/* kv_attend_half_fn: 64 elements of acc stay in 8 registers across all
 * positions (8 independent chains; before, every position loaded and stored
 * acc and each element's chain ran through memory). */
__attribute__((target("avx512f,f16c"))) static void attend_half_avx512(double *acc, const float *sc, const uint16_t *v,
								       const uint16_t *next, size_t stride, int type,
								       int n, int count)
{
	int d = 0;
	for (; d + 64 <= n; d += 64) {
		__m512d a[8];
		for (int r = 0; r < 8; r++)
			a[r] = _mm512_loadu_pd(acc + d + 8 * r);
		for (int t = 0; t < count; t++) {
			const __m512d pp = _mm512_set1_pd((double)sc[t]);
			const uint16_t *vt = v + (size_t)t * stride + d;
			const uint16_t *vp = t + 8 < count ? vt + 8 * stride
					     : next        ? next + (size_t)(t + 8 - count) * stride + d
							   : NULL;
			if (vp) {
				_mm_prefetch((const char *)vp, _MM_HINT_T0);
				_mm_prefetch((const char *)(vp + 32), _MM_HINT_T0);
			}
			for (int r = 0; r < 8; r++)
				a[r] = _mm512_add_pd(a[r], _mm512_mul_pd(pp, half8_pd(vt + 8 * r, type)));
		}
		for (int r = 0; r < 8; r++)
			_mm512_storeu_pd(acc + d + 8 * r, a[r]);
	}
	for (; d + 8 <= n; d += 8) {
		__m512d a = _mm512_loadu_pd(acc + d);
		for (int t = 0; t < count; t++)
			a = _mm512_add_pd(a, _mm512_mul_pd(_mm512_set1_pd((double)sc[t]),
							   half8_pd(v + (size_t)t * stride + d, type)));
		_mm512_storeu_pd(acc + d, a);
	}
	for (; d < n; d++)
		for (int t = 0; t < count; t++)
			acc[d] += (double)sc[t] * (double)half1(v[(size_t)t * stride + d], type);
}

__attribute__((target("avx512f,f16c"))) static void attn_run_avx512(void *ctx, int tid, int nth)
{
	attn_body(ctx, tid, nth, kv_widen_avx512, scores_half_avx512, attend_half_avx512);
}
#define HAVE_ATTN_X86 1
#endif

/* Rounds one row's K or V (n floats) to the cache type at dst. */
static void kv_store(void *dst, int type, const float *x, int n)
{
	if (type == TERN_DTYPE_F32) {
		memcpy(dst, x, (size_t)n * sizeof(float));
	} else if (type == TERN_DTYPE_F16) {
		tern_f32_to_f16_n(x, dst, (size_t)n);
	} else {
		tern_f32_to_bf16_n(x, dst, (size_t)n);
	}
}

static void proj_run(void *ctx, int tid, int nth)
{
	proj_job *job = ctx;
	job->rc[tid] = 0;
	for (int i = 0; i < job->count; i++) {
		const tern_matrix *mat = job->mat[i];
		const tern_gq_matrix *gq = job->gq[i];
		/* a gq row is independent of the others: 16-row shares, as one tile */
		const int tile = gq ? 16 : tern_row_tile(mat->packing), m = gq ? gq->m : mat->m;
		const int n_tiles = (m + tile - 1) / tile;
		const int r0 = (int)((int64_t)n_tiles * tid / nth) * tile;
		int r1 = (int)((int64_t)n_tiles * (tid + 1) / nth) * tile;
		r1 = r1 < m ? r1 : m;
		if (r0 >= r1)
			continue;
		const int rc = gq ? tern_gq_gemm_f32(gq, &job->a->g, job->y[i], job->ldy[i], r0, r1, job->isa,
						     &job->err[tid])
				  : tern_gemm_f32(mat, &job->a->t, job->y[i], job->ldy[i], r0, r1, job->isa,
						  &job->err[tid]);
		if (rc < 0) {
			job->rc[tid] = rc;
			return;
		}
	}
}

/* Quantizes n rows of x (k wide) for the layers' matrices: the one place
 * that knows packed ternary from group-scaled, with proj_run. */
static int act_prepare(tern_engine *e, proj_act *a, const float *x, int n, int k, tern_err *err)
{
	if (e->w->group_scaled)
		return tern_gq_act_prepare(&a->g, x, n, k, k, err);
	return tern_act_prepare(&a->t, e->w->packing, e->isa, x, n, k, k, err);
}

static int projs(tern_engine *e, int l, const tern_proj *p, int count, const proj_act *a, float *const *y,
		 const int *ldy, tern_err *err)
{
	proj_job *job = e->pjob;
	job->count = count;
	job->a = a;
	job->isa = e->isa;
	for (int i = 0; i < count; i++) {
		job->mat[i] = &e->w->l[l].proj[p[i]];
		job->gq[i] = e->w->group_scaled ? &e->w->l[l].gq[p[i]] : NULL;
		job->y[i] = y[i];
		job->ldy[i] = ldy[i];
	}
	tern_pool_run(e->cfg.pool, proj_run, job);
	for (int t = 0; t < e->n_threads; t++) {
		if (job->rc[t] < 0) {
			if (err)
				*err = job->err[t];
			return job->rc[t];
		}
	}
	return 0;
}

static int proj(tern_engine *e, int l, tern_proj p, const proj_act *a, float *y, int ldy, tern_err *err)
{
	return projs(e, l, &p, 1, a, &y, &ldy, err);
}

static void norm_rows(const tern_engine *e, const float *x, int ldx, const float *w, int width, float eps, int n,
		      float *out, int ldo)
{
	for (int j = 0; j < n; j++)
		e->fk->rmsnorm(x + (size_t)j * ldx, w, width, eps, out + (size_t)j * ldo);
}

static void add_rows(float *h, const float *y, size_t count)
{
	for (size_t i = 0; i < count; i++)
		h[i] = h[i] + y[i];
}

static int layer_forward(tern_engine *e, int l, const tern_row *rows, int n, float *h, tern_err *err)
{
	const tern_hparams *hp = &e->hp;
	const tern_layer_weights *lw = &e->w->l[l];
	const int d = hp->n_embd, ff = hp->n_ff, kvd = e->kv_dim, hd = hp->head_dim;
	const float eps = hp->norm_eps;

	/* attention block */
	norm_rows(e, h, d, lw->norm[TERN_NORM_ATTN], d, eps, n, e->xn, d);
	TERN_FORWARD_IF_ERROR(act_prepare(e, &e->act_e, e->xn, n, d, err));
	{
		const tern_proj p[3] = {TERN_PROJ_Q, TERN_PROJ_K, TERN_PROJ_V};
		float *const y[3] = {e->q, e->k, e->v};
		const int ldy[3] = {d, kvd, kvd};
		TERN_FORWARD_IF_ERROR(projs(e, l, p, 3, &e->act_e, y, ldy, err));
	}
	if (e->arch->qk_norm) {
		/* Qwen3: every head of q and of k RMS-normalised on its own (rows
		 * of head_dim), before RoPE */
		norm_rows(e, e->q, hd, lw->norm[TERN_NORM_ATTN_Q], hd, eps, n * hp->n_head, e->q, hd);
		norm_rows(e, e->k, hd, lw->norm[TERN_NORM_ATTN_K], hd, eps, n * hp->n_head_kv, e->k, hd);
	}
	for (int j = 0; j < n; j++) {
		const float *cs = e->rope + (size_t)rows[j].pos * (size_t)hd;
		e->fk->rope(e->q + (size_t)j * d, hp->n_head, hd, cs);
		e->fk->rope(e->k + (size_t)j * kvd, hp->n_head_kv, hd, cs);
		/* every row's K/V lands in the cache before any row attends, so a
		 * row sees the earlier rows of its own sequence in this batch */
		const size_t boff = tern_kv_pos_offset(e->kv, rows[j].slot, rows[j].pos) * e->kv->elem_bytes;
		kv_store((char *)e->kv->k[l] + boff, e->kv->type, e->k + (size_t)j * kvd, kvd);
		kv_store((char *)e->kv->v[l] + boff, e->kv->type, e->v + (size_t)j * kvd, kvd);
	}
	attn_job job = {e, l, rows, n};
#ifdef HAVE_ATTN_X86
	tern_pool_run(e->cfg.pool,
		      e->fk->isa == TERN_ISA_AVX512 ? attn_run_avx512
		      : e->fk->isa == TERN_ISA_AVX2 ? attn_run_avx2
						    : attn_run,
		      &job);
#else
	tern_pool_run(e->cfg.pool, attn_run, &job);
#endif
	const float *o_in = e->att;
	if (e->arch->sub_norms) {
		norm_rows(e, e->att, d, lw->norm[TERN_NORM_ATTN_SUB], d, eps, n, e->xn, d);
		o_in = e->xn;
	}
	TERN_FORWARD_IF_ERROR(act_prepare(e, &e->act_e, o_in, n, d, err));
	TERN_FORWARD_IF_ERROR(proj(e, l, TERN_PROJ_O, &e->act_e, e->y, d, err));
	add_rows(h, e->y, (size_t)n * (size_t)d);

	/* feed-forward block */
	norm_rows(e, h, d, lw->norm[TERN_NORM_FFN], d, eps, n, e->xn, d);
	TERN_FORWARD_IF_ERROR(act_prepare(e, &e->act_e, e->xn, n, d, err));
	{
		const tern_proj p[2] = {TERN_PROJ_GATE, TERN_PROJ_UP};
		float *const y[2] = {e->g, e->u};
		const int ldy[2] = {ff, ff};
		TERN_FORWARD_IF_ERROR(projs(e, l, p, 2, &e->act_e, y, ldy, err));
	}
	e->ffn_act(e->g, e->u, n * ff, e->g);
	if (e->arch->sub_norms)
		norm_rows(e, e->g, ff, lw->norm[TERN_NORM_FFN_SUB], ff, eps, n, e->g, ff);
	TERN_FORWARD_IF_ERROR(act_prepare(e, &e->act_f, e->g, n, ff, err));
	TERN_FORWARD_IF_ERROR(proj(e, l, TERN_PROJ_DOWN, &e->act_f, e->y, d, err));
	add_rows(h, e->y, (size_t)n * (size_t)d);
	return 0;
}

/* Checks the whole call before anything is written (tern-engine.h rules),
 * then sizes every slot's blocks for it: all or nothing, so a step never
 * runs out of blocks half way. */
static int check_rows(tern_engine *e, const tern_row *rows, int n, tern_err *err)
{
	tern_kv_cache *kv = e->kv;
	for (int s = 0; s < kv->n_slots; s++)
		e->slot_next[s] = -1;
	for (int j = 0; j < n; j++) {
		const int s = rows[j].slot, p = rows[j].pos;
		TERN_RETURN_IF(s < 0 || s >= kv->n_slots || kv->len[s] < 0, err, TERN_EINVAL,
			       "engine: row %d uses slot %d, which is not allocated", j, s);
		TERN_RETURN_IF(p < 0 || p >= kv->n_ctx, err, TERN_EINVAL,
			       "engine: row %d position %d outside the context of %d", j, p, kv->n_ctx);
		if (e->slot_next[s] < 0) {
			TERN_RETURN_IF(p > kv->len[s], err, TERN_EINVAL,
				       "engine: row %d position %d leaves a gap after slot %d's %d positions", j, p, s,
				       kv->len[s]);
			e->slot_first[s] = p;
		} else {
			TERN_RETURN_IF(p != e->slot_next[s], err, TERN_EINVAL,
				       "engine: row %d position %d of slot %d does not follow its previous row (%d)", j,
				       p, s, e->slot_next[s] - 1);
		}
		e->slot_next[s] = p + 1;
	}
	/* Blocks a rewound slot gives back count for the ones that grow: only
	 * those it alone holds. A row never writes into a shared block (prefix
	 * cache): only full blocks are shared, and a rewind to their start
	 * drops the reference instead. */
	int64_t need = 0;
	for (int s = 0; s < kv->n_slots; s++) {
		if (e->slot_next[s] < 0)
			continue;
		TERN_RETURN_IF(tern_kv_block_shared(kv, s, e->slot_first[s]) && e->slot_first[s] % kv->block != 0, err,
			       TERN_EINVAL, "engine: slot %d would write position %d into a shared KV block", s,
			       e->slot_first[s]);
		int kept = tern_kv_blocks_for(kv, e->slot_first[s]);
		if (kept > kv->held[s])
			kept = kv->held[s];
		need += tern_kv_blocks_for(kv, e->slot_next[s]) - kept;
		const int32_t *tab = kv->table + (size_t)s * (size_t)kv->max_blocks;
		for (int i = kept; i < kv->held[s]; i++)
			need -= kv->ref[tab[i]] == 1;
	}
	TERN_RETURN_IF(need > kv->n_free + kv->n_evictable, err, TERN_EFULL,
		       "engine: the step needs %lld more KV blocks of %d positions, %d of %d are free", (long long)need,
		       kv->block, kv->n_free + kv->n_evictable, kv->n_blocks);
	for (int pass = 0; pass < 2; pass++)
		for (int s = 0; s < kv->n_slots; s++) {
			if (e->slot_next[s] < 0)
				continue;
			/* positions from the first row on are rewritten: forget them (and
			 * any blocks past them), so len <= held * block holds even if a
			 * layer fails below */
			if (pass == 0)
				TERN_FORWARD_IF_ERROR(tern_kv_slot_truncate(kv, s, e->slot_first[s], err));
			if (pass == 1)
				TERN_FORWARD_IF_ERROR(tern_kv_slot_reserve(kv, s, e->slot_next[s], err));
		}
	return 0;
}

int tern_engine_forward(tern_engine *e, const tern_row *rows, int n, float *hidden, tern_err *err)
{
	if (n == 0)
		return 0;
	TERN_RETURN_IF(n < 0 || !rows || !hidden, err, TERN_EINVAL, "engine: bad batch of %d rows", n);
	TERN_FORWARD_IF_ERROR(check_rows(e, rows, n, err));
	const int d = e->hp.n_embd;
	for (int r0 = 0; r0 < n; r0 += e->cfg.max_rows) {
		const int cnt = n - r0 < e->cfg.max_rows ? n - r0 : e->cfg.max_rows;
		float *h = hidden + (size_t)r0 * (size_t)d;
		for (int l = 0; l < e->w->n; l++)
			TERN_FORWARD_IF_ERROR(layer_forward(e, l, rows + r0, cnt, h, err));
	}
	for (int j = 0; j < n; j++)
		e->kv->len[rows[j].slot] = rows[j].pos + 1;
	return 0;
}
