/* client-main.c: `tern`, the command-line client of a tern server (service
 * tern.v1.Tern over gRPC, C core + protobuf-c).
 *
 *   tern generate "prompt" [-n N] [--temp T] ...   stream a completion
 *   tern chat                                      interactive, keeps the conversation
 *   tern tokenize "text"                           token ids and pieces
 *   tern health | tern stats
 * Common: --server ADDR (default 127.0.0.1:50051), --json, --token-file F,
 * --tls-ca F (TLS with that root certificate), --timeout S.
 * Exit status: 0 on success, 1 when the server returns an error status (the
 * status name and reason go to stderr), 2 on bad usage. */
#include <getopt.h>
#include <grpc/grpc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern-api.h"
#include "tern-base.h"
#include "tern-grpc-client.h"
#include "tern.pb-c.h"

typedef struct client_opts {
	const char *server;
	int json;
	const char *token_file;
	const char *tls_ca;
	double timeout;
	uint32_t max_tokens;
	float temp, top_p, min_p, rep;
	uint32_t top_k;
	int has_seed;
	uint64_t seed;
	const char *stops[16];
	int n_stops;
	int ignore_eos;
	int quiet_stats;
} client_opts;

typedef struct conn {
	tern_grpc_client *cl;
	double timeout;
} conn;

static int conn_open(conn *c, const client_opts *o)
{
	memset(c, 0, sizeof *c);
	c->timeout = o->timeout;
	char *token = NULL;
	tern_err err;
	if (o->token_file && !(token = tern_read_first_line(o->token_file, &err))) {
		fprintf(stderr, "tern: cannot read a token: %s\n", err.msg);
		return -1;
	}
	tern_grpc_client_opts go = {.target = o->server, .bearer_token = token, .tls_ca_file = o->tls_ca};
	const int rc = tern_grpc_client_open(&go, &c->cl, &err);
	free(token);
	if (rc < 0) {
		fprintf(stderr, "tern: %s\n", err.msg);
		return -1;
	}
	return 0;
}

static void conn_close(conn *c)
{
	tern_grpc_client_close(c->cl);
}

typedef void (*on_msg_fn)(void *ctx, const uint8_t *p, size_t n);

/* One call: sends req, hands every response message to on_msg, returns the
 * final status (details into detail). */
static grpc_status_code call(conn *c, const char *method, const ProtobufCMessage *req, on_msg_fn on_msg, void *ctx,
			     char *detail, size_t detail_len)
{
	return (grpc_status_code)tern_grpc_call(c->cl, method, req, c->timeout, on_msg, ctx, detail, detail_len);
}

/* ---- generate / chat ------------------------------------------------------- */

typedef struct gen_ctx {
	int json;
	char *text; /* accumulated reply (chat keeps it) */
	size_t len, cap;
	Tern__V1__GenerateResponse *final;
} gen_ctx;

static void on_gen(void *vctx, const uint8_t *p, size_t n)
{
	gen_ctx *g = vctx;
	Tern__V1__GenerateResponse *m = tern__v1__generate_response__unpack(NULL, n, p);
	if (!m)
		return;
	const size_t tl = strlen(m->text);
	if (g->len + tl + 1 > g->cap) {
		size_t cap = (g->cap + tl + 1) * 2;
		char *nt = realloc(g->text, cap);
		if (nt) {
			g->text = nt;
			g->cap = cap;
		}
	}
	if (g->len + tl + 1 <= g->cap) {
		memcpy(g->text + g->len, m->text, tl);
		g->len += tl;
		g->text[g->len] = '\0';
	}
	if (g->json) {
		json_t *j = json_object();
		if (m->done) {
			json_object_set_new(j, "done", json_true());
			json_object_set_new(j, "text", tern_api_json_text(m->text, strlen(m->text)));
			json_object_set_new(j, "finish_reason", json_string(tern_api_finish_reason_name(m->finish_reason)));
			json_object_set_new(j, "seed", json_integer((json_int_t)m->seed));
			if (m->usage) {
				json_object_set_new(j, "prompt_tokens", json_integer(m->usage->prompt_tokens));
				json_object_set_new(j, "completion_tokens", json_integer(m->usage->completion_tokens));
				json_object_set_new(j, "time_to_first_token_s", json_real(m->usage->time_to_first_token_s));
				json_object_set_new(j, "decode_tokens_per_s", json_real(m->usage->decode_tokens_per_s));
			}
		} else {
			json_object_set_new(j, "token_id", json_integer(m->token_id));
			json_object_set_new(j, "index", json_integer(m->index));
			json_object_set_new(j, "text", tern_api_json_text(m->text, strlen(m->text)));
		}
		tern_api_json_line(stdout, j);
	} else {
		fputs(m->text, stdout);
	}
	fflush(stdout);
	if (m->done) {
		if (g->final)
			tern__v1__generate_response__free_unpacked(g->final, NULL);
		g->final = m;
	} else {
		tern__v1__generate_response__free_unpacked(m, NULL);
	}
}

static void fill_request(const client_opts *o, Tern__V1__GenerateRequest *r, Tern__V1__SamplingParams *sp)
{
	tern__v1__sampling_params__init(sp);
	sp->temperature = o->temp;
	sp->top_k = o->top_k;
	sp->top_p = o->top_p;
	sp->min_p = o->min_p;
	sp->repetition_penalty = o->rep;
	sp->has_seed = o->has_seed;
	sp->seed = o->seed;
	r->sampling = sp;
	r->max_tokens = o->max_tokens;
	r->n_stop = (size_t)o->n_stops;
	r->stop = (char **)o->stops;
	r->ignore_eos = o->ignore_eos;
}

static int report_status(grpc_status_code st, const char *detail)
{
	if (st == GRPC_STATUS_OK)
		return 0;
	fprintf(stderr, "tern: %s: %s\n", tern_grpc_status_name(st), detail[0] ? detail : "(no details)");
	return 1;
}

static int do_generate(conn *c, const client_opts *o, const char *prompt)
{
	Tern__V1__GenerateRequest r = TERN__V1__GENERATE_REQUEST__INIT;
	Tern__V1__SamplingParams sp;
	fill_request(o, &r, &sp);
	r.prompt = (char *)prompt;
	gen_ctx g = {.json = o->json};
	char detail[1024];
	grpc_status_code st = call(c, "/tern.v1.Tern/Generate", &r.base, on_gen, &g, detail, sizeof detail);
	if (!o->json && st == GRPC_STATUS_OK) {
		printf("\n");
		fflush(stdout);
		if (g.final && g.final->usage && !o->quiet_stats)
			fprintf(stderr, "[%u prompt + %u generated tokens, first token %.3f s, %.2f tokens/s, %s]\n",
				g.final->usage->prompt_tokens, g.final->usage->completion_tokens,
				g.final->usage->time_to_first_token_s, g.final->usage->decode_tokens_per_s,
				tern_api_finish_reason_name(g.final->finish_reason));
	}
	if (g.final)
		tern__v1__generate_response__free_unpacked(g.final, NULL);
	free(g.text);
	return report_status(st, detail);
}

static int do_chat(conn *c, const client_opts *o)
{
	Tern__V1__ChatMessage **msgs = NULL;
	size_t n = 0;
	char line[8192];
	int rc = 0;
	if (!o->json)
		fprintf(stderr, "tern chat: type a message, end with Ctrl-D\n");
	for (;;) {
		if (!o->json) {
			fputs("> ", stdout);
			fflush(stdout);
		}
		if (!fgets(line, sizeof line, stdin))
			break;
		line[strcspn(line, "\r\n")] = '\0';
		if (!line[0])
			continue;
		Tern__V1__ChatMessage **nm = realloc(msgs, (n + 2) * sizeof *nm);
		if (!nm)
			break;
		msgs = nm;
		Tern__V1__ChatMessage *u = malloc(sizeof *u);
		if (!u)
			break;
		tern__v1__chat_message__init(u);
		u->role = strdup("user");
		u->content = strdup(line);
		msgs[n++] = u;
		Tern__V1__GenerateRequest r = TERN__V1__GENERATE_REQUEST__INIT;
		Tern__V1__SamplingParams sp;
		fill_request(o, &r, &sp);
		r.n_messages = n;
		r.messages = msgs;
		gen_ctx g = {.json = o->json};
		char detail[1024];
		grpc_status_code st = call(c, "/tern.v1.Tern/Generate", &r.base, on_gen, &g, detail, sizeof detail);
		if (!o->json)
			printf("\n");
		if (g.final)
			tern__v1__generate_response__free_unpacked(g.final, NULL);
		if (st != GRPC_STATUS_OK) {
			free(g.text);
			rc = report_status(st, detail);
			break;
		}
		/* The reply joins the conversation. */
		Tern__V1__ChatMessage *a = malloc(sizeof *a);
		if (!a) {
			free(g.text);
			break;
		}
		tern__v1__chat_message__init(a);
		a->role = strdup("assistant");
		a->content = g.text ? g.text : strdup("");
		msgs[n++] = a;
	}
	for (size_t i = 0; i < n; i++) {
		free(msgs[i]->role);
		free(msgs[i]->content);
		free(msgs[i]);
	}
	free(msgs);
	return rc;
}

/* ---- tokenize / health / stats --------------------------------------------- */

static int do_unary(conn *c, const client_opts *o, const char *what, const char *text)
{
	char detail[1024];
	int st;
	if (!strcmp(what, "tokenize")) {
		Tern__V1__TokenizeRequest q = TERN__V1__TOKENIZE_REQUEST__INIT;
		q.text = (char *)text;
		q.add_bos = 1;
		Tern__V1__TokenizeResponse *t = (Tern__V1__TokenizeResponse *)tern_grpc_unary(
			c->cl, "/tern.v1.Tern/Tokenize", &q.base, c->timeout, &tern__v1__tokenize_response__descriptor,
			&st, detail, sizeof detail);
		if (t) {
			json_t *ids = json_array(), *pieces = json_array();
			for (size_t i = 0; i < t->n_token_ids; i++) {
				const char *piece = i < t->n_pieces ? t->pieces[i] : "";
				if (o->json) {
					json_array_append_new(ids, json_integer(t->token_ids[i]));
					json_array_append_new(pieces, tern_api_json_text(piece, strlen(piece)));
				} else {
					json_t *qs = tern_api_json_text(piece, strlen(piece));
					printf("%6u  ", t->token_ids[i]);
					json_dumpf(qs, stdout, JSON_ENCODE_ANY);
					json_decref(qs);
					printf("\n");
				}
			}
			if (o->json) {
				json_t *j = json_object();
				json_object_set_new(j, "token_ids", ids);
				json_object_set_new(j, "pieces", pieces);
				tern_api_json_line(stdout, j);
			} else {
				json_decref(ids);
				json_decref(pieces);
			}
			tern__v1__tokenize_response__free_unpacked(t, NULL);
		}
	} else if (!strcmp(what, "health")) {
		Tern__V1__HealthRequest q = TERN__V1__HEALTH_REQUEST__INIT;
		Tern__V1__HealthResponse *h = (Tern__V1__HealthResponse *)tern_grpc_unary(
			c->cl, "/tern.v1.Tern/Health", &q.base, c->timeout, &tern__v1__health_response__descriptor, &st,
			detail, sizeof detail);
		if (h) {
			if (o->json) {
				json_t *j = json_object(), *stages = json_array();
				json_object_set_new(j, "ready", json_boolean(h->ready));
				json_object_set_new(j, "stages_up", json_integer(h->stages_up));
				json_object_set_new(j, "stages_total", json_integer(h->stages_total));
				json_object_set_new(j, "model", tern_api_json_text(h->model, strlen(h->model)));
				json_object_set_new(j, "version", tern_api_json_text(h->version, strlen(h->version)));
				for (size_t i = 0; i < h->n_stages; i++) {
					const Tern__V1__StageStatus *sh = h->stages[i];
					json_t *x = json_object();
					json_object_set_new(x, "stage", json_integer(sh->stage));
					json_object_set_new(x, "host", tern_api_json_text(sh->host, strlen(sh->host)));
					json_object_set_new(x, "binding", tern_api_json_text(sh->binding, strlen(sh->binding)));
					json_object_set_new(x, "first_layer", json_integer(sh->first_layer));
					json_object_set_new(x, "last_layer", json_integer(sh->last_layer));
					json_object_set_new(x, "up", json_boolean(sh->up));
					json_array_append_new(stages, x);
				}
				json_object_set_new(j, "stages", stages);
				tern_api_json_line(stdout, j);
			} else {
				printf("%s: %u/%u stages up, model %s (%s)\n", h->ready ? "ready" : "NOT READY",
				       h->stages_up, h->stages_total, h->model, h->version);
				for (size_t i = 0; i < h->n_stages; i++)
					printf("  stage %u  layers %u..%u  on %s  %s  %s\n", h->stages[i]->stage,
					       h->stages[i]->first_layer, h->stages[i]->last_layer, h->stages[i]->host,
					       h->stages[i]->binding, h->stages[i]->up ? "up" : "down");
			}
			if (!h->ready)
				st = GRPC_STATUS_UNAVAILABLE, snprintf(detail, sizeof detail, "server not ready");
			tern__v1__health_response__free_unpacked(h, NULL);
		}
	} else {
		Tern__V1__StatsRequest q = TERN__V1__STATS_REQUEST__INIT;
		Tern__V1__StatsResponse *s = (Tern__V1__StatsResponse *)tern_grpc_unary(
			c->cl, "/tern.v1.Tern/Stats", &q.base, c->timeout, &tern__v1__stats_response__descriptor, &st,
			detail, sizeof detail);
		if (s) {
			if (o->json) {
				json_t *j = json_object(), *stages = json_array();
				json_object_set_new(j, "queue_depth", json_integer(s->queue_depth));
				json_object_set_new(j, "queue_limit", json_integer(s->queue_limit));
				json_object_set_new(j, "active_sequences", json_integer(s->active_sequences));
				json_object_set_new(j, "kv_slots_free", json_integer(s->kv_slots_free));
				json_object_set_new(j, "kv_slots_total", json_integer(s->kv_slots_total));
				json_object_set_new(j, "decode_tokens_per_s", json_real(s->decode_tokens_per_s));
				json_object_set_new(j, "prefill_tokens_per_s", json_real(s->prefill_tokens_per_s));
				json_object_set_new(j, "requests_total", json_integer((json_int_t)s->requests_total));
				json_object_set_new(j, "requests_rejected", json_integer((json_int_t)s->requests_rejected));
				json_object_set_new(j, "requests_cancelled", json_integer((json_int_t)s->requests_cancelled));
				json_object_set_new(j, "tokens_generated", json_integer((json_int_t)s->tokens_generated));
				json_object_set_new(j, "uptime_s", json_real(s->uptime_s));
				for (size_t i = 0; i < s->n_stages; i++) {
					json_t *x = json_object();
					json_object_set_new(x, "stage", json_integer(s->stages[i]->stage));
					json_object_set_new(x, "mean_step_ms", json_real(s->stages[i]->mean_step_ms));
					json_object_set_new(x, "busy_fraction", json_real(s->stages[i]->busy_fraction));
					json_array_append_new(stages, x);
				}
				json_object_set_new(j, "stages", stages);
				tern_api_json_line(stdout, j);
			} else {
				printf("queue %u/%u, %u active, KV slots %u free of %u, decode %.2f tok/s, prefill %.2f "
				       "tok/s\nrequests %llu (rejected %llu, cancelled %llu), %llu tokens generated, up "
				       "%.1f s\n",
				       s->queue_depth, s->queue_limit, s->active_sequences, s->kv_slots_free,
				       s->kv_slots_total, s->decode_tokens_per_s, s->prefill_tokens_per_s,
				       (unsigned long long)s->requests_total, (unsigned long long)s->requests_rejected,
				       (unsigned long long)s->requests_cancelled, (unsigned long long)s->tokens_generated,
				       s->uptime_s);
				for (size_t i = 0; i < s->n_stages; i++)
					printf("  stage %u: %.3f ms per micro-batch, busy %.1f%%\n", s->stages[i]->stage,
					       s->stages[i]->mean_step_ms, 100 * s->stages[i]->busy_fraction);
			}
			tern__v1__stats_response__free_unpacked(s, NULL);
		}
	}
	return report_status((grpc_status_code)st, detail);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: tern COMMAND [options]\n"
		   "  generate \"PROMPT\"   stream a completion\n"
		   "  chat                interactive conversation (stdin lines)\n"
		   "  tokenize \"TEXT\"     token ids and pieces\n"
		   "  health | stats\n"
		   "options: --server ADDR (default 127.0.0.1:50051)  --json  --token-file F  --tls-ca F\n"
		   "         --timeout S (default 300)  -n N  --temp T  --top-k K  --top-p P  --min-p P\n"
		   "         --repeat-penalty R  --seed S  --stop STR (repeatable)  --ignore-eos  -q (no summary)\n");
}

enum {
	OPT_SERVER = 256,
	OPT_JSON,
	OPT_IGNORE_EOS,
	OPT_TOKEN_FILE,
	OPT_TLS_CA,
	OPT_TIMEOUT,
	OPT_TEMP,
	OPT_TOP_K,
	OPT_TOP_P,
	OPT_MIN_P,
	OPT_REPEAT_PENALTY,
	OPT_SEED,
	OPT_STOP,
};

int main(int argc, char **argv)
{
	static const struct option long_opts[] = {
		{"help", no_argument, NULL, 'h'},
		{"server", required_argument, NULL, OPT_SERVER},
		{"json", no_argument, NULL, OPT_JSON},
		{"ignore-eos", no_argument, NULL, OPT_IGNORE_EOS},
		{"token-file", required_argument, NULL, OPT_TOKEN_FILE},
		{"tls-ca", required_argument, NULL, OPT_TLS_CA},
		{"timeout", required_argument, NULL, OPT_TIMEOUT},
		{"temp", required_argument, NULL, OPT_TEMP},
		{"top-k", required_argument, NULL, OPT_TOP_K},
		{"top-p", required_argument, NULL, OPT_TOP_P},
		{"min-p", required_argument, NULL, OPT_MIN_P},
		{"repeat-penalty", required_argument, NULL, OPT_REPEAT_PENALTY},
		{"seed", required_argument, NULL, OPT_SEED},
		{"stop", required_argument, NULL, OPT_STOP},
		{NULL, 0, NULL, 0},
	};
	client_opts o = {.server = "127.0.0.1:50051", .timeout = 300};
	const char *cmd = NULL, *text = NULL;
	tern_err err;
	tern_err_clear(&err);
	opterr = 0;
	int oc;
	while ((oc = getopt_long(argc, argv, ":hqn:", long_opts, NULL)) != -1) {
		const char *v = optarg;
		int rc = 0, n = 0;
		switch (oc) {
		case 'h':
			usage(stdout);
			return 0;
		case OPT_SERVER:
			o.server = v;
			break;
		case OPT_JSON:
			o.json = 1;
			break;
		case 'q':
			o.quiet_stats = 1;
			break;
		case OPT_IGNORE_EOS:
			o.ignore_eos = 1;
			break;
		case OPT_TOKEN_FILE:
			o.token_file = v;
			break;
		case OPT_TLS_CA:
			o.tls_ca = v;
			break;
		case OPT_TIMEOUT:
			rc = tern_parse_double(v, 0.001, 1e7, "--timeout", &o.timeout, &err);
			break;
		case 'n':
			rc = tern_parse_int(v, 1, 1 << 22, "-n", &n, &err);
			o.max_tokens = (uint32_t)n;
			break;
		case OPT_TEMP:
			rc = tern_parse_float(v, 0, 100, "--temp", &o.temp, &err);
			break;
		case OPT_TOP_K:
			rc = tern_parse_int(v, 0, 1000000000, "--top-k", &n, &err);
			o.top_k = (uint32_t)n;
			break;
		case OPT_TOP_P:
			rc = tern_parse_float(v, 0, 1, "--top-p", &o.top_p, &err);
			break;
		case OPT_MIN_P:
			rc = tern_parse_float(v, 0, 1, "--min-p", &o.min_p, &err);
			break;
		case OPT_REPEAT_PENALTY:
			rc = tern_parse_float(v, 0, 100, "--repeat-penalty", &o.rep, &err);
			break;
		case OPT_SEED:
			rc = tern_parse_uint64(v, "--seed", &o.seed, &err);
			o.has_seed = 1;
			break;
		case OPT_STOP:
			if (o.n_stops == 16)
				return tern_opt_bad("tern", "at most 16 --stop strings");
			o.stops[o.n_stops++] = v;
			break;
		default:
			return tern_opt_fail("tern", oc, argv);
		}
		if (rc < 0)
			return tern_opt_bad("tern", err.msg);
	}
	for (int i = optind; i < argc; i++) {
		if (!cmd) {
			cmd = argv[i];
		} else if (!text) {
			text = argv[i];
		} else {
			fprintf(stderr, "tern: unexpected argument '%s'\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	if (!cmd) {
		usage(stderr);
		return 2;
	}
	const int need_text = !strcmp(cmd, "generate") || !strcmp(cmd, "tokenize");
	const int known = need_text || !strcmp(cmd, "chat") || !strcmp(cmd, "health") || !strcmp(cmd, "stats");
	if (!known || (need_text && !text)) {
		fprintf(stderr, known ? "tern: %s needs its text argument\n" : "tern: unknown command '%s'\n", cmd);
		usage(stderr);
		return 2;
	}
	conn c;
	if (conn_open(&c, &o) < 0) {
		conn_close(&c);
		return 2;
	}
	int rc;
	if (!strcmp(cmd, "generate"))
		rc = do_generate(&c, &o, text);
	else if (!strcmp(cmd, "chat"))
		rc = do_chat(&c, &o);
	else
		rc = do_unary(&c, &o, cmd, text);
	conn_close(&c);
	return rc;
}
