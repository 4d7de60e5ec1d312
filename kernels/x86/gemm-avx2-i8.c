/* gemm-avx2-i8.c: the decode-once int8 GEMM for AVX2 CPUs, I2_S, TL1 and
 * TL2 (batches; the AVX2 kernels in gemm-avx2.c call it from
 * tern_kern_avx2_gemm_min[packing] tokens up). Compiled with -mavx2 only; the
 * dot-product variants that need more live in functions with a target
 * attribute and run only where cpuid reports the feature.
 *
 * Each weight tile (64 rows x a chunk of K) is decoded once into int8 codes
 * c = w + 1 in {0, 1, 2}: entry k4 of the chunk is 8 ymm, each 8 rows x 4
 * consecutive k (one dword per row). Every token of the batch then runs over
 * the decoded chunk with its 4 activation bytes broadcast, and at the end
 * dot = acc - sum(q), the identity of the I2_S kernels. Codes past k_pad
 * (TL2's last k4 when k_pad % 4 == 2) are 0; the activations of that k4 come
 * from a zero-padded copy so nothing is read past a row.
 *
 * The product over a decoded chunk, one of three variants (tern_kern_avx2_dot):
 * - AVX-VNNI (VEX vpdpbusd ymm): acc += sum of 4 c*q in int32, exact.
 * - maddubs: vpmaddubsw gives c0*q0 + c1*q1 per int16 lane. Bound, with
 *   c in {0, 1, 2} (unsigned) and q in [-128, 127] (tern_quant_row clamps to
 *   -128..127): each lane is in [2*2*(-128), 2*2*127] = [-512, 508], so the
 *   instruction never saturates (int16 saturates outside [-32768, 32767]).
 *   Lanes are summed in int16 over at most I8_RUN = 32 k4: |sum| <= 32 * 512
 *   = 16384 <= 32767, exact; then vpmaddwd by ones adds a row's two lanes into
 *   int32 (|dot| <= 128 * K).
 * - evex: the AVX-VNNI code compiled for AVX512_VNNI + VL (EVEX vpdpbusd
 *   ymm, the same operation). Not chosen by dispatch: tests run it on CPUs
 *   that have AVX-512 VNNI but no AVX-VNNI, to cover the VNNI code here.
 *
 * Register blocking: 16 rows (2 ymm) x up to 6 tokens = 12 accumulators. The
 * decoded chunk (<= 24 KiB; a 16-row slice of it <= 6 KiB) and the int32 sums
 * of up to 64 tokens (16 KiB) stay in L1/L2 while every token block passes.
 * Row order inside a decoded k4: I2_S (an 8 x 8 dword transpose) is natural,
 * slot s = row s; TL1/TL2 interleave byte planes (one byte per row) with
 * in-lane unpacks, which gives slot 32h + 8u + 4L + i = row 32h + 16L + 4u + i
 * (half h, vector u, 128-bit lane L, dword i); the store maps slots to rows.
 * Layouts: kernels/LAYOUTS.md. */
#include "kern-internal.h"
#include "i8-gemm.h"

#include <immintrin.h>
#include <string.h>

int tern_kern_avx2_dot = TERN_AVX2_DOT_MADDUBS;
int tern_kern_avx2_gemm_min[TERN_PACK_COUNT] = {TERN_GEMM_AVX2_MIN_I2S, TERN_GEMM_AVX2_MIN_TL1,
						TERN_GEMM_AVX2_MIN_TL2};

#ifndef I8_NT
#define I8_NT 6 /* tokens per pass */
#endif
#ifndef I8_RV
#define I8_RV 2 /* ymm of rows per pass (8 rows each): 12 accumulators */
#endif
#define I8_TOKENS 64    /* tokens whose int32 sums live in the scratch at once */
#define I8_RUN 32       /* k4 per int16 run of the maddubs variant (bound above) */
#define I8_KC_I2S 256   /* K per decoded chunk (2 I2_S blocks) */
#define I8_KC_TL1 256
#define I8_KC_TL2 384 /* 2 TL2 blocks of 32 pairs */
#define I8_KC_MAX 384

/* ---- the product over one decoded chunk --------------------------------------
 * d: the chunk at the 16-row group's first ymm (k4 stride I8G_K4_BYTES); q: the
 * first token's activations at the chunk's k0 (token stride ldq); acc[t][16]
 * int32 sums of the group (first: overwrite instead of add). */

static inline __attribute__((always_inline)) __m256i bcast4(const int8_t *p)
{
	int32_t x;
	memcpy(&x, p, 4);
	return _mm256_set1_epi32(x);
}

/* c += maddubs(w, b) in place. As intrinsics GCC 12 copied every int16
 * accumulator through a second register and spilled one per k4 (measured:
 * 250 GOPS, against ~450 for vpmaddubsw alone); the tied asm operand keeps
 * each accumulator in one register. */
static inline __attribute__((always_inline)) void maddubs_acc(__m256i *c, __m256i w, __m256i b)
{
	__m256i t;
	__asm__("vpmaddubsw %[b], %[w], %[t]\n\tvpaddw %[t], %[c], %[c]" : [c] "+x"(*c), [t] "=&x"(t) : [w] "x"(w), [b] "x"(b));
}

/* Every loop over the accumulators is unrolled in full so they stay in registers. */
static inline __attribute__((always_inline)) void pass_maddubs(const uint8_t *d, int nk4, const int8_t *q,
							       size_t ldq, const int nt, int32_t *acc, int first)
{
	const __m256i ones = _mm256_set1_epi16(1);
	for (int k0 = 0; k0 < nk4; k0 += I8_RUN) {
		const int k1 = nk4 - k0 < I8_RUN ? nk4 : k0 + I8_RUN;
		__m256i c[I8_NT][I8_RV];
#pragma GCC unroll 8
		for (int t = 0; t < nt; t++)
#pragma GCC unroll 4
			for (int v = 0; v < I8_RV; v++)
				c[t][v] = _mm256_setzero_si256();
		for (int k4 = k0; k4 < k1; k4++) {
			const uint8_t *dk = d + (size_t)k4 * I8G_K4_BYTES;
			__m256i wv[I8_RV];
#pragma GCC unroll 4
			for (int v = 0; v < I8_RV; v++)
				wv[v] = _mm256_load_si256((const __m256i *)(dk + 32 * v));
#pragma GCC unroll 8
			for (int t = 0; t < nt; t++) {
				const __m256i b = bcast4(q + (size_t)t * ldq + 4 * (size_t)k4);
#pragma GCC unroll 4
				for (int v = 0; v < I8_RV; v++)
					maddubs_acc(&c[t][v], wv[v], b);
			}
		}
#pragma GCC unroll 8
		for (int t = 0; t < nt; t++)
#pragma GCC unroll 4
			for (int v = 0; v < I8_RV; v++) {
				__m256i *p = (__m256i *)(acc + t * I8G_ROWS + 8 * v);
				const __m256i s = _mm256_madd_epi16(c[t][v], ones);
				_mm256_store_si256(p, first && k0 == 0 ? s : _mm256_add_epi32(_mm256_load_si256(p), s));
			}
	}
}

/* nt tokens (1..I8_NT): one specialised body per count. */
#define PASS_N(name, body)                                                                                     \
	static void name(const uint8_t *d, int nk4, const int8_t *q, size_t ldq, int nt, int32_t *acc, int first) \
	{                                                                                                      \
		switch (nt) {                                                                                  \
		case 6: body(d, nk4, q, ldq, 6 < I8_NT ? 6 : I8_NT, acc, first); break;                        \
		case 5: body(d, nk4, q, ldq, 5 < I8_NT ? 5 : I8_NT, acc, first); break;                        \
		case 4: body(d, nk4, q, ldq, 4 < I8_NT ? 4 : I8_NT, acc, first); break;                        \
		case 3: body(d, nk4, q, ldq, 3 < I8_NT ? 3 : I8_NT, acc, first); break;                        \
		case 2: body(d, nk4, q, ldq, 2, acc, first); break;                                            \
		default: body(d, nk4, q, ldq, 1, acc, first); break;                                           \
		}                                                                                              \
	}

PASS_N(pass_n_maddubs, pass_maddubs)

TERN_TARGET_PUSH("avxvnni")
#define I8_PASS pass_vex
#define I8_DPBUSD _mm256_dpbusd_avx_epi32
#include "i8-pass-avx2.inc"
#undef I8_PASS
#undef I8_DPBUSD
PASS_N(pass_n_vex, pass_vex)
TERN_TARGET_POP()

TERN_TARGET_PUSH("avx512f,avx512vl,avx512vnni")
#define I8_PASS pass_evex
#define I8_DPBUSD _mm256_dpbusd_epi32
#include "i8-pass-avx2.inc"
#undef I8_PASS
#undef I8_DPBUSD
PASS_N(pass_n_evex, pass_evex)
TERN_TARGET_POP()

typedef void (*i8_pass_fn)(const uint8_t *d, int nk4, const int8_t *q, size_t ldq, int nt, int32_t *acc,
			   int first);

/* ---- decoders: rows [r0, r0+64) of w, k in [k0, k1), into d ----------------- */

typedef void (*i8_decode_fn)(const tern_matrix *w, int r0, int row1, int k0, int k1, uint8_t *d);

/* I2_S: 8 rows x one 32-byte block, transposed as 8 x 8 dwords -> y[j]
 * (dword i = bytes 4j..4j+3 of row i's block); code plane g of y[j] is the
 * k4 32b + 8g + j, rows in natural order. */
static void i2s_decode(const tern_matrix *w, int r0, int row1, int k0, int k1, uint8_t *d)
{
	const __m256i m3 = _mm256_set1_epi8(3);
	const int b0 = k0 / 128, b1 = k1 / 128;
	for (int v = 0; v < 8; v++) {
		const uint8_t *rp[8];
		i8g_i2s_rows(w, r0 + 8 * v, 8, row1, k0, k1, rp);
		for (int b = b0; b < b1; b++) {
			__m256i z[8], t[8], u[8], y[8];
			for (int i = 0; i < 8; i++)
				z[i] = _mm256_loadu_si256((const __m256i *)(rp[i] + 32 * b));
			for (int h = 0; h < 2; h++) {
				t[4 * h + 0] = _mm256_unpacklo_epi32(z[4 * h], z[4 * h + 1]);
				t[4 * h + 1] = _mm256_unpackhi_epi32(z[4 * h], z[4 * h + 1]);
				t[4 * h + 2] = _mm256_unpacklo_epi32(z[4 * h + 2], z[4 * h + 3]);
				t[4 * h + 3] = _mm256_unpackhi_epi32(z[4 * h + 2], z[4 * h + 3]);
				u[4 * h + 0] = _mm256_unpacklo_epi64(t[4 * h], t[4 * h + 2]);
				u[4 * h + 1] = _mm256_unpackhi_epi64(t[4 * h], t[4 * h + 2]);
				u[4 * h + 2] = _mm256_unpacklo_epi64(t[4 * h + 1], t[4 * h + 3]);
				u[4 * h + 3] = _mm256_unpackhi_epi64(t[4 * h + 1], t[4 * h + 3]);
			}
			for (int j = 0; j < 4; j++) {
				y[j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x20);
				y[4 + j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x31);
			}
			uint8_t *db = d + (size_t)(b - b0) * 32 * I8G_K4_BYTES + 32 * (size_t)v;
			for (int j = 0; j < 8; j++) {
				_mm256_store_si256((__m256i *)(db + (size_t)(0 + j) * I8G_K4_BYTES),
						   _mm256_and_si256(_mm256_srli_epi16(y[j], 6), m3));
				_mm256_store_si256((__m256i *)(db + (size_t)(8 + j) * I8G_K4_BYTES),
						   _mm256_and_si256(_mm256_srli_epi16(y[j], 4), m3));
				_mm256_store_si256((__m256i *)(db + (size_t)(16 + j) * I8G_K4_BYTES),
						   _mm256_and_si256(_mm256_srli_epi16(y[j], 2), m3));
				_mm256_store_si256((__m256i *)(db + (size_t)(24 + j) * I8G_K4_BYTES),
						   _mm256_and_si256(y[j], m3));
			}
		}
	}
}

/* A 16-byte table in both 128-bit lanes. */
static inline __m256i bcast16(const uint8_t *t)
{
	return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)t));
}

/* Four byte planes of half h (codes of 4 consecutive k, byte j = row 32h + j)
 * -> the 4 ymm of that half in one k4 (dk points at the k4). */
static inline void interleave4(__m256i p0, __m256i p1, __m256i p2, __m256i p3, uint8_t *dk)
{
	const __m256i x01l = _mm256_unpacklo_epi8(p0, p1), x01h = _mm256_unpackhi_epi8(p0, p1);
	const __m256i x23l = _mm256_unpacklo_epi8(p2, p3), x23h = _mm256_unpackhi_epi8(p2, p3);
	_mm256_store_si256((__m256i *)dk, _mm256_unpacklo_epi16(x01l, x23l));
	_mm256_store_si256((__m256i *)(dk + 32), _mm256_unpackhi_epi16(x01l, x23l));
	_mm256_store_si256((__m256i *)(dk + 64), _mm256_unpacklo_epi16(x01h, x23h));
	_mm256_store_si256((__m256i *)(dk + 96), _mm256_unpackhi_epi16(x01h, x23h));
}

/* TL1: idx = 3*w0 + w1 + 4 = 3*c0 + c1, so c0 = idx / 3, c1 = idx % 3. */
static inline __attribute__((always_inline)) void tl1_quad(const uint8_t *src, uint8_t *dk)
{
	const __m256i m15 = _mm256_set1_epi8(15);
	const __m256i t0 = bcast16(tern_tl1_codes[0]);
	const __m256i t1 = bcast16(tern_tl1_codes[1]);
	for (int h = 0; h < 2; h++) {
		const __m256i v = _mm256_loadu_si256((const __m256i *)(src + 32 * h));
		const __m256i i0 = _mm256_and_si256(v, m15);
		const __m256i i1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m15);
		interleave4(_mm256_shuffle_epi8(t0, i0), _mm256_shuffle_epi8(t1, i0), _mm256_shuffle_epi8(t0, i1),
			    _mm256_shuffle_epi8(t1, i1), dk + 128 * h);
	}
}

/* TL2: |v| = 9*w0 + 3*w1 + w2 >= 0, so |v| + 13 = 9*c0 + 3*c1 + c2; a negative
 * group is the negated triple, codes 2 - c = (c ^ 0xff) + 3 (mod 256), applied
 * with the byte mask m of the negative rows as (c ^ m) + (m & 3). The mask of
 * row 32h + 16L + b is bit b % 8 of record byte 2h + L (b < 8, mask A) or
 * 4 + 2h + L (b >= 8, mask B) (LAYOUTS.md): one byte shuffle of the record
 * and a bit test. */
static inline void tl2_planes(__m256i v, const uint8_t *rec, __m256i sel, __m256i p[6])
{
	const __m256i m15 = _mm256_set1_epi8(15), three = _mm256_set1_epi8(3);
	const __m256i bits = _mm256_set1_epi64x((long long)0x8040201008040201ull);
	const __m256i c0 = bcast16(tern_tl2_codes[0]);
	const __m256i c1 = bcast16(tern_tl2_codes[1]);
	const __m256i c2 = bcast16(tern_tl2_codes[2]);
	const __m256i i0 = _mm256_and_si256(v, m15), i1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m15);
	for (int e = 0; e < 2; e++) {
		int64_t r;
		memcpy(&r, rec + 8 * e, 8);
		const __m256i s = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi64x(r), sel), bits);
		const __m256i m = _mm256_cmpeq_epi8(s, bits), m3 = _mm256_and_si256(m, three);
		const __m256i ix = e ? i1 : i0;
		p[3 * e + 0] = _mm256_add_epi8(_mm256_xor_si256(_mm256_shuffle_epi8(c0, ix), m), m3);
		p[3 * e + 1] = _mm256_add_epi8(_mm256_xor_si256(_mm256_shuffle_epi8(c1, ix), m), m3);
		p[3 * e + 2] = _mm256_add_epi8(_mm256_xor_si256(_mm256_shuffle_epi8(c2, ix), m), m3);
	}
}

/* The record byte of each lane of half h (see tl2_planes). */
static inline __m256i tl2_sel(int h)
{
	const char a = (char)(2 * h), b = (char)(4 + 2 * h);
	return _mm256_setr_epi8(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b, (char)(a + 1), (char)(a + 1),
				(char)(a + 1), (char)(a + 1), (char)(a + 1), (char)(a + 1), (char)(a + 1), (char)(a + 1),
				(char)(b + 1), (char)(b + 1), (char)(b + 1), (char)(b + 1), (char)(b + 1), (char)(b + 1),
				(char)(b + 1), (char)(b + 1));
}

static inline __attribute__((always_inline)) void tl2_pairs(const uint8_t *idx, const uint8_t *rec, int n,
							    uint8_t *dk)
{
	for (int h = 0; h < 2; h++) {
		const __m256i sel = tl2_sel(h);
		__m256i a[6], b[6];
		tl2_planes(_mm256_loadu_si256((const __m256i *)(idx + 32 * h)), rec, sel, a);
		interleave4(a[0], a[1], a[2], a[3], dk + 128 * h);
		if (n == 2) {
			tl2_planes(_mm256_loadu_si256((const __m256i *)(idx + 64 + 32 * h)), rec + 16, sel, b);
			interleave4(a[4], a[5], b[0], b[1], dk + I8G_K4_BYTES + 128 * h);
			interleave4(b[2], b[3], b[4], b[5], dk + 2 * I8G_K4_BYTES + 128 * h);
		} else {
			const __m256i z = _mm256_setzero_si256();
			interleave4(a[4], a[5], z, z, dk + I8G_K4_BYTES + 128 * h);
		}
	}
}

I8G_TL_DECODERS(tl1_quad, tl2_pairs)

/* ---- the driver --------------------------------------------------------------- */

/* Row of slot s of a TL k4 (see the top of the file). */
static int tl_slot_row(int s)
{
	const int h = s / 32, u = (s / 8) % 4, lane = (s / 4) % 2, i = s % 4;
	return 32 * h + 16 * lane + 4 * u + i;
}

static void i8_drive(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1, int kc,
		     i8_decode_fn decode, int interleaved)
{
	_Alignas(64) uint8_t dec[(I8_KC_MAX / 4 + 1) * I8G_K4_BYTES];
	_Alignas(64) int32_t acc[I8_TOKENS * I8G_ROWS];
	uint8_t slot_row[I8G_ROWS];
	for (int s = 0; s < I8G_ROWS; s++)
		slot_row[s] = (uint8_t)(interleaved ? tl_slot_row(s) : s);
	const i8_pass_fn pass = tern_kern_avx2_dot == TERN_AVX2_DOT_VNNI   ? pass_n_vex
				: tern_kern_avx2_dot == TERN_AVX2_DOT_EVEX ? pass_n_evex
									   : pass_n_maddubs;
	const int k_pad = w->k_pad;
	for (int j0 = 0; j0 < a->n; j0 += I8_TOKENS) {
		const int nj = a->n - j0 < I8_TOKENS ? a->n - j0 : I8_TOKENS;
		_Alignas(64) int8_t qtail[I8_TOKENS * 4];
		i8g_qtail(a, k_pad, j0, nj, qtail, sizeof qtail);
		/* Balanced token blocks (8 = 4 + 4, not 6 + 2): a small block
		 * loads the decoded weights for few products. */
		const int blocks = (nj + I8_NT - 1) / I8_NT;
		for (int r = row0; r < row1; r += I8G_ROWS) {
			for (int k0 = 0; k0 < k_pad; k0 += kc) {
				const int k1 = k_pad - k0 < kc ? k_pad : k0 + kc;
				decode(w, r, row1, k0, k1, dec);
				const int nk4 = (k1 - k0) / 4;
				const int part = (k1 - k0) % 4 != 0;
				for (int g = 0; g < I8G_ROWS / (8 * I8_RV); g++) {
					const uint8_t *dg = dec + 32 * I8_RV * (size_t)g;
					for (int t = 0, bi = 0; t < nj; bi++) {
						const int nt = (nj - t + (blocks - bi) - 1) / (blocks - bi);
						int32_t *at = acc + (size_t)t * I8G_ROWS + 8 * I8_RV * (size_t)g;
						if (nk4)
							pass(dg, nk4, a->q + (size_t)(j0 + t) * (size_t)k_pad + (size_t)k0,
							     (size_t)k_pad, nt, at, k0 == 0);
						if (part)
							pass(dg + (size_t)nk4 * I8G_K4_BYTES, 1, qtail + 4 * t, 4, nt, at,
							     k0 == 0 && nk4 == 0);
						t += nt;
					}
				}
			}
			const int rows = row1 - r < I8G_ROWS ? row1 - r : I8G_ROWS;
			for (int t = 0; t < nj; t++) {
				const int32_t *at = acc + (size_t)t * I8G_ROWS;
				const int32_t s = a->sum[j0 + t];
				int32_t *dt = dot + (size_t)(j0 + t) * (size_t)ldd + (size_t)(r - row0);
				if (!interleaved && rows == I8G_ROWS) {
					const __m256i vs = _mm256_set1_epi32(s);
					for (int v = 0; v < 8; v++)
						_mm256_storeu_si256(
						    (__m256i *)(dt + 8 * v),
						    _mm256_sub_epi32(_mm256_load_si256((const __m256i *)(at + 8 * v)), vs));
				} else {
					for (int i = 0; i < I8G_ROWS; i++)
						if (slot_row[i] < rows)
							dt[slot_row[i]] = at[i] - s;
				}
			}
		}
	}
}

I8G_GEMMS(avx2, i8_drive, I8_KC_I2S, I8_KC_TL1, I8_KC_TL2)
