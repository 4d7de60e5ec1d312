/* gemm-vnni.c: AVX-512 VNNI GEMM for I2_S, TL1 and TL2 (batches; the
 * dispatcher in gemm-avx512.c calls it from tern_kern_gemm_vnni_min tokens
 * up, only on CPUs with AVX512_VNNI; this file is compiled with VNNI flags).
 *
 * Each weight tile (64 rows x a chunk of K) is decoded once into int8 codes
 * c = w + 1 in {0, 1, 2}, laid out for vpdpbusd: entry k4 of the chunk is four
 * zmm, each 16 rows x 4 consecutive k (one dword per row). Then every token of
 * the batch runs over the decoded chunk with its 4 activation bytes
 * broadcast: acc(row) += sum_{4 k} c * q, in int32, exact. At the end
 * dot = acc - sum(q) (the activations' row sum), the same identity the I2_S
 * kernels use. Codes past k_pad (TL2's last k4 when k_pad % 4 == 2) are 0, so
 * whatever activation byte they meet contributes nothing; the activations of
 * that k4 come from a zero-padded copy so nothing is read past a row.
 *
 * Row order inside a decoded k4: I2_S (a 16 x 8 dword transpose of row
 * blocks) gives the natural order, vector v = rows 16v..16v+15; TL1/TL2 build
 * byte planes (one byte per row, the codes of one k) and interleave four of
 * them with unpack instructions, which gives vector v, 128-bit lane L, dword
 * i = row 16L + 4v + i; the final store transposes the lanes back.
 *
 * Register blocking: 6 tokens x 4 vectors = 24 accumulators; the decoded
 * chunk (<= 24 KiB) and the accumulators of up to 64 tokens (16 KiB) stay in
 * L1. Layouts: kernels/LAYOUTS.md. */
#include "kern-internal.h"
#include "i8-gemm.h"

#include <immintrin.h>
#include <string.h>

/* From this batch size up the AVX-512 kernels call the VNNI GEMM. */
int tern_kern_gemm_vnni_min[TERN_PACK_COUNT] = {TERN_GEMM_VNNI_MIN_I2S, TERN_GEMM_VNNI_MIN_TL1,
						TERN_GEMM_VNNI_MIN_TL2};

#define VG_NT 6          /* tokens per pass: 24 accumulators */
#define VG_TOKENS 64     /* tokens whose accumulators live in the scratch at once */
#define VG_KC_I2S 512    /* K per decoded chunk (2 I2_S blocks) */
#define VG_KC_TL1 256
#define VG_KC_TL2 384    /* 2 TL2 blocks of 32 pairs */
#define VG_KC_MAX 512

/* ---- the product over one decoded chunk ------------------------------------ */

static inline __attribute__((always_inline)) void vg_pass(const uint8_t *d, int nk4, const int8_t *q, size_t ldq,
							  const int nt, int32_t *acc, int first)
{
	/* Every loop over the accumulators is unrolled in full, or GCC keeps
	 * them in a stack array (measured: half the speed). */
	__m512i c[VG_NT][4];
	if (first) {
#pragma GCC unroll 8
		for (int t = 0; t < nt; t++)
#pragma GCC unroll 4
			for (int v = 0; v < 4; v++)
				c[t][v] = _mm512_setzero_si512();
	} else {
#pragma GCC unroll 8
		for (int t = 0; t < nt; t++)
#pragma GCC unroll 4
			for (int v = 0; v < 4; v++)
				c[t][v] = _mm512_load_si512((const void *)(acc + t * I8G_ROWS + 16 * v));
	}
	for (int k4 = 0; k4 < nk4; k4++) {
		const uint8_t *dk = d + (size_t)k4 * I8G_K4_BYTES;
		const __m512i w0 = _mm512_load_si512((const void *)dk), w1 = _mm512_load_si512((const void *)(dk + 64)),
			      w2 = _mm512_load_si512((const void *)(dk + 128)),
			      w3 = _mm512_load_si512((const void *)(dk + 192));
#pragma GCC unroll 8
		for (int t = 0; t < nt; t++) {
			int32_t x;
			memcpy(&x, q + (size_t)t * ldq + 4 * (size_t)k4, 4);
			const __m512i b = _mm512_set1_epi32(x);
			c[t][0] = _mm512_dpbusd_epi32(c[t][0], w0, b);
			c[t][1] = _mm512_dpbusd_epi32(c[t][1], w1, b);
			c[t][2] = _mm512_dpbusd_epi32(c[t][2], w2, b);
			c[t][3] = _mm512_dpbusd_epi32(c[t][3], w3, b);
		}
	}
#pragma GCC unroll 8
	for (int t = 0; t < nt; t++)
#pragma GCC unroll 4
		for (int v = 0; v < 4; v++)
			_mm512_store_si512((void *)(acc + t * I8G_ROWS + 16 * v), c[t][v]);
}

/* nt tokens (1..VG_NT) at q (row stride ldq), accumulators acc[nt][64]. */
static void vg_pass_n(const uint8_t *d, int nk4, const int8_t *q, size_t ldq, int nt, int32_t *acc, int first)
{
	switch (nt) {
	case 6: vg_pass(d, nk4, q, ldq, 6, acc, first); break;
	case 5: vg_pass(d, nk4, q, ldq, 5, acc, first); break;
	case 4: vg_pass(d, nk4, q, ldq, 4, acc, first); break;
	case 3: vg_pass(d, nk4, q, ldq, 3, acc, first); break;
	case 2: vg_pass(d, nk4, q, ldq, 2, acc, first); break;
	default: vg_pass(d, nk4, q, ldq, 1, acc, first); break;
	}
}

/* ---- decoders: rows [r0, r0+64) of w, k in [k0, k1), into d ----------------- */

typedef void (*vg_decode_fn)(const tern_matrix *w, int r0, int row1, int k0, int k1, uint8_t *d);

/* I2_S: 16 rows x one 32-byte block -> 8 vectors Y_j (dword r = bytes 4j..4j+3
 * of row r's block), then code plane g of Y_j is the k4 32b + 8g + j. */
static void i2s_decode(const tern_matrix *w, int r0, int row1, int k0, int k1, uint8_t *d)
{
	const __m512i m3 = _mm512_set1_epi8(3);
	const __m512i lo_idx = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
	const __m512i hi_idx = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
	const int b0 = k0 / 128, b1 = k1 / 128;
	for (int v = 0; v < 4; v++) {
		const uint8_t *rp[16];
		i8g_i2s_rows(w, r0 + 16 * v, 16, row1, k0, k1, rp);
		for (int b = b0; b < b1; b++) {
			__m512i z[8];
			for (int i = 0; i < 8; i++)
				z[i] = _mm512_inserti64x4(
				    _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(rp[i] + 32 * b))),
				    _mm256_loadu_si256((const __m256i *)(rp[i + 8] + 32 * b)), 1);
			__m512i u[2][4];
			for (int h = 0; h < 2; h++) {
				const __m512i l01 = _mm512_unpacklo_epi32(z[4 * h], z[4 * h + 1]);
				const __m512i h01 = _mm512_unpackhi_epi32(z[4 * h], z[4 * h + 1]);
				const __m512i l23 = _mm512_unpacklo_epi32(z[4 * h + 2], z[4 * h + 3]);
				const __m512i h23 = _mm512_unpackhi_epi32(z[4 * h + 2], z[4 * h + 3]);
				u[h][0] = _mm512_unpacklo_epi64(l01, l23);
				u[h][1] = _mm512_unpackhi_epi64(l01, l23);
				u[h][2] = _mm512_unpacklo_epi64(h01, h23);
				u[h][3] = _mm512_unpackhi_epi64(h01, h23);
			}
			uint8_t *db = d + (size_t)(b - b0) * 32 * I8G_K4_BYTES + 64 * (size_t)v;
			for (int j = 0; j < 8; j++) {
				const __m512i y = _mm512_permutex2var_epi64(u[0][j % 4], j < 4 ? lo_idx : hi_idx,
									    u[1][j % 4]);
				_mm512_store_si512((void *)(db + (size_t)(0 + j) * I8G_K4_BYTES),
						   _mm512_and_si512(_mm512_srli_epi16(y, 6), m3));
				_mm512_store_si512((void *)(db + (size_t)(8 + j) * I8G_K4_BYTES),
						   _mm512_and_si512(_mm512_srli_epi16(y, 4), m3));
				_mm512_store_si512((void *)(db + (size_t)(16 + j) * I8G_K4_BYTES),
						   _mm512_and_si512(_mm512_srli_epi16(y, 2), m3));
				_mm512_store_si512((void *)(db + (size_t)(24 + j) * I8G_K4_BYTES), _mm512_and_si512(y, m3));
			}
		}
	}
}

/* A 16-byte table in all four 128-bit lanes. */
static inline __m512i bcast16(const uint8_t *t)
{
	return _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(const void *)t));
}

/* Four byte planes (codes of 4 consecutive k, one byte per row) -> one k4 in
 * the interleaved row order (vector v, lane L, dword i = row 16L + 4v + i). */
static inline void interleave4(__m512i p0, __m512i p1, __m512i p2, __m512i p3, uint8_t *dk)
{
	const __m512i x01l = _mm512_unpacklo_epi8(p0, p1), x01h = _mm512_unpackhi_epi8(p0, p1);
	const __m512i x23l = _mm512_unpacklo_epi8(p2, p3), x23h = _mm512_unpackhi_epi8(p2, p3);
	_mm512_store_si512((void *)dk, _mm512_unpacklo_epi16(x01l, x23l));
	_mm512_store_si512((void *)(dk + 64), _mm512_unpackhi_epi16(x01l, x23l));
	_mm512_store_si512((void *)(dk + 128), _mm512_unpacklo_epi16(x01h, x23h));
	_mm512_store_si512((void *)(dk + 192), _mm512_unpackhi_epi16(x01h, x23h));
}

/* TL1: idx = 3*w0 + w1 + 4 = 3*c0 + c1, so c0 = idx / 3, c1 = idx % 3. */
static inline __attribute__((always_inline)) void tl1_quad(const uint8_t *src, uint8_t *dk)
{
	const __m512i m15 = _mm512_set1_epi8(15);
	const __m512i t0 = bcast16(tern_tl1_codes[0]);
	const __m512i t1 = bcast16(tern_tl1_codes[1]);
	const __m512i v = _mm512_loadu_si512((const void *)src);
	const __m512i i0 = _mm512_and_si512(v, m15), i1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), m15);
	interleave4(_mm512_shuffle_epi8(t0, i0), _mm512_shuffle_epi8(t1, i0), _mm512_shuffle_epi8(t0, i1),
		    _mm512_shuffle_epi8(t1, i1), dk);
}

/* TL2: |v| = 9*w0 + 3*w1 + w2 >= 0, so |v| + 13 = 9*c0 + 3*c1 + c2; a negative
 * group is the negated triple, codes 2 - c. The sign records hold rows in the
 * unpack order of the LUT kernels (LAYOUTS.md); a byte shuffle makes them
 * row-order 64-bit masks. */
static inline void tl2_planes(const uint8_t *idx, const uint8_t *rec, __m512i p[6])
{
	const __m512i m15 = _mm512_set1_epi8(15), two = _mm512_set1_epi8(2);
	const __m512i c0 = bcast16(tern_tl2_codes[0]);
	const __m512i c1 = bcast16(tern_tl2_codes[1]);
	const __m512i c2 = bcast16(tern_tl2_codes[2]);
	const __m128i order = _mm_setr_epi8(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
	const __m128i s = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)rec), order);
	const __mmask64 neg0 = _cvtu64_mask64((uint64_t)_mm_cvtsi128_si64(s));
	const __mmask64 neg1 = _cvtu64_mask64((uint64_t)_mm_extract_epi64(s, 1));
	const __m512i v = _mm512_loadu_si512((const void *)idx);
	const __m512i i0 = _mm512_and_si512(v, m15), i1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), m15);
	__m512i x;
	x = _mm512_shuffle_epi8(c0, i0), p[0] = _mm512_mask_sub_epi8(x, neg0, two, x);
	x = _mm512_shuffle_epi8(c1, i0), p[1] = _mm512_mask_sub_epi8(x, neg0, two, x);
	x = _mm512_shuffle_epi8(c2, i0), p[2] = _mm512_mask_sub_epi8(x, neg0, two, x);
	x = _mm512_shuffle_epi8(c0, i1), p[3] = _mm512_mask_sub_epi8(x, neg1, two, x);
	x = _mm512_shuffle_epi8(c1, i1), p[4] = _mm512_mask_sub_epi8(x, neg1, two, x);
	x = _mm512_shuffle_epi8(c2, i1), p[5] = _mm512_mask_sub_epi8(x, neg1, two, x);
}

static inline __attribute__((always_inline)) void tl2_pairs(const uint8_t *idx, const uint8_t *rec, int n,
							    uint8_t *dk)
{
	__m512i a[6], b[6];
	tl2_planes(idx, rec, a);
	interleave4(a[0], a[1], a[2], a[3], dk);
	if (n == 2) {
		tl2_planes(idx + 64, rec + 16, b);
		interleave4(a[4], a[5], b[0], b[1], dk + I8G_K4_BYTES);
		interleave4(b[2], b[3], b[4], b[5], dk + 2 * I8G_K4_BYTES);
	} else {
		const __m512i z = _mm512_setzero_si512();
		interleave4(a[4], a[5], z, z, dk + I8G_K4_BYTES);
	}
}

I8G_TL_DECODERS(tl1_quad, tl2_pairs)

/* ---- the driver --------------------------------------------------------------- */

/* 128-bit lanes of four interleaved-order vectors back to row order (a 4 x 4
 * transpose of lanes): lane L of out[v'] = lane v' of in[L]... see above. */
static inline void unpermute(__m512i x[4])
{
	const __m512i t0 = _mm512_shuffle_i32x4(x[0], x[1], 0x44), t1 = _mm512_shuffle_i32x4(x[2], x[3], 0x44);
	const __m512i t2 = _mm512_shuffle_i32x4(x[0], x[1], 0xee), t3 = _mm512_shuffle_i32x4(x[2], x[3], 0xee);
	x[0] = _mm512_shuffle_i32x4(t0, t1, 0x88);
	x[1] = _mm512_shuffle_i32x4(t0, t1, 0xdd);
	x[2] = _mm512_shuffle_i32x4(t2, t3, 0x88);
	x[3] = _mm512_shuffle_i32x4(t2, t3, 0xdd);
}

static void vg_drive(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1, int kc,
		     vg_decode_fn decode, int interleaved)
{
	_Alignas(64) uint8_t dec[(VG_KC_MAX / 4 + 1) * I8G_K4_BYTES];
	_Alignas(64) int32_t acc[VG_TOKENS * I8G_ROWS];
	const int k_pad = w->k_pad;
	for (int j0 = 0; j0 < a->n; j0 += VG_TOKENS) {
		const int nj = a->n - j0 < VG_TOKENS ? a->n - j0 : VG_TOKENS;
		_Alignas(64) int8_t qtail[VG_TOKENS * 4];
		i8g_qtail(a, k_pad, j0, nj, qtail, sizeof qtail);
		for (int r = row0; r < row1; r += I8G_ROWS) {
			for (int k0 = 0; k0 < k_pad; k0 += kc) {
				const int k1 = k_pad - k0 < kc ? k_pad : k0 + kc;
				decode(w, r, row1, k0, k1, dec);
				const int nk4 = (k1 - k0) / 4;
				const int part = (k1 - k0) % 4 != 0;
				/* Balanced token blocks (8 = 4 + 4, not 6 + 2): a small block
				 * loads the decoded weights for few vpdpbusd. */
				const int blocks = (nj + VG_NT - 1) / VG_NT;
				for (int t = 0, bi = 0; t < nj; bi++) {
					const int nt = (nj - t + (blocks - bi) - 1) / (blocks - bi);
					int32_t *at = acc + (size_t)t * I8G_ROWS;
					vg_pass_n(dec, nk4, a->q + (size_t)(j0 + t) * (size_t)k_pad + (size_t)k0,
						  (size_t)k_pad, nt, at, k0 == 0);
					if (part)
						vg_pass_n(dec + (size_t)nk4 * I8G_K4_BYTES, 1, qtail + 4 * t, 4, nt, at,
							  k0 == 0 && nk4 == 0);
					t += nt;
				}
			}
			const int rows = row1 - r < I8G_ROWS ? row1 - r : I8G_ROWS;
			for (int t = 0; t < nj; t++) {
				__m512i x[4];
				for (int v = 0; v < 4; v++)
					x[v] = _mm512_load_si512((const void *)(acc + (size_t)t * I8G_ROWS + 16 * v));
				if (interleaved)
					unpermute(x);
				const __m512i s = _mm512_set1_epi32(a->sum[j0 + t]);
				int32_t *dt = dot + (size_t)(j0 + t) * (size_t)ldd + (size_t)(r - row0);
				for (int v = 0; v < 4 && 16 * v < rows; v++) {
					const int left = rows - 16 * v;
					const __mmask16 m = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
					_mm512_mask_storeu_epi32(dt + 16 * v, m, _mm512_sub_epi32(x[v], s));
				}
			}
		}
	}
}

I8G_GEMMS(vnni, vg_drive, VG_KC_I2S, VG_KC_TL1, VG_KC_TL2)
