/* kvcache.c: the KV cache of one layer range: one K and one V block per
 * layer, (n_slots, n_ctx, kv_dim) elements of its type each, placed by a caller-supplied allocator
 * (a NUMA-pinned stage puts it on its own domain), and the slot bookkeeping
 * (which slots are live, how many positions each holds). A freed slot is not
 * cleared: the engine never reads a position at or beyond a slot's length. */
#include "tern-engine.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

int tern_kv_create(tern_kv_cache **out, int n_layer, int n_slots, int n_ctx, int kv_dim, int type,
		   const tern_allocator *a, tern_err *err)
{
	*out = NULL;
	TERN_RETURN_IF(n_layer <= 0 || n_slots <= 0 || n_ctx <= 0 || kv_dim <= 0, err, TERN_EINVAL,
		       "KV cache: bad size (layers %d, slots %d, context %d, width %d)", n_layer, n_slots, n_ctx,
		       kv_dim);
	TERN_RETURN_IF(!tern_kv_type_ok(type), err, TERN_EINVAL, "KV cache: %s is not a KV type (f32, f16, bf16)",
		       tern_dtype_name(type));
	const size_t esize = tern_dtype_size(type);
	const uint64_t elems = (uint64_t)n_slots * (uint64_t)n_ctx * (uint64_t)kv_dim;
	TERN_RETURN_IF(elems > (UINT64_C(1) << 40) || elems * esize > SIZE_MAX / 2, err, TERN_ERANGE,
		       "KV cache: %d slots x %d positions x %d is too large", n_slots, n_ctx, kv_dim);
	tern_kv_cache *kv = calloc(1, sizeof *kv);
	if (!kv)
		goto nomem;
	kv->n_layer = n_layer;
	kv->n_slots = n_slots;
	kv->n_ctx = n_ctx;
	kv->kv_dim = kv_dim;
	kv->type = type;
	kv->elem_bytes = esize;
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
	if (!kv->k || !kv->v || !kv->len)
		goto nomem;
	for (int s = 0; s < n_slots; s++)
		kv->len[s] = -1;
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

int tern_kv_slot_free(tern_kv_cache *kv, int slot, tern_err *err)
{
	TERN_RETURN_IF(slot < 0 || slot >= kv->n_slots || kv->len[slot] < 0, err, TERN_EINVAL,
		       "KV cache: slot %d is not allocated", slot);
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
	return 0;
}
