/* kern-float.h: what the per-ISA float kernel files share (not public): the
 * sequential parts of the fixed orders of tern-float.h, written once and
 * inlined into every ISA's file, and the per-ISA kernel tables. Include
 * only from files compiled with -ffp-contract=off -fno-fast-math. */
#ifndef TERN_KERN_FLOAT_H
#define TERN_KERN_FLOAT_H

#include <math.h>
#include <string.h>

#include "tern-float.h"
#include "tern-half.h"

/* RMSNorm's scale: index-ordered double sum of squares (each square exact). */
static inline float tern_rms_scale(const float *x, int n, float eps)
{
	double ss = 0.0;
	for (int i = 0; i < n; i++)
		ss += (double)x[i] * (double)x[i];
	const float mean = (float)(ss / (double)n);
	return 1.0f / sqrtf(mean + eps);
}

/* Softmax's middle step: x[i] = expf(x[i] - m), summed in double in index
 * order; returns the factor (float)(1/sum). */
static inline float tern_softmax_exp(float *x, int n, float m)
{
	double sum = 0.0;
	for (int i = 0; i < n; i++) {
		x[i] = expf(x[i] - m);
		sum += (double)x[i];
	}
	return (float)(1.0 / sum);
}

/* The softmax maximum's step (x[0] first, then "greater replaces"): the SIMD
 * versions keep it per lane and combine the lanes with it, which gives the
 * same value up to the sign of a zero maximum (and x - (+0) == x - (-0)
 * except for x = -0, where expf(+-0) == 1 anyway). */
static inline float tern_max_step(float m, float x)
{
	return x > m ? x : m;
}

/* Element i of a dot product row, exact. */
static inline float tern_dot_elem(const uint8_t *row, tern_dot_type t, int i)
{
	uint16_t h;
	float f;
	switch (t) {
	case TERN_DOT_F16: memcpy(&h, row + 2 * (size_t)i, 2); return tern_f16_to_f32(h);
	case TERN_DOT_BF16: memcpy(&h, row + 2 * (size_t)i, 2); return tern_bf16_to_f32(h);
	case TERN_DOT_I8: return (float)(int8_t)row[i];
	default: memcpy(&f, row + 4 * (size_t)i, 4); return f;
	}
}

/* Elements [i0, n) into the lanes (element i to lane i % 64), in order. */
static inline void tern_dot_tail(float *l, const uint8_t *row, tern_dot_type t, const float *x, int i0, int n)
{
	for (int i = i0; i < n; i++)
		l[i % TERN_DOT_LANES] = fmaf(tern_dot_elem(row, t, i), x[i], l[i % TERN_DOT_LANES]);
}

/* The fixed combining tree: lane k += lane k + w for w = 32, 16, ..., 1. */
static inline float tern_dot_reduce(float *l)
{
	for (int w = TERN_DOT_LANES / 2; w >= 1; w /= 2)
		for (int k = 0; k < w; k++)
			l[k] = l[k] + l[k + w];
	return l[0];
}

/* The one store of a dot product result (with the optional row scale). */
static inline void tern_dot_store(const tern_dot_args *a, int j, int r, float dot)
{
	a->out[(size_t)j * a->ldo + (size_t)r] = a->row_scale ? dot * a->row_scale[r] : dot;
}

static inline const uint8_t *tern_dot_row(const tern_dot_args *a, int r)
{
	return (const uint8_t *)a->w + (size_t)r * a->row_bytes;
}

extern const tern_float_kernels tern_float_ref;
extern const tern_float_kernels tern_float_avx2;
extern const tern_float_kernels tern_float_avx512;
extern const tern_float_kernels tern_float_neon;

#endif /* TERN_KERN_FLOAT_H */
