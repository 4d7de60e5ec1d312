/* gq-avx512.c: the group-scaled ternary product with AVX-512BW. One block's
 * 16 code bytes are broadcast to the four 128-bit lanes and shifted by 0, 2,
 * 4, 6 (lane L then holds the codes of inputs 4b + L, the plane order of
 * tern_gq_act); vpmaddubsw of the unsigned codes (0..3) with the int8 inputs, vpmaddwd to
 * int32, four groups summed horizontally at once, minus the group's input sum (the code offset of
 * 1). |partial| <= 2 * 3 * 128 per int16: no saturation. The float step is
 * tern_gq_reduce, the reference's. */
#include <immintrin.h>

#include "gq-internal.h"

/* The four group sums of a, b, c, d (16 int32 each) as one 128-bit vector. */
static inline __m128i hsum4x16(__m512i a, __m512i b, __m512i c, __m512i d)
{
	const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
	const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
	const __m512i v = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
	const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
	return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

static inline __m512i group_product(const tern_gq_matrix *w, int i, int g, const int8_t *q)
{
	const __m512i shifts = _mm512_set_epi32(6, 6, 6, 6, 4, 4, 4, 4, 2, 2, 2, 2, 0, 0, 0, 0);
	const __m128i raw = _mm_loadu_si128((const __m128i *)tern_gq_codes(w, i, g));
	const __m512i c = _mm512_and_si512(_mm512_srlv_epi32(_mm512_broadcast_i32x4(raw), shifts), _mm512_set1_epi8(3));
	return _mm512_madd_epi16(
	    _mm512_maddubs_epi16(c, _mm512_loadu_si512((const void *)(q + (size_t)g * TERN_GQ_GROUP))),
	    _mm512_set1_epi16(1));
}

void tern_gq_kern_avx512(const tern_gq_matrix *w, const tern_gq_act *a, float *y, int ldy, int row0, int row1)
{
	const int ng = w->n_groups, k = w->k;
	int32_t dot[TERN_GQ_MAX_GROUPS];
	for (int j = 0; j < a->n; j++) {
		const int8_t *q = a->q + (size_t)j * (size_t)k;
		const int32_t *gs = a->gsum + (size_t)j * (size_t)ng;
		for (int i = row0; i < row1; i++) {
			int g = 0;
			/* four groups per horizontal reduction */
			for (; g + 4 <= ng; g += 4) {
				const __m128i s =
				    hsum4x16(group_product(w, i, g, q), group_product(w, i, g + 1, q),
					     group_product(w, i, g + 2, q), group_product(w, i, g + 3, q));
				_mm_storeu_si128((__m128i *)(dot + g),
						 _mm_sub_epi32(s, _mm_loadu_si128((const __m128i *)(gs + g))));
			}
			for (; g < ng; g++)
				dot[g] = _mm512_reduce_add_epi32(group_product(w, i, g, q)) - gs[g];
			y[(size_t)j * (size_t)ldy + (size_t)i] =
			    tern_gq_reduce(dot, w->scales + (size_t)i * (size_t)ng, ng, a->scale[j]);
		}
	}
}
