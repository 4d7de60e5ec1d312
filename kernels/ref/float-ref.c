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

/* The quantized head straight from the documented order: each row's block
 * unpacked (tern_qh_unpack_row's layout), its integer sum, then the float
 * steps one at a time. */
static void qdot_groups_ref(const tern_qdot_args *a, int g0, int g1)
{
	const int nb = tern_qh_blocks(a->n);
	int8_t q[TERN_QH_BLOCK];
	for (int g = g0; g < g1; g++) {
		for (int k = 0; k < TERN_QH_GROUP && g * TERN_QH_GROUP + k < a->rows; k++) {
			float acc[64];
			for (int j0 = 0; j0 < a->nx; j0 += 64) {
				const int nj = a->nx - j0 < 64 ? a->nx - j0 : 64;
				for (int j = 0; j < nj; j++)
					acc[j] = 0.0f;
				for (int b = 0; b < nb; b++) {
					const uint8_t *tile = tern_qh_quants(a->type, tern_qh_group(a, g), b);
					for (int e = 0; e < TERN_QH_BLOCK; e++) {
						const uint8_t c = tile[((size_t)(e % 16 / 4 + (a->type == TERN_QH_Q8) * (e / 16) * 4) * 16 + (size_t)k) * 4 + (size_t)(e % 4)];
						q[e] = a->type == TERN_QH_Q8 ? (int8_t)c : (int8_t)((e >= 16 ? c >> 4 : c & 0x0F) - 8);
					}
					uint16_t h;
					memcpy(&h, tern_qh_scales(a->type, tern_qh_group(a, g), a->n, b) + 2 * k, 2);
					const float dw = tern_f16_to_f32(h);
					for (int j = 0; j < nj; j++) {
						const size_t xo = (size_t)(j0 + j) * (size_t)nb;
						const int8_t *xq = a->xq + (xo + (size_t)b) * TERN_QH_BLOCK;
						int32_t isum = 0;
						for (int e = 0; e < TERN_QH_BLOCK; e++)
							isum += (int32_t)q[e] * (int32_t)xq[e];
						acc[j] = acc[j] + (float)isum * (dw * a->xd[xo + (size_t)b]);
					}
				}
				for (int j = 0; j < nj; j++)
					a->out[(size_t)(j0 + j) * a->ldo + (size_t)g * TERN_QH_GROUP + (size_t)k] = acc[j];
			}
		}
	}
}

TERN_FLOAT_SWIGLU(ref)

const tern_float_kernels tern_float_ref = {TERN_ISA_REF, rmsnorm_ref, softmax_ref, rope_ref, dot_rows_ref,
					   qdot_groups_ref, swiglu_ref};

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
