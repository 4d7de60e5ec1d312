/* test_kernels.c: the kernel consistency test. Every ISA available here x
 * every packing x GEMV/GEMM (batch 1..64) must produce the same int32 dot
 * products and floats as the scalar reference, bit for bit, over random and
 * adversarial matrices and many shapes; plus quantization by hand, pack/unpack
 * round trips, bitnet.cpp's I2_S layout built by hand from its spec, the int16
 * worst case at K = 32768, bad arguments, and TERN_KERNEL dispatch. */
#include "tern-gq.h"
#include "tern-half.h"
#include "tern-kernels.h"
#include "tern-test.h"
#include "test-util.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Large shapes are slow under ASan; the sanitizer build keeps them at batch 1
 * on one ISA. */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
	return tt_xorshift(&rng_state);
}

static float frand(void)
{
	return (float)((double)(rng() >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

/* Weight styles: random with a zero fraction, all +1, all -1, alternating. */
enum { W_RANDOM, W_DENSE, W_PLUS, W_MINUS, W_ALT };

static int8_t *make_weights(int m, int k, int style)
{
	int8_t *w = malloc((size_t)m * (size_t)k);
	for (size_t i = 0; i < (size_t)m * (size_t)k; i++) {
		switch (style) {
		case W_RANDOM: w[i] = (int8_t)((int)(rng() % 3) - 1); break;
		case W_DENSE: w[i] = rng() & 1 ? 1 : -1; break;
		case W_PLUS: w[i] = 1; break;
		case W_MINUS: w[i] = -1; break;
		default: w[i] = (int8_t)((i % (size_t)k) % 2 ? -1 : 1); break;
		}
	}
	return w;
}

static float *make_x(int n, int k, int style)
{
	float *x = malloc((size_t)n * (size_t)k * sizeof(float));
	for (size_t i = 0; i < (size_t)n * (size_t)k; i++) {
		if (style == 0)
			x[i] = frand() * 3.0f;
		else if (style == 1) /* heavy outliers: most q small, a few at +-127 */
			x[i] = (rng() % 97 == 0) ? frand() * 100.0f : frand();
		else /* all at the extremes */
			x[i] = rng() & 1 ? 1.0f : -1.0f;
	}
	return x;
}

/* The oracle: plain int32 sum over the unpacked weights and the act's int8 rows. */
static void oracle(const int8_t *w, int m, int k, const tern_act *a, int32_t *dot)
{
	for (int j = 0; j < a->n; j++) {
		const int8_t *q = a->q + (size_t)j * (size_t)a->k_pad;
		for (int i = 0; i < m; i++) {
			const int8_t *r = w + (size_t)i * (size_t)k;
			int32_t s = 0;
			for (int kk = 0; kk < k; kk++)
				s += r[kk] * q[kk];
			dot[(size_t)j * (size_t)m + (size_t)i] = s;
		}
	}
}

static float *make_scales(int n)
{
	float *s = malloc((size_t)n * sizeof(float));
	for (int i = 0; i < n; i++)
		s[i] = 0.01f + 0.5f * fabsf(frand());
	return s;
}

/* ---- quantization -------------------------------------------------------- */

static void test_quant_hand(void)
{
	/* amax = 2, scale = 63.5 (exact): -1 -> -63.5, a tie, to even -64; 0.5 ->
	 * 31.75 -> 32; 0.004 -> 0.254 -> 0; -2 -> -127; 1 -> 63.5, a tie, to 64. */
	const float x[6] = {2.0f, -1.0f, 0.5f, 0.004f, -2.0f, 1.0f};
	int8_t q[8];
	int32_t sum = 0;
	memset(q, 0x7f, sizeof q);
	const float s = tern_quant_row(x, 6, 8, q, &sum);
	TT_CHECK(s == 63.5f);
	const int8_t want[8] = {127, -64, 32, 0, -127, 64, 0, 0};
	for (int i = 0; i < 8; i++)
		TT_EQ_INT(q[i], want[i]);
	TT_EQ_INT(sum, 127 - 64 + 32 + 0 - 127 + 64);

	/* scale 1: exact halves round to even both ways. */
	const float y[9] = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, -3.5f};
	int8_t r[9];
	TT_CHECK(tern_quant_row(y, 9, 9, r, &sum) == 1.0f);
	const int8_t want_r[9] = {127, 0, 2, 2, 0, -2, -2, 126, -4};
	for (int i = 0; i < 9; i++)
		TT_EQ_INT(r[i], want_r[i]);
	TT_EQ_INT(sum, 127 + 0 + 2 + 2 + 0 - 2 - 2 + 126 - 4);

	/* All-zero row: amax floors at 1e-5. */
	const float z[3] = {0, 0, 0};
	TT_CHECK(tern_quant_row(z, 3, 3, r, NULL) == 127.0f / 1e-5f);
	TT_EQ_INT(r[0] | r[1] | r[2], 0);

	/* Random rows against the textbook formula with libm's round-half-even. */
	for (int rep = 0; rep < 50; rep++) {
		enum { K = 1001 };
		float xr[K];
		int8_t qr[K];
		const float mag = rep % 5 == 0 ? 1e-7f : rep % 5 == 1 ? 127.0f : (float)(rep + 1) * 0.37f;
		for (int i = 0; i < K; i++)
			xr[i] = frand() * mag;
		xr[rep] = (rep % 2 ? -1.0f : 1.0f) * mag; /* pins amax = mag */
		if (mag == 127.0f)                        /* scale 1: exact ties, both parities and signs */
			for (int i = 100; i < 300; i++)
				xr[i] = (float)(i - 200) + 0.5f;
		int32_t sr = 0;
		const float sc = tern_quant_row(xr, K, K, qr, &sr);
		float amax = 1e-5f;
		for (int i = 0; i < K; i++)
			amax = fmaxf(amax, fabsf(xr[i]));
		TT_CHECK(sc == 127.0f / amax);
		int32_t want_sum = 0, bad = 0;
		for (int i = 0; i < K; i++) {
			float v = nearbyintf(xr[i] * sc);
			v = v > 127.0f ? 127.0f : v < -128.0f ? -128.0f : v;
			bad += qr[i] != (int8_t)v;
			want_sum += (int)v;
		}
		TT_EQ_INT(bad, 0);
		TT_EQ_INT(sr, want_sum);
	}

	/* NaN is ignored by the max and quantizes to 0, never UB. */
	const float nanrow[2] = {NAN, 1.0f};
	TT_CHECK(tern_quant_row(nanrow, 2, 2, r, &sum) == 127.0f);
	TT_EQ_INT(r[0], 0);
	TT_EQ_INT(r[1], 127);
}

/* ---- packing ------------------------------------------------------------- */

static void test_pack_roundtrip(void)
{
	static const int shapes[][2] = {{1, 1},    {1, 2},    {2, 3},   {3, 5},    {7, 7},     {63, 127},  {64, 128},
					{65, 129}, {1, 1000}, {130, 6}, {97, 385}, {200, 192}, {129, 193}, {5, 388}};
	for (int p = 0; p < TERN_PACK_COUNT; p++)
		for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
			const int m = shapes[s][0], k = shapes[s][1];
			int8_t *w = make_weights(m, k, s % 2 ? W_RANDOM : W_DENSE);
			const float sc = 0.5f;
			tern_matrix mat;
			tern_err err = {0};
			TT_REQUIRE(tern_matrix_pack(&mat, (tern_packing)p, w, m, k, &sc, m, &err) == 0);
			TT_EQ_INT(mat.data_bytes, tern_matrix_data_bytes((tern_packing)p, m, k));
			TT_EQ_INT(mat.k_pad, tern_k_pad((tern_packing)p, k));
			TT_EQ_INT(mat.m_pad % tern_row_tile((tern_packing)p), 0);
			TT_CHECK(((uintptr_t)mat.data % 64) == 0);
			int8_t *u = malloc((size_t)m * (size_t)k);
			TT_CHECK(tern_matrix_unpack(&mat, u, &err) == 0);
			TT_CHECKF(memcmp(u, w, (size_t)m * (size_t)k) == 0, "%s %dx%d",
				  tern_packing_name((tern_packing)p), m, k);
			free(u);
			tern_matrix_free(&mat);
			free(w);
		}
	/* Sizes: TL2 reads 5/6 of I2_S's bytes on BitNet shapes. */
	TT_EQ_INT(tern_matrix_data_bytes(TERN_PACK_I2S, 2560, 2560), 2560 * 2560 / 4);
	TT_EQ_INT(tern_matrix_data_bytes(TERN_PACK_TL1, 2560, 2560), 2560 * 2560 / 4);
	TT_EQ_INT(tern_matrix_data_bytes(TERN_PACK_TL2, 2560, 2560), 2560 / 64 * (2562 / 6) * 80);
	tern_matrix_free(NULL);
}

/* bitnet.cpp's I2_S bytes, built straight from MODEL-FORMATS 2.3. */
static void test_i2s_bitnet_layout(void)
{
	const int m = 37, k = 384;
	int8_t *w = make_weights(m, k, W_RANDOM);
	uint8_t *buf = calloc((size_t)m * (size_t)k / 4, 1);
	for (size_t i = 0; i < (size_t)m * (size_t)k; i++) {
		const size_t b = i / 128, j = i % 128, grp = j / 32, pos = j % 32;
		buf[b * 32 + pos] |= (uint8_t)((w[i] + 1) << (6 - 2 * grp));
	}
	tern_matrix wrapped, packed;
	tern_err err = {0};
	const float sc = 0.25f;
	TT_REQUIRE(tern_matrix_wrap_i2s(&wrapped, buf, m, k, sc, &err) == 0);
	TT_REQUIRE(tern_matrix_pack(&packed, TERN_PACK_I2S, w, m, k, &sc, m, &err) == 0);
	TT_EQ_INT(packed.data_bytes, (size_t)m * (size_t)k / 4);
	TT_CHECK(memcmp(packed.data, buf, packed.data_bytes) == 0);
	int8_t *u = malloc((size_t)m * (size_t)k);
	TT_CHECK(tern_matrix_unpack(&wrapped, u, &err) == 0);
	TT_CHECK(memcmp(u, w, (size_t)m * (size_t)k) == 0);
	/* Products over the wrapped buffer equal products over the packed copy. */
	float *x = make_x(3, k, 0);
	tern_act a = {0};
	TT_REQUIRE(tern_act_prepare(&a, TERN_PACK_I2S, TERN_ISA_AUTO, x, 3, k, k, &err) == 0);
	float y1[3 * 37], y2[3 * 37];
	TT_CHECK(tern_gemm_f32(&wrapped, &a, y1, m, 0, m, TERN_ISA_AUTO, &err) == 0);
	TT_CHECK(tern_gemm_f32(&packed, &a, y2, m, 0, m, TERN_ISA_REF, &err) == 0);
	TT_CHECK(memcmp(y1, y2, sizeof y1) == 0);
	tern_act_free(&a);
	tern_matrix_free(&wrapped);
	tern_matrix_free(&packed);
	free(x);
	free(u);
	free(buf);
	free(w);
}

/* ---- products ------------------------------------------------------------ */

/* Checks every available ISA (and the reference) for one packed matrix and one
 * activation batch against the oracle; returns the number of mismatches. */
static int check_products(const tern_matrix *mat, const int8_t *w, const tern_act *a, int only_isa)
{
	const int m = mat->m, n = a->n;
	int bad = 0;
	int32_t *want = malloc((size_t)n * (size_t)m * sizeof(int32_t));
	int32_t *got = malloc((size_t)n * (size_t)m * sizeof(int32_t));
	float *yw = malloc((size_t)n * (size_t)m * sizeof(float));
	float *yg = malloc((size_t)n * (size_t)m * sizeof(float));
	oracle(w, m, mat->k, a, want);
	for (int j = 0; j < n; j++)
		for (int i = 0; i < m; i++)
			yw[(size_t)j * m + i] =
			    (float)want[(size_t)j * m + i] / a->scale[j] * mat->scales[i / mat->group_rows];
	for (int isa = 0; isa < TERN_ISA_COUNT; isa++) {
		if (only_isa >= 0 && isa != only_isa)
			continue;
		if (!tern_isa_available((tern_isa)isa)) {
			TT_NOTE_SKIP("%s", tern_isa_name((tern_isa)isa));
			continue;
		}
		tern_err err = {0};
		memset(got, 0x5a, (size_t)n * (size_t)m * sizeof(int32_t));
		int rc = tern_gemm_i32(mat, a, got, m, 0, m, (tern_isa)isa, &err);
		if (rc != 0 || memcmp(got, want, (size_t)n * (size_t)m * sizeof(int32_t)) != 0) {
			int first = -1;
			for (size_t e = 0; e < (size_t)n * (size_t)m && first < 0; e++)
				if (got[e] != want[e])
					first = (int)e;
			fprintf(stderr, "  mismatch i32 %s/%s m=%d k=%d n=%d rc=%d first=%d (got %d want %d)\n",
				tern_packing_name(mat->packing), tern_isa_name((tern_isa)isa), m, mat->k, n, rc, first,
				first >= 0 ? got[first] : 0, first >= 0 ? want[first] : 0);
			bad++;
		}
		rc = tern_gemm_f32(mat, a, yg, m, 0, m, (tern_isa)isa, &err);
		if (rc != 0 || memcmp(yg, yw, (size_t)n * (size_t)m * sizeof(float)) != 0) {
			fprintf(stderr, "  mismatch f32 %s/%s m=%d k=%d n=%d\n", tern_packing_name(mat->packing),
				tern_isa_name((tern_isa)isa), m, mat->k, n);
			bad++;
		}
	}
	free(want);
	free(got);
	free(yw);
	free(yg);
	return bad;
}

static int run_shape(int m, int k, const int *batches, int nb, int wstyle, int xstyle, int only_isa, int only_pack)
{
	int8_t *w = make_weights(m, k, wstyle);
	const int group_rows = m > 3 ? (m + 2) / 3 : 1;
	const int n_groups = (m + group_rows - 1) / group_rows;
	float *sc = make_scales(n_groups);
	int maxn = 0;
	for (int b = 0; b < nb; b++)
		maxn = batches[b] > maxn ? batches[b] : maxn;
	float *x = make_x(maxn, k, xstyle);
	int bad = 0;
	for (int p = 0; p < TERN_PACK_COUNT; p++) {
		if (only_pack >= 0 && p != only_pack)
			continue;
		tern_matrix mat;
		tern_err err = {0};
		if (tern_matrix_pack(&mat, (tern_packing)p, w, m, k, sc, group_rows, &err) != 0) {
			fprintf(stderr, "  pack failed: %s\n", err.msg);
			bad++;
			continue;
		}
		tern_act a = {0};
		for (int b = 0; b < nb; b++) {
			if (tern_act_prepare(&a, (tern_packing)p, TERN_ISA_AUTO, x, batches[b], k, k, &err) != 0) {
				bad++;
				continue;
			}
			bad += check_products(&mat, w, &a, only_isa);
		}
		tern_act_free(&a);
		tern_matrix_free(&mat);
	}
	free(w);
	free(sc);
	free(x);
	return bad;
}

static void test_small_shapes_all_batches(void)
{
	int batches[64];
	for (int i = 0; i < 64; i++)
		batches[i] = i + 1;
	TT_EQ_INT(run_shape(70, 200, batches, 64, W_RANDOM, 0, -1, -1), 0);
	TT_EQ_INT(run_shape(131, 390, batches, 64, W_DENSE, 1, -1, -1), 0);
}

static void test_odd_shapes(void)
{
	static const int shapes[][2] = {{1, 1},    {1, 2},      {2, 3},      {3, 5},      {7, 7},
					{63, 127}, {64, 128},   {65, 129},   {1, 1000},   {130, 6},
					{97, 385}, {255, 767},  {1000, 37},  {333, 2049}, {128, 4096},
					{4, 640},  {193, 1153}, {3000, 100}, {17, 3001}};
	const int batches[] = {1, 2, 3, 5, 8, 13};
	for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
		TT_CHECKF(run_shape(shapes[s][0], shapes[s][1], batches, 6, (int)(s % 3), (int)(s % 3), -1, -1) == 0,
			  "shape %d x %d", shapes[s][0], shapes[s][1]);
}

static void test_bitnet_shapes(void)
{
	const int b2[] = {1, 3, 32};
	const int b1[] = {1, 8};
	TT_EQ_INT(run_shape(2560, 2560, b2, UNDER_ASAN ? 1 : 3, W_RANDOM, 0, -1, -1), 0);
	TT_EQ_INT(run_shape(640, 2560, b1, UNDER_ASAN ? 1 : 2, W_RANDOM, 1, -1, -1), 0);
	TT_EQ_INT(run_shape(6912, 2560, b1, 1, W_RANDOM, 0, -1, -1), 0);
	TT_EQ_INT(run_shape(2560, 6912, b1, UNDER_ASAN ? 1 : 2, W_DENSE, 0, -1, -1), 0);
}

static void test_100b_shapes(void)
{
	const int b1[] = {1};
	const tern_isa best = tern_isa_default();
	/* One ISA (the default) on the biggest shapes keeps the test quick. */
	TT_EQ_INT(run_shape(8192, 8192, b1, 1, W_RANDOM, 0, best, UNDER_ASAN ? TERN_PACK_TL2 : -1), 0);
	TT_EQ_INT(run_shape(28672, 8192, b1, 1, W_RANDOM, 0, best, TERN_PACK_TL2), 0);
}

/* Row sub-ranges write exactly their rows; other slots stay untouched. */
static void test_row_ranges(void)
{
	const int m = 300, k = 260, n = 3, ldd = 310;
	int8_t *w = make_weights(m, k, W_RANDOM);
	float *x = make_x(n, k, 0);
	const float sc = 1.0f;
	for (int p = 0; p < TERN_PACK_COUNT; p++) {
		tern_matrix mat;
		tern_act a = {0};
		tern_err err = {0};
		TT_REQUIRE(tern_matrix_pack(&mat, (tern_packing)p, w, m, k, &sc, m, &err) == 0);
		TT_REQUIRE(tern_act_prepare(&a, (tern_packing)p, TERN_ISA_AUTO, x, n, k, k, &err) == 0);
		int32_t *want = malloc((size_t)n * m * sizeof(int32_t));
		int32_t *got = malloc((size_t)n * ldd * sizeof(int32_t));
		oracle(w, m, k, &a, want);
		const int tile = tern_row_tile((tern_packing)p);
		for (int isa = 0; isa < TERN_ISA_COUNT; isa++) {
			if (!tern_isa_available((tern_isa)isa)) {
				TT_NOTE_SKIP("%s", tern_isa_name((tern_isa)isa));
				continue;
			}
			const int ranges[][2] = {
			    {0, 1}, {tile, 2 * tile + 5}, {2 * tile, m}, {0, m}, {tile * 3, tile * 3}};
			for (int r = 0; r < 5; r++) {
				const int r0 = ranges[r][0], r1 = ranges[r][1];
				memset(got, 0x5a, (size_t)n * ldd * sizeof(int32_t));
				TT_REQUIRE(tern_gemm_i32(&mat, &a, got, ldd, r0, r1, (tern_isa)isa, &err) == 0);
				int ok = 1;
				for (int j = 0; j < n; j++)
					for (int i = 0; i < ldd; i++) {
						const int32_t g = got[(size_t)j * ldd + i];
						if (i >= r0 && i < r1)
							ok &= g == want[(size_t)j * m + i];
						else
							ok &= g == 0x5a5a5a5a;
					}
				TT_CHECKF(ok, "%s/%s rows [%d,%d)", tern_packing_name((tern_packing)p),
					  tern_isa_name((tern_isa)isa), r0, r1);
			}
		}
		free(want);
		free(got);
		tern_act_free(&a);
		tern_matrix_free(&mat);
	}
	free(w);
	free(x);
}

/* int16 worst case: |q| at its maximum, every weight of one sign, K = 32768. */
static void test_worst_case_overflow(void)
{
	const int m = 70, k = 32768, n = 5;
	int8_t *q = malloc((size_t)n * k);
	float scales[5] = {1, 1, 1, 1, 1};
	for (int j = 0; j < n; j++)
		for (int i = 0; i < k; i++)
			q[(size_t)j * k + i] = (int8_t)(j == 0   ? -128
							: j == 1 ? 127
							: j == 2 ? (i % 2 ? -128 : 127)
							: j == 3 ? (i % 3 ? -128 : 127)
								 : -128);
	const int styles[] = {W_PLUS, W_MINUS, W_ALT};
	for (int st = 0; st < 3; st++) {
		int8_t *w = make_weights(m, k, styles[st]);
		const float sc = 1.0f;
		for (int p = 0; p < TERN_PACK_COUNT; p++) {
			tern_matrix mat;
			tern_act a = {0};
			tern_err err = {0};
			TT_REQUIRE(tern_matrix_pack(&mat, (tern_packing)p, w, m, k, &sc, m, &err) == 0);
			for (int nn = 1; nn <= n; nn += n - 1) {
				TT_REQUIRE(tern_act_prepare_q(&a, (tern_packing)p, TERN_ISA_AUTO, q, scales, nn, k, k,
							      &err) == 0);
				TT_CHECKF(check_products(&mat, w, &a, -1) == 0, "%s style %d n %d",
					  tern_packing_name((tern_packing)p), st, nn);
			}
			/* The closed forms, so the oracle itself is pinned down. */
			int32_t d[70];
			TT_REQUIRE(tern_act_prepare_q(&a, (tern_packing)p, TERN_ISA_AUTO, q, scales, 1, k, k, &err) ==
				   0);
			TT_REQUIRE(tern_gemm_i32(&mat, &a, d, m, 0, m, TERN_ISA_AUTO, &err) == 0);
			TT_EQ_INT(d[m - 1], st == 0 ? -128 * k : st == 1 ? 128 * k : 0);
			tern_act_free(&a);
			tern_matrix_free(&mat);
		}
		free(w);
	}
	free(q);
}

/* ---- arguments and dispatch --------------------------------------------- */

static void test_bad_arguments(void)
{
	tern_err err = {0};
	tern_matrix mat;
	const float sc = 1.0f;
	int8_t w[12] = {0, 1, -1, 0, 1, 1, 0, 0, -1, -1, 1, 0};
	w[5] = 2;
	TT_EQ_INT(tern_matrix_pack(&mat, TERN_PACK_TL2, w, 3, 4, &sc, 3, &err), TERN_EINVAL);
	TT_CHECK(strstr(err.msg, "ternary") != NULL);
	w[5] = -2;
	TT_EQ_INT(tern_matrix_pack(&mat, TERN_PACK_I2S, w, 3, 4, &sc, 3, &err), TERN_EINVAL);
	w[5] = 1;
	TT_EQ_INT(tern_matrix_pack(&mat, TERN_PACK_TL1, w, 0, 4, &sc, 3, &err), TERN_EINVAL);
	TT_EQ_INT(tern_matrix_pack(&mat, TERN_PACK_TL1, w, 3, 4, &sc, 0, &err), TERN_EINVAL);
	TT_EQ_INT(tern_matrix_pack(&mat, (tern_packing)7, w, 3, 4, &sc, 3, &err), TERN_EINVAL);
	uint8_t buf[96] = {0};
	TT_EQ_INT(tern_matrix_wrap_i2s(&mat, buf, 3, 100, 1.0f, &err), TERN_EINVAL);

	TT_REQUIRE(tern_matrix_pack(&mat, TERN_PACK_TL1, w, 3, 4, &sc, 3, &err) == 0);
	float x[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
	int32_t d[8];
	tern_act a = {0};
	TT_REQUIRE(tern_act_prepare(&a, TERN_PACK_TL2, TERN_ISA_AUTO, x, 1, 4, 4, &err) == 0);
	TT_EQ_INT(tern_gemm_i32(&mat, &a, d, 3, 0, 3, TERN_ISA_AUTO, &err), TERN_EINVAL); /* packing */
	TT_REQUIRE(tern_act_prepare(&a, TERN_PACK_TL1, TERN_ISA_AUTO, x, 1, 5, 5, &err) == 0);
	TT_EQ_INT(tern_gemm_i32(&mat, &a, d, 3, 0, 3, TERN_ISA_AUTO, &err), TERN_EINVAL); /* K */
	TT_REQUIRE(tern_act_prepare(&a, TERN_PACK_TL1, TERN_ISA_AUTO, x, 2, 4, 4, &err) == 0);
	TT_EQ_INT(tern_gemm_i32(&mat, &a, d, 3, 0, 4, TERN_ISA_AUTO, &err), TERN_EINVAL); /* row1 > m */
	TT_EQ_INT(tern_gemm_i32(&mat, &a, d, 3, 1, 3, TERN_ISA_AUTO, &err), TERN_EINVAL); /* row0 off tile */
	TT_EQ_INT(tern_gemm_i32(&mat, &a, d, 2, 0, 3, TERN_ISA_AUTO, &err), TERN_EINVAL); /* ldd < rows */
	TT_EQ_INT(tern_gemm_i32(&mat, &a, NULL, 3, 0, 3, TERN_ISA_AUTO, &err), TERN_EINVAL);
	TT_EQ_INT(tern_gemm_i32(&mat, &a, d, 3, 0, 3, TERN_ISA_AUTO, &err), 0);
	for (int isa = 0; isa < TERN_ISA_COUNT; isa++)
		if (!tern_isa_available((tern_isa)isa))
			TT_EQ_INT(tern_gemm_i32(&mat, &a, d, 3, 0, 3, (tern_isa)isa, &err), TERN_EUNSUP);
	TT_EQ_INT(tern_act_prepare(&a, TERN_PACK_TL1, TERN_ISA_AUTO, x, 1, 0, 4, &err), TERN_EINVAL);
	TT_EQ_INT(tern_act_prepare(&a, TERN_PACK_TL1, TERN_ISA_AUTO, x, 1, 5, 4, &err), TERN_EINVAL);
	tern_act_free(&a);
	tern_act_free(&a);
	tern_act_free(NULL);
	tern_matrix_free(&mat);
}

static void test_names_and_dispatch(void)
{
	for (int p = 0; p < TERN_PACK_COUNT; p++)
		TT_EQ_INT(tern_packing_parse(tern_packing_name((tern_packing)p)), p);
	for (int i = 0; i < TERN_ISA_COUNT; i++)
		TT_EQ_INT(tern_isa_parse(tern_isa_name((tern_isa)i)), i);
	TT_EQ_INT(tern_isa_parse("auto"), TERN_ISA_AUTO);
	TT_EQ_INT(tern_isa_parse("sse9"), -2);
	TT_EQ_INT(tern_packing_parse("q4_0"), -2);
	TT_CHECK(!strcmp(tern_packing_name(TERN_PACK_I2S), "i2_s"));
	TT_CHECK(tern_isa_available(TERN_ISA_REF));

	/* TERN_KERNEL (set by the ctest variants) wins when it is runnable here. */
	const char *env = getenv("TERN_KERNEL");
	const tern_isa def = tern_isa_default();
	TT_CHECK(tern_isa_available(def));
	if (env && tern_isa_parse(env) >= 0 && tern_isa_available((tern_isa)tern_isa_parse(env)))
		TT_EQ_INT(def, tern_isa_parse(env));
	else if (!env)
		for (int i = def + 1; i < TERN_ISA_COUNT; i++)
			TT_CHECKF(!tern_isa_available((tern_isa)i) || i == TERN_ISA_NEON, "default %s but %s available",
				  tern_isa_name(def), tern_isa_name((tern_isa)i));

	for (int i = 0; i < TERN_ISA_COUNT; i++) {
		const int rc = tern_kernel_force_isa((tern_isa)i);
		TT_EQ_INT(rc, tern_isa_available((tern_isa)i) ? 0 : TERN_EUNSUP);
		if (rc == 0)
			TT_EQ_INT(tern_isa_default(), i);
	}
	TT_EQ_INT(tern_kernel_force_isa(TERN_ISA_AUTO), 0);
	TT_EQ_INT(tern_isa_default(), def);
}

/* The same small consistency run through TERN_ISA_AUTO under whatever ISA
 * TERN_KERNEL forced (ctest runs this case once per ISA). */
static void test_forced_isa(void)
{
	const int batches[] = {1, 4, 9};
	TT_EQ_INT(run_shape(150, 333, batches, 3, W_RANDOM, 0, tern_isa_default(), -1), 0);
	const char *env = getenv("TERN_KERNEL");
	if (env)
		fprintf(stderr, "  TERN_KERNEL=%s -> %s\n", env, tern_isa_name(tern_isa_default()));
}

/* GEMV (batch 1) of each token on its own equals row j of the batch product:
 * batch invariance, checked directly rather than through the oracle. */
static int check_gemv_equals_gemm(int m, int k, int n, tern_isa isa)
{
	int8_t *w = make_weights(m, k, W_RANDOM);
	float *x = make_x(n, k, 1);
	float *sc = make_scales(1);
	int bad = 0;
	for (int p = 0; p < TERN_PACK_COUNT; p++) {
		tern_matrix mat;
		tern_err err = {0};
		tern_act a = {0}, a1 = {0};
		int32_t *all = malloc((size_t)n * (size_t)m * sizeof(int32_t)), *one = malloc((size_t)m * sizeof(int32_t));
		if (tern_matrix_pack(&mat, (tern_packing)p, w, m, k, sc, m, &err) != 0 ||
		    tern_act_prepare(&a, (tern_packing)p, TERN_ISA_AUTO, x, n, k, k, &err) != 0 ||
		    tern_gemm_i32(&mat, &a, all, m, 0, m, isa, &err) != 0) {
			bad++;
		} else {
			for (int j = 0; j < n; j++) {
				if (tern_act_prepare(&a1, (tern_packing)p, TERN_ISA_AUTO, x + (size_t)j * k, 1, k, k, &err) ||
				    tern_gemm_i32(&mat, &a1, one, m, 0, m, isa, &err) ||
				    memcmp(one, all + (size_t)j * m, (size_t)m * sizeof(int32_t)) != 0) {
					fprintf(stderr, "  gemv != gemm row %d, %s/%s m=%d k=%d n=%d\n", j,
						tern_packing_name((tern_packing)p), tern_isa_name(isa), m, k, n);
					bad++;
					break;
				}
			}
			tern_matrix_free(&mat);
		}
		tern_act_free(&a);
		tern_act_free(&a1);
		free(all);
		free(one);
	}
	free(w);
	free(x);
	free(sc);
	return bad;
}

/* A decode-once int8 GEMM (mins: its dispatch thresholds, lowered to 1 so
 * every batch meets it) on isa: bit for bit against the oracle and against
 * GEMV, batches 1..67, m and k off every tile size. */
static void int8_gemm_cover(int *mins, tern_isa isa)
{
	int saved[TERN_PACK_COUNT];
	memcpy(saved, mins, sizeof saved);
	for (int p = 0; p < TERN_PACK_COUNT; p++)
		mins[p] = 1;
	int batches[67];
	for (int i = 0; i < 67; i++)
		batches[i] = i + 1;
	TT_EQ_INT(run_shape(70, 200, batches, 67, W_RANDOM, 0, isa, -1), 0);
	TT_EQ_INT(run_shape(131, 390, batches, 67, W_DENSE, 1, isa, -1), 0);
	/* TL2 k_pad % 4 == 2 (a partial last k4), k_pad = 6, one row, > 64 tokens,
	 * m and k off every tile size. */
	const int few[] = {1, 5, 6, 7, 13, 16, 64, 65, 67, 130};
	static const int shapes[][2] = {{1, 1},     {3, 5},     {65, 129},  {130, 6},   {97, 385},  {255, 767},
					{1000, 37}, {333, 2049}, {17, 3001}, {64, 388}, {200, 1158}, {71, 1539}};
	for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
		TT_CHECKF(run_shape(shapes[s][0], shapes[s][1], few, 10, (int)(s % 3), (int)(s % 3), isa, -1) == 0,
			  "shape %d x %d", shapes[s][0], shapes[s][1]);
	const int b16[] = {16, 32};
	TT_EQ_INT(run_shape(2560, 6912, b16, UNDER_ASAN ? 1 : 2, W_DENSE, 0, isa, -1), 0);
	TT_EQ_INT(check_gemv_equals_gemm(193, 1155, 19, isa), 0);
	test_row_ranges();
	test_worst_case_overflow();
	memcpy(mins, saved, sizeof saved);
}

#if defined(__x86_64__)
extern int tern_kern_avx512_vnni, tern_kern_avx512_vbmi;
/* The AVX-512 kernels have VNNI (I2_S) and VBMI (TL1/TL2) paths next to the
 * BW-only ones; cover every combination the CPU can run. */
static void test_avx512_variants(void)
{
	if (!tern_isa_available(TERN_ISA_AVX512))
		TT_SKIP("no AVX-512 on this CPU");
	tern_isa_default(); /* sets the flags from cpuid */
	const int vnni = tern_kern_avx512_vnni, vbmi = tern_kern_avx512_vbmi;
	if (!vnni)
		TT_NOTE_SKIP("avx512 vnni");
	if (!vbmi)
		TT_NOTE_SKIP("avx512 vbmi");
	const int batches[] = {1, 4, 7, 8, 13};
	for (int v = 0; v < 4; v++) {
		tern_kern_avx512_vnni = (v & 1) && vnni;
		tern_kern_avx512_vbmi = (v & 2) && vbmi;
		TT_EQ_INT(run_shape(133, 1000, batches, 5, W_DENSE, 1, TERN_ISA_AVX512, -1), 0);
		TT_EQ_INT(run_shape(64, 389, batches, 5, W_RANDOM, 0, TERN_ISA_AVX512, -1), 0);
	}
	tern_kern_avx512_vnni = vnni;
	tern_kern_avx512_vbmi = vbmi;
}

extern int tern_kern_gemm_vnni_min[TERN_PACK_COUNT];
/* The VNNI GEMM (weight tiles decoded once to int8, vpdpbusd over the batch)
 * from batch 1 up, so every batch size and shape meets it: bit for bit
 * against the oracle (and so against GEMV: batch invariance). */
static void test_vnni_gemm(void)
{
	if (!tern_isa_available(TERN_ISA_AVX512))
		TT_SKIP("no AVX-512 on this CPU");
	tern_isa_default(); /* sets the flags from cpuid */
	if (!tern_kern_avx512_vnni)
		TT_SKIP("no AVX512_VNNI on this CPU");
	int8_gemm_cover(tern_kern_gemm_vnni_min, TERN_ISA_AVX512);
}

/* The AVX-512 activation preparation (x86/act-avx512.c: quantization and
 * the TL1/TL2 tables) against the scalar one byte for byte: int8 rows, sums,
 * scales to the bit, whole table rows (padding included), over ragged
 * widths and rows with NaN, infinities, signed zeros, exact rounding ties
 * and saturating values. */
static void test_act_avx512(void)
{
	if (!tern_isa_available(TERN_ISA_AVX512) || !tern_cpu_get()->avx512vnni)
		TT_SKIP("no AVX-512 with VNNI on this CPU");
	static const int widths[] = {1, 2, 3, 5, 15, 16, 17, 31, 33, 47, 64, 100, 127, 129, 255, 2560, 2561, 6912};
	const int rows = 5;
	uint32_t rng = 12345;
	for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++) {
		const int k = widths[wi];
		float *x = malloc(sizeof(float) * (size_t)k * rows);
		TT_REQUIRE(x);
		for (int j = 0; j < rows; j++)
			for (int i = 0; i < k; i++) {
				rng = rng * 1664525u + 1013904223u;
				float v = ((float)(rng >> 8) / 16777216.0f - 0.5f) * (j == 3 ? 1e-6f : 20.0f);
				/* row 1: exact ties of x * 127/amax (amax 127: scale 1) */
				if (j == 1)
					v = i == 0 ? 127.0f : (float)((int)(rng % 255) - 127) + 0.5f;
				/* row 2: specials */
				if (j == 2 && i % 7 == 3)
					v = (i / 7) % 4 == 0 ? NAN : (i / 7) % 4 == 1 ? INFINITY : (i / 7) % 4 == 2 ? -0.0f : -1e30f;
				x[(size_t)j * k + i] = v;
			}
		for (int p = 0; p < TERN_PACK_COUNT; p++) {
			tern_act ref, simd;
			memset(&ref, 0, sizeof ref);
			memset(&simd, 0, sizeof simd);
			tern_err err;
			TT_REQUIRE(tern_act_prepare(&ref, (tern_packing)p, TERN_ISA_REF, x, rows, k, k, &err) == 0);
			TT_REQUIRE(tern_act_prepare(&simd, (tern_packing)p, TERN_ISA_AVX512, x, rows, k, k, &err) == 0);
			TT_REQUIRE(ref.k_pad == simd.k_pad && ref.lut_row_bytes == simd.lut_row_bytes);
			for (int j = 0; j < rows; j++) {
				TT_CHECKF(memcmp(&ref.scale[j], &simd.scale[j], sizeof(float)) == 0 && ref.sum[j] == simd.sum[j],
					  "%s k=%d row %d: scale %a/%a sum %d/%d", tern_packing_name((tern_packing)p), k, j,
					  (double)ref.scale[j], (double)simd.scale[j], ref.sum[j], simd.sum[j]);
				TT_CHECKF(memcmp(ref.q + (size_t)j * ref.k_pad, simd.q + (size_t)j * simd.k_pad,
						 (size_t)ref.k_pad) == 0,
					  "%s k=%d row %d: int8 rows differ", tern_packing_name((tern_packing)p), k, j);
				if (ref.lut_row_bytes)
					TT_CHECKF(memcmp((const uint8_t *)ref.lut + (size_t)j * ref.lut_row_bytes,
							 (const uint8_t *)simd.lut + (size_t)j * simd.lut_row_bytes,
							 ref.lut_row_bytes) == 0,
						  "%s k=%d row %d: tables differ", tern_packing_name((tern_packing)p), k, j);
			}
			/* Rows given as int8 (tern_act_prepare_q) build the same tables. */
			tern_act fromq;
			memset(&fromq, 0, sizeof fromq);
			TT_REQUIRE(tern_act_prepare_q(&fromq, (tern_packing)p, TERN_ISA_AVX512, ref.q, ref.scale, rows, k,
						      ref.k_pad, &err) == 0);
			if (ref.lut_row_bytes)
				TT_CHECKF(memcmp(ref.lut, fromq.lut, ref.lut_row_bytes * rows) == 0,
					  "%s k=%d: tables from int8 rows differ", tern_packing_name((tern_packing)p), k);
			tern_act_free(&fromq);
			tern_act_free(&ref);
			tern_act_free(&simd);
		}
		free(x);
	}
}

/* Mirrors kern-internal.h (tests see only the public header). */
#define AVX2_DOT_MADDUBS 0
#define AVX2_DOT_VNNI 1
#define AVX2_DOT_EVEX 2
extern int tern_kern_avx2_dot;
extern int tern_kern_avx2_gemm_min[TERN_PACK_COUNT];

static void avx2_gemm_cover(int dot)
{
	const int saved_dot = tern_kern_avx2_dot;
	tern_kern_avx2_dot = dot;
	int8_gemm_cover(tern_kern_avx2_gemm_min, TERN_ISA_AVX2);
	tern_kern_avx2_dot = saved_dot;
}

static void test_avx2_gemm_maddubs(void)
{
	if (!tern_isa_available(TERN_ISA_AVX2))
		TT_SKIP("no AVX2 on this CPU");
	avx2_gemm_cover(AVX2_DOT_MADDUBS);
}

static void test_avx2_gemm_avxvnni(void)
{
	if (!tern_isa_available(TERN_ISA_AVX2) || !tern_cpu_get()->avxvnni)
		TT_SKIP("no AVX-VNNI on this CPU");
	avx2_gemm_cover(AVX2_DOT_VNNI);
}

/* The AVX-VNNI code compiled for AVX512_VNNI+VL: the same source, so a CPU
 * with AVX-512 VNNI and no AVX-VNNI still checks it. */
static void test_avx2_gemm_evex(void)
{
	const tern_cpu *c = tern_cpu_get();
	if (!tern_isa_available(TERN_ISA_AVX2) || !c->avx512vnni || !c->avx512vl)
		TT_SKIP("no AVX512_VNNI+VL on this CPU");
	avx2_gemm_cover(AVX2_DOT_EVEX);
}
#else
static void test_avx512_variants(void)
{
	TT_SKIP("AVX-512 is x86-64 only");
}

static void test_act_avx512(void)
{
	TT_SKIP("not an x86-64 build");
}

static void test_avx2_gemm_maddubs(void)
{
	TT_SKIP("not an x86-64 build");
}

static void test_avx2_gemm_avxvnni(void)
{
	TT_SKIP("not an x86-64 build");
}

static void test_avx2_gemm_evex(void)
{
	TT_SKIP("not an x86-64 build");
}

static void test_vnni_gemm(void)
{
	TT_SKIP("not an x86-64 build");
}
#endif

#if defined(__aarch64__)
extern int tern_kern_neon_gemm_min[TERN_PACK_COUNT];
/* The NEON SDOT GEMM (weight tiles decoded once, vdotq_s32 over the batch). */
static void test_neon_gemm(void)
{
	const char *env = getenv("TERN_NEON_DOTPROD");
	if (!tern_isa_available(TERN_ISA_NEON) || !tern_cpu_get()->dotprod || (env && !strcmp(env, "0")))
		TT_SKIP("no dotprod (SDOT) on this CPU");
	int8_gemm_cover(tern_kern_neon_gemm_min, TERN_ISA_NEON);
}
#else
static void test_neon_gemm(void)
{
	TT_SKIP("not an aarch64 build");
}
#endif


/* ---- group-scaled ternary (Q2_0, tern-gq.h) -------------------------------- */

/* Q2_0 as ggml stores it: f16 d then 16 bytes, weight e at bits 2*(e%4) of
 * byte e/4, value code - 1; and the input checks on data from a file. */
static void test_gq_layout(void)
{
	uint8_t blk[2 * TERN_GQ_BLOCK_BYTES] = {0};
	blk[0] = 0x00, blk[1] = 0x38; /* f16 0.5 */
	blk[2] = 0xe4;                /* codes 0, 1, 2, 3 -> -1, 0, +1, +2 */
	blk[17] = 0x80;               /* weight 63: code 2 */
	blk[18] = 0x00, blk[19] = 0xbc; /* second row: f16 -1.0 */
	memset(blk + 20, 0x55, 16);     /* all code 1: zeros */
	tern_gq_matrix w;
	tern_err e = {0};
	TT_REQUIRE(tern_gq_wrap_q2_0(&w, blk, sizeof blk, 2, 64, &e) == 0);
	TT_CHECK(w.n_groups == 1 && w.scales[0] == 0.5f && w.scales[1] == -1.0f);
	TT_CHECK(tern_gq_weight_at(&w, 0, 0) == -1 && tern_gq_weight_at(&w, 0, 1) == 0);
	TT_CHECK(tern_gq_weight_at(&w, 0, 2) == 1 && tern_gq_weight_at(&w, 0, 3) == 2);
	TT_CHECK(tern_gq_weight_at(&w, 0, 4) == -1 && tern_gq_weight_at(&w, 0, 63) == 1);
	TT_CHECK(tern_gq_weight_at(&w, 1, 17) == 0);
	/* x = 1 at input 3 (weight +2), 127/1 scale: y = 2 * 127 * 0.5 / 127 = 1 */
	float x[64] = {0};
	x[3] = 1.0f;
	tern_gq_act a = {0};
	TT_REQUIRE(tern_gq_act_prepare(&a, x, 1, 64, 64, &e) == 0);
	float y[2];
	TT_REQUIRE(tern_gq_gemm_f32(&w, &a, y, 2, 0, 2, TERN_ISA_REF, &e) == 0);
	TT_CHECK(y[0] == 1.0f && y[1] == 0.0f);
	tern_gq_free(&w);
	tern_gq_free(NULL);
	TT_CHECK(tern_gq_wrap_q2_0(&w, blk, sizeof blk - 1, 2, 64, &e) == TERN_EINVAL);
	TT_CHECK(tern_gq_wrap_q2_0(&w, blk, sizeof blk, 1, 128, &e) == 0);
	tern_gq_free(&w);
	TT_CHECK(tern_gq_wrap_q2_0(&w, blk, sizeof blk, 2, 32, &e) == TERN_EINVAL);
	blk[19] = 0x7c; /* f16 infinity */
	TT_CHECK(tern_gq_wrap_q2_0(&w, blk, sizeof blk, 2, 64, &e) == TERN_EINVAL);
	TT_CHECK(strstr(e.msg, "non-finite") != NULL);
	int8_t bad[64] = {0};
	bad[5] = 3;
	const float one = 1.0f;
	TT_CHECK(tern_gq_pack(&w, bad, &one, 1, 64, &e) == TERN_EINVAL);
	TT_CHECK(tern_gq_act_prepare(&a, x, 1, 65, 65, &e) == TERN_EINVAL);
	TT_CHECK(tern_gq_gemm_f32(&w, &a, y, 2, 0, 2, TERN_ISA_REF, &e) == TERN_EINVAL); /* w freed: no blocks */
	tern_gq_act_free(&a);
}

/* Every ISA bit for bit against an oracle written from tern-gq.h's formula
 * (int8 rows from tern_quant_row in input order, int32 per group, the float
 * step in its order), and near the float product of the dequantized weights. */
static int gq_shape(int m, int k, int n, int wstyle)
{
	const int ng = k / TERN_GQ_GROUP;
	int8_t *w = malloc((size_t)m * (size_t)k);
	float *sc = malloc((size_t)m * (size_t)ng * sizeof(float));
	for (size_t i = 0; i < (size_t)m * (size_t)k; i++)
		w[i] = wstyle == 0 ? (int8_t)((int)(rng() % 3) - 1) : wstyle == 1 ? (int8_t)((int)(rng() % 4) - 1) : 2;
	for (size_t i = 0; i < (size_t)m * (size_t)ng; i++)
		sc[i] = tern_f16_to_f32(tern_f32_to_f16(frand() * (i % 5 == 0 ? 4.0f : 0.1f)));
	float *x = make_x(n, k, wstyle == 2 ? 2 : (int)(rng() % 2));
	tern_gq_matrix mat;
	tern_gq_act a = {0};
	tern_err e = {0};
	int bad = 0;
	if (tern_gq_pack(&mat, w, sc, m, k, &e) != 0 || tern_gq_act_prepare(&a, x, n, k, k, &e) != 0) {
		TT_CHECKF(0, "gq setup %dx%d: %s", m, k, e.msg);
		bad = 1;
		goto done;
	}
	int8_t *q = malloc((size_t)k);
	float *want = malloc((size_t)n * (size_t)m * sizeof(float));
	int32_t *dot = malloc((size_t)ng * sizeof(int32_t));
	for (int j = 0; j < n && !bad; j++) {
		const float s = tern_quant_row(x + (size_t)j * (size_t)k, k, k, q, NULL);
		for (int i = 0; i < m; i++) {
			double exact = 0.0;
			for (int g = 0; g < ng; g++) {
				int32_t d = 0;
				for (int c = 0; c < TERN_GQ_GROUP; c++)
					d += w[(size_t)i * (size_t)k + (size_t)(g * TERN_GQ_GROUP + c)] * q[g * TERN_GQ_GROUP + c];
				dot[g] = d;
				exact += (double)d * (double)sc[(size_t)i * (size_t)ng + (size_t)g];
			}
			float acc = 0.0f;
			for (int g = 0; g < ng; g++) {
				const float p = (float)dot[g] * sc[(size_t)i * (size_t)ng + (size_t)g];
				acc = acc + p;
			}
			want[(size_t)j * (size_t)m + (size_t)i] = acc / s;
			double mag = 0.0;
			for (int g = 0; g < ng; g++)
				mag += fabs((double)sc[(size_t)i * (size_t)ng + (size_t)g]) * 127.0 * 2.0 * TERN_GQ_GROUP;
			if (fabs(exact / s - (double)(acc / s)) > 1e-5 * mag / s + 1e-6) {
				TT_CHECKF(0, "gq %dx%d n=%d: row %d token %d %g vs exact %g", m, k, n, i, j, (double)(acc / s),
					exact / s);
				bad = 1;
				break;
			}
		}
	}
	float *y = malloc((size_t)n * (size_t)m * sizeof(float));
	for (int isa = 0; isa < TERN_ISA_COUNT && !bad; isa++) {
		if (!tern_isa_available((tern_isa)isa)) {
			TT_NOTE_SKIP("%s", tern_isa_name((tern_isa)isa));
			continue;
		}
		/* all rows, then a ragged sub-range (the rest left untouched) */
		const int r0 = m > 2 ? 1 : 0, r1 = m > 2 ? m - 1 : m;
		for (int pass = 0; pass < 2 && !bad; pass++) {
			const int lo = pass ? r0 : 0, hi = pass ? r1 : m;
			for (size_t t = 0; t < (size_t)n * (size_t)m; t++)
				y[t] = -12345.0f;
			if (tern_gq_gemm_f32(&mat, &a, y, m, lo, hi, (tern_isa)isa, &e) != 0) {
				TT_CHECKF(0, "gq %s: %s", tern_isa_name((tern_isa)isa), e.msg);
				bad = 1;
				break;
			}
			for (int j = 0; j < n && !bad; j++)
				for (int i = 0; i < m; i++) {
					const float got = y[(size_t)j * (size_t)m + (size_t)i];
					const float exp = i >= lo && i < hi ? want[(size_t)j * (size_t)m + (size_t)i] : -12345.0f;
					if (memcmp(&got, &exp, sizeof got) != 0) {
						TT_CHECKF(0, "gq %s %dx%d n=%d rows [%d,%d): y[%d][%d] = %.9g, want %.9g",
							tern_isa_name((tern_isa)isa), m, k, n, lo, hi, j, i, (double)got,
							(double)exp);
						bad = 1;
						break;
					}
				}
		}
	}
	free(y);
	free(dot);
	free(want);
	free(q);
done:
	tern_gq_free(&mat);
	tern_gq_act_free(&a);
	free(x);
	free(sc);
	free(w);
	return bad;
}

static void test_gq_products(void)
{
	static const int ms[] = {1, 3, 17, 64};
	static const int ks[] = {64, 128, 192, 640};
	static const int ns[] = {1, 2, 5, 9};
	for (int wstyle = 0; wstyle < 3; wstyle++)
		for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++)
			for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++)
				for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
					TT_CHECK(gq_shape(ms[mi], ks[ki], ns[ni], wstyle) == 0);
	/* Bonsai-8B's shapes (Qwen3-8B: 4096, 12288) with a few rows. */
	TT_CHECK(gq_shape(8, 4096, 3, 1) == 0);
	TT_CHECK(gq_shape(5, 12288, 2, 0) == 0);
}

TT_MAIN(TT_CASE(test_quant_hand), TT_CASE(test_pack_roundtrip), TT_CASE(test_i2s_bitnet_layout),
	TT_CASE(test_names_and_dispatch), TT_CASE(test_bad_arguments), TT_CASE(test_small_shapes_all_batches),
	TT_CASE(test_odd_shapes), TT_CASE(test_row_ranges), TT_CASE(test_worst_case_overflow),
	TT_CASE(test_avx512_variants), TT_CASE(test_act_avx512), TT_CASE(test_vnni_gemm), TT_CASE(test_avx2_gemm_maddubs),
	TT_CASE(test_avx2_gemm_avxvnni), TT_CASE(test_avx2_gemm_evex), TT_CASE(test_neon_gemm), TT_CASE(test_forced_isa), TT_CASE(test_bitnet_shapes), TT_CASE(test_100b_shapes),
	TT_CASE(test_gq_layout), TT_CASE(test_gq_products))
