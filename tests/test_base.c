/* test_base.c: the shared plumbing in kernels/base. */
#include <stdint.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

/* tern_read_file / tern_map_file: contents, the NUL after them, the size
 * limit, empty files, pipes, and errors that name the path. */
static void test_files(void)
{
	char dir[] = "/tmp/tern-test-base-XXXXXX";
	TT_REQUIRE(mkdtemp(dir) != NULL);
	char path[128], empty[128], missing[128];
	snprintf(path, sizeof path, "%s/f.txt", dir);
	snprintf(empty, sizeof empty, "%s/empty", dir);
	snprintf(missing, sizeof missing, "%s/none", dir);
	FILE *f = fopen(path, "wb");
	TT_REQUIRE(f);
	fputs("hello, file", f);
	fclose(f);
	f = fopen(empty, "wb");
	TT_REQUIRE(f);
	fclose(f);

	tern_err e;
	char *buf = NULL;
	size_t len = 0;
	TT_REQUIRE(tern_read_file(path, 1 << 20, &buf, &len, &e) == 0);
	TT_EQ_INT(len, 11);
	TT_CHECK(buf && !memcmp(buf, "hello, file", 12)); /* NUL-terminated */
	free(buf);
	TT_CHECK(tern_read_file(path, 11, &buf, &len, &e) == 0); /* exactly the limit */
	free(buf);
	TT_EQ_INT(tern_read_file(path, 10, &buf, &len, &e), TERN_ERANGE);
	TT_CHECKF(strstr(e.msg, "f.txt") && strstr(e.msg, "larger than 10 bytes"), "%s", e.msg);
	TT_CHECK(buf == NULL && len == 0);
	TT_REQUIRE(tern_read_file(empty, 100, &buf, &len, &e) == 0);
	TT_CHECK(len == 0 && buf && buf[0] == '\0');
	free(buf);
	TT_EQ_INT(tern_read_file(missing, 100, &buf, &len, &e), TERN_EIO);
	TT_CHECKF(strstr(e.msg, "none: cannot open") != NULL, "%s", e.msg);
	TT_EQ_INT(tern_read_file(dir, 100, &buf, &len, &e), TERN_EIO);
	/* not a regular file: a pipe is read to its end */
	int fds[2];
	TT_REQUIRE(pipe(fds) == 0);
	TT_REQUIRE(write(fds[1], "piped", 5) == 5);
	close(fds[1]);
	char pp[64];
	snprintf(pp, sizeof pp, "/dev/fd/%d", fds[0]);
	TT_CHECKF(tern_read_file(pp, 100, &buf, &len, &e) == 0, "%s", e.msg);
	TT_CHECK(len == 5 && buf && !memcmp(buf, "piped", 6));
	free(buf);
	close(fds[0]);

	tern_file_map m;
	TT_REQUIRE(tern_map_file(path, &m, &e) == 0);
	TT_CHECK(m.size == 11 && m.mapped && !memcmp(m.data, "hello, file", 11));
	tern_unmap_file(&m);
	TT_CHECK(m.data == NULL && m.size == 0 && !m.mapped);
	tern_unmap_file(&m); /* twice is a no-op */
	tern_unmap_file(NULL);
	TT_REQUIRE(tern_map_file(empty, &m, &e) == 0);
	TT_CHECK(m.size == 0 && m.data != NULL && !m.mapped);
	tern_unmap_file(&m);
	TT_EQ_INT(tern_map_file(missing, &m, &e), TERN_EIO);
	TT_CHECKF(strstr(e.msg, "none: cannot open") != NULL, "%s", e.msg);
	TT_EQ_INT(tern_map_file(dir, &m, &e), TERN_EIO);
	TT_CHECKF(strstr(e.msg, "not a regular file") != NULL, "%s", e.msg);
	TT_CHECK(m.data == NULL);

	/* "%h" is this host's name */
	char host[256] = "", want[300], got[300];
	gethostname(host, sizeof host - 1);
	snprintf(want, sizeof want, "/m/%s/x%s", host, host);
	tern_path_expand_host("/m/%h/x%h", got, sizeof got);
	TT_CHECKF(!strcmp(got, want), "%s", got);
	tern_path_expand_host("/abcdef", got, 4);
	TT_CHECK(!strcmp(got, "/ab"));

	remove(path);
	remove(empty);
	rmdir(dir);
}

static void test_parse_numbers(void)
{
	tern_err e;
	int i = -7;
	TT_EQ_INT(tern_parse_int("42", 1, 100, "--n", &i, &e), 0);
	TT_EQ_INT(i, 42);
	TT_EQ_INT(tern_parse_int("-3", -5, 5, "--n", &i, &e), 0);
	TT_EQ_INT(i, -3);
	/* Out of range, trailing text, empty, spaces, overflow: one line, value kept. */
	const char *bad_ints[] = {"101", "0", "4x", "", " 4", "4 ", "1e3", "99999999999999999999", "0x10", "--4", "-"};
	for (size_t k = 0; k < sizeof bad_ints / sizeof bad_ints[0]; k++) {
		i = -7;
		TT_EQ_INT(tern_parse_int(bad_ints[k], 1, 100, "--threads", &i, &e), TERN_EINVAL);
		TT_EQ_INT(i, -7);
		TT_CHECK(strstr(e.msg, "--threads") && strstr(e.msg, "[1, 100]") && !strchr(e.msg, '\n'));
	}
	TT_EQ_INT(tern_parse_int(NULL, 1, 100, NULL, &i, &e), TERN_EINVAL);
	TT_CHECK(!strcmp(e.msg, "bad value '': expected an integer in [1, 100]"));
	int64_t l;
	TT_EQ_INT(tern_parse_int64("-9223372036854775808", INT64_MIN, INT64_MAX, "x", &l, &e), 0);
	TT_CHECK(l == INT64_MIN);
	TT_EQ_INT(tern_parse_int64("9223372036854775808", INT64_MIN, INT64_MAX, "x", &l, &e), TERN_EINVAL);

	uint64_t u = 0;
	TT_EQ_INT(tern_parse_uint64("18446744073709551615", "--seed", &u, &e), 0);
	TT_CHECK(u == UINT64_MAX);
	TT_EQ_INT(tern_parse_uint64("0x10", "--seed", &u, &e), 0);
	TT_EQ_INT(u, 16);
	TT_EQ_INT(tern_parse_uint64("010", "--seed", &u, &e), 0);
	TT_EQ_INT(u, 10);
	const char *bad_u[] = {"-1", "18446744073709551616", "", "0x", "1.5", "+1"};
	for (size_t k = 0; k < sizeof bad_u / sizeof bad_u[0]; k++)
		TT_EQ_INT(tern_parse_uint64(bad_u[k], "--seed", &u, &e), TERN_EINVAL);

	double d = 0;
	TT_EQ_INT(tern_parse_double("0.25", 0, 1, "--top-p", &d, &e), 0);
	TT_CHECK(d == 0.25);
	TT_EQ_INT(tern_parse_double("-1e-3", -1, 1, "x", &d, &e), 0);
	TT_EQ_INT(tern_parse_double(".5", 0, 1, "x", &d, &e), 0);
	const char *bad_d[] = {"nan", "inf", "-inf", "1.5", "0x1p-2", "", "0.5x", " 0.5", "1e999"};
	for (size_t k = 0; k < sizeof bad_d / sizeof bad_d[0]; k++) {
		d = -9;
		TT_EQ_INT(tern_parse_double(bad_d[k], 0, 1, "--top-p", &d, &e), TERN_EINVAL);
		TT_CHECK(d == -9);
	}
	float f = 0;
	TT_EQ_INT(tern_parse_float("0.8", 0, 100, "--temp", &f, &e), 0);
	TT_CHECK(f == 0.8f);

	uint64_t z = 0;
	TT_EQ_INT(tern_parse_size("16GiB", 1, UINT64_MAX, "--mem", &z, &e), 0);
	TT_CHECK(z == 16ull << 30);
	TT_EQ_INT(tern_parse_size("512", 1, UINT64_MAX, "--mem", &z, &e), 0);
	TT_EQ_INT(z, 512);
	TT_EQ_INT(tern_parse_size("3K", 1, UINT64_MAX, "--mem", &z, &e), 0);
	TT_EQ_INT(z, 3072);
	const char *bad_z[] = {"0", "16GB", "1.5G", "-1G", "", "G", "16777216T", "99999999999999999999"};
	for (size_t k = 0; k < sizeof bad_z / sizeof bad_z[0]; k++)
		TT_EQ_INT(tern_parse_size(bad_z[k], 1, UINT64_MAX, "--mem", &z, &e), TERN_EINVAL);
	TT_CHECK(strstr(e.msg, "--mem") != NULL);
}

/* tern_cpu_count follows the affinity mask: every allowed CPU, and 1 when
 * the process is pinned to one. */
/* tern_split_host_port: the last ':' splits, brackets around an IPv6 host
 * go, an empty host stays empty, and what does not fit is refused. */
static void test_split_host_port(void)
{
	char h[16], p[8];
	TT_CHECK(tern_split_host_port("127.0.0.1:8080", h, sizeof h, p, sizeof p) == 0);
	TT_CHECK(!strcmp(h, "127.0.0.1") && !strcmp(p, "8080"));
	TT_CHECK(tern_split_host_port("[::1]:0", h, sizeof h, p, sizeof p) == 0);
	TT_CHECK(!strcmp(h, "::1") && !strcmp(p, "0"));
	TT_CHECK(tern_split_host_port(":50051", h, sizeof h, p, sizeof p) == 0);
	TT_CHECK(h[0] == '\0' && !strcmp(p, "50051"));
	TT_CHECK(tern_split_host_port("localhost", h, sizeof h, p, sizeof p) == -1);
	TT_CHECK(tern_split_host_port("localhost:", h, sizeof h, p, sizeof p) == -1);
	TT_CHECK(tern_split_host_port("a-very-long-host-name:1", h, sizeof h, p, sizeof p) == -1);
	TT_CHECK(tern_split_host_port("h:123456789", h, sizeof h, p, sizeof p) == -1);
}

static void test_cpu_count(void)
{
	cpu_set_t all;
	TT_REQUIRE(sched_getaffinity(0, sizeof all, &all) == 0);
	TT_EQ_INT(tern_cpu_count(), CPU_COUNT(&all));
	int first = 0;
	while (!CPU_ISSET(first, &all))
		first++;
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(first, &one);
	TT_REQUIRE(sched_setaffinity(0, sizeof one, &one) == 0);
	TT_EQ_INT(tern_cpu_count(), 1);
	TT_REQUIRE(sched_setaffinity(0, sizeof all, &all) == 0);
}

TT_MAIN(TT_CASE(test_parse_numbers), TT_CASE(test_split_host_port), TT_CASE(test_cpu_count), TT_CASE(test_errors), TT_CASE(test_files), TT_CASE(test_log_levels),
	TT_CASE(test_clock), TT_CASE(test_aligned_alloc), TT_CASE(test_cpu_probe))
