/* tern-head.h: the coordinator's ends of the model: token embedding lookup,
 * the final RMSNorm and the tied LM head (logits = Embed_matrix x norm(h)),
 * in the precision the file stores the embeddings in (F16, BF16 or F32).
 *
 * The LM head is batch invariant like the layers (DESIGN.md, Numerics): the
 * final norm is the engine's RMSNorm and each logit is one dense dot product
 * over n_embd in the fixed 64-lane order of kernels/tern-float.h
 * (tern_dot_args), identical on every kernel ISA and for any batch size or
 * thread count. Element conversions (F16/BF16 -> f32) are exact.
 *
 * head.c depends on kernels/ (base, pool, float kernels) and on nothing of
 * partition/ but the tern_dtype enum (tern-model.h); head-source.c on
 * partition/'s model source. */
#ifndef TERN_HEAD_H
#define TERN_HEAD_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"
#include "tern-kernels.h"
#include "tern-model.h"
#include "tern-pool.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tern_head_config {
	int n_vocab;
	int n_embd;
	tern_dtype dtype;      /* of the embeddings: F32, F16 or BF16 */
	const void *emb;       /* (n_vocab, row_bytes) embeddings, borrowed (e.g. the file's mapping), any alignment */
	size_t row_bytes;      /* row stride in bytes; 0 = n_embd * element size */
	const float *out_norm; /* (n_embd) final norm weight, copied */
	float eps;             /* RMSNorm epsilon */
	tern_isa isa;          /* float kernels (AUTO: tern_isa_default()); results are the same for all */
} tern_head_config;

typedef struct tern_head tern_head;

/* Errors: TERN_EINVAL (bad sizes, NULL pointers, ISA not available),
 * TERN_ENOMEM. *out is NULL on failure. */
int tern_head_create(const tern_head_config *cfg, tern_head **out, tern_err *err);
void tern_head_free(tern_head *h);
/* The kernel ISA actually used (AUTO resolved). */
tern_isa tern_head_isa(const tern_head *h);

/* hidden[j] = Embed[tokens[j]] as f32, (n, n_embd). A token outside
 * [0, n_vocab) is TERN_EINVAL (nothing written past the bad row). */
int tern_head_embed(const tern_head *h, const int32_t *tokens, int n, float *hidden, tern_err *err);

/* logits (n, n_vocab) = Embed_matrix . RMSNorm(hidden[j], out_norm) for the n
 * rows of hidden (n, n_embd), vocabulary split across the pool (may be NULL).
 * TERN_ENOMEM if the normed rows cannot be held. */
int tern_head_logits(tern_head *h, tern_pool *pool, const float *hidden, int n, float *logits, tern_err *err);

/* The head of a model file (partition/tern-source.h): token_embd as stored
 * (borrowed: src must outlive the head) and output_norm. TERN_EUNSUP for an
 * embedding type other than F32/F16/BF16. */
struct tern_source;
int tern_head_from_source(const struct tern_source *src, tern_isa isa, tern_head **out, tern_err *err);

/* Optional int8 LM head (off by default; lossy): each embedding row is
 * quantized to int8 with its own scale (absmax / 127, round half to even), so
 * the head reads half the bytes of F16. Logits are then (fixed-order dot of the
 * int8 row and the normed f32 hidden state) * scale, identical across code
 * paths. tern_head_int8_build quantizes (threads of pool) and switches it on;
 * tern_head_int8_use switches between the two; the embedding lookup always
 * uses the file's values. TERN_ENOMEM if it cannot be held. */
int tern_head_int8_build(tern_head *h, tern_pool *pool, tern_err *err);
void tern_head_int8_use(tern_head *h, int on);
int tern_head_int8_active(const tern_head *h);
/* Top-1 agreement of the int8 head with the file-precision head over the n
 * rows of hidden (n, n_embd): *agree = rows whose argmax (lowest id on ties)
 * is the same. TERN_ESTATE if no int8 head was built. */
int tern_head_int8_agreement(tern_head *h, tern_pool *pool, const float *hidden, int n, int *agree, tern_err *err);

/* Bytes the LM head reads per call (the embedding matrix, or the int8 one
 * when active): for bandwidth bounds. */
uint64_t tern_head_bytes(const tern_head *h);

#ifdef __cplusplus
}
#endif
#endif /* TERN_HEAD_H */
