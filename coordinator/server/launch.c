/* launch.c: starting and stopping tern-server's MPI job (tern-launch.h). The
 * command line is deploy/tern-up's: mpirun --bind-to none --oversubscribe
 * --mca mpi_yield_when_idle 1 [--hostfile H --map-by slot] -n 1
 * tern-coordinator ... : -n S tern-node. With 0 stages the coordinator runs
 * alone as an MPI singleton, without mpirun. */
#include "tern-launch.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int tern_launch_numa_domains(void)
{
	DIR *d = opendir("/sys/devices/system/node");
	int n = 0;
	if (d) {
		struct dirent *e;
		while ((e = readdir(d)))
			if (!strncmp(e->d_name, "node", 4) && e->d_name[4] >= '0' && e->d_name[4] <= '9')
				n++;
		closedir(d);
	}
	return n > 0 ? n : 1;
}

/* Slots of an Open MPI hostfile ("host slots=N", comments, blank lines). */
static int hostfile_slots(const char *path, tern_err *err)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return TERN_ERR(err, TERN_EINVAL, "cannot read the hostfile %s", path);
	char line[1024];
	long total = 0;
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "#\r\n")] = '\0';
		char *tok = strtok(line, " \t");
		if (!tok)
			continue;
		long slots = 1;
		while ((tok = strtok(NULL, " \t")))
			if (!strncmp(tok, "slots=", 6))
				slots = strtol(tok + 6, NULL, 10);
		if (slots < 1 || slots > 4096) {
			fclose(f);
			return TERN_ERR(err, TERN_EINVAL, "%s: a host with slots=%ld", path, slots);
		}
		total += slots;
	}
	fclose(f);
	if (total < 2)
		return TERN_ERR(err, TERN_EINVAL, "%s has %ld slot(s): the coordinator's and at least one stage's are needed",
				path, total);
	return (int)(total > 4097 ? 4097 : total);
}

static int executable(const char *p)
{
	return access(p, X_OK) == 0;
}

int tern_launch_start(const tern_launch_opts *o, tern_job *job, tern_err *err)
{
	memset(job, 0, sizeof *job);
	char coord[4096], node[4096], stages_s[16];
	snprintf(coord, sizeof coord, "%s/tern-coordinator", o->bin_dir);
	snprintf(node, sizeof node, "%s/tern-node", o->bin_dir);
	if (!executable(node))
		snprintf(node, sizeof node, "%s/../node/tern-node", o->bin_dir);
	if (!executable(coord))
		return TERN_ERR(err, TERN_EINVAL, "no tern-coordinator in %s", o->bin_dir);
	int stages = o->stages;
	if (o->hostfile) {
		const int slots = hostfile_slots(o->hostfile, err);
		if (slots < 0)
			return slots;
		stages = slots - 1;
	} else if (stages < 0) {
		stages = tern_launch_numa_domains();
	}
	if (stages > 0 && !executable(node))
		return TERN_ERR(err, TERN_EINVAL, "no tern-node in %s or %s/../node", o->bin_dir, o->bin_dir);
	snprintf(stages_s, sizeof stages_s, "%d", stages);
	const char **argv = calloc((size_t)o->n_coord_args + 32, sizeof *argv);
	if (!argv)
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	int n = 0;
	const int mpirun = stages > 0;
	if (mpirun) {
		const char *pre[] = {"mpirun", "--bind-to", "none", "--oversubscribe", "--mca", "mpi_yield_when_idle",
				     "1"};
		for (size_t i = 0; i < sizeof pre / sizeof pre[0]; i++)
			argv[n++] = pre[i];
		if (o->hostfile) {
			argv[n++] = "--hostfile";
			argv[n++] = o->hostfile;
			argv[n++] = "--map-by";
			argv[n++] = "slot";
		}
		argv[n++] = "-n";
		argv[n++] = "1";
	}
	argv[n++] = coord;
	argv[n++] = "-m";
	argv[n++] = o->model;
	argv[n++] = "--stages";
	argv[n++] = stages_s;
	argv[n++] = "--listen";
	argv[n++] = o->grpc_listen;
	for (int i = 0; i < o->n_coord_args; i++)
		argv[n++] = o->coord_args[i];
	if (mpirun) {
		argv[n++] = ":";
		argv[n++] = "-n";
		argv[n++] = stages_s;
		argv[n++] = node;
	}
	argv[n] = NULL;
	fprintf(stderr, "tern-server:");
	for (int i = 0; i < n; i++)
		fprintf(stderr, " %s", argv[i]);
	fprintf(stderr, "\n");
	fflush(NULL);
	const pid_t pid = fork();
	if (pid < 0) {
		free(argv);
		return TERN_ERR(err, TERN_EIO, "fork: %s", strerror(errno));
	}
	if (pid == 0) {
		/* Its own process group: a terminal's Ctrl-C reaches tern-server,
		 * which stops the job in order. */
		setpgid(0, 0);
		signal(SIGPIPE, SIG_DFL);
		setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
		setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
		execvp(argv[0], (char *const *)argv);
		fprintf(stderr, "tern-server: cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	setpgid(pid, pid);
	free(argv);
	job->pid = pid;
	job->stages = stages;
	job->via_mpirun = mpirun;
	return 0;
}

int tern_launch_poll(tern_job *job)
{
	if (job->exited)
		return 1;
	if (job->pid <= 0)
		return 1;
	int st;
	const pid_t r = waitpid(job->pid, &st, WNOHANG);
	if (r == job->pid) {
		job->exited = 1;
		job->status = st;
		return 1;
	}
	return 0;
}

/* The coordinator among mpirun's children: the one whose environment says
 * OMPI_COMM_WORLD_RANK=0 (what deploy/tern-up does), by pid. */
static pid_t rank0_of(pid_t mpirun)
{
	DIR *d = opendir("/proc");
	if (!d)
		return -1;
	pid_t found = -1;
	struct dirent *e;
	while (found < 0 && (e = readdir(d))) {
		char *end;
		const long pid = strtol(e->d_name, &end, 10);
		if (*end || pid <= 0)
			continue;
		char path[64], buf[512];
		snprintf(path, sizeof path, "/proc/%ld/stat", pid);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		const size_t n = fread(buf, 1, sizeof buf - 1, f);
		fclose(f);
		buf[n] = '\0';
		/* pid (comm) state ppid ...: comm may hold spaces, so after the last ')'. */
		const char *rp = strrchr(buf, ')');
		long ppid = -1;
		if (!rp || sscanf(rp + 1, " %*c %ld", &ppid) != 1 || ppid != mpirun)
			continue;
		snprintf(path, sizeof path, "/proc/%ld/environ", pid);
		f = fopen(path, "r");
		if (!f)
			continue;
		static const char key[] = "OMPI_COMM_WORLD_RANK=0";
		char var[256];
		size_t at = 0;
		int ch;
		while ((ch = fgetc(f)) != EOF) {
			if (ch == '\0') {
				var[at] = '\0';
				if (!strcmp(var, key))
					found = (pid_t)pid;
				at = 0;
			} else if (at + 1 < sizeof var) {
				var[at++] = (char)ch;
			}
		}
		fclose(f);
	}
	closedir(d);
	return found;
}

static int wait_exit(tern_job *job, double s)
{
	const double t0 = tern_now_s();
	while (!tern_launch_poll(job)) {
		if (tern_now_s() - t0 >= s)
			return 0;
		struct timespec ts = {0, 50 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	return 1;
}

int tern_launch_stop(tern_job *job, double grace_s)
{
	if (job->pid <= 0)
		return 0;
	if (!tern_launch_poll(job)) {
		const pid_t target = job->via_mpirun ? rank0_of(job->pid) : job->pid;
		/* No rank 0 found (it died, or mpirun is still starting): mpirun
		 * itself takes the job down. */
		kill(target > 0 ? target : job->pid, SIGTERM);
		if (!wait_exit(job, grace_s)) {
			fprintf(stderr, "tern-server: the job did not stop within %.0f s: killing it\n", grace_s);
			kill(-job->pid, SIGKILL);
			wait_exit(job, 10);
			return -1;
		}
	}
	if (!job->exited)
		return -1;
	return WIFEXITED(job->status) ? WEXITSTATUS(job->status) : 128 + WTERMSIG(job->status);
}
