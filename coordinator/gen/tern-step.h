/* tern-step.h: the per-token generation step, one for every generation loop
 * (the scheduler, hence gRPC and batch mode, and tern-run), so a served
 * stream and tern-run show the same text for the same tokens.
 *
 * For each sampled token, in this order: an end-of-generation token ends the
 * sequence (it is neither shown nor counted); otherwise the token is counted,
 * detokenized (a UTF-8 character split across tokens is held until it is
 * complete), run through the stop-string matcher (text that may start a stop
 * string is withheld), and what may be shown is returned. At the end (EOS,
 * the length limit, or an end the caller decides) the detokenizer's held
 * bytes go through the stop-string matcher too, then the matcher's withheld
 * text is released: nothing is dropped and nothing skips the stop check. */
#ifndef TERN_STEP_H
#define TERN_STEP_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"
#include "tern-tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Why a generation ended. */
typedef enum tern_finish {
	TERN_FINISH_NONE = 0, /* not yet: keep generating */
	TERN_FINISH_EOS,      /* an end-of-generation token */
	TERN_FINISH_STOP,     /* a stop string completed (nothing of it is shown) */
	TERN_FINISH_LENGTH,   /* the length limit (or an end the caller decided) */
} tern_finish;

typedef struct tern_step_config {
	const tern_tokenizer *tok; /* NULL: ids only (no text, no end-of-generation check) */
	unsigned decode_flags;     /* TERN_DECODE_* for the detokenizer */
	const char *const *stops;  /* (n_stops) non-empty NUL-terminated stop strings */
	size_t n_stops;
	int max_tokens;            /* >= 0: the token that makes this many ends the generation */
	int ignore_eos;            /* end-of-generation tokens are ordinary tokens */
} tern_step_config;

/* What one call produced; both strings are NUL-terminated and valid until
 * the next call on the step. */
typedef struct tern_step_out {
	tern_finish finish;
	const char *text; /* (len) this token's text that may be shown now */
	size_t len;
	const char *tail; /* (tail_len) once finished other than by a stop string: what was held back */
	size_t tail_len;
} tern_step_out;

typedef struct tern_step tern_step;

/* Copies what it needs of c (the tokenizer must outlive the step).
 * Errors: TERN_EINVAL (max_tokens < 0), TERN_ENOMEM. */
int tern_step_create(const tern_step_config *c, tern_step **out, tern_err *err);
void tern_step_free(tern_step *s);

/* Takes the next sampled token. Errors: TERN_ESTATE once finished,
 * TERN_ENOMEM. A token the tokenizer does not know shows as nothing. */
int tern_step_token(tern_step *s, int32_t id, tern_step_out *out, tern_err *err);

/* Ends the generation for a reason of the caller's (context full, nothing to
 * generate): out->tail gets the held-back text, out->finish is why (or STOP
 * when that text completes a stop string). TERN_ESTATE once finished. */
int tern_step_end(tern_step *s, tern_finish why, tern_step_out *out, tern_err *err);

/* Shows a prompt token (tern-run echoing --tokens): detokenized into the
 * same stream, so a character split between the prompt and the first
 * generated token comes out whole, but neither counted nor stop-checked. */
int tern_step_prompt(tern_step *s, int32_t id, const char **text, size_t *len, tern_err *err);

/* Tokens taken and counted (end-of-generation tokens are not). */
int tern_step_n_gen(const tern_step *s);

#ifdef __cplusplus
}
#endif
#endif /* TERN_STEP_H */
