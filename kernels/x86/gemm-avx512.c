/* gemm-avx512.c: AVX-512 (F/BW/VL) kernels for I2_S, TL1 and TL2, plus a
 * VNNI (vpdpbusd) I2_S variant confined to a target("avx512vnni") region and
 * chosen at run time. Layouts and int16 bounds: kernels/LAYOUTS.md.
 *
 * TL1/TL2: one zmm load gives the index bytes of all 64 rows of a tile for
 * two groups; each group's 16-entry LUT (lo and hi byte planes, broadcast to
 * the four 128-bit lanes) is looked up with vpshufb and interleaved into
 * exact int16 entries; TL2's sign masks come straight from memory into mask
 * registers in that interleaved lane order. GEMM reuses each decoded index
 * vector for a block of tokens. */
#include "kern-internal.h"
#include "tl-drive.h"

#include <immintrin.h>
#include <string.h>

int tern_kern_avx512_vnni = 0;
int tern_kern_avx512_vbmi = 0;

/* Software prefetch distance for the weight stream: hardware prefetchers
 * alone left GEMV at a third of the read bandwidth; 16 KiB ahead (tuned on
 * this machine: 2 KiB gave 23 GB/s, 16 KiB 33 GB/s for TL2) keeps enough
 * lines in flight. Prefetches past the end of data are harmless. */
#ifndef TERN_PREFETCH
#define TERN_PREFETCH 16384
#endif

static inline int32_t hsum8(__m256i v)
{
	__m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
	return _mm_cvtsi128_si32(s);
}

/* ---- I2_S ---------------------------------------------------------------- */

#define I2S_PAIRS 2  /* row pairs per pass: 4 rows, 8 code planes in registers */
#define I2S_TOKENS 4 /* tokens per pass: 8 accumulators */

/* maddubs: c*q pairs |.| <= 512, four planes <= 2048 in int16, widened every block. */
#define I2S_FN(x) i2s_bw_##x
#define I2S_BLOCK(acc, c0, c1, c2, c3, a0, a1, a2, a3)                                    \
	do {                                                                              \
		__m512i s_ = _mm512_maddubs_epi16(c0, a0);                                \
		s_ = _mm512_add_epi16(s_, _mm512_maddubs_epi16(c1, a1));                  \
		s_ = _mm512_add_epi16(s_, _mm512_maddubs_epi16(c2, a2));                  \
		s_ = _mm512_add_epi16(s_, _mm512_maddubs_epi16(c3, a3));                  \
		acc = _mm512_add_epi32(acc, _mm512_madd_epi16(s_, _mm512_set1_epi16(1))); \
	} while (0)
#define I2S_BLOCK_GEMV I2S_BLOCK
#include "i2s-avx512.inc"
#undef I2S_FN
#undef I2S_BLOCK
#undef I2S_BLOCK_GEMV

TERN_TARGET_PUSH("avx512vnni")
#define I2S_FN(x) i2s_vnni_##x
#define I2S_BLOCK(acc, c0, c1, c2, c3, a0, a1, a2, a3)  \
	do {                                            \
		acc = _mm512_dpbusd_epi32(acc, c0, a0); \
		acc = _mm512_dpbusd_epi32(acc, c1, a1); \
		acc = _mm512_dpbusd_epi32(acc, c2, a2); \
		acc = _mm512_dpbusd_epi32(acc, c3, a3); \
	} while (0)
#define I2S_BLOCK_GEMV(acc, c0, c1, c2, c3, a0, a1, a2, a3)                                        \
	do {                                                                                       \
		const __m512i z_ = _mm512_setzero_si512();                                         \
		const __m512i s01_ = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z_, c0, a0), c1, a1); \
		const __m512i s23_ = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z_, c2, a2), c3, a3); \
		acc = _mm512_add_epi32(acc, _mm512_add_epi32(s01_, s23_));                         \
	} while (0)
#include "i2s-avx512.inc"
#undef I2S_FN
#undef I2S_BLOCK
#undef I2S_BLOCK_GEMV
TERN_TARGET_POP()

void tern_kern_i2s_avx512(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1)
{
	if (tern_kern_avx512_vnni && a->n >= tern_kern_gemm_vnni_min[TERN_PACK_I2S])
		tern_kern_i2s_vnni_gemm(w, a, dot, ldd, row0, row1);
	else if (tern_kern_avx512_vnni)
		i2s_vnni_kernel(w, a, dot, ldd, row0, row1);
	else
		i2s_bw_kernel(w, a, dot, ldd, row0, row1);
}

/* ---- TL1 / TL2 ----------------------------------------------------------
 * After unpacklo/hi_epi8(lo, hi) of 64 row bytes, int16 lane layout is:
 * A = rows {0-7, 16-23, 32-39, 48-55}, B = rows {8-15, 24-31, 40-47, 56-63}
 * (128-bit lane L of A: rows 16L..16L+7). int16 sums cover <= 64 groups
 * (|.| <= 64*384 = 24576), then are widened into int32 rows in memory. */

#define TL_TOKENS TL_MAX_TOKENS /* tokens per weight pass: 16 int16 accumulators */

static inline void lut_planes(const uint8_t *grp, __m512i *lo, __m512i *hi)
{
	*lo = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)grp));
	*hi = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(grp + 16)));
}

static inline void widen_lane(int32_t *acc, __m128i a, __m128i b)
{
	__m256i *pa = (__m256i *)acc, *pb = (__m256i *)(acc + 8);
	_mm256_storeu_si256(pa, _mm256_add_epi32(_mm256_loadu_si256(pa), _mm256_cvtepi16_epi32(a)));
	_mm256_storeu_si256(pb, _mm256_add_epi32(_mm256_loadu_si256(pb), _mm256_cvtepi16_epi32(b)));
}

/* 128-bit lane l of A holds rows 16l..16l+7, of B rows 16l+8..16l+15. */
static inline void widen_add(int32_t *acc, __m512i A, __m512i B)
{
	widen_lane(acc, _mm512_castsi512_si128(A), _mm512_castsi512_si128(B));
	widen_lane(acc + 16, _mm512_extracti32x4_epi32(A, 1), _mm512_extracti32x4_epi32(B, 1));
	widen_lane(acc + 32, _mm512_extracti32x4_epi32(A, 2), _mm512_extracti32x4_epi32(B, 2));
	widen_lane(acc + 48, _mm512_extracti32x4_epi32(A, 3), _mm512_extracti32x4_epi32(B, 3));
}

static inline __mmask32 load_mask32(const uint8_t *p)
{
	uint32_t m;
	memcpy(&m, p, 4);
	return _cvtu32_mask32(m);
}

/* One step of a tile for nt tokens: adds the int16 entries of its two groups
 * (index bytes v, first group g, TL2 sign record rec) into A[t], B[t]. */
typedef void (*tl_step_fn)(__m512i v, const uint8_t *rec, const uint8_t *const *lut, size_t g, int nt, int tl2,
			   __m512i *A, __m512i *B);

/* The loop nest of one 64-row tile for nt tokens over steps [p_begin, pairs)
 * of TL1 (tl2 = 0) or TL2 (tl2 = 1): one step = 64 index bytes = two groups,
 * a block of 32 steps (64 groups) is summed in int16 and then widened into
 * acc; TL2 steps also carry 16 sign bytes after the block's indices. nt, tl2
 * and step are constants after inlining. */
static inline __attribute__((always_inline)) void tl_tile(const uint8_t *tile, int p_begin, int pairs,
							  const tern_act *a, int j0, const int nt, ptrdiff_t pf,
							  const int tl2, int32_t acc[][TERN_TL_ROWS], tl_step_fn step)
{
	const uint8_t *lut[TL_TOKENS];
	tl_luts(a, j0, nt, lut);
	const size_t step_bytes = tl2 ? TERN_TL2_PAIR_BYTES : TERN_TL1_QUAD_BYTES;
	for (int p0 = p_begin; p0 < pairs; p0 += TERN_TL2_BLOCK_PAIRS) {
		const int np = pairs - p0 < TERN_TL2_BLOCK_PAIRS ? pairs - p0 : TERN_TL2_BLOCK_PAIRS;
		const uint8_t *idx = tile + (size_t)p0 * step_bytes;
		const uint8_t *sgn = idx + (size_t)np * 64;
		__m512i A[TL_TOKENS], B[TL_TOKENS];
		for (int t = 0; t < nt; t++)
			A[t] = B[t] = _mm512_setzero_si512();
		for (int p = 0; p < np; p++) {
			const __m512i v = _mm512_loadu_si512((const void *)(idx + (size_t)p * 64));
			tl_prefetch_step(idx + (size_t)p * step_bytes, pf, tl2);
			step(v, sgn + (size_t)p * 16, lut, 2 * (size_t)(p0 + p), nt, tl2, A, B);
		}
		for (int t = 0; t < nt; t++)
			widen_add(acc[t], A[t], B[t]);
	}
}

/* vpshufb of each group's LUT planes (broadcast to the four 128-bit lanes). */
static inline __attribute__((always_inline)) void bw_step(__m512i v, const uint8_t *rec, const uint8_t *const *lut,
							  size_t g, const int nt, const int tl2, __m512i *A,
							  __m512i *B)
{
	const __m512i m15 = _mm512_set1_epi8(15);
	for (int e = 0; e < 2; e++) {
		const __m512i ix = e ? _mm512_and_si512(_mm512_srli_epi16(v, 4), m15) : _mm512_and_si512(v, m15);
		const __mmask32 ka = tl2 ? load_mask32(rec + 8 * e) : 0;
		const __mmask32 kb = tl2 ? load_mask32(rec + 8 * e + 4) : 0;
		for (int t = 0; t < nt; t++) {
			__m512i tlo, thi;
			lut_planes(lut[t] + (g + (size_t)e) * TERN_LUT_GROUP_BYTES, &tlo, &thi);
			const __m512i l = _mm512_shuffle_epi8(tlo, ix), hh = _mm512_shuffle_epi8(thi, ix);
			const __m512i xa = _mm512_unpacklo_epi8(l, hh), xb = _mm512_unpackhi_epi8(l, hh);
			if (tl2) {
				/* Negate entries of negative groups off the accumulator chain. */
				const __m512i z = _mm512_setzero_si512();
				A[t] = _mm512_add_epi16(A[t], _mm512_mask_sub_epi16(xa, ka, z, xa));
				B[t] = _mm512_add_epi16(B[t], _mm512_mask_sub_epi16(xb, kb, z, xb));
			} else {
				A[t] = _mm512_add_epi16(A[t], xa);
				B[t] = _mm512_add_epi16(B[t], xb);
			}
		}
	}
}

/* tl_tile with the vpshufb step (TL_RUN_FN passes the other arguments). */
#define TL_BW_TILE(...) tl_tile(__VA_ARGS__, bw_step)

TL_RUN_FN(tl1_bw_run, TL_BW_TILE, TL_BW_TILE, TL_TOKENS, 0)
TL_RUN_FN(tl2_bw_run, TL_BW_TILE, TL_BW_TILE, TL_TOKENS, 1)

/* ---- TL1 / TL2 with VBMI -------------------------------------------------
 * vpshufb + unpack costs four shuffles per group and 64 rows, and shuffles
 * (one per cycle for zmm here) bound these kernels. With vpermb the 64-byte
 * table of a group pair (lo/hi planes of both groups, exactly 64 contiguous
 * LUT bytes) is looked up with word indices (idx, idx+16) / (idx+32, idx+48),
 * giving int16 entries directly: a pair of groups costs two index-expanding
 * unpacks (unpacklo/hi_epi8(v, v) duplicate each row byte into a word; shared
 * by all tokens) plus four lookups per token. The unpacks put rows in the same
 * A/B lane order as the vpshufb path, so the TL2 sign masks load unchanged.
 * (Measured in cache, 256 x 6912, one core: TL2 34 -> 43 GB/s of weights.) */
TERN_TARGET_PUSH("avx512vbmi")

/* (w & 0x0f0f) | off in one vpternlogd: (a & b) | c is truth table 0xea. */
static inline __m512i idx_words(__m512i w, __m512i m0f, __m512i off)
{
	return _mm512_ternarylogic_epi32(w, m0f, off, 0xea);
}

static inline __attribute__((always_inline)) void vbmi_step(__m512i v, const uint8_t *rec,
							    const uint8_t *const *lut, size_t g, const int nt,
							    const int tl2, __m512i *A, __m512i *B)
{
	const __m512i m0f = _mm512_set1_epi16(0x0f0f), off0 = _mm512_set1_epi16(0x1000),
		      off1 = _mm512_set1_epi16(0x3020);
	const __m512i wa = _mm512_unpacklo_epi8(v, v), wb = _mm512_unpackhi_epi8(v, v);
	const __m512i xa0 = idx_words(wa, m0f, off0), xb0 = idx_words(wb, m0f, off0);
	const __m512i xa1 = idx_words(_mm512_srli_epi16(wa, 4), m0f, off1);
	const __m512i xb1 = idx_words(_mm512_srli_epi16(wb, 4), m0f, off1);
	__mmask32 ka0 = 0, kb0 = 0, ka1 = 0, kb1 = 0;
	if (tl2) {
		ka0 = load_mask32(rec);
		kb0 = load_mask32(rec + 4);
		ka1 = load_mask32(rec + 8);
		kb1 = load_mask32(rec + 12);
	}
	for (int t = 0; t < nt; t++) {
		const __m512i T = _mm512_loadu_si512((const void *)(lut[t] + g * TERN_LUT_GROUP_BYTES));
		const __m512i ya0 = _mm512_permutexvar_epi8(xa0, T), yb0 = _mm512_permutexvar_epi8(xb0, T);
		const __m512i ya1 = _mm512_permutexvar_epi8(xa1, T), yb1 = _mm512_permutexvar_epi8(xb1, T);
		if (tl2) {
			/* Negate entries of negative groups off the accumulator's
			 * dependency chain (one add per step on it). */
			const __m512i z = _mm512_setzero_si512();
			const __m512i sa = _mm512_add_epi16(_mm512_mask_sub_epi16(ya0, ka0, z, ya0),
							    _mm512_mask_sub_epi16(ya1, ka1, z, ya1));
			const __m512i sb = _mm512_add_epi16(_mm512_mask_sub_epi16(yb0, kb0, z, yb0),
							    _mm512_mask_sub_epi16(yb1, kb1, z, yb1));
			A[t] = _mm512_add_epi16(A[t], sa);
			B[t] = _mm512_add_epi16(B[t], sb);
		} else {
			A[t] = _mm512_add_epi16(A[t], _mm512_add_epi16(ya0, ya1));
			B[t] = _mm512_add_epi16(B[t], _mm512_add_epi16(yb0, yb1));
		}
	}
}

#define TL_VBMI_TILE(...) tl_tile(__VA_ARGS__, vbmi_step)

TL_RUN_FN(tl1_vbmi_run, TL_VBMI_TILE, TL_VBMI_TILE, TL_TOKENS, 0)
TL_RUN_FN(tl2_vbmi_run, TL_VBMI_TILE, TL_VBMI_TILE, TL_TOKENS, 1)
TERN_TARGET_POP()

/* TL1 (tl2 = 0) or TL2: the VNNI GEMM from its batch size up, else the VBMI
 * or the vpshufb tiles. */
static void tl_avx512(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1, int tl2)
{
	if (tern_kern_avx512_vnni && a->n >= tern_kern_gemm_vnni_min[tl2 ? TERN_PACK_TL2 : TERN_PACK_TL1])
		(tl2 ? tern_kern_tl2_vnni_gemm : tern_kern_tl1_vnni_gemm)(w, a, dot, ldd, row0, row1);
	else if (tern_kern_avx512_vbmi)
		tl_drive(w, a, dot, ldd, row0, row1, tl2, TL_TOKENS, tl2 ? tl2_vbmi_run : tl1_vbmi_run);
	else
		tl_drive(w, a, dot, ldd, row0, row1, tl2, TL_TOKENS, tl2 ? tl2_bw_run : tl1_bw_run);
}

TL_ENTRY_POINTS(avx512, tl_avx512)
