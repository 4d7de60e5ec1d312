/* tern-engine.h: the BitNet b1.58 layer engine, what one pipeline stage runs
 * ("a node is layers a..b"), and what tern-run runs for the whole model.
 *
 * It owns the transformer layers of one contiguous range and the KV cache
 * (f16 by default, f32 or bf16 as configured) of those layers for a fixed number of sequence slots. One call runs a
 * micro-batch of T rows (slot, position, hidden f32[n_embd]) through every
 * layer of the range: rows of several sequences at different positions, and
 * several consecutive rows of one sequence (chunked prefill), together. Every
 * weight matrix is applied to all T rows at once (GEMM; T == 1 is GEMV).
 *
 * Numerics (DESIGN.md, "Numerics"): the ternary products are exact integers
 * scaled once per output; every float reduction here (RMSNorm, RoPE, QK dot
 * products, softmax, the weighted V sum) has one fixed order per row that
 * depends on nothing but that row's own data and position. So a sequence gives
 * bit-identical hidden states alone, inside any batch, with its prompt chunked
 * any way, and with any thread count, packing or kernel ISA.
 *
 * Attention: score_t = (float)(q.k_t in double) * (1/sqrtf(head_dim)); softmax
 * as kernels/tern-float.h; out = (float)(sum_t p_t * v_t in double, t order).
 * K and V are rounded once to the cache type when written (round to nearest
 * even, kernels/base/tern-half.h) and widened exactly to f32 when read, so
 * the cache types differ only by that stored rounding, and every ISA reads
 * the same numbers.
 * RMSNorm, RoPE NEOX and softmax are the float kernels of tern-float.h (their
 * orders are written there), run on the engine's kernel ISA.
 *
 * Math (MODEL-FORMATS.md 1.2-1.4), per layer and row:
 *   a = RMSNorm(h, attn_norm); q,k,v = BitLinear(a); RoPE NEOX on q,k;
 *   o = causal GQA softmax(q k^T / sqrt(head_dim)) v over the row's own slot;
 *   h += BitLinear_o(RMSNorm(o, attn_sub_norm));
 *   f = RMSNorm(h, ffn_norm); m = relu(gate(f))^2 * up(f);
 *   h += BitLinear_down(RMSNorm(m, ffn_sub_norm)).
 * The architecture row (tern_arch of hp.arch, partition/tern-model.h) says
 * which parts a model has: without sub_norms, o and down take the attention
 * output and m unnormed (Llama); ffn_act TERN_FFN_SILU makes
 * m = silu(gate(f)) * up(f) (the float core's swiglu).
 *
 * Depends on kernels/ (products, pool) and partition/ (tern_hparams, the
 * model readers, plan shards); never on MPI or hwloc. */
#ifndef TERN_ENGINE_H
#define TERN_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"
#include "tern-gq.h"
#include "tern-kernels.h"
#include "tern-model.h"
#include "tern-plan.h"
#include "tern-pool.h"
#include "tern-source.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- weights ------------------------------------------------------------ */

/* tern_proj (the seven projections), tern_norm_kind, their shapes and names
 * come from partition/tern-model.h; a layer holds TERN_LAYER_NORMS norms. */

typedef struct tern_layer_weights {
	tern_matrix proj[TERN_PROJ_COUNT]; /* packed, shapes as tern_proj says (unused when group_scaled) */
	tern_gq_matrix gq[TERN_PROJ_COUNT]; /* the same, Q2_0 group-scaled as stored (only when group_scaled) */
	float *norm[TERN_LAYER_NORMS];     /* (width) each, tern_aligned_alloc'd; NULL: a q/k norm the arch has not */
} tern_layer_weights;

/* The weights of layers [first, first + n) of one model, in one packing. */
/* One region the plan loader carves matrices out of (tern_huge_alloc). */
typedef struct tern_layers_arena {
	void *base;
	size_t size, used;
} tern_layers_arena;

typedef struct tern_layers {
	tern_hparams hp;
	int first; /* global index of the first layer */
	int n;     /* layers held */
	tern_packing packing;
	int group_scaled; /* 1: every projection is a tern_gq_matrix (a Q2_0 model), packing is not used */
	tern_layer_weights *l; /* (n) */
	/* From a plan: every matrix's data and scales carved out of one region
	 * in 2 MiB pages (tern_huge_alloc; the matrices do not own their data),
	 * one per stage shard read; NULL when loaded from a model file. */
	struct tern_layers_arena *arena; /* (n_arena) */
	int n_arena;
} tern_layers;

/* Where the builder gets one layer's weights from (a model file, a generator).
 * get_proj fills w (m x k int8, values in {-1,0,1}; row-major) and scales
 * (n_groups floats) for group_rows rows per scale; *group_rows on entry is m
 * (one scale per tensor) and the source may lower it to the groups it has.
 * get_norm fills out (width floats). layer is the global layer index. Return
 * 0 or a negative TERN_E* with err filled. */
typedef struct tern_layer_source {
	int (*get_proj)(void *ctx, int layer, tern_proj p, int m, int k, int8_t *w, float *scales, int max_groups,
			int *group_rows, tern_err *err);
	int (*get_norm)(void *ctx, int layer, tern_norm_kind n, int width, float *out, tern_err *err);
	void *ctx;
	/* Non-NULL for a group-scaled model (Q2_0): the m x k matrix's blocks as
	 * stored (*data valid during the build, *bytes tern_gq_data_bytes(m, k));
	 * the builder copies them and get_proj is not called. */
	int (*get_gq)(void *ctx, int layer, tern_proj p, int m, int k, const uint8_t **data, size_t *bytes,
		      tern_err *err);
} tern_layer_source;

/* Builds layers [first, first + n) packed in packing from src. hp is
 * validated; out is filled (free with tern_layers_free, also on failure). */
int tern_layers_build(tern_layers *out, const tern_hparams *hp, int first, int n, tern_packing packing,
		      const tern_layer_source *src, tern_err *err);
/* The same with the (layer, projection) matrices fetched and packed by the
 * threads of pool (NULL: the caller alone); src->get_proj must then be safe
 * to call from several threads at once. The result is identical. */
int tern_layers_build_mt(tern_layers *out, const tern_hparams *hp, int first, int n, tern_packing packing,
			 const tern_layer_source *src, tern_pool *pool, tern_err *err);
/* A deterministic random source for tests and benchmarks: ternary weights with
 * about 1/3 zeros, per-tensor scales near 1/sqrt(k) so activations stay O(1),
 * norms near 1. The same (seed, layer, projection) always gives the same data,
 * whatever range is built. */
tern_layer_source tern_layers_random_source(uint64_t *seed_storage);
/* Layers [first, first + n) of a model file (partition/tern-source.h). For
 * full-precision sources group_rows picks the rows per weight scale (<= 0:
 * one per tensor, the BitNet rule); pre-quantized files keep their scales. */
int tern_layers_from_source(tern_layers *out, const tern_source *src, int first, int n, tern_packing packing,
			    int group_rows, tern_err *err);
/* The same, built by the threads of pool (tern_layers_build_mt). */
int tern_layers_from_source_mt(tern_layers *out, const tern_source *src, int first, int n, tern_packing packing,
			       int group_rows, tern_pool *pool, tern_err *err);
/* ---- the plain-argument loader (loader.c) ---------------------------------
 * What a stage, tern-run and tern-coordinator --stages 0 call: no MPI, no
 * hwloc. */

/* packing for a plan: take the plan's own (its shards are packed already). */
#define TERN_LAYERS_PACKING_AS_STORED (-1)

/* Layers [first, first + n) of the model at path: a GGUF file or HF
 * checkpoint directory (packed here as packing, by the threads of pool, NULL:
 * the caller alone), or a plan directory (a tern-partition output with
 * plan.pb; tern_layers_from_plan). "%h" in path is this host's name.
 * Errors name the path: a layer range outside the model or the plan's
 * stages, an unknown packing, and everything the readers report. */
int tern_layers_load(tern_layers *out, const char *path, int first, int n, int packing, tern_pool *pool,
		     tern_err *err);
/* The same from the plan in dir whose manifest pm is already read (so a
 * caller holding it parses nothing twice). The layers come from the stage
 * shards holding them, one or several; each shard's whole-file xxh64 (the
 * manifest's) is checked once as it is opened, and every matrix and norm is
 * decompressed straight into out. packing must be the plan's or
 * TERN_LAYERS_PACKING_AS_STORED; out->packing is the plan's. */
int tern_layers_from_plan(tern_layers *out, const tern_plan_manifest *pm, const char *dir, int first, int n,
			  int packing, tern_err *err);

/* `bytes` bytes of Q2_0 blocks (malloc'd, read from a file or shard) as an
 * m x k tern_gq_matrix that owns them (tern_gq_free releases them; freed here
 * on error); sizes and scales checked (tern_gq_wrap_q2_0). */
int tern_gq_adopt(tern_gq_matrix *out, uint8_t *blocks, size_t bytes, int m, int k, tern_err *err);
/* Releases the matrices and norms; *ls is zeroed. NULL is a no-op. */
void tern_layers_free(tern_layers *ls);
/* How the projections are held, for logs: "q2_0" (group_scaled) or the packing's name. */
const char *tern_layers_format(const tern_layers *ls);
/* Bytes of packed ternary data of the whole range (what decode reads per token). */
uint64_t tern_layers_bytes(const tern_layers *ls);

/* ---- KV cache ----------------------------------------------------------- */

/* Memory for the KV cache, so a NUMA-pinned stage can place it. alloc returns
 * a block of at least bytes, 64-byte aligned, or NULL; free gets it back with
 * the same size. A NULL allocator means tern_aligned_alloc. */
typedef struct tern_allocator {
	void *(*alloc)(void *ctx, size_t bytes);
	void (*free)(void *ctx, void *p, size_t bytes);
	void *ctx;
} tern_allocator;

/* K and V of n_layer layers, paged: a pool of n_blocks blocks of `block`
 * positions, and a block table per slot for sequences of up to n_ctx
 * positions; elements of type (f32 float, or f16 / bf16 uint16_t bits).
 * Position t of slot s lives in block table[s][t / block] at row t % block:
 * KV head h of it is the head_dim elements at tern_kv_pos_offset(kv, s, t) +
 * h * head_dim of k[layer] and v[layer]. Invariant: len[s] <= held[s] * block.
 * Prefix cache (tern_kv_prefix_attach/publish): a block is free (on
 * free_ids), held (ref > 0 slot tables name it) or, published and held by
 * none, evictable; n_free + n_evictable blocks are available. A slot never
 * writes into a published or shared block (tern_engine_forward checks). */
typedef struct tern_kv_cache {
	int n_layer;
	int n_slots;
	int n_ctx;          /* positions one slot may hold */
	int kv_dim;         /* n_head_kv * head_dim */
	int type;           /* TERN_DTYPE_F32, F16 or BF16 (tern_kv_type_ok) */
	size_t elem_bytes;  /* tern_dtype_size(type) */
	int block;          /* positions per block */
	int n_blocks;       /* blocks in the pool */
	int max_blocks;     /* blocks of a full slot: ceil(n_ctx / block) */
	size_t layer_bytes; /* bytes of one layer's K pool (and of its V pool) */
	void **k;           /* (n_layer) -> (n_blocks, block, kv_dim) of type */
	void **v;           /* (n_layer) -> (n_blocks, block, kv_dim) of type */
	int *len;           /* (n_slots) positions held; -1 = slot free */
	int *held;          /* (n_slots) blocks in the slot's table */
	int32_t *table;     /* (n_slots, max_blocks) block ids, -1 past held */
	int32_t *free_ids;  /* (n_blocks) free block ids, the top at [n_free - 1] */
	int n_free;
	int32_t *ref;       /* (n_blocks) slot tables holding the block */
	uint8_t *cached;    /* (n_blocks) published in the prefix cache */
	uint64_t *bhash;    /* (n_blocks) chain hash of a published block */
	uint64_t *stamp;    /* (n_blocks) when its last holder let go (LRU) */
	int32_t *btok;      /* (n_blocks, block) token ids of a published block */
	uint64_t *shash;    /* (n_slots, max_blocks) chain hash of the slot's first n_pub blocks */
	int *n_pub;         /* (n_slots) leading blocks already offered to the cache */
	int n_evictable;    /* published blocks no slot holds */
	uint64_t clock;     /* release counter for stamp */
	uint64_t n_evicted; /* published blocks taken back by the pool */
	tern_allocator alloc;
} tern_kv_cache;

/* block <= 0 means TERN_KV_BLOCK_DEFAULT; n_blocks == 0 means every slot's
 * whole context (n_slots * ceil(n_ctx / block), the memory of an unpaged
 * cache), fewer makes the pool the limit. Errors: TERN_EINVAL (non-positive
 * sizes, type not a KV type, block > 65536, n_blocks < 0), TERN_ERANGE (size
 * overflow), TERN_ENOMEM. *out is NULL on failure. */
int tern_kv_create(tern_kv_cache **out, int n_layer, int n_slots, int n_ctx, int kv_dim, int type, int block,
		   int n_blocks, const tern_allocator *a, tern_err *err);
void tern_kv_free(tern_kv_cache *kv);
/* Claims a free slot (length 0, no blocks): TERN_EFULL when all are in use. */
int tern_kv_slot_alloc(tern_kv_cache *kv, int *slot, tern_err *err);
/* Releases a slot and its blocks; their contents are never read again.
 * TERN_EINVAL if slot is out of range or not allocated. */
int tern_kv_slot_free(tern_kv_cache *kv, int slot, tern_err *err);
/* Positions the slot holds (-1 if free or out of range). */
int tern_kv_slot_len(const tern_kv_cache *kv, int slot);
/* Forgets positions >= len (rewind, e.g. to re-run a prompt suffix) and gives
 * back the blocks past them; TERN_EINVAL if len > current length or the slot
 * is free. */
int tern_kv_slot_truncate(tern_kv_cache *kv, int slot, int len, tern_err *err);
/* Blocks that n_pos positions take (0 for n_pos <= 0). */
int tern_kv_blocks_for(const tern_kv_cache *kv, int n_pos);
/* Gives the slot blocks from the pool until it covers n_pos positions (never
 * fewer than it holds). TERN_EFULL when the pool has too few free, TERN_EINVAL
 * for a free slot or n_pos outside 0..n_ctx; nothing changes on error. */
int tern_kv_slot_reserve(tern_kv_cache *kv, int slot, int n_pos, tern_err *err);
/* Makes dslot of dst hold positions 0..n_pos-1 of sslot of src (the same
 * layers, width and type; blocks from dst's pool). TERN_EINVAL for other
 * shapes or a source shorter than n_pos, TERN_EFULL as tern_kv_slot_reserve
 * (dslot is then empty). */
int tern_kv_slot_copy(tern_kv_cache *dst, int dslot, const tern_kv_cache *src, int sslot, int n_pos, tern_err *err);
/* The prefix cache. Block i of a prompt is keyed by tern_kv_prefix_hash
 * chained over its full blocks (h_0 = 0, h_{i+1} = hash(h_i, ids of block
 * i)), so a key names every id up to the block's end; a hit also compares
 * the block's own ids. Only full blocks of a prompt are ever published.
 *
 * attach: rewinds the slot to empty, then gives it the published blocks
 * that tok[0..n_tok) starts with (no copy), never the block of the last id
 * (that row must run to give logits). Returns the positions it now holds
 * (a multiple of block), or a negative TERN_EINVAL (free slot, n_tok outside
 * 0..n_ctx). publish: offers the slot's full blocks of positions
 * 0..n_tok-1 (which it holds, ids tok) to the cache, each once; a prefix
 * published already by another slot stays private here. Returns the blocks
 * added or TERN_EINVAL (n_tok > the slot's length). Truncating or freeing a
 * slot drops its references; a published block then waits, evictable, for
 * the next attach or for the pool to need it. */
uint64_t tern_kv_prefix_hash(uint64_t prev, const int32_t *tok, int n);
int tern_kv_prefix_attach(tern_kv_cache *kv, int slot, const int32_t *tok, int n_tok, tern_err *err);
int tern_kv_prefix_publish(tern_kv_cache *kv, int slot, const int32_t *tok, int n_tok, tern_err *err);
/* 1 when position pos of slot lies in a block that is published or held by
 * another slot too (writing there would change another's numbers). */
int tern_kv_block_shared(const tern_kv_cache *kv, int slot, int pos);
/* Element offset of position pos of slot in a layer's K (or V) pool; pos
 * must be below held[slot] * block. */
size_t tern_kv_pos_offset(const tern_kv_cache *kv, int slot, int pos);

/* ---- the engine --------------------------------------------------------- */

typedef struct tern_engine_config {
	int n_slots;                    /* sequences live at once */
	int n_ctx;                      /* positions per slot */
	int max_rows;                   /* rows per internal step; larger calls are split */
	tern_isa isa;                   /* kernel ISA (AUTO resolves once) */
	tern_pool *pool;                /* borrowed, may be NULL (single-threaded) */
	const tern_allocator *kv_alloc; /* NULL: tern_aligned_alloc */
	int kv_type;                    /* KV cache element type (tern_kv_type_ok); 0 is TERN_DTYPE_F32,
					   the CLIs default to TERN_KV_TYPE_DEFAULT (f16) */
	int kv_block;                   /* positions per KV block, 0: TERN_KV_BLOCK_DEFAULT */
	int kv_blocks;                  /* KV pool in blocks, 0: n_slots whole contexts */
} tern_engine_config;

/* One row of a micro-batch. */
typedef struct tern_row {
	int32_t slot; /* KV slot of its sequence */
	int32_t pos;  /* position in the sequence */
} tern_row;

typedef struct tern_engine tern_engine;

/* Creates an engine over w (borrowed: must outlive the engine). Errors:
 * TERN_EINVAL (bad config, ISA not available), TERN_ENOMEM. */
int tern_engine_create(const tern_layers *w, const tern_engine_config *cfg, tern_engine **out, tern_err *err);
void tern_engine_free(tern_engine *e);

/* The engine's KV cache (slot management goes through it). */
tern_kv_cache *tern_engine_kv(tern_engine *e);
const tern_layers *tern_engine_layers(const tern_engine *e);

/* Runs n rows through every layer of the range, hidden (n, n_embd) in and out.
 * Row j writes K/V at (rows[j].slot, rows[j].pos) and attends to positions
 * 0..pos of its slot, including earlier rows of the same batch. Rules
 * (TERN_EINVAL otherwise, nothing changed): slots allocated; 0 <= pos < n_ctx;
 * a slot's first row in the call has pos <= its length, and its later rows
 * follow at pos + 1, pos + 2, ... (in row order, other slots may interleave).
 * Before any row runs, each slot's blocks are made to cover exactly its last
 * row's pos + 1 (a slot rewound gives back the blocks past it, one that grows
 * takes them from the pool); TERN_EFULL, nothing changed, when the pool has
 * too few free. After the call each slot's length is its last row's pos + 1. */
int tern_engine_forward(tern_engine *e, const tern_row *rows, int n, float *hidden, tern_err *err);

/* ---- the layer math, exposed for unit tests and the coordinator --------- */

/* Dot product with 8 lane sums (lane i % 8) combined as ((0+4)+(2+6))+((1+5)+(3+7)). */
float tern_engine_dot(const float *a, const float *b, int n);
/* The same in double (each product exact): what attention uses for q.k. */
double tern_engine_dot_f64(const float *a, const float *b, int n);

#ifdef __cplusplus
}
#endif
#endif /* TERN_ENGINE_H */
