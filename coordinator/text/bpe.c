/* bpe.c: LLaMA-3 byte-level BPE ("gpt2"; MODEL-FORMATS 3.1): the
 * pre-tokenizer splits, each piece maps its bytes, then merges by rank on
 * integer ids with a heap of candidate pairs. */
#include "tokenizer-internal.h"

#include "tern-unicode.h"

/* ---- BPE ---------------------------------------------------------------- */

static int bpe_try_pair(const tern_tokenizer *t, scratch *s, int32_t l, int32_t r)
{
	if (l < 0 || r < 0)
		return 0;
	bcand c;
	if (!merge_find(t, s->sym[l].id, s->sym[r].id, &c.rank, &c.res))
		return 0;
	c.left = l;
	c.right = r;
	c.gl = s->sym[l].gen;
	c.gr = s->sym[r].gen;
	return bheap_push(&s->heap, &c);
}

/* BPE over the bytes of one pre-token (each byte starts as the token of its
 * mapped character) and appends the result. */
static int bpe_word(const tern_tokenizer *t, scratch *s, const unsigned char *w, size_t n, tern_tokens *out)
{
	if (n > s->sym_cap) {
		bsym *q = realloc(s->sym, n * sizeof *q);
		if (!q)
			return -1;
		s->sym = q;
		s->sym_cap = n;
	}
	for (size_t i = 0; i < n; i++) {
		s->sym[i].id = t->byte_tok[w[i]];
		s->sym[i].prev = (int32_t)i - 1;
		s->sym[i].next = (i + 1 < n) ? (int32_t)i + 1 : -1;
		s->sym[i].gen = 0;
		s->sym[i].alive = 1;
	}
	s->heap.n = 0;
	for (size_t i = 0; i + 1 < n; i++)
		if (bpe_try_pair(t, s, (int32_t)i, (int32_t)i + 1))
			return -1;
	while (s->heap.n) {
		const bcand c = bheap_pop(&s->heap);
		bsym *L = &s->sym[c.left], *R = &s->sym[c.right];
		if (!L->alive || !R->alive || L->next != c.right || L->gen != c.gl || R->gen != c.gr)
			continue;
		L->id = c.res;
		L->gen++;
		L->next = R->next;
		if (R->next >= 0)
			s->sym[R->next].prev = c.left;
		R->alive = 0;
		R->gen++;
		if (bpe_try_pair(t, s, L->prev, c.left) || bpe_try_pair(t, s, c.left, L->next))
			return -1;
	}
	for (int32_t i = 0; i >= 0; i = s->sym[i].next)
		if (tokens_emit(t, out, s->sym[i].id))
			return -1;
	return 0;
}

int bpe_raw(const tern_tokenizer *t, scratch *s, const char *text, size_t len, tern_tokens *out)
{
	tern_span *spans = NULL;
	size_t ns = 0, cap = 0;
	if ((t->pre_qwen2 ? tern_unicode_split_qwen2 : tern_unicode_split_llama3)(text, len, &spans, &ns, &cap))
		return -1;
	int rc = 0;
	for (size_t k = 0; k < ns && !rc; k++) {
		const unsigned char *w = (const unsigned char *)text + spans[k].off;
		const size_t n = spans[k].len;
		if (t->ignore_merges) {
			s->mapped.n = 0;
			for (size_t i = 0; i < n && !rc; i++)
				rc = sbuf_put(&s->mapped, t->bmap[w[i]], t->bmap_len[w[i]]);
			if (rc)
				break;
			const int32_t id = tern_tokenizer_find(t, s->mapped.p, s->mapped.n);
			if (id >= 0) {
				rc = tokens_push(out, id);
				continue;
			}
		}
		rc = bpe_word(t, s, w, n, out);
	}
	free(spans);
	return rc;
}
