/* http.c: tern-server's HTTP front end on libmicrohttpd (tern-http.h).
 *
 * Three kinds of thread, none per connection. libmicrohttpd's epoll thread
 * runs the access handler: it reads the body (bounded), answers what needs
 * no call, and suspends the connection for the rest. A generation goes to
 * the event loop (loop_main, one thread over a gRPC completion queue): it
 * opens the held call there (a held call belongs to the queue's thread, so
 * the handler posts it to an inbox and wakes the loop with tern_grpc_wake),
 * formats each message into the connection's buffer and resumes the
 * connection; the SSE reader takes the buffer and suspends the connection
 * again when it is empty. The loop's tick watches the sockets of suspended
 * connections (libmicrohttpd does not), so a client that leaves has its call
 * cancelled, and cancels everything at stop, which resumes every connection
 * before MHD_stop_daemon. The blocking unary handlers run on workers, their
 * reply kept (queue() under tl_defer) until the connection is resumed. A
 * request is answered with a status only once the coordinator has either
 * admitted it (the first message arrived) or refused it, so a refused stream
 * is a plain JSON error with the right status, never a 200 that fails. */
#include "tern-http.h"

#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
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

typedef struct gen_ctx gen_ctx;
typedef struct req_ctx req_ctx;

struct tern_http_server {
	struct MHD_Daemon *d;
	/* The event loop (one thread): every generation's held call. */
	void *cq;
	pthread_t loop, workers[TERN_HTTP_WORKERS];
	int loop_started, n_workers;
	tern_cq_tag wake_tag;
	pthread_mutex_t mu; /* all below, and each gen_ctx's shared fields */
	pthread_cond_t idle, jobs_cv, loop_cv;
	int sleeping; /* the loop waits on loop_cv, off the queue (nothing can come on it) */
	int mu_ok;
	gen_ctx *inbox;        /* posted by libmicrohttpd's thread, newest first */
	gen_ctx *live;         /* the loop's: requests with a held call */
	int n_gen;             /* requests the loop holds (inbox included) */
	int wake_pending;      /* a wake tag is on the queue */
	int stopping, quit;    /* stop: end every call; then: shut the queue down */
	req_ctx *jobs, *jobs_tail; /* waiting for a worker */
	int n_jobs;            /* queued or running */
	int wquit;
	tern_http_opts o;
	char model_id[256];
	char *api_key;
	tern_metrics *metrics;
	char *tls_cert, *tls_key; /* PEM texts, with --tls-cert/--tls-key */
	char *cors;               /* o.cors_origin's copy */
	long long started;
	int port;
};

enum { JOB_NONE, JOB_HEALTH, JOB_METRICS, JOB_TOKENIZE, JOB_DETOKENIZE, JOB_READY, JOB_DONE };

struct req_ctx {
	char *body; /* (cap) */
	size_t len, cap;
	size_t seen; /* body bytes received, kept or not */
	int too_big;
	gen_ctx *g; /* a generation's (one reference) */
	/* A worker's job: its kind, then JOB_READY with the reply. */
	int job;
	struct MHD_Connection *c;
	req_ctx *next_job;
	unsigned rstatus;
	struct MHD_Response *resp;
};

/* On a worker: the request whose reply queue() keeps for libmicrohttpd's
 * thread to send once the connection is resumed. */
static _Thread_local req_ctx *tl_defer;

/* After queue(): a reply kept for later stays alive. */
static void drop_response(struct MHD_Response *r)
{
	if (!tl_defer || tl_defer->resp != r)
		MHD_destroy_response(r);
}

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
	if (tl_defer) {
		tl_defer->rstatus = status;
		tl_defer->resp = r;
		return MHD_YES;
	}
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
		drop_response(r);
		return q;
	}
	struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	enum MHD_Result q = queue(s, c, status, r);
	drop_response(r);
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
	drop_response(r);
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

/* ---- the event loop: generation without a thread per connection ---------------- */

/* A Generate request's state. The loop thread owns the held call and the
 * metrics; the fields under srv->mu are shared with libmicrohttpd's thread,
 * which suspends the connection while there is nothing to send and is
 * resumed by the loop. */
struct gen_ctx {
	tern_http_server *srv;
	struct MHD_Connection *c;
	int fd;
	int chat, stream, include_usage;
	char id[48];
	long long created;
	gen_ctx *next, *prev; /* the inbox (next only), then the loop's list */
	/* the loop's */
	tern_oai_request r; /* until the call is opened */
	tern_held *h;
	tern_metrics_req mr;
	tern_oai_logprobs *lp;
	sbuf text;                         /* not streaming: the text so far */
	Tern__V1__GenerateResponse *final; /* not streaming: the last message */
	double last_out;                   /* when the stream last got bytes (keep-alive) */
	int role_sent, cancelling;
	/* under srv->mu */
	sbuf out; /* SSE bytes not yet taken by the reader, from off */
	size_t off;
	int answered;  /* the status is decided: 200 with a stream, or the error */
	int done;      /* no more bytes will come */
	int ended;     /* the held call has ended */
	int gone;      /* the client left while suspended: close */
	int mhd_gone;  /* libmicrohttpd let go of the request before the end */
	int suspended; /* libmicrohttpd's connection waits for a resume */
	int refs;      /* the request, the SSE response, the loop */
	int has_error;
	tern_oai_error e; /* has_error: the reply */
	char *reply;      /* not streaming: the completion's JSON (NULL: out of memory) */
};

static void gen_free(gen_ctx *g)
{
	if (g->h)
		return; /* cannot happen: the loop holds a ref while the call runs */
	tern_oai_request_free(&g->r);
	tern_oai_logprobs_free(g->lp);
	if (g->final)
		tern__v1__generate_response__free_unpacked(g->final, NULL);
	free(g->text.p);
	free(g->out.p);
	free(g->reply);
	free(g);
}

/* Under srv->mu: drops one reference. */
static void gen_unref_locked(gen_ctx *g)
{
	if (--g->refs == 0)
		gen_free(g);
}

static void resume_locked(gen_ctx *g)
{
	if (g->suspended) {
		g->suspended = 0;
		MHD_resume_connection(g->c);
	}
}

/* Any thread: the loop looks at its inbox soon. */
static void loop_wake(tern_http_server *s)
{
	pthread_mutex_lock(&s->mu);
	const int post = !s->wake_pending && !s->quit && !s->sleeping;
	if (post)
		s->wake_pending = 1;
	if (s->sleeping)
		pthread_cond_signal(&s->loop_cv);
	pthread_mutex_unlock(&s->mu);
	if (post)
		tern_grpc_wake(s->o.upstream, s->cq, &s->wake_tag);
}

static void on_wake(tern_cq_tag *t, int ok)
{
	(void)ok;
	tern_http_server *s = TERN_CQ_OWNER(t, tern_http_server, wake_tag);
	pthread_mutex_lock(&s->mu);
	s->wake_pending = 0;
	pthread_mutex_unlock(&s->mu);
}

/* Loop: the loop's reference goes (the request is over for the loop). */
static void loop_release_locked(gen_ctx *g)
{
	tern_http_server *s = g->srv;
	if (--s->n_gen == 0)
		pthread_cond_broadcast(&s->idle);
	gen_unref_locked(g);
}

/* Appends the events for one message of the call (loop, under srv->mu). */
static void sse_message(gen_ctx *x, Tern__V1__GenerateResponse *m)
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
	tern_metrics_req_done(&x->mr, (int)m->finish_reason, m->usage);
	sbuf_event(&x->out, tern_oai_chunk_json(x->chat, x->id, x->created, model, 0, "", 0, (int)m->finish_reason,
						x->lp));
	if (x->include_usage)
		sbuf_event(&x->out, tern_oai_usage_chunk_json(x->chat, x->id, x->created, model, m->usage));
	sbuf_add(&x->out, "data: [DONE]\n\n", 14);
	x->done = 1;
}

/* Loop: a message of the held call. */
static void gen_msg(void *ctx, Tern__V1__GenerateResponse *m)
{
	gen_ctx *g = ctx;
	g->last_out = tern_now_s();
	if (!m->done)
		tern_metrics_req_token(&g->mr);
	if (!g->stream) {
		if (m->text)
			sbuf_add(&g->text, m->text, strlen(m->text));
		if (m->done && !g->final) {
			g->final = m;
			return;
		}
		if (g->lp && !m->done && tern_oai_logprobs_add(g->lp, m) < 0)
			g->text.oom = 1;
		tern__v1__generate_response__free_unpacked(m, NULL);
		return;
	}
	tern_http_server *s = g->srv;
	pthread_mutex_lock(&s->mu);
	if (!g->done) {
		g->answered = 1;
		/* The first chunk carries the role (chat) before any text. */
		if (g->chat && !g->role_sent) {
			g->role_sent = 1;
			sbuf_event(&g->out, tern_oai_chunk_json(1, g->id, g->created, s->model_id, 1, "", 0, -1, NULL));
		}
		sse_message(g, m);
		resume_locked(g);
	}
	pthread_mutex_unlock(&s->mu);
	tern__v1__generate_response__free_unpacked(m, NULL);
}

static void live_remove(gen_ctx *g)
{
	tern_http_server *s = g->srv;
	if (g->prev)
		g->prev->next = g->next;
	else
		s->live = g->next;
	if (g->next)
		g->next->prev = g->prev;
	g->next = g->prev = NULL;
}

/* Loop: the held call ended (h is gone). */
static void gen_end(void *ctx, int status, const char *detail)
{
	gen_ctx *g = ctx;
	tern_http_server *s = g->srv;
	g->h = NULL;
	live_remove(g);
	pthread_mutex_lock(&s->mu);
	if (g->gone || g->mhd_gone)
		tern_metrics_req_fail(&g->mr, TERN_OUTCOME_ABORT); /* a no-op after the last message */
	const char *why = status ? detail : NULL;
	if (g->stream && g->done) {
		if (status != 0 && status != TERN_STATUS_CANCELLED)
			tern_log(TERN_LOG_WARN, "http", "stream %s: status %s after its last message: %s", g->id,
				 tern_grpc_status_name(status), detail);
	} else if (g->stream && g->answered) {
		/* The call ended without its last message: an error, said in the
		 * stream, which then ends properly. */
		tern_metrics_req_fail(&g->mr, TERN_OUTCOME_ERROR);
		tern_oai_error e;
		tern_oai_error_from_status(status ? status : TERN_STATUS_INTERNAL, why ? why : "the stream ended early",
					   &e);
		sbuf_event(&g->out, tern_oai_error_json(&e));
	} else if (!g->stream && g->final) {
		tern_metrics_req_done(&g->mr, (int)g->final->finish_reason, g->final->usage);
		if (!g->text.oom)
			g->reply = tern_oai_completion_json(g->chat, g->id, g->created, s->model_id,
							    g->text.p ? g->text.p : "", g->text.len,
							    (int)g->final->finish_reason, g->final->usage, g->lp);
	} else {
		tern_metrics_req_fail(&g->mr, TERN_OUTCOME_ERROR);
		tern_oai_error_from_status(status ? status : TERN_STATUS_INTERNAL,
					   why ? why
					   : g->stream ? "no reply from the coordinator"
						       : "the reply ended early",
					   &g->e);
		g->has_error = 1;
	}
	g->answered = g->done = g->ended = 1;
	resume_locked(g);
	loop_release_locked(g);
	pthread_mutex_unlock(&s->mu);
}

/* Loop: a request from the inbox; its call starts here (a held call belongs
 * to the loop's thread). */
static void gen_open(gen_ctx *g)
{
	tern_http_server *s = g->srv;
	pthread_mutex_lock(&s->mu);
	const int stopping = s->stopping;
	pthread_mutex_unlock(&s->mu);
	tern_err err;
	int rc = -1;
	if (stopping) {
		tern_oai_error_set(&g->e, 503, "server_error", NULL, "the server is stopping");
	} else {
		const tern_held_cb cb = {g, gen_msg, gen_end};
		rc = tern_held_open(s->o.supervisor, s->o.upstream, &g->r.gen, s->cq, &cb, &g->h, &err);
		if (rc < 0)
			tern_oai_error_set(&g->e, 500, "server_error", NULL, "%s", err.msg);
	}
	tern_oai_request_free(&g->r);
	g->last_out = tern_now_s();
	if (rc == 0) {
		g->next = s->live;
		if (s->live)
			s->live->prev = g;
		s->live = g;
		return;
	}
	pthread_mutex_lock(&s->mu);
	tern_metrics_req_fail(&g->mr, TERN_OUTCOME_ERROR);
	g->has_error = g->answered = g->done = g->ended = 1;
	resume_locked(g);
	loop_release_locked(g);
	pthread_mutex_unlock(&s->mu);
}

/* Loop, every TERN_SERVICE_TICK_MS: clients that left (libmicrohttpd does
 * not watch a suspended connection's socket), keep-alives, the held calls
 * waiting for the job, and the stop. */
static void loop_tick(tern_http_server *s)
{
	const double now = tern_now_s();
	gen_ctx *next;
	for (gen_ctx *g = s->live; g; g = next) {
		next = g->next; /* g may be freed below */
		pthread_mutex_lock(&s->mu);
		int cancel = s->stopping || g->mhd_gone;
		if (!cancel && g->suspended && client_gone(g->fd))
			cancel = g->gone = 1;
		if (!cancel && g->stream && g->answered && !g->done && now - g->last_out >= TERN_HTTP_KEEPALIVE_S) {
			sbuf_add(&g->out, ": keep-alive\n\n", 14);
			g->last_out = now;
			resume_locked(g);
		}
		pthread_mutex_unlock(&s->mu);
		if (cancel && !g->cancelling) {
			g->cancelling = 1;
			tern_held_cancel(g->h); /* may end g here */
		} else if (!cancel) {
			tern_held_tick(g->h);
		}
	}
}

static void *loop_main(void *arg)
{
	tern_http_server *s = arg;
	double next_tick = tern_now_s() + TERN_SERVICE_TICK_MS / 1000.0;
	int shut = 0;
	for (;;) {
		pthread_mutex_lock(&s->mu);
		/* Nothing can come on the queue: sleep off it. A thread waiting in
		 * grpc_completion_queue_next takes its turn at the process's one
		 * poller and hands the gRPC server's I/O over to that loop's thread,
		 * a wake-up per message; an idle HTTP side costs the relay nothing. */
		while (!s->live && !s->inbox && !s->wake_pending && !s->quit) {
			s->sleeping = 1;
			pthread_cond_wait(&s->loop_cv, &s->mu);
			s->sleeping = 0;
		}
		gen_ctx *in = s->inbox;
		s->inbox = NULL;
		const int quit = s->quit && !s->wake_pending;
		pthread_mutex_unlock(&s->mu);
		/* The inbox is newest first: open the oldest first. */
		gen_ctx *rev = NULL;
		while (in) {
			gen_ctx *n = in->next;
			in->next = rev;
			rev = in;
			in = n;
		}
		while (rev) {
			gen_ctx *n = rev->next;
			rev->next = NULL;
			gen_open(rev);
			rev = n;
		}
		const double now = tern_now_s();
		if (now >= next_tick) {
			loop_tick(s);
			next_tick = now + TERN_SERVICE_TICK_MS / 1000.0;
		}
		if (quit && !shut) {
			tern_grpc_cq_shutdown(s->cq);
			shut = 1;
		}
		if (tern_grpc_cq_run(s->cq, TERN_SERVICE_TICK_MS) < 0)
			break;
	}
	return NULL;
}

/* ---- libmicrohttpd's side of a generation ----------------------------------------- */

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	(void)pos;
	gen_ctx *g = cls;
	tern_http_server *s = g->srv;
	pthread_mutex_lock(&s->mu);
	ssize_t r;
	if (g->out.oom || g->gone) {
		r = MHD_CONTENT_READER_END_WITH_ERROR;
	} else if (g->off < g->out.len) {
		size_t n = g->out.len - g->off;
		if (n > max)
			n = max;
		memcpy(buf, g->out.p + g->off, n);
		g->off += n;
		if (g->off == g->out.len)
			g->off = g->out.len = 0;
		r = (ssize_t)n;
	} else if (g->done) {
		r = MHD_CONTENT_READER_END_OF_STREAM;
	} else {
		/* Nothing yet: the loop resumes the connection when there is. */
		g->suspended = 1;
		MHD_suspend_connection(g->c);
		r = 0;
	}
	pthread_mutex_unlock(&s->mu);
	return r;
}

/* libmicrohttpd lets go of g (the response or the request). */
static void gen_let_go(gen_ctx *g)
{
	tern_http_server *s = g->srv;
	pthread_mutex_lock(&s->mu);
	if (!g->done)
		g->mhd_gone = 1; /* the loop cancels the call at its next tick */
	gen_unref_locked(g);
	pthread_mutex_unlock(&s->mu);
}

static void sse_free(void *cls)
{
	gen_let_go(cls);
}

static enum MHD_Result do_generate(tern_http_server *s, struct MHD_Connection *c, req_ctx *rq, int chat)
{
	/* Parsed in place: the request points into itself. */
	gen_ctx *g = calloc(1, sizeof *g);
	if (!g)
		return reply_text(s, c, 500, NULL, NULL);
	tern_oai_request *r = &g->r;
	tern_oai_error e;
	if (tern_oai_parse(rq->body ? rq->body : "", rq->len, chat, r, &e) < 0) {
		gen_free(g);
		return reply_error(s, c, &e);
	}
	tern_oai_logprobs *lp = r->gen.logprobs ? tern_oai_logprobs_new(chat) : NULL;
	if (r->gen.logprobs && !lp) {
		gen_free(g);
		return reply_text(s, c, 500, NULL, NULL);
	}
	g->srv = s;
	g->c = c;
	g->fd = conn_fd(c);
	g->chat = chat;
	g->stream = r->stream;
	g->include_usage = r->include_usage;
	g->created = (long long)time(NULL);
	g->lp = lp;
	make_id(g->id, sizeof g->id, chat ? "chatcmpl-" : "cmpl-");
	r->gen.request_id = g->id;
	g->refs = 2; /* the request's and the loop's */
	tern_metrics_req_start(s->metrics, &g->mr);
	pthread_mutex_lock(&s->mu);
	if (s->stopping) {
		pthread_mutex_unlock(&s->mu);
		tern_metrics_req_fail(&g->mr, TERN_OUTCOME_ERROR);
		gen_free(g);
		return reply_err(s, c, 503, "server_error", NULL, "the server is stopping");
	}
	/* The status waits for the coordinator: its first message (200) or its
	 * refusal. */
	rq->g = g;
	g->suspended = 1;
	MHD_suspend_connection(c);
	g->next = s->inbox;
	s->inbox = g;
	s->n_gen++;
	pthread_mutex_unlock(&s->mu);
	loop_wake(s);
	return MHD_YES;
}

/* The access handler again, after the loop resumed the connection. */
static enum MHD_Result gen_answer(tern_http_server *s, struct MHD_Connection *c, req_ctx *rq)
{
	gen_ctx *g = rq->g;
	pthread_mutex_lock(&s->mu);
	if (!g->answered) { /* woken early: wait on */
		g->suspended = 1;
		MHD_suspend_connection(c);
		pthread_mutex_unlock(&s->mu);
		return MHD_YES;
	}
	if (g->gone) {
		pthread_mutex_unlock(&s->mu);
		return MHD_NO; /* the client left: close */
	}
	if (g->has_error) {
		const tern_oai_error e = g->e;
		pthread_mutex_unlock(&s->mu);
		return reply_error(s, c, &e);
	}
	if (!g->stream) {
		char *text = g->reply;
		g->reply = NULL;
		pthread_mutex_unlock(&s->mu);
		return reply_text(s, c, 200, text, "application/json");
	}
	g->refs++; /* the response's */
	pthread_mutex_unlock(&s->mu);
	struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_read, g, sse_free);
	if (!resp) {
		sse_free(g);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
	enum MHD_Result q = queue(s, c, 200, resp);
	MHD_destroy_response(resp);
	return q;
}

/* ---- workers: the blocking handlers ------------------------------------------------ */

static void *worker_main(void *arg)
{
	tern_http_server *s = arg;
	pthread_mutex_lock(&s->mu);
	for (;;) {
		while (!s->jobs && !s->wquit)
			pthread_cond_wait(&s->jobs_cv, &s->mu);
		req_ctx *rq = s->jobs;
		if (!rq)
			break;
		s->jobs = rq->next_job;
		if (!s->jobs)
			s->jobs_tail = NULL;
		pthread_mutex_unlock(&s->mu);
		tl_defer = rq;
		switch (rq->job) {
		case JOB_HEALTH:
			do_health(s, rq->c);
			break;
		case JOB_METRICS:
			do_metrics(s, rq->c);
			break;
		case JOB_TOKENIZE:
			do_tokenize(s, rq->c, rq);
			break;
		default:
			do_detokenize(s, rq->c, rq);
			break;
		}
		tl_defer = NULL;
		pthread_mutex_lock(&s->mu);
		rq->job = JOB_READY;
		MHD_resume_connection(rq->c);
		if (--s->n_jobs == 0)
			pthread_cond_broadcast(&s->idle);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

/* Hands a blocking handler to a worker; the connection waits suspended. */
static enum MHD_Result defer_job(tern_http_server *s, struct MHD_Connection *c, req_ctx *rq, int job)
{
	rq->job = job;
	rq->c = c;
	rq->next_job = NULL;
	pthread_mutex_lock(&s->mu);
	MHD_suspend_connection(c);
	if (s->jobs_tail)
		s->jobs_tail->next_job = rq;
	else
		s->jobs = rq;
	s->jobs_tail = rq;
	s->n_jobs++;
	pthread_cond_signal(&s->jobs_cv);
	pthread_mutex_unlock(&s->mu);
	return MHD_YES;
}

/* The access handler again, after the worker resumed the connection. */
static enum MHD_Result job_answer(tern_http_server *s, struct MHD_Connection *c, req_ctx *rq)
{
	rq->job = JOB_DONE;
	struct MHD_Response *r = rq->resp;
	rq->resp = NULL;
	if (!r)
		return MHD_NO;
	const enum MHD_Result q = queue(s, c, rq->rstatus, r);
	MHD_destroy_response(r);
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
			     req_ctx *rq)
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
		return get ? defer_job(s, c, rq, JOB_HEALTH) : reply_err(s, c, 405, "invalid_request_error", NULL, "use GET /health");
	if (!key_ok(s, c))
		return reply_err(s, c, 401, "authentication_error", "invalid_api_key",
				 "missing or wrong API key (Authorization: Bearer <key>)");
	if (!strcmp(url, "/metrics"))
		return get ? defer_job(s, c, rq, JOB_METRICS) : reply_err(s, c, 405, "invalid_request_error", NULL, "use GET /metrics");
	if (!strcmp(url, "/v1/models") || !strncmp(url, "/v1/models/", 11)) {
		if (!get)
			return reply_err(s, c, 405, "invalid_request_error", NULL, "use GET");
		return do_models(s, c, url[10] == '/' ? url + 11 : NULL);
	}
	const int chat = !strcmp(url, "/v1/chat/completions");
	if (chat || !strcmp(url, "/v1/completions"))
		return post ? do_generate(s, c, rq, chat) : reply_err(s, c, 405, "invalid_request_error", NULL, "use POST");
	if (!strcmp(url, "/tokenize"))
		return post ? defer_job(s, c, rq, JOB_TOKENIZE) : reply_err(s, c, 405, "invalid_request_error", NULL, "use POST");
	if (!strcmp(url, "/detokenize"))
		return post ? defer_job(s, c, rq, JOB_DETOKENIZE) : reply_err(s, c, 405, "invalid_request_error", NULL, "use POST");
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
	if (rq->g)
		return gen_answer(s, c, rq);
	if (rq->job == JOB_READY)
		return job_answer(s, c, rq);
	if (rq->job != JOB_NONE)
		return MHD_YES; /* cannot happen: a worker has it */
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
		if (rq->g)
			gen_let_go(rq->g);
		if (rq->resp)
			MHD_destroy_response(rq->resp);
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

/* The loop's thread and the workers. */
static int start_loop(tern_http_server *s, tern_err *err)
{
	if (pthread_mutex_init(&s->mu, NULL) != 0)
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	if (pthread_cond_init(&s->idle, NULL) != 0) {
		pthread_mutex_destroy(&s->mu);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	}
	if (pthread_cond_init(&s->loop_cv, NULL) != 0) {
		pthread_cond_destroy(&s->idle);
		pthread_mutex_destroy(&s->mu);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	}
	if (pthread_cond_init(&s->jobs_cv, NULL) != 0) {
		pthread_cond_destroy(&s->loop_cv);
		pthread_cond_destroy(&s->idle);
		pthread_mutex_destroy(&s->mu);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	}
	s->mu_ok = 1;
	s->wake_tag.done = on_wake;
	if (!(s->cq = tern_grpc_cq_create()))
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	if (pthread_create(&s->loop, NULL, loop_main, s) != 0)
		return TERN_ERR(err, TERN_EIO, "cannot start the HTTP event loop's thread");
	s->loop_started = 1;
	for (; s->n_workers < TERN_HTTP_WORKERS; s->n_workers++)
		if (pthread_create(&s->workers[s->n_workers], NULL, worker_main, s) != 0)
			return TERN_ERR(err, TERN_EIO, "cannot start the HTTP workers' threads");
	return 0;
}

static void stop_loop(tern_http_server *s)
{
	if (!s->mu_ok)
		return;
	pthread_mutex_lock(&s->mu);
	s->quit = 1;
	s->wquit = 1;
	pthread_cond_broadcast(&s->jobs_cv);
	pthread_cond_signal(&s->loop_cv);
	pthread_mutex_unlock(&s->mu);
	for (int i = 0; i < s->n_workers; i++)
		pthread_join(s->workers[i], NULL);
	if (s->loop_started) {
		pthread_join(s->loop, NULL); /* it shuts the queue down and drains it */
	} else if (s->cq) {
		tern_grpc_cq_shutdown(s->cq);
		while (tern_grpc_cq_run(s->cq, 1000) >= 0)
			;
	}
	if (s->cq)
		tern_grpc_cq_destroy(s->cq);
	pthread_cond_destroy(&s->jobs_cv);
	pthread_cond_destroy(&s->loop_cv);
	pthread_cond_destroy(&s->idle);
	pthread_mutex_destroy(&s->mu);
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
	if (start_loop(s, err) < 0) {
		freeaddrinfo(ai);
		tern_http_stop(s);
		return -1;
	}
	/* One thread polls every connection (epoll); a generation's connection
	 * is suspended while the loop has nothing for it. */
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
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
				MHD_OPTION_PER_IP_CONNECTION_LIMIT, s->o.max_connections, MHD_OPTION_NOTIFY_COMPLETED,
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
	if (s->mu_ok) {
		/* Every call ends and every suspended connection is resumed before
		 * libmicrohttpd stops (it cannot close a suspended one). */
		pthread_mutex_lock(&s->mu);
		s->stopping = 1;
		pthread_mutex_unlock(&s->mu);
		loop_wake(s);
		pthread_mutex_lock(&s->mu);
		while ((s->loop_started && s->n_gen > 0) || (s->n_workers && s->n_jobs > 0))
			pthread_cond_wait(&s->idle, &s->mu);
		pthread_mutex_unlock(&s->mu);
	}
	if (s->d)
		MHD_stop_daemon(s->d);
	stop_loop(s);
	if (s->metrics != s->o.metrics)
		tern_metrics_free(s->metrics);
	free(s->api_key);
	free(s->tls_cert);
	free(s->tls_key);
	free(s->cors);
	free(s);
}
