/* tern-half.h: the one definition of the half-precision conversions (IEEE
 * binary16 "F16" and bfloat16 "BF16" <-> float) for the whole tree: model
 * readers, the LM head, the float kernels and the tests.
 *
 * Widening is exact (every half value is a float) and does not depend on the
 * FPU: no flush-to-zero of subnormals, NaN payloads kept. It is inline so the
 * scalar kernels can convert per element. Narrowing rounds to nearest, ties
 * to even; F16 overflow gives infinity, NaN stays NaN (quiet). Depends on
 * libc only. */
#ifndef TERN_HALF_H
#define TERN_HALF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* F16 bits -> float, exact (subnormals are man * 2^-24, computed exactly). */
static inline float tern_f16_to_f32(uint16_t h)
{
	const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, ex = (h >> 10) & 0x1fu, man = h & 0x3ffu;
	uint32_t bits;
	if (ex == 0) {
		const float f = (float)man * 0x1p-24f;
		return sign ? -f : f;
	} else if (ex == 31) {
		bits = sign | 0x7f800000u | (man << 13);
	} else {
		bits = sign | ((ex + 112u) << 23) | (man << 13);
	}
	float f;
	memcpy(&f, &bits, sizeof f);
	return f;
}

/* BF16 bits -> float, exact (the high half of the float's bits). */
static inline float tern_bf16_to_f32(uint16_t h)
{
	const uint32_t bits = (uint32_t)h << 16;
	float f;
	memcpy(&f, &bits, sizeof f);
	return f;
}

/* float -> F16 bits: round to nearest even, |f| >= 65520 -> infinity. */
uint16_t tern_f32_to_f16(float f);
/* float -> BF16 bits: round to nearest even. */
uint16_t tern_f32_to_bf16(float f);

/* h[i] = tern_f32_to_f16(x[i]) for i < n, the same bits; with F16C where the
 * CPU has it (a KV cache row, a converted tensor). */
void tern_f32_to_f16_n(const float *x, uint16_t *h, size_t n);
/* h[i] = tern_f32_to_bf16(x[i]) for i < n. */
void tern_f32_to_bf16_n(const float *x, uint16_t *h, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* TERN_HALF_H */
