/* test_float.c: the float kernels' consistency test (tern-float.h). Every ISA
 * this build and CPU can run must equal the scalar reference bit for bit for
 * RMSNorm, softmax, RoPE and the dense dot products (F32/F16/BF16 rows,
 * 1..9 vectors, with and without row scales) over many shapes: n = 1, odd
 * widths, every tail around the 64 lanes and the SIMD widths, and model
 * widths. The reference itself is checked against the documented order,
 * computed here independently, and against double precision. ISAs the CPU
 * lacks are printed as SKIPPED and counted. Also: the half conversions of
 * kernels/base over every F16/BF16 code, and dispatch (TERN_KERNEL). The
 * quantized head's integer dots (Q8/Q4 rows, 0..17 activation rows, widths
 * around the 32-element blocks) the same way, on x86 with and without VNNI.
 * SwiGLU (silu(g) * u) likewise, in place too. */
#include "tern-float.h"
#include "tern-half.h"
#include "tern-test.h"
#include "test-util.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static uint64_t rng(void)
{
	return tt_xorshift(&rng_state);
}

static float frand(float lo, float hi)
{
	return lo + (hi - lo) * (float)((double)(rng() >> 40) / 16777216.0);
}

/* The kernels of every ISA but the reference that can run here; prints and
 * counts the others (once per test case). */
static int other_isas(const char *what, const tern_float_kernels **out)
{
	int n = 0;
	for (int i = TERN_ISA_REF + 1; i < TERN_ISA_COUNT; i++) {
		const tern_float_kernels *k = tern_float_kernels_get((tern_isa)i);
		if (k) {
			out[n++] = k;
		} else {
			TT_NOTE_SKIP("%s on %s (not in this build or on this CPU)", what,
				     tern_isa_name((tern_isa)i));
		}
	}
	return n;
}

static int same_bits(const float *a, const float *b, size_t n)
{
	return memcmp(a, b, n * sizeof(float)) == 0;
}

static const int widths[] = {1,  2,  3,  4,  5,  7,  8,  9,   15,  16,  17,  31,  32,  33,   47,   48,  63,
			     64, 65, 66, 71, 72, 79, 80, 127, 128, 129, 191, 192, 200, 255, 256, 257, 1000,
			     2560, 2561, 6912};
#define N_WIDTHS (int)(sizeof widths / sizeof widths[0])

/* ---- half conversions ---------------------------------------------------------- */

static void test_half_all_codes(void)
{
	int bad = 0;
	for (uint32_t h = 0; h < 65536; h++) {
		const float f = tern_f16_to_f32((uint16_t)h);
		const int ex = (h >> 10) & 31, man = h & 1023, neg = (h & 0x8000) != 0;
		if (ex == 31) {
			bad += man ? !isnan(f) : !(isinf(f) && (f < 0) == neg);
			continue;
		}
		/* the value from its definition, in double */
		const double v = ex ? ldexp(1.0 + man / 1024.0, ex - 15) : ldexp(man / 1024.0, -14);
		bad += (double)f != (neg ? -v : v) || (signbit(f) != 0) != neg;
		bad += tern_f32_to_f16(f) != h; /* narrowing inverts widening */
	}
	TT_EQ_INT(bad, 0);
	bad = 0;
	for (uint32_t h = 0; h < 65536; h++) {
		const float f = tern_bf16_to_f32((uint16_t)h);
		uint32_t u;
		memcpy(&u, &f, 4);
		bad += u != h << 16;
		if (!isnan(f))
			bad += tern_f32_to_bf16(f) != h;
	}
	TT_EQ_INT(bad, 0);
	/* rounding: ties to even, overflow, NaN */
	TT_CHECK(tern_f32_to_f16(1.0f + ldexpf(1.0f, -11)) == 0x3C00);
	TT_CHECK(tern_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)) == 0x3C02);
	TT_CHECK(tern_f32_to_f16(65520.0f) == 0x7C00 && tern_f32_to_f16(-1e30f) == 0xFC00);
	TT_CHECK((tern_f32_to_f16(NAN) & 0x7FFF) > 0x7C00);
	TT_CHECK(tern_f32_to_bf16(1.0f + ldexpf(1.0f, -8)) == 0x3F80);
	TT_CHECK(isnan(tern_bf16_to_f32(tern_f32_to_bf16(NAN))));
}

/* The row conversion (F16C where present) gives the scalar rule's bits: every
 * f16 code's float, its neighbours one float ulp away and the midpoints
 * between codes and theirs (the ties and the values around them), infinities
 * and NaNs with payloads, in rows of odd lengths and offsets (the vector
 * steps and their scalar tails). */
static void test_half_rows(void)
{
	const size_t n = 65536 * 8 + 13;
	float *x = malloc(n * sizeof *x);
	uint16_t *h = malloc(n * sizeof *h);
	TT_REQUIRE(x && h);
	size_t c = 0;
	for (uint32_t code = 0; code < 65536; code++) {
		const float f = tern_f16_to_f32((uint16_t)code), g = tern_f16_to_f32((uint16_t)(code + 1));
		const float mid = isfinite(f) && isfinite(g) && (code & 0x7FFF) != 0x7BFF ? f + (g - f) / 2 : f;
		x[c++] = f;
		x[c++] = nextafterf(f, INFINITY);
		x[c++] = nextafterf(f, -INFINITY);
		x[c++] = mid;
		x[c++] = nextafterf(mid, INFINITY);
		x[c++] = nextafterf(mid, -INFINITY);
	}
	/* NaNs (payloads, both signs) at every 1021st place: most 8-lane steps
	 * hold none, so the vector conversion is what gets checked there */
	for (size_t i = 0; i < c; i += 1021) {
		const uint32_t u = (i & 1 ? 0xFF800000u : 0x7F800000u) | (uint32_t)(1 + i * 97 % 0x7FFFFF);
		memcpy(&x[i], &u, 4);
	}
	while (c < n)
		x[c] = ldexpf((float)c, -(int)(c % 40)), c++;
	int bad = 0;
	for (size_t off = 0; off < 9; off += 4) {
		const size_t len = n - off - (off ? 5 : 0);
		memset(h, 0xAB, n * sizeof *h);
		tern_f32_to_f16_n(x + off, h + off, len);
		for (size_t i = 0; i < len; i++)
			bad += h[off + i] != tern_f32_to_f16(x[off + i]);
		tern_f32_to_bf16_n(x + off, h + off, len);
		for (size_t i = 0; i < len; i++)
			bad += h[off + i] != tern_f32_to_bf16(x[off + i]);
	}
	TT_EQ_INT(bad, 0);
	free(x);
	free(h);
}

/* ---- dispatch ---------------------------------------------------------------------- */

static void test_dispatch(void)
{
	const tern_float_kernels *def = tern_float_kernels_get(TERN_ISA_AUTO);
	TT_REQUIRE(def != NULL);
	TT_EQ_INT(def->isa, tern_isa_default());
	for (int i = 0; i < TERN_ISA_COUNT; i++) {
		const tern_float_kernels *k = tern_float_kernels_get((tern_isa)i);
		TT_EQ_INT(k != NULL, tern_isa_available((tern_isa)i));
		if (k)
			TT_EQ_INT(k->isa, i);
	}
	TT_CHECK(tern_float_kernels_get((tern_isa)TERN_ISA_COUNT) == NULL);
	TT_CHECK(tern_float_kernels_get((tern_isa)-7) == NULL);
	/* forcing an ISA moves AUTO with it, like the ternary kernels */
	for (int i = 0; i < TERN_ISA_COUNT; i++)
		if (tern_kernel_force_isa((tern_isa)i) == 0)
			TT_EQ_INT(tern_float_kernels_get(TERN_ISA_AUTO)->isa, i);
	TT_EQ_INT(tern_kernel_force_isa(TERN_ISA_AUTO), 0);
	const char *env = getenv("TERN_KERNEL");
	if (env)
		fprintf(stderr, "  TERN_KERNEL=%s -> %s\n", env, tern_isa_name(tern_float_kernels_get(TERN_ISA_AUTO)->isa));
}

/* ---- RMSNorm, softmax, RoPE ------------------------------------------------------------ */

static void test_rmsnorm_all_isas(void)
{
	const tern_float_kernels *ref = tern_float_kernels_get(TERN_ISA_REF), *isas[TERN_ISA_COUNT];
	const int n_isa = other_isas("rmsnorm", isas);
	enum { MAXN = 6912 };
	float *x = malloc(MAXN * sizeof(float)), *w = malloc(MAXN * sizeof(float));
	float *want = malloc(MAXN * sizeof(float)), *got = malloc(MAXN * sizeof(float));
	TT_REQUIRE(x && w && want && got);
	int mismatches = 0, checked = 0;
	for (int wi = 0; wi < N_WIDTHS; wi++) {
		const int n = widths[wi];
		for (int rep = 0; rep < 3; rep++) {
			const float mag = rep == 0 ? 1.0f : rep == 1 ? 1e-3f : 300.0f;
			for (int i = 0; i < n; i++) {
				x[i] = frand(-mag, mag);
				w[i] = frand(0.25f, 2.0f);
			}
			for (int use_w = 0; use_w < 2; use_w++) {
				const float *wp = use_w ? w : NULL;
				ref->rmsnorm(x, wp, n, 1e-5f, want);
				/* the reference is the formula of tern-float.h */
				double ss = 0.0;
				for (int i = 0; i < n; i++)
					ss += (double)x[i] * (double)x[i];
				const float s = 1.0f / sqrtf((float)(ss / (double)n) + 1e-5f);
				for (int i = 0; i < n; i++) {
					const float e = wp ? (x[i] * s) * wp[i] : x[i] * s;
					mismatches += memcmp(&e, &want[i], 4) != 0;
				}
				for (int k = 0; k < n_isa; k++) {
					isas[k]->rmsnorm(x, wp, n, 1e-5f, got);
					checked++;
					if (!same_bits(got, want, (size_t)n)) {
						mismatches++;
						fprintf(stderr, "  rmsnorm %s n=%d w=%d differs\n", tern_isa_name(isas[k]->isa), n,
							use_w);
					}
					/* in place */
					memcpy(got, x, (size_t)n * sizeof(float));
					isas[k]->rmsnorm(got, wp, n, 1e-5f, got);
					mismatches += !same_bits(got, want, (size_t)n);
				}
			}
		}
	}
	TT_EQ_INT(mismatches, 0);
	fprintf(stderr, "  %d rmsnorm comparisons on %d ISAs\n", checked, n_isa);
	free(x);
	free(w);
	free(want);
	free(got);
}

static void test_softmax_all_isas(void)
{
	const tern_float_kernels *ref = tern_float_kernels_get(TERN_ISA_REF), *isas[TERN_ISA_COUNT];
	const int n_isa = other_isas("softmax", isas);
	enum { MAXN = 6912 };
	float *x = malloc(MAXN * sizeof(float)), *want = malloc(MAXN * sizeof(float));
	float *got = malloc(MAXN * sizeof(float));
	TT_REQUIRE(x && want && got);
	int mismatches = 0;
	for (int wi = 0; wi < N_WIDTHS; wi++) {
		const int n = widths[wi];
		for (int style = 0; style < 5; style++) {
			for (int i = 0; i < n; i++) {
				switch (style) {
				case 0: x[i] = frand(-20, 20); break;
				case 1: x[i] = frand(-1e-3f, 1e-3f); break;
				case 2: x[i] = -(float)i; break;                      /* max first */
				case 3: x[i] = (float)(i % 7) - 50.0f; break;         /* ties */
				default: x[i] = i % 3 ? -0.0f : (i % 2 ? 0.0f : -3.0f); /* zero maxima of both signs */
				}
			}
			if (style == 0 && n > 3)
				x[n / 2] = 40.0f; /* a max in the middle */
			memcpy(want, x, (size_t)n * sizeof(float));
			ref->softmax(want, n);
			/* the reference against the formula, sequentially */
			float m = x[0];
			for (int i = 1; i < n; i++)
				m = x[i] > m ? x[i] : m;
			double sum = 0.0;
			float e[MAXN];
			for (int i = 0; i < n; i++)
				sum += (double)(e[i] = expf(x[i] - m));
			const float inv = (float)(1.0 / sum);
			for (int i = 0; i < n; i++) {
				const float v = e[i] * inv;
				mismatches += memcmp(&v, &want[i], 4) != 0;
			}
			for (int k = 0; k < n_isa; k++) {
				memcpy(got, x, (size_t)n * sizeof(float));
				isas[k]->softmax(got, n);
				if (!same_bits(got, want, (size_t)n)) {
					mismatches++;
					fprintf(stderr, "  softmax %s n=%d style %d differs\n", tern_isa_name(isas[k]->isa), n,
						style);
				}
			}
		}
	}
	TT_EQ_INT(mismatches, 0);
	free(x);
	free(want);
	free(got);
}

static void test_rope_all_isas(void)
{
	const tern_float_kernels *ref = tern_float_kernels_get(TERN_ISA_REF), *isas[TERN_ISA_COUNT];
	const int n_isa = other_isas("rope", isas);
	enum { NPOS = 300, MAXHD = 256, NH = 5 };
	const int hds[] = {2, 4, 6, 8, 10, 14, 16, 18, 30, 32, 34, 62, 64, 66, 96, 128, 130, 256};
	float *cs = malloc(sizeof(float) * NPOS * MAXHD);
	TT_REQUIRE(cs);
	int mismatches = 0;
	for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++) {
		const int hd = hds[hi];
		tern_rope_table(10000.0f, hd, NPOS, cs);
		/* the table is cos/sin of the documented angle */
		const int p = NPOS - 1, j = hd / 2 - 1;
		const double ang = (double)p * pow(10000.0, -2.0 * j / hd);
		mismatches += cs[((size_t)p * (size_t)(hd / 2) + (size_t)j) * 2] != (float)cos(ang);
		mismatches += cs[((size_t)p * (size_t)(hd / 2) + (size_t)j) * 2 + 1] != (float)sin(ang);
		const int poss[] = {0, 1, 17, NPOS - 1};
		for (int pi = 0; pi < 4; pi++)
			for (int nh = 1; nh <= NH; nh += 4) {
				float x[NH * MAXHD], want[NH * MAXHD], got[NH * MAXHD];
				for (int i = 0; i < nh * hd; i++)
					x[i] = frand(-3, 3);
				const float *row = cs + (size_t)poss[pi] * (size_t)hd;
				memcpy(want, x, sizeof(float) * (size_t)(nh * hd));
				ref->rope(want, nh, hd, row);
				for (int h = 0; h < nh; h++)
					for (int jj = 0; jj < hd / 2; jj++) {
						const float c = row[2 * jj], s = row[2 * jj + 1];
						const float x0 = x[h * hd + jj], x1 = x[h * hd + jj + hd / 2];
						const float r0 = x0 * c - x1 * s, r1 = x0 * s + x1 * c;
						mismatches += memcmp(&r0, &want[h * hd + jj], 4) != 0;
						mismatches += memcmp(&r1, &want[h * hd + jj + hd / 2], 4) != 0;
					}
				for (int k = 0; k < n_isa; k++) {
					memcpy(got, x, sizeof(float) * (size_t)(nh * hd));
					isas[k]->rope(got, nh, hd, row);
					if (!same_bits(got, want, (size_t)(nh * hd))) {
						mismatches++;
						fprintf(stderr, "  rope %s head_dim=%d heads=%d differs\n",
							tern_isa_name(isas[k]->isa), hd, nh);
					}
				}
			}
	}
	TT_EQ_INT(mismatches, 0);
	free(cs);
}

/* ---- dense dot products ------------------------------------------------------------------ */

static const size_t elem_size[TERN_DOT_COUNT] = {4, 2, 2};
static const char *const type_names[TERN_DOT_COUNT] = {"f32", "f16", "bf16"};

/* The order of tern-float.h, written out from the comment. */
static float documented_dot(const float *row, const float *x, int n)
{
	float lane[64];
	for (int k = 0; k < 64; k++)
		lane[k] = 0.0f;
	for (int i = 0; i < n; i++)
		lane[i % 64] = fmaf(row[i], x[i], lane[i % 64]);
	for (int w = 32; w >= 1; w /= 2)
		for (int k = 0; k < w; k++)
			lane[k] = lane[k] + lane[k + w];
	return lane[0];
}

/* A random row of type t at row, and its values as floats (by the base
 * conversions) in f. */
static void fill_row(uint8_t *row, tern_dot_type t, int n, float *f)
{
	for (int i = 0; i < n; i++) {
		const float v = frand(-1, 1);
		switch (t) {
		case TERN_DOT_F16: {
			const uint16_t h = tern_f32_to_f16(i % 97 == 5 ? v * 1e-6f : v); /* some subnormals */
			memcpy(row + 2 * (size_t)i, &h, 2);
			f[i] = tern_f16_to_f32(h);
			break;
		}
		case TERN_DOT_BF16: {
			const uint16_t h = tern_f32_to_bf16(v);
			memcpy(row + 2 * (size_t)i, &h, 2);
			f[i] = tern_bf16_to_f32(h);
			break;
		}
		default:
			memcpy(row + 4 * (size_t)i, &v, 4);
			f[i] = v;
			break;
		}
	}
}

/* rows x n of type t (stride row_bytes, misaligned by one byte on purpose)
 * against nx vectors: every ISA equals the reference, the reference equals
 * the documented order, any row split and any nx gives the same values. */
static int check_dot(tern_dot_type t, int rows, int n, int nx, const tern_float_kernels *const *isas, int n_isa,
		     int *checked)
{
	const size_t row_bytes = (size_t)n * elem_size[t] + (rows & 1 ? 3 : 0);
	uint8_t *buf = malloc(1 + (size_t)rows * row_bytes);
	float *x = malloc(sizeof(float) * (size_t)nx * (size_t)(n + 5));
	float *scale = malloc(sizeof(float) * (size_t)rows);
	float *want = malloc(sizeof(float) * (size_t)nx * (size_t)rows * 2);
	float *got = malloc(sizeof(float) * (size_t)nx * (size_t)rows * 2);
	float *one = malloc(sizeof(float) * (size_t)rows);
	float *wf = malloc(sizeof(float) * (size_t)rows * (size_t)n);
	int bad = 0;
	if (!buf || !x || !scale || !want || !got || !one || !wf) {
		bad = 1;
		goto done;
	}
	uint8_t *w = buf + 1;
	for (int r = 0; r < rows; r++) {
		fill_row(w + (size_t)r * row_bytes, t, n, wf + (size_t)r * (size_t)n);
		scale[r] = frand(0.001f, 0.02f);
	}
	const size_t ldx = (size_t)n + (size_t)(nx & 3); /* vectors at odd offsets too */
	for (size_t i = 0; i < (size_t)nx * ldx; i++)
		x[i] = frand(-4, 4);
	const tern_float_kernels *ref = tern_float_kernels_get(TERN_ISA_REF);
	for (int use_scale = 0; use_scale < 2; use_scale++) {
		const size_t ldo = (size_t)rows * 2;
		tern_dot_args a = {t, w, row_bytes, use_scale ? scale : NULL, n, x, ldx, nx, want, ldo};
		ref->dot_rows(&a, 0, rows);
		for (int j = 0; j < nx; j++)
			for (int r = 0; r < rows; r++) {
				float d = documented_dot(wf + (size_t)r * (size_t)n, x + (size_t)j * ldx, n);
				if (use_scale)
					d = d * scale[r];
				bad += memcmp(&d, &want[(size_t)j * ldo + (size_t)r], 4) != 0;
			}
		for (int k = 0; k < n_isa; k++) {
			/* whole range, then in two pieces: same values */
			a.out = got;
			memset(got, 0xff, sizeof(float) * (size_t)nx * ldo);
			isas[k]->dot_rows(&a, 0, rows);
			int diff = 0;
			for (int j = 0; j < nx; j++)
				diff += !same_bits(got + (size_t)j * ldo, want + (size_t)j * ldo, (size_t)rows);
			const int cut = rows / 3;
			memset(got, 0xff, sizeof(float) * (size_t)nx * ldo);
			isas[k]->dot_rows(&a, cut, rows);
			isas[k]->dot_rows(&a, 0, cut);
			for (int j = 0; j < nx; j++)
				diff += !same_bits(got + (size_t)j * ldo, want + (size_t)j * ldo, (size_t)rows);
			/* each vector alone equals the same vector inside the batch */
			for (int j = 0; j < nx; j++) {
				tern_dot_args a1 = a;
				a1.x = x + (size_t)j * ldx;
				a1.nx = 1;
				a1.out = one;
				isas[k]->dot_rows(&a1, 0, rows);
				diff += !same_bits(one, want + (size_t)j * ldo, (size_t)rows);
			}
			if (diff)
				fprintf(stderr, "  dot %s %s rows=%d n=%d nx=%d scale=%d differs\n", tern_isa_name(isas[k]->isa),
					type_names[t], rows, n, nx, use_scale);
			bad += diff;
			(*checked)++;
		}
		/* the reference has the same per-vector property */
		for (int j = 0; j < nx; j++) {
			tern_dot_args a1 = a;
			a1.x = x + (size_t)j * ldx;
			a1.nx = 1;
			a1.out = one;
			ref->dot_rows(&a1, 0, rows);
			bad += !same_bits(one, want + (size_t)j * ldo, (size_t)rows);
		}
	}
done:
	free(buf);
	free(x);
	free(scale);
	free(want);
	free(got);
	free(one);
	free(wf);
	return bad;
}

static void test_dot_all_isas(void)
{
	const tern_float_kernels *isas[TERN_ISA_COUNT];
	const int n_isa = other_isas("dot_rows", isas);
	int bad = 0, checked = 0;
	for (int t = 0; t < TERN_DOT_COUNT; t++)
		for (int wi = 0; wi < N_WIDTHS; wi++) {
			const int n = widths[wi];
			const int nx = 1 + wi % 9; /* 1..9 vectors: the 4-wide pass, its tail */
			const int rows = n >= 2560 ? 5 : 1 + (wi * 7) % 13;
			bad += check_dot((tern_dot_type)t, rows, n, nx, isas, n_isa, &checked);
		}
	/* every vector count at one awkward width */
	for (int nx = 0; nx <= 9; nx++)
		bad += check_dot(TERN_DOT_F16, 6, 203, nx, isas, n_isa, &checked);
	TT_EQ_INT(bad, 0);
	fprintf(stderr, "  %d dot batches compared on %d ISAs\n", checked, n_isa);
}

/* The reference is accurate (against double) and the lane order is real: a
 * plain sequential float sum gives different bits on some inputs. */
static void test_dot_accuracy_and_order(void)
{
	enum { N = 1000 };
	float w[N], x[N], out;
	for (int i = 0; i < N; i++) {
		w[i] = frand(-1, 1);
		x[i] = frand(-1, 1);
	}
	tern_dot_args a = {TERN_DOT_F32, w, sizeof w, NULL, N, x, N, 1, &out, 1};
	tern_float_kernels_get(TERN_ISA_REF)->dot_rows(&a, 0, 1);
	double d = 0, mag = 0;
	float seq = 0.0f;
	for (int i = 0; i < N; i++) {
		d += (double)w[i] * x[i];
		mag += fabs((double)w[i] * x[i]);
		seq = fmaf(w[i], x[i], seq);
	}
	TT_CHECKF(fabs(out - d) <= 1e-6 * mag, "dot %g vs double %g", (double)out, d);
	TT_CHECK(out != seq); /* this data's sequential sum rounds differently */
	/* element i goes to lane i % 64 and the lanes meet in the tree: 1 at
	 * element 0 and 4e-8 at elements 32 and 96 give 1 + 2^-23 (lane 32 holds
	 * 8e-8 when it meets lane 0), where an index-order sum stays at 1 */
	float w2[97], x2[97], o2;
	for (int i = 0; i < 97; i++)
		w2[i] = 1.0f, x2[i] = 0.0f;
	x2[0] = 1.0f, x2[32] = 4e-8f, x2[96] = 4e-8f;
	tern_dot_args a2 = {TERN_DOT_F32, w2, sizeof w2, NULL, 97, x2, 97, 1, &o2, 1};
	tern_float_kernels_get(TERN_ISA_REF)->dot_rows(&a2, 0, 1);
	TT_CHECKF(o2 == 1.0f + 0x1p-23f, "%a", (double)o2);
}

/* ---- quantized head (integer dot products) ---------------------------------------------- */

#if defined(__x86_64__) || defined(__i386__)
extern int tern_kern_avx512_vnni; /* kernels' VNNI switch: both paths are compared */
#define QH_VARIANTS 2
#else
#define QH_VARIANTS 1
#endif

static const char *const qh_names[TERN_QH_COUNT] = {"q8", "q4"};

/* The order of tern-float.h, from tern_qh_unpack_row and tern_qx_quantize. */
static float documented_qdot(tern_qh_type t, const uint8_t *w, int r, int n, const int8_t *xq, const float *xd)
{
	const int nb = tern_qh_blocks(n);
	int8_t q[2600 / 32 * 32 + 32];
	float dw[2600 / 32 + 1];
	tern_qh_unpack_row(t, w + (size_t)(r / 16) * tern_qh_group_bytes(t, n), r % 16, n, q, dw);
	float acc = 0.0f;
	for (int b = 0; b < nb; b++) {
		int32_t is = 0;
		for (int e = 0; e < 32; e++)
			is += (int32_t)q[32 * b + e] * xq[32 * b + e];
		acc = acc + (float)is * (dw[b] * xd[b]);
	}
	return acc;
}

/* rows x n packed as t against nx quantized rows: the reference equals the
 * documented order and, within the format's error, the float dot product;
 * every ISA (and on x86 both AVX-512 variants) equals the reference for the
 * whole range, split in two, and per activation row alone. */
static int check_qdot(tern_qh_type t, int rows, int n, int nx, const tern_float_kernels *const *isas, int n_isa,
		      int *checked)
{
	const int nb = tern_qh_blocks(n), ng = (rows + 15) / 16;
	const size_t ldo = (size_t)rows + 3;
	float *wf = malloc(sizeof(float) * (size_t)rows * (size_t)n);
	float *x = malloc(sizeof(float) * (size_t)(nx + 1) * (size_t)n);
	uint8_t *buf = malloc(tern_qh_bytes(t, rows, n) + 1);
	int8_t *xq = malloc((size_t)(nx + 1) * (size_t)nb * 32);
	float *xd = malloc(sizeof(float) * (size_t)(nx + 1) * (size_t)nb);
	int32_t *xs = malloc(sizeof(int32_t) * (size_t)(nx + 1) * (size_t)nb);
	float *want = malloc(sizeof(float) * (size_t)(nx + 1) * ldo), *got = malloc(sizeof(float) * (size_t)(nx + 1) * ldo);
	int bad = 0;
	if (!wf || !x || !buf || !xq || !xd || !xs || !want || !got) {
		bad = 1;
		goto done;
	}
	for (size_t i = 0; i < (size_t)rows * (size_t)n; i++)
		wf[i] = frand(-1, 1) * (i % 29 == 3 ? 8.0f : 1.0f); /* outliers set some block scales */
	for (size_t i = 0; i < (size_t)nx * (size_t)n; i++)
		x[i] = frand(-3, 3);
	if (nx > 1)
		memset(x + (size_t)n, 0, sizeof(float) * (size_t)(n < 40 ? n : 40)); /* all-zero blocks */
	uint8_t *w = buf + 1; /* misaligned on purpose */
	for (int g = 0; g < ng; g++)
		tern_qh_pack_group(t, wf + (size_t)g * 16 * (size_t)n, (size_t)n, rows - 16 * g < 16 ? rows - 16 * g : 16, n,
				   w + (size_t)g * tern_qh_group_bytes(t, n));
	for (int j = 0; j < nx; j++)
		tern_qx_quantize(x + (size_t)j * n, n, xq + (size_t)j * nb * 32, xd + (size_t)j * nb, xs + (size_t)j * nb);
	const tern_float_kernels *ref = tern_float_kernels_get(TERN_ISA_REF);
	tern_qdot_args a = {t, w, n, rows, xq, xd, xs, nx, want, ldo};
	ref->qdot_groups(&a, 0, ng);
	for (int j = 0; j < nx; j++)
		for (int r = 0; r < rows; r++) {
			const float d = documented_qdot(t, w, r, n, xq + (size_t)j * nb * 32, xd + (size_t)j * nb);
			const float got_r = want[(size_t)j * ldo + (size_t)r];
			bad += memcmp(&d, &got_r, 4) != 0;
			/* the quantized dot is near the float one: error bound from the block
			 * steps (|w - dw q| <= dw (Q4: clamp at +7), |x - dx q| <= dx / 2) */
			double exact = 0, tol = 0;
			for (int i = 0; i < n; i++) {
				const double wi = wf[(size_t)r * n + i], xi = x[(size_t)j * n + i];
				exact += wi * xi;
				tol += fabs(wi) * 3.0 / 254 + fabs(xi) * (t == TERN_QH_Q4 ? 8.0 / 7 : 8.0 / 254) + 1e-3;
			}
			if (fabs(got_r - exact) > tol) {
				bad++;
				fprintf(stderr, "  qdot %s n=%d: %g vs float %g (tol %g)\n", qh_names[t], n, (double)got_r, exact, tol);
			}
		}
	for (int k = 0; k < n_isa; k++) {
		/* AVX-512: the VNNI path (where the CPU has it), then the BW one */
		int nvar = 1;
#if QH_VARIANTS > 1
		const int vnni = tern_kern_avx512_vnni;
		if (isas[k]->isa == TERN_ISA_AVX512) {
			if (vnni)
				nvar = 2;
			else
				TT_NOTE_SKIP("qdot on avx512 with VNNI (not on this CPU)");
		}
#endif
		for (int var = 0; var < nvar; var++) {
#if QH_VARIANTS > 1
			if (var)
				tern_kern_avx512_vnni = 0;
#endif
			int diff = 0;
			a.out = got;
			memset(got, 0xff, sizeof(float) * (size_t)nx * ldo);
			isas[k]->qdot_groups(&a, 0, ng);
			for (int j = 0; j < nx; j++)
				diff += !same_bits(got + (size_t)j * ldo, want + (size_t)j * ldo, (size_t)rows);
			const int cut = ng / 2;
			memset(got, 0xff, sizeof(float) * (size_t)nx * ldo);
			isas[k]->qdot_groups(&a, cut, ng);
			isas[k]->qdot_groups(&a, 0, cut);
			for (int j = 0; j < nx; j++) {
				diff += !same_bits(got + (size_t)j * ldo, want + (size_t)j * ldo, (size_t)rows);
				/* nothing stored past the last row */
				uint32_t u;
				memcpy(&u, got + (size_t)j * ldo + (size_t)rows, 4);
				diff += u != 0xffffffffu;
			}
			for (int j = 0; j < nx; j++) {
				tern_qdot_args a1 = a;
				a1.xq = xq + (size_t)j * nb * 32, a1.xd = xd + (size_t)j * nb, a1.xs = xs + (size_t)j * nb;
				a1.nx = 1;
				isas[k]->qdot_groups(&a1, 0, ng);
				diff += !same_bits(got, want + (size_t)j * ldo, (size_t)rows);
			}
#if QH_VARIANTS > 1
			tern_kern_avx512_vnni = vnni;
#endif
			if (diff)
				fprintf(stderr, "  qdot %s %s%s rows=%d n=%d nx=%d differs\n", tern_isa_name(isas[k]->isa),
					var ? "(no VNNI) " : "", qh_names[t], rows, n, nx);
			bad += diff;
			(*checked)++;
		}
	}
done:
	free(wf);
	free(x);
	free(buf);
	free(xq);
	free(xd);
	free(xs);
	free(want);
	free(got);
	return bad;
}

static void test_qdot_all_isas(void)
{
	const tern_float_kernels *isas[TERN_ISA_COUNT];
	const int n_isa = other_isas("qdot_groups", isas);
	static const int qwidths[] = {1, 5, 31, 32, 33, 63, 64, 65, 96, 100, 127, 129, 200, 257, 1000, 2560, 2561};
	int bad = 0, checked = 0;
	for (int t = 0; t < TERN_QH_COUNT; t++) {
		for (size_t wi = 0; wi < sizeof qwidths / sizeof qwidths[0]; wi++) {
			const int n = qwidths[wi];
			const int rows = n >= 2560 ? 18 : 1 + (int)(wi * 11) % 40;
			bad += check_qdot((tern_qh_type)t, rows, n, 1 + (int)wi % 17, isas, n_isa, &checked);
		}
		/* every batch size 0..17 (the 8-row passes and their tails) */
		for (int nx = 0; nx <= 17; nx++)
			bad += check_qdot((tern_qh_type)t, 16 + nx, 203, nx, isas, n_isa, &checked);
	}
	TT_EQ_INT(bad, 0);
	fprintf(stderr, "  %d quantized dot batches compared on %d ISAs\n", checked, n_isa);
}

/* The formats' quantizers: every code in range, |w - dw q| within half a
 * step (Q4: the +8 side clamps to 7, one step), the activation block sums
 * right, zero blocks zero, and the Q4 extreme maps to -8 exactly. */
static void test_qh_formats(void)
{
	enum { N = 77 };
	float w[16 * N], x[N];
	for (int i = 0; i < 16 * N; i++)
		w[i] = frand(-2, 2);
	memset(w + N, 0, sizeof(float) * N); /* row 1 all zero */
	w[2 * N + 40] = -5.0f;                /* block 1 of row 2: its extreme */
	for (int t = 0; t < TERN_QH_COUNT; t++) {
		uint8_t g[3 * 544];
		TT_REQUIRE(tern_qh_group_bytes((tern_qh_type)t, N) <= sizeof g);
		tern_qh_pack_group((tern_qh_type)t, w, N, 5, N, g);
		int bad = 0;
		for (int k = 0; k < 16; k++) {
			int8_t q[3 * 32];
			float dw[3];
			tern_qh_unpack_row((tern_qh_type)t, g, k, N, q, dw);
			for (int i = 0; i < 3 * 32; i++) {
				const float v = k < 5 && i < N ? w[k * N + i] : 0.0f;
				const float step = fabsf(dw[i / 32]) * (t == TERN_QH_Q4 ? 1.0f : 0.5f) * 1.0001f;
				bad += fabsf(v - dw[i / 32] * q[i]) > step;
				bad += t == TERN_QH_Q4 ? (q[i] < -8 || q[i] > 7) : (q[i] < -127);
				bad += (k >= 5 || k == 1 || i >= N) && q[i] != 0;
			}
			if (k == 2)
				bad += t == TERN_QH_Q4 ? q[40] != -8 : q[40] != -127;
		}
		TT_EQ_INT(bad, 0);
		TT_EQ_INT(tern_qh_parse(tern_qh_name((tern_qh_type)t)), t);
	}
	TT_EQ_INT(tern_qh_parse("q5"), -1);
	for (int i = 0; i < N; i++)
		x[i] = i < 32 ? 0.0f : frand(-1, 1);
	x[50] = 2.5f;
	int8_t q[96];
	float dx[3];
	int32_t sum[3];
	tern_qx_quantize(x, N, q, dx, sum);
	TT_CHECK(dx[0] == 0.0f && sum[0] == 0 && q[50] == 127 && dx[1] == 2.5f / 127.0f);
	for (int b = 0; b < 3; b++) {
		int32_t s = 0;
		for (int e = 0; e < 32; e++)
			s += q[32 * b + e];
		TT_EQ_INT(s, sum[b]);
	}
	TT_CHECK(q[N] == 0 && q[95] == 0);
}

/* SwiGLU: every ISA equals the reference bit for bit; the reference equals
 * the documented order and lies within 4 float ulps of silu(g) * u in double
 * (expf and three float steps round), 1e-30 absolute; out may alias g. */
static void test_swiglu_all_isas(void)
{
	const tern_float_kernels *ref = tern_float_kernels_get(TERN_ISA_REF), *isas[TERN_ISA_COUNT];
	const int n_isa = other_isas("swiglu", isas);
	enum { MAXN = 6912 };
	float *g = malloc(MAXN * sizeof(float)), *u = malloc(MAXN * sizeof(float));
	float *want = malloc(MAXN * sizeof(float)), *got = malloc(MAXN * sizeof(float));
	TT_REQUIRE(g && u && want && got);
	int mismatches = 0, far = 0;
	static const float special[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 88.0f, -88.0f, 89.0f, -104.0f, -200.0f, 200.0f};
	for (int wi = 0; wi < N_WIDTHS; wi++) {
		const int n = widths[wi];
		for (int style = 0; style < 3; style++) {
			for (int i = 0; i < n; i++) {
				g[i] = style == 0 ? frand(-12, 12) : style == 1 ? frand(-1e-3f, 1e-3f)
										 : special[i % (int)(sizeof special / sizeof special[0])];
				u[i] = frand(-3, 3);
			}
			ref->swiglu(g, u, n, want);
			for (int i = 0; i < n; i++) {
				const float v = (g[i] / (1.0f + expf(-g[i]))) * u[i];
				mismatches += memcmp(&v, &want[i], 4) != 0;
				const double e = (double)g[i] / (1.0 + exp(-(double)g[i])) * (double)u[i];
				const double ulp = ldexp(1.0, ilogb(fabs(e) > 1e-30 ? e : 1e-30) - 23);
				far += fabs((double)want[i] - e) > 4.0 * ulp;
			}
			for (int k = 0; k < n_isa; k++) {
				memcpy(got, g, (size_t)n * sizeof(float));
				isas[k]->swiglu(got, u, n, got); /* in place over g */
				if (!same_bits(got, want, (size_t)n)) {
					mismatches++;
					fprintf(stderr, "  swiglu %s n=%d style %d differs\n", tern_isa_name(isas[k]->isa), n,
						style);
				}
			}
		}
	}
	TT_EQ_INT(mismatches, 0);
	TT_EQ_INT(far, 0);
	free(g);
	free(u);
	free(want);
	free(got);
}

/* relu2: every ISA equals the reference bit for bit (NaN, signed zeros,
 * ragged widths, in place over g), and the reference the documented order. */
static void test_relu2_all_isas(void)
{
	const tern_float_kernels *ref = tern_float_kernels_get(TERN_ISA_REF), *isas[TERN_ISA_COUNT];
	const int n_isa = other_isas("relu2", isas);
	enum { MAXN = 6912 };
	float *g = malloc(MAXN * sizeof(float)), *u = malloc(MAXN * sizeof(float));
	float *want = malloc(MAXN * sizeof(float)), *got = malloc(MAXN * sizeof(float));
	TT_REQUIRE(g && u && want && got);
	int mismatches = 0;
	static const float special[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e20f, -1e20f, 3e38f, NAN, INFINITY, -INFINITY};
	for (int wi = 0; wi < N_WIDTHS; wi++) {
		const int n = widths[wi];
		for (int style = 0; style < 2; style++) {
			for (int i = 0; i < n; i++) {
				g[i] = style == 0 ? frand(-12, 12) : special[i % (int)(sizeof special / sizeof special[0])];
				u[i] = frand(-3, 3);
			}
			ref->relu2(g, u, n, want);
			for (int i = 0; i < n; i++) {
				const float r = g[i] > 0.0f ? g[i] : 0.0f, v = (r * r) * u[i];
				mismatches += memcmp(&v, &want[i], 4) != 0;
			}
			for (int k = 0; k < n_isa; k++) {
				memcpy(got, g, (size_t)n * sizeof(float));
				isas[k]->relu2(got, u, n, got); /* in place over g */
				if (!same_bits(got, want, (size_t)n)) {
					mismatches++;
					fprintf(stderr, "  relu2 %s n=%d style %d differs\n", tern_isa_name(isas[k]->isa), n,
						style);
				}
			}
		}
	}
	TT_EQ_INT(mismatches, 0);
	free(g);
	free(u);
	free(want);
	free(got);
}

TT_MAIN(TT_CASE(test_half_all_codes), TT_CASE(test_half_rows), TT_CASE(test_dispatch), TT_CASE(test_rmsnorm_all_isas),
	TT_CASE(test_softmax_all_isas), TT_CASE(test_rope_all_isas), TT_CASE(test_dot_all_isas),
	TT_CASE(test_dot_accuracy_and_order), TT_CASE(test_qdot_all_isas), TT_CASE(test_qh_formats),
	TT_CASE(test_swiglu_all_isas), TT_CASE(test_relu2_all_isas))
