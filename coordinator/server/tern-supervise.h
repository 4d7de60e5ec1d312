/* tern-supervise.h: tern-server's supervision of the MPI job it launched.
 *
 * A thread of its own starts the job (tern-launch.h), watches it (its exit,
 * and the coordinator's Health every second), and when it dies or stops
 * answering (a stall) kills what is left of its process group and starts it
 * again after a back-off (1 s, 2 s, 4 s, ... capped; back to 1 s once a job
 * has served backoff_reset_s), reusing the model or
 * plan as it is on disk. Work is re-admitted only once Health says every
 * stage is up again. More than restart_limit restarts within
 * restart_window_s: the job is left down (FAILED) and every request held for
 * it ends with UNAVAILABLE.
 *
 * Held streams (tern-hold.h) wait on it: a stream whose job died waits until
 * a later generation of the job is up, then resumes. The generation is the
 * restart count: 0 for the first job.
 *
 * With a hostfile, the job's stderr is read for the hosts it names failed
 * (mpirun's lost daemon or dead rank, the coordinator's dead stage); on the
 * restart each is replaced by the next "# spare: host slots=N" of the
 * hostfile (tern-launch.h), taking its slots, once the files of its stages
 * are there (tern_launch_sync_host copies what is missing or different; a
 * spare that cannot be brought up to date is skipped); the log, /health,
 * Health and /metrics say which replaced which, the log and /metrics how
 * many bytes were copied.
 *
 * Attached (no launch options): nothing is launched or restarted; the
 * supervisor only says UP (generation 0), so held streams pass every error
 * through as it is. */
#ifndef TERN_SUPERVISE_H
#define TERN_SUPERVISE_H

#include "tern-base.h"
#include "tern-grpc-client.h"
#include "tern-launch.h"
#include "tern-metrics.h"

typedef enum tern_job_state {
	TERN_JOB_STARTING, /* launched, not yet ready (or between restarts) */
	TERN_JOB_UP,       /* Health said ready */
	TERN_JOB_FAILED,   /* past the restart limit, or the first start failed: left down */
	TERN_JOB_STOPPING, /* tern-server is stopping */
} tern_job_state;

typedef struct tern_supervisor_opts {
	const tern_launch_opts *launch; /* NULL: attached (nothing to restart); borrowed, must outlive */
	tern_grpc_client *up;           /* the coordinator's channel (the same address on every start) */
	tern_metrics *metrics;          /* restarts and resumes are counted there; may be NULL */
	double ready_timeout_s;         /* a start not ready within this has failed (default 600) */
	int restart_limit;              /* restarts allowed within restart_window_s (default 5) */
	double restart_window_s;        /* (default 300) */
	double backoff_max_s;           /* back-off cap (default 30) */
	double backoff_reset_s;         /* a job up and answering Health this long restarts at the first
					 * back-off step when it next dies (default 10) */
	double stall_s;                 /* Health unanswered this long while up: the job is killed (default 10) */
	const char *unix_socket;        /* the coordinator's socket file, removed before each restart; or NULL */
} tern_supervisor_opts;

typedef struct tern_supervisor tern_supervisor;

/* The coordinator's Health over up within deadline_s: 1 ready, 0 answered
 * not ready, -1 no answer; model (when not NULL) gets the name it gave. */
int tern_coordinator_health(tern_grpc_client *up, double deadline_s, char *model, size_t model_len);

/* A host of the hostfile that failed and the spare that took its place. */
typedef struct tern_host_swap {
	char failed[256];
	char spare[256];
	int files_copied;      /* files copied to the spare before it took over */
	unsigned long long bytes_copied;
} tern_host_swap;

/* Launches the job (unless attached) and starts watching it. Returns at
 * once; tern_supervisor_await(s, 0, ...) waits for the first job. Errors:
 * those of tern_launch_start, TERN_ENOMEM, TERN_EIO (no thread). */
int tern_supervisor_start(const tern_supervisor_opts *o, tern_supervisor **out, tern_err *err);

/* Waits up to max_s for a job of generation >= min_gen to be UP. 1: it is
 * (*gen its generation; model, when not NULL, the name its Health gave);
 * 0: not yet; -1: it never will be (FAILED or STOPPING), why says why. */
int tern_supervisor_await(tern_supervisor *s, unsigned min_gen, double max_s, unsigned *gen, char *model,
			  size_t model_len, char *why, size_t why_len);

/* The state now and its generation (the restart count). */
tern_job_state tern_supervisor_state(tern_supervisor *s, unsigned *gen);
/* 1 when it restarts jobs (it launched one, restart_limit > 0), 0 when
 * attached or never restarting. */
int tern_supervisor_restarts_jobs(const tern_supervisor *s);
/* The replacements made so far, oldest first: up to max into out; returns
 * how many. */
int tern_supervisor_swaps(tern_supervisor *s, tern_host_swap *out, int max);
/* Counts one resumed request and the pause it saw (for /metrics). */
void tern_supervisor_resumed(tern_supervisor *s, double pause_s);
/* "up", "starting", "failed", "stopping". */
const char *tern_job_state_name(tern_job_state st);

/* Stops supervising: held streams waiting give up, the job (if any) gets
 * SIGTERM (its coordinator drains) and is killed after grace_s. Returns the
 * job's exit status (0 clean), -1 when it had to be killed, or 0 when there
 * was none (attached, or left down). Call once; s stays valid for held
 * streams until tern_supervisor_free. */
int tern_supervisor_stop(tern_supervisor *s, double grace_s);
/* After tern_supervisor_stop and once no held stream uses s. NULL: no-op. */
void tern_supervisor_free(tern_supervisor *s);

#endif /* TERN_SUPERVISE_H */
