/* tern-perplexity.h: perplexity of a text under the engine, as llama.cpp's
 * llama-perplexity measures it (issue 8).
 *
 * Windows: the text's tokens (encoded without BOS) are cut into consecutive
 * windows of n_ctx - 1 tokens (the last one may be shorter). Each window is
 * fed from an empty KV slot as [BOS, t0, ..., t(m-2)] at positions 0..m-1,
 * and every one of its tokens t0..t(m-1) is scored: row i predicts t(i).
 * So every token of the text is scored exactly once, each with at least BOS
 * as context, and nothing is scored past n_ctx positions. (llama-perplexity
 * scores only the second half of overlapping windows; this scheme is the one
 * deploy/train/train_bitnet.py evaluates, so the two figures are comparable.)
 *
 * NLL per token = logsumexp(logits) - logits[target], in double precision;
 * ppl = exp(mean NLL). */
#ifndef TERN_PERPLEXITY_H
#define TERN_PERPLEXITY_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"
#include "tern-engine.h"
#include "tern-head.h"
#include "tern-pool.h"
#include "tern-tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tern_ppl_result {
	double nll;        /* mean negative log-likelihood per scored token, nats */
	double ppl;        /* exp(nll) */
	int64_t n_scored;  /* tokens scored (all tokens of the text) */
	int64_t n_windows; /* windows evaluated */
} tern_ppl_result;

/* Optional per-token report: the NLL of ids[index] (e.g. to dump or to compare token by token). */
typedef void (*tern_ppl_token_fn)(void *ctx, size_t index, int32_t id, double nll);

typedef struct tern_ppl_config {
	int n_ctx;                  /* window length in positions, >= 2 and <= the engine's n_ctx */
	int batch;                  /* rows per engine/head call (0: 32) */
	int32_t bos;                /* BOS id (required, >= 0) */
	int slot;                   /* an allocated KV slot of the engine; it is emptied before each window */
	tern_pool *pool;            /* for the head, may be NULL */
	tern_ppl_token_fn on_token; /* may be NULL */
	void *ctx;                  /* for on_token */
} tern_ppl_config;

/* Scores ids[0..n) (n >= 1) with engine e (every layer) and head h. Errors:
 * TERN_EINVAL (bad config, n == 0, an id out of the vocabulary), TERN_ENOMEM,
 * or the engine's. *res is written only on success. */
int tern_perplexity_tokens(tern_engine *e, tern_head *h, int n_vocab, int n_embd, const tern_ppl_config *cfg,
			   const int32_t *ids, size_t n, tern_ppl_result *res, tern_err *err);

/* Encodes text[0..len) with tok (no BOS, special-token text not parsed) and
 * scores it as above; cfg->bos < 0 takes the tokenizer's BOS. */
int tern_perplexity_text(tern_engine *e, tern_head *h, const tern_tokenizer *tok, int n_embd,
			 const tern_ppl_config *cfg, const char *text, size_t len, tern_ppl_result *res, tern_err *err);

/* log sum exp(l) over n_vocab logits, in double: the max, then the sum of
 * exp(l - max) in index order. log softmax(l)[i] = l[i] - this. */
double tern_logsumexp(const float *l, int n_vocab);

/* -log softmax(l)[target] (tern_logsumexp(l) - l[target]): one token's NLL,
 * as every scorer uses. */
double tern_perplexity_token_nll(const float *l, int n_vocab, int32_t target);

/* The k (<= n_vocab) most likely ids of l, most likely first, ties to the
 * lower id, with their log-probabilities l[id] - lse (lse from
 * tern_logsumexp). */
#define TERN_MAX_TOP_LOGPROBS 20 /* the most a request may ask for (OpenAI's limit) */
void tern_top_logprobs(const float *l, int n_vocab, double lse, int k, int32_t *ids, float *logprobs);

/* tern_perplexity_text over the contents of the file at path (TERN_EIO if
 * it cannot be read, TERN_EINVAL if it is empty). */
int tern_perplexity_file(tern_engine *e, tern_head *h, const tern_tokenizer *tok, int n_embd,
			 const tern_ppl_config *cfg, const char *path, tern_ppl_result *res, tern_err *err);

#ifdef __cplusplus
}
#endif

#endif
