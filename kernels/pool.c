/* pool.c: the kernel thread pool (tern-pool.h) and the row-split products.
 *
 * Hand-off is a generation counter: tern_pool_run publishes fn/ctx, sets the
 * count of workers still to finish, then bumps `gen`; a worker that sees a
 * new generation runs fn and decrements the count, and the last one publishes
 * `done = gen`. Both waits (workers on `gen`, the caller on `done`) spin for a
 * bounded time with a pause instruction (yielding the CPU now and then when
 * threads may share one) and then sleep on a futex of the same word. A waker only pays for the futex syscall when
 * someone announced it may be sleeping: the sleeper increments its counter and re-reads the word, the waker stores the
 * word and reads the counter, both sequentially consistent, so at least one of them sees the other (no lost wake-up;
 * the kernel re-checks the word inside FUTEX_WAIT as well). */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "tern-pool.h"

#define POOL_DEFAULT_SPIN_US 50

typedef struct pool_worker {
	struct tern_pool *pool;
	pthread_t thread;
	int tid;
} pool_worker;

struct tern_pool {
	/* The words each side spins on live on their own cache lines so a
	 * worker finishing does not steal the line the others are polling. */
	_Alignas(64) _Atomic uint32_t gen;  /* bumped once per run (and once to stop) */
	_Atomic int gen_sleepers;           /* workers that may be in FUTEX_WAIT on gen */
	_Alignas(64) _Atomic uint32_t done; /* = gen of the last fully finished run */
	_Atomic int done_sleepers;
	_Alignas(64) _Atomic int pending; /* workers still running the current gen */
	_Alignas(64) tern_pool_fn fn;     /* the current run's work (written before gen) */
	void *ctx;
	_Atomic int stop;
	int n;         /* threads, caller included */
	int n_started; /* workers actually started */
	uint64_t spin_ns;
	_Atomic int yield;    /* sched_yield while spinning (threads may share a CPU) */
	pool_worker *workers; /* (n - 1): tid 1..n-1 */
};

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#endif
}

static void futex_wait(_Atomic uint32_t *word, uint32_t val)
{
	/* EAGAIN (word already changed) and EINTR both just mean "re-check". */
	syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *word)
{
	syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Returns the value of *word once it differs from old: spin, then sleep. */
static uint32_t wait_change(_Atomic uint32_t *word, uint32_t old, _Atomic int *sleepers, uint64_t spin_ns, int yield)
{
	uint32_t v;
	if (spin_ns) {
		uint64_t t0 = tern_now_ns();
		for (unsigned i = 1;; i++) {
			v = atomic_load_explicit(word, memory_order_acquire);
			if (v != old)
				return v;
			cpu_relax();
			/* Every 64 pauses: the clock (~20 ns), and where threads may
			 * share a CPU a sched_yield, so that a thread we wait for that
			 * sits in this CPU's run queue gets to run: a hand-off then
			 * costs ~5 us instead of a whole spin budget (measured: ~100
			 * us). Pinned apart, yielding would only hand the CPU to other
			 * processes for a time slice, so it is not done. */
			if ((i & 63) == 0) {
				if (tern_now_ns() - t0 >= spin_ns)
					break;
				if (yield)
					sched_yield();
			}
		}
	}
	for (;;) {
		atomic_fetch_add(sleepers, 1);
		v = atomic_load(word);
		if (v == old)
			futex_wait(word, old);
		atomic_fetch_sub(sleepers, 1);
		v = atomic_load_explicit(word, memory_order_acquire);
		if (v != old)
			return v;
	}
}

static void publish(_Atomic uint32_t *word, uint32_t val, _Atomic int *sleepers)
{
	atomic_store(word, val);
	if (atomic_load(sleepers) > 0)
		futex_wake_all(word);
}

static void *worker_main(void *arg)
{
	pool_worker *wk = arg;
	tern_pool *p = wk->pool;
	uint32_t seen = 0;
	for (;;) {
		seen = wait_change(&p->gen, seen, &p->gen_sleepers, p->spin_ns,
				   atomic_load_explicit(&p->yield, memory_order_relaxed));
		if (atomic_load_explicit(&p->stop, memory_order_acquire))
			break;
		p->fn(p->ctx, wk->tid, p->n);
		/* The release orders fn's writes before the caller's acquire of done. */
		if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1)
			publish(&p->done, seen, &p->done_sleepers);
	}
	return NULL;
}

static uint64_t spin_from_env(void)
{
	const char *s = getenv("TERN_POOL_SPIN_US");
	if (!s || !*s)
		return (uint64_t)POOL_DEFAULT_SPIN_US * 1000;
	char *end;
	errno = 0;
	long us = strtol(s, &end, 10);
	if (errno || *end || us < 0 || us > 10 * 1000 * 1000) {
		TERN_LOGW("pool", "TERN_POOL_SPIN_US=%s is not a number of microseconds in [0, 1e7]; using %d", s,
			  POOL_DEFAULT_SPIN_US);
		return (uint64_t)POOL_DEFAULT_SPIN_US * 1000;
	}
	return (uint64_t)us * 1000;
}

/* 1 unless every thread, the caller included, has a CPU of its own: the
 * caller is bound to one CPU (as the creator is now) that no worker gets,
 * and the workers' CPUs are distinct. */
static int threads_may_share_cpu(int n_threads, const int *cpus, int n_cpus)
{
	if (n_threads == 1)
		return 0;
	if (n_cpus < n_threads - 1)
		return 1;
	cpu_set_t self;
	if (pthread_getaffinity_np(pthread_self(), sizeof self, &self) || CPU_COUNT(&self) != 1)
		return 1;
	for (int tid = 1; tid < n_threads; tid++) {
		const int c = cpus[tid % n_cpus];
		if (c >= CPU_SETSIZE || CPU_ISSET(c, &self))
			return 1;
		for (int t2 = 1; t2 < tid; t2++)
			if (cpus[t2 % n_cpus] == c)
				return 1;
	}
	return 0;
}

static int pin_worker(pool_worker *wk, int cpu)
{
	if (cpu >= CPU_SETSIZE) {
		TERN_LOGW("pool", "worker %d: cpu %d is beyond CPU_SETSIZE; running unpinned", wk->tid, cpu);
		return -1;
	}
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	int rc = pthread_setaffinity_np(wk->thread, sizeof set, &set);
	if (rc) {
		TERN_LOGW("pool", "worker %d: cannot pin to cpu %d (%s); running unpinned", wk->tid, cpu, strerror(rc));
		return -1;
	}
	return 0;
}

/* Stops and joins the started workers; used by free and by a failed create. */
static void stop_workers(tern_pool *p)
{
	if (p->n_started > 0) {
		atomic_store(&p->stop, 1);
		uint32_t g = atomic_load(&p->gen) + 1;
		publish(&p->gen, g, &p->gen_sleepers);
		for (int i = 0; i < p->n_started; i++)
			pthread_join(p->workers[i].thread, NULL);
	}
	p->n_started = 0;
}

int tern_pool_create(int n_threads, const int *cpus, int n_cpus, tern_pool **out, tern_err *err)
{
	TERN_RETURN_IF(!out, err, TERN_EINVAL, "tern_pool_create: out is NULL");
	*out = NULL;
	TERN_RETURN_IF(n_threads < 1 || n_threads > TERN_POOL_MAX_THREADS, err, TERN_EINVAL,
		       "tern_pool_create: n_threads %d outside [1, %d]", n_threads, TERN_POOL_MAX_THREADS);
	TERN_RETURN_IF(n_cpus < 0 || (n_cpus > 0 && !cpus), err, TERN_EINVAL,
		       "tern_pool_create: bad cpu list (n_cpus %d)", n_cpus);
	for (int i = 0; i < n_cpus; i++)
		TERN_RETURN_IF(cpus[i] < 0, err, TERN_EINVAL, "tern_pool_create: cpu %d at index %d is negative",
			       cpus[i], i);

	int rc;
	tern_pool *p = tern_aligned_calloc(sizeof *p, TERN_ALIGN);
	if (!p)
		return TERN_ERR(err, TERN_ENOMEM, "tern_pool_create: out of memory");
	p->n = n_threads;
	p->spin_ns = spin_from_env();
	atomic_init(&p->yield, threads_may_share_cpu(n_threads, cpus, n_cpus));
	if (n_threads > 1) {
		p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
		if (!p->workers) {
			rc = TERN_ERR(err, TERN_ENOMEM, "tern_pool_create: out of memory");
			goto fail;
		}
	}
	for (int tid = 1; tid < n_threads; tid++) {
		pool_worker *wk = &p->workers[tid - 1];
		wk->pool = p;
		wk->tid = tid;
		int e = pthread_create(&wk->thread, NULL, worker_main, wk);
		if (e) {
			rc = TERN_ERR(err, TERN_ESTATE, "tern_pool_create: pthread_create for worker %d: %s", tid,
				      strerror(e));
			goto fail;
		}
		p->n_started++;
		/* A worker that could not be pinned may share a CPU; a worker
		 * already waiting sees the change from its next wait on. */
		if (n_cpus > 0 && pin_worker(wk, cpus[tid % n_cpus]))
			atomic_store_explicit(&p->yield, 1, memory_order_relaxed);
	}
	*out = p;
	return 0;
fail:
	stop_workers(p);
	free(p->workers);
	tern_aligned_free(p);
	return rc;
}

int tern_pool_size(const tern_pool *pool)
{
	return pool ? pool->n : 1;
}

void tern_pool_run(tern_pool *pool, tern_pool_fn fn, void *ctx)
{
	if (!pool || pool->n == 1) {
		fn(ctx, 0, 1);
		return;
	}
	tern_pool *p = pool;
	p->fn = fn;
	p->ctx = ctx;
	atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
	uint32_t prev = atomic_load_explicit(&p->gen, memory_order_relaxed);
	publish(&p->gen, prev + 1, &p->gen_sleepers);
	fn(ctx, 0, p->n);
	/* done still holds the previous run's generation (== prev) until the
	 * last worker of this run stores prev + 1. */
	wait_change(&p->done, prev, &p->done_sleepers, p->spin_ns,
		    atomic_load_explicit(&p->yield, memory_order_relaxed));
}

void tern_pool_free(tern_pool *pool)
{
	if (!pool)
		return;
	stop_workers(pool);
	free(pool->workers);
	tern_aligned_free(pool);
}

/* ---- row-split products ------------------------------------------------- */

typedef struct gemm_job {
	const tern_matrix *w;
	const tern_act *a;
	void *out; /* int32_t * or float *, (a->n, ld) */
	int ld;
	int row0, row1;
	int tile;
	tern_isa isa;
	int is_f32;
	_Atomic int failed; /* first failing thread wins the right to report */
	int rc;
	tern_err *err;
} gemm_job;

static void gemm_task(void *ctx, int tid, int nth)
{
	gemm_job *job = ctx;
	/* Contiguous, balanced runs of whole tiles: thread t gets tiles
	 * [T*t/nth, T*(t+1)/nth), so every start row stays tile-aligned. */
	const long long tiles = ((long long)job->row1 - job->row0 + job->tile - 1) / job->tile;
	const long long t0 = tiles * tid / nth, t1 = tiles * (tid + 1) / nth;
	const int r0 = job->row0 + (int)(t0 * job->tile);
	long long r1l = job->row0 + t1 * job->tile;
	const int r1 = r1l > job->row1 ? job->row1 : (int)r1l;
	if (r0 >= r1)
		return;
	tern_err e;
	tern_err_clear(&e);
	int rc;
	if (job->is_f32)
		rc = tern_gemm_f32(job->w, job->a, job->out, job->ld, r0, r1, job->isa, &e);
	else
		rc = tern_gemm_i32(job->w, job->a, job->out, job->ld, r0, r1, job->isa, &e);
	if (rc < 0) {
		int expected = 0;
		if (atomic_compare_exchange_strong(&job->failed, &expected, 1)) {
			job->rc = rc;
			if (job->err)
				*job->err = e;
		}
	}
}

static int gemm_mt(tern_pool *pool, const tern_matrix *w, const tern_act *a, void *out, int ld, int row0, int row1,
		   tern_isa isa, int is_f32, tern_err *err)
{
	const char *name = is_f32 ? "tern_gemm_f32_mt" : "tern_gemm_i32_mt";
	TERN_RETURN_IF(!w || !a || (!out && a->n > 0), err, TERN_EINVAL, "%s: NULL matrix, activations or output",
		       name);
	TERN_RETURN_IF(row0 < 0 || row0 > row1 || row1 > w->m, err, TERN_EINVAL,
		       "%s: row range [%d, %d) outside [0, %d]", name, row0, row1, w->m);
	const int tile = tern_row_tile(w->packing);
	TERN_RETURN_IF(tile < 1, err, TERN_EINVAL, "%s: packing %d has no row tile", name, (int)w->packing);
	TERN_RETURN_IF(row0 % tile, err, TERN_EINVAL, "%s: row0 %d is not a multiple of the row tile %d", name, row0,
		       tile);
	const int tiles = (row1 - row0 + tile - 1) / tile;
	if (!pool || pool->n == 1 || tiles <= 1) {
		if (is_f32)
			return tern_gemm_f32(w, a, out, ld, row0, row1, isa, err);
		return tern_gemm_i32(w, a, out, ld, row0, row1, isa, err);
	}
	gemm_job job = {.w = w,
			.a = a,
			.out = out,
			.ld = ld,
			.row0 = row0,
			.row1 = row1,
			.tile = tile,
			.isa = isa,
			.is_f32 = is_f32,
			.rc = 0,
			.err = err};
	atomic_init(&job.failed, 0);
	tern_pool_run(pool, gemm_task, &job);
	return job.rc;
}

int tern_gemm_i32_mt(tern_pool *pool, const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0,
		     int row1, tern_isa isa, tern_err *err)
{
	return gemm_mt(pool, w, a, dot, ldd, row0, row1, isa, 0, err);
}

int tern_gemm_f32_mt(tern_pool *pool, const tern_matrix *w, const tern_act *a, float *y, int ldy, int row0, int row1,
		     tern_isa isa, tern_err *err)
{
	return gemm_mt(pool, w, a, y, ldy, row0, row1, isa, 1, err);
}
