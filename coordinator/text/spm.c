/* spm.c: SentencePiece-style tokenization ("llama"; MODEL-FORMATS 3.3):
 * merges by score with a heap, byte fallback for what no piece covers. */
#include "tokenizer-internal.h"

/* ---- SPM ---------------------------------------------------------------- */

typedef struct ssym {
	int32_t prev, next;
	size_t off, n; /* bytes of the escaped text; n == 0 once merged away */
} ssym;

typedef struct scand {
	float score;
	int32_t left, right;
	size_t size;
} scand;

/* Higher score first; equal scores: leftmost first (llama.cpp). */
static int scand_before(const scand *a, const scand *b)
{
	return a->score > b->score || (a->score == b->score && a->left < b->left);
}

TEXT_HEAP(sheap, scand, scand_before)

static int spm_try(const tern_tokenizer *t, const char *txt, ssym *sym, sheap *h, int32_t l, int32_t r)
{
	if (l < 0 || r < 0)
		return 0;
	const size_t size = sym[l].n + sym[r].n;
	const int32_t id = tern_tokenizer_find(t, txt + sym[l].off, size);
	if (id < 0)
		return 0;
	const scand c = {t->score[id], l, r, size};
	return sheap_push(h, &c);
}

int spm_raw(const tern_tokenizer *t, const char *raw, size_t len, int space_prefix, tern_tokens *out)
{
	sbuf esc = {0};
	ssym *sym = NULL;
	sheap h = {0};
	int rc = -1;
	if (space_prefix && sbuf_put(&esc, "\xe2\x96\x81", 3))
		goto done;
	for (size_t i = 0; i < len; i++) {
		if (raw[i] == ' ' ? sbuf_put(&esc, "\xe2\x96\x81", 3) : sbuf_put(&esc, raw + i, 1))
			goto done;
	}
	if (esc.n == 0) {
		rc = 0;
		goto done;
	}
	/* One symbol per UTF-8 character. llama.cpp takes the length from the
	 * lead byte alone, which lets a stray byte swallow the next characters
	 * (and an escaped space, which then decodes as U+2581); here an invalid
	 * byte is a symbol of its own, so bad input round-trips through byte
	 * fallback. Valid UTF-8 is cut identically. */
	sym = malloc(esc.n * sizeof *sym);
	if (!sym)
		goto done;
	int32_t ns = 0;
	for (size_t off = 0; off < esc.n; ns++) {
		uint32_t cp;
		const int l = tern_utf8_decode((const unsigned char *)esc.p + off, esc.n - off, &cp);
		const size_t n = l > 0 ? (size_t)l : 1;
		sym[ns].off = off;
		sym[ns].n = n;
		sym[ns].prev = ns - 1;
		sym[ns].next = -1;
		if (ns > 0)
			sym[ns - 1].next = ns;
		off += n;
	}
	for (int32_t i = 1; i < ns; i++)
		if (spm_try(t, esc.p, sym, &h, i - 1, i))
			goto done;
	while (h.n) {
		const scand c = sheap_pop(&h);
		ssym *L = &sym[c.left], *R = &sym[c.right];
		if (L->n == 0 || R->n == 0 || L->n + R->n != c.size)
			continue;
		L->n += R->n;
		R->n = 0;
		L->next = R->next;
		if (R->next >= 0)
			sym[R->next].prev = c.left;
		if (spm_try(t, esc.p, sym, &h, L->prev, c.left) || spm_try(t, esc.p, sym, &h, c.left, L->next))
			goto done;
	}
	for (int32_t i = 0; i >= 0; i = sym[i].next) {
		const int32_t id = tern_tokenizer_find(t, esc.p + sym[i].off, sym[i].n);
		if (id >= 0) {
			if (tokens_push(out, id))
				goto done;
			continue;
		}
		for (size_t k = 0; k < sym[i].n; k++)
			if (tokens_emit(t, out, t->byte_tok[(unsigned char)esc.p[sym[i].off + k]]))
				goto done;
	}
	rc = 0;
done:
	free(esc.p);
	free(sym);
	free(h.p);
	return rc;
}
