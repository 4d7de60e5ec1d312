/* bench.h: what the modes of tern-bench share: the output convention of
 * DESIGN.md ("Benchmark output": a readable table, or one JSON object / CSV
 * line per measured row with the keys bench, what, threads, value, unit,
 * bound, fraction plus the mode's own), option parsing helpers, big
 * page-aligned buffers, and the machine's read bandwidth (the bound every
 * memory-bound figure is compared with). Each mode is one function
 * `int bench_<mode>_main(int argc, char **argv)` listed in tern-bench.c. */
#ifndef TERN_BENCH_H
#define TERN_BENCH_H

#include <stddef.h>
#include <stdio.h>

#include "tern-pool.h"

/* ---- output -------------------------------------------------------------- */

typedef enum { BENCH_FMT_TABLE = 0, BENCH_FMT_JSON = 1, BENCH_FMT_CSV = 2 } bench_fmt;

#define BENCH_MAX_FIELDS 32

typedef struct bench_field {
	const char *key; /* static string */
	int kind;        /* 0 number, 1 integer, 2 string */
	double num;      /* NaN prints as null */
	long long i;
	char str[48];
} bench_field;

/* One measured row: the seven keys every mode has, then the mode's own. */
typedef struct bench_row {
	int n;
	bench_field f[BENCH_MAX_FIELDS];
} bench_row;

typedef struct bench_out {
	bench_fmt fmt;
	FILE *rows;                  /* JSON/CSV rows (stdout) */
	FILE *table;                 /* the readable table: stdout, or stderr under --json/--csv */
	const char *const *csv_cols; /* CSV columns, in order (NULL-terminated) */
	int csv_header_done;
	long n_rows;
} bench_out;

void bench_out_init(bench_out *o, bench_fmt fmt, const char *const *csv_cols);
/* Starts a row; fraction is value/bound when bound > 0, else null. bound may be NaN (null). */
void bench_row_init(bench_row *r, const char *bench, const char *what, int threads, double value, const char *unit,
		    double bound);
void bench_row_str(bench_row *r, const char *key, const char *v);
void bench_row_int(bench_row *r, const char *key, long long v);
void bench_row_num(bench_row *r, const char *key, double v);
/* Writes the row as JSON or CSV (nothing in table format: the mode prints
 * its own table lines with bench_table). */
void bench_emit(bench_out *o, const bench_row *r);
/* printf to the table stream. */
void bench_table(bench_out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- options -------------------------------------------------------------- */

/* Parses a comma-separated list of non-negative ints into out (at most max);
 * returns the count, or -1 on a malformed list. */
int bench_parse_int_list(const char *s, int *out, int max);
/* CPUs this process may run on, ascending; returns the count (>= 1). */
int bench_allowed_cpus(int *cpus, int max);
/* Pins the calling thread to cpu; 0 or -1 (a warning is logged). */
int bench_pin_self(int cpu);

/* ---- memory --------------------------------------------------------------- */

/* Anonymous, page-aligned, transparent-huge-page-advised memory, every page
 * touched (so no fault lands in a timed loop). NULL on failure. */
void *bench_big_alloc(size_t bytes);
void bench_big_free(void *p, size_t bytes);

/* ---- read bandwidth -------------------------------------------------------- */

/* The best sustained read bandwidth in GB/s (1e9 bytes/s) over buf (bytes,
 * 64-byte multiple, much larger than the last-level cache), summed with the
 * widest loads the CPU has by every thread of pool, each over its own
 * contiguous slice. Repeats full passes for at least min_reps and min_s. */
double bench_read_bw(tern_pool *pool, const void *buf, size_t bytes, int min_reps, double min_s);
/* One pass of the above; returns its GB/s. Not reentrant. */
double bench_read_pass(tern_pool *pool, const void *buf, size_t bytes);
/* Name of the load width bench_read_bw uses ("avx512", "avx2", "scalar"). */
const char *bench_read_bw_isa(void);

/* ---- int8 compute peak (bench-peak.c) ------------------------------------- */

/* GOPS = 1e9 int8 ops/s, one multiply-add of a weight byte by an activation
 * byte counting as 2 ops (so a GEMM does 2*m*k*batch ops). */
typedef struct bench_peak {
	const char *unit;  /* "avx512_vnni", "avx_vnni", "avx2_maddubs", "amx_int8" */
	const char *instr; /* the instruction(s) of the loop */
	double gops;       /* all threads of the pool together; NaN when skipped */
	int skipped;       /* the CPU has the unit but this build cannot measure it */
} bench_peak;

/* Every int8 dot-product unit this CPU has (at most max), each measured with
 * register-resident loops on every thread of pool for >= min_s seconds
 * (best pass); returns the count. */
int bench_int8_peaks(tern_pool *pool, double min_s, bench_peak *out, int max);
/* One pass (~20 ms) of the named unit's loop on every thread of pool: GOPS,
 * or NaN if the unit is unknown, absent or skipped. */
double bench_int8_peak_pass(tern_pool *pool, const char *unit);

/* ---- modes ----------------------------------------------------------------- */

int bench_kernels_main(int argc, char **argv);
/* bench-exec.c: modes run by other programs (engine_bench, deploy/bench-serve.py). */
int bench_run_main(int argc, char **argv);
int bench_cluster_main(int argc, char **argv);
int bench_serve_main(int argc, char **argv);

#endif /* TERN_BENCH_H */
