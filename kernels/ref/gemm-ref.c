/* gemm-ref.c: the scalar reference kernels, the oracle every SIMD kernel is
 * tested against. They read packed weights only through tern_weight_at (one
 * obviously-correct decoder per layout) and ignore the LUTs, so a bug in a
 * table or a SIMD decode cannot hide behind the same bug here. */
#include "kern-internal.h"

static void ref_kernel(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1)
{
	enum { CHUNK = 512 };
	int8_t row[CHUNK];
	for (int i = row0; i < row1; i++) {
		for (int j = 0; j < a->n; j++)
			dot[(size_t)j * (size_t)ldd + (size_t)(i - row0)] = 0;
		for (int k0 = 0; k0 < w->k; k0 += CHUNK) {
			const int kn = w->k - k0 < CHUNK ? w->k - k0 : CHUNK;
			for (int k = 0; k < kn; k++)
				row[k] = (int8_t)tern_weight_at(w, i, k0 + k);
			for (int j = 0; j < a->n; j++) {
				const int8_t *q = a->q + (size_t)j * (size_t)a->k_pad + k0;
				int32_t s = 0;
				for (int k = 0; k < kn; k++)
					s += row[k] * q[k];
				dot[(size_t)j * (size_t)ldd + (size_t)(i - row0)] += s;
			}
		}
	}
}

void tern_kern_i2s_ref(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1)
{
	ref_kernel(w, a, dot, ldd, row0, row1);
}

void tern_kern_tl1_ref(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1)
{
	ref_kernel(w, a, dot, ldd, row0, row1);
}

void tern_kern_tl2_ref(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1)
{
	ref_kernel(w, a, dot, ldd, row0, row1);
}
