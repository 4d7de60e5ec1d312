/* i8-gemm.h: what the two decode-once int8 GEMMs share, gemm-avx2-i8.c (ymm)
 * and gemm-vnni.c (zmm): the scalar parts of decoding a 64-row tile x a
 * chunk of K into int8 codes c = w + 1 (the row pointers and prefetches of
 * I2_S, the loops over TL1 quads and TL2 pairs) and the zero-padded
 * activations of a partial last k4. Plain C (and SSE prefetches); the vector
 * code comes from each file as functions inlined into these loops. */
#ifndef TERN_I8_GEMM_H
#define TERN_I8_GEMM_H

#include "kern-internal.h"

#include <stddef.h>
#include <string.h>
#include <xmmintrin.h>

#define I8G_ROWS 64     /* rows of a decoded tile */
#define I8G_K4_BYTES 256 /* one decoded k4: 64 rows x 4 codes */

/* I2_S: pointers to rows r0 .. r0+n-1 of w (a row past row1 points at row
 * row1 - 1; its result is dropped), prefetching what the next chunk [k1, ..)
 * of each row will read (past the last chunk: the next tile's first). */
static inline void i8g_i2s_rows(const tern_matrix *w, int r0, int n, int row1, int k0, int k1, const uint8_t **rp)
{
	const size_t row_bytes = (size_t)w->k_pad / 4;
	for (int r = 0; r < n; r++) {
		const int row = r0 + r;
		rp[r] = w->data + (size_t)(row < row1 ? row : row1 - 1) * row_bytes;
		const uint8_t *next = k1 < w->k_pad ? rp[r] + k1 / 4 : rp[r] + I8G_ROWS * row_bytes;
		for (int l = 0; l < (k1 - k0) / 4; l += 64)
			_mm_prefetch((const char *)(next + l), _MM_HINT_T0);
	}
}

/* TL1: quad(src, dk) decodes the 64 index bytes of one quad (4 k) of the
 * tile at r0 into the k4 at dk, for the quads of [k0, k1). (TL1 tiles are
 * padded to 64 rows in data.) */
static inline __attribute__((always_inline)) void i8g_tl1_decode(const tern_matrix *w, int r0, int k0, int k1,
								 uint8_t *d, void (*quad)(const uint8_t *, uint8_t *))
{
	const size_t quads = (size_t)w->k_pad / 4;
	const uint8_t *tile = w->data + (size_t)(r0 / I8G_ROWS) * quads * TERN_TL1_QUAD_BYTES;
	const size_t chunk_bytes = (size_t)(k1 - k0) / 4 * TERN_TL1_QUAD_BYTES;
	for (int qd = k0 / 4; qd < k1 / 4; qd++) {
		const uint8_t *src = tile + (size_t)qd * TERN_TL1_QUAD_BYTES;
		_mm_prefetch((const char *)(src + chunk_bytes), _MM_HINT_T0);
		quad(src, d + (size_t)(qd - k0 / 4) * I8G_K4_BYTES);
	}
}

/* TL2: for the pairs of [k0, k1) of the tile at r0, pairs(idx, rec, n, dk)
 * decodes n = 2 pairs (12 k, 3 k4) or the odd last pair of the matrix (n =
 * 1: 6 k, 2 k4, the last 2 k past k_pad code 0) from their index bytes idx
 * (64 a pair) and sign records rec (16 a pair) into the k4 at dk. (TL2 tiles
 * are padded to 64 rows in data.) */
static inline __attribute__((always_inline)) void
i8g_tl2_decode(const tern_matrix *w, int r0, int k0, int k1, uint8_t *d,
	       void (*pairs_fn)(const uint8_t *, const uint8_t *, int, uint8_t *))
{
	const int pairs = w->k_pad / 6;
	const uint8_t *tile = w->data + (size_t)(r0 / I8G_ROWS) * (size_t)pairs * TERN_TL2_PAIR_BYTES;
	const int p0 = k0 / 6, p1 = k1 / 6;
	const size_t chunk_bytes = (size_t)(p1 - p0) * TERN_TL2_PAIR_BYTES;
	uint8_t *dk = d;
	for (int pb = p0; pb < p1; pb += TERN_TL2_BLOCK_PAIRS) {
		const int np = pairs - pb < TERN_TL2_BLOCK_PAIRS ? pairs - pb : TERN_TL2_BLOCK_PAIRS;
		const uint8_t *idx = tile + (size_t)pb * TERN_TL2_PAIR_BYTES;
		const uint8_t *sgn = idx + (size_t)np * 64;
		for (size_t off = 0; off < (size_t)np * TERN_TL2_PAIR_BYTES; off += 64)
			_mm_prefetch((const char *)(idx + off + chunk_bytes), _MM_HINT_T0);
		int p = 0;
		for (; p + 2 <= np; p += 2) {
			pairs_fn(idx + (size_t)p * 64, sgn + (size_t)p * 16, 2, dk);
			dk += 3 * I8G_K4_BYTES;
		}
		if (p < np) {
			pairs_fn(idx + (size_t)p * 64, sgn + (size_t)p * 16, 1, dk);
			dk += 2 * I8G_K4_BYTES;
		}
	}
}

/* Defines tl1_decode and tl2_decode, the drivers' decoders of TL1 and TL2
 * (arguments as i2s_decode), around a file's quad and pairs functions. */
#define I8G_TL_DECODERS(quad, pairs)                                                                  \
	static void tl1_decode(const tern_matrix *w, int r0, int row1, int k0, int k1, uint8_t *d) \
	{                                                                                          \
		(void)row1;                                                                        \
		i8g_tl1_decode(w, r0, k0, k1, d, quad);                                            \
	}                                                                                          \
	static void tl2_decode(const tern_matrix *w, int r0, int row1, int k0, int k1, uint8_t *d) \
	{                                                                                          \
		(void)row1;                                                                        \
		i8g_tl2_decode(w, r0, k0, k1, d, pairs);                                           \
	}

/* Defines the three GEMM entry points tern_kern_{i2s,tl1,tl2}_<isa>_gemm
 * (kern-internal.h) of a file: drive(w, a, dot, ldd, row0, row1, chunk K,
 * decoder, interleaved rows) with the decoders i2s_decode, tl1_decode and
 * tl2_decode. */
#define I8G_GEMMS(isa, drive, kc_i2s, kc_tl1, kc_tl2)                                                        \
	void tern_kern_i2s_##isa##_gemm(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, \
					int row1)                                                            \
	{                                                                                                     \
		drive(w, a, dot, ldd, row0, row1, kc_i2s, i2s_decode, 0);                                      \
	}                                                                                                     \
	void tern_kern_tl1_##isa##_gemm(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, \
					int row1)                                                            \
	{                                                                                                     \
		drive(w, a, dot, ldd, row0, row1, kc_tl1, tl1_decode, 1);                                      \
	}                                                                                                     \
	void tern_kern_tl2_##isa##_gemm(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, \
					int row1)                                                            \
	{                                                                                                     \
		drive(w, a, dot, ldd, row0, row1, kc_tl2, tl2_decode, 1);                                      \
	}

/* The activations of a partial last k4 (k_pad % 4 != 0) of tokens j0 ..
 * j0+nj-1, zero-padded to 4 bytes per token in qtail (cap bytes), so the
 * products of that k4 read nothing past a row. */
static inline void i8g_qtail(const tern_act *a, int k_pad, int j0, int nj, int8_t *qtail, size_t cap)
{
	const int k4_full = k_pad / 4, tail = k_pad % 4;
	if (!tail)
		return;
	memset(qtail, 0, cap);
	for (int t = 0; t < nj; t++)
		memcpy(qtail + 4 * t, a->q + (size_t)(j0 + t) * (size_t)k_pad + 4 * (size_t)k4_full, (size_t)tail);
}

#endif /* TERN_I8_GEMM_H */
