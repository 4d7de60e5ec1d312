/* tern-tokenizer.h: text <-> token ids for the two vocabulary kinds BitNet
 * b1.58 GGUF files carry (MODEL-FORMATS 2.5, 3):
 *   - "gpt2": LLaMA-3 byte-level BPE (pre-tokenizer regex, merges by rank,
 *     ignore_merges, special tokens), the 2B4T tokenizer;
 *   - "llama": SentencePiece-style (scores, '\xe2\x96\x81' for spaces, byte fallback
 *     <0xNN>), as in llama.cpp's SPM tokenizer, for older BitNet models.
 * The tokenizer is built from plain arrays (what the GGUF reader hands over);
 * it copies everything it keeps, so the arrays may be freed after create.
 * Also here: streaming detokenization that emits only complete UTF-8
 * characters, and the 2B4T chat template (MODEL-FORMATS 1.6).
 * A tokenizer is immutable after create and may be shared by threads. */
#ifndef TERN_TOKENIZER_H
#define TERN_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* tokenizer.ggml.token_type values (llama.cpp's llama_token_type). */
enum {
	TERN_TOKTYPE_UNDEFINED = 0,
	TERN_TOKTYPE_NORMAL = 1,
	TERN_TOKTYPE_UNKNOWN = 2,
	TERN_TOKTYPE_CONTROL = 3,
	TERN_TOKTYPE_USER_DEFINED = 4,
	TERN_TOKTYPE_UNUSED = 5,
	TERN_TOKTYPE_BYTE = 6,
};

typedef enum { TERN_TOKENIZER_BPE = 0, TERN_TOKENIZER_SPM = 1 } tern_tokenizer_kind;

/* Everything a tokenizer is built from. Strings need not be NUL-terminated
 * when the matching *_len array is given; with a NULL *_len array they are
 * NUL-terminated C strings. Optional fields may be NULL / -1. */
typedef struct tern_tokenizer_desc {
	const char *model;              /* tokenizer.ggml.model: "gpt2" or "llama" (required) */
	const char *pre;                /* tokenizer.ggml.pre, e.g. "llama-bpe"; NULL = absent */
	uint32_t n_tokens;              /* vocabulary size, >= 1 */
	const char *const *tokens;      /* (n_tokens) token text, byte-level form for gpt2 */
	const size_t *token_lens;       /* (n_tokens) or NULL */
	const int32_t *token_types;     /* (n_tokens) TERN_TOKTYPE_*, or NULL = all NORMAL */
	const float *scores;            /* (n_tokens); required for "llama", ignored for "gpt2" */
	uint32_t n_merges;              /* gpt2 only */
	const char *const *merges;      /* (n_merges) "A B", lower index merged first */
	const size_t *merge_lens;       /* (n_merges) or NULL */
	int32_t bos_id, eos_id, eot_id; /* -1 = none; eot_id -1 also searches "<|eot_id|>" */
	int32_t unk_id;                 /* -1 = none (SPM: also searched as "<unk>") */
	int add_bos;                    /* tokenizer.ggml.add_bos_token: 1, 0, or -1 = model default */
	int add_space_prefix;           /* SPM tokenizer.ggml.add_space_prefix: 1, 0, -1 = default (1) */
} tern_tokenizer_desc;

/* Sets the optional fields of *d to "absent" (ids -1, add_* -1, NULLs, 0). */
void tern_tokenizer_desc_init(tern_tokenizer_desc *d);

typedef struct tern_tokenizer tern_tokenizer;

/* Builds a tokenizer. Errors (TERN_EINVAL / TERN_EUNSUP / TERN_ENOMEM) name
 * the problem: unknown model or pre-tokenizer, ids out of range, a merge
 * without a space, missing scores for "llama". Merges whose parts or result
 * are not in the vocabulary are dropped with a warning, as a tokenizer
 * built from them could never produce those tokens. */
int tern_tokenizer_create(const tern_tokenizer_desc *d, tern_tokenizer **out, tern_err *err);
void tern_tokenizer_free(tern_tokenizer *t);

tern_tokenizer_kind tern_tokenizer_kind_of(const tern_tokenizer *t);
int32_t tern_tokenizer_n_vocab(const tern_tokenizer *t);
int32_t tern_tokenizer_bos(const tern_tokenizer *t); /* -1 if none */
int32_t tern_tokenizer_eos(const tern_tokenizer *t);
int32_t tern_tokenizer_eot(const tern_tokenizer *t);
/* 1 for tokens that end generation (EOS, EOT), else 0. */
int tern_tokenizer_is_eog(const tern_tokenizer *t, int32_t id);
/* Id of the token whose text is exactly s[0..n), or -1. */
int32_t tern_tokenizer_find(const tern_tokenizer *t, const char *s, size_t n);
/* The token's text as stored in the vocabulary (not decoded); NULL for a bad id. */
const char *tern_tokenizer_token_text(const tern_tokenizer *t, int32_t id, size_t *len);

/* A growable id array; zero-initialise, release with tern_tokens_free. */
typedef struct tern_tokens {
	int32_t *ids; /* (n) */
	size_t n, cap;
} tern_tokens;
void tern_tokens_free(tern_tokens *v);

/* Encode flags. */
enum {
	TERN_ENCODE_ADD_SPECIAL = 1u << 0,   /* prepend BOS when the model's add_bos says so */
	TERN_ENCODE_PARSE_SPECIAL = 1u << 1, /* text of CONTROL tokens (e.g. "<|eot_id|>") becomes the token */
};

/* Appends the tokens of text[0..len) to *out. USER_DEFINED tokens are always
 * matched as units, CONTROL tokens only with PARSE_SPECIAL (llama.cpp). Any
 * bytes are accepted: invalid UTF-8 is byte-encoded (BPE: each bad byte is
 * one "other" character mapped through the byte map; SPM: byte fallback), so
 * decode gives the input back. Errors: TERN_ENOMEM. */
int tern_tokenizer_encode(const tern_tokenizer *t, const char *text, size_t len, unsigned flags, tern_tokens *out,
			  tern_err *err);

/* Decode flags. */
enum {
	TERN_DECODE_SPECIAL = 1u << 0,         /* render CONTROL tokens as their text (default: nothing) */
	TERN_DECODE_STRIP_SPACE = 1u << 1,     /* SPM with add_space_prefix: drop the space encode added */
	TERN_DECODE_REPLACE_INVALID = 1u << 2, /* invalid UTF-8 -> U+FFFD (default: bytes as they are) */
};

/* The bytes token `id` decodes to (byte map undone, '\xe2\x96\x81' -> ' ', <0xNN> -> byte).
 * Points into the tokenizer; NULL for an id out of range. With `special`
 * CONTROL tokens give their text, otherwise "". */
const char *tern_tokenizer_piece(const tern_tokenizer *t, int32_t id, int special, size_t *len);

/* Decodes ids[0..n) into a malloc'd, NUL-terminated string (*out, length *len;
 * free with free()). Errors: TERN_EINVAL for an id out of range, TERN_ENOMEM. */
int tern_tokenizer_decode(const tern_tokenizer *t, const int32_t *ids, size_t n, unsigned flags, char **out,
			  size_t *len, tern_err *err);

/* Streaming decode for generation: push tokens one at a time and get back
 * only complete UTF-8 characters; a character split across tokens is held
 * until its last byte arrives. Bytes that can never become valid UTF-8 are
 * passed on (or replaced, with TERN_DECODE_REPLACE_INVALID) as soon as that
 * is certain. One stream per sequence. */
typedef struct tern_detok tern_detok;
int tern_detok_create(const tern_tokenizer *t, unsigned flags, tern_detok **out, tern_err *err);
void tern_detok_free(tern_detok *d);
/* text, len: what may be shown now (valid until the next call on d). */
int tern_detok_push(tern_detok *d, int32_t id, const char **text, size_t *len, tern_err *err);
/* End of stream: whatever is still held (an incomplete character). */
int tern_detok_flush(tern_detok *d, const char **text, size_t *len, tern_err *err);

/* ---- chat template (MODEL-FORMATS 1.6) ---------------------------------- */
typedef struct tern_chat_msg {
	const char *role;    /* "system", "user" or "assistant" */
	const char *content; /* NUL-terminated */
} tern_chat_msg;

typedef enum {
	/* llama.cpp/bitnet.cpp built-in "bitnet": "System: " + c; "User: " + c +
	 * "<|eot_id|>Assistant: "; assistant: c. The generation prompt is part of
	 * the user turn, so add_generation_prompt has no effect. */
	TERN_CHAT_BITNET = 0,
	/* Hugging Face form: "<Role>: " + c + "<|eot_id|>" per message, then
	 * "Assistant: " when add_generation_prompt. */
	TERN_CHAT_BITNET_HF = 1,
} tern_chat_style;

/* Renders msgs[0..n) into a malloc'd NUL-terminated string (*out, free with
 * free()). BOS is not included: encode adds it (TERN_ENCODE_ADD_SPECIAL).
 * Encode the result with TERN_ENCODE_PARSE_SPECIAL so "<|eot_id|>" becomes
 * its token. Errors: TERN_EINVAL for an unknown role or NULL content. */
int tern_chat_render(tern_chat_style style, const tern_chat_msg *msgs, size_t n, int add_generation_prompt, char **out,
		     size_t *len, tern_err *err);

#ifdef __cplusplus
}
#endif
#endif /* TERN_TOKENIZER_H */
