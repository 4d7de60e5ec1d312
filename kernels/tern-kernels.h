/* tern-kernels.h: ternary x int8 matrix kernels, the public contract.
 *
 * Weights are exactly ternary (int8 in {-1, 0, +1}) with a float scale per
 * quantization group of rows; activations are quantized per row (token) to
 * int8 with BitNet b1.58's absmax rule. Every packing (I2_S, TL1, TL2) and
 * every ISA (scalar reference, AVX2, AVX-512, NEON) computes the same exact
 * int32 dot products  dot[j][i] = sum_k W[i][k] * q[j][k]  bit for bit; the
 * float output is then  y[j][i] = dot[j][i] / act_scale[j] * w_scale[group(i)]
 * with that exact expression order, so floats match across ISAs too.
 *
 * Depends on libc only. Nothing here knows about models, files or MPI. */
#ifndef TERN_KERNELS_H
#define TERN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
	TERN_PACK_I2S = 0, /* 2 bits/weight, bitnet.cpp's on-disk layout (blocks of 128) */
	TERN_PACK_TL1 = 1, /* 2 weights -> 4-bit LUT index */
	TERN_PACK_TL2 = 2, /* 3 weights -> 1 sign bit + 4-bit LUT index (~1.67 bits/weight) */
	TERN_PACK_COUNT
} tern_packing;

typedef enum {
	TERN_ISA_AUTO = -1, /* best available, chosen once from cpuid */
	TERN_ISA_REF = 0,   /* scalar reference: the oracle */
	TERN_ISA_AVX2 = 1,   /* with FMA and F16C (the float kernels use them) */
	TERN_ISA_AVX512 = 2, /* BW (+VNNI/VBMI where present) */
	TERN_ISA_NEON = 3,
	TERN_ISA_COUNT
} tern_isa;

const char *tern_packing_name(tern_packing p);   /* "i2_s", "tl1", "tl2" */
const char *tern_isa_name(tern_isa isa);         /* "ref", "avx2", "avx512", "neon" */
/* Parses the names above (and "auto"); returns -2 if unknown. */
int tern_packing_parse(const char *s);
int tern_isa_parse(const char *s);

/* 1 if this build and this CPU can run isa. */
int tern_isa_available(tern_isa isa);
/* The ISA TERN_ISA_AUTO resolves to: TERN_KERNEL=<isa> in the environment
 * (or tern_kernel_force_isa) forces one for tests and benchmarks. */
tern_isa tern_isa_default(void);
/* Forces the ISA used for TERN_ISA_AUTO; TERN_EUNSUP if not available. */
int tern_kernel_force_isa(tern_isa isa);

/* ---- activations ------------------------------------------------------- */

/* Quantizes one row of k floats, BitNet b1.58 style:
 *   amax = max(max_i |x_i|, 1e-5) (computed exactly: max is order-free);
 *   scale = 127 / amax (float);  q_i = clamp(round_half_even(x_i * scale), -128, 127);
 * and q[k..k_pad) = 0. Returns the scale; *sum (if non-NULL) = sum of q. */
float tern_quant_row(const float *x, int k, int k_pad, int8_t *q, int32_t *sum);

/* A batch of quantized activation rows prepared for one packing: the int8
 * rows plus whatever per-row tables (LUTs) that packing's kernels need. One
 * tern_act can be reused for every matrix of the same K and packing (e.g. the
 * Q, K and V projections share their input). */
typedef struct tern_act {
	tern_packing packing;
	tern_isa isa;      /* the ISA asked for (resolved, never AUTO); the tables are the same for every
	                    * ISA (kernels/LAYOUTS.md), so any ISA may use them */
	int n;             /* rows (tokens) */
	int k;             /* logical width */
	int k_pad;         /* padded width the packing needs (tern_k_pad) */
	int cap_n;         /* allocated rows */
	int8_t *q;         /* (cap_n, k_pad) int8, zero-padded */
	float *scale;      /* (cap_n) activation scale per row (127/amax) */
	int32_t *sum;      /* (cap_n) sum of q per row (I2_S) */
	void *lut;         /* packing/ISA-specific tables, (cap_n, lut_row_bytes) */
	size_t lut_row_bytes;
} tern_act;

/* Padded K a packing needs (a multiple of its block along K). */
int tern_k_pad(tern_packing p, int k);

/* Quantizes n rows of x (row stride ldx floats) and builds the tables for
 * packing p and isa (AUTO resolves). Grows a's buffers as needed; a must be
 * zero-initialised before first use and released with tern_act_free. */
int tern_act_prepare(tern_act *a, tern_packing p, tern_isa isa, const float *x, int n, int k, int ldx,
		     tern_err *err);
/* The same from rows that are already int8 (q: n rows of k, stride ldq) with
 * their scales, e.g. activations quantized elsewhere or extreme test rows
 * (-128 is reachable only this way). */
int tern_act_prepare_q(tern_act *a, tern_packing p, tern_isa isa, const int8_t *q, const float *scale, int n,
		       int k, int ldq, tern_err *err);
void tern_act_free(tern_act *a);

/* ---- packed weight matrices -------------------------------------------- */

typedef struct tern_matrix {
	tern_packing packing;
	int m;              /* output rows */
	int k;              /* inputs (columns) */
	int k_pad;          /* K padded to the packing's block */
	int m_pad;          /* M padded to the packing's row tile */
	int group_rows;     /* rows per weight-scale group (>= 1; m for one scale per tensor) */
	int n_groups;       /* ceil(m / group_rows) */
	float *scales;      /* (n_groups) weight scale per group: W ~= ternary * scale */
	uint8_t *data;      /* packed weights, tern_matrix_data_bytes bytes, 64-byte aligned */
	size_t data_bytes;
	int owns_data;      /* data/scales freed by tern_matrix_free */
	int owns_scales;    /* scales alone freed by tern_matrix_free (tern_matrix_wrap_i2s) */
} tern_matrix;

/* Bytes of packed data for an m x k matrix (excluding scales). */
size_t tern_matrix_data_bytes(tern_packing p, int m, int k);
/* Row tile: row ranges given to the GEMM must start at multiples of it. */
int tern_row_tile(tern_packing p);

/* Packs w (m x k, row-major, values in {-1,0,1}; anything else is
 * TERN_EINVAL) with scales (n_groups = ceil(m/group_rows) floats). */
int tern_matrix_pack(tern_matrix *out, tern_packing p, const int8_t *w, int m, int k, const float *scales,
		     int group_rows, tern_err *err);
/* Unpacks to w (m x k int8): the exact inverse of pack. */
int tern_matrix_unpack(const tern_matrix *mat, int8_t *w, tern_err *err);
/* Views an I2_S buffer in bitnet.cpp's layout (k % 128 == 0; data of
 * m*k/4 bytes, not copied, must outlive the matrix) with one scale. */
int tern_matrix_wrap_i2s(tern_matrix *out, const uint8_t *data, int m, int k, float scale, tern_err *err);
void tern_matrix_free(tern_matrix *mat);

/* ---- products -----------------------------------------------------------
 * Rows [row0, row1) of the output (row0 a multiple of tern_row_tile, row1
 * <= m), for all a->n activation rows. n == 1 is GEMV (decode); the kernels
 * pick their GEMV or GEMM path by n. isa AUTO resolves; a matrix and an act
 * of different packing or K is TERN_EINVAL (the act tables are ISA-independent);
 * an ISA this build or CPU cannot run is TERN_EUNSUP. */

/* dot: (n, ldd) int32, dot[j*ldd + i] for i in [row0, row1). */
int tern_gemm_i32(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1,
		  tern_isa isa, tern_err *err);
/* y: (n, ldy) float, y[j*ldy + i] = dot / a->scale[j] * w->scales[i / group_rows]. */
int tern_gemm_f32(const tern_matrix *w, const tern_act *a, float *y, int ldy, int row0, int row1, tern_isa isa,
		  tern_err *err);

#ifdef __cplusplus
}
#endif
#endif /* TERN_KERNELS_H */
