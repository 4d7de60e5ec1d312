/* tern-sched.h: the coordinator's scheduler — continuous batching of many
 * sequences over a pipeline of layer stages.
 *
 * Requests (from gRPC or the offline batch mode, through the tern_service
 * interface it implements) wait in a bounded admission queue for a KV slot.
 * Every step the scheduler builds micro-batches of rows — one decode row per
 * generating sequence, a chunk of prompt rows per sequence in prefill, so a
 * long prompt never stalls the decoding streams — embeds them, and hands them
 * to the back end, keeping up to max_in_flight micro-batches in the pipeline
 * with disjoint sequences so every stage is busy. When a micro-batch comes
 * back, the rows that end a sequence's known tokens go through the final norm
 * and LM head together, the next tokens are sampled, streamed, and checked
 * for EOS, stop strings and limits.
 *
 * A sequence's numbers do not depend on how it was batched (the engine and
 * head are batch invariant), so the output equals tern-run's.
 *
 * The back end is the MPI pipeline (coordinator/pipeline.c) or the layer
 * engine in this process (tern_sched_local_backend). */
#ifndef TERN_SCHED_H
#define TERN_SCHED_H

#include <stdint.h>

#include "tern-base.h"
#include "tern-engine.h"
#include "tern-head.h"
#include "tern-service.h"
#include "tern-tokenizer.h"

typedef struct tern_sched_backend {
	void *self;
	int max_in_flight; /* micro-batches the back end takes at once (>= 1) */
	int n_stages;      /* for Health/Stats */
	/* Starts micro-batch `id`: rows (n) and their hidden states (n, n_embd). */
	int (*submit)(void *self, uint64_t id, const tern_row *rows, int n, const float *hidden, tern_err *err);
	/* The oldest micro-batch in flight, once done: its id and hidden (n,
	 * n_embd) as submitted; stage_ms (up to 64 floats, may be NULL) gets each
	 * stage's compute time, *n_stage_ms their count. TERN_ETIMEOUT when it is
	 * not done within timeout_s; any other error means the back end failed. */
	int (*collect)(void *self, double timeout_s, uint64_t *id, float *hidden, float *stage_ms, int *n_stage_ms,
		       tern_err *err);
	/* After a failure, or NULL: writes "stage S (rank R on host H, pid P)
	 * died" (or "is stopped") for the first stage found so, returning 1; 0
	 * when none is known to be (alive, or on another host). */
	int (*diagnose)(void *self, char *buf, size_t len);
	/* The prefix cache, or NULL (the MPI pipeline: none yet). attach: slot,
	 * rewound to empty, takes the cached full blocks its tokens tok[0..n)
	 * start with; returns the positions it now holds (a multiple of the
	 * block, < n) or a negative error. publish: offers the slot's full
	 * blocks of tok[0..n) (positions it holds) to the cache. Called on the
	 * scheduler thread, never with a micro-batch of that slot in flight. */
	int (*prefix_attach)(void *self, int slot, const int32_t *tok, int n, tern_err *err);
	int (*prefix_publish)(void *self, int slot, const int32_t *tok, int n, tern_err *err);
} tern_sched_backend;

typedef struct tern_sched_config {
	int n_embd, n_vocab;
	int n_slots;            /* sequences generating at once (KV slots) */
	int n_ctx;              /* positions per sequence */
	int kv_block;           /* positions per KV block of every stage's paged pool */
	int kv_blocks;          /* blocks in each stage's pool; 0: every slot's whole context, no block check */
	int max_rows;           /* rows per micro-batch */
	int prefill_chunk;      /* prompt rows of one sequence per micro-batch */
	int prefix_cache;       /* reuse cached prompt blocks when the back end has the hooks */
	int queue_limit;        /* requests waiting for a slot; more get RESOURCE_EXHAUSTED */
	int default_max_tokens; /* when a request leaves max_tokens 0 */
	int max_prompt_bytes;   /* larger prompts are INVALID_ARGUMENT */
	double stall_timeout_s; /* nothing back for this long with work in flight = the back end died */
	double drain_timeout_s; /* tern_sched_drain: how long accepted work may run on (0: stop at once) */
	const tern_tokenizer *tok;
	tern_head *head;
	tern_pool *head_pool;   /* threads for the LM head (may be NULL) */
	tern_chat_style chat_style;
	const char *model_name; /* for Health */
	const char *stage_desc; /* optional: per-stage "host binding" lines for Health, '\n'-separated */
} tern_sched_config;

typedef struct tern_sched tern_sched;

int tern_sched_create(const tern_sched_config *cfg, const tern_sched_backend *be, tern_sched **out, tern_err *err);
/* Frees the scheduler; every request still known gets done() first. */
void tern_sched_free(tern_sched *s);

/* The scheduler as a service: its generate/cancel/tokenize/health/stats. */
const tern_service *tern_sched_service(tern_sched *s);

/* Runs the scheduler loop on the calling thread (the one that owns MPI) until
 * tern_sched_stop, or until idle when exit_when_idle is set (batch mode).
 * Returns 0, or a negative code when the back end failed: every request in
 * flight then ended with UNAVAILABLE. */
int tern_sched_run(tern_sched *s, int exit_when_idle, tern_err *err);
/* Asks the loop to stop (any thread, async-signal-safe). */
void tern_sched_stop(tern_sched *s);
/* Asks the loop to drain (any thread, async-signal-safe): new requests are
 * refused with UNAVAILABLE and Health says not ready, while every request
 * already accepted (generating or queued) runs on; the loop returns 0 when
 * none is left, or after drain_timeout_s (config) with the rest still there
 * for tern_sched_shutdown to end. */
void tern_sched_drain(tern_sched *s);

/* Ends every request still known with UNAVAILABLE (why) and rejects new
 * ones; call before stopping the gRPC server, on the scheduler's thread
 * (the loop has returned). */
void tern_sched_shutdown(tern_sched *s, const char *why);

/* Changes the admission queue limit (batch mode raises it to the batch size). */
void tern_sched_set_queue_limit(tern_sched *s, int limit);

/* A back end running the engine in this process (no MPI). e must have every
 * slot claimed; rows are run when submitted. Free with tern_sched_local_free. */
int tern_sched_local_backend(tern_engine *e, tern_sched_backend *out, tern_err *err);
void tern_sched_local_free(tern_sched_backend *be);

#endif /* TERN_SCHED_H */
