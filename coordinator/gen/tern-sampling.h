/* tern-sampling.h: choosing the next token from logits, per sequence, with
 * llama.cpp's semantics and order (penalties -> top-k -> top-p -> min-p ->
 * temperature -> draw), and stop strings over the decoded text stream.
 *
 * Reproducibility: each sampler owns its PRNG (xoshiro256** seeded by
 * splitmix64(seed)) and its history, so a sequence's tokens depend only on its
 * own logits and seed, never on what else is in the batch. Every float
 * reduction runs in a fixed order (ascending candidate order, double
 * accumulators), so the same logits give the same token on every run. */
#ifndef TERN_SAMPLING_H
#define TERN_SAMPLING_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Seed value meaning "pick one from /dev/urandom at create" (then readable
 * with tern_sampler_seed, so the run can be repeated). */
#define TERN_SEED_RANDOM UINT64_MAX

typedef struct tern_sampling_params {
	float temperature;       /* >= 0; 0 = greedy: argmax after penalties, ties -> lowest id */
	int32_t top_k;           /* >= 0; 0 = off */
	float top_p;             /* (0, 1]; 1 = off */
	float min_p;             /* [0, 1]; 0 = off; keeps p >= min_p * p_max */
	float repeat_penalty;    /* > 0; 1 = off; logit > 0: /= penalty, else *= penalty */
	int32_t repeat_last_n;   /* >= 0 tokens of history the penalties look at; 0 = off */
	float frequency_penalty; /* logit -= count * this (0 = off) */
	float presence_penalty;  /* logit -= this when count > 0 (0 = off) */
	uint64_t seed;           /* TERN_SEED_RANDOM or any value */
} tern_sampling_params;

/* llama.cpp's defaults: temp 0.8, top-k 40, top-p 0.95, min-p 0.05,
 * repeat penalty 1.0 over 64 tokens, no frequency/presence penalty, random seed. */
void tern_sampling_params_default(tern_sampling_params *p);

/* TERN_EINVAL with a message naming the parameter and its allowed range for
 * NaN/inf, temperature < 0, top_k < 0, top_p outside (0, 1], min_p outside
 * [0, 1], repeat_penalty <= 0, repeat_last_n outside [0, 1048576]. */
int tern_sampling_params_validate(const tern_sampling_params *p, tern_err *err);

typedef struct tern_sampler tern_sampler;

/* One sampler per sequence. n_vocab >= 1. Errors: TERN_EINVAL (params), TERN_ENOMEM. */
int tern_sampler_create(const tern_sampling_params *p, int32_t n_vocab, tern_sampler **out, tern_err *err);
void tern_sampler_free(tern_sampler *s);
/* The seed in use (the drawn one when TERN_SEED_RANDOM was asked for). */
uint64_t tern_sampler_seed(const tern_sampler *s);
/* Adds a token to the penalty history (call it for the prompt's tokens;
 * tern_sampler_sample adds the tokens it picks). Ids out of range are ignored. */
void tern_sampler_accept(tern_sampler *s, int32_t token);
/* A token this sampler would have picked, picked elsewhere (a resumed
 * sequence's tokens already sent): the history takes it and the PRNG moves
 * on by the one draw tern_sampler_sample makes per token at a temperature
 * above 0 (none when greedy), so what follows is what would have followed. */
void tern_sampler_skip(tern_sampler *s, int32_t token);
/* Forgets the history and restarts the PRNG from the seed. */
void tern_sampler_reset(tern_sampler *s);

/* Picks a token from logits[0..n_vocab) (not modified; NaN counts as -inf,
 * +inf as FLT_MAX),
 * stores it in *token and accepts it. Errors: TERN_EINVAL for NULL logits. */
int tern_sampler_sample(tern_sampler *s, const float *logits, int32_t *token, tern_err *err);

/* ---- stop strings -------------------------------------------------------
 * Watches the decoded text of one sequence for any of a set of strings,
 * including one split across tokens. Text that could be the start of a stop
 * string is withheld until it is resolved, so nothing of a stop string is
 * ever shown. */
typedef struct tern_stopper tern_stopper;

/* Copies stops[0..n) (non-empty NUL-terminated strings). n may be 0. */
int tern_stopper_create(const char *const *stops, size_t n, tern_stopper **out, tern_err *err);
void tern_stopper_free(tern_stopper *s);
/* Feeds text[0..len). emit, emit_len (valid until the next call) is what
 * can be shown now. Returns 1 when a stop string completed (*emit then ends
 * just before it, and generation should end), 0 otherwise; TERN_ESTATE after
 * a stop, TERN_ENOMEM. */
int tern_stopper_feed(tern_stopper *s, const char *text, size_t len, const char **emit, size_t *emit_len,
		      tern_err *err);
/* End of generation without a stop (EOS, length): the withheld text. */
void tern_stopper_flush(tern_stopper *s, const char **emit, size_t *emit_len);
/* Index of the stop string that matched, or -1. */
int tern_stopper_matched(const tern_stopper *s);

#ifdef __cplusplus
}
#endif
#endif /* TERN_SAMPLING_H */
