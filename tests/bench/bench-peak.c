/* bench-peak.c: the int8 dot-product peak of each unit the CPU has, measured
 * the way the kernels would see it: every thread of a pool runs a
 * register-resident loop of independent accumulators (enough to cover the
 * instruction's latency at full throughput), and the figure is the best pass.
 *
 * Unit of the figures: GOPS, 1e9 int8 operations per second, where one
 * multiply-add of one weight byte by one activation byte counts as 2 ops (the
 * convention GEMM figures use: 2*m*k*batch per product). One zmm vpdpbusd is
 * 64 multiply-adds = 128 ops; a ymm vpdpbusd 64 ops; vpmaddubsw + vpaddw
 * (the AVX2 path without VNNI) 32 multiply-adds per ymm pair = 64 ops.
 *
 * AMX-INT8 (tdpbusd) is reported when the CPU has it but is not measured:
 * this build has no AMX path that could be verified (bench_int8_units marks
 * it skipped). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bench.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#define PEAK_ITERS 4096 /* loop trips per call: a few microseconds */

#if defined(__x86_64__)
/* The loops are written in assembly so that no compiler keeps an accumulator
 * in memory: 24 independent vpdpbusd chains (latency x throughput is at most
 * ~10 in flight on the CPUs seen here). The register contents do not matter
 * for the timing. */
__attribute__((target("avx512f,avx512vnni"))) static void peak_avx512_vnni(long calls)
{
	long n = calls * PEAK_ITERS;
	__asm__ volatile("1:\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm2\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm3\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm4\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm5\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm6\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm7\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm8\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm9\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm10\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm11\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm12\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm13\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm14\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm15\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm16\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm17\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm18\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm19\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm20\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm21\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm22\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm23\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm24\n\t" "vpdpbusd %%zmm1, %%zmm0, %%zmm25\n\t" "dec %0\n\tjnz 1b"
			 : "+r"(n)
			 :
			 : "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10", "zmm11", "zmm12", "zmm13", "zmm14", "zmm15", "zmm16", "zmm17", "zmm18", "zmm19", "zmm20", "zmm21", "zmm22", "zmm23", "zmm24", "zmm25", "cc");
}

/* AVX-VNNI: the VEX-encoded ymm vpdpbusd, 12 chains in 16 ymm. */
__attribute__((target("avx2,avxvnni"))) static void peak_avx_vnni(long calls)
{
	long n = calls * PEAK_ITERS;
	__asm__ volatile("1:\n\t" "%{vex%} vpdpbusd %%ymm1, %%ymm0, %%ymm2\n\t" "%{vex%} vpdpbusd %%ymm1, %%ymm0, %%ymm3\n\t" "%{vex%} vpdpbusd %%ymm1, %%ymm0, %%ymm4\n\t" "%{vex%} vpdpbusd %%ymm1, %%ymm0, %%ymm5\n\t" "%{vex%} vpdpbusd %%ymm1, %%ymm0, %%ymm6\n\t" "%{vex%} vpdpbusd %%ymm1, %%ymm0, %%ymm7\n\t" "%{vex%} vpdpbusd %%ymm1, %%ymm0, %%ymm8\n\t" "%{vex%} vpdpbusd %%ymm1, %%ymm0, %%ymm9\n\t" "%{vex%} vpdpbusd %%ymm1, %%ymm0, %%ymm10\n\t" "%{vex%} vpdpbusd %%ymm1, %%ymm0, %%ymm11\n\t" "%{vex%} vpdpbusd %%ymm1, %%ymm0, %%ymm12\n\t" "%{vex%} vpdpbusd %%ymm1, %%ymm0, %%ymm13\n\t" "dec %0\n\tjnz 1b"
			 : "+r"(n)
			 :
			 : "ymm0", "ymm1", "ymm2", "ymm3", "ymm4", "ymm5", "ymm6", "ymm7", "ymm8", "ymm9", "ymm10", "ymm11", "ymm12", "ymm13", "cc");
}

/* AVX2 without VNNI: vpmaddubsw into int16 lanes added with vpaddw, 32
 * multiply-adds per ymm pair, 6 chains. This is how the AVX2 int8 GEMM uses
 * the unit (int16 runs of 32 steps, widened by one vpmaddwd per run, left out
 * here). A loop that widens every product (vpmaddubsw + vpmaddwd + vpaddd)
 * measured ~170-190 GOPS on one Zen 4 core, this one ~390: with the wider
 * loop as the "peak" the GEMM read as > 100%. */
__attribute__((target("avx2"))) static void peak_avx2_maddubs(long calls)
{
	long n = calls * PEAK_ITERS;
	__asm__ volatile("1:\n\t" "vpmaddubsw %%ymm1, %%ymm0, %%ymm2\n\t" "vpmaddubsw %%ymm1, %%ymm0, %%ymm3\n\t" "vpmaddubsw %%ymm1, %%ymm0, %%ymm4\n\t" "vpmaddubsw %%ymm1, %%ymm0, %%ymm5\n\t" "vpmaddubsw %%ymm1, %%ymm0, %%ymm6\n\t" "vpmaddubsw %%ymm1, %%ymm0, %%ymm7\n\t" "vpaddw %%ymm2, %%ymm8, %%ymm8\n\t" "vpaddw %%ymm3, %%ymm9, %%ymm9\n\t" "vpaddw %%ymm4, %%ymm10, %%ymm10\n\t" "vpaddw %%ymm5, %%ymm11, %%ymm11\n\t" "vpaddw %%ymm6, %%ymm12, %%ymm12\n\t" "vpaddw %%ymm7, %%ymm13, %%ymm13\n\t" "dec %0\n\tjnz 1b"
			 : "+r"(n)
			 :
			 : "ymm0", "ymm1", "ymm2", "ymm3", "ymm4", "ymm5", "ymm6", "ymm7", "ymm8", "ymm9", "ymm10", "ymm11", "ymm12", "ymm13", "cc");
}

static int cpu_has_amx_int8(void)
{
	unsigned a, b, c, d;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
		return 0;
	return ((d >> 24) & 1) && ((d >> 25) & 1); /* AMX-TILE, AMX-INT8 */
}
#endif

typedef void (*peak_fn)(long calls);

typedef struct peak_unit {
	const char *name;  /* "avx512_vnni", "avx_vnni", "avx2_maddubs", "amx_int8" */
	const char *instr; /* the instruction measured */
	double ops_per_iter;
	peak_fn fn;
	int present; /* the CPU has it */
} peak_unit;

static int peak_units(peak_unit *u, int max)
{
	int n = 0;
	(void)u;
	(void)max;
#if defined(__x86_64__)
	const tern_cpu *c = tern_cpu_get();
	const peak_unit all[] = {
	    {"avx512_vnni", "vpdpbusd zmm", 24.0 * 128, peak_avx512_vnni, c->avx512vnni},
	    {"avx_vnni", "%{vex%} vpdpbusd ymm", 12.0 * 64, peak_avx_vnni, c->avxvnni},
	    {"avx2_maddubs", "vpmaddubsw+vpaddw ymm", 6.0 * 64, peak_avx2_maddubs, c->avx2},
	    {"amx_int8", "tdpbusd", 0, NULL, cpu_has_amx_int8()},
	};
	for (size_t i = 0; i < sizeof all / sizeof all[0] && n < max; i++)
		u[n++] = all[i];
#endif
	return n;
}

typedef struct peak_job {
	peak_fn fn;
	long calls;
} peak_job;

static void peak_task(void *ctx, int tid, int nth)
{
	(void)tid;
	(void)nth;
	const peak_job *j = ctx;
	j->fn(j->calls);
}

/* Loop calls per pass (~20 ms), calibrated once per unit. */
static long peak_calls[8];

static double peak_pass(tern_pool *pool, const peak_unit *u, long *calls)
{
	peak_job j = {u->fn, *calls};
	if (j.calls == 0) {
		j.calls = 1;
		tern_pool_run(pool, peak_task, &j); /* warm-up: clock, upper ymm/zmm state */
		for (;;) {
			const double t0 = tern_now_s();
			tern_pool_run(pool, peak_task, &j);
			if (tern_now_s() - t0 > 0.02 || j.calls > (1L << 30))
				break;
			j.calls *= 2;
		}
		*calls = j.calls;
	}
	const double t0 = tern_now_s();
	tern_pool_run(pool, peak_task, &j);
	const double dt = tern_now_s() - t0;
	return u->ops_per_iter * PEAK_ITERS * (double)j.calls * tern_pool_size(pool) / dt / 1e9;
}

double bench_int8_peak_pass(tern_pool *pool, const char *unit)
{
	peak_unit u[8];
	const int n = peak_units(u, 8);
	for (int i = 0; unit && i < n; i++)
		if (!strcmp(u[i].name, unit))
			return u[i].present && u[i].fn ? peak_pass(pool, &u[i], &peak_calls[i]) : NAN;
	return NAN;
}

int bench_int8_peaks(tern_pool *pool, double min_s, bench_peak *out, int max)
{
	peak_unit u[8];
	const int n = peak_units(u, 8);
	int m = 0;
	for (int i = 0; i < n && m < max; i++) {
		if (!u[i].present)
			continue;
		bench_peak *p = &out[m++];
		memset(p, 0, sizeof *p);
		p->unit = u[i].name;
		p->instr = u[i].instr;
		p->skipped = u[i].fn == NULL;
		p->gops = NAN;
		if (p->skipped)
			continue;
		double best = 0, spent = 0;
		for (int rep = 0; rep < 1000 && (rep < 3 || spent < min_s); rep++) {
			const double t0 = tern_now_s();
			const double g = peak_pass(pool, &u[i], &peak_calls[i]);
			spent += tern_now_s() - t0;
			best = g > best ? g : best;
		}
		p->gops = best;
	}
	return m;
}
