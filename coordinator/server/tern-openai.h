/* tern-openai.h: the OpenAI API's JSON, mapped to and from tern.v1 messages.
 * No network here: tern-server's HTTP layer calls it, and the fuzz target
 * tests/fuzz/fuzz_openai.c feeds it arbitrary bytes.
 *
 * Requests are read leniently, as real clients need: unknown fields are
 * ignored, `content` is a string or an array of text parts, `stop` a string or
 * an array, `max_tokens` or `max_completion_tokens`. What tern cannot do yet
 * (n != 1, tools, response_format other than text, echo, suffix, logit_bias)
 * is refused with a 400 that says so, never ignored. */
#ifndef TERN_OPENAI_H
#define TERN_OPENAI_H

#include <stddef.h>
#include <stdint.h>

#include "tern.pb-c.h"

/* An error as OpenAI shapes it: {"error": {"message", "type", "param", "code"}}. */
typedef struct tern_oai_error {
	int http_status;     /* 400, 401, 404, 413, 429, 500, 503 ... */
	const char *type;    /* "invalid_request_error", ... (static) */
	const char *code;    /* static or NULL */
	char param[64];      /* the offending field, "" for none */
	char message[512];
} tern_oai_error;

/* A parsed request: gen is ready to send (its pointers point into this
 * struct's own allocations). */
typedef struct tern_oai_request {
	int chat;            /* /v1/chat/completions (1) or /v1/completions (0) */
	int stream;
	int include_usage;   /* stream_options.include_usage */
	Tern__V1__GenerateRequest gen;
	Tern__V1__SamplingParams sampling;
	Tern__V1__ChatMessage *msgs;      /* (n_msgs) */
	Tern__V1__ChatMessage **msg_ptrs; /* (n_msgs) */
	char **stops;                     /* (gen.n_stop) */
	uint32_t *token_ids;              /* (gen.n_token_ids) */
	char *prompt;
	void *json;                       /* the parsed document the strings live in */
} tern_oai_request;

/* Parses body[0..len) as a chat (chat = 1) or completions request. Returns 0,
 * or -1 with e filled (http_status 400). Free with tern_oai_request_free
 * either way. */
int tern_oai_parse(const char *body, size_t len, int chat, tern_oai_request *out, tern_oai_error *e);
void tern_oai_request_free(tern_oai_request *r);

/* Fills e for an error of the coordinator (a gRPC status code and its
 * details): 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 429 RESOURCE_EXHAUSTED,
 * 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED, 500 otherwise. */
void tern_oai_error_from_status(int grpc_status, const char *details, tern_oai_error *e);
/* Fills e with a status, type and printf-style message. */
void tern_oai_error_set(tern_oai_error *e, int http_status, const char *type, const char *param, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

/* Every builder returns a malloc'd one-line JSON text (NUL-terminated), or
 * NULL when out of memory. */
char *tern_oai_error_json(const tern_oai_error *e);

/* "stop" or "length" for a tern.v1 finish reason. */
const char *tern_oai_finish_reason(int reason);

/* The most top_logprobs a request may ask for (OpenAI's limit). */
#define TERN_OAI_MAX_TOP_LOGPROBS 20

/* A reply's logprobs, OpenAI's shape: chat {"content": [{token, logprob,
 * bytes, top_logprobs: [{token, logprob, bytes}]}], "refusal": null};
 * completions {tokens, token_logprobs, top_logprobs: [{token: logprob}],
 * text_offset (bytes)}. A token that is not whole UTF-8 shows as
 * "bytes:\xNN...". Entries are added per generated piece and handed to the
 * next builder given lp, which takes those added since the last one (a
 * stream attaches them to the chunk that shows their text, or the last). */
typedef struct tern_oai_logprobs tern_oai_logprobs;
tern_oai_logprobs *tern_oai_logprobs_new(int chat); /* NULL: out of memory */
void tern_oai_logprobs_free(tern_oai_logprobs *lp);
/* Adds m's logprob, token_bytes and top_logprobs: 0, or -1 out of memory. */
int tern_oai_logprobs_add(tern_oai_logprobs *lp, const Tern__V1__GenerateResponse *m);
/* Whether entries wait for a builder. */
int tern_oai_logprobs_pending(const tern_oai_logprobs *lp);

/* The whole reply of a non-streaming request; lp NULL: "logprobs": null. */
char *tern_oai_completion_json(int chat, const char *id, long long created, const char *model, const char *text,
			       size_t text_len, int finish_reason, const Tern__V1__Usage *usage, tern_oai_logprobs *lp);

/* One streaming chunk: delta text (chat: with the role when first), and the
 * finish reason on the last (finish_reason < 0: null); lp as above, its
 * "logprobs" null when no entry waits. */
char *tern_oai_chunk_json(int chat, const char *id, long long created, const char *model, int first,
			  const char *text, size_t text_len, int finish_reason, tern_oai_logprobs *lp);
/* The usage chunk of stream_options.include_usage: choices [] and usage. */
char *tern_oai_usage_chunk_json(int chat, const char *id, long long created, const char *model,
				const Tern__V1__Usage *usage);

#endif /* TERN_OPENAI_H */
