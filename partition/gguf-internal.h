/* gguf-internal.h: helpers shared by partition/'s file readers and writers,
 * not part of the public API: a name -> index hash used for GGUF keys,
 * tensor names and safetensors names. */
#ifndef TERN_GGUF_INTERNAL_H
#define TERN_GGUF_INTERNAL_H

#include <stdint.h>

/* Open addressing over indices into the caller's own array; name_of(ctx, i)
 * returns the NUL-terminated name of entry i. */
typedef struct tern_hash {
	int64_t *slots; /* (cap) entry index or -1 */
	uint64_t cap;   /* power of two, > 2 * entries */
} tern_hash;

int tern_hash_init(tern_hash *h, uint64_t n);
void tern_hash_free(tern_hash *h);
/* Index of `key`, or -1. */
int64_t tern_hash_find(const tern_hash *h, const char *key, const char *(*name_of)(const void *, int64_t),
		       const void *ctx);
/* Inserts entry idx under `key`; -1 if the key is already present. */
int tern_hash_insert(tern_hash *h, const char *key, int64_t idx, const char *(*name_of)(const void *, int64_t),
		     const void *ctx);

#endif /* TERN_GGUF_INTERNAL_H */
