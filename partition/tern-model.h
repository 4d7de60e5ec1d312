/* tern-model.h: the description of a BitNet b1.58 model that partition/,
 * node/ and coordinator/ share: hyper-parameters, named shape presets, and
 * the per-token byte counts the planner balances on. */
#ifndef TERN_MODEL_H
#define TERN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"

typedef struct tern_hparams {
	char arch[32];        /* "bitnet-b1.58", "bitnet-25" or "bitnet" */
	int n_embd;           /* hidden size */
	int n_layer;
	int n_head;
	int n_head_kv;        /* GQA: query head h uses KV head h / (n_head / n_head_kv) */
	int head_dim;         /* n_embd / n_head */
	int n_ff;             /* FFN inner size */
	int n_vocab;
	int n_ctx_train;      /* context length the model was trained for */
	float rope_theta;
	float norm_eps;       /* RMSNorm epsilon (every norm) */
	int tied_embeddings;  /* lm_head = token embedding matrix */
	int32_t bos_id, eos_id, eot_id; /* -1 when absent */
} tern_hparams;

/* Named shapes of BitNet b1.58 models (MODEL-FORMATS.md section 1 for 2b4t):
 * "125m", "700m", "2b4t", "3b", "7b", "13b", "30b", "70b", "100b".
 * Returns TERN_EINVAL for an unknown name. */
int tern_hparams_preset(const char *name, tern_hparams *hp, tern_err *err);
/* Space-separated list of preset names, for help texts. */
const char *tern_hparams_preset_names(void);

/* Checks that the numbers are a consistent, sane model (positive, heads
 * divide n_embd, n_head_kv divides n_head, sizes below absurd limits). */
int tern_hparams_validate(const tern_hparams *hp, tern_err *err);

/* Parameter counts. */
uint64_t tern_hparams_layer_params(const tern_hparams *hp);   /* ternary weights of one layer */
uint64_t tern_hparams_total_params(const tern_hparams *hp);   /* all layers + embeddings (+ head if untied) */

/* KV cache bytes per token per layer (f32 K and V). */
uint64_t tern_hparams_kv_bytes_per_token_layer(const tern_hparams *hp);

#endif /* TERN_MODEL_H */
