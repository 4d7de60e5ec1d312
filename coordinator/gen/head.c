/* head.c: token embeddings, final RMSNorm and the tied LM head (tern-head.h).
 *
 * The LM head reads the whole embedding matrix per call (657 MB for the 2b4t
 * shape in F16): it is the largest single read of a decode step, so it has
 * AVX2/F16C/FMA and AVX-512 paths (compiled with target attributes, chosen
 * from cpuid) that read each vocabulary row front to back with several
 * independent chains (one prefetch stream: measured ~1.7x faster here than
 * interleaving four rows). All paths compute each logit with the same 64 lane
 * sums, fused multiply-adds and combining tree as the scalar code, so they
 * agree bit for bit (tern-head.h). Compile without -ffast-math and with
 * -ffp-contract=off (the only fusions are the explicit ones). */
#include "tern-head.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HEAD_X86 1
#endif

#define LANES 64

/* The optional int8 LM head stores its rows as this internal element type. */
#define HEAD_I8 ((tern_head_dtype)3)

struct tern_head {
	tern_head_config cfg;
	tern_head_simd simd;
	size_t elem; /* bytes per element */
	float *norm; /* (n_embd) copy of the final norm weight */
	float *xn;   /* (cap, n_embd) normed rows */
	int cap;
	int8_t *q8;     /* (n_vocab, n_embd) int8 LM head, NULL until tern_head_int8_build */
	float *q8scale; /* (n_vocab) per-row scale: row ~= q8 * scale */
	int use_q8;
};

/* ---- conversions (exact) -------------------------------------------------- */

static float f16_to_f32(uint16_t h)
{
	const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, ex = (h >> 10) & 0x1fu, man = h & 0x3ffu;
	uint32_t bits;
	if (ex == 0) {
		/* zero or subnormal: man * 2^-24 is exact in f32 */
		const float f = (float)man * 0x1p-24f;
		return sign ? -f : f;
	} else if (ex == 31) {
		bits = sign | 0x7f800000u | (man << 13);
	} else {
		bits = sign | ((ex + 112u) << 23) | (man << 13);
	}
	float f;
	memcpy(&f, &bits, sizeof f);
	return f;
}

static float bf16_to_f32(uint16_t h)
{
	const uint32_t bits = (uint32_t)h << 16;
	float f;
	memcpy(&f, &bits, sizeof f);
	return f;
}

static float elem_f32(const uint8_t *row, tern_head_dtype dt, int i)
{
	uint16_t h;
	float f;
	switch ((int)dt) {
	case TERN_HEAD_F16: memcpy(&h, row + 2 * (size_t)i, 2); return f16_to_f32(h);
	case TERN_HEAD_BF16: memcpy(&h, row + 2 * (size_t)i, 2); return bf16_to_f32(h);
	case HEAD_I8: return (float)(int8_t)row[i];
	default: memcpy(&f, row + 4 * (size_t)i, 4); return f;
	}
}

/* The fixed combining tree of the lane sums: halve the width by adding lane
 * i + w to lane i (w = 32, 16, ..., 1). */
static float lanes_reduce(float *l)
{
	for (int w = LANES / 2; w >= 1; w /= 2)
		for (int i = 0; i < w; i++)
			l[i] = l[i] + l[i + w];
	return l[0];
}

/* Elements [i0, n) into the lanes (element i to lane i % LANES), in order,
 * each a fused multiply-add as in the SIMD paths. */
static void lanes_tail(float *l, const uint8_t *row, tern_head_dtype dt, const float *x, int i0, int n)
{
	for (int i = i0; i < n; i++)
		l[i % LANES] = fmaf(elem_f32(row, dt, i), x[i], l[i % LANES]);
}

/* ---- scalar --------------------------------------------------------------- */

static float dot_scalar(const uint8_t *row, tern_head_dtype dt, const float *x, int n)
{
	float l[LANES] = {0};
	lanes_tail(l, row, dt, x, 0, n);
	return lanes_reduce(l);
}

/* ---- AVX2 + F16C + FMA ------------------------------------------------------ */
#ifdef HEAD_X86
#define AVX2_TARGET __attribute__((target("avx2,f16c,fma")))
#define AVX512_TARGET __attribute__((target("avx512f")))
#define ALWAYS_INLINE inline __attribute__((always_inline))

AVX2_TARGET static ALWAYS_INLINE __m256 ld8_avx2(const uint8_t *row, tern_head_dtype dt, int i)
{
	switch ((int)dt) {
	case TERN_HEAD_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 2 * (size_t)i)));
	case TERN_HEAD_BF16:
		return _mm256_castsi256_ps(_mm256_slli_epi32(
		    _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(row + 2 * (size_t)i))), 16));
	case HEAD_I8: return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(row + i))));
	default: return _mm256_loadu_ps((const float *)(const void *)(row + 4 * (size_t)i));
	}
}

/* One row, read front to back (one prefetch stream), eight independent
 * 8-lane chains = the 64 lanes; dt is a constant after inlining. */
AVX2_TARGET static ALWAYS_INLINE float dot_avx2_t(const uint8_t *row, tern_head_dtype dt, const float *x, int n)
{
	__m256 a[8];
	for (int k = 0; k < 8; k++)
		a[k] = _mm256_setzero_ps();
	const int n64 = n - n % LANES;
	for (int i = 0; i < n64; i += LANES) {
#pragma GCC unroll 8
		for (int k = 0; k < 8; k++)
			a[k] = _mm256_fmadd_ps(ld8_avx2(row, dt, i + 8 * k), _mm256_loadu_ps(x + i + 8 * k), a[k]);
	}
	float l[LANES];
	for (int k = 0; k < 8; k++)
		_mm256_storeu_ps(l + 8 * k, a[k]);
	lanes_tail(l, row, dt, x, n64, n);
	return lanes_reduce(l);
}

AVX2_TARGET static float dot_avx2(const uint8_t *row, tern_head_dtype dt, const float *x, int n)
{
	switch ((int)dt) {
	case TERN_HEAD_F16: return dot_avx2_t(row, TERN_HEAD_F16, x, n);
	case TERN_HEAD_BF16: return dot_avx2_t(row, TERN_HEAD_BF16, x, n);
	case HEAD_I8: return dot_avx2_t(row, HEAD_I8, x, n);
	default: return dot_avx2_t(row, TERN_HEAD_F32, x, n);
	}
}

AVX512_TARGET static ALWAYS_INLINE __m512 ld16_avx512(const uint8_t *row, tern_head_dtype dt, int i)
{
	switch ((int)dt) {
	case TERN_HEAD_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 2 * (size_t)i)));
	case TERN_HEAD_BF16:
		return _mm512_castsi512_ps(_mm512_slli_epi32(
		    _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + 2 * (size_t)i))), 16));
	case HEAD_I8: return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + i))));
	default: return _mm512_loadu_ps((const float *)(const void *)(row + 4 * (size_t)i));
	}
}

/* Four 16-lane chains = the 64 lanes, lane i % 64 exactly as the scalar code. */
AVX512_TARGET static ALWAYS_INLINE float dot_avx512_t(const uint8_t *row, tern_head_dtype dt, const float *x, int n)
{
	__m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	const int n64 = n - n % LANES;
	for (int i = 0; i < n64; i += LANES) {
		a0 = _mm512_fmadd_ps(ld16_avx512(row, dt, i), _mm512_loadu_ps(x + i), a0);
		a1 = _mm512_fmadd_ps(ld16_avx512(row, dt, i + 16), _mm512_loadu_ps(x + i + 16), a1);
		a2 = _mm512_fmadd_ps(ld16_avx512(row, dt, i + 32), _mm512_loadu_ps(x + i + 32), a2);
		a3 = _mm512_fmadd_ps(ld16_avx512(row, dt, i + 48), _mm512_loadu_ps(x + i + 48), a3);
	}
	float l[LANES];
	_mm512_storeu_ps(l, a0);
	_mm512_storeu_ps(l + 16, a1);
	_mm512_storeu_ps(l + 32, a2);
	_mm512_storeu_ps(l + 48, a3);
	lanes_tail(l, row, dt, x, n64, n);
	return lanes_reduce(l);
}

/* Up to 4 tokens against one row: the row is loaded (and converted) once per
 * 64 elements for all of them. Each token keeps its own four 16-lane chains
 * in the same order as dot_avx512_t, so its logit is bit-identical to the
 * one-token path (and to the scalar code) whatever the batch. */
AVX512_TARGET static ALWAYS_INLINE void dot4_avx512_t(const uint8_t *row, tern_head_dtype dt, const float *const *x,
						      int nt, int n, float *out)
{
	__m512 a[4][4];
	for (int t = 0; t < 4; t++)
		for (int k = 0; k < 4; k++)
			a[t][k] = _mm512_setzero_ps();
	const int n64 = n - n % LANES;
	for (int i = 0; i < n64; i += LANES) {
		const __m512 r0 = ld16_avx512(row, dt, i), r1 = ld16_avx512(row, dt, i + 16);
		const __m512 r2 = ld16_avx512(row, dt, i + 32), r3 = ld16_avx512(row, dt, i + 48);
		for (int t = 0; t < nt; t++) {
			a[t][0] = _mm512_fmadd_ps(r0, _mm512_loadu_ps(x[t] + i), a[t][0]);
			a[t][1] = _mm512_fmadd_ps(r1, _mm512_loadu_ps(x[t] + i + 16), a[t][1]);
			a[t][2] = _mm512_fmadd_ps(r2, _mm512_loadu_ps(x[t] + i + 32), a[t][2]);
			a[t][3] = _mm512_fmadd_ps(r3, _mm512_loadu_ps(x[t] + i + 48), a[t][3]);
		}
	}
	for (int t = 0; t < nt; t++) {
		float l[LANES];
		for (int k = 0; k < 4; k++)
			_mm512_storeu_ps(l + 16 * k, a[t][k]);
		lanes_tail(l, row, dt, x[t], n64, n);
		out[t] = lanes_reduce(l);
	}
}

AVX512_TARGET static void dot4_avx512(const uint8_t *row, tern_head_dtype dt, const float *const *x, int nt, int n,
				      float *out)
{
	switch ((int)dt) {
	case TERN_HEAD_F16: dot4_avx512_t(row, TERN_HEAD_F16, x, nt, n, out); break;
	case TERN_HEAD_BF16: dot4_avx512_t(row, TERN_HEAD_BF16, x, nt, n, out); break;
	case HEAD_I8: dot4_avx512_t(row, HEAD_I8, x, nt, n, out); break;
	default: dot4_avx512_t(row, TERN_HEAD_F32, x, nt, n, out); break;
	}
}

AVX512_TARGET static float dot_avx512(const uint8_t *row, tern_head_dtype dt, const float *x, int n)
{
	switch ((int)dt) {
	case TERN_HEAD_F16: return dot_avx512_t(row, TERN_HEAD_F16, x, n);
	case TERN_HEAD_BF16: return dot_avx512_t(row, TERN_HEAD_BF16, x, n);
	case HEAD_I8: return dot_avx512_t(row, HEAD_I8, x, n);
	default: return dot_avx512_t(row, TERN_HEAD_F32, x, n);
	}
}
#endif

/* ---- public ------------------------------------------------------------------ */

int tern_head_simd_available(tern_head_simd s)
{
	switch (s) {
	case TERN_HEAD_SIMD_SCALAR: return 1;
#ifdef HEAD_X86
	case TERN_HEAD_SIMD_AVX2: return tern_cpu_get()->avx2 && tern_cpu_get()->fma && tern_cpu_get()->f16c;
	case TERN_HEAD_SIMD_AVX512: return tern_cpu_get()->avx512f;
#endif
	default: return 0;
	}
}

const char *tern_head_simd_name(tern_head_simd s)
{
	switch (s) {
	case TERN_HEAD_SIMD_SCALAR: return "scalar";
	case TERN_HEAD_SIMD_AVX2: return "avx2";
	case TERN_HEAD_SIMD_AVX512: return "avx512";
	default: return "auto";
	}
}

tern_head_simd tern_head_simd_used(const tern_head *h)
{
	return h->simd;
}

int tern_head_create(const tern_head_config *cfg, tern_head **out, tern_err *err)
{
	*out = NULL;
	TERN_RETURN_IF(!cfg || !cfg->emb || !cfg->out_norm, err, TERN_EINVAL, "head: no embeddings or norm");
	TERN_RETURN_IF(cfg->n_vocab <= 0 || cfg->n_embd <= 0 || cfg->n_embd > (1 << 20), err, TERN_EINVAL,
		       "head: bad shape %d x %d", cfg->n_vocab, cfg->n_embd);
	TERN_RETURN_IF(cfg->dtype < TERN_HEAD_F32 || cfg->dtype > TERN_HEAD_BF16, err, TERN_EINVAL,
		       "head: unsupported embedding type %d", (int)cfg->dtype);
	const size_t elem = cfg->dtype == TERN_HEAD_F32 ? 4 : 2;
	TERN_RETURN_IF(cfg->row_bytes && cfg->row_bytes < elem * (size_t)cfg->n_embd, err, TERN_EINVAL,
		       "head: row stride %zu below a row of %d elements", cfg->row_bytes, cfg->n_embd);
	tern_head_simd simd = cfg->simd;
	if (simd == TERN_HEAD_SIMD_AUTO) {
		simd = TERN_HEAD_SIMD_SCALAR;
		if (tern_head_simd_available(TERN_HEAD_SIMD_AVX2))
			simd = TERN_HEAD_SIMD_AVX2;
		if (tern_head_simd_available(TERN_HEAD_SIMD_AVX512))
			simd = TERN_HEAD_SIMD_AVX512;
	}
	TERN_RETURN_IF(!tern_head_simd_available(simd), err, TERN_EINVAL, "head: %s code path not available here",
		       tern_head_simd_name(simd));
	tern_head *h = calloc(1, sizeof *h);
	TERN_RETURN_IF(!h, err, TERN_ENOMEM, "head: out of memory");
	h->cfg = *cfg;
	h->simd = simd;
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
			o[i] = elem_f32(row, h->cfg.dtype, i);
	}
	return 0;
}

/* Same formula as the layer engine's RMSNorm (node/layers.c): sum of squares
 * in double in index order, scale 1/sqrtf(mean + eps) in float, (x*s)*w. */
static void rmsnorm(const float *x, const float *w, int n, float eps, float *out)
{
	double ss = 0.0;
	for (int i = 0; i < n; i++)
		ss += (double)x[i] * (double)x[i];
	const float mean = (float)(ss / (double)n);
	const float s = 1.0f / sqrtf(mean + eps);
	for (int i = 0; i < n; i++)
		out[i] = (x[i] * s) * w[i];
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
	const int q8 = job->q8;
	const tern_head_dtype dt = q8 ? HEAD_I8 : h->cfg.dtype;
	for (int v = v0; v < v1; v++) {
		const uint8_t *row = q8 ? (const uint8_t *)h->q8 + (size_t)v * (size_t)d : emb_row(h, v);
#ifdef HEAD_X86
		if (h->simd == TERN_HEAD_SIMD_AVX512 && job->n > 1) {
			/* Batched decode: one pass over the row for 4 tokens at a time. */
			for (int j0 = 0; j0 < job->n; j0 += 4) {
				const int nt = job->n - j0 < 4 ? job->n - j0 : 4;
				const float *xs[4];
				float o[4];
				for (int t = 0; t < nt; t++)
					xs[t] = h->xn + (size_t)(j0 + t) * (size_t)d;
				dot4_avx512(row, dt, xs, nt, d, o);
				for (int t = 0; t < nt; t++)
					job->logits[(size_t)(j0 + t) * (size_t)V + (size_t)v] = q8 ? o[t] * h->q8scale[v] : o[t];
			}
			continue;
		}
#endif
		for (int j = 0; j < job->n; j++) {
			const float *x = h->xn + (size_t)j * (size_t)d;
			float o;
			switch (h->simd) {
#ifdef HEAD_X86
			case TERN_HEAD_SIMD_AVX2: o = dot_avx2(row, dt, x, d); break;
			case TERN_HEAD_SIMD_AVX512: o = dot_avx512(row, dt, x, d); break;
#endif
			default: o = dot_scalar(row, dt, x, d); break;
			}
			job->logits[(size_t)j * (size_t)V + (size_t)v] = q8 ? o * h->q8scale[v] : o;
		}
	}
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
		rmsnorm(hidden + (size_t)j * (size_t)d, h->norm, d, h->cfg.eps, h->xn + (size_t)j * (size_t)d);
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
			const float a = fabsf(elem_f32(row, h->cfg.dtype, i));
			amax = a > amax ? a : amax;
		}
		const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
		int8_t *q = h->q8 + (size_t)v * (size_t)d;
		for (int i = 0; i < d; i++) {
			const float r = rintf(elem_f32(row, h->cfg.dtype, i) / scale);
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
