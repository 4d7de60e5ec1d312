/* sched-service.c: the scheduler as a service (tern-service.h), called on
 * the gRPC thread: validation, admission, cancel, tokenize, health, stats.
 * It touches only the admission queue, cancel flags and counters, under s->mu. */
#include "sched-internal.h"

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
	/* Resume tokens count toward max_tokens; with the default one, the
	 * prompt and they must still leave room for one more. */
	if (status == TERN_STATUS_OK && !req->max_tokens && req->n_resume_token_ids > 0 &&
	    req->n_resume_token_ids >= (size_t)(c->n_ctx - q->n_prompt)) {
		snprintf(msg, msg_len, "prompt of %d tokens + %zu resume tokens + 1 exceeds the context of %d",
			 q->n_prompt, req->n_resume_token_ids, c->n_ctx);
		status = TERN_STATUS_INVALID_ARGUMENT;
	}
	if (status == TERN_STATUS_OK && q->n_prompt + q->max_tokens > c->n_ctx)
		q->max_tokens = c->n_ctx - q->n_prompt; /* the default shrinks to fit */
	/* every position it can write has its block before it is admitted, so a
	 * stage never runs out mid-step; one that never fits is refused now */
	q->kv_need = c->kv_blocks > 0 ? (q->n_prompt + q->max_tokens + c->kv_block - 1) / c->kv_block : 0;
	if (status == TERN_STATUS_OK && q->kv_need > c->kv_blocks && c->kv_blocks > 0) {
		snprintf(msg, msg_len, "prompt of %d tokens + max_tokens %d needs %d KV blocks, the pool has %d",
			 q->n_prompt, q->max_tokens, q->kv_need, c->kv_blocks);
		status = TERN_STATUS_RESOURCE_EXHAUSTED;
	}
	q->ignore_eos = req->ignore_eos;
	if (status == TERN_STATUS_OK && req->top_logprobs > TERN_MAX_TOP_LOGPROBS) {
		snprintf(msg, msg_len, "top_logprobs %u: at most %d", req->top_logprobs, TERN_MAX_TOP_LOGPROBS);
		status = TERN_STATUS_INVALID_ARGUMENT;
	}
	q->logprobs = req->logprobs || req->top_logprobs > 0;
	q->top_logprobs = (int)req->top_logprobs;

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
	/* Resume: the tokens already sent go through the sampler and the step
	 * as if generated here (nothing is sent for them) and into the
	 * sequence, whose prefill then covers them: generation continues at
	 * index n exactly as the undisturbed run did (batch invariance). */
	if (status == TERN_STATUS_OK && req->n_resume_token_ids > 0) {
		if (q->score) {
			snprintf(msg, msg_len, "resume_token_ids with score_prompt");
			status = TERN_STATUS_INVALID_ARGUMENT;
		} else if (req->n_resume_token_ids >= (size_t)q->max_tokens) {
			snprintf(msg, msg_len, "%zu resume tokens: max_tokens %d leaves nothing to generate",
				 req->n_resume_token_ids, q->max_tokens);
			status = TERN_STATUS_INVALID_ARGUMENT;
		}
		for (size_t i = 0; status == TERN_STATUS_OK && i < req->n_resume_token_ids; i++) {
			const uint32_t t = req->resume_token_ids[i];
			tern_step_out so;
			if (t >= (uint32_t)c->n_vocab) {
				snprintf(msg, msg_len, "resume token id %u is outside the vocabulary of %d", t, c->n_vocab);
				status = TERN_STATUS_INVALID_ARGUMENT;
			} else if (tern_step_token(q->step, (int32_t)t, &so, &err) < 0 || so.finish != TERN_FINISH_NONE) {
				snprintf(msg, msg_len, "resume token %zu (id %u) already ends the generation", i, t);
				status = TERN_STATUS_INVALID_ARGUMENT;
			} else if (seq_push_token(q, (int32_t)t) < 0) {
				snprintf(msg, msg_len, "out of memory");
				status = TERN_STATUS_RESOURCE_EXHAUSTED;
			} else {
				tern_sampler_skip(q->sampler, (int32_t)t);
				q->n_gen++;
				q->n_resume++;
			}
		}
	}
	if (status != TERN_STATUS_OK) {
		seq_free(q);
		return reject(s, status);
	}
	q->sink = *sink;

	pthread_mutex_lock(&s->mu);
	if (s->failed || s->stop || s->drain) {
		pthread_mutex_unlock(&s->mu);
		seq_free(q);
		snprintf(msg, msg_len, "%s", s->failed || s->stop ? "the pipeline is down" : "the server is stopping: not taking new requests");
		return reject(s, TERN_STATUS_UNAVAILABLE);
	}
	/* The limit bounds waiting work only: a request that a free slot will
	 * take (free slots not yet claimed by earlier queued requests) does not
	 * wait, so --queue 0 still serves up to n_slots at once. */
	if (s->queue_len - (c->n_slots - s->n_active) >= c->queue_limit) {
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
	out->n_piece_bytes = t.n;
	out->piece_bytes = calloc(t.n ? t.n : 1, sizeof *out->piece_bytes);
	int rc = TERN_STATUS_OK;
	if (!out->token_ids || !out->pieces || !out->piece_bytes)
		rc = TERN_STATUS_RESOURCE_EXHAUSTED;
	/* pieces is a proto3 string (clients reject invalid UTF-8): each token's
	 * bytes with U+FFFD for what is not a whole character; the bytes
	 * themselves go in piece_bytes. */
	for (size_t i = 0; rc == TERN_STATUS_OK && i < t.n; i++) {
		out->token_ids[i] = (uint32_t)t.ids[i];
		size_t pl = 0, tl = 0;
		const char *p = tern_tokenizer_piece(s->cfg.tok, t.ids[i], 1, &pl);
		uint8_t *raw = malloc(pl + 1);
		if (raw)
			memcpy(raw, p ? p : "", pl);
		out->piece_bytes[i].data = raw;
		out->piece_bytes[i].len = raw ? pl : 0;
		if (!raw || tern_tokenizer_decode(s->cfg.tok, &t.ids[i], 1, TERN_DECODE_SPECIAL | TERN_DECODE_REPLACE_INVALID,
						  &out->pieces[i], &tl, &err) < 0)
			rc = TERN_STATUS_RESOURCE_EXHAUSTED;
	}
	tern_tokens_free(&t);
	if (rc != TERN_STATUS_OK)
		snprintf(msg, msg_len, "out of memory");
	return rc;
}

/* A new array of n messages of descriptor d, each initialised; *made says how
 * many there are (fewer than n when memory ran out; free_response frees them). */
static void *new_messages(const ProtobufCMessageDescriptor *d, int n, size_t *made)
{
	ProtobufCMessage **v = calloc(n > 0 ? (size_t)n : 1, sizeof *v);
	*made = 0;
	for (int i = 0; v && i < n; i++) {
		if (!(v[i] = malloc(d->sizeof_message)))
			break;
		protobuf_c_message_init(d, v[i]);
		++*made;
	}
	return v;
}

/* Frees what new_messages made: the n messages (their own fields freed
 * before) and the array. */
static void free_messages(void *arr, size_t n)
{
	ProtobufCMessage **v = arr;
	for (size_t i = 0; v && i < n; i++)
		free(v[i]);
	free(v);
}

static int svc_health(void *self, Tern__V1__HealthResponse *out)
{
	tern_sched *s = self;
	pthread_mutex_lock(&s->mu);
	const int ok = !s->failed && !s->stop;
	const int draining = s->drain != 0;
	pthread_mutex_unlock(&s->mu);
	const int n = s->be.n_stages;
	out->ready = ok && !draining;
	out->stages_total = (uint32_t)n;
	out->stages_up = ok ? (uint32_t)n : 0;
	out->model = (char *)(s->cfg.model_name ? s->cfg.model_name : "");
	out->version = (char *)"tern 0.1.0";
	out->stages = new_messages(&tern__v1__stage_status__descriptor, n, &out->n_stages);
	const char *d = s->cfg.stage_desc;
	for (size_t i = 0; i < out->n_stages; i++) {
		Tern__V1__StageStatus *st = out->stages[i];
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
	out->prefix_hits = s->prefix_hits;
	out->prefix_tokens_reused = s->prefix_tokens;
	out->uptime_s = tern_now_s() - s->t_start;
	const int n = s->n_stage_ms;
	out->stages = new_messages(&tern__v1__stage_timing__descriptor, n, &out->n_stages);
	const double wall = tern_now_s() - s->busy_since;
	for (size_t i = 0; i < out->n_stages; i++) {
		Tern__V1__StageTiming *t = out->stages[i];
		t->stage = (uint32_t)(i + 1);
		t->mean_step_ms = s->stage_ms_n ? s->stage_ms_sum[i] / (double)s->stage_ms_n : 0;
		t->busy_fraction = wall > 0 ? s->stage_ms_sum[i] * 1e-3 / wall : 0;
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
		for (size_t i = 0; r->piece_bytes && i < r->n_piece_bytes; i++)
			free(r->piece_bytes[i].data);
		free(r->piece_bytes);
		free(r->token_ids);
	} else if (m->descriptor == &tern__v1__health_response__descriptor) {
		Tern__V1__HealthResponse *r = (Tern__V1__HealthResponse *)m;
		for (size_t i = 0; r->stages && i < r->n_stages; i++) {
			free(r->stages[i]->host);
			free(r->stages[i]->binding);
		}
		free_messages(r->stages, r->n_stages);
	} else if (m->descriptor == &tern__v1__stats_response__descriptor) {
		Tern__V1__StatsResponse *r = (Tern__V1__StatsResponse *)m;
		free_messages(r->stages, r->n_stages);
	}
}


void sched_service_init(tern_sched *s)
{
	s->svc.self = s;
	s->svc.generate = svc_generate;
	s->svc.cancel = svc_cancel;
	s->svc.tokenize = svc_tokenize;
	s->svc.health = svc_health;
	s->svc.stats = svc_stats;
	s->svc.free_response = svc_free_response;
	s->svc.detokenize = svc_detokenize;
}
