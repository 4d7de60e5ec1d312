/* tokenizer-internal.h: what the tokenizer's files share (tokenizer.c:
 * create, lookups, the special-token partition, encode; bpe.c and spm.c:
 * the two algorithms; detok.c: decoding and the streaming detokenizer).
 * Not installed: text/ only. */
#ifndef TERN_TOKENIZER_INTERNAL_H
#define TERN_TOKENIZER_INTERNAL_H

#include "tern-tokenizer.h"
#include "tern-model.h"
#include "tern-unicode.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TAG "tokenizer"

struct tern_tokenizer {
	tern_tokenizer_kind kind;
	int ignore_merges; /* LLaMA-3: a pre-token that is a whole token skips BPE */
	int pre_qwen2;     /* Qwen2's pre-tokenizer (digits one at a time) instead of LLaMA-3's */
	int add_bos;
	int add_space_prefix; /* SPM */
	int32_t n_vocab;
	int32_t bos, eos, eot, unk;

	char *text;         /* all token texts, each NUL-terminated */
	size_t *text_off;   /* (n_vocab) */
	uint32_t *text_len; /* (n_vocab) */
	int32_t *type;      /* (n_vocab) TERN_TOKTYPE_* */
	float *score;       /* (n_vocab), SPM only */

	char *piece;         /* decoded bytes of every token */
	size_t *piece_off;   /* (n_vocab) */
	uint32_t *piece_len; /* (n_vocab) */

	int32_t *vhash; /* (vmask + 1) token ids, -1 = empty */
	size_t vmask;

	uint64_t *mkey;  /* (mmask + 1) (left id << 32 | right id), UINT64_MAX = empty */
	uint32_t *mrank; /* (mmask + 1) */
	int32_t *mres;   /* (mmask + 1) id of the merged token */
	size_t mmask;

	int32_t byte_tok[256]; /* BPE: token of the byte's mapped character; SPM: <0xNN>; -1 = none */
	char bmap[256][2];     /* BPE: UTF-8 of each byte's mapped character (1 or 2 bytes) */
	unsigned char bmap_len[256];

	int32_t *special; /* (n_special) CONTROL/USER_DEFINED/UNKNOWN ids, longest text first */
	size_t n_special;
};

typedef struct sbuf {
	char *p;
	size_t n, cap;
} sbuf;

/* Makes room for `need` elements of `size` bytes in the array *pp points to
 * (capacity *cap, doubled from `first`): 0, or -1 when out of memory, with
 * the array and *cap unchanged. pp is the address of any object pointer. */
static inline int vec_reserve(void *pp, size_t *cap, size_t need, size_t size, size_t first)
{
	if (need <= *cap)
		return 0;
	size_t nc = *cap ? *cap : first;
	while (nc < need)
		nc *= 2;
	void *p;
	memcpy(&p, pp, sizeof p);
	void *q = realloc(p, nc * size);
	if (!q)
		return -1;
	memcpy(pp, &q, sizeof q);
	*cap = nc;
	return 0;
}

/* TEXT_HEAP(name, T, before): a binary heap `name` of T ({p, n, cap}, zero
 * to start, p freed by its owner) with name##_push (0 or -1 when out of
 * memory) and name##_pop (n > 0); before(a, b) says a comes out first. */
#define TEXT_HEAP(name, T, before)                                                                                     \
	typedef struct name {                                                                                          \
		T *p;                                                                                                  \
		size_t n, cap;                                                                                         \
	} name;                                                                                                        \
	static inline int name##_push(name *h, const T *c)                                                             \
	{                                                                                                              \
		if (vec_reserve(&h->p, &h->cap, h->n + 1, sizeof *h->p, 64))                                           \
			return -1;                                                                                     \
		size_t i = h->n++;                                                                                     \
		while (i > 0) {                                                                                        \
			const size_t par = (i - 1) / 2;                                                                \
			if (!before(c, &h->p[par]))                                                                    \
				break;                                                                                 \
			h->p[i] = h->p[par];                                                                           \
			i = par;                                                                                       \
		}                                                                                                      \
		h->p[i] = *c;                                                                                          \
		return 0;                                                                                              \
	}                                                                                                              \
	static inline T name##_pop(name *h)                                                                            \
	{                                                                                                              \
		const T top = h->p[0];                                                                                 \
		const T last = h->p[--h->n];                                                                           \
		size_t i = 0;                                                                                          \
		for (;;) {                                                                                             \
			size_t c = 2 * i + 1;                                                                          \
			if (c >= h->n)                                                                                 \
				break;                                                                                 \
			if (c + 1 < h->n && before(&h->p[c + 1], &h->p[c]))                                            \
				c++;                                                                                   \
			if (!before(&h->p[c], &last))                                                                  \
				break;                                                                                 \
			h->p[i] = h->p[c];                                                                             \
			i = c;                                                                                         \
		}                                                                                                      \
		if (h->n)                                                                                              \
			h->p[i] = last;                                                                                \
		return top;                                                                                            \
	}

/* tokenizer.c */
int sbuf_put(sbuf *b, const void *s, size_t n);
int tokens_push(tern_tokens *v, int32_t id);
/* Appends id, or the unknown token for -1 (dropped when there is none). */
int tokens_emit(const tern_tokenizer *t, tern_tokens *out, int32_t id);
int merge_find(const tern_tokenizer *t, int32_t left, int32_t right, uint32_t *rank, int32_t *res);
/* bpe.c: byte-level BPE of text (no special tokens in it), appended to
 * out; s is working memory reused across calls (zeroed first, its three
 * buffers freed by the caller). */
typedef struct bsym {
	int32_t id; /* token id, -1 when the byte has no token */
	int32_t prev, next;
	uint32_t gen; /* bumped on every change, to spot stale heap entries */
	int alive;
} bsym;

typedef struct bcand {
	uint32_t rank;
	int32_t left, right; /* symbol indices; left also orders equal ranks */
	uint32_t gl, gr;     /* generations when pushed */
	int32_t res;
} bcand;

/* Lower rank first; equal ranks: leftmost first. */
static inline int bcand_less(const bcand *a, const bcand *b)
{
	return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}
TEXT_HEAP(bheap, bcand, bcand_less)

typedef struct scratch {
	bsym *sym;
	size_t sym_cap;
	bheap heap;
	sbuf mapped;
} scratch;
int bpe_raw(const tern_tokenizer *t, scratch *s, const char *text, size_t len, tern_tokens *out);
/* spm.c: SentencePiece of raw text (space_prefix: add the leading '\xe2\x96\x81'). */
int spm_raw(const tern_tokenizer *t, const char *raw, size_t len, int space_prefix, tern_tokens *out);

#endif /* TERN_TOKENIZER_INTERNAL_H */
