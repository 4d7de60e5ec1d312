/* tern-float.h: the float kernels of the model around the ternary products:
 * RMSNorm, softmax, RoPE (NEOX) and the dense dot products of the LM head,
 * each with a scalar reference (kernels/ref/float-ref.c, the oracle) and
 * AVX2 / AVX-512 / NEON versions, chosen like the ternary kernels (tern_isa,
 * TERN_ISA_AUTO -> tern_isa_default(), which TERN_KERNEL can force).
 *
 * Every kernel has one fixed evaluation order, written out below, that
 * depends only on its own arguments (the row's width, never a batch size,
 * a thread count or the ISA): every ISA computes the same floats bit for bit
 * for non-NaN inputs (NaN in gives NaN out; its payload is unspecified). The
 * layer engine's batch invariance and "cluster output == tern-run" rest on
 * this. The SIMD versions vectorize only what is exact in any order (element-
 * wise products, maxima) and the dot products' lanes; index-ordered double
 * sums stay sequential. The files are compiled with -ffp-contract=off and
 * -fno-fast-math: the only fused multiply-adds are the dot products' explicit
 * ones.
 *
 * Depends on libc only. */
#ifndef TERN_FLOAT_H
#define TERN_FLOAT_H

#include <stddef.h>
#include <stdint.h>

#include <string.h>

#include "tern-half.h"
#include "tern-kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Element type of the rows a dense dot product reads. */
typedef enum {
	TERN_DOT_F32 = 0,
	TERN_DOT_F16 = 1,  /* IEEE binary16, converted exactly (tern-half.h) */
	TERN_DOT_BF16 = 2, /* bfloat16, converted exactly */
	TERN_DOT_I8 = 3,   /* int8, converted exactly (the int8 LM head) */
	TERN_DOT_COUNT
} tern_dot_type;

/* Element i of a row of type t, converted exactly to float. */
static inline float tern_dot_elem(const void *row, tern_dot_type t, int i)
{
	const uint8_t *b = (const uint8_t *)row;
	uint16_t h;
	float f;
	switch (t) {
	case TERN_DOT_F16: memcpy(&h, b + 2 * (size_t)i, 2); return tern_f16_to_f32(h);
	case TERN_DOT_BF16: memcpy(&h, b + 2 * (size_t)i, 2); return tern_bf16_to_f32(h);
	case TERN_DOT_I8: return (float)(int8_t)b[i];
	default: memcpy(&f, b + 4 * (size_t)i, 4); return f;
	}
}

/* Lanes of the dense dot product's fixed order (see tern_dot_args). */
#define TERN_DOT_LANES 64

/* One batch of dense dot products: rows r of a matrix against nx vectors.
 *   dot(r, j) = sum over i < n of  W[r][i] * x_j[i]  evaluated as
 *     lane[0..63] = +0.0f;
 *     for i = 0, 1, ..., n-1:  lane[i % 64] = fmaf(W[r][i], x_j[i], lane[i % 64]);
 *     for w = 32, 16, 8, 4, 2, 1:  for k < w:  lane[k] = lane[k] + lane[k + w];
 *     dot = lane[0];
 *   out[j * ldo + r] = row_scale ? dot * row_scale[r] : dot.
 * W[r][i] is element i of the row at (const uint8_t *)w + r * row_bytes (any
 * alignment), converted exactly to float. The order is the same for every
 * ISA, every nx and any split of the rows, so each output is bit-identical
 * wherever it is computed. */
typedef struct tern_dot_args {
	tern_dot_type type;
	const void *w;
	size_t row_bytes;       /* >= n * element size */
	const float *row_scale; /* NULL, or one scale per row */
	int n;                  /* elements per row, >= 1 */
	const float *x;         /* vector j at x + j * ldx (n floats) */
	size_t ldx;
	int nx;                 /* vectors, >= 0 */
	float *out;             /* out[j * ldo + r] */
	size_t ldo;
} tern_dot_args;

/* The kernels of one ISA. Arguments are not checked (they sit in the hot
 * loops): sizes >= 1 unless said otherwise, buffers as large as stated. */
typedef struct tern_float_kernels {
	tern_isa isa;
	/* out[i] = (x[i] * s) * w[i] (w NULL: x[i] * s), where
	 *   ss = sum of (double)x[i] * (double)x[i] in double, index order;
	 *   s = 1.0f / sqrtf((float)(ss / (double)n) + eps).
	 * out may equal x. */
	void (*rmsnorm)(const float *x, const float *w, int n, float eps, float *out);
	/* In place: m = max of x (x[0], then each x[i] > m replaces it);
	 * x[i] = expf(x[i] - m) and sum += (double)x[i] in double, index order;
	 * then x[i] *= (float)(1.0 / sum). */
	void (*softmax)(float *x, int n);
	/* NEOX RoPE of n_heads heads of head_dim (even) floats of x in place, with
	 * the table row of one position (cs_pos = cs + pos * head_dim, see
	 * tern_rope_table): for j < head_dim/2, c = cs_pos[2j], s = cs_pos[2j+1],
	 *   x[j] = x0 * c - x1 * s;  x[j + head_dim/2] = x0 * s + x1 * c
	 * with x0, x1 the old x[j], x[j + head_dim/2] (each product rounded). */
	void (*rope)(float *x, int n_heads, int head_dim, const float *cs_pos);
	/* Rows [r0, r1) of a (see tern_dot_args), all a->nx vectors. */
	void (*dot_rows)(const tern_dot_args *a, int r0, int r1);
} tern_float_kernels;

/* The float kernels of isa (AUTO resolves to tern_isa_default()), or NULL
 * if this build or CPU cannot run it (tern_isa_available). */
const tern_float_kernels *tern_float_kernels_get(tern_isa isa);

/* RoPE cos/sin table for positions [0, n_pos): cs[(pos * head_dim/2 + j) * 2
 * + {0, 1}] = (float)cos/sin(pos * theta^(-2j/head_dim)), the angle and the
 * trigonometry in double. Built once per engine (not ISA-specific). */
void tern_rope_table(float theta, int head_dim, int n_pos, float *cs);

#ifdef __cplusplus
}
#endif
#endif /* TERN_FLOAT_H */
