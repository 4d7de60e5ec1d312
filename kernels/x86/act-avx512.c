/* act-avx512.c: the activation preparation of ref/act.c (int8 quantization
 * of a row, the TL1/TL2 lookup tables) with AVX-512, for CPUs with
 * AVX512_VNNI (ref/act.c calls it for tern_act's of the AVX-512 ISA only
 * there). Same results byte for byte: test_kernels compares both.
 *
 * Quantization does the same float operations per element as
 * tern_quant_row, in the same order (this file is built with
 * -ffp-contract=off): a vector maximum is exact and order-free, and the NaN
 * rules of vmaxps/vminps are arranged to match the scalar selects.
 *
 * Tables: the 16 entries of a group, e[v] = w0*b0 + w1*b1 (+ w2*b2) for the
 * weights (w0, w1, w2) of index v, are one vpdpbusd of the group's
 * activation bytes, biased to unsigned (b + 128), against the signed weights
 * of every index, from the bias -128 * (w0 + w1 + w2): exact in int32. The
 * low and high bytes of the 16 entries are then the group's two 16-byte
 * planes (LAYOUTS.md). */
#include "kern-internal.h"

#include <immintrin.h>
#include <pthread.h>
#include <string.h>

float tern_kern_quant_row_avx512(const float *x, int k, int k_pad, int8_t *q, int32_t *sum)
{
	__m512 m = _mm512_set1_ps(1e-5f);
	int i = 0;
	/* vmaxps(a, m) is a > m ? a : m, so a NaN input keeps m, as in the
	 * scalar loop. */
	for (; i + 16 <= k; i += 16)
		m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + i)), m);
	if (i < k) {
		const __mmask16 t = (__mmask16)((1u << (k - i)) - 1);
		m = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(t, x + i)), m);
	}
	const float amax = _mm512_reduce_max_ps(m);
	const float scale = 127.0f / amax;
	const __m512 vs = _mm512_set1_ps(scale), magic = _mm512_set1_ps(12582912.0f);
	const __m512 hi = _mm512_set1_ps(127.0f), lo = _mm512_set1_ps(-128.0f);
	__m512i acc = _mm512_setzero_si512();
	for (i = 0; i < k; i += 16) {
		const __mmask16 t = k - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (k - i)) - 1);
		const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(t, x + i), vs);
		__m512 r = _mm512_sub_ps(_mm512_add_ps(v, magic), magic);
		/* NaN -> 0 first; then vminps/vmaxps clamp as the scalar selects do. */
		r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r, r, _CMP_ORD_Q), r);
		r = _mm512_max_ps(_mm512_min_ps(r, hi), lo);
		const __m512i iv = _mm512_cvttps_epi32(r);
		acc = _mm512_add_epi32(acc, iv);
		_mm512_mask_cvtepi32_storeu_epi8(q + i, t, iv);
	}
	if (k_pad > k)
		memset(q + k, 0, (size_t)(k_pad - k));
	if (sum)
		*sum = _mm512_reduce_add_epi32(acc);
	return scale;
}

/* Signed weights of index v in dword lane v (bytes w0, w1, w2, 0) and the
 * bias -128 * (w0 + w1 + w2), for TL1 (t = 0) and TL2 (t = 1), from the same
 * index rules as ref/act.c's build_lut. */
typedef struct lut_consts {
	_Alignas(64) int8_t w[2][64];
	_Alignas(64) int32_t bias[2][16];
} lut_consts;

static lut_consts lut_c; /* filled once (pthread_once); zero elsewhere */

static void lut_consts_make(void)
{
	lut_consts *c = &lut_c;
	for (int w0 = -1; w0 <= 1; w0++)
		for (int w1 = -1; w1 <= 1; w1++) {
			const int v = 3 * w0 + w1 + 4;
			c->w[0][4 * v] = (int8_t)w0, c->w[0][4 * v + 1] = (int8_t)w1;
			c->bias[0][v] = -128 * (w0 + w1);
			for (int w2 = -1; w2 <= 1; w2++) {
				const int u = 9 * w0 + 3 * w1 + w2;
				if (u < 0)
					continue;
				c->w[1][4 * u] = (int8_t)w0, c->w[1][4 * u + 1] = (int8_t)w1, c->w[1][4 * u + 2] = (int8_t)w2;
				c->bias[1][u] = -128 * (w0 + w1 + w2);
			}
		}
}

void tern_kern_lut_avx512(tern_packing p, const int8_t *q, int k_pad, uint8_t *lut, size_t row_bytes)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, lut_consts_make);
	const lut_consts *c = &lut_c;
	const int tl2 = p == TERN_PACK_TL2, step = tl2 ? 3 : 2;
	const int groups = tern_lut_groups(p, k_pad);
	const __m512i w = _mm512_load_si512((const void *)c->w[tl2]);
	const __m512i bias = _mm512_load_si512((const void *)c->bias[tl2]);
	const __m512i flip = _mm512_set1_epi8((char)0x80);
	for (int g = 0; g < groups; g++) {
		/* The group's bytes and whatever follows them: those meet weight 0.
		 * The last group copies its bytes so nothing is read past the row. */
		int32_t b;
		if ((size_t)g * (size_t)step + 4 <= (size_t)k_pad) {
			memcpy(&b, q + (size_t)g * (size_t)step, 4);
		} else {
			b = 0;
			memcpy(&b, q + (size_t)g * (size_t)step, (size_t)step);
		}
		const __m512i bu = _mm512_xor_si512(_mm512_set1_epi32(b), flip);
		const __m512i e = _mm512_dpbusd_epi32(bias, bu, w);
		uint8_t *grp = lut + (size_t)g * TERN_LUT_GROUP_BYTES;
		_mm_storeu_si128((__m128i *)(void *)grp, _mm512_cvtepi32_epi8(e));
		_mm_storeu_si128((__m128i *)(void *)(grp + 16), _mm512_cvtepi32_epi8(_mm512_srai_epi32(e, 8)));
	}
	const size_t used = (size_t)groups * TERN_LUT_GROUP_BYTES;
	if (row_bytes > used)
		memset(lut + used, 0, row_bytes - used);
}
