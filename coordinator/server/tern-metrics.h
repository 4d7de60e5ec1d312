/* tern-metrics.h: tern-server's GET /metrics, Prometheus text exposition
 * format 0.0.4, names prefixed tern_, following vLLM's set.
 *
 * Two sources. Counters and histograms are measured here, in tern-server,
 * from the Generate streams it relays: requests by how they ended, prompt and
 * generated tokens (the exact counts of the usage the coordinator sends with
 * each final message), time to first token, inter-token latency, end-to-end
 * latency, HTTP responses by status. Gauges (running and waiting requests, KV
 * slots, per-stage step time) come from the coordinator's Stats reply at
 * scrape time, given to tern_metrics_render.
 *
 * Memory is fixed: fixed histogram buckets, fixed label sets (the finish
 * reasons, a fixed list of status codes plus "other"). Every function is
 * thread-safe (one mutex; a request takes it once per token at most). */
#ifndef TERN_METRICS_H
#define TERN_METRICS_H

#include <stdint.h>
#include <stdio.h>

#include "tern.pb-c.h"

typedef struct tern_metrics tern_metrics;

/* How a generation request ended: the finished_reason label. */
typedef enum {
	TERN_OUTCOME_STOP,      /* end-of-sequence token or a stop string */
	TERN_OUTCOME_LENGTH,    /* max_tokens or the context limit */
	TERN_OUTCOME_CANCELLED, /* the coordinator ended it (a drain) */
	TERN_OUTCOME_ERROR,     /* the coordinator refused it or the call failed */
	TERN_OUTCOME_ABORT,     /* the client left first */
	TERN_OUTCOME_COUNT
} tern_outcome;

/* NULL when out of memory. tern_metrics_free(NULL) is a no-op. */
tern_metrics *tern_metrics_create(void);
void tern_metrics_free(tern_metrics *m);

/* One generation request's clock, owned by the thread relaying it. */
typedef struct tern_metrics_req {
	tern_metrics *m;
	double t0, t_last; /* tern_now_s() at the start and at the last token */
	unsigned tokens;   /* token messages seen */
	int ended;
} tern_metrics_req;

/* Starts the clock of a request about to be sent to the coordinator. */
void tern_metrics_req_start(tern_metrics *m, tern_metrics_req *r);
/* A token message arrived: its time to first token or inter-token gap. */
void tern_metrics_req_token(tern_metrics_req *r);
/* The final message arrived: its finish reason (tern.v1 FinishReason) and
 * usage (NULL when it carried none) are counted, and its end-to-end time. */
void tern_metrics_req_done(tern_metrics_req *r, int finish_reason, const Tern__V1__Usage *usage);
/* The request ended without a final message (TERN_OUTCOME_ERROR or _ABORT).
 * Only the first of _done/_fail on a request counts. */
void tern_metrics_req_fail(tern_metrics_req *r, tern_outcome o);

/* An HTTP response with this status was queued. */
void tern_metrics_http(tern_metrics *m, unsigned status);

/* The supervisor found the job dead or stalled (tern-supervise.h). */
void tern_metrics_job_restart(tern_metrics *m);
/* A spare host took a failed host's place; copied_bytes were copied to it
 * first (the files it lacked). */
void tern_metrics_host_replaced(tern_metrics *m, uint64_t copied_bytes);
/* A request continued on the job's next start after a pause of pause_s. */
void tern_metrics_resumed(tern_metrics *m, double pause_s);

/* Writes every metric to f: tern-server's own, then the coordinator's gauges
 * from stats (NULL: the coordinator did not answer; tern_up is then 0 and
 * its gauges are left out). */
void tern_metrics_render(tern_metrics *m, const Tern__V1__StatsResponse *stats, FILE *f);

/* The Content-Type of what tern_metrics_render writes. */
#define TERN_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#endif /* TERN_METRICS_H */
