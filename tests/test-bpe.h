/* test-bpe.h: the byte-level BPE tokenizer the C tests build their small
 * vocabularies into (model "gpt2", pre-tokenizer "llama-bpe", the 2B4T kind),
 * and tokenizer creation that reports its error on stderr. Header-only. */
#ifndef TERN_TEST_BPE_H
#define TERN_TEST_BPE_H

#include <stdio.h>

#include "tern-tokenizer.h"

/* Initialises *d as a gpt2/llama-bpe description over the given arrays
 * (types and merges may be NULL / 0); ids and flags stay "absent". */
static inline void tt_bpe_desc(tern_tokenizer_desc *d, uint32_t n_tokens, char *const *tokens, const int32_t *types,
			       uint32_t n_merges, const char *const *merges)
{
	tern_tokenizer_desc_init(d);
	d->model = "gpt2";
	d->pre = "llama-bpe";
	d->n_tokens = n_tokens;
	d->tokens = (const char *const *)tokens;
	d->token_types = types;
	d->n_merges = n_merges;
	d->merges = merges;
}

/* The tokenizer of *d, or NULL after printing "create: <error>" on stderr. */
static inline tern_tokenizer *tt_tokenizer_create(const tern_tokenizer_desc *d)
{
	tern_tokenizer *t = NULL;
	tern_err err;
	if (tern_tokenizer_create(d, &t, &err))
		fprintf(stderr, "create: %s\n", err.msg);
	return t;
}

#endif /* TERN_TEST_BPE_H */
