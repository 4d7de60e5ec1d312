/* detok.c: decoding ids to text and the streaming detokenizer, which
 * holds an incomplete UTF-8 character back until its last byte arrives. */
#include "tokenizer-internal.h"

#include "tern-unicode.h"

/* ---- decode ------------------------------------------------------------- */

const char *tern_tokenizer_piece(const tern_tokenizer *t, int32_t id, int special, size_t *len)
{
	if (id < 0 || id >= t->n_vocab)
		return NULL;
	if (special && t->type[id] == TERN_TOKTYPE_CONTROL) {
		*len = t->text_len[id];
		return t->text + t->text_off[id];
	}
	*len = t->piece_len[id];
	return t->piece + t->piece_off[id];
}

/* Appends b[0..n) to *o, replacing bytes that are not valid UTF-8 by U+FFFD. */
static int put_replacing(sbuf *o, const char *b, size_t n)
{
	const unsigned char *u = (const unsigned char *)b;
	for (size_t i = 0; i < n;) {
		uint32_t cp;
		const int l = tern_utf8_decode(u + i, n - i, &cp);
		if (l > 0) {
			if (sbuf_put(o, b + i, (size_t)l))
				return -1;
			i += (size_t)l;
		} else {
			if (sbuf_put(o, "\xef\xbf\xbd", 3))
				return -1;
			i++;
		}
	}
	return 0;
}

int tern_tokenizer_decode(const tern_tokenizer *t, const int32_t *ids, size_t n, unsigned flags, char **out,
			  size_t *len, tern_err *err)
{
	*out = NULL;
	*len = 0;
	sbuf b = {0};
	if (sbuf_put(&b, "", 0))
		return TERN_ERR(err, TERN_ENOMEM, "tokenizer: no memory");
	for (size_t i = 0; i < n; i++) {
		size_t pl;
		const char *p = tern_tokenizer_piece(t, ids[i], (flags & TERN_DECODE_SPECIAL) != 0, &pl);
		if (!p) {
			free(b.p);
			return TERN_ERR(err, TERN_EINVAL, "tokenizer: token id %d at %zu out of range [0, %d)", ids[i],
					i, t->n_vocab);
		}
		if (sbuf_put(&b, p, pl)) {
			free(b.p);
			return TERN_ERR(err, TERN_ENOMEM, "tokenizer: no memory");
		}
	}
	size_t skip = 0;
	if ((flags & TERN_DECODE_STRIP_SPACE) && t->add_space_prefix && b.n && b.p[0] == ' ')
		skip = 1;
	if (flags & TERN_DECODE_REPLACE_INVALID) {
		sbuf r = {0};
		if (sbuf_put(&r, "", 0) || put_replacing(&r, b.p + skip, b.n - skip)) {
			free(b.p);
			free(r.p);
			return TERN_ERR(err, TERN_ENOMEM, "tokenizer: no memory");
		}
		free(b.p);
		*out = r.p;
		*len = r.n;
		return 0;
	}
	if (skip)
		memmove(b.p, b.p + 1, b.n--);
	*out = b.p;
	*len = b.n;
	return 0;
}

struct tern_detok {
	const tern_tokenizer *t;
	unsigned flags;
	unsigned char held[4]; /* an incomplete UTF-8 character, at most 3 bytes */
	size_t n_held;
	sbuf in, out;
};

int tern_detok_create(const tern_tokenizer *t, unsigned flags, tern_detok **out, tern_err *err)
{
	*out = calloc(1, sizeof **out);
	TERN_RETURN_IF(!*out, err, TERN_ENOMEM, "tokenizer: no memory");
	(*out)->t = t;
	(*out)->flags = flags;
	return 0;
}

void tern_detok_free(tern_detok *d)
{
	if (!d)
		return;
	free(d->in.p);
	free(d->out.p);
	free(d);
}

/* Moves what is certain from d->in to d->out; keeps a valid incomplete tail. */
static int detok_drain(tern_detok *d, int final)
{
	const unsigned char *u = (const unsigned char *)d->in.p;
	const size_t n = d->in.n;
	size_t i = 0;
	while (i < n) {
		uint32_t cp;
		const int l = tern_utf8_decode(u + i, n - i, &cp);
		if (l > 0) {
			if (sbuf_put(&d->out, d->in.p + i, (size_t)l))
				return -1;
			i += (size_t)l;
		} else if (l == 0 && !final) {
			break;
		} else {
			const int rep = (d->flags & TERN_DECODE_REPLACE_INVALID) != 0;
			if (rep ? sbuf_put(&d->out, "\xef\xbf\xbd", 3) : sbuf_put(&d->out, d->in.p + i, 1))
				return -1;
			i++;
		}
	}
	d->n_held = n - i;
	memcpy(d->held, d->in.p + i, d->n_held);
	return 0;
}

int tern_detok_push(tern_detok *d, int32_t id, const char **text, size_t *len, tern_err *err)
{
	*text = "";
	*len = 0;
	size_t pl;
	const char *p = tern_tokenizer_piece(d->t, id, (d->flags & TERN_DECODE_SPECIAL) != 0, &pl);
	TERN_RETURN_IF(!p, err, TERN_EINVAL, "tokenizer: token id %d out of range [0, %d)", id, d->t->n_vocab);
	d->in.n = 0;
	d->out.n = 0;
	if (sbuf_put(&d->in, d->held, d->n_held) || sbuf_put(&d->in, p, pl) || sbuf_put(&d->out, "", 0) ||
	    detok_drain(d, 0))
		return TERN_ERR(err, TERN_ENOMEM, "tokenizer: no memory");
	*text = d->out.p;
	*len = d->out.n;
	return 0;
}

int tern_detok_flush(tern_detok *d, const char **text, size_t *len, tern_err *err)
{
	*text = "";
	*len = 0;
	d->in.n = 0;
	d->out.n = 0;
	if (sbuf_put(&d->in, d->held, d->n_held) || sbuf_put(&d->out, "", 0) || detok_drain(d, 1))
		return TERN_ERR(err, TERN_ENOMEM, "tokenizer: no memory");
	d->n_held = 0;
	*text = d->out.p;
	*len = d->out.n;
	return 0;
}
