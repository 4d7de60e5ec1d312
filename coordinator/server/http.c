/* http.c: tern-server's HTTP front end on libmicrohttpd (tern-http.h).
 *
 * Thread per connection: the access handler reads the body (bounded), then
 * runs the request's gRPC call to the coordinator on the connection's own
 * thread. A streaming reply is a chunked response whose reader callback
 * blocks on the next gRPC message; before every wait slice it checks the
 * client's socket, so a client that leaves has its call cancelled. A request
 * is answered with a status only once the coordinator has either admitted it
 * (the first message arrived) or refused it, so a refused stream is a plain
 * JSON error with the right status, never a 200 that fails. */
#include "tern-http.h"

#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#include "tern-hold.h"
#include "tern-metrics.h"
#include "tern-openai.h"
#include "tern-page.h"
#include "tern-service.h"
#include "tern.pb-c.h"

struct tern_http_server {
	struct MHD_Daemon *d;
	tern_http_opts o;
	char model_id[256];
	char *api_key;
	tern_metrics *metrics;
	char *tls_cert, *tls_key; /* PEM texts, with --tls-cert/--tls-key */
	char *cors;               /* o.cors_origin's copy */
	long long started;
	int port;
};

typedef struct req_ctx {
	char *body; /* (cap) */
	size_t len, cap;
	size_t seen; /* body bytes received, kept or not */
	int too_big;
} req_ctx;

#define TERN_HTTP_DRAIN_FACTOR 16

/* ---- replies ----------------------------------------------------------------- */

/* The Origin a CORS reply names: with --cors, the request's Origin when it is
 * the one allowed (or any, for "*"); NULL: no CORS headers. */
static const char *cors_origin(const tern_http_server *s, struct MHD_Connection *c)
{
	if (!s->o.cors_origin)
		return NULL;
	const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
	if (!origin)
		return NULL;
	return !strcmp(s->o.cors_origin, "*") || !strcmp(s->o.cors_origin, origin) ? origin : NULL;
}

/* Every response goes through here, so tern_http_requests_total sees it
 * and a --cors origin gets its headers. */
static enum MHD_Result queue(tern_http_server *s, struct MHD_Connection *c, unsigned status, struct MHD_Response *r)
{
	const char *origin = cors_origin(s, c);
	if (origin) {
		MHD_add_response_header(r, "Access-Control-Allow-Origin", origin);
		MHD_add_response_header(r, "Vary", "Origin");
	}
	const enum MHD_Result q = MHD_queue_response(c, status, r);
	if (q == MHD_YES)
		tern_metrics_http(s->metrics, status);
	return q;
}

static enum MHD_Result reply_text(tern_http_server *s, struct MHD_Connection *c, unsigned status, char *text,
				  const char *type)
{
	if (!text) {
		static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
					  "\"param\":null,\"code\":null}}";
		struct MHD_Response *r = MHD_create_response_from_buffer(sizeof oom - 1, (void *)oom,
									 MHD_RESPMEM_PERSISTENT);
		MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
		enum MHD_Result q = queue(s, c, MHD_HTTP_INTERNAL_SERVER_ERROR, r);
		MHD_destroy_response(r);
		return q;
	}
	struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	enum MHD_Result q = queue(s, c, status, r);
	MHD_destroy_response(r);
	return q;
}

static enum MHD_Result reply_json(tern_http_server *s, struct MHD_Connection *c, unsigned status, json_t *j)
{
	char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	return reply_text(s, c, status, text, "application/json");
}

static enum MHD_Result reply_error(tern_http_server *s, struct MHD_Connection *c, const tern_oai_error *e)
{
	char *text = tern_oai_error_json(e);
	if (!text)
		return reply_text(s, c, 500, NULL, NULL);
	struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	/* The SDKs retry 429 and 503 and honour Retry-After. */
	if (e->http_status == 429 || e->http_status == 503)
		MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
	if (e->http_status == 401)
		MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
	enum MHD_Result q = queue(s, c, (unsigned)e->http_status, r);
	MHD_destroy_response(r);
	return q;
}

static enum MHD_Result reply_err(tern_http_server *s, struct MHD_Connection *c, int status, const char *type,
				 const char *code, const char *msg)
{
	tern_oai_error e;
	tern_oai_error_set(&e, status, type, NULL, "%s", msg);
	e.code = code;
	return reply_error(s, c, &e);
}

/* ---- the client side of a connection ----------------------------------------- */

static int conn_fd(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
	return ci ? ci->connect_fd : -1;
}

/* The peer closed its side or the socket failed. A client that only
 * half-closes after its request counts as gone too (HTTP clients do not). */
static int client_gone(int fd)
{
	if (fd < 0)
		return 0;
	struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
	if (poll(&p, 1, 0) <= 0)
		return 0;
	if (p.revents & (POLLERR | POLLHUP | POLLRDHUP | POLLNVAL))
		return 1;
	if (p.revents & POLLIN) {
		char ch;
		const ssize_t n = recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
		return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
	}
	return 0;
}

static void make_id(char *out, size_t len, const char *prefix)
{
	unsigned char r[12];
	if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
		const uint64_t t = tern_now_ns();
		for (size_t i = 0; i < sizeof r; i++)
			r[i] = (unsigned char)(t >> (8 * (i % 8))) ^ (unsigned char)i;
	}
	int w = snprintf(out, len, "%s", prefix);
	for (size_t i = 0; i < sizeof r && w > 0 && (size_t)w + 2 < len; i++)
		w += snprintf(out + w, len - (size_t)w, "%02x", r[i]);
}

/* ---- unary calls: health, tokenize ---------------------------------------------- */

static enum MHD_Result do_health(tern_http_server *s, struct MHD_Connection *c)
{
	Tern__V1__HealthRequest q = TERN__V1__HEALTH_REQUEST__INIT;
	char detail[512];
	int st;
	Tern__V1__HealthResponse *h = (Tern__V1__HealthResponse *)tern_grpc_unary(
		s->o.upstream, "/tern.v1.Tern/Health", &q.base, 5.0, &tern__v1__health_response__descriptor, &st,
		detail, sizeof detail);
	json_t *j;
	int ready = 0;
	if (h) {
		ready = h->ready;
		json_t *stages = json_array();
		for (size_t i = 0; stages && i < h->n_stages; i++) {
			const Tern__V1__StageStatus *ss = h->stages[i];
			json_array_append_new(stages, json_pack("{s:i,s:b,s:s?,s:s?,s:i,s:i}", "stage", (int)ss->stage,
								"up", ss->up, "host", ss->host, "binding", ss->binding,
								"first_layer", (int)ss->first_layer, "last_layer",
								(int)ss->last_layer));
		}
		j = json_pack("{s:s,s:b,s:i,s:i,s:s,s:o}", "status", ready ? "ok" : "unavailable", "ready", ready,
			      "stages_up", (int)h->stages_up, "stages_total", (int)h->stages_total, "model", s->model_id,
			      "stages", stages);
		tern__v1__health_response__free_unpacked(h, NULL);
	} else {
		j = json_pack("{s:s,s:b,s:s}", "status", "unavailable", "ready", 0, "error",
			      st == 0 ? "malformed Health reply" : detail[0] ? detail : tern_grpc_status_name(st));
	}
	if (j && s->o.supervisor) {
		/* The job as tern-server sees it: its state and how often it was restarted. */
		unsigned gen = 0;
		const tern_job_state js = tern_supervisor_state(s->o.supervisor, &gen);
		json_object_set_new(j, "job", json_string(tern_job_state_name(js)));
		json_object_set_new(j, "generation", json_integer(gen));
		tern_host_swap sw[TERN_MAX_HOSTS];
		const int n = tern_supervisor_swaps(s->o.supervisor, sw, TERN_MAX_HOSTS);
		json_t *rep = json_array();
		for (int i = 0; rep && i < n; i++)
			json_array_append_new(rep, json_pack("{s:s,s:s,s:i,s:I}", "host", sw[i].failed, "by", sw[i].spare,
							     "files_copied", sw[i].files_copied, "bytes_copied",
							     (json_int_t)sw[i].bytes_copied));
		json_object_set_new(j, "replaced", rep);
		if (js != TERN_JOB_UP)
			ready = 0;
	}
	return reply_json(s, c, ready ? 200 : 503, j);
}

static enum MHD_Result do_models(tern_http_server *s, struct MHD_Connection *c, const char *one)
{
	json_t *m = json_pack("{s:s,s:s,s:I,s:s}", "id", s->model_id, "object", "model", "created",
			      (json_int_t)s->started, "owned_by", "tern");
	if (one) {
		if (strcmp(one, s->model_id)) {
			json_decref(m);
			tern_oai_error e;
			tern_oai_error_set(&e, 404, "invalid_request_error", "model", "the model '%.200s' does not exist",
					   one);
			e.code = "model_not_found";
			return reply_error(s, c, &e);
		}
		return reply_json(s, c, 200, m);
	}
	return reply_json(s, c, 200, json_pack("{s:s,s:[o]}", "object", "list", "data", m));
}

static enum MHD_Result do_tokenize(tern_http_server *s, struct MHD_Connection *c, const req_ctx *rq)
{
	json_error_t je;
	json_t *root = json_loadb(rq->body ? rq->body : "", rq->len, 0, &je);
	if (!json_is_object(root)) {
		json_decref(root);
		return reply_err(s, c, 400, "invalid_request_error", NULL, "the body must be a JSON object");
	}
	json_t *text = json_object_get(root, "content");
	if (!text)
		text = json_object_get(root, "prompt");
	if (!text)
		text = json_object_get(root, "text");
	json_t *as = json_object_get(root, "add_special");
	if (!as)
		as = json_object_get(root, "add_special_tokens");
	json_t *ps = json_object_get(root, "parse_special");
	json_t *wp = json_object_get(root, "with_pieces");
	if (!json_is_string(text) || (as && !json_is_boolean(as)) || (ps && !json_is_boolean(ps)) ||
	    (wp && !json_is_boolean(wp))) {
		json_decref(root);
		return reply_err(s, c, 400, "invalid_request_error", NULL,
				 "give 'content' (a string), optionally 'add_special', 'parse_special', 'with_pieces' "
				 "(booleans)");
	}
	Tern__V1__TokenizeRequest q = TERN__V1__TOKENIZE_REQUEST__INIT;
	q.text = (char *)json_string_value(text);
	q.add_bos = as ? json_is_true(as) : 1;
	q.parse_special = ps && json_is_true(ps);
	const int pieces = wp && json_is_true(wp);
	char detail[512];
	int st;
	Tern__V1__TokenizeResponse *t = (Tern__V1__TokenizeResponse *)tern_grpc_unary(
		s->o.upstream, "/tern.v1.Tern/Tokenize", &q.base, 30.0, &tern__v1__tokenize_response__descriptor, &st,
		detail, sizeof detail);
	json_decref(root);
	if (!t) {
		tern_oai_error e;
		tern_oai_error_from_status(st ? st : TERN_STATUS_INTERNAL, st ? detail : "malformed Tokenize reply", &e);
		return reply_error(s, c, &e);
	}
	json_t *ids = json_array(), *ps_arr = pieces ? json_array() : NULL;
	for (size_t i = 0; ids && i < t->n_token_ids; i++)
		json_array_append_new(ids, json_integer(t->token_ids[i]));
	for (size_t i = 0; ps_arr && i < t->n_pieces; i++) {
		json_t *p = json_string(t->pieces[i]);
		json_array_append_new(ps_arr, p ? p : json_string("\xef\xbf\xbd"));
	}
	json_t *j = json_pack("{s:o,s:I}", "tokens", ids, "count", (json_int_t)t->n_token_ids);
	if (j && ps_arr)
		json_object_set_new(j, "pieces", ps_arr);
	tern__v1__tokenize_response__free_unpacked(t, NULL);
	return reply_json(s, c, 200, j);
}

static enum MHD_Result do_detokenize(tern_http_server *s, struct MHD_Connection *c, const req_ctx *rq)
{
	json_error_t je;
	json_t *root = json_loadb(rq->body ? rq->body : "", rq->len, 0, &je);
	json_t *toks = json_object_get(root, "tokens");
	json_t *sp = json_object_get(root, "special");
	int ok = json_is_object(root) && json_is_array(toks) && (!sp || json_is_boolean(sp));
	const size_t n = ok ? json_array_size(toks) : 0;
	uint32_t *ids = ok ? malloc((n ? n : 1) * sizeof *ids) : NULL;
	for (size_t i = 0; ids && i < n; i++) {
		json_t *t = json_array_get(toks, i);
		if (!json_is_integer(t) || json_integer_value(t) < 0 || json_integer_value(t) > UINT32_MAX)
			ok = 0;
		else
			ids[i] = (uint32_t)json_integer_value(t);
	}
	if (!ok || !ids) {
		json_decref(root);
		free(ids);
		return reply_err(s, c, 400, "invalid_request_error", NULL,
				 "give 'tokens' (an array of token ids), optionally 'special' (a boolean)");
	}
	Tern__V1__DetokenizeRequest q = TERN__V1__DETOKENIZE_REQUEST__INIT;
	q.n_token_ids = n;
	q.token_ids = ids;
	q.special = sp && json_is_true(sp);
	json_decref(root);
	char detail[512];
	int st;
	Tern__V1__DetokenizeResponse *t = (Tern__V1__DetokenizeResponse *)tern_grpc_unary(
		s->o.upstream, "/tern.v1.Tern/Detokenize", &q.base, 30.0, &tern__v1__detokenize_response__descriptor,
		&st, detail, sizeof detail);
	free(ids);
	if (!t) {
		tern_oai_error e;
		tern_oai_error_from_status(st ? st : TERN_STATUS_INTERNAL, st ? detail : "malformed Detokenize reply",
					   &e);
		return reply_error(s, c, &e);
	}
	json_t *text = json_string(t->text);
	tern__v1__detokenize_response__free_unpacked(t, NULL);
	return reply_json(s, c, 200, json_pack("{s:o}", "content", text ? text : json_string("\xef\xbf\xbd")));
}

/* The Stats call of a scrape is short: a job that is down must not hold up
 * tern-server's own figures. */
#define TERN_HTTP_STATS_TIMEOUT_S 1.0

static enum MHD_Result do_metrics(tern_http_server *s, struct MHD_Connection *c)
{
	Tern__V1__StatsRequest q = TERN__V1__STATS_REQUEST__INIT;
	char detail[256];
	int st;
	Tern__V1__StatsResponse *stats = (Tern__V1__StatsResponse *)tern_grpc_unary(
		s->o.upstream, "/tern.v1.Tern/Stats", &q.base, TERN_HTTP_STATS_TIMEOUT_S,
		&tern__v1__stats_response__descriptor, &st, detail, sizeof detail);
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (f) {
		tern_metrics_render(s->metrics, stats, f);
		if (fclose(f) != 0) {
			free(text);
			text = NULL;
		}
	}
	if (stats)
		tern__v1__stats_response__free_unpacked(stats, NULL);
	return reply_text(s, c, 200, text, TERN_METRICS_CONTENT_TYPE);
}

/* ---- generation ----------------------------------------------------------------- */

/* A growing text buffer. */
typedef struct sbuf {
	char *p;
	size_t len, cap;
	int oom;
} sbuf;

static void sbuf_add(sbuf *b, const char *s, size_t n)
{
	if (b->oom || !n)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *np = realloc(b->p, cap);
		if (!np) {
			b->oom = 1;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

/* An SSE event "data: <json>\n\n"; json is freed. */
static void sbuf_event(sbuf *b, char *json)
{
	if (!json) {
		b->oom = 1;
		return;
	}
	sbuf_add(b, "data: ", 6);
	sbuf_add(b, json, strlen(json));
	sbuf_add(b, "\n\n", 2);
	free(json);
}

/* Next message of the call, waiting in slices and watching the client; a
 * token message is timed on mr. 1: *out is a message (free it); -1: the call
 * ended; -2: the client left. */
static int next_msg(tern_held *gs, int fd, double keepalive_s, tern_metrics_req *mr,
		    Tern__V1__GenerateResponse **out)
{
	const double t0 = tern_now_s();
	*out = NULL;
	for (;;) {
		if (client_gone(fd))
			return -2;
		const int r = tern_held_next(gs, TERN_HTTP_POLL_MS / 1000.0, out);
		if (r < 0)
			return -1;
		if (r == 1) {
			if (!(*out)->done)
				tern_metrics_req_token(mr);
			return 1;
		}
		if (keepalive_s > 0 && tern_now_s() - t0 >= keepalive_s)
			return 0;
	}
}

typedef struct sse_ctx {
	tern_http_server *srv;
	int fd;
	tern_held *gs;
	int chat, include_usage, first, done;
	char id[48];
	long long created;
	Tern__V1__GenerateResponse *pending; /* the first message, read before the 200 */
	tern_oai_logprobs *lp;               /* the request asked for logprobs */
	tern_metrics_req mr;
	sbuf out;
	size_t off;
} sse_ctx;

static void sse_free(void *cls)
{
	sse_ctx *x = cls;
	/* Not ended yet: the connection closed before the last event. */
	tern_metrics_req_fail(&x->mr, TERN_OUTCOME_ABORT);
	if (x->gs) {
		char d[256];
		tern_held_finish(x->gs, d, sizeof d); /* cancels a call still running */
	}
	if (x->pending)
		tern__v1__generate_response__free_unpacked(x->pending, NULL);
	tern_oai_logprobs_free(x->lp);
	free(x->out.p);
	free(x);
}

/* Ends the call after its last message (the status follows it at once). */
static int end_call(tern_held **gs, char *detail, size_t dl)
{
	Tern__V1__GenerateResponse *m;
	while (tern_held_next(*gs, 5.0, &m) == 1)
		tern__v1__generate_response__free_unpacked(m, NULL);
	const int st = tern_held_finish(*gs, detail, dl);
	*gs = NULL;
	return st;
}

/* Appends the events for one message of the call. */
static void sse_message(sse_ctx *x, Tern__V1__GenerateResponse *m)
{
	const char *model = x->srv->model_id;
	/* A token's logprobs ride on the chunk that shows its text; those of
	 * tokens whose text is held back (part of a character, maybe a stop
	 * string) wait for a later one, at the latest the last. */
	if (x->lp && !m->done && tern_oai_logprobs_add(x->lp, m) < 0)
		x->out.oom = 1;
	if (m->text && m->text[0])
		sbuf_event(&x->out, tern_oai_chunk_json(x->chat, x->id, x->created, model, 0, m->text,
							strlen(m->text), -1, x->lp));
	if (!m->done)
		return;
	char detail[512];
	tern_metrics_req_done(&x->mr, (int)m->finish_reason, m->usage);
	const int st = end_call(&x->gs, detail, sizeof detail);
	if (st != 0 && st != TERN_STATUS_CANCELLED)
		tern_log(TERN_LOG_WARN, "http", "stream %s: status %s after its last message: %s", x->id,
			 tern_grpc_status_name(st), detail);
	sbuf_event(&x->out, tern_oai_chunk_json(x->chat, x->id, x->created, model, 0, "", 0, (int)m->finish_reason,
						x->lp));
	if (x->include_usage)
		sbuf_event(&x->out, tern_oai_usage_chunk_json(x->chat, x->id, x->created, model, m->usage));
	sbuf_add(&x->out, "data: [DONE]\n\n", 14);
	x->done = 1;
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	sse_ctx *x = cls;
	for (;;) {
		if (x->out.oom)
			return MHD_CONTENT_READER_END_WITH_ERROR;
		if (x->off < x->out.len) {
			size_t n = x->out.len - x->off;
			if (n > max)
				n = max;
			memcpy(buf, x->out.p + x->off, n);
			x->off += n;
			return (ssize_t)n;
		}
		x->off = x->out.len = 0;
		if (x->done)
			return MHD_CONTENT_READER_END_OF_STREAM;
		if (x->first) {
			x->first = 0;
			/* The first chunk carries the role (chat) before any text. */
			if (x->chat)
				sbuf_event(&x->out, tern_oai_chunk_json(1, x->id, x->created, x->srv->model_id, 1, "",
									0, -1, NULL));
		}
		Tern__V1__GenerateResponse *m = x->pending;
		x->pending = NULL;
		int r = 1;
		if (!m)
			r = next_msg(x->gs, x->fd, TERN_HTTP_KEEPALIVE_S, &x->mr, &m);
		if (r == -2) {
			tern_metrics_req_fail(&x->mr, TERN_OUTCOME_ABORT);
			tern_held_cancel(x->gs);
			return MHD_CONTENT_READER_END_WITH_ERROR;
		}
		if (r == 0) {
			sbuf_add(&x->out, ": keep-alive\n\n", 14);
			continue;
		}
		if (r == 1) {
			sse_message(x, m);
			tern__v1__generate_response__free_unpacked(m, NULL);
			continue;
		}
		/* The call ended without its last message: an error, said in the
		 * stream, which then ends properly. */
		char detail[512];
		const int st = tern_held_finish(x->gs, detail, sizeof detail);
		x->gs = NULL;
		tern_metrics_req_fail(&x->mr, TERN_OUTCOME_ERROR);
		tern_oai_error e;
		tern_oai_error_from_status(st ? st : TERN_STATUS_INTERNAL, st ? detail : "the stream ended early", &e);
		sbuf_event(&x->out, tern_oai_error_json(&e));
		x->done = 1;
	}
}

static enum MHD_Result do_generate(tern_http_server *s, struct MHD_Connection *c, const req_ctx *rq, int chat)
{
	tern_oai_request r;
	tern_oai_error e;
	if (tern_oai_parse(rq->body ? rq->body : "", rq->len, chat, &r, &e) < 0) {
		tern_oai_request_free(&r);
		return reply_error(s, c, &e);
	}
	char id[48];
	make_id(id, sizeof id, chat ? "chatcmpl-" : "cmpl-");
	r.gen.request_id = id;
	const long long created = (long long)time(NULL);
	tern_metrics_req mr;
	tern_metrics_req_start(s->metrics, &mr);
	tern_held *gs;
	tern_err err;
	if (tern_held_start(s->o.supervisor, s->o.upstream, &r.gen, &gs, &err) < 0) {
		tern_oai_request_free(&r);
		tern_metrics_req_fail(&mr, TERN_OUTCOME_ERROR);
		return reply_err(s, c, 500, "server_error", NULL, err.msg);
	}
	const int stream = r.stream, include_usage = r.include_usage;
	tern_oai_logprobs *lp = r.gen.logprobs ? tern_oai_logprobs_new(chat) : NULL;
	const int lp_oom = r.gen.logprobs && !lp;
	tern_oai_request_free(&r);
	if (lp_oom) {
		char d[64];
		tern_held_finish(gs, d, sizeof d);
		tern_metrics_req_fail(&mr, TERN_OUTCOME_ERROR);
		return reply_text(s, c, 500, NULL, NULL);
	}
	const int fd = conn_fd(c);
	Tern__V1__GenerateResponse *m = NULL;
	int got = next_msg(gs, fd, 0, &mr, &m);
	if (got == -2) {
		char d[64];
		tern_held_finish(gs, d, sizeof d);
		tern_metrics_req_fail(&mr, TERN_OUTCOME_ABORT);
		tern_oai_logprobs_free(lp);
		return MHD_NO; /* the client left: close */
	}
	if (got == -1) {
		char detail[512];
		const int st = tern_held_finish(gs, detail, sizeof detail);
		tern_metrics_req_fail(&mr, TERN_OUTCOME_ERROR);
		tern_oai_logprobs_free(lp);
		tern_oai_error_from_status(st ? st : TERN_STATUS_INTERNAL, st ? detail : "no reply from the coordinator",
					   &e);
		return reply_error(s, c, &e);
	}
	if (stream) {
		sse_ctx *x = calloc(1, sizeof *x);
		if (!x) {
			tern__v1__generate_response__free_unpacked(m, NULL);
			char d[64];
			tern_held_finish(gs, d, sizeof d);
			tern_metrics_req_fail(&mr, TERN_OUTCOME_ERROR);
			tern_oai_logprobs_free(lp);
			return reply_text(s, c, 500, NULL, NULL);
		}
		*x = (sse_ctx){.srv = s, .fd = fd, .gs = gs, .chat = chat, .include_usage = include_usage, .first = 1,
			       .created = created, .pending = m, .lp = lp, .mr = mr};
		snprintf(x->id, sizeof x->id, "%s", id);
		struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_read, x,
									      sse_free);
		if (!resp) {
			tern_metrics_req_fail(&x->mr, TERN_OUTCOME_ERROR);
			sse_free(x);
			return MHD_NO;
		}
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
		enum MHD_Result q = queue(s, c, 200, resp);
		MHD_destroy_response(resp);
		return q;
	}
	/* Not streaming: collect the text, then one reply. */
	sbuf text = {0};
	Tern__V1__GenerateResponse *final = NULL;
	while (got == 1) {
		if (m->text)
			sbuf_add(&text, m->text, strlen(m->text));
		if (m->done) {
			final = m;
			break;
		}
		if (lp && tern_oai_logprobs_add(lp, m) < 0)
			text.oom = 1;
		tern__v1__generate_response__free_unpacked(m, NULL);
		got = next_msg(gs, fd, 0, &mr, &m);
	}
	if (got == -2) {
		char d[64];
		tern_held_finish(gs, d, sizeof d);
		free(text.p);
		tern_oai_logprobs_free(lp);
		tern_metrics_req_fail(&mr, TERN_OUTCOME_ABORT);
		return MHD_NO;
	}
	char detail[512];
	const int st = final ? end_call(&gs, detail, sizeof detail) : tern_held_finish(gs, detail, sizeof detail);
	if (final)
		tern_metrics_req_done(&mr, (int)final->finish_reason, final->usage);
	else
		tern_metrics_req_fail(&mr, TERN_OUTCOME_ERROR);
	enum MHD_Result q;
	if (!final) {
		tern_oai_error_from_status(st ? st : TERN_STATUS_INTERNAL, st ? detail : "the reply ended early", &e);
		q = reply_error(s, c, &e);
	} else if (text.oom) {
		q = reply_text(s, c, 500, NULL, NULL);
	} else {
		q = reply_text(s, c, 200,
			       tern_oai_completion_json(chat, id, created, s->model_id, text.p ? text.p : "", text.len,
							(int)final->finish_reason, final->usage, lp),
			       "application/json");
	}
	if (final)
		tern__v1__generate_response__free_unpacked(final, NULL);
	tern_oai_logprobs_free(lp);
	free(text.p);
	return q;
}

/* ---- the chat page -------------------------------------------------------------- */

static enum MHD_Result do_page(struct MHD_Connection *c)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(tern_page_chat_html_len, (void *)tern_page_chat_html,
								 MHD_RESPMEM_PERSISTENT);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
	MHD_add_response_header(r, "Content-Security-Policy", tern_page_chat_csp);
	MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
	MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
	/* A new tern-server may bring a new page: revalidate, never serve it stale. */
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
	enum MHD_Result q = MHD_queue_response(c, 200, r);
	MHD_destroy_response(r);
	return q;
}

/* ---- dispatch ---------------------------------------------------------------------- */

static int key_ok(const tern_http_server *s, struct MHD_Connection *c)
{
	if (!s->api_key)
		return 1;
	const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
	if (!h || strncasecmp(h, "Bearer ", 7))
		return 0;
	h += 7;
	const size_t n = strlen(h), k = strlen(s->api_key);
	/* Constant time in the key's content. */
	unsigned diff = (unsigned)(n != k);
	for (size_t i = 0; i < k; i++)
		diff |= (unsigned char)s->api_key[i] ^ (unsigned char)(i < n ? h[i] : 0);
	return diff == 0;
}

static enum MHD_Result reply_preflight(tern_http_server *s, struct MHD_Connection *c)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
	MHD_add_response_header(r, "Access-Control-Allow-Headers", "Authorization, Content-Type");
	MHD_add_response_header(r, "Access-Control-Max-Age", "600");
	const enum MHD_Result q = queue(s, c, MHD_HTTP_NO_CONTENT, r);
	MHD_destroy_response(r);
	return q;
}

static enum MHD_Result route(tern_http_server *s, struct MHD_Connection *c, const char *url, const char *method,
			     const req_ctx *rq)
{
	const int get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
	/* A browser's CORS preflight: no key is sent with it, none is asked. */
	if (!strcmp(method, "OPTIONS") && cors_origin(s, c))
		return reply_preflight(s, c);
	/* The page holds no data and the API it calls checks the key itself, so
	 * it is served without one (it asks for the key). */
	if (!strcmp(url, "/"))
		return get || !strcmp(method, "HEAD") ? do_page(c)
						     : reply_err(s, c, 405, "invalid_request_error", NULL, "use GET /");
	if (!strcmp(url, "/health"))
		return get ? do_health(s, c) : reply_err(s, c, 405, "invalid_request_error", NULL, "use GET /health");
	if (!key_ok(s, c))
		return reply_err(s, c, 401, "authentication_error", "invalid_api_key",
				 "missing or wrong API key (Authorization: Bearer <key>)");
	if (!strcmp(url, "/metrics"))
		return get ? do_metrics(s, c) : reply_err(s, c, 405, "invalid_request_error", NULL, "use GET /metrics");
	if (!strcmp(url, "/v1/models") || !strncmp(url, "/v1/models/", 11)) {
		if (!get)
			return reply_err(s, c, 405, "invalid_request_error", NULL, "use GET");
		return do_models(s, c, url[10] == '/' ? url + 11 : NULL);
	}
	const int chat = !strcmp(url, "/v1/chat/completions");
	if (chat || !strcmp(url, "/v1/completions"))
		return post ? do_generate(s, c, rq, chat) : reply_err(s, c, 405, "invalid_request_error", NULL, "use POST");
	if (!strcmp(url, "/tokenize"))
		return post ? do_tokenize(s, c, rq) : reply_err(s, c, 405, "invalid_request_error", NULL, "use POST");
	if (!strcmp(url, "/detokenize"))
		return post ? do_detokenize(s, c, rq) : reply_err(s, c, 405, "invalid_request_error", NULL, "use POST");
	return reply_err(s, c, 404, "invalid_request_error", NULL, "no such endpoint");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
				  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
	tern_http_server *s = cls;
	req_ctx *rq = *con_cls;
	if (!rq) {
		rq = calloc(1, sizeof *rq);
		if (!rq)
			return MHD_NO;
		*con_cls = rq;
		/* A body past the limit is read and dropped, then refused with 413:
		 * a client still sending would see a reset connection instead of
		 * the status. Past TERN_HTTP_DRAIN_FACTOR times the limit it is cut. */
		const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
		const unsigned long long n = cl ? strtoull(cl, NULL, 10) : 0;
		if (n > s->o.max_body)
			rq->too_big = 1;
		/* Not worth reading at all: the status now, then the connection closes. */
		if (n > TERN_HTTP_DRAIN_FACTOR * (unsigned long long)s->o.max_body)
			return reply_err(s, c, 413, "invalid_request_error", NULL, "the request body is too large");
		return MHD_YES;
	}
	if (*upload_size) {
		rq->seen += *upload_size;
		if (rq->seen > TERN_HTTP_DRAIN_FACTOR * s->o.max_body)
			return MHD_NO;
		if (!rq->too_big) {
			if (rq->len + *upload_size > s->o.max_body) {
				rq->too_big = 1;
			} else {
				if (rq->len + *upload_size + 1 > rq->cap) {
					size_t cap = rq->cap ? rq->cap : 4096;
					while (cap < rq->len + *upload_size + 1)
						cap *= 2;
					char *nb = realloc(rq->body, cap);
					if (!nb)
						return MHD_NO;
					rq->body = nb;
					rq->cap = cap;
				}
				memcpy(rq->body + rq->len, upload, *upload_size);
				rq->len += *upload_size;
				rq->body[rq->len] = '\0';
			}
		}
		*upload_size = 0;
		return MHD_YES;
	}
	if (rq->too_big)
		return reply_err(s, c, 413, "invalid_request_error", NULL, "the request body is too large");
	return route(s, c, url, method, rq);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
	req_ctx *rq = *con_cls;
	if (rq) {
		free(rq->body);
		free(rq);
		*con_cls = NULL;
	}
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char line[512];
	vsnprintf(line, sizeof line, fmt, ap);
	line[strcspn(line, "\n")] = '\0';
	tern_log(TERN_LOG_DEBUG, "http", "%s", line);
}

int tern_http_start(const tern_http_opts *o, tern_http_server **out, tern_err *err)
{
	*out = NULL;
	const char *listen = o->listen ? o->listen : "127.0.0.1:8080";
	char host[256];
	char port[64];
	if (tern_split_host_port(listen, host, sizeof host, port, sizeof port) < 0 || listen[0] == ':')
		return TERN_ERR(err, TERN_EINVAL, "HTTP address '%s' is not HOST:PORT", listen);
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_NUMERICSERV | AI_PASSIVE},
			*ai = NULL;
	if (getaddrinfo(host, port, &hints, &ai) != 0 || !ai)
		return TERN_ERR(err, TERN_EINVAL, "HTTP address '%s': cannot resolve '%s' port '%s'", listen, host,
				port);
	tern_http_server *s = calloc(1, sizeof *s);
	if (!s) {
		freeaddrinfo(ai);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	}
	s->o = *o;
	if (!s->o.max_body)
		s->o.max_body = 4u << 20;
	if (!s->o.max_connections)
		s->o.max_connections = 2048;
	if (!s->o.idle_timeout_s)
		s->o.idle_timeout_s = 300;
	snprintf(s->model_id, sizeof s->model_id, "%s", o->model_id ? o->model_id : "tern");
	s->api_key = o->api_key ? strdup(o->api_key) : NULL;
	s->o.api_key = s->api_key;
	s->cors = o->cors_origin ? strdup(o->cors_origin) : NULL;
	s->o.cors_origin = s->cors;
	s->metrics = o->metrics ? o->metrics : tern_metrics_create();
	if (!s->metrics || (o->api_key && !s->api_key) || (o->cors_origin && !s->cors)) {
		freeaddrinfo(ai);
		tern_http_stop(s);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	}
	s->started = (long long)time(NULL);
	unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
			 MHD_USE_POLL | MHD_USE_ITC;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	struct MHD_OptionItem tls[3] = {{MHD_OPTION_END, 0, NULL}, {MHD_OPTION_END, 0, NULL}, {MHD_OPTION_END, 0, NULL}};
	if (o->tls_cert_file || o->tls_key_file) {
		size_t n;
		int rc = (!o->tls_cert_file || !o->tls_key_file)
				 ? TERN_ERR(err, TERN_EINVAL, "TLS needs both a certificate and a key")
			 : MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES
				 ? TERN_ERR(err, TERN_EINVAL, "this libmicrohttpd has no TLS")
				 : 0;
		if (rc == 0)
			rc = tern_read_file(o->tls_cert_file, 1u << 20, &s->tls_cert, &n, err);
		if (rc == 0)
			rc = tern_read_file(o->tls_key_file, 1u << 20, &s->tls_key, &n, err);
		if (rc < 0) {
			freeaddrinfo(ai);
			tern_http_stop(s);
			return rc;
		}
		flags |= MHD_USE_TLS;
		tls[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, s->tls_cert};
		tls[1] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, s->tls_key};
	}
	s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
				MHD_OPTION_CONNECTION_LIMIT, s->o.max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
				s->o.idle_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
				MHD_OPTION_PER_IP_CONNECTION_LIMIT, s->o.max_connections,
				MHD_OPTION_THREAD_STACK_SIZE, (size_t)(512 * 1024), MHD_OPTION_NOTIFY_COMPLETED,
				on_completed, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s, MHD_OPTION_ARRAY, tls,
				MHD_OPTION_END);
	freeaddrinfo(ai);
	if (!s->d) {
		tern_http_stop(s);
		return TERN_ERR(err, TERN_EIO, "cannot listen on %s (address in use, not this machine's, or a bad TLS "
					       "certificate or key)",
				listen);
	}
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
	s->port = di ? di->port : 0;
	*out = s;
	return 0;
}

int tern_http_port(const tern_http_server *s)
{
	return s->port;
}

void tern_http_quiesce(tern_http_server *s)
{
	if (s && s->d)
		MHD_quiesce_daemon(s->d);
}

void tern_http_stop(tern_http_server *s)
{
	if (!s)
		return;
	if (s->d)
		MHD_stop_daemon(s->d);
	if (s->metrics != s->o.metrics)
		tern_metrics_free(s->metrics);
	free(s->api_key);
	free(s->tls_cert);
	free(s->tls_key);
	free(s->cors);
	free(s);
}
