/* gq.c: group-scaled ternary matrices (tern-gq.h): the Q2_0 view and packer,
 * activation preparation in plane order, and the product's dispatch to the
 * per-ISA kernels (the ISA choice is tern_isa_default's, shared with the
 * other kernels). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gq-internal.h"
#include "tern-half.h"

size_t tern_gq_data_bytes(int m, int k)
{
	if (m < 0 || k <= 0 || k % TERN_GQ_GROUP != 0)
		return 0;
	return (size_t)m * (size_t)(k / TERN_GQ_GROUP) * TERN_GQ_BLOCK_BYTES;
}

static int check_shape(int m, int k, tern_err *err)
{
	TERN_RETURN_IF(m < 1 || k < TERN_GQ_GROUP || k % TERN_GQ_GROUP != 0 || k > TERN_GQ_MAX_K, err, TERN_EINVAL,
		       "group-scaled ternary matrix %d x %d: K must be a positive multiple of %d up to %d", m, k,
		       TERN_GQ_GROUP, TERN_GQ_MAX_K);
	return 0;
}

/* Widens every block's scale into w->scales (allocated here). */
static int load_scales(tern_gq_matrix *w, tern_err *err)
{
	const size_t nb = (size_t)w->m * (size_t)w->n_groups;
	w->scales = malloc(nb * sizeof(float));
	TERN_RETURN_IF(!w->scales, err, TERN_ENOMEM, "group-scaled ternary matrix: %zu scales", nb);
	for (size_t b = 0; b < nb; b++) {
		const uint8_t *p = w->blocks + b * TERN_GQ_BLOCK_BYTES;
		const float d = tern_f16_to_f32((uint16_t)(p[0] | (uint16_t)p[1] << 8));
		TERN_RETURN_IF(!isfinite(d), err, TERN_EINVAL, "Q2_0 block %zu (row %zu) has a non-finite scale", b,
			       b / (size_t)w->n_groups);
		w->scales[b] = d;
	}
	return 0;
}

int tern_gq_wrap_q2_0(tern_gq_matrix *out, const uint8_t *blocks, size_t bytes, int m, int k, tern_err *err)
{
	memset(out, 0, sizeof *out);
	TERN_FORWARD_IF_ERROR(check_shape(m, k, err));
	TERN_RETURN_IF(!blocks || bytes != tern_gq_data_bytes(m, k), err, TERN_EINVAL,
		       "Q2_0 matrix %d x %d needs %zu bytes, got %zu", m, k, tern_gq_data_bytes(m, k), bytes);
	out->m = m;
	out->k = k;
	out->n_groups = k / TERN_GQ_GROUP;
	out->blocks = blocks;
	int rc = load_scales(out, err);
	if (rc < 0)
		tern_gq_free(out);
	return rc;
}

int tern_gq_pack(tern_gq_matrix *out, const int8_t *w, const float *scales, int m, int k, tern_err *err)
{
	memset(out, 0, sizeof *out);
	TERN_FORWARD_IF_ERROR(check_shape(m, k, err));
	TERN_RETURN_IF(!w || !scales, err, TERN_EINVAL, "tern_gq_pack: NULL weights or scales");
	const int ng = k / TERN_GQ_GROUP;
	uint8_t *b = calloc(tern_gq_data_bytes(m, k), 1);
	TERN_RETURN_IF(!b, err, TERN_ENOMEM, "tern_gq_pack: %zu bytes", tern_gq_data_bytes(m, k));
	for (int i = 0; i < m; i++)
		for (int g = 0; g < ng; g++) {
			uint8_t *p = b + ((size_t)i * (size_t)ng + (size_t)g) * TERN_GQ_BLOCK_BYTES;
			const uint16_t h = tern_f32_to_f16(scales[(size_t)i * (size_t)ng + (size_t)g]);
			p[0] = (uint8_t)h;
			p[1] = (uint8_t)(h >> 8);
			for (int e = 0; e < TERN_GQ_GROUP; e++) {
				const int v = w[(size_t)i * (size_t)k + (size_t)g * TERN_GQ_GROUP + (size_t)e];
				if (v < -1 || v > 2) {
					free(b);
					return TERN_ERR(err, TERN_EINVAL,
							"tern_gq_pack: weight %d at row %d column %d is not in -1..2",
							v, i, g * TERN_GQ_GROUP + e);
				}
				p[2 + e / 4] |= (uint8_t)((v + 1) << (2 * (e % 4)));
			}
		}
	out->m = m;
	out->k = k;
	out->n_groups = ng;
	out->blocks = out->owned = b;
	int rc = load_scales(out, err);
	if (rc < 0)
		tern_gq_free(out);
	return rc;
}

int tern_gq_weight_at(const tern_gq_matrix *w, int i, int c)
{
	const int e = c % TERN_GQ_GROUP;
	return ((tern_gq_codes(w, i, c / TERN_GQ_GROUP)[e / 4] >> (2 * (e % 4))) & 3) - 1;
}

void tern_gq_free(tern_gq_matrix *w)
{
	if (!w)
		return;
	free(w->scales);
	free(w->owned);
	memset(w, 0, sizeof *w);
}

int tern_gq_act_prepare(tern_gq_act *a, const float *x, int n, int k, int ldx, tern_err *err)
{
	TERN_RETURN_IF(n < 0 || k < TERN_GQ_GROUP || k % TERN_GQ_GROUP != 0 || k > TERN_GQ_MAX_K || ldx < k ||
			   (n > 0 && !x),
		       err, TERN_EINVAL, "tern_gq_act_prepare: %d rows of %d (stride %d)", n, k, ldx);
	const int ng = k / TERN_GQ_GROUP;
	if (n > a->cap_n || (size_t)n * (size_t)k > (size_t)a->cap_n * (size_t)a->cap_k || k > a->cap_k) {
		const int cn = n > a->cap_n ? n : a->cap_n, ck = k > a->cap_k ? k : a->cap_k;
		int8_t *q = malloc((size_t)cn * (size_t)ck);
		float *s = malloc((size_t)cn * sizeof(float));
		int32_t *gs = malloc((size_t)cn * (size_t)(ck / TERN_GQ_GROUP) * sizeof(int32_t));
		int8_t *row = malloc((size_t)ck);
		if (!q || !s || !gs || !row) {
			free(q);
			free(s);
			free(gs);
			free(row);
			return TERN_ERR(err, TERN_ENOMEM, "tern_gq_act_prepare: %d rows of %d", cn, ck);
		}
		tern_gq_act_free(a);
		a->q = q;
		a->scale = s;
		a->gsum = gs;
		a->row = row;
		a->cap_n = cn;
		a->cap_k = ck;
	}
	a->n = n;
	a->k = k;
	for (int j = 0; j < n; j++) {
		a->scale[j] = tern_quant_row(x + (size_t)j * (size_t)ldx, k, k, a->row, NULL);
		int8_t *q = a->q + (size_t)j * (size_t)k;
		for (int g = 0; g < ng; g++) {
			int32_t s = 0;
			for (int e = 0; e < TERN_GQ_GROUP; e++) {
				const int8_t v = a->row[g * TERN_GQ_GROUP + e];
				q[g * TERN_GQ_GROUP + 16 * (e % 4) + e / 4] = v;
				s += v;
			}
			a->gsum[(size_t)j * (size_t)ng + (size_t)g] = s;
		}
	}
	return 0;
}

void tern_gq_act_free(tern_gq_act *a)
{
	if (!a)
		return;
	free(a->q);
	free(a->scale);
	free(a->gsum);
	free(a->row);
	memset(a, 0, sizeof *a);
}

static tern_gq_kern_fn kernel_of(tern_isa isa)
{
	switch (isa) {
	case TERN_ISA_REF: return tern_gq_kern_ref;
#if defined(TERN_KERNELS_X86)
	case TERN_ISA_AVX2: return tern_gq_kern_avx2;
	case TERN_ISA_AVX512: return tern_gq_kern_avx512;
#endif
	case TERN_ISA_NEON: return tern_gq_kern_ref; /* no NEON gq kernel yet */
	default: return NULL;
	}
}

int tern_gq_gemm_f32(const tern_gq_matrix *w, const tern_gq_act *a, float *y, int ldy, int row0, int row1, tern_isa isa,
		     tern_err *err)
{
	TERN_RETURN_IF(!w || !a || !w->blocks || !w->scales, err, TERN_EINVAL,
		       "tern_gq_gemm: NULL matrix or activations");
	TERN_RETURN_IF(w->k != a->k, err, TERN_EINVAL, "tern_gq_gemm: matrix K %d but activations K %d", w->k, a->k);
	TERN_RETURN_IF(row0 < 0 || row1 > w->m || row0 > row1, err, TERN_EINVAL,
		       "tern_gq_gemm: row range [%d, %d) of %d rows", row0, row1, w->m);
	TERN_RETURN_IF(a->n < 0 || (a->n > 0 && !y) || (a->n > 1 && ldy < row1), err, TERN_EINVAL,
		       "tern_gq_gemm: bad output (n=%d, leading dimension %d for rows up to %d)", a->n, ldy, row1);
	if (isa == TERN_ISA_AUTO)
		isa = tern_isa_default();
	const tern_gq_kern_fn fn = tern_isa_available(isa) ? kernel_of(isa) : NULL;
	TERN_RETURN_IF(!fn, err, TERN_EUNSUP, "tern_gq_gemm: ISA %s not available here", tern_isa_name(isa));
	if (a->n > 0 && row0 < row1)
		fn(w, a, y, ldy, row0, row1);
	return 0;
}
