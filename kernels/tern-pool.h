/* tern-pool.h: the kernel thread pool, and the threaded products built on it.
 *
 * A pool is created once (per process or per pipeline stage) and reused for
 * every matrix product: N threads where the caller of tern_pool_run is thread
 * 0 and N-1 workers are pthreads, each optionally pinned to one CPU of a given
 * list. A run hands the same function to every thread (tid 0..N-1) and returns
 * when all have finished. Between runs the workers spin briefly (decode issues
 * many small products back to back; unless every thread has a CPU of its
 * own, the spin yields the CPU every few microseconds in case the thread
 * waited for shares it) and then sleep on a futex, so an idle pool costs no
 * CPU.
 *
 * tern_gemm_*_mt split the output rows of one product across the pool in
 * contiguous chunks aligned to tern_row_tile(), so each thread streams its own
 * part of the weights; every row is computed by the same single-threaded
 * kernel, so the results equal tern_gemm_*'s bit for bit for any thread count.
 *
 * Linux only (futex, pthread_setaffinity_np). Depends on libc and pthreads. */
#ifndef TERN_POOL_H
#define TERN_POOL_H

#include "tern-kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Upper bound on n_threads, so per-run bookkeeping needs no allocation. */
#define TERN_POOL_MAX_THREADS 256

typedef struct tern_pool tern_pool;

/* The work of one run: called once on every thread with its tid in [0, nth). */
typedef void (*tern_pool_fn)(void *ctx, int tid, int nth);

/* Creates a pool of n_threads (1..TERN_POOL_MAX_THREADS; 1 means the caller
 * alone, no pthread is started). With cpus != NULL and n_cpus > 0, worker tid
 * (1..n_threads-1) is pinned to cpus[tid % n_cpus]; the caller (tid 0) keeps
 * its own affinity, which is the caller's business (a stage pins itself to its
 * NUMA domain), but cpus[0] is the CPU meant for it. A pin that fails (CPU
 * offline or outside the allowed set) is logged as a warning and the worker
 * runs unpinned. The spin time before sleeping is TERN_POOL_SPIN_US in the
 * environment (default 50 microseconds, 0 = sleep at once).
 * Errors: TERN_EINVAL (bad n_threads, cpu < 0), TERN_ENOMEM, TERN_ESTATE
 * (pthread_create failed). *out is NULL on failure. */
int tern_pool_create(int n_threads, const int *cpus, int n_cpus, tern_pool **out, tern_err *err);

/* Number of threads, the caller included (1 for a NULL pool). */
int tern_pool_size(const tern_pool *pool);

/* Runs fn(ctx, tid, nth) on every thread of the pool, the caller as tid 0,
 * and returns when all calls have returned (their writes are then visible to
 * the caller). A NULL pool runs fn(ctx, 0, 1). Not reentrant: one run at a time
 * per pool, and fn must not call tern_pool_run on the same pool. */
void tern_pool_run(tern_pool *pool, tern_pool_fn fn, void *ctx);

/* Stops and joins the workers and frees the pool. NULL is a no-op. */
void tern_pool_free(tern_pool *pool);

/* tern_gemm_i32 / tern_gemm_f32 over rows [row0, row1) split across the pool
 * (NULL pool: single-threaded). Same arguments, contract and results as the
 * single-threaded calls; row0 must be a multiple of tern_row_tile(w->packing).
 * On error the first failing thread's message is returned. */
int tern_gemm_i32_mt(tern_pool *pool, const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0,
		     int row1, tern_isa isa, tern_err *err);
int tern_gemm_f32_mt(tern_pool *pool, const tern_matrix *w, const tern_act *a, float *y, int ldy, int row0, int row1,
		     tern_isa isa, tern_err *err);

#ifdef __cplusplus
}
#endif
#endif /* TERN_POOL_H */
