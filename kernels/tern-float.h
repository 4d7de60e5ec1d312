/* tern-float.h: the float kernels of the model around the ternary products:
 * RMSNorm, softmax, RoPE (NEOX), SwiGLU's silu(g) * u and the dense dot
 * products of the LM head,
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

/* ---- quantized LM head: integer dot products ----------------------------------
 *
 * Weight rows quantized in blocks of TERN_QH_BLOCK = 32 elements, each block
 * with one f16 scale dw; activation rows (the normed hidden states) in the
 * same blocks as int8 with one f32 scale dx (tern_qx_quantize). Formats:
 *   Q8: w ~= dw * q, q in [-127, 127]; dw = f16(absmax / 127)
 *   Q4: w ~= dw * q, q in [-8, 7] (symmetric, no offset); dw = f16(m / -8)
 *       with m the block's element of largest magnitude (the first on ties),
 *       so m itself maps to -8 exactly and the range is used in full
 * and q = clamp(rint(w / dw)) (round half to even; dw = 0 gives q = 0). A
 * partial last block (n % 32) is zero-padded.
 *
 * Layout (one buffer, tern_qh_bytes): rows in groups of TERN_QH_GROUP = 16
 * (the last group padded with zero rows); a group is its nb = ceil(n/32)
 * quant tiles in block order, then its nb scale tiles. Quant tile b
 * (tern_qh_quant_bytes: 512 for Q8, 256 for Q4) holds the 16 rows' block b:
 *   Q8: byte (c * 16 + k) * 4 + t, c < 8, t < 4   = q of row k, element 4c + t
 *   Q4: byte (c * 16 + k) * 4 + t, c < 4, t < 4:  low nibble  = q + 8 of row
 *       k, element 4c + t; high nibble = q + 8 of row k, element 16 + 4c + t
 * scale tile b is 16 f16 dw, row k at byte 2 * k. (Scales apart keep every
 * quant tile on 64-byte boundaries when the group is: no split loads.)
 * Four consecutive elements of a row sit in one 32-bit lane next to the
 * other rows' (row k = lane k): one vpdpbusd / sdot against four broadcast
 * activation bytes accumulates 16 (AVX-512), 8 (AVX2) or 4 (NEON) rows'
 * block sums with no horizontal reduction, and every ISA reads the same
 * bytes.
 *
 * The fixed order: for row r and activation row j,
 *   isum_b = sum over i < 32 of q_w[r][32b + i] * q_x[j][32b + i]  (exact int32, any order)
 *   acc = +0.0f;
 *   for b = 0, 1, ..., nb-1:  acc = acc + (float)isum_b * (dw[r][b] * dx[j][b]);
 *   out[j * ldo + r] = acc
 * each product and sum rounded to float on its own (no FMA). (float)isum_b
 * is exact (|isum_b| <= 32 * 127 * 127 < 2^24). The order depends on n only:
 * the same logits bit for bit on every ISA, for any batch size and any split
 * of the groups over threads. */
typedef enum {
	TERN_QH_Q8 = 0,
	TERN_QH_Q4 = 1,
	TERN_QH_COUNT
} tern_qh_type;

#define TERN_QH_BLOCK 32
#define TERN_QH_GROUP 16

/* "q8" / "q4"; tern_qh_parse returns -1 for anything else. */
const char *tern_qh_name(tern_qh_type t);
int tern_qh_parse(const char *s);

static inline int tern_qh_blocks(int n)
{
	return (n + TERN_QH_BLOCK - 1) / TERN_QH_BLOCK;
}

/* Bytes of one quant tile: 16 rows' quants of one block. */
static inline size_t tern_qh_quant_bytes(tern_qh_type t)
{
	return t == TERN_QH_Q4 ? 16 * 16 : 16 * 32;
}

static inline size_t tern_qh_group_bytes(tern_qh_type t, int n)
{
	return (tern_qh_quant_bytes(t) + 2 * TERN_QH_GROUP) * (size_t)tern_qh_blocks(n);
}

/* Quant tile and scale tile b of the group at g (rows of n elements). */
static inline const uint8_t *tern_qh_quants(tern_qh_type t, const void *g, int b)
{
	return (const uint8_t *)g + (size_t)b * tern_qh_quant_bytes(t);
}

static inline const uint8_t *tern_qh_scales(tern_qh_type t, const void *g, int n, int b)
{
	return (const uint8_t *)g + (size_t)tern_qh_blocks(n) * tern_qh_quant_bytes(t) + (size_t)b * 2 * TERN_QH_GROUP;
}

/* Bytes of a whole quantized matrix of rows x n. */
static inline size_t tern_qh_bytes(tern_qh_type t, int64_t rows, int n)
{
	return tern_qh_group_bytes(t, n) * (size_t)((rows + TERN_QH_GROUP - 1) / TERN_QH_GROUP);
}

/* Quantizes nr <= 16 rows of n floats (row k at w + k * ldw) into one group
 * at out (tern_qh_group_bytes); rows nr..15 become zero rows. */
void tern_qh_pack_group(tern_qh_type t, const float *w, size_t ldw, int nr, int n, void *out);

/* Groups [g0, g1) of a dense matrix (rows x n elements of type wt, row r at
 * w + r * row_bytes) quantized into out, the whole packed matrix (group g at
 * out + g * tern_qh_group_bytes(t, n)); scratch holds 16 * n floats. The one
 * packing loop of the LM head at load and of a plan's stored head. */
void tern_qh_pack_rows(tern_qh_type t, const void *w, tern_dot_type wt, size_t row_bytes, int64_t rows, int n, int g0,
		       int g1, float *scratch, void *out);

/* Row k of a group back as its quantized values q (nb * 32 int8, the padding
 * zero) and block scales dw (nb floats, exact from f16): the inverse of the
 * layout, for tests and the embedding lookup. */
void tern_qh_unpack_row(tern_qh_type t, const void *group, int k, int n, int8_t *q, float *dw);

/* One activation row x (n floats) as int8 blocks: per block dx = absmax / 127
 * (0 for an all-zero block), q = clamp(rint(x * (127 / absmax)), +-127) (round
 * half to even), sum = the block's sum of q. q (nb * 32; padding zero), dx and
 * sum (nb each). Scalar on every ISA (cheap: once per row, not per weight). */
void tern_qx_quantize(const float *x, int n, int8_t *q, float *dx, int32_t *sum);

/* One batch of quantized dot products: the rows of groups [g0, g1) of w
 * against nx quantized activation rows, in the order above. */
typedef struct tern_qdot_args {
	tern_qh_type type;
	const void *w;     /* groups of tern_qh_group_bytes(type, n) bytes, any alignment */
	int n;             /* elements per row, >= 1 */
	int rows;          /* rows of w; rows of the padded last group are never stored */
	const int8_t *xq;  /* (nx, nb * 32) activation quants */
	const float *xd;   /* (nx, nb) activation scales */
	const int32_t *xs; /* (nx, nb) block sums of xq */
	int nx;            /* activation rows, >= 0 */
	float *out;        /* out[j * ldo + r] */
	size_t ldo;
} tern_qdot_args;

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
	/* Groups [g0, g1) of a quantized matrix (see tern_qdot_args): each tile
	 * is loaded once and applied to all a->nx activation rows. */
	void (*qdot_groups)(const tern_qdot_args *a, int g0, int g1);
	/* SwiGLU's gated product, element by element in index order:
	 *   out[i] = (g[i] / (1.0f + expf(-g[i]))) * u[i]
	 * each operation rounded to float on its own; expf is libm's scalar expf
	 * on every ISA (one body, kern-float.h), so every ISA gives the same
	 * bits. out may equal g or u. */
	void (*swiglu)(const float *g, const float *u, int n, float *out);
	/* BitNet b1.58's squared-ReLU gated product, element by element:
	 *   r = g[i] > 0 ? g[i] : 0;  out[i] = (r * r) * u[i]
	 * (NaN and -0 give r = 0), each product rounded on its own; the same
	 * bits on every ISA. out may equal g or u. */
	void (*relu2)(const float *g, const float *u, int n, float *out);
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
