/* openai.c: OpenAI request JSON -> tern.v1.GenerateRequest, and the reply
 * JSON back (tern-openai.h). jansson parses and writes every byte of JSON. */
#include "tern-openai.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern-service.h"

/* Limits of what one request may carry (the coordinator checks the rest:
 * prompt bytes, context, vocabulary). */
#define OAI_MAX_MESSAGES 4096
#define OAI_MAX_STOPS 16
#define OAI_MAX_TOKEN_IDS (1 << 20)
#define OAI_MAX_PARTS 4096

void tern_oai_error_set(tern_oai_error *e, int http_status, const char *type, const char *param, const char *fmt, ...)
{
	e->http_status = http_status;
	e->type = type;
	e->code = NULL;
	snprintf(e->param, sizeof e->param, "%s", param ? param : "");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->message, sizeof e->message, fmt, ap);
	va_end(ap);
}

#define BAD(param, ...) (tern_oai_error_set(e, 400, "invalid_request_error", (param), __VA_ARGS__), -1)

void tern_oai_request_free(tern_oai_request *r)
{
	if (!r)
		return;
	free(r->msgs);
	free(r->msg_ptrs);
	free(r->stops);
	free(r->token_ids);
	free(r->prompt);
	json_decref(r->json);
	memset(r, 0, sizeof *r);
}

/* A field that is absent or JSON null counts as not given. */
static json_t *field(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);
	return v && !json_is_null(v) ? v : NULL;
}

static int get_number(json_t *o, const char *k, double lo, double hi, int *given, double *out, tern_oai_error *e)
{
	json_t *v = field(o, k);
	*given = 0;
	if (!v)
		return 0;
	if (!json_is_number(v))
		return BAD(k, "'%s' must be a number", k);
	const double d = json_number_value(v);
	if (!isfinite(d) || d < lo || d > hi)
		return BAD(k, "'%s' is %g: must be in [%g, %g]", k, d, lo, hi);
	*given = 1;
	*out = d;
	return 0;
}

static int get_bool(json_t *o, const char *k, int *out, tern_oai_error *e)
{
	json_t *v = field(o, k);
	if (!v)
		return 0;
	if (!json_is_boolean(v))
		return BAD(k, "'%s' must be true or false", k);
	*out = json_is_true(v);
	return 0;
}

/* `content`: a string, or an array of parts of which only text parts are
 * understood; the texts are joined. The result is malloc'd into *out. */
static int content_text(json_t *c, size_t i, char **out, tern_oai_error *e)
{
	char param[64];
	snprintf(param, sizeof param, "messages[%zu].content", i);
	*out = NULL;
	if (!c)
		return (*out = strdup("")) ? 0 : BAD(param, "out of memory");
	if (json_is_string(c)) {
		*out = strndup(json_string_value(c), json_string_length(c));
		return *out ? 0 : BAD(param, "out of memory");
	}
	if (!json_is_array(c))
		return BAD(param, "'content' must be a string or an array of text parts");
	if (json_array_size(c) > OAI_MAX_PARTS)
		return BAD(param, "more than %d content parts", OAI_MAX_PARTS);
	size_t total = 0;
	for (size_t j = 0; j < json_array_size(c); j++) {
		json_t *p = json_array_get(c, j);
		json_t *type = json_object_get(p, "type");
		json_t *text = json_object_get(p, "text");
		if (!json_is_object(p) || !json_is_string(type) || strcmp(json_string_value(type), "text") ||
		    !json_is_string(text))
			return BAD(param, "content part %zu: only {\"type\": \"text\", \"text\": ...} parts are "
					  "supported",
				   j);
		total += json_string_length(text);
	}
	char *s = malloc(total + 1);
	if (!s)
		return BAD(param, "out of memory");
	size_t at = 0;
	for (size_t j = 0; j < json_array_size(c); j++) {
		json_t *text = json_object_get(json_array_get(c, j), "text");
		memcpy(s + at, json_string_value(text), json_string_length(text));
		at += json_string_length(text);
	}
	s[at] = '\0';
	*out = s;
	return 0;
}

static int parse_messages(json_t *root, tern_oai_request *r, tern_oai_error *e)
{
	json_t *msgs = field(root, "messages");
	if (!msgs || !json_is_array(msgs) || json_array_size(msgs) == 0)
		return BAD("messages", "'messages' must be a non-empty array");
	const size_t n = json_array_size(msgs);
	if (n > OAI_MAX_MESSAGES)
		return BAD("messages", "%zu messages: at most %d", n, OAI_MAX_MESSAGES);
	r->msgs = calloc(n, sizeof *r->msgs);
	r->msg_ptrs = calloc(n, sizeof *r->msg_ptrs);
	if (!r->msgs || !r->msg_ptrs)
		return BAD("messages", "out of memory");
	/* The texts are owned by a JSON array kept with the document, so one
	 * json_decref frees them. */
	json_t *keep = json_array();
	if (!keep || json_object_set_new(root, "\x01tern_texts", keep) < 0)
		return BAD("messages", "out of memory");
	for (size_t i = 0; i < n; i++) {
		char param[64];
		snprintf(param, sizeof param, "messages[%zu]", i);
		json_t *m = json_array_get(msgs, i);
		if (!json_is_object(m))
			return BAD(param, "each message must be an object");
		json_t *role = json_object_get(m, "role");
		if (!json_is_string(role))
			return BAD(param, "message %zu has no 'role'", i);
		const char *rs = json_string_value(role);
		/* OpenAI's newer name for the system role. */
		if (!strcmp(rs, "developer"))
			rs = "system";
		if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant"))
			return BAD(param, "role '%s' is not supported (system, developer, user, assistant)", rs);
		if (field(m, "tool_calls") || field(m, "function_call"))
			return BAD(param, "tool calls are not supported yet");
		char *text;
		if (content_text(field(m, "content"), i, &text, e) < 0)
			return -1;
		json_t *js = json_string(text);
		free(text);
		/* Text that is not UTF-8 cannot come from a JSON string; an
		 * embedded NUL is refused by the parser. */
		if (!js || json_array_append_new(keep, js) < 0)
			return BAD(param, "out of memory");
		tern__v1__chat_message__init(&r->msgs[i]);
		r->msgs[i].role = (char *)rs;
		r->msgs[i].content = (char *)json_string_value(js);
		r->msg_ptrs[i] = &r->msgs[i];
	}
	r->gen.n_messages = n;
	r->gen.messages = r->msg_ptrs;
	return 0;
}

static int token_array(json_t *a, tern_oai_request *r, tern_oai_error *e)
{
	const size_t n = json_array_size(a);
	if (n == 0)
		return BAD("prompt", "the prompt is empty");
	if (n > OAI_MAX_TOKEN_IDS)
		return BAD("prompt", "%zu prompt tokens: at most %d", n, OAI_MAX_TOKEN_IDS);
	r->token_ids = malloc(n * sizeof *r->token_ids);
	if (!r->token_ids)
		return BAD("prompt", "out of memory");
	for (size_t i = 0; i < n; i++) {
		json_t *t = json_array_get(a, i);
		if (!json_is_integer(t) || json_integer_value(t) < 0 || json_integer_value(t) > UINT32_MAX)
			return BAD("prompt", "prompt token %zu is not a token id", i);
		r->token_ids[i] = (uint32_t)json_integer_value(t);
	}
	r->gen.n_token_ids = n;
	r->gen.token_ids = r->token_ids;
	return 0;
}

static int parse_prompt(json_t *root, tern_oai_request *r, tern_oai_error *e)
{
	json_t *p = field(root, "prompt");
	if (!p)
		return BAD("prompt", "'prompt' is required");
	if (json_is_array(p) && json_array_size(p) == 1 &&
	    (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0))))
		p = json_array_get(p, 0); /* one prompt in a list */
	if (json_is_string(p)) {
		if (json_string_length(p) == 0)
			return BAD("prompt", "the prompt is empty");
		r->prompt = strndup(json_string_value(p), json_string_length(p));
		if (!r->prompt)
			return BAD("prompt", "out of memory");
		r->gen.prompt = r->prompt;
		return 0;
	}
	if (json_is_array(p)) {
		if (json_array_size(p) > 0 && !json_is_integer(json_array_get(p, 0)))
			return BAD("prompt", "one prompt per request: 'prompt' is a string, a token id array, or "
					     "a list of one of those");
		return token_array(p, r, e);
	}
	return BAD("prompt", "'prompt' must be a string or an array of token ids");
}

static int parse_stop(json_t *root, tern_oai_request *r, tern_oai_error *e)
{
	json_t *s = field(root, "stop");
	if (!s)
		return 0;
	size_t n = json_is_string(s) ? 1 : json_is_array(s) ? json_array_size(s) : (size_t)-1;
	if (n == (size_t)-1)
		return BAD("stop", "'stop' must be a string or an array of strings");
	if (n > OAI_MAX_STOPS)
		return BAD("stop", "%zu stop strings: at most %d", n, OAI_MAX_STOPS);
	if (n == 0)
		return 0;
	r->stops = calloc(n, sizeof *r->stops);
	if (!r->stops)
		return BAD("stop", "out of memory");
	for (size_t i = 0; i < n; i++) {
		json_t *v = json_is_string(s) ? s : json_array_get(s, i);
		if (!json_is_string(v) || json_string_length(v) == 0)
			return BAD("stop", "stop string %zu must be a non-empty string", i);
		r->stops[i] = (char *)json_string_value(v);
	}
	r->gen.n_stop = n;
	r->gen.stop = r->stops;
	return 0;
}

/* Fields whose meaning tern does not have yet: refused, never ignored. */
static int refuse_unsupported(json_t *root, int chat, tern_oai_error *e)
{
	json_t *v;
	if ((v = field(root, "n")) && !(json_is_integer(v) && json_integer_value(v) == 1))
		return BAD("n", "only n = 1 is supported");
	if ((v = field(root, "best_of")) && !(json_is_integer(v) && json_integer_value(v) == 1))
		return BAD("best_of", "only best_of = 1 is supported");
	if ((v = field(root, "tools")) && !(json_is_array(v) && json_array_size(v) == 0))
		return BAD("tools", "tools are not supported yet");
	if ((v = field(root, "functions")) && !(json_is_array(v) && json_array_size(v) == 0))
		return BAD("functions", "functions are not supported yet");
	if ((v = field(root, "tool_choice")) && !(json_is_string(v) && !strcmp(json_string_value(v), "none")))
		return BAD("tool_choice", "tools are not supported yet");
	if ((v = field(root, "response_format"))) {
		json_t *t = json_object_get(v, "type");
		if (!json_is_string(t) || strcmp(json_string_value(t), "text"))
			return BAD("response_format", "response_format other than text (json_object, json_schema) "
						      "is not supported yet");
	}
	if ((v = field(root, "logit_bias")) && !(json_is_object(v) && json_object_size(v) == 0))
		return BAD("logit_bias", "logit_bias is not supported yet");
	if (!chat) {
		if ((v = field(root, "echo")) && !json_is_false(v))
			return BAD("echo", "echo is not supported yet");
		if ((v = field(root, "suffix")) && !(json_is_string(v) && json_string_length(v) == 0))
			return BAD("suffix", "suffix is not supported yet");
	}
	return 0;
}

static int parse_sampling(json_t *root, tern_oai_request *r, tern_oai_error *e)
{
	Tern__V1__SamplingParams *sp = &r->sampling;
	tern__v1__sampling_params__init(sp);
	r->gen.sampling = sp;
	int given;
	double d;
	/* OpenAI's default temperature is 1; tern's field says 0 = greedy. */
	sp->temperature = 1.0f;
	if (get_number(root, "temperature", 0, 2, &given, &d, e) < 0)
		return -1;
	if (given)
		sp->temperature = (float)d;
	if (get_number(root, "top_p", 0, 1, &given, &d, e) < 0)
		return -1;
	if (given) {
		if (d <= 0)
			return BAD("top_p", "'top_p' must be in (0, 1]");
		sp->top_p = (float)d;
	}
	if (get_number(root, "presence_penalty", -2, 2, &given, &d, e) < 0)
		return -1;
	sp->presence_penalty = (float)(given ? d : 0);
	if (get_number(root, "frequency_penalty", -2, 2, &given, &d, e) < 0)
		return -1;
	sp->frequency_penalty = (float)(given ? d : 0);
	/* llama.cpp's and vLLM's extensions, as they spell them. */
	if (get_number(root, "top_k", 0, 1 << 30, &given, &d, e) < 0)
		return -1;
	if (given) {
		if (d != floor(d))
			return BAD("top_k", "'top_k' must be an integer");
		sp->top_k = (uint32_t)d;
	}
	if (get_number(root, "min_p", 0, 1, &given, &d, e) < 0)
		return -1;
	sp->min_p = (float)(given ? d : 0);
	if (get_number(root, "repetition_penalty", 0, 100, &given, &d, e) < 0)
		return -1;
	if (given) {
		if (d <= 0)
			return BAD("repetition_penalty", "'repetition_penalty' must be > 0");
		sp->repetition_penalty = (float)d;
	}
	json_t *seed = field(root, "seed");
	if (seed) {
		if (!json_is_integer(seed))
			return BAD("seed", "'seed' must be an integer");
		sp->seed = (uint64_t)json_integer_value(seed);
		sp->has_seed = 1;
	}
	return 0;
}

/* chat: logprobs true/false and top_logprobs 0..20; completions: logprobs
 * N (0..20: the sampled token's and the N best), as vLLM reads it. */
static int parse_logprobs(json_t *root, tern_oai_request *r, tern_oai_error *e)
{
	json_t *lp = field(root, "logprobs");
	int given;
	double d;
	if (r->chat) {
		int on = 0;
		if (get_bool(root, "logprobs", &on, e) < 0 ||
		    get_number(root, "top_logprobs", 0, TERN_OAI_MAX_TOP_LOGPROBS, &given, &d, e) < 0)
			return -1;
		if (given && d != floor(d))
			return BAD("top_logprobs", "'top_logprobs' must be an integer");
		if (given && d > 0 && !on)
			return BAD("top_logprobs", "'top_logprobs' needs 'logprobs': true");
		r->gen.logprobs = on;
		r->gen.top_logprobs = given ? (uint32_t)d : 0;
	} else if (lp) {
		if (!json_is_integer(lp) || json_integer_value(lp) < 0 ||
		    json_integer_value(lp) > TERN_OAI_MAX_TOP_LOGPROBS)
			return BAD("logprobs", "'logprobs' must be an integer in [0, %d]", TERN_OAI_MAX_TOP_LOGPROBS);
		r->gen.logprobs = 1;
		r->gen.top_logprobs = (uint32_t)json_integer_value(lp);
	}
	return 0;
}

int tern_oai_parse(const char *body, size_t len, int chat, tern_oai_request *r, tern_oai_error *e)
{
	memset(r, 0, sizeof *r);
	tern__v1__generate_request__init(&r->gen);
	r->chat = chat;
	json_error_t je;
	json_t *root = json_loadb(body, len, 0, &je);
	if (!root)
		return BAD(NULL, "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
	r->json = root;
	if (!json_is_object(root))
		return BAD(NULL, "the body must be a JSON object");
	if (refuse_unsupported(root, chat, e) < 0)
		return -1;
	if ((chat ? parse_messages(root, r, e) : parse_prompt(root, r, e)) < 0)
		return -1;
	if (parse_sampling(root, r, e) < 0 || parse_stop(root, r, e) < 0)
		return -1;
	int given;
	double d;
	const char *mt = field(root, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
	if (get_number(root, mt, 1, 1 << 22, &given, &d, e) < 0)
		return -1;
	if (given) {
		if (d != floor(d))
			return BAD(mt, "'%s' must be an integer", mt);
		r->gen.max_tokens = (uint32_t)d;
	}
	int ignore_eos = 0;
	if (get_bool(root, "stream", &r->stream, e) < 0 || get_bool(root, "ignore_eos", &ignore_eos, e) < 0)
		return -1;
	r->gen.ignore_eos = ignore_eos;
	json_t *so = field(root, "stream_options");
	if (so) {
		if (!json_is_object(so))
			return BAD("stream_options", "'stream_options' must be an object");
		if (get_bool(so, "include_usage", &r->include_usage, e) < 0)
			return -1;
	}
	json_t *m = field(root, "model");
	if (m && !json_is_string(m))
		return BAD("model", "'model' must be a string");
	return parse_logprobs(root, r, e);
}

void tern_oai_error_from_status(int st, const char *details, tern_oai_error *e)
{
	const char *d = details && details[0] ? details : "the coordinator failed";
	switch (st) {
	case TERN_STATUS_INVALID_ARGUMENT:
		tern_oai_error_set(e, 400, "invalid_request_error", NULL, "%s", d);
		break;
	case TERN_STATUS_UNAUTHENTICATED:
		tern_oai_error_set(e, 401, "authentication_error", NULL, "%s", d);
		e->code = "invalid_api_key";
		break;
	case TERN_STATUS_RESOURCE_EXHAUSTED:
		tern_oai_error_set(e, 429, "rate_limit_error", NULL, "%s", d);
		e->code = "rate_limit_exceeded";
		break;
	case TERN_STATUS_UNAVAILABLE:
		tern_oai_error_set(e, 503, "service_unavailable", NULL, "%s", d);
		break;
	case TERN_STATUS_DEADLINE_EXCEEDED:
		tern_oai_error_set(e, 504, "timeout", NULL, "%s", d);
		break;
	default:
		tern_oai_error_set(e, 500, "server_error", NULL, "%s", d);
		break;
	}
}

static char *dump(json_t *j)
{
	if (!j)
		return NULL;
	char *s = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	return s;
}

/* A JSON string of text that came from the coordinator (UTF-8 by its
 * contract); should it not be, U+FFFD stands for it rather than no reply. */
static json_t *text_json(const char *s, size_t n)
{
	json_t *j = json_stringn(s ? s : "", s ? n : 0);
	return j ? j : json_string("\xef\xbf\xbd");
}

char *tern_oai_error_json(const tern_oai_error *e)
{
	return dump(json_pack("{s:{s:s,s:s,s:s?,s:s?}}", "error", "message", e->message, "type",
			      e->type ? e->type : "server_error", "param", e->param[0] ? e->param : NULL, "code",
			      e->code));
}

const char *tern_oai_finish_reason(int reason)
{
	return reason == TERN__V1__FINISH_REASON__FINISH_REASON_LENGTH ? "length" : "stop";
}

static json_t *usage_json(const Tern__V1__Usage *u)
{
	const unsigned p = u ? u->prompt_tokens : 0, c = u ? u->completion_tokens : 0;
	return json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)p, "completion_tokens", (json_int_t)c,
			 "total_tokens", (json_int_t)p + c);
}

/* ---- logprobs ---------------------------------------------------------- */

/* The entries not yet sent, by column: chat has one (content); completions
 * four (tokens, token_logprobs, top_logprobs, text_offset). */
enum { LP_TOKENS, LP_LOGPROBS, LP_TOP, LP_OFFSET, LP_COLS };
static const char *const lp_col_names[LP_COLS] = {"tokens", "token_logprobs", "top_logprobs", "text_offset"};

struct tern_oai_logprobs {
	int chat;
	json_t *col[LP_COLS]; /* chat: col[0] = content */
	size_t offset;        /* completions: bytes of the text so far */
};

static int lp_cols(const tern_oai_logprobs *lp)
{
	return lp->chat ? 1 : LP_COLS;
}

/* Fresh empty columns: 0, or -1 out of memory. */
static int lp_reset(tern_oai_logprobs *lp)
{
	int bad = 0;
	for (int i = 0; i < lp_cols(lp); i++)
		bad |= !(lp->col[i] = json_array());
	return bad ? -1 : 0;
}

tern_oai_logprobs *tern_oai_logprobs_new(int chat)
{
	tern_oai_logprobs *lp = calloc(1, sizeof *lp);
	if (!lp)
		return NULL;
	lp->chat = chat;
	if (lp_reset(lp) < 0) {
		tern_oai_logprobs_free(lp);
		return NULL;
	}
	return lp;
}

void tern_oai_logprobs_free(tern_oai_logprobs *lp)
{
	if (!lp)
		return;
	for (int i = 0; i < LP_COLS; i++)
		json_decref(lp->col[i]);
	free(lp);
}

/* A token's text as OpenAI shows it: the bytes when they are UTF-8, else
 * "bytes:\xNN..." (a byte token holding part of a character). */
static json_t *token_text(const ProtobufCBinaryData *b)
{
	json_t *j = json_stringn((const char *)b->data, b->len);
	if (j || b->len > 1024)
		return j ? j : json_string("bytes:");
	char buf[6 + 4 * 1024 + 1] = "bytes:";
	size_t n = 6;
	for (size_t i = 0; i < b->len; i++)
		n += (size_t)snprintf(buf + n, sizeof buf - n, "\\x%02x", b->data[i]);
	return json_string(buf);
}

static json_t *bytes_array(const ProtobufCBinaryData *b)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < b->len; i++)
		json_array_append_new(a, json_integer(b->data[i]));
	return a;
}

int tern_oai_logprobs_add(tern_oai_logprobs *lp, const Tern__V1__GenerateResponse *m)
{
	int bad = 0;
	if (lp->chat) {
		json_t *top = json_array();
		for (size_t i = 0; top && i < m->n_top_logprobs; i++)
			bad |= json_array_append_new(
			    top, json_pack("{s:o,s:f,s:o}", "token", token_text(&m->top_logprobs[i]->token_bytes),
					   "logprob", (double)m->top_logprobs[i]->logprob, "bytes",
					   bytes_array(&m->top_logprobs[i]->token_bytes)));
		return bad | json_array_append_new(lp->col[0],
						   json_pack("{s:o,s:f,s:o,s:o}", "token", token_text(&m->token_bytes),
							     "logprob", (double)m->logprob, "bytes",
							     bytes_array(&m->token_bytes), "top_logprobs", top))
			   ? -1
			   : 0;
	}
	json_t *top = json_object();
	for (size_t i = 0; top && i < m->n_top_logprobs; i++) {
		json_t *t = token_text(&m->top_logprobs[i]->token_bytes);
		if (t)
			bad |= json_object_set_new(top, json_string_value(t),
						   json_real((double)m->top_logprobs[i]->logprob));
		json_decref(t);
	}
	json_t *v[LP_COLS] = {token_text(&m->token_bytes), json_real((double)m->logprob), top,
			      json_integer((json_int_t)lp->offset)};
	for (int i = 0; i < LP_COLS; i++)
		bad |= json_array_append_new(lp->col[i], v[i]);
	lp->offset += m->token_bytes.len;
	return bad ? -1 : 0;
}

/* The entries added since the last take, as a choice's "logprobs" (and
 * forgotten here); JSON null when lp is NULL. */
static json_t *logprobs_take(tern_oai_logprobs *lp)
{
	if (!lp)
		return json_null();
	json_t *out = lp->chat ? json_pack("{s:o,s:n}", "content", lp->col[0], "refusal") : json_object();
	for (int i = 0; !lp->chat && i < LP_COLS; i++)
		json_object_set_new(out, lp_col_names[i], lp->col[i]);
	lp_reset(lp);
	return out;
}

int tern_oai_logprobs_pending(const tern_oai_logprobs *lp)
{
	return lp && json_array_size(lp->col[0]) > 0;
}

char *tern_oai_completion_json(int chat, const char *id, long long created, const char *model, const char *text,
			       size_t text_len, int finish_reason, const Tern__V1__Usage *usage, tern_oai_logprobs *lp)
{
	json_t *choice = chat
			     ? json_pack("{s:i,s:{s:s,s:o},s:o,s:s}", "index", 0, "message", "role", "assistant",
					 "content", text_json(text, text_len), "logprobs", logprobs_take(lp),
					 "finish_reason", tern_oai_finish_reason(finish_reason))
			     : json_pack("{s:i,s:o,s:o,s:s}", "index", 0, "text", text_json(text, text_len), "logprobs",
					 logprobs_take(lp), "finish_reason", tern_oai_finish_reason(finish_reason));
	return dump(json_pack("{s:s,s:s,s:I,s:s,s:[o],s:o}", "id", id, "object",
			      chat ? "chat.completion" : "text_completion", "created", (json_int_t)created, "model",
			      model, "choices", choice, "usage", usage_json(usage)));
}

char *tern_oai_chunk_json(int chat, const char *id, long long created, const char *model, int first, const char *text,
			  size_t text_len, int finish_reason, tern_oai_logprobs *lp)
{
	json_t *fr = finish_reason < 0 ? json_null() : json_string(tern_oai_finish_reason(finish_reason));
	json_t *choice;
	if (chat) {
		json_t *delta = json_object();
		if (delta && first)
			json_object_set_new(delta, "role", json_string("assistant"));
		if (delta && (text_len || first))
			json_object_set_new(delta, "content", text_json(text, text_len));
		choice = json_pack("{s:i,s:o,s:o,s:o}", "index", 0, "delta", delta, "logprobs",
				   logprobs_take(tern_oai_logprobs_pending(lp) ? lp : NULL), "finish_reason", fr);
	} else {
		choice = json_pack("{s:i,s:o,s:o,s:o}", "index", 0, "text", text_json(text, text_len), "logprobs",
				   logprobs_take(tern_oai_logprobs_pending(lp) ? lp : NULL), "finish_reason", fr);
	}
	return dump(json_pack("{s:s,s:s,s:I,s:s,s:[o]}", "id", id, "object",
			      chat ? "chat.completion.chunk" : "text_completion", "created", (json_int_t)created,
			      "model", model, "choices", choice));
}

char *tern_oai_usage_chunk_json(int chat, const char *id, long long created, const char *model,
				const Tern__V1__Usage *usage)
{
	return dump(json_pack("{s:s,s:s,s:I,s:s,s:[],s:o}", "id", id, "object",
			      chat ? "chat.completion.chunk" : "text_completion", "created", (json_int_t)created,
			      "model", model, "choices", "usage", usage_json(usage)));
}
