/* tern-gq.h: group-scaled ternary matrices ("gq"), the public contract.
 *
 * The weight format of PrismML's Ternary-Bonsai GGUFs, ggml's Q2_0 (type 42):
 * each row of K weights is K/64 blocks of 18 bytes, an f16 scale d then 16
 * bytes of 2-bit codes, weight e of the block in bits 2*(e%4) of byte e/4
 * (least significant first), value (code - 1) * d. Codes 0, 1, 2 are the
 * ternary -1, 0, +1; code 3 (+2) is legal in the format and every kernel here
 * takes it. Unlike tern-kernels.h (one scale per group of rows), the scale
 * changes every 64 weights along a row, so the integer dot product cannot run
 * over the whole row: it is exact per group, then scaled per group.
 *
 * Activations are quantized per row (token) with tern_quant_row (BitNet
 * b1.58's absmax int8, the rule of every ternary family tern runs; ggml's
 * Q2_0 path uses q8_0 blocks of 32 instead, so tern and llama.cpp differ
 * slightly there). For token j and row i, with q the int8 row and s its scale:
 *   dot[g] = sum over the 64 weights e of group g of (code - 1) * q   (exact int32)
 *   acc = 0.0f;  for g = 0 .. K/64 - 1:  acc = acc + (float)dot[g] * d[i][g]
 *   y[j][i] = acc / s[j]
 * each operation a single rounding in that order (no FMA, no re-association),
 * so every ISA (scalar reference, AVX2, AVX-512) gives the same bits.
 *
 * Depends on libc only (and tern-kernels.h for tern_isa). */
#ifndef TERN_GQ_H
#define TERN_GQ_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"
#include "tern-kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TERN_GQ_GROUP 64       /* weights per scale along a row (ggml QK2_0) */
#define TERN_GQ_BLOCK_BYTES 18 /* f16 scale + 16 code bytes (sizeof block_q2_0) */

typedef struct tern_gq_matrix {
	int m;                 /* output rows */
	int k;                 /* inputs, a multiple of TERN_GQ_GROUP */
	int n_groups;          /* k / TERN_GQ_GROUP blocks per row */
	const uint8_t *blocks; /* (m, n_groups) Q2_0 blocks, TERN_GQ_BLOCK_BYTES each, as stored */
	float *scales;         /* (m, n_groups) the blocks' d widened to float (owned) */
	uint8_t *owned;        /* blocks when tern_gq_pack made them, else NULL */
} tern_gq_matrix;

/* Bytes of Q2_0 data for m rows of k weights (0 if k is not a multiple of 64). */
size_t tern_gq_data_bytes(int m, int k);

/* Views `bytes` bytes of Q2_0 blocks (not copied; they must outlive the
 * matrix) as an m x k matrix. TERN_EINVAL if k is not a positive multiple of
 * 64, bytes is not tern_gq_data_bytes(m, k), or a scale is not finite
 * (checked here: the data came from a file). */
int tern_gq_wrap_q2_0(tern_gq_matrix *out, const uint8_t *blocks, size_t bytes, int m, int k, tern_err *err);
/* Packs w (m x k int8 in {-1, 0, 1, 2}) with scales (m x k/64 floats,
 * narrowed to f16 as the format stores them) into owned Q2_0 blocks. */
int tern_gq_pack(tern_gq_matrix *out, const int8_t *w, const float *scales, int m, int k, tern_err *err);
/* Weight (code - 1) of row i, column c; the reference kernel reads the
 * layout only through this. */
int tern_gq_weight_at(const tern_gq_matrix *w, int i, int c);
void tern_gq_free(tern_gq_matrix *w);

/* Quantized activation rows in the order the kernels read them: within each
 * group of 64, the weight order of the codes' bit planes, position
 * 16 * (e % 4) + e / 4 holds input e (so one byte of codes shifted by 0, 2,
 * 4, 6 meets 16 consecutive inputs of each plane). */
typedef struct tern_gq_act {
	int n;         /* rows (tokens) */
	int k;         /* width, a multiple of TERN_GQ_GROUP */
	int cap_n;     /* allocated rows */
	int cap_k;     /* allocated width */
	int8_t *q;     /* (cap_n, k) int8 in plane order */
	float *scale;  /* (cap_n) tern_quant_row's 127/amax per row */
	int32_t *gsum; /* (cap_n, k/64) sum of q per group (the AVX kernels' code offset) */
	int8_t *row;   /* (cap_k) scratch: one row in input order */
} tern_gq_act;

/* Quantizes n rows of x (stride ldx floats) with tern_quant_row. a must be
 * zeroed before first use; grows as needed; release with tern_gq_act_free. */
int tern_gq_act_prepare(tern_gq_act *a, const float *x, int n, int k, int ldx, tern_err *err);
void tern_gq_act_free(tern_gq_act *a);

/* y: (a->n, ldy) floats, y[j*ldy + i] for rows i in [row0, row1), as the
 * header comment defines; any row0 <= row1 <= m. isa AUTO resolves as
 * tern_isa_default; TERN_EUNSUP if this build or CPU cannot run it (NEON
 * runs the scalar reference: no NEON gq kernel yet). */
int tern_gq_gemm_f32(const tern_gq_matrix *w, const tern_gq_act *a, float *y, int ldy, int row0, int row1, tern_isa isa,
		     tern_err *err);

#ifdef __cplusplus
}
#endif
#endif /* TERN_GQ_H */
