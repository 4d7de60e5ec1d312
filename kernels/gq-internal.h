/* gq-internal.h: what the group-scaled ternary kernel files (ref/gq-ref.c,
 * x86/gq-avx2.c, x86/gq-avx512.c) share with gq.c; not public. Every file
 * that includes it is compiled with -ffp-contract=off: tern_gq_reduce's
 * order and roundings are the contract of tern-gq.h. */
#ifndef TERN_GQ_INTERNAL_H
#define TERN_GQ_INTERNAL_H

#include "tern-gq.h"

/* The largest K a gq matrix may have (the largest FFN width tern_hparams
 * accepts): bounds the kernels' per-row group buffers on the stack. */
#define TERN_GQ_MAX_K 262144
#define TERN_GQ_MAX_GROUPS (TERN_GQ_MAX_K / TERN_GQ_GROUP)
/* Tokens whose group dots a kernel holds at once (stack: 4 x 4096 int32). */
#define TERN_GQ_TOKENS 4

/* y[j*ldy + i] for rows [row0, row1) and every token of a; arguments
 * validated by tern_gq_gemm_f32. */
typedef void (*tern_gq_kern_fn)(const tern_gq_matrix *w, const tern_gq_act *a, float *y, int ldy, int row0, int row1);

void tern_gq_kern_ref(const tern_gq_matrix *w, const tern_gq_act *a, float *y, int ldy, int row0, int row1);
void tern_gq_kern_avx2(const tern_gq_matrix *w, const tern_gq_act *a, float *y, int ldy, int row0, int row1);
void tern_gq_kern_avx512(const tern_gq_matrix *w, const tern_gq_act *a, float *y, int ldy, int row0, int row1);

/* The one float step after the exact group dots: sum over g in order of
 * (float)dot[g] * d[g] (each product and sum rounded on its own), then / s. */
static inline float tern_gq_reduce(const int32_t *dot, const float *d, int n_groups, float s)
{
	float acc = 0.0f;
	for (int g = 0; g < n_groups; g++) {
		const float p = (float)dot[g] * d[g];
		acc = acc + p;
	}
	return acc / s;
}

/* Codes of one block (16 bytes after its f16 scale). */
static inline const uint8_t *tern_gq_codes(const tern_gq_matrix *w, int i, int g)
{
	return w->blocks + ((size_t)i * (size_t)w->n_groups + (size_t)g) * TERN_GQ_BLOCK_BYTES + 2;
}

#endif /* TERN_GQ_INTERNAL_H */
