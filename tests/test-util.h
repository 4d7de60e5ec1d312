/* test-util.h: helpers the C tests share (header-only, libc + POSIX + base's file reader): a
 * private temporary directory for the run, removed with everything in it at
 * exit; recursive removal; whole-file read and write. Kept apart from the
 * harness (tern-test.h) so a test that needs neither pays nothing. Also a
 * seeded xorshift64 and a free for arrays of strings. */
#ifndef TERN_TEST_UTIL_H
#define TERN_TEST_UTIL_H

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "tern-base.h"

static char tt_tmp_root_[64];

static inline int tt_rm_cb_(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

/* Removes PATH and, for a directory, everything below it; a missing path is
 * not an error. */
static inline void tt_rm_rf(const char *path)
{
	nftw(path, tt_rm_cb_, 16, FTW_DEPTH | FTW_PHYS);
}

static inline void tt_tmp_cleanup_(void)
{
	tt_rm_rf(tt_tmp_root_);
}

/* Writes into BUF the path of NAME inside this run's private directory
 * (/tmp/tern-test-XXXXXX, made on first use, removed at exit). Exits the
 * test when the directory cannot be made. */
static inline void tt_tmp_path(char *buf, size_t len, const char *name)
{
	if (!tt_tmp_root_[0]) {
		snprintf(tt_tmp_root_, sizeof tt_tmp_root_, "/tmp/tern-test-XXXXXX");
		if (!mkdtemp(tt_tmp_root_)) {
			perror("mkdtemp");
			exit(1);
		}
		atexit(tt_tmp_cleanup_);
	}
	snprintf(buf, len, "%s/%s", tt_tmp_root_, name);
}

/* The same, in one of 8 rotating static buffers: for a few paths alive at once. */
static inline const char *tt_tmp(const char *name)
{
	static char buf[8][320];
	static int k;
	char *b = buf[k++ % 8];
	tt_tmp_path(b, sizeof buf[0], name);
	return b;
}

/* The whole of PATH in a malloc'd buffer (one NUL byte past the end, not
 * counted in *LEN), through base's one reader; NULL when it cannot be read
 * or is over 1 GiB. */
static inline uint8_t *tt_read_file(const char *path, size_t *len)
{
	char *b;
	return tern_read_file(path, (size_t)1 << 30, &b, len, NULL) < 0 ? NULL : (uint8_t *)b;
}

/* The next value of a xorshift64 generator with its state in *state
 * (never 0): each test keeps its own seed, so its data stays the same. */
static inline uint64_t tt_xorshift(uint64_t *state)
{
	uint64_t x = *state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *state = x;
}

/* The next 32 bits of a xorshift64* generator with its state in *state
 * (never 0): the high half of the multiplied state. */
static inline uint32_t tt_xorshift_star(uint64_t *state)
{
	uint64_t x = *state;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return (uint32_t)((x * 0x2545f4914f6cdd1dull) >> 32);
}

/* Frees the n strings of v, then v. */
static inline void tt_free_strings(char **v, size_t n)
{
	for (size_t i = 0; v && i < n; i++)
		free(v[i]);
	free(v);
}

/* Writes N bytes at P to PATH (created or truncated); 0 or -1. */
static inline int tt_write_file(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		return -1;
	const size_t w = fwrite(p, 1, n, f);
	return fclose(f) == 0 && w == n ? 0 : -1;
}

#endif /* TERN_TEST_UTIL_H */
