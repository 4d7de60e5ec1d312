/* test_base.c: the shared plumbing in kernels/base. */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "tern-base.h"
#include "tern-test.h"

static int fails_with_context(tern_err *e)
{
	TERN_RETURN_IF(1 + 1 == 2, e, TERN_ERANGE, "offset %d out of range\nsecond line", 42);
	return 0;
}

static int forwards(tern_err *e)
{
	TERN_FORWARD_IF_ERROR(fails_with_context(e));
	return 7;
}

static void test_errors(void)
{
	tern_err e;
	tern_err_clear(&e);
	TT_EQ_INT(e.code, TERN_OK);
	int rc = forwards(&e);
	TT_EQ_INT(rc, TERN_ERANGE);
	TT_EQ_INT(e.code, TERN_ERANGE);
	TT_CHECK(strstr(e.msg, "offset 42 out of range") != NULL);
	TT_CHECK(strchr(e.msg, '\n') == NULL);
	TT_CHECK(strstr(e.file, "test_base.c") != NULL);
	TT_CHECK(e.line > 0);
	TT_CHECK(!strcmp(tern_strerror(TERN_ECHECKSUM), "ECHECKSUM"));
	TT_CHECK(!strcmp(tern_strerror(12345), "EUNKNOWN"));
	/* A NULL err still returns the code. */
	TT_EQ_INT(TERN_ERR(NULL, TERN_EIO, "x"), TERN_EIO);
	/* Messages longer than the buffer are cut, not overflowed. */
	char big[2000];
	memset(big, 'a', sizeof big - 1);
	big[sizeof big - 1] = 0;
	TERN_ERR(&e, TERN_EINVAL, "%s", big);
	TT_EQ_INT(strlen(e.msg), sizeof e.msg - 1);
}

static void test_log_levels(void)
{
	TT_EQ_INT(tern_log_parse_level("debug"), TERN_LOG_DEBUG);
	TT_EQ_INT(tern_log_parse_level("error"), TERN_LOG_ERROR);
	TT_EQ_INT(tern_log_parse_level("loud"), -1);
	TT_EQ_INT(tern_log_parse_level(NULL), -1);
	tern_log_set_level(TERN_LOG_WARN);
	TT_EQ_INT(tern_log_get_level(), TERN_LOG_WARN);
	TERN_LOGI("test", "this info line is filtered out");
	tern_log_set_level(TERN_LOG_INFO);
}

static void test_clock(void)
{
	uint64_t a = tern_now_ns();
	struct timespec ts = {0, 2000000};
	nanosleep(&ts, NULL);
	uint64_t b = tern_now_ns();
	TT_CHECK(b > a);
	TT_CHECK(b - a >= 2000000u);
}

static void test_aligned_alloc(void)
{
	for (size_t align = 8; align <= 4096; align *= 2) {
		unsigned char *p = tern_aligned_alloc(1000, align);
		TT_REQUIRE(p != NULL);
		TT_EQ_INT((uintptr_t)p % align, 0);
		memset(p, 0xab, 1000);
		tern_aligned_free(p);
	}
	unsigned char *z = tern_aligned_calloc(4096, TERN_ALIGN);
	TT_REQUIRE(z != NULL);
	int nonzero = 0;
	for (int i = 0; i < 4096; i++)
		nonzero |= z[i];
	TT_EQ_INT(nonzero, 0);
	tern_aligned_free(z);
	TT_CHECK(tern_aligned_alloc(0, 64) == NULL);
	TT_CHECK(tern_aligned_alloc(64, 48) == NULL); /* not a power of two */
	tern_aligned_free(NULL);
}

static void test_cpu_probe(void)
{
	const tern_cpu *c = tern_cpu_get();
	TT_REQUIRE(c != NULL);
	TT_CHECK(c == tern_cpu_get());
	/* Implications that hold on every CPU: a feature's prerequisites. */
	if (c->avx512bw || c->avx512vnni || c->avx512vbmi)
		TT_CHECK(c->avx512f);
	char buf[256];
	tern_cpu_describe(c, buf, sizeof buf);
	TT_CHECK(buf[0] != '\0');
#if defined(__x86_64__)
	/* Cross-check with the kernel's own view of the CPU. */
	FILE *f = fopen("/proc/cpuinfo", "r");
	if (f) {
		char line[8192];
		int have_avx2 = 0, have_vnni = 0, have_f16c = 0;
		while (fgets(line, sizeof line, f)) {
			if (!strncmp(line, "flags", 5)) {
				have_avx2 = strstr(line, " avx2") != NULL;
				have_f16c = strstr(line, " f16c") != NULL;
				have_vnni = strstr(line, " avx512_vnni") != NULL;
				break;
			}
		}
		fclose(f);
		TT_EQ_INT(c->avx2, have_avx2);
		TT_EQ_INT(c->avx512vnni, have_vnni);
		TT_EQ_INT(c->f16c, have_f16c);
	} else {
		TT_NOTE_SKIP("/proc/cpuinfo cross-check");
	}
#elif defined(__aarch64__)
	TT_CHECK(c->neon);
#endif
	fprintf(stderr, "  cpu: %s\n", buf);
}

TT_MAIN(TT_CASE(test_errors), TT_CASE(test_log_levels), TT_CASE(test_clock), TT_CASE(test_aligned_alloc),
	TT_CASE(test_cpu_probe))
