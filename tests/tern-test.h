/* tern-test.h: a minimal test harness (header-only). Each test executable
 * defines test functions, lists them in TT_MAIN, and prints one line per
 * failed check plus a closing "N passed, N failed" line that ctest logs.
 * A failed check records the failure and continues the test function only
 * for TT_CHECK; TT_REQUIRE returns from it. */
#ifndef TERN_TEST_H
#define TERN_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
	const char *name;
	void (*fn)(void);
} tt_case;

static int tt_failed_checks;
static int tt_case_failed;
static int tt_nchecks;
static int tt_case_skipped;

/* Ends the current test function as SKIPPED (counted, never as passed): for
 * a case this machine cannot run (no AVX-512 VNNI, no AMX, not root). */
#define TT_SKIP(...)                                                                                      \
	do {                                                                                              \
		tt_case_skipped = 1;                                                                      \
		fprintf(stderr, "  SKIPPED: ");                                                           \
		fprintf(stderr, __VA_ARGS__);                                                             \
		fprintf(stderr, "\n");                                                                    \
		return;                                                                                   \
	} while (0)

#define TT_CHECK(cond)                                                                                    \
	do {                                                                                              \
		tt_nchecks++;                                                                             \
		if (!(cond)) {                                                                            \
			fprintf(stderr, "  FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                 \
			tt_failed_checks++;                                                               \
			tt_case_failed = 1;                                                               \
		}                                                                                         \
	} while (0)

#define TT_CHECKF(cond, ...)                                                                              \
	do {                                                                                              \
		tt_nchecks++;                                                                             \
		if (!(cond)) {                                                                            \
			fprintf(stderr, "  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                 \
			fprintf(stderr, __VA_ARGS__);                                                     \
			fputc('\n', stderr);                                                              \
			tt_failed_checks++;                                                               \
			tt_case_failed = 1;                                                               \
		}                                                                                         \
	} while (0)

#define TT_REQUIRE(cond)                                                                                  \
	do {                                                                                              \
		tt_nchecks++;                                                                             \
		if (!(cond)) {                                                                            \
			fprintf(stderr, "  FAIL %s:%d: %s (required)\n", __FILE__, __LINE__, #cond);      \
			tt_failed_checks++;                                                               \
			tt_case_failed = 1;                                                               \
			return;                                                                           \
		}                                                                                         \
	} while (0)

#define TT_EQ_INT(a, b)                                                                                   \
	TT_CHECKF((long long)(a) == (long long)(b), "%lld != %lld", (long long)(a), (long long)(b))

/* Runs the cases named on the command line (all when none), prints the summary. */
static inline int tt_run(const tt_case *cases, int n, int argc, char **argv)
{
	int passed = 0, failed = 0, skipped = 0;
	for (int i = 0; i < n; i++) {
		if (argc > 1) {
			int want = 0;
			for (int a = 1; a < argc; a++)
				if (!strcmp(argv[a], cases[i].name))
					want = 1;
			if (!want)
				continue;
		}
		tt_case_failed = 0;
		tt_case_skipped = 0;
		fprintf(stderr, "[ RUN  ] %s\n", cases[i].name);
		cases[i].fn();
		if (tt_case_skipped && !tt_case_failed) {
			skipped++;
			fprintf(stderr, "[ SKIP ] %s\n", cases[i].name);
		} else if (tt_case_failed) {
			failed++;
			fprintf(stderr, "[ FAIL ] %s\n", cases[i].name);
		} else {
			passed++;
			fprintf(stderr, "[  OK  ] %s\n", cases[i].name);
		}
	}
	if (skipped)
		printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
	else
		printf("%d passed, %d failed\n", passed, failed);
	return failed || (passed == 0) ? 1 : 0;
}

#define TT_MAIN(...)                                                                                      \
	int main(int argc, char **argv)                                                                   \
	{                                                                                                 \
		static const tt_case cases_[] = {__VA_ARGS__};                                            \
		return tt_run(cases_, (int)(sizeof cases_ / sizeof cases_[0]), argc, argv);               \
	}
#define TT_CASE(f) {#f, f}

#endif /* TERN_TEST_H */
