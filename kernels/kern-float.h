/* kern-float.h: what the per-ISA float kernel files share (not public): the
 * sequential parts of the fixed orders of tern-float.h, written once and
 * inlined into every ISA's file, and the per-ISA kernel tables. Include
 * only from files compiled with -ffp-contract=off -fno-fast-math. */
#ifndef TERN_KERN_FLOAT_H
#define TERN_KERN_FLOAT_H

#include <math.h>
#include <string.h>

#include "tern-float.h"

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

/* RMSNorm's output for elements [i0, n) (the SIMD versions' tails). */
static inline void tern_rms_apply(const float *x, const float *w, float s, int i0, int n, float *out)
{
	if (w) {
		for (int i = i0; i < n; i++)
			out[i] = (x[i] * s) * w[i];
	} else {
		for (int i = i0; i < n; i++)
			out[i] = x[i] * s;
	}
}

/* SwiGLU for elements [i0, n) (tern_float_kernels.swiglu's order). */
static inline void tern_swiglu_elems(const float *g, const float *u, int i0, int n, float *out)
{
	for (int i = i0; i < n; i++) {
		const float x = g[i];
		out[i] = (x / (1.0f + expf(-x))) * u[i];
	}
}

/* SwiGLU of an ISA: the one scalar body compiled into the ISA's file (a
 * vector exp would be a second exp with other roundings). */
#define TERN_FLOAT_SWIGLU(isa)                                                            \
	static void swiglu_##isa(const float *g, const float *u, int n, float *out)      \
	{                                                                                \
		tern_swiglu_elems(g, u, 0, n, out);                                      \
	}

/* Softmax's last step for elements [i0, n). */
static inline void tern_softmax_scale(float *x, float inv, int i0, int n)
{
	for (int i = i0; i < n; i++)
		x[i] *= inv;
}

/* RoPE of pairs [j0, half) of one head xh. */
static inline void tern_rope_pairs(float *xh, int half, const float *cs_pos, int j0)
{
	for (int j = j0; j < half; j++) {
		const float c = cs_pos[2 * j], s = cs_pos[2 * j + 1];
		const float x0 = xh[j], x1 = xh[j + half];
		xh[j] = x0 * c - x1 * s;
		xh[j + half] = x0 * s + x1 * c;
	}
}

/* The softmax maximum's step (x[0] first, then "greater replaces"): the SIMD
 * versions keep it per lane and combine the lanes with it, which gives the
 * same value up to the sign of a zero maximum (and x - (+0) == x - (-0)
 * except for x = -0, where expf(+-0) == 1 anyway). */
static inline float tern_max_step(float m, float x)
{
	return x > m ? x : m;
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

/* A dot product from the 64 lane sums of elements [0, i0): the tail, then
 * the combining tree. */
static inline float tern_dot_finish(float *l, const uint8_t *row, tern_dot_type t, const float *x, int i0, int n)
{
	tern_dot_tail(l, row, t, x, i0, n);
	return tern_dot_reduce(l);
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

/* RMSNorm and softmax of a SIMD ISA, written once: defines rmsnorm_<isa> and
 * softmax_<isa> for vectors of type V holding W floats, with the ISA's load
 * LD(p), store ST(p, v), multiply MUL(a, b), broadcast SET1(x) and MAX(v, m),
 * which must be "v > m ? v : m" per lane (NaN or equal: m), the step of
 * tern_max_step. The vector loops round each element once as the reference
 * does; the sequential parts are the helpers above. */
#define TERN_FLOAT_ROWWISE(isa, V, W, LD, ST, MUL, SET1, MAX)                              \
	static void rmsnorm_##isa(const float *x, const float *w, int n, float eps, float *out) \
	{                                                                                   \
		const float s = tern_rms_scale(x, n, eps);                                  \
		const V vs = SET1(s);                                                       \
		int i = 0;                                                                  \
		if (w) {                                                                    \
			for (; i + (W) <= n; i += (W))                                      \
				ST(out + i, MUL(MUL(LD(x + i), vs), LD(w + i)));            \
		} else {                                                                    \
			for (; i + (W) <= n; i += (W))                                      \
				ST(out + i, MUL(LD(x + i), vs));                            \
		}                                                                           \
		tern_rms_apply(x, w, s, i, n, out);                                         \
	}                                                                                   \
	static void softmax_##isa(float *x, int n)                                          \
	{                                                                                   \
		V vm = SET1(x[0]);                                                          \
		int i = 1;                                                                  \
		for (; i + (W) <= n; i += (W))                                              \
			vm = MAX(LD(x + i), vm);                                            \
		float l[W];                                                                 \
		ST(l, vm);                                                                  \
		float m = l[0];                                                             \
		for (int k = 1; k < (W); k++)                                               \
			m = tern_max_step(m, l[k]);                                         \
		for (; i < n; i++)                                                          \
			m = tern_max_step(m, x[i]);                                         \
		const float inv = tern_softmax_exp(x, n, m);                                \
		const V vi = SET1(inv);                                                     \
		for (i = 0; i + (W) <= n; i += (W))                                         \
			ST(x + i, MUL(LD(x + i), vi));                                      \
		tern_softmax_scale(x, inv, i, n);                                           \
	}

/* RoPE of a SIMD ISA: defines rope_<isa>, which rotates W pairs at a time
 * with STEP(xh, half, cs_pos, j) (pairs j .. j+W-1 of head xh, rounding as
 * tern_rope_pairs) and the rest of each head with tern_rope_pairs. */
#define TERN_FLOAT_ROPE(isa, W, STEP)                                                        \
	static void rope_##isa(float *x, int n_heads, int head_dim, const float *cs_pos)      \
	{                                                                                     \
		const int half = head_dim / 2;                                                \
		for (int h = 0; h < n_heads; h++) {                                           \
			float *xh = x + (size_t)h * (size_t)head_dim;                         \
			int j = 0;                                                            \
			for (; j + (W) <= half; j += (W))                                     \
				STEP(xh, half, cs_pos, j);                                    \
			tern_rope_pairs(xh, half, cs_pos, j);                                 \
		}                                                                             \
	}

/* dot_rows of an ISA whose one-row-one-vector kernel is dot1(row, t, x, n)
 * (inlined with t constant): rows in order, each against every vector. */
#define TERN_DOT_ROWS_EACH(dot1, a, t, r0, r1)                                                         \
	do {                                                                                           \
		for (int r_ = (r0); r_ < (r1); r_++) {                                                 \
			const uint8_t *row_ = tern_dot_row((a), r_);                                   \
			for (int j_ = 0; j_ < (a)->nx; j_++)                                           \
				tern_dot_store((a), j_, r_, dot1(row_, (t), (a)->x + (size_t)j_ * (a)->ldx, (a)->n)); \
		}                                                                                      \
	} while (0)

/* Calls rows_t(a, T, r0, r1) with the row type T as a constant, so each
 * type gets its own specialised loop. */
#define TERN_DOT_BY_TYPE(rows_t, a, r0, r1)                                  \
	do {                                                                 \
		switch ((a)->type) {                                         \
		case TERN_DOT_F16: rows_t((a), TERN_DOT_F16, (r0), (r1)); break;   \
		case TERN_DOT_BF16: rows_t((a), TERN_DOT_BF16, (r0), (r1)); break; \
		default: rows_t((a), TERN_DOT_F32, (r0), (r1)); break;             \
		}                                                            \
	} while (0)

/* ---- quantized head (tern_qdot_args) ---- */

/* Group g of a->w. */
static inline const uint8_t *tern_qh_group(const tern_qdot_args *a, int g)
{
	return (const uint8_t *)a->w + (size_t)g * tern_qh_group_bytes(a->type, a->n);
}

/* Stores lanes [k0, k0 + w) of group g for activation row j (l[k] = row
 * g * 16 + k0 + k), only the rows that exist. */
static inline void tern_qh_store(const tern_qdot_args *a, int j, int g, int k0, const float *l, int w)
{
	const int r0 = g * TERN_QH_GROUP + k0;
	float *o = a->out + (size_t)j * a->ldo + (size_t)r0;
	for (int k = 0; k < w && r0 + k < a->rows; k++)
		o[k] = l[k];
}

/* Whole groups, with no padding row: stored straight from the vector. */
static inline int tern_qh_full(const tern_qdot_args *a, int g)
{
	return (g + 1) * TERN_QH_GROUP <= a->rows;
}

extern const tern_float_kernels tern_float_ref;
extern const tern_float_kernels tern_float_avx2;
extern const tern_float_kernels tern_float_avx512;
extern const tern_float_kernels tern_float_neon;

#endif /* TERN_KERN_FLOAT_H */
