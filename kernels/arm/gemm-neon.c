/* gemm-neon.c: the AArch64 NEON kernels for every packing (I2_S, TL1, TL2),
 * GEMV (one token) and GEMM (a batch of tokens), reading the byte layouts of
 * kernels/LAYOUTS.md. Every kernel computes the exact int32 dot products of
 * the scalar reference: all sums are integer, and every int16 accumulator is
 * widened to int32 before it can overflow (bounds next to each kernel).
 *
 * Baseline AArch64 Advanced SIMD only, except one I2_S variant that uses the
 * ARMv8.2 dot-product instruction (SDOT); it is compiled with a target
 * attribute and chosen at run time from the kernel's HWCAP (TERN_NEON_DOTPROD=0
 * in the environment forces the baseline path, for tests). */
#include "kern-internal.h"

#include <arm_neon.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>

#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20) /* Linux uapi asm/hwcap.h */
#endif

/* ---- run-time choice of the SDOT path ----------------------------------- */

static int neon_dotprod;
static pthread_once_t neon_once = PTHREAD_ONCE_INIT;

static void neon_init(void)
{
	const char *env = getenv("TERN_NEON_DOTPROD");
	neon_dotprod = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0 && !(env && !strcmp(env, "0"));
	TERN_LOGD("kernels", "neon: I2_S uses %s", neon_dotprod ? "sdot" : "smlal");
}

static int use_dotprod(void)
{
	pthread_once(&neon_once, neon_init);
	return neon_dotprod;
}

int tern_kern_neon_dotprod(void)
{
	return use_dotprod();
}

/* The SDOT GEMM at the end of the file (decode once, then every token). */
static int sg_use(const tern_act *a, tern_packing p);
static void sg_gemm(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);

/* ---- I2_S ---------------------------------------------------------------
 * Row o: k_pad/4 bytes, blocks of 32 bytes per 128 k. Byte pos of a block
 * holds the codes c = w + 1 of k = pos, 32+pos, 64+pos, 96+pos in bits 7-6,
 * 5-4, 3-2, 1-0. dot = sum c*q - sum(q). Codes 0..2 are valid int8, so the
 * signed multiplies (smlal, sdot) are exact. */

/* The 8 code vectors of one block: c[2*grp + h] goes with q[32*grp + 16*h ..]. */
static inline void i2s_decode(const uint8_t *p, int8x16_t c[8])
{
	const uint8x16_t m3 = vdupq_n_u8(3);
	const uint8x16_t x0 = vld1q_u8(p), x1 = vld1q_u8(p + 16);
	c[0] = vreinterpretq_s8_u8(vshrq_n_u8(x0, 6));
	c[1] = vreinterpretq_s8_u8(vshrq_n_u8(x1, 6));
	c[2] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(x0, 4), m3));
	c[3] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(x1, 4), m3));
	c[4] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(x0, 2), m3));
	c[5] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(x1, 2), m3));
	c[6] = vreinterpretq_s8_u8(vandq_u8(x0, m3));
	c[7] = vreinterpretq_s8_u8(vandq_u8(x1, m3));
}

/* Blocks per int16 run. Bound: |c*q| <= 2*128 = 256. In the GEMV each of the
 * 4 int16 accumulators takes 4 products per lane per block, in the GEMM each
 * of the 2 per token takes 8: at most 8 * 256 = 2048 per lane per block, so
 * 8 blocks stay <= 16384 <= 32767 before vpadal widens them to int32. */
#define I2S_RUN 8

static void i2s_gemv_base(const tern_matrix *w, const int8_t *q, int32_t qsum, int32_t *dot, int row0, int row1)
{
	const size_t row_bytes = (size_t)w->k_pad / 4;
	const int nblk = w->k_pad / 128;
	for (int o = row0; o < row1; o++) {
		const uint8_t *wr = w->data + (size_t)o * row_bytes;
		int32x4_t acc = vdupq_n_s32(0);
		for (int b0 = 0; b0 < nblk; b0 += I2S_RUN) {
			const int b1 = nblk - b0 < I2S_RUN ? nblk : b0 + I2S_RUN;
			int16x8_t s0 = vdupq_n_s16(0), s1 = s0, s2 = s0, s3 = s0;
			for (int b = b0; b < b1; b++) {
				int8x16_t c[8];
				i2s_decode(wr + (size_t)b * 32, c);
				const int8_t *qb = q + (size_t)b * 128;
				for (int v = 0; v < 8; v += 2) {
					const int8x16_t qa = vld1q_s8(qb + 16 * v), qc = vld1q_s8(qb + 16 * v + 16);
					s0 = vmlal_s8(s0, vget_low_s8(c[v]), vget_low_s8(qa));
					s1 = vmlal_high_s8(s1, c[v], qa);
					s2 = vmlal_s8(s2, vget_low_s8(c[v + 1]), vget_low_s8(qc));
					s3 = vmlal_high_s8(s3, c[v + 1], qc);
				}
			}
			acc = vpadalq_s16(acc, s0);
			acc = vpadalq_s16(acc, s1);
			acc = vpadalq_s16(acc, s2);
			acc = vpadalq_s16(acc, s3);
		}
		dot[o - row0] = vaddvq_s32(acc) - qsum;
	}
}

/* GEMM: each block is decoded once and used for 4 tokens (a short last group
 * repeats its last token and does not store the copies). */
#define I2S_TOKENS 4

/* The activation rows of tokens j0 .. j0+3 (past the last token: the last). */
static inline void i2s_token_rows(const tern_act *a, int j0, const int8_t *q[I2S_TOKENS])
{
	for (int t = 0; t < I2S_TOKENS; t++) {
		const int j = j0 + t < a->n ? j0 + t : a->n - 1;
		q[t] = a->q + (size_t)j * (size_t)a->k_pad;
	}
}

/* One row's dot products of the tokens j0 .. j0+3 that exist (d: the row's
 * slot of token 0). */
static inline void i2s_store(const tern_act *a, const int32x4_t acc[I2S_TOKENS], int j0, int32_t *d, int ldd)
{
	for (int t = 0; t < I2S_TOKENS && j0 + t < a->n; t++)
		d[(size_t)(j0 + t) * (size_t)ldd] = vaddvq_s32(acc[t]) - a->sum[j0 + t];
}

/* The GEMM loop nest: for each token group and row, row(wr, q, nblk, acc)
 * adds the row's products with the group's tokens into acc (inlined, so it
 * is compiled with its caller's target). */
static inline __attribute__((always_inline)) void
i2s_gemm_rows(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1,
	      void (*row)(const uint8_t *, const int8_t *const *, int, int32x4_t *))
{
	const size_t row_bytes = (size_t)w->k_pad / 4;
	const int nblk = w->k_pad / 128;
	for (int j0 = 0; j0 < a->n; j0 += I2S_TOKENS) {
		const int8_t *q[I2S_TOKENS];
		i2s_token_rows(a, j0, q);
		for (int o = row0; o < row1; o++) {
			int32x4_t acc[I2S_TOKENS];
			for (int t = 0; t < I2S_TOKENS; t++)
				acc[t] = vdupq_n_s32(0);
			row(w->data + (size_t)o * row_bytes, q, nblk, acc);
			i2s_store(a, acc, j0, dot + (o - row0), ldd);
		}
	}
}

static inline __attribute__((always_inline)) void i2s_row_base(const uint8_t *wr, const int8_t *const *q, int nblk,
							       int32x4_t *acc)
{
	for (int b0 = 0; b0 < nblk; b0 += I2S_RUN) {
		const int b1 = nblk - b0 < I2S_RUN ? nblk : b0 + I2S_RUN;
		int16x8_t lo[I2S_TOKENS], hi[I2S_TOKENS];
		for (int t = 0; t < I2S_TOKENS; t++)
			lo[t] = hi[t] = vdupq_n_s16(0);
		for (int b = b0; b < b1; b++) {
			int8x16_t c[8];
			i2s_decode(wr + (size_t)b * 32, c);
			for (int t = 0; t < I2S_TOKENS; t++) {
				const int8_t *qb = q[t] + (size_t)b * 128;
				for (int v = 0; v < 8; v++) {
					const int8x16_t x = vld1q_s8(qb + 16 * v);
					lo[t] = vmlal_s8(lo[t], vget_low_s8(c[v]), vget_low_s8(x));
					hi[t] = vmlal_high_s8(hi[t], c[v], x);
				}
			}
		}
		for (int t = 0; t < I2S_TOKENS; t++)
			acc[t] = vpadalq_s16(vpadalq_s16(acc[t], lo[t]), hi[t]);
	}
}

static void i2s_gemm_base(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1)
{
	i2s_gemm_rows(w, a, dot, ldd, row0, row1, i2s_row_base);
}

/* SDOT accumulates 4 products per int32 lane: |4 * 2 * 128| per step, no
 * int16 stage at all. Compiled for ARMv8.2-A+dotprod, called only when the
 * CPU reports it. */
#define DOTPROD_TARGET __attribute__((target("arch=armv8.2-a+dotprod")))

DOTPROD_TARGET static void i2s_gemv_sdot(const tern_matrix *w, const int8_t *q, int32_t qsum, int32_t *dot, int row0,
					 int row1)
{
	const size_t row_bytes = (size_t)w->k_pad / 4;
	const int nblk = w->k_pad / 128;
	for (int o = row0; o < row1; o++) {
		const uint8_t *wr = w->data + (size_t)o * row_bytes;
		int32x4_t a0 = vdupq_n_s32(0), a1 = a0;
		for (int b = 0; b < nblk; b++) {
			int8x16_t c[8];
			i2s_decode(wr + (size_t)b * 32, c);
			const int8_t *qb = q + (size_t)b * 128;
			for (int v = 0; v < 8; v += 2) {
				a0 = vdotq_s32(a0, c[v], vld1q_s8(qb + 16 * v));
				a1 = vdotq_s32(a1, c[v + 1], vld1q_s8(qb + 16 * v + 16));
			}
		}
		dot[o - row0] = vaddvq_s32(vaddq_s32(a0, a1)) - qsum;
	}
}

DOTPROD_TARGET static inline __attribute__((always_inline)) void i2s_row_sdot(const uint8_t *wr,
										const int8_t *const *q, int nblk,
										int32x4_t *acc)
{
	for (int b = 0; b < nblk; b++) {
		int8x16_t c[8];
		i2s_decode(wr + (size_t)b * 32, c);
		for (int t = 0; t < I2S_TOKENS; t++) {
			const int8_t *qb = q[t] + (size_t)b * 128;
			for (int v = 0; v < 8; v++)
				acc[t] = vdotq_s32(acc[t], c[v], vld1q_s8(qb + 16 * v));
		}
	}
}

DOTPROD_TARGET static void i2s_gemm_sdot(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0,
					 int row1)
{
	i2s_gemm_rows(w, a, dot, ldd, row0, row1, i2s_row_sdot);
}

void tern_kern_i2s_neon(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1)
{
	if (sg_use(a, TERN_PACK_I2S)) {
		sg_gemm(w, a, dot, ldd, row0, row1);
		return;
	}
	const int sdot = use_dotprod();
	if (a->n == 1) {
		if (sdot)
			i2s_gemv_sdot(w, a->q, a->sum[0], dot, row0, row1);
		else
			i2s_gemv_base(w, a->q, a->sum[0], dot, row0, row1);
	} else if (sdot) {
		i2s_gemm_sdot(w, a, dot, ldd, row0, row1);
	} else {
		i2s_gemm_base(w, a, dot, ldd, row0, row1);
	}
}

/* ---- TL1 / TL2 -----------------------------------------------------------
 * Tiles of 64 rows; 16 bytes of index nibbles give 16 rows (chunk c = rows
 * 16c..16c+15). A lookup is vqtbl1q_u8 of the group's low-byte plane and of
 * its high-byte plane with the same indices; vzip1q/vzip2q of the two results
 * are the exact int16 entries of rows 16c+0..7 and 16c+8..15, so int16 vector
 * m of a tile holds rows 8m..8m+7 in order.
 *
 * int16 bounds (|q| <= 128): a TL1 entry is <= 2*128 = 256 and a TL2 entry
 * (after its sign) <= 3*128 = 384; one block adds 64 groups per lane:
 * 64 * 256 = 16384 and 64 * 384 = 24576, both <= 32767. After each block the
 * lanes are widened into int32 sums kept per token in acc (|dot| <= 128 * K).
 *
 * GEMM: per tile, tokens in groups of TL_TOKENS share the tile's blocks while
 * they are hot in L1; GEMV is the same loop with one token. */
#define TL_TOKENS 8

/* acc[8m .. 8m+7] += s[m] widened. */
static inline void tl_widen(const int16x8_t s[8], int32_t *acc)
{
	for (int m = 0; m < 8; m++) {
		int32x4_t lo = vld1q_s32(acc + 8 * m), hi = vld1q_s32(acc + 8 * m + 4);
		lo = vaddw_s16(lo, vget_low_s16(s[m]));
		hi = vaddw_high_s16(hi, s[m]);
		vst1q_s32(acc + 8 * m, lo);
		vst1q_s32(acc + 8 * m + 4, hi);
	}
}

/* The int16 entries of 16 rows for one group: lut = lo[16] then hi[16]. */
static inline void tl_lookup(const uint8x16_t lo, const uint8x16_t hi, const uint8x16_t idx, int16x8_t *r0,
			     int16x8_t *r1)
{
	const uint8x16_t l = vqtbl1q_u8(lo, idx), h = vqtbl1q_u8(hi, idx);
	*r0 = vreinterpretq_s16_u8(vzip1q_u8(l, h));
	*r1 = vreinterpretq_s16_u8(vzip2q_u8(l, h));
}

/* One TL1 block (nq <= 32 quads) of a tile for one token. wq: the block's
 * first quad in the tile (64 bytes per quad); lut: that quad's two groups. */
static void tl1_block(const uint8_t *wq, const uint8_t *lut, int nq, int32_t *acc)
{
	const uint8x16_t m4 = vdupq_n_u8(15);
	int16x8_t s[8];
	for (int m = 0; m < 8; m++)
		s[m] = vdupq_n_s16(0);
	for (int qd = 0; qd < nq; qd++) {
		const uint8_t *L = lut + (size_t)qd * 64;
		const uint8x16_t lo0 = vld1q_u8(L), hi0 = vld1q_u8(L + 16);
		const uint8x16_t lo1 = vld1q_u8(L + 32), hi1 = vld1q_u8(L + 48);
		const uint8_t *W = wq + (size_t)qd * 64;
		for (int c = 0; c < 4; c++) {
			const uint8x16_t v = vld1q_u8(W + 16 * c);
			int16x8_t e0, e1, f0, f1;
			tl_lookup(lo0, hi0, vandq_u8(v, m4), &e0, &e1);
			tl_lookup(lo1, hi1, vshrq_n_u8(v, 4), &f0, &f1);
			s[2 * c] = vaddq_s16(s[2 * c], vaddq_s16(e0, f0));
			s[2 * c + 1] = vaddq_s16(s[2 * c + 1], vaddq_s16(e1, f1));
		}
	}
	tl_widen(s, acc);
}

/* TL2 signs. A negative row's entry is -e = ~e + 1, and ~e is e's low and
 * high bytes each XORed with 0xff: so the sign is applied to the two byte
 * planes with one byte mask per row, before they are interleaved, and the +1
 * is counted per row in a u8 counter (at most 2 per pair, 64 per block <= 255)
 * that is added once per block. The int16 partial sums then hold ~e terms:
 * |~e| <= 385 (LAYOUTS.md: |e| <= 384), 64 * 385 = 24640 <= 32767, so they stay
 * exact, and adding the counts gives the exact block sum.
 *
 * Byte lane i of chunk c is row 16c+i; its sign bit is bit i of record byte c
 * (i < 8) or bit i-8 of record byte 4+c (i >= 8) for the even group, the same
 * 8 bytes further on for the odd group. */
static inline uint8x16_t tl2_sel(int c)
{
	return vcombine_u8(vdup_n_u8((uint8_t)c), vdup_n_u8((uint8_t)(4 + c)));
}

/* One TL2 block (np <= 32 pairs) of a tile for one token. blk: the block
 * (np*64 index bytes then np*16 sign bytes); lut: the block's first pair. */
static void tl2_block(const uint8_t *blk, const uint8_t *lut, int np, int32_t *acc)
{
	static const uint8_t bit_of_lane[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
	const uint8x16_t m4 = vdupq_n_u8(15), bits = vld1q_u8(bit_of_lane);
	const uint8x16_t sel[4] = {tl2_sel(0), tl2_sel(1), tl2_sel(2), tl2_sel(3)};
	const uint8_t *signs = blk + (size_t)np * 64;
	int16x8_t s[8];
	uint8x16_t neg[4];
	for (int m = 0; m < 8; m++)
		s[m] = vdupq_n_s16(0);
	for (int c = 0; c < 4; c++)
		neg[c] = vdupq_n_u8(0);
	for (int p = 0; p < np; p++) {
		const uint8_t *L = lut + (size_t)p * 64;
		const uint8x16_t lo0 = vld1q_u8(L), hi0 = vld1q_u8(L + 16);
		const uint8x16_t lo1 = vld1q_u8(L + 32), hi1 = vld1q_u8(L + 48);
		const uint8x16_t rec0 = vld1q_u8(signs + (size_t)p * 16);
		const uint8x16_t rec1 = vextq_u8(rec0, rec0, 8);
		const uint8_t *W = blk + (size_t)p * 64;
		for (int c = 0; c < 4; c++) {
			const uint8x16_t v = vld1q_u8(W + 16 * c);
			const uint8x16_t i0 = vandq_u8(v, m4), i1 = vshrq_n_u8(v, 4);
			const uint8x16_t n0 = vtstq_u8(vqtbl1q_u8(rec0, sel[c]), bits);
			const uint8x16_t n1 = vtstq_u8(vqtbl1q_u8(rec1, sel[c]), bits);
			const uint8x16_t l0 = veorq_u8(vqtbl1q_u8(lo0, i0), n0), h0 = veorq_u8(vqtbl1q_u8(hi0, i0), n0);
			const uint8x16_t l1 = veorq_u8(vqtbl1q_u8(lo1, i1), n1), h1 = veorq_u8(vqtbl1q_u8(hi1, i1), n1);
			const int16x8_t e0 = vreinterpretq_s16_u8(vzip1q_u8(l0, h0));
			const int16x8_t e1 = vreinterpretq_s16_u8(vzip2q_u8(l0, h0));
			const int16x8_t f0 = vreinterpretq_s16_u8(vzip1q_u8(l1, h1));
			const int16x8_t f1 = vreinterpretq_s16_u8(vzip2q_u8(l1, h1));
			s[2 * c] = vaddq_s16(s[2 * c], vaddq_s16(e0, f0));
			s[2 * c + 1] = vaddq_s16(s[2 * c + 1], vaddq_s16(e1, f1));
			/* n is 0xff (= -1) on negative rows: subtracting counts them. */
			neg[c] = vsubq_u8(vsubq_u8(neg[c], n0), n1);
		}
	}
	for (int c = 0; c < 4; c++) {
		s[2 * c] = vaddq_s16(s[2 * c], vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(neg[c]))));
		s[2 * c + 1] = vaddq_s16(s[2 * c + 1], vreinterpretq_s16_u16(vmovl_high_u8(neg[c])));
	}
	tl_widen(s, acc);
}

/* Stores the rows of tile t inside [row0, row1) for tokens j0 .. j0+nt-1. */
static void tl_store(int32_t acc[TL_TOKENS][TERN_TL_ROWS], int nt, int j0, int t, int32_t *dot, int ldd, int row0,
		     int row1)
{
	const int r0 = t * TERN_TL_ROWS;
	const int lo = r0 < row0 ? row0 : r0;
	const int hi = r0 + TERN_TL_ROWS < row1 ? r0 + TERN_TL_ROWS : row1;
	for (int u = 0; u < nt; u++) {
		int32_t *d = dot + (size_t)(j0 + u) * (size_t)ldd + (lo - row0);
		memcpy(d, acc[u] + (lo - r0), (size_t)(hi - lo) * sizeof(int32_t));
	}
}

/* The TL loop nest: tiles of steps (TL1 quads, TL2 pairs: two groups each)
 * of step_bytes, blocks of 32 steps (64 groups, the int16 bound) per token
 * done by block(); inlined so block is a direct call. */
static inline __attribute__((always_inline)) void tl_run(const tern_matrix *w, const tern_act *a, int32_t *dot,
							 int ldd, int row0, int row1, int steps, size_t step_bytes,
							 void (*block)(const uint8_t *, const uint8_t *, int, int32_t *))
{
	const int sblk = TERN_TL_BLOCK_GROUPS / 2;
	int32_t acc[TL_TOKENS][TERN_TL_ROWS];
	for (int t = row0 / TERN_TL_ROWS; t * TERN_TL_ROWS < row1; t++) {
		const uint8_t *tile = w->data + (size_t)t * (size_t)steps * step_bytes;
		for (int j0 = 0; j0 < a->n; j0 += TL_TOKENS) {
			const int nt = a->n - j0 < TL_TOKENS ? a->n - j0 : TL_TOKENS;
			memset(acc, 0, sizeof acc);
			for (int s0 = 0; s0 < steps; s0 += sblk) {
				const int ns = steps - s0 < sblk ? steps - s0 : sblk;
				for (int u = 0; u < nt; u++) {
					const uint8_t *lut =
					    (const uint8_t *)a->lut + (size_t)(j0 + u) * a->lut_row_bytes;
					block(tile + (size_t)s0 * step_bytes, lut + (size_t)s0 * 2 * TERN_LUT_GROUP_BYTES, ns,
					      acc[u]);
				}
			}
			tl_store(acc, nt, j0, t, dot, ldd, row0, row1);
		}
	}
}

void tern_kern_tl1_neon(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1)
{
	if (sg_use(a, TERN_PACK_TL1))
		sg_gemm(w, a, dot, ldd, row0, row1);
	else
		tl_run(w, a, dot, ldd, row0, row1, w->k_pad / 4, TERN_TL1_QUAD_BYTES, tl1_block);
}

void tern_kern_tl2_neon(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1)
{
	if (sg_use(a, TERN_PACK_TL2))
		sg_gemm(w, a, dot, ldd, row0, row1);
	else
		tl_run(w, a, dot, ldd, row0, row1, w->k_pad / 6, TERN_TL2_PAIR_BYTES, tl2_block);
}

/* ---- the SDOT GEMM: each weight tile decoded once -------------------------
 * For batches (from tern_kern_neon_gemm_min[packing] tokens up, on CPUs with
 * dotprod): a 64-row tile x a chunk of K is decoded once into int8 codes
 * c = w + 1 in {0, 1, 2}, entry k4 of the chunk being 16 vectors of 4 rows x
 * 4 consecutive k (one int32 lane per row, rows in natural order: NEON's
 * zips and 4 x 4 transposes are full width). Every token then runs over the
 * decoded chunk with its 4 activation bytes broadcast: acc += sdot(c, q),
 * exact in int32 (|4 * 2 * 128| per step, |dot| <= 128 * K), and at the end
 * dot = acc - sum(q). Codes past k_pad (TL2's last k4 when k_pad % 4 == 2) are
 * 0, and that k4's activations come from a zero-padded copy.
 *
 * Register blocking: 16 rows (4 vectors) x up to 4 tokens = 16 accumulators
 * of the 32 registers. CPUs without dotprod keep the kernels above: a
 * widening multiply (smull + sadalp) on this layout costs 4 instructions per
 * 16 products, twice what their smlal / tbl loops spend. */
int tern_kern_neon_gemm_min[TERN_PACK_COUNT] = {TERN_GEMM_NEON_MIN_I2S, TERN_GEMM_NEON_MIN_TL1,
						TERN_GEMM_NEON_MIN_TL2};

#define SG_ROWS 64
#define SG_NT 4
#define SG_TOKENS 64
#define SG_K4_BYTES 256
#define SG_KC_I2S 256
#define SG_KC_TL1 256
#define SG_KC_TL2 384
#define SG_KC_MAX 384

static inline int8x16_t sg_bcast4(const int8_t *p)
{
	int32_t x;
	memcpy(&x, p, 4);
	return vreinterpretq_s8_s32(vdupq_n_s32(x));
}

/* d: the 16-row group's first vector in the chunk (k4 stride SG_K4_BYTES);
 * q: the first token at the chunk's k0 (token stride ldq); acc[t][16] the
 * group's int32 sums (row stride SG_ROWS per token; first: overwrite). */
DOTPROD_TARGET static inline __attribute__((always_inline)) void sg_pass(const uint8_t *d, int nk4, const int8_t *q,
									 size_t ldq, const int nt, int32_t *acc,
									 int first)
{
	int32x4_t c[SG_NT][4];
	for (int t = 0; t < nt; t++)
		for (int v = 0; v < 4; v++)
			c[t][v] = first ? vdupq_n_s32(0) : vld1q_s32(acc + t * SG_ROWS + 4 * v);
	for (int k4 = 0; k4 < nk4; k4++) {
		const int8_t *dk = (const int8_t *)d + (size_t)k4 * SG_K4_BYTES;
		const int8x16_t w0 = vld1q_s8(dk), w1 = vld1q_s8(dk + 16), w2 = vld1q_s8(dk + 32),
				w3 = vld1q_s8(dk + 48);
		for (int t = 0; t < nt; t++) {
			const int8x16_t b = sg_bcast4(q + (size_t)t * ldq + 4 * (size_t)k4);
			c[t][0] = vdotq_s32(c[t][0], w0, b);
			c[t][1] = vdotq_s32(c[t][1], w1, b);
			c[t][2] = vdotq_s32(c[t][2], w2, b);
			c[t][3] = vdotq_s32(c[t][3], w3, b);
		}
	}
	for (int t = 0; t < nt; t++)
		for (int v = 0; v < 4; v++)
			vst1q_s32(acc + t * SG_ROWS + 4 * v, c[t][v]);
}

DOTPROD_TARGET static void sg_pass_n(const uint8_t *d, int nk4, const int8_t *q, size_t ldq, int nt, int32_t *acc,
				     int first)
{
	switch (nt) {
	case 4: sg_pass(d, nk4, q, ldq, 4, acc, first); break;
	case 3: sg_pass(d, nk4, q, ldq, 3, acc, first); break;
	case 2: sg_pass(d, nk4, q, ldq, 2, acc, first); break;
	default: sg_pass(d, nk4, q, ldq, 1, acc, first); break;
	}
}

typedef void (*sg_decode_fn)(const tern_matrix *w, int r0, int row1, int k0, int k1, uint8_t *d);

/* I2_S: 4 rows x one 32-byte block, transposed as 4 x 8 dwords -> y[j]
 * (lane i = bytes 4j..4j+3 of row i's block); code plane g of y[j] is the
 * k4 32b + 8g + j. */
static void sg_i2s_decode(const tern_matrix *w, int r0, int row1, int k0, int k1, uint8_t *d)
{
	const size_t row_bytes = (size_t)w->k_pad / 4;
	const uint8x16_t m3 = vdupq_n_u8(3);
	const int b0 = k0 / 128, b1 = k1 / 128;
	for (int v = 0; v < 16; v++) {
		const uint8_t *rp[4];
		for (int r = 0; r < 4; r++) {
			const int row = r0 + 4 * v + r;
			rp[r] = w->data + (size_t)(row < row1 ? row : row1 - 1) * row_bytes;
		}
		for (int b = b0; b < b1; b++) {
			uint8x16_t y[8];
			for (int h = 0; h < 2; h++) {
				const uint32x4_t x0 = vreinterpretq_u32_u8(vld1q_u8(rp[0] + 32 * b + 16 * h));
				const uint32x4_t x1 = vreinterpretq_u32_u8(vld1q_u8(rp[1] + 32 * b + 16 * h));
				const uint32x4_t x2 = vreinterpretq_u32_u8(vld1q_u8(rp[2] + 32 * b + 16 * h));
				const uint32x4_t x3 = vreinterpretq_u32_u8(vld1q_u8(rp[3] + 32 * b + 16 * h));
				const uint64x2_t t0 = vreinterpretq_u64_u32(vzip1q_u32(x0, x1));
				const uint64x2_t t1 = vreinterpretq_u64_u32(vzip2q_u32(x0, x1));
				const uint64x2_t t2 = vreinterpretq_u64_u32(vzip1q_u32(x2, x3));
				const uint64x2_t t3 = vreinterpretq_u64_u32(vzip2q_u32(x2, x3));
				y[4 * h + 0] = vreinterpretq_u8_u64(vzip1q_u64(t0, t2));
				y[4 * h + 1] = vreinterpretq_u8_u64(vzip2q_u64(t0, t2));
				y[4 * h + 2] = vreinterpretq_u8_u64(vzip1q_u64(t1, t3));
				y[4 * h + 3] = vreinterpretq_u8_u64(vzip2q_u64(t1, t3));
			}
			uint8_t *db = d + (size_t)(b - b0) * 32 * SG_K4_BYTES + 16 * (size_t)v;
			for (int j = 0; j < 8; j++) {
				vst1q_u8(db + (size_t)(0 + j) * SG_K4_BYTES, vshrq_n_u8(y[j], 6));
				vst1q_u8(db + (size_t)(8 + j) * SG_K4_BYTES, vandq_u8(vshrq_n_u8(y[j], 4), m3));
				vst1q_u8(db + (size_t)(16 + j) * SG_K4_BYTES, vandq_u8(vshrq_n_u8(y[j], 2), m3));
				vst1q_u8(db + (size_t)(24 + j) * SG_K4_BYTES, vandq_u8(y[j], m3));
			}
		}
	}
}

/* Four byte planes of chunk c (codes of 4 consecutive k, byte i = row
 * 16c + i) -> the 4 vectors of rows 16c..16c+15 in one k4 (dk: at row 16c). */
static inline void sg_interleave4(uint8x16_t p0, uint8x16_t p1, uint8x16_t p2, uint8x16_t p3, uint8_t *dk)
{
	const uint16x8_t x01l = vreinterpretq_u16_u8(vzip1q_u8(p0, p1)), x01h = vreinterpretq_u16_u8(vzip2q_u8(p0, p1));
	const uint16x8_t x23l = vreinterpretq_u16_u8(vzip1q_u8(p2, p3)), x23h = vreinterpretq_u16_u8(vzip2q_u8(p2, p3));
	vst1q_u8(dk, vreinterpretq_u8_u16(vzip1q_u16(x01l, x23l)));
	vst1q_u8(dk + 16, vreinterpretq_u8_u16(vzip2q_u16(x01l, x23l)));
	vst1q_u8(dk + 32, vreinterpretq_u8_u16(vzip1q_u16(x01h, x23h)));
	vst1q_u8(dk + 48, vreinterpretq_u8_u16(vzip2q_u16(x01h, x23h)));
}

/* TL1: idx = 3*w0 + w1 + 4 = 3*c0 + c1, so c0 = idx / 3, c1 = idx % 3. */
static void sg_tl1_decode(const tern_matrix *w, int r0, int row1, int k0, int k1, uint8_t *d)
{
	(void)row1; /* TL1 tiles are padded to 64 rows in data */
	const uint8x16_t t0 = vld1q_u8(tern_tl1_codes[0]), t1 = vld1q_u8(tern_tl1_codes[1]), m15 = vdupq_n_u8(15);
	const size_t quads = (size_t)w->k_pad / 4;
	const uint8_t *tile = w->data + (size_t)(r0 / SG_ROWS) * quads * TERN_TL1_QUAD_BYTES;
	for (int qd = k0 / 4; qd < k1 / 4; qd++) {
		const uint8_t *src = tile + (size_t)qd * TERN_TL1_QUAD_BYTES;
		uint8_t *dk = d + (size_t)(qd - k0 / 4) * SG_K4_BYTES;
		for (int c = 0; c < 4; c++) {
			const uint8x16_t v = vld1q_u8(src + 16 * c);
			const uint8x16_t i0 = vandq_u8(v, m15), i1 = vshrq_n_u8(v, 4);
			sg_interleave4(vqtbl1q_u8(t0, i0), vqtbl1q_u8(t1, i0), vqtbl1q_u8(t0, i1), vqtbl1q_u8(t1, i1),
				       dk + 64 * c);
		}
	}
}

/* TL2: |v| + 13 = 9*c0 + 3*c1 + c2; a negative group is the negated triple,
 * codes 2 - c = (c ^ m) + (m & 3) with m = 0xff on negative rows (mod 256).
 * The row masks come from the sign record as in tl2_block. */
static inline void sg_tl2_planes(uint8x16_t v, uint8x16_t rec0, uint8x16_t rec1, uint8x16_t sel, uint8x16_t p[6])
{
	static const uint8_t bit_of_lane[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
	const uint8x16_t c0 = vld1q_u8(tern_tl2_codes[0]), c1 = vld1q_u8(tern_tl2_codes[1]);
	const uint8x16_t c2 = vld1q_u8(tern_tl2_codes[2]), bits = vld1q_u8(bit_of_lane);
	const uint8x16_t m15 = vdupq_n_u8(15), three = vdupq_n_u8(3);
	const uint8x16_t ix[2] = {vandq_u8(v, m15), vshrq_n_u8(v, 4)};
	const uint8x16_t rec[2] = {rec0, rec1};
	for (int e = 0; e < 2; e++) {
		const uint8x16_t m = vtstq_u8(vqtbl1q_u8(rec[e], sel), bits), m3 = vandq_u8(m, three);
		p[3 * e + 0] = vaddq_u8(veorq_u8(vqtbl1q_u8(c0, ix[e]), m), m3);
		p[3 * e + 1] = vaddq_u8(veorq_u8(vqtbl1q_u8(c1, ix[e]), m), m3);
		p[3 * e + 2] = vaddq_u8(veorq_u8(vqtbl1q_u8(c2, ix[e]), m), m3);
	}
}

static void sg_tl2_decode(const tern_matrix *w, int r0, int row1, int k0, int k1, uint8_t *d)
{
	(void)row1; /* TL2 tiles are padded to 64 rows in data */
	const int pairs = w->k_pad / 6;
	const uint8_t *tile = w->data + (size_t)(r0 / SG_ROWS) * (size_t)pairs * TERN_TL2_PAIR_BYTES;
	const int p0 = k0 / 6, p1 = k1 / 6;
	const uint8x16_t sel[4] = {tl2_sel(0), tl2_sel(1), tl2_sel(2), tl2_sel(3)};
	const uint8x16_t z = vdupq_n_u8(0);
	uint8_t *dk = d;
	for (int pb = p0; pb < p1; pb += TERN_TL2_BLOCK_PAIRS) {
		const int np = pairs - pb < TERN_TL2_BLOCK_PAIRS ? pairs - pb : TERN_TL2_BLOCK_PAIRS;
		const uint8_t *idx = tile + (size_t)pb * TERN_TL2_PAIR_BYTES;
		const uint8_t *sgn = idx + (size_t)np * 64;
		for (int p = 0; p < np; p += 2) {
			const int two = p + 1 < np; /* two pairs = 12 k = 3 k4; the odd last pair 6 k = 2 k4 */
			for (int c = 0; c < 4; c++) {
				uint8x16_t a[6], b[6];
				const uint8x16_t ra = vld1q_u8(sgn + (size_t)p * 16);
				sg_tl2_planes(vld1q_u8(idx + (size_t)p * 64 + 16 * c), ra, vextq_u8(ra, ra, 8), sel[c], a);
				sg_interleave4(a[0], a[1], a[2], a[3], dk + 64 * c);
				if (two) {
					const uint8x16_t rb = vld1q_u8(sgn + (size_t)(p + 1) * 16);
					sg_tl2_planes(vld1q_u8(idx + (size_t)(p + 1) * 64 + 16 * c), rb, vextq_u8(rb, rb, 8),
						      sel[c], b);
					sg_interleave4(a[4], a[5], b[0], b[1], dk + SG_K4_BYTES + 64 * c);
					sg_interleave4(b[2], b[3], b[4], b[5], dk + 2 * SG_K4_BYTES + 64 * c);
				} else {
					sg_interleave4(a[4], a[5], z, z, dk + SG_K4_BYTES + 64 * c);
				}
			}
			dk += (two ? 3 : 2) * SG_K4_BYTES;
		}
	}
}

DOTPROD_TARGET static void sg_drive(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0,
				    int row1, int kc, sg_decode_fn decode)
{
	_Alignas(64) uint8_t dec[(SG_KC_MAX / 4 + 1) * SG_K4_BYTES];
	_Alignas(64) int32_t acc[SG_TOKENS * SG_ROWS];
	const int k_pad = w->k_pad;
	const int k4_full = k_pad / 4, tail = k_pad % 4;
	for (int j0 = 0; j0 < a->n; j0 += SG_TOKENS) {
		const int nj = a->n - j0 < SG_TOKENS ? a->n - j0 : SG_TOKENS;
		_Alignas(64) int8_t qtail[SG_TOKENS * 4];
		if (tail) {
			memset(qtail, 0, sizeof qtail);
			for (int t = 0; t < nj; t++)
				memcpy(qtail + 4 * t, a->q + (size_t)(j0 + t) * (size_t)k_pad + 4 * (size_t)k4_full,
				       (size_t)tail);
		}
		/* Balanced token blocks (6 = 3 + 3, not 4 + 2). */
		const int blocks = (nj + SG_NT - 1) / SG_NT;
		for (int r = row0; r < row1; r += SG_ROWS) {
			for (int k0 = 0; k0 < k_pad; k0 += kc) {
				const int k1 = k_pad - k0 < kc ? k_pad : k0 + kc;
				decode(w, r, row1, k0, k1, dec);
				const int nk4 = (k1 - k0) / 4;
				const int part = (k1 - k0) % 4 != 0;
				for (int g = 0; g < SG_ROWS / 16; g++) {
					const uint8_t *dg = dec + 64 * (size_t)g;
					for (int t = 0, bi = 0; t < nj; bi++) {
						const int nt = (nj - t + (blocks - bi) - 1) / (blocks - bi);
						int32_t *at = acc + (size_t)t * SG_ROWS + 16 * (size_t)g;
						if (nk4)
							sg_pass_n(dg, nk4, a->q + (size_t)(j0 + t) * (size_t)k_pad + (size_t)k0,
								  (size_t)k_pad, nt, at, k0 == 0);
						if (part)
							sg_pass_n(dg + (size_t)nk4 * SG_K4_BYTES, 1, qtail + 4 * t, 4, nt, at,
								  k0 == 0 && nk4 == 0);
						t += nt;
					}
				}
			}
			const int rows = row1 - r < SG_ROWS ? row1 - r : SG_ROWS;
			for (int t = 0; t < nj; t++) {
				const int32_t *at = acc + (size_t)t * SG_ROWS;
				const int32_t s = a->sum[j0 + t];
				int32_t *dt = dot + (size_t)(j0 + t) * (size_t)ldd + (size_t)(r - row0);
				for (int i = 0; i < rows; i++)
					dt[i] = at[i] - s;
			}
		}
	}
}

/* Called by the kernels above when the batch is large enough and the CPU has dotprod. */
static int sg_use(const tern_act *a, tern_packing p)
{
	return a->n >= tern_kern_neon_gemm_min[p] && use_dotprod();
}

static void sg_gemm(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1)
{
	switch (w->packing) {
	case TERN_PACK_I2S: sg_drive(w, a, dot, ldd, row0, row1, SG_KC_I2S, sg_i2s_decode); break;
	case TERN_PACK_TL1: sg_drive(w, a, dot, ldd, row0, row1, SG_KC_TL1, sg_tl1_decode); break;
	default: sg_drive(w, a, dot, ldd, row0, row1, SG_KC_TL2, sg_tl2_decode); break;
	}
}
