/* float-neon.c: the float kernels (tern-float.h) with baseline AArch64
 * Advanced SIMD, equal to kernels/ref/float-ref.c bit for bit. The dot
 * product keeps sixteen 4-lane FMA chains (vfmaq_f32 is fused, like fmaf)
 * = the 64 lanes of the reference order; F16 widens with FCVTL, exact.
 * Compiled with -ffp-contract=off -fno-fast-math. */
#include <arm_neon.h>
#include <string.h>

#include "kern-float.h"
#include "kern-internal.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* "v > m ? v : m" per lane (vmaxq_f32 would propagate NaN instead). */
static inline float32x4_t max_gt(float32x4_t v, float32x4_t m)
{
	return vbslq_f32(vcgtq_f32(v, m), v, m);
}

TERN_FLOAT_ROWWISE(neon, float32x4_t, 4, vld1q_f32, vst1q_f32, vmulq_f32, vdupq_n_f32, max_gt)

/* Pairs j .. j+3 of head xh. */
static ALWAYS_INLINE void rope_step(float *xh, int half, const float *cs_pos, int j)
{
	const float32x4x2_t cs = vld2q_f32(cs_pos + 2 * j); /* val[0] = cos, val[1] = sin */
	const float32x4_t x0 = vld1q_f32(xh + j), x1 = vld1q_f32(xh + j + half);
	vst1q_f32(xh + j, vsubq_f32(vmulq_f32(x0, cs.val[0]), vmulq_f32(x1, cs.val[1])));
	vst1q_f32(xh + j + half, vaddq_f32(vmulq_f32(x0, cs.val[1]), vmulq_f32(x1, cs.val[0])));
}

TERN_FLOAT_ROPE(neon, 4, rope_step)

static ALWAYS_INLINE void ld8(const uint8_t *row, tern_dot_type t, int i, float32x4_t *lo, float32x4_t *hi)
{
	switch (t) {
	case TERN_DOT_F16: {
		const uint16x8_t h = vld1q_u16((const uint16_t *)(const void *)(row + 2 * (size_t)i));
		*lo = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h)));
		*hi = vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h)));
		break;
	}
	case TERN_DOT_BF16: {
		const uint16x8_t h = vld1q_u16((const uint16_t *)(const void *)(row + 2 * (size_t)i));
		*lo = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
		*hi = vreinterpretq_f32_u32(vshll_n_u16(vget_high_u16(h), 16));
		break;
	}
	default:
		*lo = vld1q_f32((const float *)(const void *)(row + 4 * (size_t)i));
		*hi = vld1q_f32((const float *)(const void *)(row + 4 * (size_t)i + 16));
		break;
	}
}

static ALWAYS_INLINE float dot1(const uint8_t *row, tern_dot_type t, const float *x, int n)
{
	float32x4_t a[16];
	for (int k = 0; k < 16; k++)
		a[k] = vdupq_n_f32(0.0f);
	const int n64 = n - n % TERN_DOT_LANES;
	for (int i = 0; i < n64; i += TERN_DOT_LANES) {
#pragma GCC unroll 8
		for (int k = 0; k < 8; k++) {
			float32x4_t lo, hi;
			ld8(row, t, i + 8 * k, &lo, &hi);
			a[2 * k] = vfmaq_f32(a[2 * k], lo, vld1q_f32(x + i + 8 * k));
			a[2 * k + 1] = vfmaq_f32(a[2 * k + 1], hi, vld1q_f32(x + i + 8 * k + 4));
		}
	}
	float l[TERN_DOT_LANES];
	for (int k = 0; k < 16; k++)
		vst1q_f32(l + 4 * k, a[k]);
	return tern_dot_finish(l, row, t, x, n64, n);
}

static ALWAYS_INLINE void rows_t(const tern_dot_args *a, tern_dot_type t, int r0, int r1)
{
	TERN_DOT_ROWS_EACH(dot1, a, t, r0, r1);
}

static void dot_rows_neon(const tern_dot_args *a, int r0, int r1)
{
	TERN_DOT_BY_TYPE(rows_t, a, r0, r1);
}

/* ---- quantized head: 4 rows per int32x4 (quad qd of a 16-row group) ---- */

#define QX_TILE 8 /* activation rows per pass over a group (accumulators in L1) */

static ALWAYS_INLINE int8x16_t bcast4(const int8_t *p)
{
	int32_t v;
	memcpy(&v, p, 4);
	return vreinterpretq_s8_s32(vdupq_n_s32(v));
}

/* Quad qd of a tile in element-chunk order: w[c] = elements 4c..4c+3 of rows
 * 4qd..4qd+3 (Q8: q; Q4: q + 8, both valid int8). */
static ALWAYS_INLINE void qh_load(tern_qh_type t, const uint8_t *tile, int qd, int8x16_t *w)
{
	if (t == TERN_QH_Q8) {
		for (int c = 0; c < 8; c++)
			w[c] = vld1q_s8((const int8_t *)(const void *)(tile + 64 * c + 16 * qd));
	} else {
		for (int c = 0; c < 4; c++) {
			const uint8x16_t v = vld1q_u8(tile + 64 * c + 16 * qd);
			w[c] = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
			w[c + 4] = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
		}
	}
}

/* The 4 rows' exact block sums, baseline: int8 x int8 products widened to
 * int16 (vmull), pairs accumulated in int32 (vpadal), then one pairwise add
 * puts row k in lane k. Q4 subtracts 8 * xs for the code offset. */
static ALWAYS_INLINE int32x4_t qh_isum_base(tern_qh_type t, const int8x16_t *w, const int8_t *xb, int32_t xs)
{
	int32x4_t lo = vdupq_n_s32(0), hi = lo;
	for (int c = 0; c < 8; c++) {
		const int8x16_t x = bcast4(xb + 4 * c);
		lo = vpadalq_s16(lo, vmull_s8(vget_low_s8(w[c]), vget_low_s8(x)));
		hi = vpadalq_s16(hi, vmull_high_s8(w[c], x));
	}
	const int32x4_t s = vpaddq_s32(lo, hi);
	return t == TERN_QH_Q8 ? s : vsubq_s32(s, vdupq_n_s32(8 * xs));
}

static ALWAYS_INLINE float32x4_t qh_step(float32x4_t acc, int32x4_t is, float32x4_t dw, float dx)
{
	return vaddq_f32(acc, vmulq_f32(vcvtq_f32_s32(is), vmulq_f32(dw, vdupq_n_f32(dx))));
}

/* Groups [g0, g1) with the block sums of isum(t, w, xb, xs); each quad of
 * a tile is decoded once for up to QX_TILE activation rows. */
#define QH_GROUPS(a, t, isum, g0, g1)                                                                          \
	do {                                                                                                   \
		const int nb_ = tern_qh_blocks((a)->n);                                                        \
		float acc[QX_TILE][TERN_QH_GROUP];                                                             \
		for (int g = (g0); g < (g1); g++) {                                                            \
			for (int j0 = 0; j0 < (a)->nx; j0 += QX_TILE) {                                        \
				const int nt = (a)->nx - j0 < QX_TILE ? (a)->nx - j0 : QX_TILE;                \
				memset(acc, 0, sizeof acc);                                                    \
				for (int b = 0; b < nb_; b++) {                                                \
					const uint8_t *tile = tern_qh_quants((t), tern_qh_group((a), g), b);   \
					const uint8_t *sc = tern_qh_scales((t), tern_qh_group((a), g), (a)->n, b); \
					for (int qd = 0; qd < 4; qd++) {                                       \
						int8x16_t w[8];                                                \
						qh_load((t), tile, qd, w);                                     \
						const float32x4_t dw = vcvt_f32_f16(vreinterpret_f16_u16(      \
						    vld1_u16((const uint16_t *)(const void *)(sc + 8 * qd)))); \
						for (int v = 0; v < nt; v++) {                                 \
							const size_t xo = (size_t)(j0 + v) * (size_t)nb_ + (size_t)b; \
							float *l = acc[v] + 4 * qd;                            \
							vst1q_f32(l, qh_step(vld1q_f32(l),                     \
									     isum((t), w, (a)->xq + xo * TERN_QH_BLOCK, (a)->xs[xo]), \
									     dw, (a)->xd[xo]));                \
						}                                                              \
					}                                                                      \
				}                                                                              \
				for (int v = 0; v < nt; v++)                                                   \
					tern_qh_store((a), j0 + v, g, 0, acc[v], TERN_QH_GROUP);               \
			}                                                                                      \
		}                                                                                              \
	} while (0)

static void qdot_base(const tern_qdot_args *a, int g0, int g1)
{
	if (a->type == TERN_QH_Q8)
		QH_GROUPS(a, TERN_QH_Q8, qh_isum_base, g0, g1);
	else
		QH_GROUPS(a, TERN_QH_Q4, qh_isum_base, g0, g1);
}

/* With SDOT (ARMv8.2 dotprod, chosen at run time like arm/gemm-neon.c):
 * each lane sums its row's four products directly. */
#define DOTPROD_TARGET __attribute__((target("arch=armv8.2-a+dotprod")))

static DOTPROD_TARGET ALWAYS_INLINE int32x4_t qh_isum_sdot(tern_qh_type t, const int8x16_t *w, const int8_t *xb,
							   int32_t xs)
{
	int32x4_t s = vdupq_n_s32(t == TERN_QH_Q8 ? 0 : -8 * xs);
	for (int c = 0; c < 8; c++)
		s = vdotq_s32(s, w[c], bcast4(xb + 4 * c));
	return s;
}

static DOTPROD_TARGET void qdot_sdot(const tern_qdot_args *a, int g0, int g1)
{
	if (a->type == TERN_QH_Q8)
		QH_GROUPS(a, TERN_QH_Q8, qh_isum_sdot, g0, g1);
	else
		QH_GROUPS(a, TERN_QH_Q4, qh_isum_sdot, g0, g1);
}

static void qdot_groups_neon(const tern_qdot_args *a, int g0, int g1)
{
	if (tern_kern_neon_dotprod())
		qdot_sdot(a, g0, g1);
	else
		qdot_base(a, g0, g1);
}

TERN_FLOAT_SWIGLU(neon)

const tern_float_kernels tern_float_neon = {TERN_ISA_NEON, rmsnorm_neon, softmax_neon, rope_neon, dot_rows_neon,
					    qdot_groups_neon, swiglu_neon};
