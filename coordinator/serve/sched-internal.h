/* sched-internal.h: what the scheduler's files share (sched.c: sequences,
 * create/free and control; sched-service.c: the service the gRPC thread
 * calls; sched-loop.c: the batching loop on the scheduler thread;
 * sched-local.c: the in-process back end). Not installed: serve/ only. */
#ifndef TERN_SCHED_INTERNAL_H
#define TERN_SCHED_INTERNAL_H

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
	int slot;     /* -1 while queued */
	int32_t *tok; /* (cap_tok) prompt then generated tokens */
	int n_tok, cap_tok;
	int n_prompt;
	int n_done; /* positions already in the KV cache */
	int n_gen;    /* generated tokens, the n_resume replayed ones included */
	int n_resume; /* resume_token_ids: counted in n_gen, never sent */
	int max_tokens;
	int kv_need; /* KV blocks its prompt + max_tokens take (admission, when the pool is bounded) */
	int ignore_eos;
	int logprobs, top_logprobs; /* each piece carries its logprob and the top_logprobs best */
	int score; /* score_prompt: sum the NLL of prompt tokens */
	double nll_sum;
	int n_scored;
	int in_flight;
	atomic_int cancelled; /* set by cancel() (gRPC thread), read by the scheduler */
	tern_sampler *sampler;
	tern_step *step; /* detokenizer, stop strings, EOS and length */
	tern_gen_sink sink;
	double t_submit, t_admit, t_first, t_last;
	char request_id[128];
	struct seq *next; /* admission queue / live list link */
} seq;

typedef struct mb_entry {
	seq *q;
	int n_rows;
	int last_row; /* index of its last row in the micro-batch */
	int logits;   /* its last row needs logits (to sample) */
	int pos0;     /* position of its first row */
	int dead;     /* cancelled: read once per result, so the passes agree */
} mb_entry;

typedef struct micro_batch {
	uint64_t id;
	int n_rows;
	int n_seqs;
	mb_entry *e; /* (n_slots) */
} micro_batch;

struct tern_sched {
	tern_sched_config cfg;
	tern_sched_backend be;
	tern_service svc;

	pthread_mutex_t mu;
	pthread_cond_t cv;
	int queue_len; /* live requests waiting for a slot */
	seq *live;     /* every seq the scheduler knows (queued or active) */
	uint64_t next_handle;
	volatile sig_atomic_t stop;
	volatile sig_atomic_t drain; /* tern_sched_drain: refuse new work, finish the rest */
	int failed;                  /* back end failed: new requests UNAVAILABLE */
	int n_active;

	/* Scheduler-thread state. */
	seq **slot_seq;   /* (n_slots) */
	/* Block bookkeeping of a bounded pool (cfg.kv_blocks > 0): what each
	 * stage's pool may hold for a slot, the reservation of its current or
	 * last sequence (a stage gives a slot's blocks back only when the next
	 * sequence's first row rewinds it), and their sum. */
	int *slot_blocks; /* (n_slots) */
	int kv_used;
	int rr;           /* round-robin start for fairness */
	micro_batch *mbs; /* (max_in_flight) ring */
	int mb_head, mb_count;
	uint64_t next_mb;
	tern_row *rows;   /* (max_rows) */
	int32_t *row_tok; /* (max_rows) */
	float *hidden;    /* (max_rows, n_embd) */
	float *gathered;  /* (n_slots, n_embd) */
	float *logits;    /* (n_slots, n_vocab) */
	double last_progress;

	/* Stats (under mu). */
	double t_start;
	uint64_t requests_total, requests_rejected, requests_cancelled, tokens_generated;
	uint64_t prefix_hits, prefix_tokens; /* sequences that attached cached blocks, the positions reused */
	double win_t0; /* decode/prefill rate window */
	uint64_t win_decode, win_prefill;
	double rate_decode, rate_prefill;
	double stage_ms_sum[MAX_STAGE_MS];
	uint64_t stage_ms_n;
	int n_stage_ms;
	double busy_since;
};

/* sched.c */
void seq_free(seq *q);
int seq_push_token(seq *q, int32_t t);
void live_remove(tern_sched *s, seq *q);
void seq_finish_text(tern_sched *s, seq *q, Tern__V1__FinishReason reason, int status, const char *details,
		     const char *tail, size_t tail_len);
void seq_finish(tern_sched *s, seq *q, Tern__V1__FinishReason reason, int status, const char *details);
/* sched-service.c */
void sched_service_init(tern_sched *s);
/* sched-loop.c */
void fail_all(tern_sched *s, const char *why);

#endif /* TERN_SCHED_INTERNAL_H */
