/* tern-checksum.h: XXH64 (Yann Collet's xxHash, 64-bit), one-shot and
 * streaming, for shard and manifest checksums. Written here from the public
 * algorithm description; output matches the reference `xxhsum -H1`. */
#ifndef TERN_CHECKSUM_H
#define TERN_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

typedef struct tern_xxh64 {
	uint64_t v[4];       /* the four lane accumulators */
	uint64_t total_len;  /* bytes consumed so far */
	uint8_t buf[32];     /* a partial stripe */
	uint32_t buf_len;
	uint64_t seed;
} tern_xxh64;

/* Hash of len bytes at p with the given seed. p may be NULL when len == 0. */
uint64_t tern_xxh64_hash(const void *p, size_t len, uint64_t seed);

/* Streaming: init, update any number of times, digest (does not modify the
 * state, so digest may be taken mid-stream). */
void tern_xxh64_init(tern_xxh64 *s, uint64_t seed);
void tern_xxh64_update(tern_xxh64 *s, const void *p, size_t len);
uint64_t tern_xxh64_digest(const tern_xxh64 *s);

#endif /* TERN_CHECKSUM_H */
