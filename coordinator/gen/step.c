/* step.c: the per-token generation step (see tern-step.h): detokenizer,
 * stop-string matcher, end-of-generation and length checks, and the flush
 * at the end, in one order for every caller. */
#include "tern-step.h"

#include <stdlib.h>
#include <string.h>

#include "tern-sampling.h"

struct tern_step {
	const tern_tokenizer *tok;
	tern_detok *detok; /* NULL without a tokenizer */
	tern_stopper *stopper;
	int max_tokens;
	int ignore_eos;
	int n_gen;
	tern_finish finish;
	char *buf; /* (cap) the last call's text, NUL, its tail, NUL */
	size_t cap;
};

int tern_step_create(const tern_step_config *c, tern_step **out, tern_err *err)
{
	*out = NULL;
	TERN_RETURN_IF(c->max_tokens < 0, err, TERN_EINVAL, "max_tokens %d is negative", c->max_tokens);
	tern_step *s = calloc(1, sizeof *s);
	TERN_RETURN_IF(!s, err, TERN_ENOMEM, "out of memory");
	s->tok = c->tok;
	s->max_tokens = c->max_tokens;
	s->ignore_eos = c->ignore_eos;
	int rc = c->tok ? tern_detok_create(c->tok, c->decode_flags, &s->detok, err) : 0;
	if (rc < 0)
		goto fail;
	rc = tern_stopper_create(c->stops, c->n_stops, &s->stopper, err);
	if (rc < 0)
		goto fail;
	*out = s;
	return 0;
fail:
	tern_step_free(s);
	return rc;
}

void tern_step_free(tern_step *s)
{
	if (!s)
		return;
	tern_detok_free(s->detok);
	tern_stopper_free(s->stopper);
	free(s->buf);
	free(s);
}

int tern_step_n_gen(const tern_step *s)
{
	return s->n_gen;
}

/* Appends p[0..n) to s->buf at *used. */
static int put(tern_step *s, size_t *used, const char *p, size_t n, tern_err *err)
{
	if (*used + n + 1 > s->cap) {
		const size_t cap = (*used + n + 1) * 2;
		char *nb = realloc(s->buf, cap);
		TERN_RETURN_IF(!nb, err, TERN_ENOMEM, "out of memory");
		s->buf = nb;
		s->cap = cap;
	}
	if (n)
		memcpy(s->buf + *used, p, n);
	*used += n;
	s->buf[*used] = '\0';
	return 0;
}

/* The token's bytes, or "" for an id the tokenizer does not know. */
static int detok_push(tern_step *s, int32_t id, const char **piece, size_t *len, tern_err *err)
{
	*piece = "";
	*len = 0;
	if (!s->detok)
		return 0;
	tern_err e;
	tern_err_clear(&e);
	const int rc = tern_detok_push(s->detok, id, piece, len, &e);
	if (rc == TERN_EINVAL) {
		*piece = "";
		*len = 0;
		return 0;
	}
	TERN_RETURN_IF(rc < 0, err, rc, "%s", e.msg);
	return 0;
}

/* Finishes with `why`: the detokenizer's held bytes through the matcher,
 * then the matcher's withheld text, appended to s->buf from *used. */
static int flush(tern_step *s, tern_finish why, size_t *used, tern_err *err)
{
	s->finish = why;
	const char *held = "", *emit;
	size_t held_len = 0, emit_len;
	if (s->detok)
		TERN_FORWARD_IF_ERROR(tern_detok_flush(s->detok, &held, &held_len, err));
	const int rc = tern_stopper_feed(s->stopper, held, held_len, &emit, &emit_len, err);
	TERN_FORWARD_IF_ERROR(rc);
	TERN_FORWARD_IF_ERROR(put(s, used, emit, emit_len, err));
	if (rc == 1) {
		s->finish = TERN_FINISH_STOP;
		return 0;
	}
	tern_stopper_flush(s->stopper, &emit, &emit_len);
	return put(s, used, emit, emit_len, err);
}

/* Ends the text at *used with its NUL; the tail starts after it. */
static int end_text(tern_step *s, size_t *used, tern_err *err)
{
	return put(s, used, "", 1, err); /* the NUL, and put's own after it */
}

static void set_out(const tern_step *s, size_t text_len, size_t used, tern_step_out *out)
{
	out->finish = s->finish;
	out->text = s->buf;
	out->len = text_len;
	out->tail = s->buf + text_len + 1;
	out->tail_len = used - text_len - 1;
}

int tern_step_token(tern_step *s, int32_t id, tern_step_out *out, tern_err *err)
{
	memset(out, 0, sizeof *out);
	out->text = out->tail = "";
	TERN_RETURN_IF(s->finish != TERN_FINISH_NONE, err, TERN_ESTATE, "the generation has ended");
	size_t used = 0;
	if (s->tok && !s->ignore_eos && tern_tokenizer_is_eog(s->tok, id)) {
		TERN_FORWARD_IF_ERROR(end_text(s, &used, err));
		TERN_FORWARD_IF_ERROR(flush(s, TERN_FINISH_EOS, &used, err));
		set_out(s, 0, used, out);
		return 0;
	}
	s->n_gen++;
	const char *piece, *emit;
	size_t piece_len, emit_len;
	TERN_FORWARD_IF_ERROR(detok_push(s, id, &piece, &piece_len, err));
	const int rc = tern_stopper_feed(s->stopper, piece, piece_len, &emit, &emit_len, err);
	TERN_FORWARD_IF_ERROR(rc);
	TERN_FORWARD_IF_ERROR(put(s, &used, emit, emit_len, err));
	const size_t text_len = used;
	TERN_FORWARD_IF_ERROR(end_text(s, &used, err));
	if (rc == 1)
		s->finish = TERN_FINISH_STOP;
	else if (s->n_gen >= s->max_tokens)
		TERN_FORWARD_IF_ERROR(flush(s, TERN_FINISH_LENGTH, &used, err));
	set_out(s, text_len, used, out);
	return 0;
}

int tern_step_end(tern_step *s, tern_finish why, tern_step_out *out, tern_err *err)
{
	memset(out, 0, sizeof *out);
	out->text = out->tail = "";
	TERN_RETURN_IF(s->finish != TERN_FINISH_NONE, err, TERN_ESTATE, "the generation has ended");
	TERN_RETURN_IF(why == TERN_FINISH_NONE, err, TERN_EINVAL, "an end needs a reason");
	size_t used = 0;
	TERN_FORWARD_IF_ERROR(end_text(s, &used, err));
	TERN_FORWARD_IF_ERROR(flush(s, why, &used, err));
	set_out(s, 0, used, out);
	return 0;
}

int tern_step_prompt(tern_step *s, int32_t id, const char **text, size_t *len, tern_err *err)
{
	return detok_push(s, id, text, len, err);
}
