/* float-ref.c: the scalar reference of the float kernels (tern-float.h),
 * the oracle the SIMD versions must equal bit for bit, and the RoPE table.
 * Compiled with -ffp-contract=off -fno-fast-math: every operation rounds as
 * written, the dot products' fused steps are explicit fmaf calls. */
#include "kern-float.h"

static void rmsnorm_ref(const float *x, const float *w, int n, float eps, float *out)
{
	tern_rms_apply(x, w, tern_rms_scale(x, n, eps), 0, n, out);
}

static void softmax_ref(float *x, int n)
{
	float m = x[0];
	for (int i = 1; i < n; i++)
		m = tern_max_step(m, x[i]);
	tern_softmax_scale(x, tern_softmax_exp(x, n, m), 0, n);
}

static void rope_ref(float *x, int n_heads, int head_dim, const float *cs_pos)
{
	for (int h = 0; h < n_heads; h++)
		tern_rope_pairs(x + (size_t)h * (size_t)head_dim, head_dim / 2, cs_pos, 0);
}

static void dot_rows_ref(const tern_dot_args *a, int r0, int r1)
{
	for (int r = r0; r < r1; r++) {
		const uint8_t *row = tern_dot_row(a, r);
		for (int j = 0; j < a->nx; j++) {
			float l[TERN_DOT_LANES] = {0};
			tern_dot_store(a, j, r, tern_dot_finish(l, row, a->type, a->x + (size_t)j * a->ldx, 0, a->n));
		}
	}
}

const tern_float_kernels tern_float_ref = {TERN_ISA_REF, rmsnorm_ref, softmax_ref, rope_ref, dot_rows_ref};

void tern_rope_table(float theta, int head_dim, int n_pos, float *cs)
{
	const int half = head_dim / 2;
	for (int p = 0; p < n_pos; p++) {
		for (int j = 0; j < half; j++) {
			const double inv_freq = pow((double)theta, -2.0 * (double)j / (double)head_dim);
			const double ang = (double)p * inv_freq;
			cs[((size_t)p * (size_t)half + (size_t)j) * 2 + 0] = (float)cos(ang);
			cs[((size_t)p * (size_t)half + (size_t)j) * 2 + 1] = (float)sin(ang);
		}
	}
}
