/* half.c: float -> F16 / BF16 narrowing (tern-half.h), integer-only so the
 * result does not depend on the FPU or the compiler's conversion flags. */
#include "tern-half.h"

uint16_t tern_f32_to_f16(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	const uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
	const uint32_t absu = u & 0x7FFFFFFFu;
	if (absu > 0x7F800000u)
		return (uint16_t)(sign | 0x7E00); /* NaN */
	if (absu >= 0x477FF000u)                  /* rounds to >= 65520: inf */
		return (uint16_t)(sign | 0x7C00);
	if (absu < 0x38800000u) {
		/* f16 subnormal: the value in units of 2^-24, rounded half to even.
		 * x = m * 2^(e-150) with the implicit bit in m, so units = m >> (126-e). */
		if (absu < 0x33000000u)
			return sign; /* below half the smallest subnormal (ties to even: 0) */
		const uint32_t e = absu >> 23, m = (absu & 0x7FFFFF) | 0x800000;
		const uint32_t drop = 126 - e;
		const uint32_t q = m >> drop, rem = m & ((1u << drop) - 1), half = 1u << (drop - 1);
		return (uint16_t)(sign | (q + (rem > half || (rem == half && (q & 1)))));
	}
	uint32_t v = ((absu >> 13) - ((127 - 15) << 10));
	const uint32_t rem = absu & 0x1FFF;
	if (rem > 0x1000 || (rem == 0x1000 && (v & 1)))
		v++;
	return (uint16_t)(sign | v);
}

uint16_t tern_f32_to_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	if ((u & 0x7FFFFFFFu) > 0x7F800000u)
		return (uint16_t)((u >> 16) | 0x40);
	u += 0x7FFF + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "tern-base.h"

/* vcvtps2ph rounds to nearest even, gives infinity from 65520 up and keeps
 * subnormals (MXCSR's DAZ is never set here), like tern_f32_to_f16; only a
 * NaN differs (the hardware keeps the payload, the scalar rule gives the one
 * quiet NaN), so an 8-lane step holding a NaN takes the scalar rule. */
__attribute__((target("avx,f16c"))) static size_t f16_n_f16c(const float *x, uint16_t *h, size_t n)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		const __m256 v = _mm256_loadu_ps(x + i);
		const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
		if (!_mm256_testz_ps(nan, nan))
			for (size_t j = i; j < i + 8; j++)
				h[j] = tern_f32_to_f16(x[j]);
		else
			_mm_storeu_si128((__m128i *)(void *)(h + i),
					 _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
	}
	return i;
}
#endif

void tern_f32_to_f16_n(const float *x, uint16_t *h, size_t n)
{
	size_t i = 0;
#if defined(__x86_64__) || defined(__i386__)
	if (tern_cpu_get()->f16c)
		i = f16_n_f16c(x, h, n);
#endif
	for (; i < n; i++)
		h[i] = tern_f32_to_f16(x[i]);
}

void tern_f32_to_bf16_n(const float *x, uint16_t *h, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h[i] = tern_f32_to_bf16(x[i]);
}
