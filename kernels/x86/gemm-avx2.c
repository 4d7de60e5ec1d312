/* gemm-avx2.c: AVX2 kernels for I2_S, TL1 and TL2 (compiled with -mavx2 only
 * here; the dispatcher calls them when cpuid reports AVX2). Layouts and the
 * int16 bounds are in kernels/LAYOUTS.md.
 *
 * GEMV (n == 1) streams each weight byte once; GEMM runs the same loops over
 * a block of tokens with the decoded weights (code planes, LUT indices, sign
 * masks) held in registers, so a tile of weights is read from memory once per
 * token block and from L1/L2 for the other blocks. */
#include "kern-internal.h"
#include "tl-drive.h"

#include <immintrin.h>
#include <string.h>

#define AVX2_I2S_TOKENS 4 /* tokens per weight pass (register budget: 4 planes + 4 accumulators) */
#define AVX2_TL_TOKENS 4  /* TL: 2 int16 accumulators per token */
/* Software prefetch distance for the weight stream (see gemm-avx512.c). */
#define TERN_PREFETCH 16384

static inline int32_t hsum8(__m256i v)
{
	__m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
	return _mm_cvtsi128_si32(s);
}

/* ---- I2_S ----------------------------------------------------------------
 * One row at a time: the four 2-bit code planes of a 32-byte block are 32
 * consecutive k each, so maddubs(code, q) against plain q loads gives
 * c0*q0 + c1*q1 per int16 lane (|.| <= 512); four planes add to <= 2048 and
 * vpmaddwd widens to int32 once per block. dot = sum c*q - sum q. */
static inline __attribute__((always_inline)) void i2s_rows(const tern_matrix *w, const tern_act *a, int32_t *dot,
							   int ldd, int row0, int row1, int j0, const int nt)
{
	const int blocks = w->k_pad / 128;
	const size_t row_bytes = (size_t)w->k_pad / 4;
	const __m256i m3 = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
	const int8_t *q[AVX2_I2S_TOKENS];
	for (int t = 0; t < nt; t++)
		q[t] = a->q + (size_t)(j0 + t) * (size_t)a->k_pad;
	for (int i = row0; i < row1; i++) {
		const uint8_t *wr = w->data + (size_t)i * row_bytes;
		__m256i acc[AVX2_I2S_TOKENS];
		for (int t = 0; t < nt; t++)
			acc[t] = _mm256_setzero_si256();
		for (int b = 0; b < blocks; b++) {
			const __m256i v = _mm256_loadu_si256((const __m256i *)(wr + 32 * b));
			if (b % 2 == 0)
				_mm_prefetch((const char *)(wr + 32 * b + TERN_PREFETCH), _MM_HINT_T0);
			const __m256i c0 = _mm256_and_si256(_mm256_srli_epi16(v, 6), m3);
			const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m3);
			const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(v, 2), m3);
			const __m256i c3 = _mm256_and_si256(v, m3);
			for (int t = 0; t < nt; t++) {
				const int8_t *qb = q[t] + 128 * b;
				__m256i s = _mm256_maddubs_epi16(c0, _mm256_loadu_si256((const __m256i *)qb));
				s = _mm256_add_epi16(
				    s, _mm256_maddubs_epi16(c1, _mm256_loadu_si256((const __m256i *)(qb + 32))));
				s = _mm256_add_epi16(
				    s, _mm256_maddubs_epi16(c2, _mm256_loadu_si256((const __m256i *)(qb + 64))));
				s = _mm256_add_epi16(
				    s, _mm256_maddubs_epi16(c3, _mm256_loadu_si256((const __m256i *)(qb + 96))));
				acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(s, ones));
			}
		}
		for (int t = 0; t < nt; t++)
			dot[(size_t)(j0 + t) * (size_t)ldd + (size_t)(i - row0)] = hsum8(acc[t]) - a->sum[j0 + t];
	}
}

void tern_kern_i2s_avx2(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1)
{
	if (a->n >= tern_kern_avx2_gemm_min[TERN_PACK_I2S]) {
		tern_kern_i2s_avx2_gemm(w, a, dot, ldd, row0, row1);
		return;
	}
	/* Row stripes small enough that their weights stay in L1 across token blocks. */
	const int stripe = a->n <= 1 ? row1 - row0 : 8;
	for (int r0 = row0; r0 < row1; r0 += stripe) {
		const int r1 = row1 - r0 < stripe ? row1 : r0 + stripe;
		int32_t *d = dot + (r0 - row0);
		int j = 0;
		for (; j + AVX2_I2S_TOKENS <= a->n; j += AVX2_I2S_TOKENS)
			i2s_rows(w, a, d, ldd, r0, r1, j, AVX2_I2S_TOKENS);
		for (; j < a->n; j++)
			i2s_rows(w, a, d, ldd, r0, r1, j, 1);
	}
}

/* ---- TL1 / TL2 -----------------------------------------------------------
 * A 64-row tile is done as two halves of 32 rows (one ymm of index bytes).
 * For each group: vpshufb of the lo and hi LUT planes (broadcast to both
 * 128-bit lanes) with the 32 row indices, then unpacklo/hi_epi8(lo, hi) give
 * the exact int16 entries of rows {0-7,16-23} (A) and {8-15,24-31} (B) of the
 * half. int16 accumulators cover one block of <= 64 groups (|sum| <= 64*384 =
 * 24576 < 32767, LAYOUTS.md) and are then widened into int32 in memory. */

static inline void lut_planes(const uint8_t *grp, __m256i *lo, __m256i *hi)
{
	*lo = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)grp));
	*hi = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(grp + 16)));
}

/* Adds the int16 A/B accumulators of a half into 32 int32 row sums (row order). */
static inline void widen_add(int32_t *acc, __m256i A, __m256i B)
{
	__m256i *p = (__m256i *)acc;
	/* A: rows 0-7 (low lane) and 16-23; B: rows 8-15 and 24-31. */
	_mm256_storeu_si256(
	    p + 0, _mm256_add_epi32(_mm256_loadu_si256(p + 0), _mm256_cvtepi16_epi32(_mm256_castsi256_si128(A))));
	_mm256_storeu_si256(
	    p + 1, _mm256_add_epi32(_mm256_loadu_si256(p + 1), _mm256_cvtepi16_epi32(_mm256_castsi256_si128(B))));
	_mm256_storeu_si256(
	    p + 2, _mm256_add_epi32(_mm256_loadu_si256(p + 2), _mm256_cvtepi16_epi32(_mm256_extracti128_si256(A, 1))));
	_mm256_storeu_si256(
	    p + 3, _mm256_add_epi32(_mm256_loadu_si256(p + 3), _mm256_cvtepi16_epi32(_mm256_extracti128_si256(B, 1))));
}

/* Per-lane signs from 16 sign bits (lane i <-> bit i): multiplying the
 * broadcast bits by 2^(15-i) moves bit i to lane i's sign bit; OR 1 keeps the
 * lane nonzero so vpsignw either keeps or negates (3 ops instead of the 4 of
 * and/cmpeq/xor/sub). */
static inline __m256i sign_lanes(const uint8_t *p, __m256i pow2)
{
	uint16_t s;
	memcpy(&s, p, 2);
	return _mm256_or_si256(_mm256_mullo_epi16(_mm256_set1_epi16((short)s), pow2), _mm256_set1_epi16(1));
}

static inline __m256i negate_if(__m256i x, __m256i s)
{
	return _mm256_sign_epi16(x, s);
}

/* TL1 (tl2 = 0) or TL2 (tl2 = 1; a constant after inlining), for a block of
 * nt tokens: one step = 64 index bytes = two groups, a block is 32 steps (64
 * groups); TL2 steps also carry 16 sign bytes after the block's indices. */
static inline __attribute__((always_inline)) void tl_tile(const uint8_t *tile, int p_begin, int pairs,
							  const tern_act *a, int j0, const int nt, ptrdiff_t pf,
							  const int tl2, int32_t acc[][TERN_TL_ROWS])
{
	const __m256i m15 = _mm256_set1_epi8(15);
	const __m256i bits =
	    _mm256_setr_epi16((short)0x8000, 16384, 8192, 4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1);
	const uint8_t *lut[AVX2_TL_TOKENS];
	tl_luts(a, j0, nt, lut);
	const size_t step_bytes = tl2 ? TERN_TL2_PAIR_BYTES : TERN_TL1_QUAD_BYTES;
	for (int h = 0; h < 2; h++) {
		for (int p0 = p_begin; p0 < pairs; p0 += TERN_TL2_BLOCK_PAIRS) {
			const int np = pairs - p0 < TERN_TL2_BLOCK_PAIRS ? pairs - p0 : TERN_TL2_BLOCK_PAIRS;
			const uint8_t *idx = tile + (size_t)p0 * step_bytes;
			const uint8_t *sgn = idx + (size_t)np * 64;
			__m256i A[AVX2_TL_TOKENS], B[AVX2_TL_TOKENS];
			for (int t = 0; t < nt; t++)
				A[t] = B[t] = _mm256_setzero_si256();
			for (int p = 0; p < np; p++) {
				const __m256i v = _mm256_loadu_si256((const __m256i *)(idx + (size_t)p * 64 + 32 * h));
				/* The first half's pass brings the tile in; the second reads it from L2. */
				if (h == 0)
					tl_prefetch_step(idx + (size_t)p * step_bytes, pf, tl2);
				const uint8_t *rec = sgn + (size_t)p * 16;
				for (int e = 0; e < 2; e++) {
					const __m256i ix = e ? _mm256_and_si256(_mm256_srli_epi16(v, 4), m15)
							     : _mm256_and_si256(v, m15);
					/* Record: A in bytes 0-3, B in 4-7; this half's 16 bits at 2h. */
					const __m256i sa = tl2 ? sign_lanes(rec + 8 * e + 2 * h, bits) : bits;
					const __m256i sb = tl2 ? sign_lanes(rec + 8 * e + 4 + 2 * h, bits) : bits;
					for (int t = 0; t < nt; t++) {
						__m256i tlo, thi;
						lut_planes(lut[t] + (size_t)(2 * (p0 + p) + e) * TERN_LUT_GROUP_BYTES,
							   &tlo, &thi);
						const __m256i l = _mm256_shuffle_epi8(tlo, ix),
							      hh = _mm256_shuffle_epi8(thi, ix);
						const __m256i xa = _mm256_unpacklo_epi8(l, hh),
							      xb = _mm256_unpackhi_epi8(l, hh);
						A[t] = _mm256_add_epi16(A[t], tl2 ? negate_if(xa, sa) : xa);
						B[t] = _mm256_add_epi16(B[t], tl2 ? negate_if(xb, sb) : xb);
					}
				}
			}
			for (int t = 0; t < nt; t++)
				widen_add(acc[t] + 32 * h, A[t], B[t]);
		}
	}
}

/* GEMV (one token, nt = 1): both 32-row halves in the same pass, so each LUT
 * group is loaded once and the tile is read once (the token-block version
 * above does the halves one after the other to keep its accumulators in
 * registers). */
static inline __attribute__((always_inline)) void tl_gemv_tile(const uint8_t *tile, int p_begin, int pairs,
							       const tern_act *a, int j0, const int nt, ptrdiff_t pf,
							       const int tl2, int32_t acc[][TERN_TL_ROWS])
{
	(void)nt;
	const __m256i m15 = _mm256_set1_epi8(15);
	const __m256i bits =
	    _mm256_setr_epi16((short)0x8000, 16384, 8192, 4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1);
	const uint8_t *lut = (const uint8_t *)a->lut + (size_t)j0 * a->lut_row_bytes;
	const size_t step_bytes = tl2 ? TERN_TL2_PAIR_BYTES : TERN_TL1_QUAD_BYTES;
	for (int p0 = p_begin; p0 < pairs; p0 += TERN_TL2_BLOCK_PAIRS) {
		const int np = pairs - p0 < TERN_TL2_BLOCK_PAIRS ? pairs - p0 : TERN_TL2_BLOCK_PAIRS;
		const uint8_t *idx = tile + (size_t)p0 * step_bytes;
		const uint8_t *sgn = idx + (size_t)np * 64;
		__m256i A0 = _mm256_setzero_si256(), B0 = A0, A1 = A0, B1 = A0;
		for (int p = 0; p < np; p++) {
			const __m256i v0 = _mm256_loadu_si256((const __m256i *)(idx + (size_t)p * 64));
			const __m256i v1 = _mm256_loadu_si256((const __m256i *)(idx + (size_t)p * 64 + 32));
			tl_prefetch_step(idx + (size_t)p * step_bytes, pf, tl2);
			const uint8_t *rec = sgn + (size_t)p * 16;
			for (int e = 0; e < 2; e++) {
				const __m256i ix0 =
				    e ? _mm256_and_si256(_mm256_srli_epi16(v0, 4), m15) : _mm256_and_si256(v0, m15);
				const __m256i ix1 =
				    e ? _mm256_and_si256(_mm256_srli_epi16(v1, 4), m15) : _mm256_and_si256(v1, m15);
				__m256i tlo, thi;
				lut_planes(lut + (size_t)(2 * (p0 + p) + e) * TERN_LUT_GROUP_BYTES, &tlo, &thi);
				const __m256i l0 = _mm256_shuffle_epi8(tlo, ix0), h0 = _mm256_shuffle_epi8(thi, ix0);
				const __m256i l1 = _mm256_shuffle_epi8(tlo, ix1), h1 = _mm256_shuffle_epi8(thi, ix1);
				const __m256i xa0 = _mm256_unpacklo_epi8(l0, h0), xb0 = _mm256_unpackhi_epi8(l0, h0);
				const __m256i xa1 = _mm256_unpacklo_epi8(l1, h1), xb1 = _mm256_unpackhi_epi8(l1, h1);
				if (tl2) {
					/* Record: A in bytes 0-3, B in 4-7; half h's 16 bits at 2h. */
					const uint8_t *r = rec + 8 * e;
					A0 = _mm256_add_epi16(A0, negate_if(xa0, sign_lanes(r, bits)));
					B0 = _mm256_add_epi16(B0, negate_if(xb0, sign_lanes(r + 4, bits)));
					A1 = _mm256_add_epi16(A1, negate_if(xa1, sign_lanes(r + 2, bits)));
					B1 = _mm256_add_epi16(B1, negate_if(xb1, sign_lanes(r + 6, bits)));
				} else {
					A0 = _mm256_add_epi16(A0, xa0);
					B0 = _mm256_add_epi16(B0, xb0);
					A1 = _mm256_add_epi16(A1, xa1);
					B1 = _mm256_add_epi16(B1, xb1);
				}
			}
		}
		widen_add(acc[0], A0, B0);
		widen_add(acc[0] + 32, A1, B1);
	}
}

TL_RUN_FN(tl1_avx2_run, tl_tile, tl_gemv_tile, AVX2_TL_TOKENS, 0)
TL_RUN_FN(tl2_avx2_run, tl_tile, tl_gemv_tile, AVX2_TL_TOKENS, 1)

/* TL1 (tl2 = 0) or TL2: the decode-once GEMM from its batch size up, else the LUT tiles. */
static void tl_avx2(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1, int tl2)
{
	if (a->n >= tern_kern_avx2_gemm_min[tl2 ? TERN_PACK_TL2 : TERN_PACK_TL1])
		(tl2 ? tern_kern_tl2_avx2_gemm : tern_kern_tl1_avx2_gemm)(w, a, dot, ldd, row0, row1);
	else
		tl_drive(w, a, dot, ldd, row0, row1, tl2, AVX2_TL_TOKENS, tl2 ? tl2_avx2_run : tl1_avx2_run);
}

TL_ENTRY_POINTS(avx2, tl_avx2)
