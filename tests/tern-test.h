/* tern-test.h: a minimal test harness (header-only). Each test executable
 * defines test functions, lists them in TT_MAIN, and prints one line per
 * failed check plus a closing "N passed, N failed, N skipped" line that ctest
 * logs. A failed check records the failure and continues the test function
 * only for TT_CHECK; TT_REQUIRE returns from it.
 *
 * A case that cannot run here (no AVX-512 on this CPU, not root, ...) calls
 * TT_SKIP("reason", ...): it is reported SKIPPED with the reason and counted,
 * never as passed. A case that runs but leaves a part out (an ISA loop on a
 * CPU without that ISA) names the part with TT_NOTE_SKIP("what"): its result
 * line and the summary say what was not covered. An executable whose cases
 * were all skipped exits 77, which ctest counts as skipped (SKIP_RETURN_CODE
 * in tests/CMakeLists.txt). */
#ifndef TERN_TEST_H
#define TERN_TEST_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The exit code of a test executable that could run none of its cases. */
#define TT_EXIT_SKIPPED 77

typedef struct {
	const char *name;
	void (*fn)(void);
} tt_case;

static int tt_failed_checks;
static int tt_case_failed;
static int tt_nchecks;
static int tt_case_skipped;
static char tt_skip_reason[256];

/* Parts left out, named by TT_NOTE_SKIP: per case (its result line) and per
 * run (the summary), each name once. */
#define TT_MAX_NOTES 16
typedef struct {
	int n;
	char what[TT_MAX_NOTES][64];
	int cases[TT_MAX_NOTES];
} tt_notes;
static tt_notes tt_case_notes, tt_run_notes;

static inline int tt_note_add_(tt_notes *t, const char *what)
{
	for (int i = 0; i < t->n; i++)
		if (!strcmp(t->what[i], what))
			return i;
	if (t->n == TT_MAX_NOTES)
		return -1;
	snprintf(t->what[t->n], sizeof t->what[0], "%s", what);
	t->cases[t->n] = 0;
	return t->n++;
}

__attribute__((format(printf, 1, 2))) static inline void tt_note_skip(const char *fmt, ...)
{
	char what[64];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof what, fmt, ap);
	va_end(ap);
	for (int i = 0; i < tt_case_notes.n; i++)
		if (!strcmp(tt_case_notes.what[i], what))
			return; /* this case has it already */
	if (tt_note_add_(&tt_case_notes, what) < 0)
		return;
	const int r = tt_note_add_(&tt_run_notes, what);
	if (r >= 0)
		tt_run_notes.cases[r]++;
}

__attribute__((format(printf, 1, 2))) static inline void tt_skip_(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(tt_skip_reason, sizeof tt_skip_reason, fmt, ap);
	va_end(ap);
	tt_case_skipped = 1;
}

/* Ends the case as SKIPPED: printf-style reason. */
#define TT_SKIP(...)                                                                                      \
	do {                                                                                              \
		tt_skip_(__VA_ARGS__);                                                                    \
		return;                                                                                   \
	} while (0)

/* The case goes on, but a part of it (printf-style: an ISA name, ...) was
 * not covered here. */
#define TT_NOTE_SKIP(...) tt_note_skip(__VA_ARGS__)

/* Records a failed check and prints "  FAIL file:line: cond" and then tail. */
static inline void tt_fail_(const char *file, int line, const char *cond, const char *tail)
{
	fprintf(stderr, "  FAIL %s:%d: %s%s", file, line, cond, tail);
	tt_failed_checks++;
	tt_case_failed = 1;
}

#define TT_CHECK(cond)                                                                                    \
	do {                                                                                              \
		tt_nchecks++;                                                                             \
		if (!(cond))                                                                              \
			tt_fail_(__FILE__, __LINE__, #cond, "\n");                                        \
	} while (0)

#define TT_CHECKF(cond, ...)                                                                              \
	do {                                                                                              \
		tt_nchecks++;                                                                             \
		if (!(cond)) {                                                                            \
			tt_fail_(__FILE__, __LINE__, #cond, ": ");                                        \
			fprintf(stderr, __VA_ARGS__);                                                     \
			fputc('\n', stderr);                                                              \
		}                                                                                         \
	} while (0)

#define TT_REQUIRE(cond)                                                                                  \
	do {                                                                                              \
		tt_nchecks++;                                                                             \
		if (!(cond)) {                                                                            \
			tt_fail_(__FILE__, __LINE__, #cond, " (required)\n");                             \
			return;                                                                           \
		}                                                                                         \
	} while (0)

#define TT_EQ_INT(a, b)                                                                                   \
	TT_CHECKF((long long)(a) == (long long)(b), "%lld != %lld", (long long)(a), (long long)(b))

static inline void tt_print_notes_(const tt_notes *t, int with_counts)
{
	for (int i = 0; i < t->n; i++) {
		if (with_counts)
			fprintf(stderr, "%s%s (%d case%s)", i ? ", " : "", t->what[i], t->cases[i],
				t->cases[i] == 1 ? "" : "s");
		else
			fprintf(stderr, "%s%s", i ? ", " : "", t->what[i]);
	}
}

/* Runs the cases named on the command line (all when none), prints the
 * summary; exits 1 on a failure or when no case ran, TT_EXIT_SKIPPED when
 * every case that was asked for skipped. */
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
		tt_case_notes.n = 0;
		fprintf(stderr, "[ RUN  ] %s\n", cases[i].name);
		cases[i].fn();
		if (tt_case_failed) {
			failed++;
			fprintf(stderr, "[ FAIL ] %s\n", cases[i].name);
		} else if (tt_case_skipped) {
			skipped++;
			fprintf(stderr, "[ SKIP ] %s: SKIPPED (%s)\n", cases[i].name, tt_skip_reason);
		} else {
			passed++;
			fprintf(stderr, "[  OK  ] %s", cases[i].name);
			if (tt_case_notes.n) {
				fprintf(stderr, " (not covered here: ");
				tt_print_notes_(&tt_case_notes, 0);
				fputc(')', stderr);
			}
			fputc('\n', stderr);
		}
	}
	if (tt_run_notes.n) {
		fprintf(stderr, "not covered on this machine: ");
		tt_print_notes_(&tt_run_notes, 1);
		fputc('\n', stderr);
	}
	printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
	if (failed)
		return 1;
	if (passed == 0)
		return skipped ? TT_EXIT_SKIPPED : 1;
	return 0;
}

#define TT_MAIN(...)                                                                                      \
	int main(int argc, char **argv)                                                                   \
	{                                                                                                 \
		static const tt_case cases_[] = {__VA_ARGS__};                                            \
		return tt_run(cases_, (int)(sizeof cases_ / sizeof cases_[0]), argc, argv);               \
	}
#define TT_CASE(f) {#f, f}

#endif /* TERN_TEST_H */
