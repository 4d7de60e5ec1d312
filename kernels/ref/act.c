/* act.c: BitNet b1.58 activation quantization (per-row absmax to int8) and the
 * per-row activation tables the TL1/TL2 kernels look up (LAYOUTS.md). The
 * tables are exact int16 sums split into low/high byte planes, identical for
 * every ISA, so one tern_act serves any kernel. */
#include "kern-internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

float tern_quant_row(const float *x, int k, int k_pad, int8_t *q, int32_t *sum)
{
	/* max is exact and order-free, so this equals the double-precision max
	 * of the fork's quantize_row_i8_s; NaN inputs are ignored by the
	 * comparison. Eight independent maxima avoid one latency-bound chain. */
	float m8[8] = {1e-5f, 1e-5f, 1e-5f, 1e-5f, 1e-5f, 1e-5f, 1e-5f, 1e-5f};
	int i = 0;
	for (; i + 8 <= k; i += 8)
		for (int j = 0; j < 8; j++) {
			const float a = fabsf(x[i + j]);
			m8[j] = a > m8[j] ? a : m8[j];
		}
	for (; i < k; i++) {
		const float a = fabsf(x[i]);
		m8[0] = a > m8[0] ? a : m8[0];
	}
	float amax = m8[0];
	for (int j = 1; j < 8; j++)
		amax = m8[j] > amax ? m8[j] : amax;
	/* 127/amax in float is correctly rounded, as (float)(127.0/amax) is. */
	const float scale = 127.0f / amax;
	/* Adding and subtracting 1.5 * 2^23 rounds to the nearest integer, ties to
	 * even, under the default rounding mode (|v| <= 127 here, far below 2^22):
	 * the same as nearbyintf, without a libm call per element. It needs the
	 * product rounded on its own (no fused multiply-add): this file is built
	 * with -ffp-contract=off. Branch-free selects keep the loop vectorizable;
	 * NaN quantizes to 0 without UB. */
	const float magic = 12582912.0f;
	for (i = 0; i < k; i++) {
		const float v = x[i] * scale;
		float r = (v + magic) - magic;
		r = r > 127.0f ? 127.0f : r;
		r = r < -128.0f ? -128.0f : r;
		r = r == r ? r : 0.0f;
		q[i] = (int8_t)(int)r;
	}
	int32_t s = 0;
	for (i = 0; i < k; i++)
		s += q[i];
	for (i = k; i < k_pad; i++)
		q[i] = 0;
	if (sum)
		*sum = s;
	return scale;
}

static void put_entry(uint8_t *grp, int idx, int e)
{
	grp[idx] = (uint8_t)(e & 0xff);
	grp[16 + idx] = (uint8_t)((e >> 8) & 0xff);
}

/* Builds one row's table from its int8 row q (k_pad wide): 16 int16 entries
 * per group, split into a low-byte and a high-byte plane (LAYOUTS.md). */
static void build_lut(tern_packing p, const int8_t *q, int k_pad, uint8_t *lut, size_t row_bytes)
{
	memset(lut, 0, row_bytes);
	const int groups = tern_lut_groups(p, k_pad);
	for (int g = 0; g < groups; g++) {
		uint8_t *grp = lut + (size_t)g * TERN_LUT_GROUP_BYTES;
		if (p == TERN_PACK_TL1) {
			const int b0 = q[2 * g], b1 = q[2 * g + 1];
			for (int w0 = -1; w0 <= 1; w0++)
				for (int w1 = -1; w1 <= 1; w1++)
					put_entry(grp, 3 * w0 + w1 + 4, w0 * b0 + w1 * b1);
		} else {
			const int b0 = q[3 * g], b1 = q[3 * g + 1], b2 = q[3 * g + 2];
			for (int w0 = -1; w0 <= 1; w0++)
				for (int w1 = -1; w1 <= 1; w1++)
					for (int w2 = -1; w2 <= 1; w2++) {
						const int v = 9 * w0 + 3 * w1 + w2;
						if (v >= 0)
							put_entry(grp, v, w0 * b0 + w1 * b1 + w2 * b2);
					}
		}
	}
}

/* Sizes a for n rows of width k for packing p (buffers grow, never shrink). */
static int act_reserve(tern_act *a, tern_packing p, tern_isa isa, int n, int k, tern_err *err)
{
	TERN_RETURN_IF((unsigned)p >= TERN_PACK_COUNT, err, TERN_EINVAL, "tern_act_prepare: unknown packing %d",
		       (int)p);
	TERN_RETURN_IF(n < 0 || k <= 0 || k > (1 << 24), err, TERN_EINVAL, "tern_act_prepare: bad shape n=%d k=%d", n,
		       k);
	if (isa == TERN_ISA_AUTO)
		isa = tern_isa_default();
	TERN_RETURN_IF(isa < 0 || isa >= TERN_ISA_COUNT, err, TERN_EINVAL, "tern_act_prepare: unknown ISA %d",
		       (int)isa);
	const int k_pad = tern_k_pad(p, k);
	const int groups = tern_lut_groups(p, k_pad);
	const size_t lut_row = ((size_t)groups * TERN_LUT_GROUP_BYTES + TERN_ALIGN - 1) / TERN_ALIGN * TERN_ALIGN;
	/* k_pad and lut_row_bytes record the current shape, which never exceeds
	 * what is allocated, so growing past them reallocates conservatively. */
	if (n > a->cap_n || k_pad > a->k_pad || lut_row > a->lut_row_bytes || !a->q) {
		const int cap = n > a->cap_n ? n : (a->cap_n > 0 ? a->cap_n : 1);
		const int kp = k_pad > a->k_pad ? k_pad : a->k_pad;
		const size_t lr = lut_row > a->lut_row_bytes ? lut_row : a->lut_row_bytes;
		tern_act grown = {.cap_n = cap,
				  .q = tern_aligned_alloc((size_t)cap * (size_t)kp, TERN_ALIGN),
				  .scale = malloc((size_t)cap * sizeof(float)),
				  .sum = malloc((size_t)cap * sizeof(int32_t)),
				  .lut = lr ? tern_aligned_alloc((size_t)cap * lr, TERN_ALIGN) : NULL};
		if (!grown.q || !grown.scale || !grown.sum || (lr && !grown.lut)) {
			tern_act_free(&grown);
			return TERN_ERR(err, TERN_ENOMEM, "tern_act_prepare: %d rows of %d", cap, kp);
		}
		tern_act_free(a);
		*a = grown;
	}
	a->packing = p;
	a->isa = isa;
	a->n = n;
	a->k = k;
	a->k_pad = k_pad;
	a->lut_row_bytes = groups ? lut_row : 0;
	return 0;
}

/* The quantizer and table builder for a's ISA: x86/act-avx512.c for the
 * AVX-512 ISA on CPUs with AVX512_VNNI (the same bytes), else the scalar
 * code above, which stays the reference and what TERN_KERNEL=ref runs. */
typedef float (*act_quant_fn)(const float *x, int k, int k_pad, int8_t *q, int32_t *sum);
typedef void (*act_lut_fn)(tern_packing p, const int8_t *q, int k_pad, uint8_t *lut, size_t row_bytes);

static void act_impl(const tern_act *a, act_quant_fn *quant, act_lut_fn *lut)
{
	*quant = tern_quant_row;
	*lut = build_lut;
#if defined(TERN_KERNELS_X86)
	if (a->isa == TERN_ISA_AVX512 && tern_cpu_get()->avx512vnni) {
		*quant = tern_kern_quant_row_avx512;
		*lut = tern_kern_lut_avx512;
	}
#else
	(void)a;
#endif
}

static void act_tables(tern_act *a, int j, act_lut_fn lut)
{
	if (a->lut_row_bytes)
		lut(a->packing, a->q + (size_t)j * (size_t)a->k_pad, a->k_pad,
		    (uint8_t *)a->lut + (size_t)j * a->lut_row_bytes, a->lut_row_bytes);
}

int tern_act_prepare(tern_act *a, tern_packing p, tern_isa isa, const float *x, int n, int k, int ldx, tern_err *err)
{
	TERN_RETURN_IF(!a || (!x && n > 0), err, TERN_EINVAL, "tern_act_prepare: NULL argument");
	TERN_RETURN_IF(ldx < k, err, TERN_EINVAL, "tern_act_prepare: row stride %d < k %d", ldx, k);
	TERN_FORWARD_IF_ERROR(act_reserve(a, p, isa, n, k, err));
	act_quant_fn quant;
	act_lut_fn lut;
	act_impl(a, &quant, &lut);
	for (int j = 0; j < n; j++) {
		a->scale[j] = quant(x + (size_t)j * (size_t)ldx, k, a->k_pad, a->q + (size_t)j * (size_t)a->k_pad,
				    &a->sum[j]);
		act_tables(a, j, lut);
	}
	return 0;
}

int tern_act_prepare_q(tern_act *a, tern_packing p, tern_isa isa, const int8_t *q, const float *scale, int n, int k,
		       int ldq, tern_err *err)
{
	TERN_RETURN_IF(!a || ((!q || !scale) && n > 0), err, TERN_EINVAL, "tern_act_prepare_q: NULL argument");
	TERN_RETURN_IF(ldq < k, err, TERN_EINVAL, "tern_act_prepare_q: row stride %d < k %d", ldq, k);
	TERN_FORWARD_IF_ERROR(act_reserve(a, p, isa, n, k, err));
	act_quant_fn quant;
	act_lut_fn lut;
	act_impl(a, &quant, &lut);
	for (int j = 0; j < n; j++) {
		int8_t *qj = a->q + (size_t)j * (size_t)a->k_pad;
		int32_t s = 0;
		for (int i = 0; i < k; i++) {
			qj[i] = q[(size_t)j * (size_t)ldq + (size_t)i];
			s += qj[i];
		}
		memset(qj + k, 0, (size_t)(a->k_pad - k));
		a->scale[j] = scale[j];
		a->sum[j] = s;
		act_tables(a, j, lut);
	}
	return 0;
}

void tern_act_free(tern_act *a)
{
	if (!a)
		return;
	tern_aligned_free(a->q);
	free(a->scale);
	free(a->sum);
	tern_aligned_free(a->lut);
	memset(a, 0, sizeof *a);
}
