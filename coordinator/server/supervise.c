/* supervise.c: tern-server's MPI job, started, watched and restarted
 * (tern-supervise.h). One thread owns the job: it is the only caller of
 * tern_launch_*; everyone else reads the state under the mutex. */
#include "tern-supervise.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tern.pb-c.h"

#define SUP_TICK_S 0.2   /* how often the thread looks at the job */
#define SUP_HEALTH_S 1.0 /* Health while up, every ... */
#define SUP_HEALTH_DEADLINE_S 2.0

struct tern_supervisor {
	tern_supervisor_opts o;
	pthread_t thread;
	int has_thread;
	pthread_mutex_t mu;
	pthread_cond_t changed; /* state or generation changed */
	tern_job_state state;
	unsigned gen;
	char model[512];  /* what Health named, for the first job */
	char why[512];    /* why FAILED */
	int stop;         /* tern_supervisor_stop was called */
	double grace_s;
	int stop_status;
	tern_job job;
	tern_launch_opts lo;   /* the launch options, hostfile switched to hosts_path after a replacement */
	tern_hostfile hf;      /* with a hostfile: the hosts as launched now, and the spares left */
	char hosts_dir[64];    /* a private directory for the rewritten hostfile; "" until needed */
	char hosts_path[128];
	tern_host_swap swaps[TERN_MAX_HOSTS]; /* (n_swaps) replacements made, in order */
	int n_swaps;
	double *fails;    /* (restart_limit + 1) ring of failure times */
	unsigned n_fails;
};

const char *tern_job_state_name(tern_job_state st)
{
	switch (st) {
	case TERN_JOB_STARTING:
		return "starting";
	case TERN_JOB_UP:
		return "up";
	case TERN_JOB_FAILED:
		return "failed";
	case TERN_JOB_STOPPING:
		return "stopping";
	}
	return "?";
}

static void set_state(tern_supervisor *s, tern_job_state st)
{
	pthread_mutex_lock(&s->mu);
	if (s->state != TERN_JOB_STOPPING)
		s->state = st;
	pthread_cond_broadcast(&s->changed);
	pthread_mutex_unlock(&s->mu);
}

static int stopping(tern_supervisor *s)
{
	pthread_mutex_lock(&s->mu);
	const int st = s->stop;
	pthread_mutex_unlock(&s->mu);
	return st;
}

/* The CLOCK_REALTIME time d seconds from now (pthread_cond_timedwait's clock). */
static struct timespec deadline_after(double d)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	const double t = (double)ts.tv_sec + ts.tv_nsec * 1e-9 + d;
	ts.tv_sec = (time_t)t;
	ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
	return ts;
}

/* Sleeps up to d seconds, waking early when stopped; returns stopping(s). */
static int nap(tern_supervisor *s, double d)
{
	pthread_mutex_lock(&s->mu);
	if (!s->stop && d > 0) {
		const struct timespec ts = deadline_after(d);
		pthread_cond_timedwait(&s->changed, &s->mu, &ts);
	}
	const int st = s->stop;
	pthread_mutex_unlock(&s->mu);
	return st;
}

int tern_coordinator_health(tern_grpc_client *up, double deadline_s, char *model, size_t model_len)
{
	Tern__V1__HealthRequest q = TERN__V1__HEALTH_REQUEST__INIT;
	char detail[256];
	int st;
	Tern__V1__HealthResponse *h = (Tern__V1__HealthResponse *)tern_grpc_unary(
		up, "/tern.v1.Tern/Health", &q.base, deadline_s, &tern__v1__health_response__descriptor, &st, detail,
		sizeof detail);
	if (!h)
		return -1;
	const int ready = h->ready;
	if (model && h->model)
		snprintf(model, model_len, "%s", h->model);
	tern__v1__health_response__free_unpacked(h, NULL);
	return ready;
}

static int health(tern_supervisor *s, char *model, size_t model_len)
{
	return tern_coordinator_health(s->o.up, SUP_HEALTH_DEADLINE_S, model, model_len);
}

static int exit_code(int status)
{
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Whatever of the job's process group is left (a rank mpirun did not reap,
 * a stopped one) goes, by the group's id, which is the job's pid. */
static void kill_leftovers(tern_supervisor *s)
{
	if (s->job.pid > 0)
		kill(-s->job.pid, SIGKILL);
}

/* Starts a job and waits until it is ready: 1 ready, 0 it died or was not
 * ready in time (said on stderr), -1 stopping. */
static int start_and_wait(tern_supervisor *s)
{
	tern_err err;
	if (s->o.unix_socket)
		unlink(s->o.unix_socket);
	tern_launch_release(&s->job);
	if (tern_launch_start(&s->lo, &s->job, &err) < 0) {
		fprintf(stderr, "tern-server: cannot start the MPI job: %s\n", err.msg);
		return 0;
	}
	const double t0 = tern_now_s();
	char model[sizeof s->model] = "";
	for (;;) {
		if (stopping(s))
			return -1;
		if (health(s, model, sizeof model) == 1)
			break;
		if (tern_launch_poll(&s->job)) {
			fprintf(stderr, "tern-server: the MPI job exited before it served (status %d)\n",
				exit_code(s->job.status));
			return 0;
		}
		if (tern_now_s() - t0 > s->o.ready_timeout_s) {
			fprintf(stderr, "tern-server: the MPI job was not ready within %.0f s: killing it\n",
				s->o.ready_timeout_s);
			kill_leftovers(s);
			while (!tern_launch_poll(&s->job))
				nap(s, 0.05);
			return 0;
		}
		nap(s, SUP_TICK_S);
	}
	pthread_mutex_lock(&s->mu);
	if (!s->model[0])
		snprintf(s->model, sizeof s->model, "%s", model);
	pthread_mutex_unlock(&s->mu);
	return 1;
}

/* Watches a ready job until it exits or stalls: 1 it ended (reaped), -1
 * stopping (the job is still running). Once it has answered Health for
 * backoff_reset_s since it came up, *streak (the back-off's failures in a
 * row) is zeroed: an isolated fault costs the first back-off step again,
 * while a job that dies soon after every start keeps doubling it. */
static int watch(tern_supervisor *s, int *streak)
{
	const double up_since = tern_now_s();
	double last_ok = up_since, last_probe = 0;
	for (;;) {
		if (nap(s, SUP_TICK_S))
			return -1;
		if (tern_launch_poll(&s->job)) {
			fprintf(stderr, "tern-server: the MPI job exited (status %d)\n", exit_code(s->job.status));
			return 1;
		}
		const double now = tern_now_s();
		if (now - last_probe < SUP_HEALTH_S)
			continue;
		last_probe = now;
		if (health(s, NULL, 0) >= 0) {
			last_ok = tern_now_s();
			if (*streak > 0 && last_ok - up_since >= s->o.backoff_reset_s) {
				*streak = 0;
				fprintf(stderr, "tern-server: the MPI job has served %.0f s: the back-off starts anew\n",
					s->o.backoff_reset_s);
			}
			continue;
		}
		if (tern_now_s() - last_ok >= s->o.stall_s) {
			fprintf(stderr, "tern-server: the coordinator has not answered for %.1f s: killing the MPI job\n",
				tern_now_s() - last_ok);
			kill_leftovers(s);
			while (!tern_launch_poll(&s->job))
				if (nap(s, 0.05))
					return -1;
			return 1;
		}
	}
}

/* Puts a spare in place of each host the dead job's stderr named failed
 * (not the first: the coordinator's, next to tern-server), and launches the
 * next job from a hostfile written with the hosts as they now are. Before a
 * spare takes the host's slots, the files of those stages are copied to it
 * where missing or different (tern_launch_sync_host); a spare that cannot
 * be brought up to date is skipped (dropped from the spares) for the next;
 * with none left the job restarts on the failed host. */
static void replace_failed_hosts(tern_supervisor *s)
{
	if (!s->lo.hostfile)
		return;
	int changed = 0;
	for (int f = 0; f < s->job.n_failed; f++) {
		const char *bad = s->job.failed[f];
		int at = -1, first_slot = 0;
		for (int i = 0; i < s->hf.n_hosts && at < 0; i++) {
			if (!strcmp(s->hf.host[i].name, bad))
				at = i;
			else
				first_slot += s->hf.host[i].slots;
		}
		if (at < 0)
			continue;
		if (at == 0) {
			fprintf(stderr, "tern-server: host %s (the coordinator's) failed: it is not replaced\n", bad);
			continue;
		}
		tern_host *h = &s->hf.host[at];
		/* Slot k runs stage k (slot 0 the coordinator): --map-by slot. */
		const int first_stage = first_slot, n_stages = h->slots, stages = s->hf.slots - 1;
		int taken = 0;
		while (!taken && s->hf.n_spares > 0) {
			const tern_host spare = s->hf.spare[0];
			memmove(s->hf.spare, s->hf.spare + 1, (size_t)(s->hf.n_spares - 1) * sizeof *s->hf.spare);
			s->hf.n_spares--;
			tern_sync_result sr;
			tern_err err;
			if (tern_launch_sync_host(&s->lo, spare.name, first_stage, n_stages, stages, &sr, &err) < 0) {
				fprintf(stderr, "tern-server: spare host %s skipped: %s\n", spare.name, err.msg);
				continue;
			}
			pthread_mutex_lock(&s->mu);
			if (s->n_swaps < TERN_MAX_HOSTS) {
				tern_host_swap *sw = &s->swaps[s->n_swaps++];
				memcpy(sw->failed, h->name, sizeof h->name);
				memcpy(sw->spare, spare.name, sizeof spare.name);
				sw->files_copied = sr.copied;
				sw->bytes_copied = sr.bytes;
			}
			pthread_mutex_unlock(&s->mu);
			fprintf(stderr,
				"tern-server: host %s failed: spare host %s takes its %d slot(s) (stages %d-%d; %d of %d "
				"file(s) copied, %llu bytes, in %.1f s)\n",
				h->name, spare.name, h->slots, first_stage, first_stage + n_stages - 1, sr.copied, sr.files,
				(unsigned long long)sr.bytes, sr.seconds);
			if (s->o.metrics)
				tern_metrics_host_replaced(s->o.metrics, sr.bytes);
			/* The spare takes the failed host's slots: the same stages,
			 * the same layers, whose files it now holds. */
			memcpy(h->name, spare.name, sizeof h->name);
			changed = taken = 1;
		}
		if (!taken)
			fprintf(stderr, "tern-server: host %s failed and no spare host is left: restarting on it\n", bad);
	}
	if (!changed)
		return;
	tern_err err;
	if (!s->hosts_dir[0]) {
		snprintf(s->hosts_dir, sizeof s->hosts_dir, "/tmp/tern-hosts-XXXXXX");
		if (!mkdtemp(s->hosts_dir)) {
			fprintf(stderr, "tern-server: cannot make a directory for the new hostfile: %s\n", strerror(errno));
			s->hosts_dir[0] = '\0';
			return;
		}
		snprintf(s->hosts_path, sizeof s->hosts_path, "%s/hosts", s->hosts_dir);
	}
	if (tern_hostfile_write(&s->hf, s->hosts_path, &err) < 0) {
		fprintf(stderr, "tern-server: %s\n", err.msg);
		return;
	}
	s->lo.hostfile = s->hosts_path;
}

/* One more failure: 1 when the restart limit allows another start. */
static int may_restart(tern_supervisor *s)
{
	const double now = tern_now_s();
	const unsigned cap = (unsigned)s->o.restart_limit + 1;
	s->fails[s->n_fails % cap] = now;
	s->n_fails++;
	unsigned recent = 0;
	for (unsigned i = 0; i < cap && i < s->n_fails; i++)
		recent += now - s->fails[i] <= s->o.restart_window_s;
	return recent <= (unsigned)s->o.restart_limit;
}

static void *supervise(void *arg)
{
	tern_supervisor *s = arg;
	int first = 1, streak = 0;
	for (;;) {
		const int r = start_and_wait(s);
		if (r < 0)
			break;
		if (r == 1) {
			pthread_mutex_lock(&s->mu);
			if (!first)
				s->gen++;
			if (s->state != TERN_JOB_STOPPING)
				s->state = TERN_JOB_UP;
			const unsigned gen = s->gen;
			pthread_cond_broadcast(&s->changed);
			pthread_mutex_unlock(&s->mu);
			if (!first)
				fprintf(stderr, "tern-server: the MPI job is up again (generation %u)\n", gen);
			first = 0;
			if (watch(s, &streak) < 0)
				break;
		} else if (first) {
			pthread_mutex_lock(&s->mu);
			snprintf(s->why, sizeof s->why, "the MPI job did not start");
			pthread_mutex_unlock(&s->mu);
			kill_leftovers(s);
			set_state(s, TERN_JOB_FAILED);
			return NULL;
		}
		kill_leftovers(s);
		set_state(s, TERN_JOB_STARTING);
		if (!may_restart(s)) {
			pthread_mutex_lock(&s->mu);
			snprintf(s->why, sizeof s->why, "the MPI job failed %d times within %.0f s: not restarting it",
				 s->o.restart_limit + 1, s->o.restart_window_s);
			fprintf(stderr, "tern-server: %s\n", s->why);
			pthread_mutex_unlock(&s->mu);
			set_state(s, TERN_JOB_FAILED);
			return NULL;
		}
		double delay = 1.0;
		for (int i = 0; i < streak && delay < s->o.backoff_max_s; i++)
			delay *= 2;
		if (delay > s->o.backoff_max_s)
			delay = s->o.backoff_max_s;
		streak++;
		/* Copying to a spare is part of the wait, not added to it. */
		const double t_swap = tern_now_s();
		replace_failed_hosts(s);
		if (s->o.metrics)
			tern_metrics_job_restart(s->o.metrics);
		fprintf(stderr, "tern-server: restarting the MPI job in %.0f s\n", delay);
		if (nap(s, delay - (tern_now_s() - t_swap)))
			break;
	}
	/* Stopping: the job, if one runs, is stopped in order. */
	pthread_mutex_lock(&s->mu);
	const double grace = s->grace_s;
	pthread_mutex_unlock(&s->mu);
	if (s->job.pid > 0 && !s->job.exited)
		s->stop_status = tern_launch_stop(&s->job, grace);
	return NULL;
}

int tern_supervisor_start(const tern_supervisor_opts *o, tern_supervisor **out, tern_err *err)
{
	*out = NULL;
	tern_supervisor *s = calloc(1, sizeof *s);
	if (!s)
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	s->o = *o;
	if (s->o.ready_timeout_s <= 0)
		s->o.ready_timeout_s = 600;
	if (s->o.restart_limit < 0)
		s->o.restart_limit = 5;
	if (s->o.restart_window_s <= 0)
		s->o.restart_window_s = 300;
	if (s->o.backoff_max_s <= 0)
		s->o.backoff_max_s = 30;
	if (s->o.stall_s <= 0)
		s->o.stall_s = 10;
	if (s->o.backoff_reset_s <= 0)
		s->o.backoff_reset_s = 10;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->changed, NULL);
	s->state = o->launch ? TERN_JOB_STARTING : TERN_JOB_UP;
	s->job.err_fd = -1;
	if (!o->launch) {
		*out = s;
		return 0;
	}
	s->lo = *o->launch;
	if (s->lo.hostfile) {
		const int rc = tern_hostfile_read(s->lo.hostfile, &s->hf, err);
		if (rc < 0) {
			tern_supervisor_free(s);
			return rc;
		}
	}
	s->fails = calloc((size_t)s->o.restart_limit + 1, sizeof *s->fails);
	if (!s->fails) {
		tern_supervisor_free(s);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	}
	if (pthread_create(&s->thread, NULL, supervise, s) != 0) {
		tern_supervisor_free(s);
		return TERN_ERR(err, TERN_EIO, "cannot start the supervising thread");
	}
	s->has_thread = 1;
	*out = s;
	return 0;
}

int tern_supervisor_await(tern_supervisor *s, unsigned min_gen, double max_s, unsigned *gen, char *model,
			  size_t model_len, char *why, size_t why_len)
{
	const double end = tern_now_s() + (max_s > 0 ? max_s : 0);
	pthread_mutex_lock(&s->mu);
	for (;;) {
		if (s->state == TERN_JOB_UP && s->gen >= min_gen) {
			if (gen)
				*gen = s->gen;
			if (model)
				snprintf(model, model_len, "%s", s->model);
			pthread_mutex_unlock(&s->mu);
			return 1;
		}
		if (s->state == TERN_JOB_FAILED || s->state == TERN_JOB_STOPPING) {
			if (why)
				snprintf(why, why_len, "%s",
					 s->state == TERN_JOB_STOPPING ? "the server is shutting down" : s->why);
			pthread_mutex_unlock(&s->mu);
			return -1;
		}
		const double left = end - tern_now_s();
		if (left <= 0)
			break;
		const struct timespec ts = deadline_after(left);
		pthread_cond_timedwait(&s->changed, &s->mu, &ts);
	}
	pthread_mutex_unlock(&s->mu);
	return 0;
}

tern_job_state tern_supervisor_state(tern_supervisor *s, unsigned *gen)
{
	pthread_mutex_lock(&s->mu);
	const tern_job_state st = s->state;
	if (gen)
		*gen = s->gen;
	pthread_mutex_unlock(&s->mu);
	return st;
}

int tern_supervisor_restarts_jobs(const tern_supervisor *s)
{
	return s->o.launch != NULL && s->o.restart_limit > 0;
}

int tern_supervisor_swaps(tern_supervisor *s, tern_host_swap *out, int max)
{
	pthread_mutex_lock(&s->mu);
	const int n = s->n_swaps < max ? s->n_swaps : max;
	if (n > 0)
		memcpy(out, s->swaps, (size_t)n * sizeof *out);
	pthread_mutex_unlock(&s->mu);
	return n;
}

void tern_supervisor_resumed(tern_supervisor *s, double pause_s)
{
	if (s->o.metrics)
		tern_metrics_resumed(s->o.metrics, pause_s);
}

int tern_supervisor_stop(tern_supervisor *s, double grace_s)
{
	if (!s)
		return 0;
	pthread_mutex_lock(&s->mu);
	s->stop = 1;
	s->grace_s = grace_s;
	s->state = TERN_JOB_STOPPING;
	pthread_cond_broadcast(&s->changed);
	pthread_mutex_unlock(&s->mu);
	if (s->has_thread) {
		pthread_join(s->thread, NULL);
		s->has_thread = 0;
	}
	return s->stop_status;
}

void tern_supervisor_free(tern_supervisor *s)
{
	if (!s)
		return;
	if (s->has_thread)
		tern_supervisor_stop(s, 0);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->changed);
	tern_launch_release(&s->job);
	if (s->hosts_dir[0]) {
		unlink(s->hosts_path);
		rmdir(s->hosts_dir);
	}
	free(s->fails);
	free(s);
}
