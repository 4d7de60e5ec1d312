/* bench-common.c: the parts of tern-bench every mode uses (bench.h): row
 * output as table / JSON lines / CSV, option helpers, big buffers, and the
 * read-bandwidth probe. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "bench.h"

/* ---- output ---------------------------------------------------------------- */

void bench_out_init(bench_out *o, bench_fmt fmt, const char *const *csv_cols)
{
	memset(o, 0, sizeof *o);
	o->fmt = fmt;
	o->rows = stdout;
	o->table = fmt == BENCH_FMT_TABLE ? stdout : stderr;
	o->csv_cols = csv_cols;
}

static bench_field *row_add(bench_row *r, const char *key, int kind)
{
	/* A mode adding more fields than the row holds is a programming error
	 * caught by the smoke test, not something to survive quietly. */
	if (r->n >= BENCH_MAX_FIELDS) {
		fprintf(stderr, "tern-bench: too many fields in a row (%s)\n", key);
		abort();
	}
	bench_field *f = &r->f[r->n++];
	memset(f, 0, sizeof *f);
	f->key = key;
	f->kind = kind;
	return f;
}

void bench_row_str(bench_row *r, const char *key, const char *v)
{
	bench_field *f = row_add(r, key, 2);
	snprintf(f->str, sizeof f->str, "%s", v ? v : "");
}

void bench_row_int(bench_row *r, const char *key, long long v)
{
	row_add(r, key, 1)->i = v;
}

void bench_row_num(bench_row *r, const char *key, double v)
{
	row_add(r, key, 0)->num = v;
}

void bench_row_init(bench_row *r, const char *bench, const char *what, int threads, double value, const char *unit,
		    double bound)
{
	r->n = 0;
	bench_row_str(r, "bench", bench);
	bench_row_str(r, "what", what);
	bench_row_int(r, "threads", threads);
	bench_row_num(r, "value", value);
	bench_row_str(r, "unit", unit);
	bench_row_num(r, "bound", bound);
	bench_row_num(r, "fraction", bound > 0 ? value / bound : NAN);
}

static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void print_num(FILE *f, double v, int json)
{
	if (!isfinite(v)) {
		if (json)
			fputs("null", f);
		return;
	}
	/* Enough digits to keep GB/s and tok/s exact to the measurement's noise. */
	fprintf(f, "%.6g", v);
}

static void print_field(FILE *f, const bench_field *fl, int json)
{
	switch (fl->kind) {
	case 0: print_num(f, fl->num, json); break;
	case 1: fprintf(f, "%lld", fl->i); break;
	default:
		if (json)
			json_string(f, fl->str);
		else
			fputs(fl->str, f); /* CSV values never hold commas or quotes here */
		break;
	}
}

void bench_emit(bench_out *o, const bench_row *r)
{
	o->n_rows++;
	if (o->fmt == BENCH_FMT_JSON) {
		fputc('{', o->rows);
		for (int i = 0; i < r->n; i++) {
			if (i)
				fputc(',', o->rows);
			json_string(o->rows, r->f[i].key);
			fputc(':', o->rows);
			print_field(o->rows, &r->f[i], 1);
		}
		fputs("}\n", o->rows);
	} else if (o->fmt == BENCH_FMT_CSV && o->csv_cols) {
		if (!o->csv_header_done) {
			for (int c = 0; o->csv_cols[c]; c++)
				fprintf(o->rows, "%s%s", c ? "," : "", o->csv_cols[c]);
			fputc('\n', o->rows);
			o->csv_header_done = 1;
		}
		for (int c = 0; o->csv_cols[c]; c++) {
			if (c)
				fputc(',', o->rows);
			for (int i = 0; i < r->n; i++)
				if (!strcmp(r->f[i].key, o->csv_cols[c])) {
					print_field(o->rows, &r->f[i], 0);
					break;
				}
		}
		fputc('\n', o->rows);
	}
	fflush(o->rows);
}

void bench_table(bench_out *o, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(o->table, fmt, ap);
	va_end(ap);
	fflush(o->table);
}

/* ---- options ---------------------------------------------------------------- */

int bench_parse_int_list(const char *s, int *out, int max)
{
	int n = 0;
	if (!s || !*s)
		return -1;
	while (*s) {
		char *end;
		errno = 0;
		long v = strtol(s, &end, 10);
		if (end == s || errno || v < 0 || v > 1000000 || n >= max)
			return -1;
		out[n++] = (int)v;
		if (*end == ',')
			end++;
		else if (*end)
			return -1;
		s = end;
	}
	return n;
}

int bench_allowed_cpus(int *cpus, int max)
{
	cpu_set_t set;
	int n = 0;
	if (sched_getaffinity(0, sizeof set, &set) == 0)
		for (int c = 0; c < CPU_SETSIZE && n < max; c++)
			if (CPU_ISSET(c, &set))
				cpus[n++] = c;
	if (n == 0)
		cpus[n++] = 0;
	return n;
}

int bench_pin_self(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
	if (rc) {
		TERN_LOGW("bench", "cannot pin the main thread to cpu %d: %s", cpu, strerror(rc));
		return -1;
	}
	return 0;
}

/* ---- memory ------------------------------------------------------------------ */

void *bench_big_alloc(size_t bytes)
{
	/* 2 MiB pages keep TLB misses out of a bandwidth measurement (advice
	 * only), the same region the plan loader puts weights in */
	void *p = tern_huge_alloc(bytes);
	if (p)
		memset(p, 1, bytes);
	return p;
}

void bench_big_free(void *p, size_t bytes)
{
	tern_huge_free(p, bytes);
}

/* ---- read bandwidth ----------------------------------------------------------- */

/* Four independent accumulators per loop so the adds never limit the loads. */
#if defined(__x86_64__)
__attribute__((target("avx512f"))) static uint64_t sum_avx512(const void *p, size_t bytes)
{
	const __m512i *v = p;
	__m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
	for (size_t i = 0, n = bytes / 256; i < n; i++, v += 4) {
		a0 = _mm512_add_epi64(a0, _mm512_load_si512(v));
		a1 = _mm512_add_epi64(a1, _mm512_load_si512(v + 1));
		a2 = _mm512_add_epi64(a2, _mm512_load_si512(v + 2));
		a3 = _mm512_add_epi64(a3, _mm512_load_si512(v + 3));
	}
	a0 = _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3));
	/* Unsigned lanes: the header's reduce adds signed and may overflow. */
	uint64_t out[8], s = 0;
	_mm512_storeu_si512(out, a0);
	for (int i = 0; i < 8; i++)
		s += out[i];
	return s;
}

__attribute__((target("avx2"))) static uint64_t sum_avx2(const void *p, size_t bytes)
{
	const __m256i *v = p;
	__m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
	for (size_t i = 0, n = bytes / 128; i < n; i++, v += 4) {
		a0 = _mm256_add_epi64(a0, _mm256_load_si256(v));
		a1 = _mm256_add_epi64(a1, _mm256_load_si256(v + 1));
		a2 = _mm256_add_epi64(a2, _mm256_load_si256(v + 2));
		a3 = _mm256_add_epi64(a3, _mm256_load_si256(v + 3));
	}
	a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
	uint64_t out[4];
	_mm256_storeu_si256((__m256i *)out, a0);
	return out[0] + out[1] + out[2] + out[3];
}
#endif

static uint64_t sum_scalar(const void *p, size_t bytes)
{
	const uint64_t *v = p;
	uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
	for (size_t i = 0, n = bytes / 32; i < n; i++, v += 4) {
		a0 += v[0];
		a1 += v[1];
		a2 += v[2];
		a3 += v[3];
	}
	return a0 + a1 + a2 + a3;
}

typedef uint64_t (*sum_fn)(const void *, size_t);

static sum_fn pick_sum(const char **name)
{
#if defined(__x86_64__)
	const tern_cpu *c = tern_cpu_get();
	if (c->avx512f) {
		*name = "avx512";
		return sum_avx512;
	}
	if (c->avx2) {
		*name = "avx2";
		return sum_avx2;
	}
#endif
	*name = "scalar";
	return sum_scalar;
}

const char *bench_read_bw_isa(void)
{
	const char *name;
	pick_sum(&name);
	return name;
}

typedef struct bw_job {
	const uint8_t *buf;
	size_t bytes;
	sum_fn fn;
	uint64_t sink[TERN_POOL_MAX_THREADS];
} bw_job;

static void bw_task(void *ctx, int tid, int nth)
{
	bw_job *j = ctx;
	/* 256-byte slices keep every thread's loop on whole unrolled steps. */
	const size_t units = j->bytes / 256;
	const size_t u0 = units * (size_t)tid / (size_t)nth, u1 = units * (size_t)(tid + 1) / (size_t)nth;
	j->sink[tid] = j->fn(j->buf + u0 * 256, (u1 - u0) * 256);
}

/* The sums must be used or the loads could be dropped. */
static volatile uint64_t bw_keep;

double bench_read_pass(tern_pool *pool, const void *buf, size_t bytes)
{
	static bw_job j; /* big (one slot per thread); passes run one at a time */
	const char *name;
	j.buf = buf;
	j.bytes = bytes / 256 * 256;
	j.fn = pick_sum(&name);
	const double t0 = tern_now_s();
	tern_pool_run(pool, bw_task, &j);
	const double dt = tern_now_s() - t0;
	uint64_t s = 0;
	for (int t = 0; t < tern_pool_size(pool); t++)
		s += j.sink[t];
	bw_keep = s;
	return (double)j.bytes / dt / 1e9;
}

double bench_read_bw(tern_pool *pool, const void *buf, size_t bytes, int min_reps, double min_s)
{
	bench_read_pass(pool, buf, bytes); /* warm-up: TLB, clock frequency */
	double best = 0;
	const double t0 = tern_now_s();
	for (int rep = 0; rep < 1000 && (rep < min_reps || tern_now_s() - t0 < min_s); rep++) {
		const double gbs = bench_read_pass(pool, buf, bytes);
		if (gbs > best)
			best = gbs;
	}
	return best;
}
