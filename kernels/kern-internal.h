/* kern-internal.h: what the per-ISA kernel files share with the dispatcher
 * (not part of the public API). The byte layouts the kernels read are in
 * LAYOUTS.md; the constants here are those layouts' parameters. */
#ifndef TERN_KERN_INTERNAL_H
#define TERN_KERN_INTERNAL_H

#include "tern-kernels.h"

#define TERN_TL_ROWS 64         /* TL1/TL2 row tile */
#define TERN_TL_BLOCK_GROUPS 64 /* groups accumulated in int16 before widening (LAYOUTS.md bounds) */
#define TERN_TL1_QUAD_BYTES 64  /* one quad (2 groups) of a 64-row tile */
#define TERN_TL2_PAIR_BYTES 80  /* one group pair of a 64-row tile: 64 index + 16 sign bytes */
#define TERN_TL2_BLOCK_PAIRS 32 /* pairs per TL2 block */
#define TERN_LUT_GROUP_BYTES 32 /* lo[16] then hi[16] per group */

/* The codes c = w + 1 of a group by its 4-bit TL index, as byte-shuffle
 * tables for the decode-once GEMMs (LAYOUTS.md; unused indices give 1): TL1
 * index 3*c0 + c1 -> c0, c1; TL2 |v| + 13 = 9*c0 + 3*c1 + c2 -> c0, c1, c2
 * (a negative group's codes are 2 - c). */
static const uint8_t tern_tl1_codes[2][16] = {{0, 0, 0, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1},
					      {0, 1, 2, 0, 1, 2, 0, 1, 2, 1, 1, 1, 1, 1, 1, 1}};
static const uint8_t tern_tl2_codes[3][16] = {{1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1},
					      {1, 1, 2, 2, 2, 0, 0, 0, 1, 1, 1, 2, 2, 2, 1, 1},
					      {1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 1, 1}};

/* TERN_TARGET_PUSH("isa,...") ... TERN_TARGET_POP(): compile the functions
 * in between for more instructions than the file's flags (called only where
 * cpuid reports them). clang ignores GCC target pragmas: it takes the same
 * attribute this way. */
#define TERN_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define TERN_TARGET_PUSH(isa) TERN_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define TERN_TARGET_POP() TERN_PRAGMA(clang attribute pop)
#else
#define TERN_TARGET_PUSH(isa) TERN_PRAGMA(GCC push_options) TERN_PRAGMA(GCC target(isa))
#define TERN_TARGET_POP() TERN_PRAGMA(GCC pop_options)
#endif

/* Integer dot products for rows [row0, row1) and all a->n tokens, written to
 * dot[j*ldd + (i - row0)] (dot points at row0's slot); arguments are validated
 * by the caller. May compute whole row tiles but stores only rows < row1. */
typedef void (*tern_kern_fn)(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);

void tern_kern_i2s_ref(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);
void tern_kern_tl1_ref(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);
void tern_kern_tl2_ref(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);

void tern_kern_i2s_avx2(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);
void tern_kern_tl1_avx2(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);
void tern_kern_tl2_avx2(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);

void tern_kern_i2s_avx512(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);
void tern_kern_tl1_avx512(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);
void tern_kern_tl2_avx512(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);
/* 1: the AVX-512 I2_S kernel uses vpdpbusd (default when the CPU has VNNI);
 * 0: maddubs + madd. Tests flip it to cover both on a VNNI machine. */
extern int tern_kern_avx512_vnni;
/* 1: the AVX-512 TL1/TL2 kernels use vpermb lookups (default with VBMI);
 * 0: vpshufb + unpack. */
extern int tern_kern_avx512_vbmi;
/* 1: the NEON kernels may use SDOT (HWCAP has it and TERN_NEON_DOTPROD is
 * not "0"; arm/gemm-neon.c decides once). */
int tern_kern_neon_dotprod(void);

/* AVX-512 VNNI GEMM (x86/gemm-vnni.c): each weight tile decoded once into
 * int8 codes, then vpdpbusd against every token of the batch. The AVX-512
 * kernels switch to it (when tern_kern_avx512_vnni) from
 * tern_kern_gemm_vnni_min[packing] tokens up; the defaults are the
 * crossovers measured on AMD EPYC (Zen 5) with thread CPU time, alternating
 * both kernels, on the four BitNet 2B4T shapes in cache (L3) and on 2560x6912
 * from DRAM (24 matrices): VNNI over the LUT kernel at I2_S 16 tokens
 * 0.97-1.02x the time in cache and 0.91x from DRAM (20: 0.88-0.93x); TL1 at 6
 * 0.72-0.75x (4: 0.91-0.97x); TL2 at 12 0.89-0.95x in cache and 1.00x from
 * DRAM (16: 0.88-0.97x / 0.96x). Below them the LUT kernels (TL1/TL2) and the
 * row-pair vpdpbusd kernel (I2_S) are as fast or faster. (An earlier set,
 * 24/12/24, came from wall-clock tern-bench runs on a loaded machine.) Tests
 * lower them to cover every batch. */
#define TERN_GEMM_VNNI_MIN_I2S 16
#define TERN_GEMM_VNNI_MIN_TL1 6
#define TERN_GEMM_VNNI_MIN_TL2 12
extern int tern_kern_gemm_vnni_min[TERN_PACK_COUNT];
void tern_kern_i2s_vnni_gemm(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);
void tern_kern_tl1_vnni_gemm(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);
void tern_kern_tl2_vnni_gemm(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);

/* AVX2 int8 GEMM (x86/gemm-avx2-i8.c): each weight tile decoded once into
 * int8 codes, then vpdpbusd ymm (AVX-VNNI) or vpmaddubsw (int16 runs, widened
 * by vpmaddwd) against every token of the batch. The AVX2 kernels switch to
 * it from tern_kern_avx2_gemm_min[packing] tokens up; tern_kern_avx2_dot
 * picks the product: set from cpuid (AVX-VNNI where present, else maddubs);
 * EVEX is the AVX-VNNI code compiled for AVX512_VNNI+VL, for tests only.
 * Crossovers against the kernels of gemm-avx2.c, measured on AMD EPYC
 * (Zen 4) on the four BitNet 2B4T shapes, in cache and from DRAM: maddubs
 * I2_S from 16 (1.01-1.04x there, 0.93-0.99x at 12), TL1 from 6 (1.15x),
 * TL2 from 16 (1.06-1.16x; 0.96x at 12 from DRAM). AVX-VNNI could not be
 * run here: its defaults are the crossovers of the same code as EVEX ymm
 * vpdpbusd on that CPU (I2_S 1.10x at 8, TL1 1.20x at 4, TL2 1.16x at 8). */
#define TERN_AVX2_DOT_MADDUBS 0
#define TERN_AVX2_DOT_VNNI 1
#define TERN_AVX2_DOT_EVEX 2
#define TERN_GEMM_AVX2_MIN_I2S 16
#define TERN_GEMM_AVX2_MIN_TL1 6
#define TERN_GEMM_AVX2_MIN_TL2 16
#define TERN_GEMM_AVXVNNI_MIN_I2S 8
#define TERN_GEMM_AVXVNNI_MIN_TL1 4
#define TERN_GEMM_AVXVNNI_MIN_TL2 8
extern int tern_kern_avx2_dot;
extern int tern_kern_avx2_gemm_min[TERN_PACK_COUNT];
void tern_kern_i2s_avx2_gemm(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);
void tern_kern_tl1_avx2_gemm(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);
void tern_kern_tl2_avx2_gemm(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);

/* NEON SDOT GEMM (arm/gemm-neon.c): the decode-once GEMM with vdotq_s32, on
 * CPUs whose HWCAP has asimddp, from tern_kern_neon_gemm_min[packing] tokens
 * up. No aarch64 hardware was measured (qemu timings mean nothing): the
 * defaults are the x86 analogue's crossovers, the same decode-once code with
 * an accumulating dot product (AVX-VNNI / EVEX ymm vpdpbusd) against
 * shuffle-LUT and widening-multiply kernels. Tests lower them to 1. */
#define TERN_GEMM_NEON_MIN_I2S TERN_GEMM_AVXVNNI_MIN_I2S
#define TERN_GEMM_NEON_MIN_TL1 TERN_GEMM_AVXVNNI_MIN_TL1
#define TERN_GEMM_NEON_MIN_TL2 TERN_GEMM_AVXVNNI_MIN_TL2
extern int tern_kern_neon_gemm_min[TERN_PACK_COUNT];

void tern_kern_i2s_neon(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);
void tern_kern_tl1_neon(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);
void tern_kern_tl2_neon(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1);

/* Weight of row i, column k of a packed matrix (0 in the padding). The
 * reference kernels and tern_matrix_unpack read the layouts only through this. */
int tern_weight_at(const tern_matrix *w, int i, int k);

/* Groups of the LUT for packing p (0 for I2_S). */
int tern_lut_groups(tern_packing p, int k_pad);

/* Activation preparation with AVX-512 (x86/act-avx512.c, CPUs with
 * AVX512_VNNI): tern_quant_row and ref/act.c's table builder, byte for byte
 * (lut: row_bytes, groups then zero padding). */
float tern_kern_quant_row_avx512(const float *x, int k, int k_pad, int8_t *q, int32_t *sum);
void tern_kern_lut_avx512(tern_packing p, const int8_t *q, int k_pad, uint8_t *lut, size_t row_bytes);

#endif /* TERN_KERN_INTERNAL_H */
