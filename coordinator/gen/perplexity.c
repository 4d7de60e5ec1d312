/* perplexity.c: the perplexity of a token sequence or a text under the
 * engine and the LM head (tern-perplexity.h has the window scheme). Owns
 * only the windowing and the log-softmax; the forward pass is the engine's
 * and the logits the head's, so the figure checks exactly what serving
 * computes. */
#include "tern-perplexity.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

double tern_logsumexp(const float *l, int n_vocab)
{
	float mx = l[0];
	for (int i = 1; i < n_vocab; i++)
		if (l[i] > mx)
			mx = l[i];
	double s = 0.0;
	for (int i = 0; i < n_vocab; i++)
		s += exp((double)l[i] - (double)mx);
	return log(s) + (double)mx;
}

double tern_perplexity_token_nll(const float *l, int n_vocab, int32_t target)
{
	return tern_logsumexp(l, n_vocab) - (double)l[target];
}

void tern_top_logprobs(const float *l, int n_vocab, double lse, int k, int32_t *ids, float *logprobs)
{
	if (k <= 0)
		return;
	/* Insertion into the k best so far: k is small (OpenAI allows 20), and
	 * most logits fail the first comparison. Strictly greater moves up, so
	 * of equal logits the lower id (seen first) stays ahead. */
	int n = 0;
	for (int i = 0; i < n_vocab; i++) {
		if (n == k && !(l[i] > l[ids[k - 1]]))
			continue;
		int j = n < k ? n++ : k - 1;
		while (j > 0 && l[i] > l[ids[j - 1]]) {
			ids[j] = ids[j - 1];
			j--;
		}
		ids[j] = i;
	}
	for (int j = 0; j < n; j++)
		logprobs[j] = (float)((double)l[ids[j]] - lse);
}

int tern_perplexity_tokens(tern_engine *e, tern_head *h, int n_vocab, int n_embd, const tern_ppl_config *cfg,
			   const int32_t *ids, size_t n, tern_ppl_result *res, tern_err *err)
{
	TERN_RETURN_IF(!e || !h || !cfg || !ids || !res, err, TERN_EINVAL, "perplexity: NULL argument");
	TERN_RETURN_IF(n == 0, err, TERN_EINVAL, "perplexity: no tokens to score");
	TERN_RETURN_IF(n_vocab <= 0 || n_embd <= 0, err, TERN_EINVAL, "perplexity: bad sizes (vocab %d, n_embd %d)",
		       n_vocab, n_embd);
	tern_kv_cache *kv = tern_engine_kv(e);
	TERN_RETURN_IF(cfg->n_ctx < 2 || cfg->n_ctx > kv->n_ctx, err, TERN_EINVAL,
		       "perplexity: window of %d positions (need 2..%d, the engine's context)", cfg->n_ctx, kv->n_ctx);
	TERN_RETURN_IF(cfg->bos < 0 || cfg->bos >= n_vocab, err, TERN_EINVAL,
		       "perplexity: the model has no BOS token (id %d) to start each window with", (int)cfg->bos);
	TERN_RETURN_IF(tern_kv_slot_len(kv, cfg->slot) < 0, err, TERN_EINVAL, "perplexity: KV slot %d not allocated",
		       cfg->slot);
	for (size_t i = 0; i < n; i++)
		TERN_RETURN_IF(ids[i] < 0 || ids[i] >= n_vocab, err, TERN_EINVAL,
			       "perplexity: token %zu has id %d outside the vocabulary of %d", i, (int)ids[i], n_vocab);
	const int batch = cfg->batch > 0 ? cfg->batch : 32;
	const size_t win = (size_t)cfg->n_ctx - 1;

	int rc = 0;
	float *hidden = tern_aligned_alloc((size_t)batch * n_embd * sizeof(float), TERN_ALIGN);
	float *logits = tern_aligned_alloc((size_t)batch * n_vocab * sizeof(float), TERN_ALIGN);
	int32_t *in = malloc((size_t)batch * sizeof *in);
	tern_row *rows = malloc((size_t)batch * sizeof *rows);
	if (!hidden || !logits || !in || !rows) {
		rc = TERN_ERR(err, TERN_ENOMEM, "perplexity: out of memory for %d rows", batch);
		goto done;
	}
	double sum = 0.0;
	int64_t n_windows = 0;
	for (size_t w0 = 0; w0 < n; w0 += win, n_windows++) {
		const size_t m = n - w0 < win ? n - w0 : win;
		rc = tern_kv_slot_truncate(kv, cfg->slot, 0, err);
		if (rc < 0)
			goto done;
		for (size_t r0 = 0; r0 < m; r0 += (size_t)batch) {
			const int c = m - r0 < (size_t)batch ? (int)(m - r0) : batch;
			/* Row r of the window takes BOS (r = 0) or the previous target and predicts ids[w0 + r]. */
			for (int j = 0; j < c; j++) {
				const size_t r = r0 + (size_t)j;
				in[j] = r == 0 ? cfg->bos : ids[w0 + r - 1];
				rows[j] = (tern_row){cfg->slot, (int32_t)r};
			}
			if ((rc = tern_head_embed(h, in, c, hidden, err)) < 0 ||
			    (rc = tern_engine_forward(e, rows, c, hidden, err)) < 0 ||
			    (rc = tern_head_logits(h, cfg->pool, hidden, c, logits, err)) < 0)
				goto done;
			for (int j = 0; j < c; j++) {
				const size_t k = w0 + r0 + (size_t)j;
				const double nll = tern_perplexity_token_nll(logits + (size_t)j * n_vocab, n_vocab, ids[k]);
				sum += nll;
				if (cfg->on_token)
					cfg->on_token(cfg->ctx, k, ids[k], nll);
			}
		}
	}
	res->nll = sum / (double)n;
	res->ppl = exp(res->nll);
	res->n_scored = (int64_t)n;
	res->n_windows = n_windows;
done:
	tern_aligned_free(hidden);
	tern_aligned_free(logits);
	free(in);
	free(rows);
	return rc;
}

int tern_perplexity_text(tern_engine *e, tern_head *h, const tern_tokenizer *tok, int n_embd,
			 const tern_ppl_config *cfg, const char *text, size_t len, tern_ppl_result *res, tern_err *err)
{
	TERN_RETURN_IF(!tok || !cfg || (!text && len), err, TERN_EINVAL, "perplexity: NULL argument");
	tern_tokens t = {0};
	int rc = tern_tokenizer_encode(tok, text, len, 0, &t, err);
	if (rc == 0) {
		tern_ppl_config c = *cfg;
		if (c.bos < 0)
			c.bos = tern_tokenizer_bos(tok);
		rc = tern_perplexity_tokens(e, h, tern_tokenizer_n_vocab(tok), n_embd, &c, t.ids, t.n, res, err);
	}
	tern_tokens_free(&t);
	return rc;
}

int tern_perplexity_file(tern_engine *e, tern_head *h, const tern_tokenizer *tok, int n_embd,
			 const tern_ppl_config *cfg, const char *path, tern_ppl_result *res, tern_err *err)
{
	TERN_RETURN_IF(!path, err, TERN_EINVAL, "perplexity: NULL path");
	/* A text to score: up to 1 GiB (tokens take several times that). */
	char *buf;
	size_t n;
	int rc = tern_read_file(path, (size_t)1 << 30, &buf, &n, err);
	if (rc < 0)
		return rc;
	if (n == 0)
		rc = TERN_ERR(err, TERN_EINVAL, "%s: empty file, nothing to score", path);
	else
		rc = tern_perplexity_text(e, h, tok, n_embd, cfg, buf, n, res, err);
	free(buf);
	return rc;
}
