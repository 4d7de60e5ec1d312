/* sched.c: continuous batching over a pipeline (see tern-sched.h).
 *
 * Threads: the gRPC thread calls the service functions (generate, cancel,
 * tokenize, health, stats); they touch only the admission queue, cancel
 * flags and counters, under s->mu. Everything else — slots, micro-batches,
 * sampling, the sinks' piece()/done() — runs on the scheduler thread. */
#include "sched-internal.h"

/* ---- sequences ----------------------------------------------------------- */

void seq_free(seq *q)
{
	if (!q)
		return;
	free(q->tok);
	tern_sampler_free(q->sampler);
	tern_step_free(q->step);
	free(q);
}

int seq_push_token(seq *q, int32_t t)
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

void live_remove(tern_sched *s, seq *q)
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
void seq_finish_text(tern_sched *s, seq *q, Tern__V1__FinishReason reason, int status, const char *details,
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
	/* The slot is free before the client hears the end, so a request it
	 * sends next finds the slot free (with --queue 0 it would else be
	 * refused). Only this thread admits into slots. */
	pthread_mutex_lock(&s->mu);
	if (q->slot >= 0) {
		s->slot_seq[q->slot] = NULL;
		s->n_active--;
	}
	pthread_mutex_unlock(&s->mu);
	q->sink.done(q->sink.ctx, status == TERN_STATUS_OK ? &fin : NULL, status, details);
	free(text);

	pthread_mutex_lock(&s->mu);
	if (reason == TERN__V1__FINISH_REASON__FINISH_REASON_CANCELLED)
		s->requests_cancelled++;
	live_remove(s, q);
	pthread_mutex_unlock(&s->mu);
	seq_free(q);
}

/* Ends q with nothing more to show (cancelled, failed, scored only). */
void seq_finish(tern_sched *s, seq *q, Tern__V1__FinishReason reason, int status, const char *details)
{
	seq_finish_text(s, q, reason, status, details, NULL, 0);
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

void tern_sched_drain(tern_sched *s)
{
	s->drain = 1;
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
			   cfg->queue_limit < 0 || cfg->kv_blocks < 0 || (cfg->kv_blocks > 0 && cfg->kv_block < 1) ||
			   cfg->n_embd < 1 || cfg->n_vocab < 1 || !cfg->tok || !cfg->head || be->max_in_flight < 1,
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
	s->slot_blocks = calloc(n_slots, sizeof *s->slot_blocks);
	s->mbs = calloc((size_t)be->max_in_flight, sizeof *s->mbs);
	s->rows = malloc(max_rows * sizeof *s->rows);
	s->row_tok = malloc(max_rows * sizeof *s->row_tok);
	s->hidden = tern_aligned_alloc(max_rows * (size_t)cfg->n_embd * sizeof(float), TERN_ALIGN);
	s->gathered = tern_aligned_alloc(n_slots * (size_t)cfg->n_embd * sizeof(float), TERN_ALIGN);
	s->logits = tern_aligned_alloc(n_slots * (size_t)cfg->n_vocab * sizeof(float), TERN_ALIGN);
	int ok =
	    s->slot_seq && s->slot_blocks && s->mbs && s->rows && s->row_tok && s->hidden && s->gathered && s->logits;
	for (int i = 0; ok && i < be->max_in_flight; i++) {
		s->mbs[i].e = calloc(n_slots, sizeof *s->mbs[i].e);
		ok = s->mbs[i].e != NULL;
	}
	if (!ok) {
		tern_sched_free(s);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory for the scheduler");
	}
	s->t_start = s->win_t0 = s->busy_since = tern_now_s();
	sched_service_init(s);
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
	free(s->slot_blocks);
	free(s->rows);
	free(s->row_tok);
	tern_aligned_free(s->hidden);
	tern_aligned_free(s->gathered);
	tern_aligned_free(s->logits);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
	free(s);
}
