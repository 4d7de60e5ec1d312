/* float-avx512.c: the float kernels (tern-float.h) with AVX-512F, equal to
 * kernels/ref/float-ref.c bit for bit. The dot product keeps four 16-lane
 * FMA chains = the 64 lanes of the reference order; with several vectors it
 * converts each 64 elements of a row once for up to four of them, each
 * vector keeping its own chains, so a vector's result does not depend on
 * how many others share the pass. Compiled with -mavx512f (and the AVX2
 * file's flags) -ffp-contract=off -fno-fast-math. */
#include <immintrin.h>
#include <string.h>

#include "kern-float.h"
#include "kern-internal.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* max_ps(v, m) is exactly "v > m ? v : m" per lane (NaN or equal: m) */
TERN_FLOAT_ROWWISE(avx512, __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_mul_ps, _mm512_set1_ps,
		   _mm512_max_ps)

/* Pairs j .. j+15 of head xh. */
static ALWAYS_INLINE void rope_step(float *xh, int half, const float *cs_pos, int j)
{
	const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
	const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
	const __m512 t0 = _mm512_loadu_ps(cs_pos + 2 * j), t1 = _mm512_loadu_ps(cs_pos + 2 * j + 16);
	const __m512 c = _mm512_permutex2var_ps(t0, even, t1), s = _mm512_permutex2var_ps(t0, odd, t1);
	const __m512 x0 = _mm512_loadu_ps(xh + j), x1 = _mm512_loadu_ps(xh + j + half);
	_mm512_storeu_ps(xh + j, _mm512_sub_ps(_mm512_mul_ps(x0, c), _mm512_mul_ps(x1, s)));
	_mm512_storeu_ps(xh + j + half, _mm512_add_ps(_mm512_mul_ps(x0, s), _mm512_mul_ps(x1, c)));
}

TERN_FLOAT_ROPE(avx512, 16, rope_step)

static ALWAYS_INLINE __m512 ld16(const uint8_t *row, tern_dot_type t, int i)
{
	switch (t) {
	case TERN_DOT_F16:
		return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(row + 2 * (size_t)i)));
	case TERN_DOT_BF16:
		return _mm512_castsi512_ps(_mm512_slli_epi32(
		    _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(row + 2 * (size_t)i))),
		    16));
	default: return _mm512_loadu_ps((const float *)(const void *)(row + 4 * (size_t)i));
	}
}

/* One row against one vector. */
static ALWAYS_INLINE float dot1(const uint8_t *row, tern_dot_type t, const float *x, int n)
{
	__m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	const int n64 = n - n % TERN_DOT_LANES;
	for (int i = 0; i < n64; i += TERN_DOT_LANES) {
		a0 = _mm512_fmadd_ps(ld16(row, t, i), _mm512_loadu_ps(x + i), a0);
		a1 = _mm512_fmadd_ps(ld16(row, t, i + 16), _mm512_loadu_ps(x + i + 16), a1);
		a2 = _mm512_fmadd_ps(ld16(row, t, i + 32), _mm512_loadu_ps(x + i + 32), a2);
		a3 = _mm512_fmadd_ps(ld16(row, t, i + 48), _mm512_loadu_ps(x + i + 48), a3);
	}
	float l[TERN_DOT_LANES];
	_mm512_storeu_ps(l, a0);
	_mm512_storeu_ps(l + 16, a1);
	_mm512_storeu_ps(l + 32, a2);
	_mm512_storeu_ps(l + 48, a3);
	return tern_dot_finish(l, row, t, x, n64, n);
}

/* One row against nt <= 4 vectors (xs[0..nt)): the row is loaded and
 * converted once per 64 elements for all of them. */
static ALWAYS_INLINE void dot4(const uint8_t *row, tern_dot_type t, const float *const *xs, int nt, int n,
			       float *o)
{
	__m512 a[4][4];
	for (int v = 0; v < 4; v++)
		for (int k = 0; k < 4; k++)
			a[v][k] = _mm512_setzero_ps();
	const int n64 = n - n % TERN_DOT_LANES;
	for (int i = 0; i < n64; i += TERN_DOT_LANES) {
		const __m512 w0 = ld16(row, t, i), w1 = ld16(row, t, i + 16);
		const __m512 w2 = ld16(row, t, i + 32), w3 = ld16(row, t, i + 48);
		for (int v = 0; v < nt; v++) {
			a[v][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xs[v] + i), a[v][0]);
			a[v][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xs[v] + i + 16), a[v][1]);
			a[v][2] = _mm512_fmadd_ps(w2, _mm512_loadu_ps(xs[v] + i + 32), a[v][2]);
			a[v][3] = _mm512_fmadd_ps(w3, _mm512_loadu_ps(xs[v] + i + 48), a[v][3]);
		}
	}
	for (int v = 0; v < nt; v++) {
		float l[TERN_DOT_LANES];
		for (int k = 0; k < 4; k++)
			_mm512_storeu_ps(l + 16 * k, a[v][k]);
		o[v] = tern_dot_finish(l, row, t, xs[v], n64, n);
	}
}

static ALWAYS_INLINE void rows_t(const tern_dot_args *a, tern_dot_type t, int r0, int r1)
{
	for (int r = r0; r < r1; r++) {
		const uint8_t *row = tern_dot_row(a, r);
		if (a->nx == 1) {
			tern_dot_store(a, 0, r, dot1(row, t, a->x, a->n));
			continue;
		}
		for (int j0 = 0; j0 < a->nx; j0 += 4) {
			const int nt = a->nx - j0 < 4 ? a->nx - j0 : 4;
			const float *xs[4];
			float o[4];
			for (int v = 0; v < nt; v++)
				xs[v] = a->x + (size_t)(j0 + v) * a->ldx;
			dot4(row, t, xs, nt, a->n, o);
			for (int v = 0; v < nt; v++)
				tern_dot_store(a, j0 + v, r, o[v]);
		}
	}
}

static void dot_rows_avx512(const tern_dot_args *a, int r0, int r1)
{
	TERN_DOT_BY_TYPE(rows_t, a, r0, r1);
}

/* ---- quantized head: a whole 16-row group per zmm (row k = lane k) ---- */

#define QX_TILE 8 /* activation rows per pass over a group (accumulators in L1) */

static ALWAYS_INLINE __m512i bcast4(const int8_t *p)
{
	int32_t v;
	memcpy(&v, p, 4);
	return _mm512_set1_epi32(v);
}

/* A tile's codes in element-chunk order: w[c] = elements 4c..4c+3 of all 16
 * rows. vnni: Q8 as q + 128 (u8, for vpdpbusd), else Q8 as q; Q4 as q + 8. */
static ALWAYS_INLINE void qh_load(tern_qh_type t, int vnni, const uint8_t *tile, __m512i *w)
{
	if (t == TERN_QH_Q8) {
		const __m512i flip = _mm512_set1_epi8((char)0x80);
		for (int c = 0; c < 8; c++) {
			w[c] = _mm512_loadu_si512((const void *)(tile + 64 * c));
			if (vnni)
				w[c] = _mm512_xor_si512(w[c], flip);
		}
	} else {
		const __m512i m = _mm512_set1_epi8(0x0F);
		for (int c = 0; c < 4; c++) {
			const __m512i v = _mm512_loadu_si512((const void *)(tile + 64 * c));
			w[c] = _mm512_and_si512(v, m);
			w[c + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m);
		}
	}
}

/* The 16 rows' exact block sums without VNNI: Q8 as |q_w| * (q_x with q_w's
 * sign) in maddubs' int16 pairs (2 * 127^2 fits), Q4 codes times q_x with
 * eight chunks' pairs summed in int16 (8 * 2 * 15 * 127 fits) minus 8 * xs. */
static ALWAYS_INLINE __m512i qh_isum_bw(tern_qh_type t, const __m512i *w, const int8_t *xb, int32_t xs)
{
	const __m512i ones = _mm512_set1_epi16(1), zero = _mm512_setzero_si512();
	if (t == TERN_QH_Q8) {
		__m512i s = zero;
		for (int c = 0; c < 8; c++) {
			const __m512i x = bcast4(xb + 4 * c);
			const __m512i sx = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w[c]), zero, x);
			s = _mm512_add_epi32(s, _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(w[c]), sx), ones));
		}
		return s;
	}
	__m512i p = zero;
	for (int c = 0; c < 8; c++)
		p = _mm512_add_epi16(p, _mm512_maddubs_epi16(w[c], bcast4(xb + 4 * c)));
	return _mm512_sub_epi32(_mm512_madd_epi16(p, ones), _mm512_set1_epi32(8 * xs));
}

/* The float steps of one block for one activation row (tern-float.h order). */
static ALWAYS_INLINE __m512 qh_step(__m512 acc, __m512i is, __m512 dw, float dx)
{
	return _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(dw, _mm512_set1_ps(dx))));
}

static ALWAYS_INLINE void qh_store(const tern_qdot_args *a, int j, int g, __m512 acc)
{
	if (tern_qh_full(a, g)) {
		_mm512_storeu_ps(a->out + (size_t)j * a->ldo + (size_t)g * TERN_QH_GROUP, acc);
	} else {
		float l[TERN_QH_GROUP];
		_mm512_storeu_ps(l, acc);
		tern_qh_store(a, j, g, 0, l, TERN_QH_GROUP);
	}
}

/* Groups [g0, g1) with the block sums of isum(t, w, xb, xs); the codes of
 * each tile are decoded once for up to QX_TILE activation rows (one row,
 * the decode step: its accumulator stays in a register). */
#define QH_GROUPS(a, t, vnni, isum, g0, g1)                                                                    \
	do {                                                                                                   \
		const int nb_ = tern_qh_blocks((a)->n);                                                        \
		for (int g = (g0); g < (g1) && (a)->nx == 1; g++) {                                            \
			const uint8_t *grp = tern_qh_group((a), g);                                            \
			__m512 acc1 = _mm512_setzero_ps();                                                     \
			for (int b = 0; b < nb_; b++) {                                                        \
				__m512i w[8];                                                                  \
				qh_load((t), (vnni), tern_qh_quants((t), grp, b), w);                          \
				const __m512 dw = _mm512_cvtph_ps(                                             \
				    _mm256_loadu_si256((const __m256i *)(const void *)tern_qh_scales((t), grp, (a)->n, b))); \
				acc1 = qh_step(acc1, isum((t), w, (a)->xq + (size_t)b * TERN_QH_BLOCK, (a)->xs[b]), dw, \
					       (a)->xd[b]);                                                    \
			}                                                                                      \
			qh_store((a), 0, g, acc1);                                                             \
		}                                                                                              \
		for (int g = (g0); g < (g1) && (a)->nx != 1; g++) {                                            \
			for (int j0 = 0; j0 < (a)->nx; j0 += QX_TILE) {                                        \
				const int nt = (a)->nx - j0 < QX_TILE ? (a)->nx - j0 : QX_TILE;                \
				__m512 acc[QX_TILE];                                                           \
				for (int v = 0; v < QX_TILE; v++)                                              \
					acc[v] = _mm512_setzero_ps();                                          \
				for (int b = 0; b < nb_; b++) {                                                \
					const uint8_t *tile = tern_qh_quants((t), tern_qh_group((a), g), b);   \
					__m512i w[8];                                                          \
					qh_load((t), (vnni), tile, w);                                         \
					const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(                  \
					    (const __m256i *)(const void *)tern_qh_scales((t), tern_qh_group((a), g), (a)->n, b))); \
					for (int v = 0; v < nt; v++) {                                         \
						const size_t xo = (size_t)(j0 + v) * (size_t)nb_ + (size_t)b;  \
						acc[v] = qh_step(acc[v], isum((t), w, (a)->xq + xo * TERN_QH_BLOCK, (a)->xs[xo]), \
								 dw, (a)->xd[xo]);                     \
					}                                                                      \
				}                                                                              \
				for (int v = 0; v < nt; v++)                                                   \
					qh_store((a), j0 + v, g, acc[v]);                                      \
			}                                                                                      \
		}                                                                                              \
	} while (0)

static void qdot_bw(const tern_qdot_args *a, int g0, int g1)
{
	if (a->type == TERN_QH_Q8)
		QH_GROUPS(a, TERN_QH_Q8, 0, qh_isum_bw, g0, g1);
	else
		QH_GROUPS(a, TERN_QH_Q4, 0, qh_isum_bw, g0, g1);
}

TERN_TARGET_PUSH("avx512vnni")
/* With VNNI: vpdpbusd of u8 codes and s8 activations, started at minus the
 * codes' offset times the block sum of the activations (Q8: 128, Q4: 8). */
static ALWAYS_INLINE __m512i qh_isum_vnni(tern_qh_type t, const __m512i *w, const int8_t *xb, int32_t xs)
{
	/* two chains of four: half the latency of one of eight */
	__m512i s0 = _mm512_set1_epi32(-(t == TERN_QH_Q8 ? 128 : 8) * xs), s1 = _mm512_setzero_si512();
	for (int c = 0; c < 8; c += 2) {
		s0 = _mm512_dpbusd_epi32(s0, w[c], bcast4(xb + 4 * c));
		s1 = _mm512_dpbusd_epi32(s1, w[c + 1], bcast4(xb + 4 * c + 4));
	}
	return _mm512_add_epi32(s0, s1);
}

/* Two groups (32 rows) against nt <= QH2_ROWS activation rows: every
 * broadcast of four activation bytes feeds two vpdpbusd (one per group), so
 * a block costs one load per two multiply-add instructions instead of one per
 * one; each (row, group) keeps its one chain of block steps in the order of
 * tern-float.h. */
#define QH2_ROWS 4

static ALWAYS_INLINE void qh2_pass(const tern_qdot_args *a, tern_qh_type t, int g, int j0, const int nt, int pass,
				   int npass, int g_end)
{
	const int nb = tern_qh_blocks(a->n);
	const int32_t off = t == TERN_QH_Q8 ? -128 : -8;
	const uint8_t *p0 = tern_qh_group(a, g), *p1 = tern_qh_group(a, g + 1);
	const size_t qb = tern_qh_quant_bytes(t);
	/* the next pair, streamed in while this one is computed: its tiles
	 * spread evenly over the npass passes of this pair */
	const uint8_t *n0 = g + 2 < g_end ? tern_qh_group(a, g + 2) : NULL;
	const uint8_t *n1 = g + 3 < g_end ? tern_qh_group(a, g + 3) : n0;
	__m512 acc0[QH2_ROWS], acc1[QH2_ROWS];
	for (int v = 0; v < nt; v++)
		acc0[v] = acc1[v] = _mm512_setzero_ps();
	for (int b = 0; b < nb; b++) {
		const uint8_t *q0 = tern_qh_quants(t, p0, b), *q1 = tern_qh_quants(t, p1, b);
		const int l = pass * nb + b;
		if (n0 && l % npass == 0) {
			const int pb = l / npass;
			const uint8_t *t0 = tern_qh_quants(t, n0, pb), *t1 = tern_qh_quants(t, n1, pb);
			for (size_t o = 0; o < qb; o += 64) {
				_mm_prefetch((const char *)t0 + o, _MM_HINT_T0);
				_mm_prefetch((const char *)t1 + o, _MM_HINT_T0);
			}
			_mm_prefetch((const char *)tern_qh_scales(t, n0, a->n, pb), _MM_HINT_T0);
			_mm_prefetch((const char *)tern_qh_scales(t, n1, a->n, pb), _MM_HINT_T0);
		}
		__m512i w0[8], w1[8];
		qh_load(t, 1, q0, w0);
		qh_load(t, 1, q1, w1);
		const __m512 dw0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)tern_qh_scales(t, p0, a->n, b)));
		const __m512 dw1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)tern_qh_scales(t, p1, a->n, b)));
		for (int v = 0; v < nt; v++) {
			const size_t xo = (size_t)(j0 + v) * (size_t)nb + (size_t)b;
			const int8_t *xb = a->xq + xo * TERN_QH_BLOCK;
			__m512i s0 = _mm512_set1_epi32(off * a->xs[xo]), s1 = s0;
			for (int c = 0; c < 8; c++) {
				const __m512i x = bcast4(xb + 4 * c);
				s0 = _mm512_dpbusd_epi32(s0, w0[c], x);
				s1 = _mm512_dpbusd_epi32(s1, w1[c], x);
			}
			const __m512 dx = _mm512_set1_ps(a->xd[xo]);
			acc0[v] = _mm512_add_ps(acc0[v], _mm512_mul_ps(_mm512_cvtepi32_ps(s0), _mm512_mul_ps(dw0, dx)));
			acc1[v] = _mm512_add_ps(acc1[v], _mm512_mul_ps(_mm512_cvtepi32_ps(s1), _mm512_mul_ps(dw1, dx)));
		}
	}
	for (int v = 0; v < nt; v++) {
		qh_store(a, j0 + v, g, acc0[v]);
		qh_store(a, j0 + v, g + 1, acc1[v]);
	}
}

static ALWAYS_INLINE void qh2_groups(const tern_qdot_args *a, tern_qh_type t, int g0, int g1)
{
	int gp = g0;
	for (; gp + 1 < g1; gp += 2)
		for (int j0 = 0, np = (a->nx + QH2_ROWS - 1) / QH2_ROWS; j0 < a->nx; j0 += QH2_ROWS) {
			const int nt = a->nx - j0 < QH2_ROWS ? a->nx - j0 : QH2_ROWS, k = j0 / QH2_ROWS;
			switch (nt) {
			case 1: qh2_pass(a, t, gp, j0, 1, k, np, g1); break;
			case 2: qh2_pass(a, t, gp, j0, 2, k, np, g1); break;
			case 3: qh2_pass(a, t, gp, j0, 3, k, np, g1); break;
			default: qh2_pass(a, t, gp, j0, QH2_ROWS, k, np, g1); break;
			}
		}
	if (gp < g1)
		QH_GROUPS(a, t, 1, qh_isum_vnni, gp, g1);
}

static void qdot_vnni(const tern_qdot_args *a, int g0, int g1)
{
	if (a->nx == 1) {
		if (a->type == TERN_QH_Q8)
			QH_GROUPS(a, TERN_QH_Q8, 1, qh_isum_vnni, g0, g1);
		else
			QH_GROUPS(a, TERN_QH_Q4, 1, qh_isum_vnni, g0, g1);
	} else if (a->type == TERN_QH_Q8) {
		qh2_groups(a, TERN_QH_Q8, g0, g1);
	} else {
		qh2_groups(a, TERN_QH_Q4, g0, g1);
	}
}
TERN_TARGET_POP()

static void qdot_groups_avx512(const tern_qdot_args *a, int g0, int g1)
{
	if (tern_kern_avx512_vnni)
		qdot_vnni(a, g0, g1);
	else
		qdot_bw(a, g0, g1);
}

TERN_FLOAT_SWIGLU(avx512)
TERN_FLOAT_RELU2(avx512)

const tern_float_kernels tern_float_avx512 = {TERN_ISA_AVX512, rmsnorm_avx512, softmax_avx512, rope_avx512,
					      dot_rows_avx512, qdot_groups_avx512, swiglu_avx512,
					    relu2_avx512};
