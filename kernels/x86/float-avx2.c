/* float-avx2.c: the float kernels (tern-float.h) with AVX2 + FMA + F16C,
 * equal to kernels/ref/float-ref.c bit for bit. The dot product reads each
 * row front to back (one prefetch stream) with eight independent 8-lane FMA
 * chains = the 64 lanes of the reference order. Compiled with -mavx2 -mfma
 * -mf16c -ffp-contract=off -fno-fast-math. */
#include <immintrin.h>
#include <string.h>

#include "kern-float.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* max_ps(v, m) is exactly "v > m ? v : m" per lane (NaN or equal: m) */
TERN_FLOAT_ROWWISE(avx2, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_max_ps)

/* Pairs j .. j+7 of head xh. */
static ALWAYS_INLINE void rope_step(float *xh, int half, const float *cs_pos, int j)
{
	/* (c0 s0 c1 s1 c2 s2 c3 s3), (c4 s4 ...) -> c0..c7, s0..s7 */
	const __m256 t0 = _mm256_loadu_ps(cs_pos + 2 * j), t1 = _mm256_loadu_ps(cs_pos + 2 * j + 8);
	const __m256 c = _mm256_castpd_ps(_mm256_permute4x64_pd(
	    _mm256_castps_pd(_mm256_shuffle_ps(t0, t1, _MM_SHUFFLE(2, 0, 2, 0))), _MM_SHUFFLE(3, 1, 2, 0)));
	const __m256 s = _mm256_castpd_ps(_mm256_permute4x64_pd(
	    _mm256_castps_pd(_mm256_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 1, 3, 1))), _MM_SHUFFLE(3, 1, 2, 0)));
	const __m256 x0 = _mm256_loadu_ps(xh + j), x1 = _mm256_loadu_ps(xh + j + half);
	_mm256_storeu_ps(xh + j, _mm256_sub_ps(_mm256_mul_ps(x0, c), _mm256_mul_ps(x1, s)));
	_mm256_storeu_ps(xh + j + half, _mm256_add_ps(_mm256_mul_ps(x0, s), _mm256_mul_ps(x1, c)));
}

TERN_FLOAT_ROPE(avx2, 8, rope_step)

static ALWAYS_INLINE __m256 ld8(const uint8_t *row, tern_dot_type t, int i)
{
	switch (t) {
	case TERN_DOT_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(row + 2 * (size_t)i)));
	case TERN_DOT_BF16:
		return _mm256_castsi256_ps(_mm256_slli_epi32(
		    _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(row + 2 * (size_t)i))), 16));
	default: return _mm256_loadu_ps((const float *)(const void *)(row + 4 * (size_t)i));
	}
}

/* One row against one vector; t is a constant after inlining. */
static ALWAYS_INLINE float dot1(const uint8_t *row, tern_dot_type t, const float *x, int n)
{
	__m256 a[8];
	for (int k = 0; k < 8; k++)
		a[k] = _mm256_setzero_ps();
	const int n64 = n - n % TERN_DOT_LANES;
	for (int i = 0; i < n64; i += TERN_DOT_LANES) {
#pragma GCC unroll 8
		for (int k = 0; k < 8; k++)
			a[k] = _mm256_fmadd_ps(ld8(row, t, i + 8 * k), _mm256_loadu_ps(x + i + 8 * k), a[k]);
	}
	float l[TERN_DOT_LANES];
	for (int k = 0; k < 8; k++)
		_mm256_storeu_ps(l + 8 * k, a[k]);
	return tern_dot_finish(l, row, t, x, n64, n);
}

static ALWAYS_INLINE void rows_t(const tern_dot_args *a, tern_dot_type t, int r0, int r1)
{
	TERN_DOT_ROWS_EACH(dot1, a, t, r0, r1);
}

static void dot_rows_avx2(const tern_dot_args *a, int r0, int r1)
{
	TERN_DOT_BY_TYPE(rows_t, a, r0, r1);
}

/* ---- quantized head: 8 rows per ymm (half h of a 16-row group) ---- */

/* Activation rows per pass over a group: their accumulators sit on the stack
 * (L1) while each tile is decoded once into registers for all of them. */
#define QX_TILE 8

static ALWAYS_INLINE __m256i bcast4(const int8_t *p)
{
	int32_t v;
	memcpy(&v, p, 4);
	return _mm256_set1_epi32(v);
}

/* Codes of half h of a tile in element-chunk order: w[c] holds elements
 * 4c..4c+3 of rows 8h..8h+7 (Q8: q as int8; Q4: q + 8 as u8). */
static ALWAYS_INLINE void qh_load(tern_qh_type t, const uint8_t *tile, int h, __m256i *w)
{
	if (t == TERN_QH_Q8) {
		for (int c = 0; c < 8; c++)
			w[c] = _mm256_loadu_si256((const __m256i *)(const void *)(tile + 64 * c + 32 * h));
	} else {
		const __m256i m = _mm256_set1_epi8(0x0F);
		for (int c = 0; c < 4; c++) {
			const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(tile + 64 * c + 32 * h));
			w[c] = _mm256_and_si256(v, m);
			w[c + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
		}
	}
}

/* The 8 rows' exact block sums against one activation block xb (sum xs).
 * Q8: |q_w| * (q_x with q_w's sign) fits maddubs' int16 pairs (2 * 127^2);
 * Q4: codes 0..15 times q_x, eight chunks' pairs still fit int16
 * (8 * 2 * 15 * 127), minus 8 * xs for the code offset. */
static ALWAYS_INLINE __m256i qh_isum(tern_qh_type t, const __m256i *w, const int8_t *xb, int32_t xs)
{
	const __m256i ones = _mm256_set1_epi16(1);
	if (t == TERN_QH_Q8) {
		__m256i s = _mm256_setzero_si256();
		for (int c = 0; c < 8; c++) {
			const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(w[c]), _mm256_sign_epi8(bcast4(xb + 4 * c), w[c]));
			s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
		}
		return s;
	}
	__m256i p = _mm256_setzero_si256();
	for (int c = 0; c < 8; c++)
		p = _mm256_add_epi16(p, _mm256_maddubs_epi16(w[c], bcast4(xb + 4 * c)));
	return _mm256_sub_epi32(_mm256_madd_epi16(p, ones), _mm256_set1_epi32(8 * xs));
}

static ALWAYS_INLINE void qdot_t(const tern_qdot_args *a, tern_qh_type t, int g0, int g1)
{
	const int nb = tern_qh_blocks(a->n);
	float acc[QX_TILE][TERN_QH_GROUP];
	for (int g = g0; g < g1; g++) {
		for (int j0 = 0; j0 < a->nx; j0 += QX_TILE) {
			const int nt = a->nx - j0 < QX_TILE ? a->nx - j0 : QX_TILE;
			memset(acc, 0, sizeof acc);
			for (int b = 0; b < nb; b++) {
				const uint8_t *tile = tern_qh_quants(t, tern_qh_group(a, g), b);
				const uint8_t *sc = tern_qh_scales(t, tern_qh_group(a, g), a->n, b);
				for (int h = 0; h < 2; h++) {
					__m256i w[8];
					qh_load(t, tile, h, w);
					const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(sc + 16 * h)));
					for (int v = 0; v < nt; v++) {
						const size_t xo = (size_t)(j0 + v) * (size_t)nb + (size_t)b;
						const __m256i is = qh_isum(t, w, a->xq + xo * TERN_QH_BLOCK, a->xs[xo]);
						const __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(is), _mm256_mul_ps(dw, _mm256_set1_ps(a->xd[xo])));
						float *l = acc[v] + 8 * h;
						_mm256_storeu_ps(l, _mm256_add_ps(_mm256_loadu_ps(l), p));
					}
				}
			}
			for (int v = 0; v < nt; v++)
				tern_qh_store(a, j0 + v, g, 0, acc[v], TERN_QH_GROUP);
		}
	}
}

static void qdot_groups_avx2(const tern_qdot_args *a, int g0, int g1)
{
	if (a->type == TERN_QH_Q8)
		qdot_t(a, TERN_QH_Q8, g0, g1);
	else
		qdot_t(a, TERN_QH_Q4, g0, g1);
}

TERN_FLOAT_SWIGLU(avx2)

const tern_float_kernels tern_float_avx2 = {TERN_ISA_AVX2, rmsnorm_avx2, softmax_avx2, rope_avx2, dot_rows_avx2,
					    qdot_groups_avx2, swiglu_avx2};
