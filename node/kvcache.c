/* kvcache.c: the paged KV cache of one layer range. Per layer one K pool and
 * one V pool of n_blocks blocks of `block` positions (kv_dim elements of its
 * type each), placed by a caller-supplied allocator (a NUMA-pinned stage puts
 * it on its own domain); a block id names the same positions in every layer.
 * Each slot has a block table (its i-th block holds positions i*block ..
 * (i+1)*block - 1) and takes blocks from the free list only as it grows, so
 * the pool, not slots x context, is the memory. A freed block is not
 * cleared: the engine never reads a position at or beyond a slot's length.
 *
 * The prefix cache: a full block of a prompt may be published under the
 * chained xxh64 of every token id up to its end (with its own ids kept to
 * check a hit); another slot whose prompt starts the same attaches it, so
 * one block sits in several tables (ref counts them). A published block no
 * slot holds is not free but evictable: the pool takes it back, least
 * recently released first, only when the free list is empty. */
#include "tern-engine.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

static void *default_alloc(void *ctx, size_t bytes)
{
	(void)ctx;
	return tern_aligned_alloc(bytes, TERN_ALIGN);
}

static void default_free(void *ctx, void *p, size_t bytes)
{
	(void)ctx;
	(void)bytes;
	tern_aligned_free(p);
}

int tern_kv_create(tern_kv_cache **out, int n_layer, int n_slots, int n_ctx, int kv_dim, int type, int block,
		   int n_blocks, const tern_allocator *a, tern_err *err)
{
	*out = NULL;
	TERN_RETURN_IF(n_layer <= 0 || n_slots <= 0 || n_ctx <= 0 || kv_dim <= 0, err, TERN_EINVAL,
		       "KV cache: bad size (layers %d, slots %d, context %d, width %d)", n_layer, n_slots, n_ctx,
		       kv_dim);
	TERN_RETURN_IF(!tern_kv_type_ok(type), err, TERN_EINVAL, "KV cache: %s is not a KV type (f32, f16, bf16)",
		       tern_dtype_name(type));
	if (block <= 0)
		block = TERN_KV_BLOCK_DEFAULT;
	TERN_RETURN_IF(block > (1 << 16) || n_blocks < 0, err, TERN_EINVAL,
		       "KV cache: bad paging (%d positions per block, %d blocks)", block, n_blocks);
	const int max_blocks = (int)(((int64_t)n_ctx + block - 1) / block);
	const int64_t full = (int64_t)n_slots * max_blocks;
	TERN_RETURN_IF(full > (INT64_C(1) << 30), err, TERN_ERANGE, "KV cache: %d slots x %d blocks is too many",
		       n_slots, max_blocks);
	if (n_blocks == 0)
		n_blocks = (int)full;
	const size_t esize = tern_dtype_size(type);
	const uint64_t elems = (uint64_t)n_blocks * (uint64_t)block * (uint64_t)kv_dim;
	TERN_RETURN_IF(elems > (UINT64_C(1) << 40) || elems * esize > SIZE_MAX / 2, err, TERN_ERANGE,
		       "KV cache: %d blocks x %d positions x %d is too large", n_blocks, block, kv_dim);
	tern_kv_cache *kv = calloc(1, sizeof *kv);
	if (!kv)
		goto nomem;
	kv->n_layer = n_layer;
	kv->n_slots = n_slots;
	kv->n_ctx = n_ctx;
	kv->kv_dim = kv_dim;
	kv->type = type;
	kv->elem_bytes = esize;
	kv->block = block;
	kv->n_blocks = n_blocks;
	kv->max_blocks = max_blocks;
	kv->layer_bytes = (size_t)elems * esize;
	if (a && a->alloc && a->free) {
		kv->alloc = *a;
	} else {
		kv->alloc.alloc = default_alloc;
		kv->alloc.free = default_free;
		kv->alloc.ctx = NULL;
	}
	kv->k = calloc((size_t)n_layer, sizeof *kv->k);
	kv->v = calloc((size_t)n_layer, sizeof *kv->v);
	kv->len = malloc((size_t)n_slots * sizeof *kv->len);
	kv->held = calloc((size_t)n_slots, sizeof *kv->held);
	kv->table = malloc((size_t)full * sizeof *kv->table);
	kv->free_ids = malloc((size_t)n_blocks * sizeof *kv->free_ids);
	kv->ref = calloc((size_t)n_blocks + 1, sizeof *kv->ref);
	kv->cached = calloc((size_t)n_blocks + 1, sizeof *kv->cached);
	kv->bhash = calloc((size_t)n_blocks + 1, sizeof *kv->bhash);
	kv->stamp = calloc((size_t)n_blocks + 1, sizeof *kv->stamp);
	kv->btok = malloc(((size_t)n_blocks * (size_t)block + 1) * sizeof *kv->btok);
	kv->shash = calloc((size_t)full + 1, sizeof *kv->shash);
	kv->n_pub = calloc((size_t)n_slots, sizeof *kv->n_pub);
	if (!kv->k || !kv->v || !kv->len || !kv->held || !kv->table || !kv->free_ids || !kv->ref || !kv->cached ||
	    !kv->bhash || !kv->stamp || !kv->btok || !kv->shash || !kv->n_pub)
		goto nomem;
	for (int s = 0; s < n_slots; s++)
		kv->len[s] = -1;
	for (int64_t i = 0; i < full; i++)
		kv->table[i] = -1;
	/* popped from the end: block 0 first, so one sequence gets today's layout */
	for (int b = 0; b < n_blocks; b++)
		kv->free_ids[b] = n_blocks - 1 - b;
	kv->n_free = n_blocks;
	for (int l = 0; l < n_layer; l++) {
		kv->k[l] = kv->alloc.alloc(kv->alloc.ctx, kv->layer_bytes);
		kv->v[l] = kv->alloc.alloc(kv->alloc.ctx, kv->layer_bytes);
		if (!kv->k[l] || !kv->v[l])
			goto nomem;
	}
	*out = kv;
	return 0;
nomem:
	tern_kv_free(kv);
	return TERN_ERR(err, TERN_ENOMEM, "KV cache: cannot allocate %d layers x 2 x %llu bytes", n_layer,
			(unsigned long long)(elems * esize));
}

void tern_kv_free(tern_kv_cache *kv)
{
	if (!kv)
		return;
	for (int l = 0; l < kv->n_layer && kv->k && kv->v; l++) {
		if (kv->k[l])
			kv->alloc.free(kv->alloc.ctx, kv->k[l], kv->layer_bytes);
		if (kv->v[l])
			kv->alloc.free(kv->alloc.ctx, kv->v[l], kv->layer_bytes);
	}
	free(kv->k);
	free(kv->v);
	free(kv->len);
	free(kv->held);
	free(kv->table);
	free(kv->free_ids);
	free(kv->ref);
	free(kv->cached);
	free(kv->bhash);
	free(kv->stamp);
	free(kv->btok);
	free(kv->shash);
	free(kv->n_pub);
	free(kv);
}

int tern_kv_slot_alloc(tern_kv_cache *kv, int *slot, tern_err *err)
{
	for (int s = 0; s < kv->n_slots; s++) {
		if (kv->len[s] < 0) {
			kv->len[s] = 0;
			*slot = s;
			return 0;
		}
	}
	*slot = -1;
	return TERN_ERR(err, TERN_EFULL, "KV cache: all %d sequence slots are in use", kv->n_slots);
}

/* Gives back the slot's blocks past its first `keep`: a block no other slot
 * holds goes to the free list, or, published, becomes evictable. */
static void release_blocks(tern_kv_cache *kv, int slot, int keep)
{
	int32_t *tab = kv->table + (size_t)slot * (size_t)kv->max_blocks;
	while (kv->held[slot] > keep) {
		const int i = --kv->held[slot];
		const int32_t b = tab[i];
		tab[i] = -1;
		if (--kv->ref[b] > 0)
			continue;
		if (kv->cached[b]) {
			kv->stamp[b] = ++kv->clock;
			kv->n_evictable++;
		} else {
			kv->free_ids[kv->n_free++] = b;
		}
	}
	if (kv->n_pub[slot] > keep)
		kv->n_pub[slot] = keep;
}

/* A block for a slot to write: from the free list, else the published block
 * released longest ago (it leaves the cache). The caller checked that one
 * is there (n_free + n_evictable > 0). */
static int32_t take_block(tern_kv_cache *kv)
{
	int32_t b = -1;
	if (kv->n_free > 0) {
		b = kv->free_ids[--kv->n_free];
	} else {
		for (int i = 0; i < kv->n_blocks; i++)
			if (kv->cached[i] && kv->ref[i] == 0 && (b < 0 || kv->stamp[i] < kv->stamp[b]))
				b = i;
		kv->cached[b] = 0;
		kv->n_evictable--;
		kv->n_evicted++;
	}
	kv->ref[b] = 1;
	return b;
}

int tern_kv_slot_free(tern_kv_cache *kv, int slot, tern_err *err)
{
	TERN_RETURN_IF(slot < 0 || slot >= kv->n_slots || kv->len[slot] < 0, err, TERN_EINVAL,
		       "KV cache: slot %d is not allocated", slot);
	release_blocks(kv, slot, 0);
	kv->len[slot] = -1;
	return 0;
}

int tern_kv_slot_len(const tern_kv_cache *kv, int slot)
{
	if (slot < 0 || slot >= kv->n_slots)
		return -1;
	return kv->len[slot];
}

int tern_kv_slot_truncate(tern_kv_cache *kv, int slot, int len, tern_err *err)
{
	TERN_RETURN_IF(slot < 0 || slot >= kv->n_slots || kv->len[slot] < 0, err, TERN_EINVAL,
		       "KV cache: slot %d is not allocated", slot);
	TERN_RETURN_IF(len < 0 || len > kv->len[slot], err, TERN_EINVAL,
		       "KV cache: cannot truncate slot %d of length %d to %d", slot, kv->len[slot], len);
	kv->len[slot] = len;
	release_blocks(kv, slot, tern_kv_blocks_for(kv, len));
	return 0;
}

int tern_kv_blocks_for(const tern_kv_cache *kv, int n_pos)
{
	return n_pos <= 0 ? 0 : (int)(((int64_t)n_pos + kv->block - 1) / kv->block);
}

int tern_kv_slot_reserve(tern_kv_cache *kv, int slot, int n_pos, tern_err *err)
{
	TERN_RETURN_IF(slot < 0 || slot >= kv->n_slots || kv->len[slot] < 0, err, TERN_EINVAL,
		       "KV cache: slot %d is not allocated", slot);
	TERN_RETURN_IF(n_pos < 0 || n_pos > kv->n_ctx, err, TERN_EINVAL,
		       "KV cache: %d positions outside the context of %d", n_pos, kv->n_ctx);
	const int want = tern_kv_blocks_for(kv, n_pos);
	TERN_RETURN_IF(want - kv->held[slot] > kv->n_free + kv->n_evictable, err, TERN_EFULL,
		       "KV cache: slot %d needs %d more blocks of %d positions, %d of %d free", slot,
		       want - kv->held[slot], kv->block, kv->n_free + kv->n_evictable, kv->n_blocks);
	int32_t *tab = kv->table + (size_t)slot * (size_t)kv->max_blocks;
	while (kv->held[slot] < want)
		tab[kv->held[slot]++] = take_block(kv);
	return 0;
}

size_t tern_kv_pos_offset(const tern_kv_cache *kv, int slot, int pos)
{
	const int32_t b = kv->table[(size_t)slot * (size_t)kv->max_blocks + (size_t)(pos / kv->block)];
	return ((size_t)b * (size_t)kv->block + (size_t)(pos % kv->block)) * (size_t)kv->kv_dim;
}

int tern_kv_slot_copy(tern_kv_cache *dst, int dslot, const tern_kv_cache *src, int sslot, int n_pos, tern_err *err)
{
	TERN_RETURN_IF(dst->n_layer != src->n_layer || dst->kv_dim != src->kv_dim || dst->type != src->type, err,
		       TERN_EINVAL, "KV cache: copy between caches of different shapes");
	TERN_RETURN_IF(n_pos < 0 || sslot < 0 || sslot >= src->n_slots || n_pos > src->len[sslot], err, TERN_EINVAL,
		       "KV cache: slot %d does not hold %d positions", sslot, n_pos);
	TERN_FORWARD_IF_ERROR(tern_kv_slot_truncate(dst, dslot, 0, err));
	TERN_FORWARD_IF_ERROR(tern_kv_slot_reserve(dst, dslot, n_pos, err));
	const size_t row = (size_t)src->kv_dim * src->elem_bytes;
	for (int l = 0; l < src->n_layer; l++)
		for (int t = 0; t < n_pos; t++) {
			const size_t so = tern_kv_pos_offset(src, sslot, t) * src->elem_bytes;
			const size_t d = tern_kv_pos_offset(dst, dslot, t) * dst->elem_bytes;
			memcpy((char *)dst->k[l] + d, (const char *)src->k[l] + so, row);
			memcpy((char *)dst->v[l] + d, (const char *)src->v[l] + so, row);
		}
	dst->len[dslot] = n_pos;
	return 0;
}

/* ---- the prefix cache ------------------------------------------------------ */

/* The published block of chain hash h holding ids tok[0..block), or -1. A
 * linear look over the pool: admissions only, a few microseconds per block
 * at the pools here. */
static int32_t find_cached(const tern_kv_cache *kv, uint64_t h, const int32_t *tok)
{
	const size_t row = (size_t)kv->block * sizeof *tok;
	for (int b = 0; b < kv->n_blocks; b++)
		if (kv->cached[b] && kv->bhash[b] == h && !memcmp(kv->btok + (size_t)b * (size_t)kv->block, tok, row))
			return b;
	return -1;
}

uint64_t tern_kv_prefix_hash(uint64_t prev, const int32_t *tok, int n)
{
	return XXH64(tok, (size_t)n * sizeof *tok, prev);
}

int tern_kv_prefix_attach(tern_kv_cache *kv, int slot, const int32_t *tok, int n_tok, tern_err *err)
{
	TERN_RETURN_IF(slot < 0 || slot >= kv->n_slots || kv->len[slot] < 0, err, TERN_EINVAL,
		       "KV cache: slot %d is not allocated", slot);
	TERN_RETURN_IF(n_tok < 0 || n_tok > kv->n_ctx || (n_tok > 0 && !tok), err, TERN_EINVAL,
		       "KV cache: %d prompt ids outside the context of %d", n_tok, kv->n_ctx);
	TERN_FORWARD_IF_ERROR(tern_kv_slot_truncate(kv, slot, 0, err));
	int32_t *tab = kv->table + (size_t)slot * (size_t)kv->max_blocks;
	uint64_t *sh = kv->shash + (size_t)slot * (size_t)kv->max_blocks;
	uint64_t h = 0;
	/* the last id always stays to run: its row gives the first logits */
	const int n_full = n_tok > 0 ? (n_tok - 1) / kv->block : 0;
	int i = 0;
	for (; i < n_full; i++) {
		const int32_t *t = tok + (size_t)i * (size_t)kv->block;
		h = tern_kv_prefix_hash(h, t, kv->block);
		const int32_t b = find_cached(kv, h, t);
		if (b < 0)
			break;
		if (kv->ref[b]++ == 0)
			kv->n_evictable--;
		tab[i] = b;
		sh[i] = h;
	}
	kv->held[slot] = i;
	kv->n_pub[slot] = i;
	kv->len[slot] = i * kv->block;
	return kv->len[slot];
}

int tern_kv_prefix_publish(tern_kv_cache *kv, int slot, const int32_t *tok, int n_tok, tern_err *err)
{
	TERN_RETURN_IF(slot < 0 || slot >= kv->n_slots || kv->len[slot] < 0, err, TERN_EINVAL,
		       "KV cache: slot %d is not allocated", slot);
	TERN_RETURN_IF(n_tok < 0 || n_tok > kv->len[slot] || (n_tok > 0 && !tok), err, TERN_EINVAL,
		       "KV cache: slot %d holds %d positions, not %d", slot, kv->len[slot], n_tok);
	int32_t *tab = kv->table + (size_t)slot * (size_t)kv->max_blocks;
	uint64_t *sh = kv->shash + (size_t)slot * (size_t)kv->max_blocks;
	int added = 0;
	for (int i = kv->n_pub[slot]; i < n_tok / kv->block; i++) {
		const int32_t *t = tok + (size_t)i * (size_t)kv->block;
		const uint64_t h = tern_kv_prefix_hash(i > 0 ? sh[i - 1] : 0, t, kv->block);
		sh[i] = h;
		kv->n_pub[slot] = i + 1;
		const int32_t b = tab[i];
		/* the same prefix run twice at once: the first published stays,
		 * this slot keeps its copy private */
		if (kv->cached[b] || find_cached(kv, h, t) >= 0)
			continue;
		kv->cached[b] = 1;
		kv->bhash[b] = h;
		memcpy(kv->btok + (size_t)b * (size_t)kv->block, t, (size_t)kv->block * sizeof *t);
		added++;
	}
	return added;
}

int tern_kv_block_shared(const tern_kv_cache *kv, int slot, int pos)
{
	if (slot < 0 || slot >= kv->n_slots || pos < 0 || pos / kv->block >= kv->held[slot])
		return 0;
	const int32_t b = kv->table[(size_t)slot * (size_t)kv->max_blocks + (size_t)(pos / kv->block)];
	return kv->cached[b] || kv->ref[b] > 1;
}
