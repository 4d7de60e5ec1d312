/* test_pool.c: the kernel thread pool (kernels/tern-pool.h): every thread
 * runs every time, many back-to-back runs lose nothing (spinning and
 * futex-sleeping hand-offs), create/free cycles, CPU pinning, argument
 * errors, and the row-split products equal the single-threaded ones bit for
 * bit for every packing, ISA and thread count. */
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tern-kernels.h"
#include "tern-pool.h"
#include "tern-test.h"
#include "test-util.h"

/* ---- plain runs ---------------------------------------------------------- */

typedef struct count_ctx {
	int nth_seen[8];    /* nth each tid was given */
	long calls[8];      /* per-tid call count (each tid writes its own slot) */
	_Atomic long total; /* calls over all threads */
	_Atomic int cpu[8]; /* sched_getcpu() of each tid */
	int sleep_tid;      /* this tid sleeps ~1 ms per call (-1: none) */
} count_ctx;

static void count_fn(void *vctx, int tid, int nth)
{
	count_ctx *c = vctx;
	c->nth_seen[tid] = nth;
	c->calls[tid]++;
	atomic_fetch_add(&c->total, 1);
	atomic_store(&c->cpu[tid], sched_getcpu());
	if (tid == c->sleep_tid) {
		struct timespec ts = {0, 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}

static void test_every_thread_runs(void)
{
	for (int n = 1; n <= 5; n++) {
		tern_pool *p = NULL;
		tern_err e;
		TT_REQUIRE(tern_pool_create(n, NULL, 0, &p, &e) == 0);
		TT_EQ_INT(tern_pool_size(p), n);
		count_ctx c;
		memset(&c, 0, sizeof c);
		c.sleep_tid = -1;
		for (int r = 0; r < 3; r++)
			tern_pool_run(p, count_fn, &c);
		for (int t = 0; t < n; t++) {
			TT_EQ_INT(c.calls[t], 3);
			TT_EQ_INT(c.nth_seen[t], n);
		}
		for (int t = n; t < 8; t++)
			TT_EQ_INT(c.calls[t], 0);
		TT_EQ_INT(atomic_load(&c.total), 3 * n);
		tern_pool_free(p);
	}
	/* A NULL pool is the caller alone. */
	count_ctx c;
	memset(&c, 0, sizeof c);
	c.sleep_tid = -1;
	tern_pool_run(NULL, count_fn, &c);
	TT_EQ_INT(c.calls[0], 1);
	TT_EQ_INT(c.nth_seen[0], 1);
	TT_EQ_INT(tern_pool_size(NULL), 1);
}

/* 10k runs with each hand-off mode: spinning (default), and spin 0 so every
 * wait goes through the futex; then runs where one side is always late, so
 * the other must sleep and be woken. */
static void rapid_runs(const char *spin_us, int n, int runs, int sleep_tid)
{
	setenv("TERN_POOL_SPIN_US", spin_us, 1);
	tern_pool *p = NULL;
	tern_err e;
	int rc = tern_pool_create(n, NULL, 0, &p, &e);
	unsetenv("TERN_POOL_SPIN_US");
	TT_REQUIRE(rc == 0);
	count_ctx c;
	memset(&c, 0, sizeof c);
	c.sleep_tid = sleep_tid;
	for (int r = 0; r < runs; r++) {
		tern_pool_run(p, count_fn, &c);
		/* The run has returned: every thread's call must already be counted. */
		if (atomic_load(&c.total) != (long)(r + 1) * n) {
			TT_CHECKF(0, "run %d: total %ld, expected %ld (spin %s, n %d)", r, atomic_load(&c.total),
				  (long)(r + 1) * n, spin_us, n);
			break;
		}
	}
	for (int t = 0; t < n; t++)
		TT_EQ_INT(c.calls[t], runs);
	tern_pool_free(p);
}

static void test_rapid_runs(void)
{
	rapid_runs("50", 2, 10000, -1);
	rapid_runs("0", 2, 10000, -1);
	rapid_runs("0", 3, 10000, -1);
	rapid_runs("5", 4, 2000, -1);
	rapid_runs("0", 2, 50, 0); /* workers wait long for the next run */
	rapid_runs("0", 3, 50, 2); /* the caller waits long for a worker */
	rapid_runs("20", 2, 50, 1);
}

static void test_create_free(void)
{
	for (int i = 0; i < 300; i++) {
		int n = 1 + i % 4;
		tern_pool *p = NULL;
		TT_REQUIRE(tern_pool_create(n, NULL, 0, &p, NULL) == 0);
		/* Some pools are freed without ever running, some right after one. */
		if (i % 3) {
			count_ctx c;
			memset(&c, 0, sizeof c);
			c.sleep_tid = -1;
			tern_pool_run(p, count_fn, &c);
			TT_EQ_INT(atomic_load(&c.total), n);
		}
		tern_pool_free(p);
	}
	tern_pool_free(NULL);
}

static void test_bad_arguments(void)
{
	tern_pool *p = (tern_pool *)&p;
	tern_err e;
	tern_err_clear(&e);
	TT_EQ_INT(tern_pool_create(0, NULL, 0, &p, &e), TERN_EINVAL);
	TT_CHECK(p == NULL);
	TT_CHECK(strstr(e.msg, "n_threads") != NULL);
	TT_EQ_INT(tern_pool_create(TERN_POOL_MAX_THREADS + 1, NULL, 0, &p, &e), TERN_EINVAL);
	const int neg[2] = {0, -3};
	TT_EQ_INT(tern_pool_create(2, neg, 2, &p, &e), TERN_EINVAL);
	TT_CHECK(strstr(e.msg, "-3") != NULL);
	TT_EQ_INT(tern_pool_create(2, NULL, 1, &p, &e), TERN_EINVAL);
	TT_EQ_INT(tern_pool_create(2, NULL, 0, NULL, &e), TERN_EINVAL);
}

static void test_pinning(void)
{
	/* Every worker pinned to one CPU must be seen running there: CPU 0,
	 * unless the test itself runs in a cpuset without it. */
	cpu_set_t allowed;
	int first = 0;
	if (sched_getaffinity(0, sizeof allowed, &allowed) == 0)
		while (first < CPU_SETSIZE - 1 && !CPU_ISSET(first, &allowed))
			first++;
	const int cpu0[1] = {first};
	tern_pool *p = NULL;
	tern_err e;
	TT_REQUIRE(tern_pool_create(3, cpu0, 1, &p, &e) == 0);
	for (int r = 0; r < 20; r++) {
		count_ctx c;
		memset(&c, 0, sizeof c);
		c.sleep_tid = -1;
		for (int t = 0; t < 8; t++)
			atomic_store(&c.cpu[t], -1);
		tern_pool_run(p, count_fn, &c);
		TT_EQ_INT(atomic_load(&c.cpu[1]), first);
		TT_EQ_INT(atomic_load(&c.cpu[2]), first);
	}
	tern_pool_free(p);

	/* A CPU that does not exist is a warning, and the pool still works. */
	const int bogus[3] = {0, 1000, 100000}; /* offline; beyond CPU_SETSIZE */
	p = NULL;
	TT_REQUIRE(tern_pool_create(3, bogus, 3, &p, &e) == 0);
	count_ctx c;
	memset(&c, 0, sizeof c);
	c.sleep_tid = -1;
	tern_pool_run(p, count_fn, &c);
	TT_EQ_INT(atomic_load(&c.total), 3);
	tern_pool_free(p);
}

/* ---- threaded products --------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(void)
{
	/* Deterministic, so a failure reproduces. */
	return tt_xorshift_star(&rng_state);
}

/* One packing x ISA x shape: single-threaded over [row0, m) against the pool
 * with 1..4 threads, i32 and f32, and the i32 against a naive dot. */
static void check_mt_case(tern_packing pk, tern_isa isa, int m, int k, int n, int row0, tern_pool **pools)
{
	tern_err e;
	int8_t *w = malloc((size_t)m * k);
	float *x = malloc((size_t)n * k * sizeof *x);
	const int group_rows = m > 3 ? m / 3 : 1;
	const int n_groups = (m + group_rows - 1) / group_rows;
	float scales[8];
	TT_REQUIRE(w && x && n_groups <= 8);
	for (size_t i = 0; i < (size_t)m * k; i++)
		w[i] = (int8_t)((int)(rnd() % 3) - 1);
	for (size_t i = 0; i < (size_t)n * k; i++)
		x[i] = ((float)(rnd() % 20001) - 10000.0f) / 997.0f;
	for (int g = 0; g < n_groups; g++)
		scales[g] = 0.5f + 0.25f * (float)g;

	tern_matrix mat;
	memset(&mat, 0, sizeof mat);
	tern_act act;
	memset(&act, 0, sizeof act);
	int rc = tern_matrix_pack(&mat, pk, w, m, k, scales, group_rows, &e);
	TT_CHECKF(rc == 0, "pack %s %dx%d: %s", tern_packing_name(pk), m, k, e.msg);
	if (rc == 0) {
		rc = tern_act_prepare(&act, pk, isa, x, n, k, k, &e);
		TT_CHECKF(rc == 0, "act_prepare %s/%s: %s", tern_packing_name(pk), tern_isa_name(isa), e.msg);
	}
	/* ld > m: the columns past m must stay untouched. */
	const int ld = m + 5;
	const size_t cells = (size_t)n * ld;
	int32_t *d1 = malloc(cells * sizeof *d1), *dn = malloc(cells * sizeof *dn);
	float *y1 = malloc(cells * sizeof *y1), *yn = malloc(cells * sizeof *yn);
	TT_REQUIRE(d1 && dn && y1 && yn);
	if (rc == 0) {
		memset(d1, 0x55, cells * sizeof *d1);
		memset(y1, 0x55, cells * sizeof *y1);
		rc = tern_gemm_i32(&mat, &act, d1, ld, row0, m, isa, &e);
		TT_CHECKF(rc == 0, "gemm_i32: %s", e.msg);
		if (rc == 0)
			rc = tern_gemm_f32(&mat, &act, y1, ld, row0, m, isa, &e);
		TT_CHECKF(rc == 0, "gemm_f32: %s", e.msg);
	}
	/* The oracle the equality is anchored to: a naive dot over act.q. */
	if (rc == 0) {
		int bad = 0;
		for (int j = 0; j < n && !bad; j++)
			for (int i = row0; i < m && !bad; i++) {
				int32_t s = 0;
				for (int kk = 0; kk < k; kk++)
					s += (int32_t)w[(size_t)i * k + kk] * act.q[(size_t)j * act.k_pad + kk];
				if (s != d1[(size_t)j * ld + i]) {
					TT_CHECKF(0, "%s/%s %dx%d n=%d row %d tok %d: dot %d, naive %d",
						  tern_packing_name(pk), tern_isa_name(isa), m, k, n, i, j,
						  d1[(size_t)j * ld + i], s);
					bad = 1;
				}
			}
	}
	for (int pi = 0; pi < 4 && rc == 0; pi++) {
		memset(dn, 0xAA, cells * sizeof *dn);
		memset(yn, 0xAA, cells * sizeof *yn);
		rc = tern_gemm_i32_mt(pools[pi], &mat, &act, dn, ld, row0, m, isa, &e);
		TT_CHECKF(rc == 0, "gemm_i32_mt: %s", e.msg);
		if (rc == 0)
			rc = tern_gemm_f32_mt(pools[pi], &mat, &act, yn, ld, row0, m, isa, &e);
		TT_CHECKF(rc == 0, "gemm_f32_mt: %s", e.msg);
		if (rc)
			break;
		for (int j = 0; j < n; j++) {
			const size_t off = (size_t)j * ld;
			int same_d = !memcmp(d1 + off + row0, dn + off + row0, (size_t)(m - row0) * sizeof *d1);
			int same_y = !memcmp(y1 + off + row0, yn + off + row0, (size_t)(m - row0) * sizeof *y1);
			TT_CHECKF(same_d && same_y, "%s/%s %dx%d n=%d row0=%d, %d threads, token %d: i32 %s, f32 %s",
				  tern_packing_name(pk), tern_isa_name(isa), m, k, n, row0, tern_pool_size(pools[pi]),
				  j, same_d ? "same" : "DIFFERS", same_y ? "same" : "DIFFERS");
			/* Rows before row0 and columns past m are not the product's. */
			uint32_t pat;
			memset(&pat, 0xAA, sizeof pat);
			for (int i = 0; i < ld; i++) {
				if (i >= row0 && i < m)
					continue;
				if ((uint32_t)dn[off + i] != pat) {
					TT_CHECKF(0, "%d threads wrote outside [%d, %d): index %d",
						  tern_pool_size(pools[pi]), row0, m, i);
					break;
				}
			}
		}
	}
	free(d1);
	free(dn);
	free(y1);
	free(yn);
	tern_act_free(&act);
	tern_matrix_free(&mat);
	free(w);
	free(x);
}

static void test_gemm_mt_bit_exact(void)
{
	tern_pool *pools[4] = {NULL, NULL, NULL, NULL};
	tern_err e;
	for (int i = 0; i < 4; i++)
		TT_REQUIRE(tern_pool_create(i + 1, NULL, 0, &pools[i], &e) == 0);
	/* M odd and not a multiple of any tile; K odd, one block, several. */
	static const int shapes[][2] = {{1, 64}, {7, 33}, {37, 256}, {131, 300}, {257, 128}, {653, 517}};
	static const int batches[] = {1, 3, 8};
	for (int pk = 0; pk < TERN_PACK_COUNT; pk++) {
		for (int isa = 0; isa < TERN_ISA_COUNT; isa++) {
			if (!tern_isa_available((tern_isa)isa)) {
				TT_NOTE_SKIP("%s", tern_isa_name((tern_isa)isa));
				continue;
			}
			for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
				for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++)
					check_mt_case((tern_packing)pk, (tern_isa)isa, shapes[s][0], shapes[s][1],
						      batches[b], 0, pools);
			/* A sub-range starting at the second tile. */
			const int tile = tern_row_tile((tern_packing)pk);
			check_mt_case((tern_packing)pk, (tern_isa)isa, 3 * tile + 11, 200, 2, tile, pools);
		}
	}
	for (int i = 0; i < 4; i++)
		tern_pool_free(pools[i]);
}

static void test_gemm_mt_errors(void)
{
	tern_err e;
	tern_pool *p = NULL;
	TT_REQUIRE(tern_pool_create(2, NULL, 0, &p, &e) == 0);
	const int m = 100, k = 128;
	int8_t *w = calloc((size_t)m * k, 1);
	float *x = calloc(k, sizeof *x);
	int32_t *d = calloc(m, sizeof *d);
	float scale = 1.0f;
	TT_REQUIRE(w && x && d);
	x[0] = 1.0f;
	for (int pk = 0; pk < TERN_PACK_COUNT; pk++) {
		tern_matrix mat;
		memset(&mat, 0, sizeof mat);
		tern_act act;
		memset(&act, 0, sizeof act);
		if (tern_matrix_pack(&mat, (tern_packing)pk, w, m, k, &scale, m, &e) ||
		    tern_act_prepare(&act, (tern_packing)pk, TERN_ISA_AUTO, x, 1, k, k, &e)) {
			TT_CHECKF(0, "setup %s: %s", tern_packing_name((tern_packing)pk), e.msg);
			tern_matrix_free(&mat);
			tern_act_free(&act);
			continue;
		}
		const int tile = tern_row_tile((tern_packing)pk);
		TT_EQ_INT(tern_gemm_i32_mt(p, &mat, &act, d, m, 0, m + 1, TERN_ISA_AUTO, &e), TERN_EINVAL);
		TT_EQ_INT(tern_gemm_i32_mt(p, &mat, &act, d, m, 5, 4, TERN_ISA_AUTO, &e), TERN_EINVAL);
		TT_EQ_INT(tern_gemm_f32_mt(p, &mat, &act, NULL, m, 0, m, TERN_ISA_AUTO, &e), TERN_EINVAL);
		if (tile > 1) {
			TT_EQ_INT(tern_gemm_i32_mt(p, &mat, &act, d, m, 1, m, TERN_ISA_AUTO, &e), TERN_EINVAL);
			TT_CHECK(strstr(e.msg, "row tile") != NULL);
		}
		/* An empty range is a valid no-op. */
		TT_EQ_INT(tern_gemm_i32_mt(p, &mat, &act, d, m, 0, 0, TERN_ISA_AUTO, &e), 0);
		tern_act_free(&act);
		tern_matrix_free(&mat);
	}
	free(w);
	free(x);
	free(d);
	tern_pool_free(p);
}

TT_MAIN(TT_CASE(test_every_thread_runs), TT_CASE(test_rapid_runs), TT_CASE(test_create_free),
	TT_CASE(test_bad_arguments), TT_CASE(test_pinning), TT_CASE(test_gemm_mt_bit_exact),
	TT_CASE(test_gemm_mt_errors))
