/* metrics.c: tern-server's counters and histograms and their Prometheus text
 * (tern-metrics.h). One mutex around them all. */
#include "tern-metrics.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tern-base.h"

/* vLLM's bucket bounds (seconds), so dashboards built for it read these. */
static const double ttft_bounds[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,   0.25,  0.5,   0.75,
				     1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
static const double itl_bounds[] = {0.01, 0.025, 0.05, 0.075, 0.1,  0.15, 0.2,  0.3,  0.4, 0.5,
				    0.75, 1.0,   2.5,  5.0,   7.5,  10.0, 20.0, 40.0, 80.0};
/* A resumed request's pause: detection, the job's restart, re-prefill. */
static const double pause_bounds[] = {0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0};
static const double e2e_bounds[] = {0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,    10.0,   15.0,  20.0,
				    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
#define TERN_METRICS_MAX_BUCKETS 24

typedef struct histogram {
	const double *bounds; /* (n) */
	size_t n;
	unsigned long long counts[TERN_METRICS_MAX_BUCKETS]; /* (n + 1): per bucket, not cumulative; [n] is +Inf */
	unsigned long long count;
	double sum;
} histogram;

static const char *const outcome_names[TERN_OUTCOME_COUNT] = {"stop", "length", "cancelled", "error", "abort"};

/* The statuses tern-server sends itself; anything else is code="other". */
static const unsigned http_codes[] = {200, 400, 401, 404, 405, 413, 429, 500, 503, 504};
#define N_HTTP_CODES (sizeof http_codes / sizeof http_codes[0])

struct tern_metrics {
	pthread_mutex_t mu;
	histogram ttft, itl, e2e, pause;
	unsigned long long restarts, resumed, host_swaps, copied_bytes;
	unsigned long long outcomes[TERN_OUTCOME_COUNT];
	unsigned long long prompt_tokens, generation_tokens;
	unsigned long long http[N_HTTP_CODES + 1]; /* by http_codes; [N_HTTP_CODES] other */
};

#define HIST(b) ((histogram){.bounds = b, .n = sizeof b / sizeof b[0]})
_Static_assert(sizeof ttft_bounds / sizeof(double) < TERN_METRICS_MAX_BUCKETS &&
		       sizeof itl_bounds / sizeof(double) < TERN_METRICS_MAX_BUCKETS &&
		       sizeof e2e_bounds / sizeof(double) < TERN_METRICS_MAX_BUCKETS &&
		       sizeof pause_bounds / sizeof(double) < TERN_METRICS_MAX_BUCKETS,
	       "TERN_METRICS_MAX_BUCKETS too small");

tern_metrics *tern_metrics_create(void)
{
	tern_metrics *m = calloc(1, sizeof *m);
	if (!m)
		return NULL;
	pthread_mutex_init(&m->mu, NULL);
	m->ttft = HIST(ttft_bounds);
	m->itl = HIST(itl_bounds);
	m->e2e = HIST(e2e_bounds);
	m->pause = HIST(pause_bounds);
	return m;
}

void tern_metrics_free(tern_metrics *m)
{
	if (!m)
		return;
	pthread_mutex_destroy(&m->mu);
	free(m);
}

/* Prometheus buckets are upper-inclusive (le). */
static void observe(histogram *h, double v)
{
	size_t i = 0;
	while (i < h->n && v > h->bounds[i])
		i++;
	h->counts[i]++;
	h->count++;
	h->sum += v;
}

void tern_metrics_req_start(tern_metrics *m, tern_metrics_req *r)
{
	memset(r, 0, sizeof *r);
	r->m = m;
	r->t0 = r->t_last = tern_now_s();
}

void tern_metrics_req_token(tern_metrics_req *r)
{
	const double now = tern_now_s();
	pthread_mutex_lock(&r->m->mu);
	if (r->tokens)
		observe(&r->m->itl, now - r->t_last);
	else
		observe(&r->m->ttft, now - r->t0);
	pthread_mutex_unlock(&r->m->mu);
	r->tokens++;
	r->t_last = now;
}

static void req_end(tern_metrics_req *r, tern_outcome o, const Tern__V1__Usage *usage)
{
	if (r->ended)
		return;
	r->ended = 1;
	const double now = tern_now_s();
	pthread_mutex_lock(&r->m->mu);
	r->m->outcomes[o]++;
	if (o != TERN_OUTCOME_ERROR && o != TERN_OUTCOME_ABORT)
		observe(&r->m->e2e, now - r->t0);
	if (usage) {
		r->m->prompt_tokens += usage->prompt_tokens;
		r->m->generation_tokens += usage->completion_tokens;
	}
	pthread_mutex_unlock(&r->m->mu);
}

void tern_metrics_req_done(tern_metrics_req *r, int finish_reason, const Tern__V1__Usage *usage)
{
	tern_outcome o;
	switch (finish_reason) {
	case TERN__V1__FINISH_REASON__FINISH_REASON_STOP:
		o = TERN_OUTCOME_STOP;
		break;
	case TERN__V1__FINISH_REASON__FINISH_REASON_LENGTH:
		o = TERN_OUTCOME_LENGTH;
		break;
	case TERN__V1__FINISH_REASON__FINISH_REASON_CANCELLED:
		o = TERN_OUTCOME_CANCELLED;
		break;
	default:
		o = TERN_OUTCOME_ERROR;
	}
	req_end(r, o, usage);
}

void tern_metrics_req_fail(tern_metrics_req *r, tern_outcome o)
{
	req_end(r, o == TERN_OUTCOME_ABORT ? TERN_OUTCOME_ABORT : TERN_OUTCOME_ERROR, NULL);
}

void tern_metrics_http(tern_metrics *m, unsigned status)
{
	size_t i = 0;
	while (i < N_HTTP_CODES && http_codes[i] != status)
		i++;
	pthread_mutex_lock(&m->mu);
	m->http[i]++;
	pthread_mutex_unlock(&m->mu);
}

static void head(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(FILE *f, const char *name, const char *type, const char *help, double v)
{
	head(f, name, type, help);
	fprintf(f, "%s %.17g\n", name, v);
}

static void render_histogram(FILE *f, const char *name, const char *help, const histogram *h)
{
	head(f, name, "histogram", help);
	unsigned long long cum = 0;
	for (size_t i = 0; i < h->n; i++) {
		cum += h->counts[i];
		fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i], cum);
	}
	fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.17g\n%s_count %llu\n", name, h->count, name, h->sum, name,
		h->count);
}

static void render_stats(FILE *f, const Tern__V1__StatsResponse *st)
{
	one(f, "tern_num_requests_running", "gauge", "Sequences the coordinator is generating (holding a KV slot).",
	    st->active_sequences);
	one(f, "tern_num_requests_waiting", "gauge", "Requests admitted by the coordinator, waiting for a KV slot.",
	    st->queue_depth);
	one(f, "tern_kv_slots_used", "gauge", "KV-cache slots in use (one per running sequence).",
	    st->kv_slots_total >= st->kv_slots_free ? st->kv_slots_total - st->kv_slots_free : 0);
	one(f, "tern_kv_slots_capacity", "gauge", "KV-cache slots of the coordinator (--slots).", st->kv_slots_total);
	if (!st->n_stages)
		return;
	head(f, "tern_stage_step_seconds", "gauge", "Mean compute time of a pipeline stage per micro-batch.");
	for (size_t i = 0; i < st->n_stages; i++)
		fprintf(f, "tern_stage_step_seconds{stage=\"%u\"} %.17g\n", st->stages[i]->stage,
			st->stages[i]->mean_step_ms * 1e-3);
	head(f, "tern_stage_busy_ratio", "gauge", "Share of wall time a pipeline stage spent computing.");
	for (size_t i = 0; i < st->n_stages; i++)
		fprintf(f, "tern_stage_busy_ratio{stage=\"%u\"} %.17g\n", st->stages[i]->stage,
			st->stages[i]->busy_fraction);
}

void tern_metrics_render(tern_metrics *m, const Tern__V1__StatsResponse *stats, FILE *f)
{
	one(f, "tern_up", "gauge", "1 when the coordinator answered this scrape's Stats call, else 0.", stats ? 1 : 0);
	if (stats)
		render_stats(f, stats);
	pthread_mutex_lock(&m->mu);
	one(f, "tern_job_restarts_total", "counter",
	    "Times tern-server found its MPI job dead or stalled and started it again (or gave up).",
	    (double)m->restarts);
	one(f, "tern_requests_resumed_total", "counter",
	    "Requests in flight when the job died that continued on its next start.", (double)m->resumed);
	one(f, "tern_host_replacements_total", "counter",
	    "Failed hosts tern-server replaced by a spare host of the hostfile on a restart.", (double)m->host_swaps);
	one(f, "tern_host_copy_bytes_total", "counter",
	    "Bytes of model or plan files copied to spare hosts before they took a failed host's place.",
	    (double)m->copied_bytes);
	render_histogram(f, "tern_resume_pause_seconds",
			 "The pause a resumed request saw: from its stream's failure to its next token.", &m->pause);
	head(f, "tern_request_finished_total", "counter",
	     "Generation requests sent to the coordinator, by how they ended (abort: the client left first).");
	for (int o = 0; o < TERN_OUTCOME_COUNT; o++)
		fprintf(f, "tern_request_finished_total{finished_reason=\"%s\"} %llu\n", outcome_names[o],
			m->outcomes[o]);
	one(f, "tern_prompt_tokens_total", "counter", "Prompt tokens of the requests that finished (their usage).",
	    (double)m->prompt_tokens);
	one(f, "tern_generation_tokens_total", "counter",
	    "Generated tokens of the requests that finished (their usage).", (double)m->generation_tokens);
	render_histogram(f, "tern_time_to_first_token_seconds", "Time from sending a request to its first token.",
			 &m->ttft);
	render_histogram(f, "tern_inter_token_latency_seconds", "Time between consecutive tokens of a request.",
			 &m->itl);
	render_histogram(f, "tern_e2e_request_latency_seconds",
			 "Time from sending a request to its final message (stop, length, cancelled).", &m->e2e);
	head(f, "tern_http_requests_total", "counter", "HTTP responses tern-server sent, by status code.");
	for (size_t i = 0; i <= N_HTTP_CODES; i++) {
		if (i < N_HTTP_CODES)
			fprintf(f, "tern_http_requests_total{code=\"%u\"} %llu\n", http_codes[i], m->http[i]);
		else
			fprintf(f, "tern_http_requests_total{code=\"other\"} %llu\n", m->http[i]);
	}
	pthread_mutex_unlock(&m->mu);
}

void tern_metrics_job_restart(tern_metrics *m)
{
	pthread_mutex_lock(&m->mu);
	m->restarts++;
	pthread_mutex_unlock(&m->mu);
}

void tern_metrics_resumed(tern_metrics *m, double pause_s)
{
	pthread_mutex_lock(&m->mu);
	m->resumed++;
	observe(&m->pause, pause_s);
	pthread_mutex_unlock(&m->mu);
}

void tern_metrics_host_replaced(tern_metrics *m, uint64_t copied_bytes)
{
	pthread_mutex_lock(&m->mu);
	m->host_swaps++;
	m->copied_bytes += copied_bytes;
	pthread_mutex_unlock(&m->mu);
}
