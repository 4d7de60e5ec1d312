/* sched.c: continuous batching over a pipeline (see tern-sched.h).
 *
 * Threads: the gRPC thread calls the service functions (generate, cancel,
 * tokenize, health, stats); they touch only the admission queue, cancel
 * flags and counters, under s->mu. Everything else — slots, micro-batches,
 * sampling, the sinks' piece()/done() — runs on the scheduler thread. */
#include "tern-sched.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern-perplexity.h"
#include "tern-sampling.h"
#include "tern-step.h"

#define MAX_STAGE_MS 64

typedef struct seq {
	uint64_t handle;
	int slot;                  /* -1 while queued */
	int32_t *tok;              /* (cap_tok) prompt then generated tokens */
	int n_tok, cap_tok;
	int n_prompt;
	int n_done;                /* positions already in the KV cache */
	int n_gen;
	int max_tokens;
	int ignore_eos;
	int score;                 /* score_prompt: sum the NLL of prompt tokens */
	double nll_sum;
	int n_scored;
	int in_flight;
	atomic_int cancelled;      /* set by cancel() (gRPC thread), read by the scheduler */
	tern_sampler *sampler;
	tern_step *step;           /* detokenizer, stop strings, EOS and length */
	tern_gen_sink sink;
	double t_submit, t_admit, t_first, t_last;
	char request_id[128];
	struct seq *next;          /* admission queue / live list link */
} seq;

typedef struct mb_entry {
	seq *q;
	int n_rows;
	int last_row;   /* index of its last row in the micro-batch */
	int logits;     /* its last row needs logits (to sample) */
	int pos0;       /* position of its first row */
	int dead;       /* cancelled: read once per result, so the passes agree */
} mb_entry;

typedef struct micro_batch {
	uint64_t id;
	int n_rows;
	int n_seqs;
	mb_entry *e;    /* (n_slots) */
} micro_batch;

struct tern_sched {
	tern_sched_config cfg;
	tern_sched_backend be;
	tern_service svc;

	pthread_mutex_t mu;
	pthread_cond_t cv;
	int queue_len;                /* live requests waiting for a slot */
	seq *live;                    /* every seq the scheduler knows (queued or active) */
	uint64_t next_handle;
	volatile sig_atomic_t stop;
	int failed;                   /* back end failed: new requests UNAVAILABLE */
	int n_active;

	/* Scheduler-thread state. */
	seq **slot_seq;               /* (n_slots) */
	int rr;                       /* round-robin start for fairness */
	micro_batch *mbs;             /* (max_in_flight) ring */
	int mb_head, mb_count;
	uint64_t next_mb;
	tern_row *rows;               /* (max_rows) */
	int32_t *row_tok;             /* (max_rows) */
	float *hidden;                /* (max_rows, n_embd) */
	float *gathered;              /* (n_slots, n_embd) */
	float *logits;                /* (n_slots, n_vocab) */
	double last_progress;

	/* Stats (under mu). */
	double t_start;
	uint64_t requests_total, requests_rejected, requests_cancelled, tokens_generated;
	double win_t0;                /* decode/prefill rate window */
	uint64_t win_decode, win_prefill;
	double rate_decode, rate_prefill;
	double stage_ms_sum[MAX_STAGE_MS];
	uint64_t stage_ms_n;
	int n_stage_ms;
	double busy_since;
};

/* ---- sequences ----------------------------------------------------------- */

static void seq_free(seq *q)
{
	if (!q)
		return;
	free(q->tok);
	tern_sampler_free(q->sampler);
	tern_step_free(q->step);
	free(q);
}

static int seq_push_token(seq *q, int32_t t)
{
	if (q->n_tok == q->cap_tok) {
		int cap = q->cap_tok ? q->cap_tok * 2 : 64;
		int32_t *nt = realloc(q->tok, (size_t)cap * sizeof *nt);
		if (!nt)
			return TERN_ENOMEM;
		q->tok = nt;
		q->cap_tok = cap;
	}
	q->tok[q->n_tok++] = t;
	return 0;
}

static void live_remove(tern_sched *s, seq *q)
{
	for (seq **p = &s->live; *p; p = &(*p)->next) {
		if (*p == q) {
			*p = q->next;
			return;
		}
	}
}

/* Ends q: the final message (with tail, the text the generation step held
 * back until the end) or an error status, then forgets it. Called on the
 * scheduler thread with s->mu NOT held. */
static void seq_finish_text(tern_sched *s, seq *q, Tern__V1__FinishReason reason, int status, const char *details,
			    const char *tail, size_t tail_len)
{
	const double now = tern_now_s();
	char *text = NULL;
	if (tail_len && status == TERN_STATUS_OK) {
		text = malloc(tail_len + 1);
		if (text) {
			memcpy(text, tail, tail_len);
			text[tail_len] = '\0';
		}
	}
	Tern__V1__Usage usage = TERN__V1__USAGE__INIT;
	usage.prompt_tokens = (uint32_t)q->n_prompt;
	usage.completion_tokens = (uint32_t)q->n_gen;
	usage.queue_s = (q->t_admit > 0 ? q->t_admit : now) - q->t_submit;
	usage.time_to_first_token_s = q->t_first > 0 ? q->t_first - q->t_submit : 0;
	usage.decode_tokens_per_s =
		(q->n_gen > 1 && q->t_last > q->t_first) ? (q->n_gen - 1) / (q->t_last - q->t_first) : 0;
	Tern__V1__GenerateResponse fin = TERN__V1__GENERATE_RESPONSE__INIT;
	fin.done = 1;
	fin.finish_reason = reason;
	fin.usage = &usage;
	fin.seed = q->sampler ? tern_sampler_seed(q->sampler) : 0;
	fin.request_id = q->request_id;
	fin.text = text ? text : (char *)"";
	fin.index = (uint32_t)q->n_gen;
	fin.prompt_nll = q->nll_sum;
	fin.scored_tokens = (uint32_t)q->n_scored;
	q->sink.done(q->sink.ctx, status == TERN_STATUS_OK ? &fin : NULL, status, details);
	free(text);

	pthread_mutex_lock(&s->mu);
	if (q->slot >= 0) {
		s->slot_seq[q->slot] = NULL;
		s->n_active--;
	}
	if (reason == TERN__V1__FINISH_REASON__FINISH_REASON_CANCELLED)
		s->requests_cancelled++;
	live_remove(s, q);
	pthread_mutex_unlock(&s->mu);
	seq_free(q);
}

/* Ends q with nothing more to show (cancelled, failed, scored only). */
static void seq_finish(tern_sched *s, seq *q, Tern__V1__FinishReason reason, int status, const char *details)
{
	seq_finish_text(s, q, reason, status, details, NULL, 0);
}

/* ---- the service: called on the gRPC thread ----------------------------- */

/* Counts a rejection; msg already holds the reason. */
static int reject(tern_sched *s, int status)
{
	pthread_mutex_lock(&s->mu);
	s->requests_rejected++;
	pthread_mutex_unlock(&s->mu);
	return status;
}

static int svc_generate(void *self, const Tern__V1__GenerateRequest *req, const tern_gen_sink *sink, uint64_t *handle,
			char *msg, size_t msg_len)
{
	tern_sched *s = self;
	const tern_sched_config *c = &s->cfg;
	tern_err err;
	tern_err_clear(&err);
	const int has_prompt = req->prompt && req->prompt[0];
	const int n_inputs = has_prompt + (req->n_messages > 0) + (req->n_token_ids > 0);
	if (n_inputs != 1) {
		snprintf(msg, msg_len, "%s",
			 n_inputs == 0 ? "empty request: give a prompt, messages or token_ids"
				       : "give exactly one of prompt, messages, token_ids");
		return reject(s, TERN_STATUS_INVALID_ARGUMENT);
	}
	seq *q = calloc(1, sizeof *q);
	if (!q) {
		snprintf(msg, msg_len, "out of memory");
		return reject(s, TERN_STATUS_RESOURCE_EXHAUSTED);
	}
	q->slot = -1;
	q->t_submit = tern_now_s();
	snprintf(q->request_id, sizeof q->request_id, "%s", req->request_id ? req->request_id : "");
	int status = TERN_STATUS_OK;
	tern_tokens toks = {0};
	if (has_prompt || req->n_messages > 0) {
		char *text = NULL;
		size_t len = 0;
		unsigned flags = TERN_ENCODE_ADD_SPECIAL;
		if (has_prompt) {
			len = strlen(req->prompt);
			if (len > (size_t)c->max_prompt_bytes) {
				snprintf(msg, msg_len, "prompt of %zu bytes exceeds the limit of %d", len,
					 c->max_prompt_bytes);
				status = TERN_STATUS_INVALID_ARGUMENT;
			}
		} else {
			tern_chat_msg *m = calloc(req->n_messages, sizeof *m);
			size_t total = 0;
			for (size_t i = 0; m && i < req->n_messages; i++) {
				m[i].role = req->messages[i]->role ? req->messages[i]->role : "";
				m[i].content = req->messages[i]->content ? req->messages[i]->content : "";
				total += strlen(m[i].content);
			}
			if (!m) {
				status = TERN_STATUS_RESOURCE_EXHAUSTED;
				snprintf(msg, msg_len, "out of memory");
			} else if (total > (size_t)c->max_prompt_bytes) {
				snprintf(msg, msg_len, "messages of %zu bytes exceed the limit of %d", total,
					 c->max_prompt_bytes);
				status = TERN_STATUS_INVALID_ARGUMENT;
			} else if (tern_chat_render(c->chat_style, m, req->n_messages, 1, &text, &len, &err) < 0) {
				snprintf(msg, msg_len, "%s", err.msg);
				status = TERN_STATUS_INVALID_ARGUMENT;
			}
			free(m);
			flags |= TERN_ENCODE_PARSE_SPECIAL;
		}
		if (status == TERN_STATUS_OK &&
		    tern_tokenizer_encode(c->tok, has_prompt ? req->prompt : text, len, flags, &toks, &err) < 0) {
			snprintf(msg, msg_len, "%s", err.msg);
			status = TERN_STATUS_INVALID_ARGUMENT;
		}
		free(text);
		if (status == TERN_STATUS_OK && toks.n == 0) {
			snprintf(msg, msg_len, "the prompt encodes to no tokens");
			status = TERN_STATUS_INVALID_ARGUMENT;
		}
		for (size_t i = 0; status == TERN_STATUS_OK && i < toks.n; i++)
			if (seq_push_token(q, toks.ids[i]) < 0)
				status = TERN_STATUS_RESOURCE_EXHAUSTED;
		tern_tokens_free(&toks);
	} else {
		for (size_t i = 0; status == TERN_STATUS_OK && i < req->n_token_ids; i++) {
			if (req->token_ids[i] >= (uint32_t)c->n_vocab) {
				snprintf(msg, msg_len, "token id %u is outside the vocabulary of %d", req->token_ids[i],
					 c->n_vocab);
				status = TERN_STATUS_INVALID_ARGUMENT;
			} else if (seq_push_token(q, (int32_t)req->token_ids[i]) < 0) {
				status = TERN_STATUS_RESOURCE_EXHAUSTED;
			}
		}
	}
	q->n_prompt = q->n_tok;
	q->score = req->score_prompt;
	/* A scoring request with max_tokens 0 generates nothing. */
	q->max_tokens = req->max_tokens ? (int)req->max_tokens : (q->score ? 0 : c->default_max_tokens);
	if (status == TERN_STATUS_OK && req->max_tokens > (uint32_t)c->n_ctx) {
		snprintf(msg, msg_len, "max_tokens %u exceeds the context of %d", req->max_tokens, c->n_ctx);
		status = TERN_STATUS_INVALID_ARGUMENT;
	}
	const int need = req->max_tokens ? q->max_tokens : (q->score ? 0 : 1);
	if (status == TERN_STATUS_OK && q->n_prompt + need > c->n_ctx) {
		snprintf(msg, msg_len, "prompt of %d tokens + max_tokens %d exceeds the context of %d", q->n_prompt,
			 need, c->n_ctx);
		status = TERN_STATUS_INVALID_ARGUMENT;
	}
	if (status == TERN_STATUS_OK && q->n_prompt + q->max_tokens > c->n_ctx)
		q->max_tokens = c->n_ctx - q->n_prompt; /* the default shrinks to fit */
	q->ignore_eos = req->ignore_eos;

	/* Sampling: unset fields are off; temperature 0 is greedy. */
	tern_sampling_params sp;
	tern_sampling_params_default(&sp);
	const Tern__V1__SamplingParams *rp = req->sampling;
	sp.temperature = rp ? rp->temperature : 0.0f;
	sp.top_k = rp ? (int32_t)(rp->top_k > 1u << 30 ? 1u << 30 : rp->top_k) : 0;
	sp.top_p = rp && rp->top_p != 0.0f ? rp->top_p : 1.0f;
	sp.min_p = rp ? rp->min_p : 0.0f;
	sp.repeat_penalty = rp && rp->repetition_penalty != 0.0f ? rp->repetition_penalty : 1.0f;
	sp.repeat_last_n = rp && rp->repetition_window ? (int32_t)(rp->repetition_window > 1048576 ? 1048577
											       : rp->repetition_window)
						       : 64;
	sp.presence_penalty = rp ? rp->presence_penalty : 0.0f;
	sp.frequency_penalty = rp ? rp->frequency_penalty : 0.0f;
	sp.seed = rp && rp->has_seed ? rp->seed : TERN_SEED_RANDOM;
	if (status == TERN_STATUS_OK && tern_sampler_create(&sp, c->n_vocab, &q->sampler, &err) < 0) {
		snprintf(msg, msg_len, "%s", err.msg);
		status = err.code == TERN_ENOMEM ? TERN_STATUS_RESOURCE_EXHAUSTED : TERN_STATUS_INVALID_ARGUMENT;
	}
	for (int i = 0; status == TERN_STATUS_OK && i < q->n_prompt; i++)
		tern_sampler_accept(q->sampler, q->tok[i]);
	if (status == TERN_STATUS_OK) {
		for (size_t i = 0; i < req->n_stop; i++) {
			if (!req->stop[i] || !req->stop[i][0] || strlen(req->stop[i]) > 1024) {
				snprintf(msg, msg_len, "stop string %zu is empty or longer than 1024 bytes", i);
				status = TERN_STATUS_INVALID_ARGUMENT;
			}
		}
		if (req->n_stop > 16) {
			snprintf(msg, msg_len, "%zu stop strings: at most 16", req->n_stop);
			status = TERN_STATUS_INVALID_ARGUMENT;
		}
	}
	if (status == TERN_STATUS_OK) {
		/* Replies carry text as protobuf strings: invalid UTF-8 becomes U+FFFD. */
		const tern_step_config stc = {.tok = c->tok,
					      .decode_flags = TERN_DECODE_REPLACE_INVALID,
					      .stops = (const char *const *)req->stop,
					      .n_stops = req->n_stop,
					      .max_tokens = q->max_tokens,
					      .ignore_eos = q->ignore_eos};
		if (tern_step_create(&stc, &q->step, &err) < 0) {
			snprintf(msg, msg_len, "%s", err.msg);
			status = TERN_STATUS_RESOURCE_EXHAUSTED;
		}
	}
	if (status != TERN_STATUS_OK) {
		seq_free(q);
		return reject(s, status);
	}
	q->sink = *sink;

	pthread_mutex_lock(&s->mu);
	if (s->failed || s->stop) {
		pthread_mutex_unlock(&s->mu);
		seq_free(q);
		snprintf(msg, msg_len, "the pipeline is down");
		return reject(s, TERN_STATUS_UNAVAILABLE);
	}
	if (s->queue_len >= c->queue_limit) {
		const int ql = s->queue_len;
		pthread_mutex_unlock(&s->mu);
		seq_free(q);
		snprintf(msg, msg_len, "admission queue full (%d waiting)", ql);
		return reject(s, TERN_STATUS_RESOURCE_EXHAUSTED);
	}
	q->handle = ++s->next_handle;
	*handle = q->handle;
	/* Every request joins the live list; queued ones are those without a
	 * slot, admitted oldest (smallest handle) first. */
	q->next = s->live;
	s->live = q;
	s->queue_len++;
	s->requests_total++;
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
	return TERN_STATUS_OK;
}

static void svc_cancel(void *self, uint64_t handle)
{
	tern_sched *s = self;
	pthread_mutex_lock(&s->mu);
	for (seq *q = s->live; q; q = q->next)
		if (q->handle == handle)
			atomic_store(&q->cancelled, 1);
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

static int svc_tokenize(void *self, const Tern__V1__TokenizeRequest *req, Tern__V1__TokenizeResponse *out, char *msg,
			size_t msg_len)
{
	tern_sched *s = self;
	tern_err err;
	const char *text = req->text ? req->text : "";
	const size_t len = strlen(text);
	if (len > (size_t)s->cfg.max_prompt_bytes) {
		snprintf(msg, msg_len, "text of %zu bytes exceeds the limit of %d", len, s->cfg.max_prompt_bytes);
		return TERN_STATUS_INVALID_ARGUMENT;
	}
	tern_tokens t = {0};
	unsigned flags = (req->add_bos ? TERN_ENCODE_ADD_SPECIAL : 0) | (req->parse_special ? TERN_ENCODE_PARSE_SPECIAL : 0);
	if (tern_tokenizer_encode(s->cfg.tok, text, len, flags, &t, &err) < 0) {
		snprintf(msg, msg_len, "%s", err.msg);
		return TERN_STATUS_INTERNAL;
	}
	out->n_token_ids = t.n;
	out->token_ids = malloc((t.n ? t.n : 1) * sizeof *out->token_ids);
	out->n_pieces = t.n;
	out->pieces = calloc(t.n ? t.n : 1, sizeof *out->pieces);
	if (!out->token_ids || !out->pieces) {
		tern_tokens_free(&t);
		snprintf(msg, msg_len, "out of memory");
		return TERN_STATUS_RESOURCE_EXHAUSTED;
	}
	for (size_t i = 0; i < t.n; i++) {
		out->token_ids[i] = (uint32_t)t.ids[i];
		size_t pl = 0;
		const char *p = tern_tokenizer_piece(s->cfg.tok, t.ids[i], 1, &pl);
		out->pieces[i] = malloc(pl + 1);
		if (out->pieces[i]) {
			memcpy(out->pieces[i], p ? p : "", pl);
			out->pieces[i][pl] = '\0';
		}
	}
	tern_tokens_free(&t);
	return TERN_STATUS_OK;
}

static int svc_health(void *self, Tern__V1__HealthResponse *out)
{
	tern_sched *s = self;
	pthread_mutex_lock(&s->mu);
	const int ok = !s->failed && !s->stop;
	pthread_mutex_unlock(&s->mu);
	const int n = s->be.n_stages;
	out->ready = ok;
	out->stages_total = (uint32_t)n;
	out->stages_up = ok ? (uint32_t)n : 0;
	out->model = (char *)(s->cfg.model_name ? s->cfg.model_name : "");
	out->version = (char *)"tern 0.1.0";
	out->n_stages = (size_t)n;
	out->stages = calloc(n > 0 ? (size_t)n : 1, sizeof *out->stages);
	const char *d = s->cfg.stage_desc;
	for (int i = 0; out->stages && i < n; i++) {
		Tern__V1__StageStatus *st = malloc(sizeof *st);
		if (!st) {
			out->n_stages = (size_t)i;
			break;
		}
		tern__v1__stage_status__init(st);
		st->stage = (uint32_t)(i + 1);
		st->up = ok;
		/* stage_desc lines: "host\tbinding\tfirst\tlast" */
		char host[128] = "", bind[256] = "";
		unsigned first = 0, last = 0;
		if (d && *d) {
			sscanf(d, "%127[^\t]\t%255[^\t]\t%u\t%u", host, bind, &first, &last);
			d = strchr(d, '\n');
			d = d ? d + 1 : NULL;
		}
		st->host = strdup(host);
		st->binding = strdup(bind);
		st->first_layer = first;
		st->last_layer = last;
		out->stages[i] = st;
	}
	return TERN_STATUS_OK;
}

static int svc_stats(void *self, Tern__V1__StatsResponse *out)
{
	tern_sched *s = self;
	pthread_mutex_lock(&s->mu);
	out->queue_depth = (uint32_t)s->queue_len;
	out->queue_limit = (uint32_t)s->cfg.queue_limit;
	out->active_sequences = (uint32_t)s->n_active;
	out->kv_slots_total = (uint32_t)s->cfg.n_slots;
	out->kv_slots_free = (uint32_t)(s->cfg.n_slots - s->n_active);
	out->decode_tokens_per_s = s->rate_decode;
	out->prefill_tokens_per_s = s->rate_prefill;
	out->requests_total = s->requests_total;
	out->requests_rejected = s->requests_rejected;
	out->requests_cancelled = s->requests_cancelled;
	out->tokens_generated = s->tokens_generated;
	out->uptime_s = tern_now_s() - s->t_start;
	const int n = s->n_stage_ms;
	out->stages = calloc(n > 0 ? (size_t)n : 1, sizeof *out->stages);
	out->n_stages = out->stages ? (size_t)n : 0;
	const double wall = tern_now_s() - s->busy_since;
	for (int i = 0; out->stages && i < n; i++) {
		Tern__V1__StageTiming *t = malloc(sizeof *t);
		if (!t) {
			out->n_stages = (size_t)i;
			break;
		}
		tern__v1__stage_timing__init(t);
		t->stage = (uint32_t)(i + 1);
		t->mean_step_ms = s->stage_ms_n ? s->stage_ms_sum[i] / (double)s->stage_ms_n : 0;
		t->busy_fraction = wall > 0 ? s->stage_ms_sum[i] * 1e-3 / wall : 0;
		out->stages[i] = t;
	}
	pthread_mutex_unlock(&s->mu);
	return TERN_STATUS_OK;
}

static int svc_detokenize(void *self, const Tern__V1__DetokenizeRequest *req, Tern__V1__DetokenizeResponse *out,
			  char *msg, size_t msg_len)
{
	tern_sched *s = self;
	tern_err err;
	if (req->n_token_ids > (size_t)s->cfg.max_prompt_bytes) {
		snprintf(msg, msg_len, "%zu token ids exceed the limit of %d", req->n_token_ids, s->cfg.max_prompt_bytes);
		return TERN_STATUS_INVALID_ARGUMENT;
	}
	int32_t *ids = malloc((req->n_token_ids ? req->n_token_ids : 1) * sizeof *ids);
	if (!ids) {
		snprintf(msg, msg_len, "out of memory");
		return TERN_STATUS_RESOURCE_EXHAUSTED;
	}
	for (size_t i = 0; i < req->n_token_ids; i++) {
		if (req->token_ids[i] >= (uint32_t)s->cfg.n_vocab) {
			snprintf(msg, msg_len, "token id %u is outside the vocabulary of %d", req->token_ids[i],
				 s->cfg.n_vocab);
			free(ids);
			return TERN_STATUS_INVALID_ARGUMENT;
		}
		ids[i] = (int32_t)req->token_ids[i];
	}
	size_t len;
	/* Replies carry text as protobuf strings: invalid UTF-8 becomes U+FFFD. */
	const unsigned flags = TERN_DECODE_REPLACE_INVALID | (req->special ? TERN_DECODE_SPECIAL : 0);
	const int rc = tern_tokenizer_decode(s->cfg.tok, ids, req->n_token_ids, flags, &out->text, &len, &err);
	free(ids);
	if (rc < 0) {
		out->text = NULL;
		snprintf(msg, msg_len, "%s", err.msg);
		return rc == TERN_ENOMEM ? TERN_STATUS_RESOURCE_EXHAUSTED : TERN_STATUS_INVALID_ARGUMENT;
	}
	return TERN_STATUS_OK;
}

static void svc_free_response(void *self, ProtobufCMessage *m)
{
	(void)self;
	if (m->descriptor == &tern__v1__detokenize_response__descriptor) {
		Tern__V1__DetokenizeResponse *r = (Tern__V1__DetokenizeResponse *)m;
		if (r->text != protobuf_c_empty_string)
			free(r->text);
	} else if (m->descriptor == &tern__v1__tokenize_response__descriptor) {
		Tern__V1__TokenizeResponse *r = (Tern__V1__TokenizeResponse *)m;
		for (size_t i = 0; r->pieces && i < r->n_pieces; i++)
			free(r->pieces[i]);
		free(r->pieces);
		free(r->token_ids);
	} else if (m->descriptor == &tern__v1__health_response__descriptor) {
		Tern__V1__HealthResponse *r = (Tern__V1__HealthResponse *)m;
		for (size_t i = 0; r->stages && i < r->n_stages; i++) {
			free(r->stages[i]->host);
			free(r->stages[i]->binding);
			free(r->stages[i]);
		}
		free(r->stages);
	} else if (m->descriptor == &tern__v1__stats_response__descriptor) {
		Tern__V1__StatsResponse *r = (Tern__V1__StatsResponse *)m;
		for (size_t i = 0; r->stages && i < r->n_stages; i++)
			free(r->stages[i]);
		free(r->stages);
	}
}

/* ---- the scheduler loop --------------------------------------------------- */

/* Oldest queued request (smallest handle), under s->mu. */
static seq *oldest_queued(tern_sched *s)
{
	seq *best = NULL;
	for (seq *q = s->live; q; q = q->next)
		if (q->slot < 0 && !atomic_load(&q->cancelled) && (!best || q->handle < best->handle))
			best = q;
	return best;
}

/* Admissions and cancellations that need no back end. Returns the list of
 * sequences to end as cancelled (linked through a temporary array). */
static int admit_and_reap(tern_sched *s, seq **reap, int max_reap)
{
	int n_reap = 0;
	pthread_mutex_lock(&s->mu);
	for (seq *q = s->live; q && n_reap < max_reap; q = q->next)
		if (atomic_load(&q->cancelled) && !q->in_flight)
			reap[n_reap++] = q;
	for (int i = 0; i < n_reap; i++)
		if (reap[i]->slot < 0)
			s->queue_len--;
	for (int slot = 0; slot < s->cfg.n_slots; slot++) {
		if (s->slot_seq[slot])
			continue;
		seq *q = oldest_queued(s);
		if (!q)
			break;
		q->slot = slot;
		q->t_admit = tern_now_s();
		s->slot_seq[slot] = q;
		s->queue_len--;
		s->n_active++;
	}
	pthread_mutex_unlock(&s->mu);
	return n_reap;
}

static void fail_all(tern_sched *s, const char *why)
{
	pthread_mutex_lock(&s->mu);
	s->failed = 1;
	pthread_mutex_unlock(&s->mu);
	for (;;) {
		pthread_mutex_lock(&s->mu);
		seq *q = s->live;
		if (q && q->slot < 0)
			s->queue_len--;
		pthread_mutex_unlock(&s->mu);
		if (!q)
			break;
		seq_finish(s, q, TERN__V1__FINISH_REASON__FINISH_REASON_ERROR, TERN_STATUS_UNAVAILABLE, why);
	}
}

/* Builds the next micro-batch from sequences that are active and not in
 * flight. Returns its row count (0: nothing to send). */
static int build_mb(tern_sched *s, micro_batch *mb)
{
	const tern_sched_config *c = &s->cfg;
	int ready = 0;
	for (int i = 0; i < c->n_slots; i++) {
		seq *q = s->slot_seq[i];
		if (q && !q->in_flight && !atomic_load(&q->cancelled))
			ready++;
	}
	if (!ready)
		return 0;
	/* Spread the ready sequences over the free pipeline places, so each
	 * micro-batch in flight carries a share and every stage stays busy. */
	const int free_places = s->be.max_in_flight - s->mb_count;
	const int per_mb = (ready + free_places - 1) / free_places;
	mb->n_rows = 0;
	mb->n_seqs = 0;
	for (int k = 0; k < c->n_slots && mb->n_seqs < per_mb; k++) {
		const int slot = (s->rr + k) % c->n_slots;
		seq *q = s->slot_seq[slot];
		if (!q || q->in_flight || atomic_load(&q->cancelled))
			continue;
		int n = q->n_tok - q->n_done;
		if (n > c->prefill_chunk)
			n = c->prefill_chunk;
		if (mb->n_rows + n > c->max_rows) {
			if (mb->n_rows > 0)
				continue;
			n = c->max_rows;
		}
		for (int r = 0; r < n; r++) {
			s->rows[mb->n_rows + r].slot = slot;
			s->rows[mb->n_rows + r].pos = q->n_done + r;
			s->row_tok[mb->n_rows + r] = q->tok[q->n_done + r];
		}
		mb_entry *e = &mb->e[mb->n_seqs++];
		e->q = q;
		e->n_rows = n;
		e->last_row = mb->n_rows + n - 1;
		e->pos0 = q->n_done;
		e->logits = q->n_done + n == q->n_tok && q->max_tokens > 0;
		mb->n_rows += n;
		q->in_flight = 1;
	}
	s->rr = (s->rr + 1) % c->n_slots;
	return mb->n_rows;
}

static Tern__V1__FinishReason finish_reason(tern_finish f)
{
	return f == TERN_FINISH_LENGTH ? TERN__V1__FINISH_REASON__FINISH_REASON_LENGTH
				       : TERN__V1__FINISH_REASON__FINISH_REASON_STOP;
}

/* Emits a sampled token of q through its generation step; ends q when the
 * step says so (the end-of-generation token itself is not streamed). */
static void take_token(tern_sched *s, seq *q, int32_t t)
{
	const double now = tern_now_s();
	if (q->t_first == 0)
		q->t_first = now;
	q->t_last = now;
	tern_err err;
	tern_step_out so;
	if (tern_step_token(q->step, t, &so, &err) < 0) {
		seq_finish(s, q, TERN__V1__FINISH_REASON__FINISH_REASON_ERROR, TERN_STATUS_INTERNAL, err.msg);
		return;
	}
	if (so.finish == TERN_FINISH_EOS) {
		seq_finish_text(s, q, finish_reason(so.finish), TERN_STATUS_OK, NULL, so.tail, so.tail_len);
		return;
	}
	if (seq_push_token(q, t) < 0) {
		seq_finish(s, q, TERN__V1__FINISH_REASON__FINISH_REASON_ERROR, TERN_STATUS_RESOURCE_EXHAUSTED,
			   "out of memory");
		return;
	}
	q->n_gen++;
	pthread_mutex_lock(&s->mu);
	s->tokens_generated++;
	s->win_decode++;
	pthread_mutex_unlock(&s->mu);
	Tern__V1__GenerateResponse m = TERN__V1__GENERATE_RESPONSE__INIT;
	m.token_id = (uint32_t)t;
	m.text = (char *)so.text; /* NUL-terminated by the step */
	m.index = (uint32_t)(q->n_gen - 1);
	m.request_id = q->request_id;
	q->sink.piece(q->sink.ctx, &m);
	if (so.finish == TERN_FINISH_NONE && q->n_tok >= s->cfg.n_ctx &&
	    tern_step_end(q->step, TERN_FINISH_LENGTH, &so, &err) < 0) {
		seq_finish(s, q, TERN__V1__FINISH_REASON__FINISH_REASON_ERROR, TERN_STATUS_INTERNAL, err.msg);
		return;
	}
	if (so.finish != TERN_FINISH_NONE)
		seq_finish_text(s, q, finish_reason(so.finish), TERN_STATUS_OK, NULL, so.tail, so.tail_len);
}

static int process_mb(tern_sched *s, micro_batch *mb, tern_err *err)
{
	const tern_sched_config *c = &s->cfg;
	/* A cancel may land while this runs: decide once which entries count,
	 * so the gathered rows and the logits rows stay in step. */
	for (int i = 0; i < mb->n_seqs; i++)
		mb->e[i].dead = atomic_load(&mb->e[i].q->cancelled);
	/* Scoring: every prompt row whose next token is known, through the head
	 * in blocks of n_slots rows (the buffers' size); the sampling rows are
	 * gathered after it, as both use the same buffers. */
	for (int i = 0; i < mb->n_seqs; i++) {
		mb_entry *e = &mb->e[i];
		seq *q = e->q;
		if (!q->score || e->dead)
			continue;
		for (int r0 = 0; r0 < e->n_rows; r0 += c->n_slots) {
			int nb = 0;
			for (int r = r0; r < e->n_rows && r < r0 + c->n_slots; r++) {
				if (e->pos0 + r + 1 >= q->n_prompt)
					break;
				memcpy(s->gathered + (size_t)nb * c->n_embd,
				       s->hidden + (size_t)(e->last_row - e->n_rows + 1 + r) * c->n_embd,
				       (size_t)c->n_embd * sizeof(float));
				nb++;
			}
			if (nb == 0)
				break;
			TERN_FORWARD_IF_ERROR(tern_head_logits(c->head, c->head_pool, s->gathered, nb, s->logits, err));
			for (int b = 0; b < nb; b++) {
				q->nll_sum += tern_perplexity_token_nll(s->logits + (size_t)b * c->n_vocab, c->n_vocab,
									q->tok[e->pos0 + r0 + b + 1]);
				q->n_scored++;
			}
		}
	}
	int nl = 0;
	int prefill = 0;
	for (int i = 0; i < mb->n_seqs; i++) {
		mb_entry *e = &mb->e[i];
		e->q->in_flight = 0;
		e->q->n_done += e->n_rows;
		if (e->n_rows > 1 || e->q->n_done <= e->q->n_prompt)
			prefill += e->n_rows;
		if (e->logits && !e->dead) {
			memcpy(s->gathered + (size_t)nl * c->n_embd, s->hidden + (size_t)e->last_row * c->n_embd,
			       (size_t)c->n_embd * sizeof(float));
			nl++;
		}
	}
	pthread_mutex_lock(&s->mu);
	s->win_prefill += (uint64_t)prefill;
	pthread_mutex_unlock(&s->mu);
	if (nl > 0)
		TERN_FORWARD_IF_ERROR(tern_head_logits(c->head, c->head_pool, s->gathered, nl, s->logits, err));
	int li = 0;
	for (int i = 0; i < mb->n_seqs; i++) {
		mb_entry *e = &mb->e[i];
		seq *q = e->q;
		if (e->dead)
			continue; /* reaped by admit_and_reap now that it is out of flight */
		if (q->max_tokens == 0 && q->n_done == q->n_tok) {
			/* scored, nothing to generate */
			seq_finish(s, q, TERN__V1__FINISH_REASON__FINISH_REASON_LENGTH, TERN_STATUS_OK, NULL);
			continue;
		}
		if (!e->logits)
			continue;
		int32_t t = 0;
		if (tern_sampler_sample(q->sampler, s->logits + (size_t)li * c->n_vocab, &t, err) < 0) {
			li++;
			seq_finish(s, q, TERN__V1__FINISH_REASON__FINISH_REASON_ERROR, TERN_STATUS_INTERNAL, err->msg);
			continue;
		}
		li++;
		take_token(s, q, t);
	}
	return 0;
}

static void update_rates(tern_sched *s)
{
	const double now = tern_now_s();
	pthread_mutex_lock(&s->mu);
	const double dt = now - s->win_t0;
	if (dt >= 1.0) {
		s->rate_decode = (double)s->win_decode / dt;
		s->rate_prefill = (double)s->win_prefill / dt;
		s->win_decode = s->win_prefill = 0;
		s->win_t0 = now;
	}
	pthread_mutex_unlock(&s->mu);
}

int tern_sched_run(tern_sched *s, int exit_when_idle, tern_err *err)
{
	const tern_sched_config *c = &s->cfg;
	seq **reap = malloc(((size_t)c->n_slots + (size_t)c->queue_limit + 1) * sizeof *reap);
	TERN_RETURN_IF(!reap, err, TERN_ENOMEM, "out of memory");
	float stage_ms[MAX_STAGE_MS];
	int rc = 0;
	s->last_progress = tern_now_s();
	while (!s->stop) {
		const int n_reap = admit_and_reap(s, reap, c->n_slots + c->queue_limit + 1);
		for (int i = 0; i < n_reap; i++)
			seq_finish(s, reap[i], TERN__V1__FINISH_REASON__FINISH_REASON_CANCELLED, TERN_STATUS_CANCELLED,
				   "cancelled");
		/* Fill the pipeline. */
		while (s->mb_count < s->be.max_in_flight) {
			micro_batch *mb = &s->mbs[(s->mb_head + s->mb_count) % s->be.max_in_flight];
			if (build_mb(s, mb) == 0)
				break;
			mb->id = ++s->next_mb;
			rc = tern_head_embed(c->head, s->row_tok, mb->n_rows, s->hidden, err);
			if (rc == 0)
				rc = s->be.submit(s->be.self, mb->id, s->rows, mb->n_rows, s->hidden, err);
			if (rc < 0)
				goto failed;
			if (s->mb_count == 0)
				s->last_progress = tern_now_s();
			s->mb_count++;
		}
		if (s->mb_count == 0) {
			pthread_mutex_lock(&s->mu);
			const int idle = s->live == NULL;
			if (idle && exit_when_idle) {
				pthread_mutex_unlock(&s->mu);
				break;
			}
			if (!s->stop && s->queue_len == 0) {
				struct timespec ts;
				clock_gettime(CLOCK_REALTIME, &ts);
				ts.tv_nsec += 50 * 1000000;
				if (ts.tv_nsec >= 1000000000) {
					ts.tv_sec++;
					ts.tv_nsec -= 1000000000;
				}
				pthread_cond_timedwait(&s->cv, &s->mu, &ts);
			}
			pthread_mutex_unlock(&s->mu);
			update_rates(s);
			continue;
		}
		uint64_t id = 0;
		int n_ms = 0;
		rc = s->be.collect(s->be.self, 0.05, &id, s->hidden, stage_ms, &n_ms, err);
		if (rc == TERN_ETIMEOUT) {
			rc = 0;
			if (tern_now_s() - s->last_progress > c->stall_timeout_s) {
				rc = TERN_ERR(err, TERN_ETIMEOUT, "no answer from the pipeline for %.1f s: a stage died or hung",
					      c->stall_timeout_s);
				goto failed;
			}
			update_rates(s);
			continue;
		}
		if (rc < 0)
			goto failed;
		micro_batch *mb = &s->mbs[s->mb_head];
		if (id != mb->id) {
			rc = TERN_ERR(err, TERN_ECOMM, "pipeline returned micro-batch %llu, expected %llu",
				      (unsigned long long)id, (unsigned long long)mb->id);
			goto failed;
		}
		s->mb_head = (s->mb_head + 1) % s->be.max_in_flight;
		s->mb_count--;
		s->last_progress = tern_now_s();
		pthread_mutex_lock(&s->mu);
		if (n_ms > MAX_STAGE_MS)
			n_ms = MAX_STAGE_MS;
		if (n_ms > s->n_stage_ms)
			s->n_stage_ms = n_ms;
		for (int i = 0; i < n_ms; i++)
			s->stage_ms_sum[i] += stage_ms[i];
		s->stage_ms_n++;
		pthread_mutex_unlock(&s->mu);
		rc = process_mb(s, mb, err);
		if (rc < 0)
			goto failed;
		update_rates(s);
	}
	free(reap);
	return 0;
failed:
	free(reap);
	TERN_LOGE("sched", "%s", err ? err->msg : "back end failed");
	fail_all(s, err ? err->msg : "the pipeline failed");
	return rc < 0 ? rc : TERN_ECOMM;
}

void tern_sched_shutdown(tern_sched *s, const char *why)
{
	s->stop = 1;
	fail_all(s, why);
}

void tern_sched_set_queue_limit(tern_sched *s, int limit)
{
	pthread_mutex_lock(&s->mu);
	s->cfg.queue_limit = limit;
	pthread_mutex_unlock(&s->mu);
}

void tern_sched_stop(tern_sched *s)
{
	s->stop = 1;
}

/* ---- create / free -------------------------------------------------------- */

const tern_service *tern_sched_service(tern_sched *s)
{
	return &s->svc;
}

int tern_sched_create(const tern_sched_config *cfg, const tern_sched_backend *be, tern_sched **out, tern_err *err)
{
	*out = NULL;
	TERN_RETURN_IF(cfg->n_slots < 1 || cfg->n_ctx < 2 || cfg->max_rows < 1 || cfg->prefill_chunk < 1 ||
			       cfg->queue_limit < 0 || cfg->n_embd < 1 || cfg->n_vocab < 1 || !cfg->tok || !cfg->head ||
			       be->max_in_flight < 1,
		       err, TERN_EINVAL, "bad scheduler configuration");
	tern_sched *s = calloc(1, sizeof *s);
	TERN_RETURN_IF(!s, err, TERN_ENOMEM, "out of memory");
	s->cfg = *cfg;
	if (s->cfg.default_max_tokens < 1)
		s->cfg.default_max_tokens = 256;
	if (s->cfg.max_prompt_bytes < 1)
		s->cfg.max_prompt_bytes = 1 << 20;
	if (s->cfg.stall_timeout_s <= 0)
		s->cfg.stall_timeout_s = 8.0;
	s->be = *be;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	const size_t n_slots = (size_t)cfg->n_slots, max_rows = (size_t)cfg->max_rows;
	s->slot_seq = calloc(n_slots, sizeof *s->slot_seq);
	s->mbs = calloc((size_t)be->max_in_flight, sizeof *s->mbs);
	s->rows = malloc(max_rows * sizeof *s->rows);
	s->row_tok = malloc(max_rows * sizeof *s->row_tok);
	s->hidden = tern_aligned_alloc(max_rows * (size_t)cfg->n_embd * sizeof(float), TERN_ALIGN);
	s->gathered = tern_aligned_alloc(n_slots * (size_t)cfg->n_embd * sizeof(float), TERN_ALIGN);
	s->logits = tern_aligned_alloc(n_slots * (size_t)cfg->n_vocab * sizeof(float), TERN_ALIGN);
	int ok = s->slot_seq && s->mbs && s->rows && s->row_tok && s->hidden && s->gathered && s->logits;
	for (int i = 0; ok && i < be->max_in_flight; i++) {
		s->mbs[i].e = calloc(n_slots, sizeof *s->mbs[i].e);
		ok = s->mbs[i].e != NULL;
	}
	if (!ok) {
		tern_sched_free(s);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory for the scheduler");
	}
	s->t_start = s->win_t0 = s->busy_since = tern_now_s();
	s->svc.self = s;
	s->svc.generate = svc_generate;
	s->svc.cancel = svc_cancel;
	s->svc.tokenize = svc_tokenize;
	s->svc.health = svc_health;
	s->svc.stats = svc_stats;
	s->svc.free_response = svc_free_response;
	s->svc.detokenize = svc_detokenize;
	*out = s;
	return 0;
}

void tern_sched_free(tern_sched *s)
{
	if (!s)
		return;
	while (s->live) {
		seq *q = s->live;
		if (q->slot < 0)
			s->queue_len--;
		seq_finish(s, q, TERN__V1__FINISH_REASON__FINISH_REASON_ERROR, TERN_STATUS_UNAVAILABLE,
			   "the server is shutting down");
	}
	for (int i = 0; s->mbs && i < s->be.max_in_flight; i++)
		free(s->mbs[i].e);
	free(s->mbs);
	free(s->slot_seq);
	free(s->rows);
	free(s->row_tok);
	tern_aligned_free(s->hidden);
	tern_aligned_free(s->gathered);
	tern_aligned_free(s->logits);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

/* ---- the in-process back end ---------------------------------------------- */

typedef struct local_be {
	tern_engine *e;
	int n_embd;
	uint64_t id;
	int n;
	int full;
	float *hidden; /* (n, n_embd) result */
	size_t cap;
	float ms;
} local_be;

static int local_submit(void *self, uint64_t id, const tern_row *rows, int n, const float *hidden, tern_err *err)
{
	local_be *b = self;
	TERN_RETURN_IF(b->full, err, TERN_ESTATE, "local back end takes one micro-batch at a time");
	const size_t need = (size_t)n * (size_t)b->n_embd;
	if (need > b->cap) {
		tern_aligned_free(b->hidden);
		b->hidden = tern_aligned_alloc(need * sizeof(float), TERN_ALIGN);
		b->cap = b->hidden ? need : 0;
		TERN_RETURN_IF(!b->hidden, err, TERN_ENOMEM, "out of memory");
	}
	memcpy(b->hidden, hidden, need * sizeof(float));
	const double t0 = tern_now_s();
	TERN_FORWARD_IF_ERROR(tern_engine_forward(b->e, rows, n, b->hidden, err));
	b->ms = (float)((tern_now_s() - t0) * 1e3);
	b->id = id;
	b->n = n;
	b->full = 1;
	return 0;
}

static int local_collect(void *self, double timeout_s, uint64_t *id, float *hidden, float *stage_ms, int *n_stage_ms,
			 tern_err *err)
{
	(void)timeout_s;
	local_be *b = self;
	TERN_RETURN_IF(!b->full, err, TERN_ETIMEOUT, "nothing in flight");
	memcpy(hidden, b->hidden, (size_t)b->n * (size_t)b->n_embd * sizeof(float));
	*id = b->id;
	if (stage_ms)
		stage_ms[0] = b->ms;
	if (n_stage_ms)
		*n_stage_ms = 1;
	b->full = 0;
	return 0;
}

int tern_sched_local_backend(tern_engine *e, tern_sched_backend *out, tern_err *err)
{
	memset(out, 0, sizeof *out);
	local_be *b = calloc(1, sizeof *b);
	TERN_RETURN_IF(!b, err, TERN_ENOMEM, "out of memory");
	b->e = e;
	b->n_embd = tern_engine_layers(e)->hp.n_embd;
	out->self = b;
	out->max_in_flight = 1;
	out->n_stages = 1;
	out->submit = local_submit;
	out->collect = local_collect;
	return 0;
}

void tern_sched_local_free(tern_sched_backend *be)
{
	if (!be || !be->self)
		return;
	local_be *b = be->self;
	tern_aligned_free(b->hidden);
	free(b);
	be->self = NULL;
}
