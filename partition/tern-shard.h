/* tern-shard.h: one shard file of a plan directory: the weights of one
 * pipeline stage (its layers' projections already packed in the kernel
 * layout, with their own per-group scales, and f32 norms), or the
 * coordinator's part (token embeddings as stored, output norm, untied head,
 * and optionally the packed quantized LM head).
 *
 * Container (all integers little-endian; version 1):
 *
 *   header, 64 bytes at offset 0:
 *     0  char[8] magic "TERNSHRD"
 *     8  u32 version (1)
 *    12  u32 stage (0 = coordinator, 1..S)
 *    16  u32 n_tensors
 *    20  i32 first_layer, 24 i32 last_layer (inclusive; -1, -1 for the coordinator)
 *    28  u32 packing of the ternary tensors (tern_packing)
 *    32  u64 index_offset (64)
 *    40  u64 data_offset (64-aligned, after the index)
 *    48  u64 file_bytes (the whole file: truncation is caught without the manifest)
 *    56  u64 xxh64 of the index bytes
 *   index, n_tensors entries of 128 bytes:
 *     0  char[48] name, NUL-terminated ("blk.3.attn_q.weight")
 *    48  u16 role (tern_shard_role), 50 u16 dtype (0 ternary, 1 f32, 2 f16, 3 bf16, 4 u8, 5 q2_0:
 *        tern_dtype_shard)
 *    52  i32 layer (-1 for global tensors)
 *    56  u32 packing, 60 u32 m (rows), 64 u32 k (columns; 1 for vectors)
 *    68  u32 k_pad, 72 u32 m_pad (as tern_matrix_pack set them; 0 if not ternary)
 *    76  u32 group_rows, 80 u32 n_groups (scales; 0 if not ternary)
 *    84  u32 compression (0 none, 1 zstd)
 *    88  u64 scales_offset, 96 u64 data_offset (from data_offset of the header)
 *   104  u64 stored_bytes, 112 u64 raw_bytes, 120 u64 xxh64 of the raw bytes
 *   data: per tensor, 64-aligned: n_groups f32 scales, then the payload
 *     (zstd frame or raw bytes): for ternary tensors exactly tern_matrix.data
 *     (tern_matrix_data_bytes bytes); for a q2_0 projection (a group-scaled
 *     model, kernels/tern-gq.h) the GGUF's Q2_0 blocks as stored
 *     (tern_gq_data_bytes; no separate scales, k_pad .. n_groups 0, packing
 *     the shard's); otherwise the elements row-major.
 *
 * The whole-file xxh64 lives in the plan manifest (plan.proto FileRef).
 * Readers bounds-check every field before use and name the file (and the
 * tensor) in every error. */
#ifndef TERN_SHARD_H
#define TERN_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"
#include "tern-kernels.h"
#include "tern-model.h"

#define TERN_SHARD_MAGIC "TERNSHRD"
#define TERN_SHARD_VERSION 1
#define TERN_SHARD_HEADER_BYTES 64
#define TERN_SHARD_ENTRY_BYTES 128

typedef enum {
	TERN_ROLE_Q = 0,
	TERN_ROLE_K = 1,
	TERN_ROLE_V = 2,
	TERN_ROLE_O = 3,
	TERN_ROLE_GATE = 4,
	TERN_ROLE_UP = 5,
	TERN_ROLE_DOWN = 6,
	TERN_ROLE_ATTN_NORM = 7,
	TERN_ROLE_ATTN_SUB_NORM = 8,
	TERN_ROLE_FFN_NORM = 9,
	TERN_ROLE_FFN_SUB_NORM = 10,
	TERN_ROLE_TOKEN_EMBD = 11,
	TERN_ROLE_OUTPUT_NORM = 12,
	TERN_ROLE_OUTPUT = 13, /* untied LM head */
	/* The LM head packed in kernels/'s quantized layout (tern-float.h,
	 * tern_qh_*), format in the manifest (plan.proto Coordinator.lm_head):
	 * dtype u8, m = ceil(n_vocab / 16) row groups, k = tern_qh_group_bytes. */
	TERN_ROLE_HEAD_PACKED = 14,
	/* Qwen3's per-head q/k RMSNorm weights, f32[head_dim], only in the shards
	 * of an architecture with tern_arch.qk_norm. */
	TERN_ROLE_ATTN_Q_NORM = 15,
	TERN_ROLE_ATTN_K_NORM = 16,
	TERN_ROLE_COUNT
} tern_shard_role;
#define TERN_SHARD_N_PROJ 7 /* roles 0..6 are the ternary projections */

/* GGUF-style tensor name of a role ("attn_q", "token_embd", ...). */
const char *tern_shard_role_name(tern_shard_role r);
/* The role of layer norm n (TERN_NORM_ATTN .. TERN_NORM_ATTN_K). */
tern_shard_role tern_shard_norm_role(tern_norm_kind n);
/* Tensors a stage shard holds per layer of hp's architecture: the seven
 * projections and the layer norms it carries (tern_shard_norm_present). */
int tern_shard_layer_tensors(const tern_hparams *hp);
/* 1 if a stage shard carries layer norm n for hp: the four norms always (an
 * absent sub-norm as ones), the q/k norms only where they exist. */
int tern_shard_norm_present(const tern_hparams *hp, tern_norm_kind n);

typedef struct tern_shard_tensor {
	char name[48];
	int role;            /* tern_shard_role */
	tern_dtype dtype;    /* TERNARY, F32, F16 or BF16 */
	int layer;           /* -1 for global tensors */
	tern_packing packing;
	int m, k, k_pad, m_pad;
	int group_rows, n_groups;
	int compression;     /* 0 none, 1 zstd */
	uint64_t scales_offset, data_offset; /* absolute file offsets once opened */
	uint64_t stored_bytes, raw_bytes, raw_xxh64;
} tern_shard_tensor;

/* ---- writing -------------------------------------------------------------- */

typedef struct tern_shard_writer tern_shard_writer;
struct tern_progress;

/* Creates path; max_tensors bounds the index. zlevel 0 stores raw, 1..19 zstd. */
int tern_shard_writer_open(tern_shard_writer **out, const char *path, int stage, int first_layer, int last_layer,
			   tern_packing packing, int max_tensors, int zlevel, tern_err *err);
/* Bytes written through the writer are added to p (may be NULL). */
void tern_shard_writer_set_progress(tern_shard_writer *w, struct tern_progress *p);
/* A packed ternary matrix: mat->data and mat->scales as they are. */
int tern_shard_write_matrix(tern_shard_writer *w, tern_shard_role role, int layer, const tern_matrix *mat,
			    tern_err *err);
/* A group-scaled projection: m rows of k weights as Q2_0 blocks (18 bytes per
 * 64 weights, tern_gq_data_bytes), stored as they are. */
int tern_shard_write_gq(tern_shard_writer *w, tern_shard_role role, int layer, int m, int k, const uint8_t *blocks,
			tern_err *err);
/* A dense tensor of m x k elements of dtype (F32/F16/BF16). */
int tern_shard_write_dense(tern_shard_writer *w, tern_shard_role role, int layer, tern_dtype dtype, int m, int k,
			   const void *data, tern_err *err);
/* Writes the index and header, hashes the finished file. Frees w either way. */
int tern_shard_writer_close(tern_shard_writer *w, uint64_t *file_bytes, uint64_t *file_xxh64, tern_err *err);
/* Frees w and removes the partial file. NULL is a no-op. */
void tern_shard_writer_abort(tern_shard_writer *w);

/* ---- reading -------------------------------------------------------------- */

typedef struct tern_shard tern_shard;

/* Maps path, checks header and index. With expect_xxh64 non-NULL the whole
 * file is hashed first and a mismatch is TERN_ECHECKSUM naming the file;
 * tensors read from a shard so checked are not hashed again (every byte is
 * hashed once on load). Without it each tensor is checked against its own
 * xxh64 after decompression (tern_shard_read_tensor). */
int tern_shard_open(tern_shard **out, const char *path, const uint64_t *expect_xxh64, tern_err *err);
/* The same over a caller's buffer (not copied; must outlive the shard). */
int tern_shard_open_mem(tern_shard **out, const void *buf, size_t len, const char *name, tern_err *err);
void tern_shard_close(tern_shard *sh);

int tern_shard_stage(const tern_shard *sh);
void tern_shard_layers(const tern_shard *sh, int *first, int *last);
tern_packing tern_shard_packing(const tern_shard *sh);
int tern_shard_n_tensors(const tern_shard *sh);
const tern_shard_tensor *tern_shard_tensor_at(const tern_shard *sh, int i);
/* Index of (role, layer), or -1. */
int tern_shard_find(const tern_shard *sh, tern_shard_role role, int layer);

/* Decompresses tensor i's payload into dst (dst_bytes >= raw_bytes), the
 * caller's final storage (no copy in between), and checks its xxh64 unless
 * the whole file was checked at open; scales (if non-NULL) receive n_groups
 * floats. */
int tern_shard_read_tensor(const tern_shard *sh, int i, void *dst, size_t dst_bytes, float *scales, tern_err *err);
/* An uncompressed tensor i (a token_embd: the writer stores those raw) in
 * place: *data points into the shard's mapping (raw_bytes, 64-byte aligned
 * in the file), valid until tern_shard_close, paged in as it is read; its
 * xxh64 checked here unless the whole file was at open. TERN_EUNSUP for a
 * compressed tensor (older plans: read it instead). */
int tern_shard_map_tensor(const tern_shard *sh, int i, const void **data, tern_err *err);

/* Where the node wants its weights (e.g. on its NUMA domain). NULL
 * callbacks mean tern_aligned_alloc/tern_aligned_free. */
typedef struct tern_shard_alloc {
	void *(*alloc)(void *ctx, size_t bytes, size_t align); /* NULL = out of memory */
	void (*free)(void *ctx, void *p, size_t bytes);
	void *ctx;
} tern_shard_alloc;

/* A ternary tensor as a ready tern_matrix: data and scales from the
 * allocator (64-byte aligned), owns_data = 0. Release with
 * tern_shard_matrix_release. */
int tern_shard_load_matrix(const tern_shard *sh, int i, const tern_shard_alloc *a, tern_matrix *out, tern_err *err);
void tern_shard_matrix_release(tern_matrix *m, const tern_shard_alloc *a);

typedef struct tern_shard_layer {
	int layer;                           /* model layer index */
	int n_embd, n_ff;
	tern_matrix proj[TERN_SHARD_N_PROJ]; /* indexed by tern_shard_role Q..DOWN */
	float *attn_norm;                    /* (n_embd) */
	float *attn_sub_norm;                /* (n_embd) */
	float *ffn_norm;                     /* (n_embd) */
	float *ffn_sub_norm;                 /* (n_ff) */
} tern_shard_layer;

/* Everything a stage needs: one tern_shard_layer per layer of the shard,
 * shapes checked against each other. *layers is malloc'd; free with
 * tern_shard_layers_free (same allocator). */
int tern_shard_load_layers(const tern_shard *sh, const tern_shard_alloc *a, tern_shard_layer **layers, int *n,
			   tern_err *err);
void tern_shard_layers_free(tern_shard_layer *layers, int n, const tern_shard_alloc *a);

#endif /* TERN_SHARD_H */
