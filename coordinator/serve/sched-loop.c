/* sched-loop.c: the continuous batching loop (tern_sched_run) on the
 * scheduler thread: admission into slots, micro-batches through the back
 * end, the LM head, sampling and the generation step, draining. */
#include "sched-internal.h"

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
	for (;;) {
		seq *q = oldest_queued(s);
		if (!q)
			break;
		/* the free slot whose stale blocks are most: admitting there gives
		 * them back */
		int slot = -1;
		for (int i = 0; i < s->cfg.n_slots; i++)
			if (!s->slot_seq[i] && (slot < 0 || s->slot_blocks[i] > s->slot_blocks[slot]))
				slot = i;
		if (slot < 0)
			break;
		if (s->cfg.kv_blocks > 0) {
			const int used = s->kv_used - s->slot_blocks[slot] + q->kv_need;
			if (used > s->cfg.kv_blocks)
				break; /* waits, oldest first, for blocks */
			s->kv_used = used;
			s->slot_blocks[slot] = q->kv_need;
		}
		q->slot = slot;
		q->t_admit = tern_now_s();
		/* A scored prompt needs every row's hidden state: it never
		 * attaches. An attach that fails leaves the sequence to run whole. */
		if (s->cfg.prefix_cache && s->be.prefix_attach && !q->score) {
			const int got = s->be.prefix_attach(s->be.self, slot, q->tok, q->n_tok, NULL);
			if (got > 0 && got < q->n_tok) {
				q->n_done = got;
				s->prefix_hits++;
				s->prefix_tokens += (uint64_t)got;
			}
		}
		s->slot_seq[slot] = q;
		s->queue_len--;
		s->n_active++;
	}
	pthread_mutex_unlock(&s->mu);
	return n_reap;
}

void fail_all(tern_sched *s, const char *why)
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

/* A sampled token's log-probabilities (GenerateRequest.logprobs). */
typedef struct token_lp {
	float logprob;
	int n_top;
	int32_t top_ids[TERN_MAX_TOP_LOGPROBS];
	float top_lp[TERN_MAX_TOP_LOGPROBS];
} token_lp;

static void token_bytes_of(const tern_sched *s, int32_t id, ProtobufCBinaryData *out)
{
	size_t n = 0;
	const char *p = tern_tokenizer_piece(s->cfg.tok, id, 1, &n);
	out->data = (uint8_t *)(p ? p : "");
	out->len = p ? n : 0;
}

/* Emits a sampled token of q through its generation step, with its
 * log-probabilities when lp is given; ends q when the step says so (the
 * end-of-generation token itself is not streamed). */
static void take_token(tern_sched *s, seq *q, int32_t t, const token_lp *lp)
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
	/* The first message names the seed too, so a front end that did not
	 * choose one can resume the stream (resume_token_ids) from its start. */
	if (q->n_gen - 1 == q->n_resume)
		m.seed = tern_sampler_seed(q->sampler);
	Tern__V1__TokenLogprob top[TERN_MAX_TOP_LOGPROBS], *top_ptrs[TERN_MAX_TOP_LOGPROBS];
	if (lp) {
		m.logprob = lp->logprob;
		token_bytes_of(s, t, &m.token_bytes);
		for (int i = 0; i < lp->n_top; i++) {
			tern__v1__token_logprob__init(&top[i]);
			top[i].token_id = (uint32_t)lp->top_ids[i];
			top[i].logprob = lp->top_lp[i];
			token_bytes_of(s, lp->top_ids[i], &top[i].token_bytes);
			top_ptrs[i] = &top[i];
		}
		m.n_top_logprobs = (size_t)lp->n_top;
		m.top_logprobs = top_ptrs;
	}
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
	/* The prompt's full blocks computed so far, for the next sequences. */
	for (int i = 0; s->cfg.prefix_cache && s->be.prefix_publish && i < mb->n_seqs; i++) {
		const mb_entry *e = &mb->e[i];
		if (e->dead || e->pos0 >= e->q->n_prompt)
			continue;
		const int n = e->q->n_done < e->q->n_prompt ? e->q->n_done : e->q->n_prompt;
		TERN_FORWARD_IF_ERROR(s->be.prefix_publish(s->be.self, e->q->slot, e->q->tok, n, err));
	}
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
		const float *row = s->logits + (size_t)li * c->n_vocab;
		if (tern_sampler_sample(q->sampler, row, &t, err) < 0) {
			li++;
			seq_finish(s, q, TERN__V1__FINISH_REASON__FINISH_REASON_ERROR, TERN_STATUS_INTERNAL, err->msg);
			continue;
		}
		li++;
		token_lp lp;
		if (q->logprobs) {
			const double lse = tern_logsumexp(row, c->n_vocab);
			lp.logprob = (float)((double)row[t] - lse);
			lp.n_top = q->top_logprobs < c->n_vocab ? q->top_logprobs : c->n_vocab;
			tern_top_logprobs(row, c->n_vocab, lse, lp.n_top, lp.top_ids, lp.top_lp);
		}
		take_token(s, q, t, q->logprobs ? &lp : NULL);
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
	double drain_end = 0;
	while (!s->stop) {
		if (s->drain) {
			const double now = tern_now_s();
			if (drain_end == 0) {
				/* mpirun signals every rank when one dies: that is no
				 * drain but a failure, at once. */
				char who[256];
				if (s->be.diagnose && s->be.diagnose(s->be.self, who, sizeof who)) {
					rc = TERN_ERR(err, TERN_ECOMM, "%s", who);
					goto failed;
				}
				drain_end = now + c->drain_timeout_s;
				TERN_LOGI("sched", "draining: no new requests; up to %.0f s for the ones accepted",
					  c->drain_timeout_s);
			}
			pthread_mutex_lock(&s->mu);
			const int idle = s->live == NULL;
			pthread_mutex_unlock(&s->mu);
			if (idle || now >= drain_end)
				break;
		}
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
				char who[256];
				if (s->be.diagnose && s->be.diagnose(s->be.self, who, sizeof who))
					rc = TERN_ERR(err, TERN_ETIMEOUT, "no answer from the pipeline for %.1f s: %s",
						      c->stall_timeout_s, who);
				else
					rc = TERN_ERR(err, TERN_ETIMEOUT,
						      "no answer from the pipeline for %.1f s: a stage died or hung",
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
	if (s->cfg.prefix_cache && s->be.prefix_attach)
		TERN_LOGI("sched", "prefix cache: %llu sequences attached cached blocks, %llu prompt positions reused",
			  (unsigned long long)s->prefix_hits, (unsigned long long)s->prefix_tokens);
	return 0;
failed:
	free(reap);
	if (err && rc != TERN_ETIMEOUT && s->be.diagnose) {
		/* Name the stage when one is known dead or stopped. */
		char who[256];
		if (s->be.diagnose(s->be.self, who, sizeof who) && !strstr(err->msg, who)) {
			char msg[sizeof err->msg];
			snprintf(msg, sizeof msg, "%s", err->msg);
			rc = TERN_ERR(err, rc < 0 ? rc : TERN_ECOMM, "%s (%s)", who, msg);
		}
	}
	TERN_LOGE("sched", "%s", err ? err->msg : "back end failed");
	fail_all(s, err ? err->msg : "the pipeline failed");
	return rc < 0 ? rc : TERN_ECOMM;
}

