/* gq-ref.c: the scalar reference of the group-scaled ternary product
 * (tern-gq.h), the oracle the SIMD kernels are tested against: each weight
 * read through tern_gq_weight_at, each input at its plane-order position. */
#include "gq-internal.h"

void tern_gq_kern_ref(const tern_gq_matrix *w, const tern_gq_act *a, float *y, int ldy, int row0, int row1)
{
	const int ng = w->n_groups, k = w->k;
	int32_t dot[TERN_GQ_MAX_GROUPS];
	for (int j = 0; j < a->n; j++) {
		const int8_t *q = a->q + (size_t)j * (size_t)k;
		for (int i = row0; i < row1; i++) {
			for (int g = 0; g < ng; g++) {
				int32_t s = 0;
				for (int e = 0; e < TERN_GQ_GROUP; e++)
					s += tern_gq_weight_at(w, i, g * TERN_GQ_GROUP + e) *
					     q[g * TERN_GQ_GROUP + 16 * (e % 4) + e / 4];
				dot[g] = s;
			}
			y[(size_t)j * (size_t)ldy + (size_t)i] =
			    tern_gq_reduce(dot, w->scales + (size_t)i * (size_t)ng, ng, a->scale[j]);
		}
	}
}
