/* float-neon.c: the float kernels (tern-float.h) with baseline AArch64
 * Advanced SIMD, equal to kernels/ref/float-ref.c bit for bit. The dot
 * product keeps sixteen 4-lane FMA chains (vfmaq_f32 is fused, like fmaf)
 * = the 64 lanes of the reference order; F16 widens with FCVTL, exact.
 * Compiled with -ffp-contract=off -fno-fast-math. */
#include <arm_neon.h>

#include "kern-float.h"

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
	case TERN_DOT_I8: {
		const int16x8_t q = vmovl_s8(vld1_s8((const int8_t *)(const void *)(row + i)));
		*lo = vcvtq_f32_s32(vmovl_s16(vget_low_s16(q)));
		*hi = vcvtq_f32_s32(vmovl_s16(vget_high_s16(q)));
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

const tern_float_kernels tern_float_neon = {TERN_ISA_NEON, rmsnorm_neon, softmax_neon, rope_neon, dot_rows_neon};
