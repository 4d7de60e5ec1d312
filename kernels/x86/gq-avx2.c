/* gq-avx2.c: the group-scaled ternary product with AVX2, as gq-avx512.c
 * does it in two halves: one block's 16 code bytes broadcast to both 128-bit
 * lanes, shifted by 0 | 2 (inputs 0..31 of the plane order) and 4 | 6
 * (32..63), two vpmaddubsw summed in int16 (|sum| <= 4 * 3 * 128), vpmaddwd,
 * a horizontal sum, minus the group's input sum. The float step is
 * tern_gq_reduce, the reference's. */
#include <immintrin.h>

#include "gq-internal.h"

static inline int32_t hsum8(__m256i v)
{
	__m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
	return _mm_cvtsi128_si32(s);
}

void tern_gq_kern_avx2(const tern_gq_matrix *w, const tern_gq_act *a, float *y, int ldy, int row0, int row1)
{
	const int ng = w->n_groups, k = w->k;
	const __m256i sh_lo = _mm256_set_epi32(2, 2, 2, 2, 0, 0, 0, 0);
	const __m256i sh_hi = _mm256_set_epi32(6, 6, 6, 6, 4, 4, 4, 4);
	const __m256i three = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
	int32_t dot[TERN_GQ_TOKENS][TERN_GQ_MAX_GROUPS];
	for (int i = row0; i < row1; i++) {
		const float *d = w->scales + (size_t)i * (size_t)ng;
		for (int j0 = 0; j0 < a->n; j0 += TERN_GQ_TOKENS) {
			const int nt = a->n - j0 < TERN_GQ_TOKENS ? a->n - j0 : TERN_GQ_TOKENS;
			for (int g = 0; g < ng; g++) {
				const __m256i raw = _mm256_broadcastsi128_si256(
				    _mm_loadu_si128((const __m128i *)tern_gq_codes(w, i, g)));
				const __m256i c0 = _mm256_and_si256(_mm256_srlv_epi32(raw, sh_lo), three);
				const __m256i c1 = _mm256_and_si256(_mm256_srlv_epi32(raw, sh_hi), three);
				for (int t = 0; t < nt; t++) {
					const int j = j0 + t;
					const int8_t *q = a->q + (size_t)j * (size_t)k + (size_t)g * TERN_GQ_GROUP;
					const __m256i p16 = _mm256_add_epi16(
					    _mm256_maddubs_epi16(c0, _mm256_loadu_si256((const __m256i *)q)),
					    _mm256_maddubs_epi16(c1, _mm256_loadu_si256((const __m256i *)(q + 32))));
					dot[t][g] = hsum8(_mm256_madd_epi16(p16, ones)) -
						    a->gsum[(size_t)j * (size_t)ng + (size_t)g];
				}
			}
			for (int t = 0; t < nt; t++)
				y[(size_t)(j0 + t) * (size_t)ldy + (size_t)i] =
				    tern_gq_reduce(dot[t], d, ng, a->scale[j0 + t]);
		}
	}
}
