/* cpu.c: CPU-feature probe (see tern-base.h). On x86 a feature counts only if
 * cpuid reports it AND XGETBV says the OS saves the register state it needs
 * (YMM for AVX2, ZMM + opmask for AVX-512); a hypervisor can hide either. */
#include "tern-base.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static uint64_t xgetbv0(void)
{
	uint32_t lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((uint64_t)hi << 32) | lo;
}

static void probe(tern_cpu *c)
{
	unsigned a, b, cx, d;
	if (!__get_cpuid(1, &a, &b, &cx, &d))
		return;
	const int osxsave = (cx >> 27) & 1;
	const int fma = (cx >> 12) & 1;
	const int f16c = (cx >> 29) & 1;
	uint64_t xcr0 = osxsave ? xgetbv0() : 0;
	const int ymm_ok = (xcr0 & 0x6) == 0x6;
	const int zmm_ok = (xcr0 & 0xe6) == 0xe6;
	if (!__get_cpuid_count(7, 0, &a, &b, &cx, &d))
		return;
	c->avx2 = ymm_ok && ((b >> 5) & 1);
	c->fma = ymm_ok && fma;
	c->f16c = ymm_ok && f16c;
	c->avx512f = zmm_ok && ((b >> 16) & 1);
	c->avx512bw = c->avx512f && ((b >> 30) & 1);
	c->avx512vl = c->avx512f && ((b >> 31) & 1);
	c->avx512vbmi = c->avx512f && ((cx >> 1) & 1);
	c->avx512vnni = c->avx512f && ((cx >> 11) & 1);
	if (__get_cpuid_count(7, 1, &a, &b, &cx, &d))
		c->avxvnni = ymm_ok && ((a >> 4) & 1);
}
#elif defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20) /* Linux uapi asm/hwcap.h */
#endif
static void probe(tern_cpu *c)
{
	c->neon = 1; /* mandatory in AArch64 */
	/* The kernel says what this CPU runs (SDOT is optional before ARMv8.4). */
	c->dotprod = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
}
#else
static void probe(tern_cpu *c)
{
	(void)c;
}
#endif

static tern_cpu cpu_cached;
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;

static void cpu_init(void)
{
	memset(&cpu_cached, 0, sizeof cpu_cached);
	probe(&cpu_cached);
}

const tern_cpu *tern_cpu_get(void)
{
	pthread_once(&cpu_once, cpu_init);
	return &cpu_cached;
}

void tern_cpu_describe(const tern_cpu *c, char *buf, size_t len)
{
	if (!buf || len == 0)
		return;
	buf[0] = '\0';
	size_t used = 0;
	const struct {
		unsigned on;
		const char *name;
	} f[] = {
		{c->avx2, "avx2"}, {c->fma, "fma"}, {c->f16c, "f16c"}, {c->avx512f, "avx512f"}, {c->avx512bw, "avx512bw"},
		{c->avx512vl, "avx512vl"}, {c->avx512vnni, "avx512vnni"}, {c->avx512vbmi, "avx512vbmi"},
		{c->avxvnni, "avxvnni"}, {c->neon, "neon"}, {c->dotprod, "dotprod"},
	};
	for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
		if (!f[i].on)
			continue;
		int n = snprintf(buf + used, len - used, "%s%s", used ? " " : "", f[i].name);
		if (n < 0 || (size_t)n >= len - used)
			break;
		used += (size_t)n;
	}
	if (used == 0)
		snprintf(buf, len, "scalar");
}

int tern_cpu_count(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
		return CPU_COUNT(&set);
	const long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (int)n : 1;
}
