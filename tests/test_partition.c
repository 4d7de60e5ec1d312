/* test_partition.c: partition/ — checksums (more with the model readers). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tern-checksum.h"
#include "tern-test.h"

static void test_xxh64_known_answers(void)
{
	/* Reference values from xxhsum -H1 (Debian's xxhash package). */
	TT_CHECK(tern_xxh64_hash(NULL, 0, 0) == 0xef46db3751d8e999ULL);
	TT_CHECK(tern_xxh64_hash("a", 1, 0) == 0xd24ec4f1a98c6e5bULL);
	TT_CHECK(tern_xxh64_hash("abc", 3, 0) == 0x44bc2cf5ad770999ULL);
	char x[1000];
	memset(x, 'x', sizeof x);
	TT_CHECK(tern_xxh64_hash(x, sizeof x, 0) == 0x4cb9a3b69cb700e1ULL);
	/* A different seed gives a different hash. */
	TT_CHECK(tern_xxh64_hash("abc", 3, 1) != tern_xxh64_hash("abc", 3, 0));
}

static void test_xxh64_streaming_equals_oneshot(void)
{
	enum { N = 4099 };
	uint8_t *buf = malloc(N);
	TT_REQUIRE(buf != NULL);
	uint32_t s = 12345;
	for (int i = 0; i < N; i++) {
		s = s * 1664525u + 1013904223u;
		buf[i] = (uint8_t)(s >> 24);
	}
	for (size_t len = 0; len <= N; len += (len < 100 ? 1 : 97)) {
		const uint64_t want = tern_xxh64_hash(buf, len, 7);
		/* Feed in uneven pieces that cross the 32-byte stripe boundary. */
		tern_xxh64 st;
		tern_xxh64_init(&st, 7);
		size_t off = 0, piece = 1;
		while (off < len) {
			size_t n = piece < len - off ? piece : len - off;
			tern_xxh64_update(&st, buf + off, n);
			off += n;
			piece = piece * 3 % 71 + 1;
		}
		TT_CHECKF(tern_xxh64_digest(&st) == want, "len %zu", len);
	}
	/* One flipped bit anywhere changes the hash. */
	const uint64_t h0 = tern_xxh64_hash(buf, N, 0);
	for (int i = 0; i < N; i += 511) {
		buf[i] ^= 0x10;
		TT_CHECK(tern_xxh64_hash(buf, N, 0) != h0);
		buf[i] ^= 0x10;
	}
	free(buf);
}

TT_MAIN(TT_CASE(test_xxh64_known_answers), TT_CASE(test_xxh64_streaming_equals_oneshot))
