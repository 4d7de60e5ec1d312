/* float-avx2.c: the float kernels (tern-float.h) with AVX2 + FMA + F16C,
 * equal to kernels/ref/float-ref.c bit for bit. The dot product reads each
 * row front to back (one prefetch stream) with eight independent 8-lane FMA
 * chains = the 64 lanes of the reference order. Compiled with -mavx2 -mfma
 * -mf16c -ffp-contract=off -fno-fast-math. */
#include <immintrin.h>

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
	case TERN_DOT_I8:
		return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(row + i))));
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

const tern_float_kernels tern_float_avx2 = {TERN_ISA_AVX2, rmsnorm_avx2, softmax_avx2, rope_avx2, dot_rows_avx2};
