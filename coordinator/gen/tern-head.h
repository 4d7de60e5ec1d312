/* tern-head.h: the coordinator's ends of the model: token embedding lookup,
 * the final RMSNorm and the LM head (logits = Head_matrix x norm(h), where
 * the head matrix is the embedding matrix for tied models and the model's own
 * output matrix for untied ones), in the precision the file stores it in
 * (F16, BF16 or F32) or quantized (Q8 / Q4, tern_head_quantize).
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

/* The LM head's precision (the numbers of plan.proto's LmHead and of
 * partition's TERN_PLAN_HEAD_*, whose TERN_PLAN_HEAD_DEFAULT the command
 * lines default to): the head matrix as the file stores it, or a
 * packed quantized copy (kernels/tern-float.h, "quantized LM head": blocks
 * of 32 with an f16 scale, 16 rows interleaved; int8 activations in the same
 * blocks, exact int32 block sums, a fixed float order over the blocks). */
typedef enum {
	TERN_HEAD_FILE = 0,
	TERN_HEAD_Q8 = 1, /* 8-bit, 34 bytes per 32 weights */
	TERN_HEAD_Q4 = 2, /* 4-bit symmetric, 18 bytes per 32 weights */
	TERN_HEAD_FORMAT_COUNT
} tern_head_format;

/* "file", "q8", "q4"; parse also takes "int8" for q8; -1 for anything else. */
const char *tern_head_format_name(tern_head_format f);
int tern_head_format_parse(const char *s);

typedef struct tern_head_config {
	int n_vocab;
	int n_embd;
	tern_dtype dtype;      /* of the embeddings: F32, F16 or BF16 */
	const void *emb;       /* (n_vocab, row_bytes) embeddings, borrowed (e.g. the file's mapping), any alignment */
	size_t row_bytes;      /* row stride in bytes; 0 = n_embd * element size */
	const float *out_norm; /* (n_embd) final norm weight, copied */
	float eps;             /* RMSNorm epsilon */
	tern_isa isa;          /* float kernels (AUTO: tern_isa_default()); results are the same for all */
	/* Optional: an already packed quantized head (e.g. a plan's coordinator
	 * shard), borrowed, tern_qh_bytes(qformat, n_vocab, n_embd) bytes; the
	 * head then starts with it in use. NULL: the file's precision. */
	tern_head_format qformat;
	const void *qhead;
	/* Untied models: the output matrix the logits read, borrowed like emb
	 * (the lookup still reads emb). NULL: tied, the head is emb. */
	tern_dtype head_dtype; /* F32, F16 or BF16 */
	const void *head;      /* (n_vocab, head_row_bytes) */
	size_t head_row_bytes; /* 0 = n_embd * element size */
	/* The head matrix is absent (an untied plan that stores only its packed
	 * head): logits only from qhead (required); switching to another format
	 * and tern_head_agreement are TERN_EUNSUP. */
	int packed_only;
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

/* logits (n, n_vocab) = Head_matrix . RMSNorm(hidden[j], out_norm) for the n
 * rows of hidden (n, n_embd), vocabulary split across the pool (may be NULL).
 * TERN_ENOMEM if the normed rows cannot be held. */
int tern_head_logits(tern_head *h, tern_pool *pool, const float *hidden, int n, float *logits, tern_err *err);

/* The head of a model file (partition/tern-source.h): token_embd as stored
 * (borrowed: src must outlive the head), the output matrix as the head when
 * the model is untied (hparams tied_embeddings == 0), and output_norm.
 * TERN_EUNSUP for a matrix type other than F32/F16/BF16. */
struct tern_source;
int tern_head_from_source(const struct tern_source *src, tern_isa isa, tern_head **out, tern_err *err);

/* Quantized LM head (lossy; off unless asked for): packs the head matrix's rows
 * as f (threads of pool) and switches the logits to it; TERN_HEAD_FILE
 * switches back (the packed copy is kept). The logits are then the integer
 * dot products' fixed order (tern-float.h): identical on every ISA, batch size
 * and thread count, and so identical in tern-run and the served path for the
 * same format. The embedding lookup (tern_head_embed) always reads the file's
 * rows, not the dequantized ones: they are the mapping already (only the
 * looked-up rows are ever paged in), exact, and the same in both formats, so
 * the hidden states entering the layers do not depend on the head format.
 * TERN_EINVAL for an unknown format, TERN_ENOMEM; TERN_EUNSUP for a format other
 * than the packed one of a packed_only head. */
int tern_head_quantize(tern_head *h, tern_head_format f, tern_pool *pool, tern_err *err);
/* The format the logits use now. */
tern_head_format tern_head_active(const tern_head *h);
/* The packed quantized head (NULL, *bytes = 0 if none): what a plan stores. */
const void *tern_head_packed(const tern_head *h, size_t *bytes);
/* Top-1 agreement of the quantized head in use with the file-precision head
 * over the n rows of hidden (n, n_embd): *agree = rows whose argmax (lowest
 * id on ties) is the same. TERN_ESTATE if no quantized head is in use. */
int tern_head_agreement(tern_head *h, tern_pool *pool, const float *hidden, int n, int *agree, tern_err *err);

/* Bytes the LM head reads per call (the head matrix, or the packed
 * quantized one when in use): for bandwidth bounds. */
uint64_t tern_head_bytes(const tern_head *h);

#ifdef __cplusplus
}
#endif
#endif /* TERN_HEAD_H */
