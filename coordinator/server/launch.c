/* launch.c: starting and stopping tern-server's MPI job (tern-launch.h). The
 * command line is deploy/tern-up's: mpirun --bind-to none --oversubscribe
 * --mca mpi_yield_when_idle 1 [--hostfile H --map-by slot] -n 1
 * tern-coordinator ... : -n S tern-node. With 0 stages the coordinator runs
 * alone as an MPI singleton, without mpirun. */
#include "tern-launch.h"

#include <dirent.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <errno.h>
#include <fcntl.h>
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

/* In the child, before exec: a fresh network namespace with loopback up
 * (what deploy/private-net does under unshare --net). */
static int enter_private_net(void)
{
	if (unshare(CLONE_NEWNET) < 0)
		return -1;
	const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
	int rc = ioctl(fd, SIOCGIFFLAGS, &ifr);
	if (rc == 0) {
		ifr.ifr_flags |= IFF_UP;
		rc = ioctl(fd, SIOCSIFFLAGS, &ifr);
	}
	close(fd);
	return rc;
}

/* "host slots=N [other words]" (after the '#' is cut): 1 with the host, 0
 * for a blank line, -1 for bad slots. */
static int host_line(char *line, tern_host *h)
{
	char *save = NULL, *tok = strtok_r(line, " \t\r\n", &save);
	if (!tok)
		return 0;
	long slots = 1;
	snprintf(h->name, sizeof h->name, "%s", tok);
	while ((tok = strtok_r(NULL, " \t\r\n", &save)))
		if (!strncmp(tok, "slots=", 6))
			slots = strtol(tok + 6, NULL, 10);
	if (slots < 1 || slots > 4096)
		return -1;
	h->slots = (int)slots;
	return 1;
}

int tern_hostfile_read(const char *path, tern_hostfile *hf, tern_err *err)
{
	memset(hf, 0, sizeof *hf);
	FILE *f = fopen(path, "r");
	if (!f)
		return TERN_ERR(err, TERN_EINVAL, "cannot read the hostfile %s", path);
	char line[1024];
	long total = 0;
	int lineno = 0, rc = 0;
	while (rc == 0 && fgets(line, sizeof line, f)) {
		lineno++;
		char *p = line + strspn(line, " \t");
		if (*p == '#') {
			/* Comments to mpirun; two of them are tern's: the cluster
			 * network, and spare hosts. */
			p += 1 + strspn(p + 1, " \t");
			if (!strncmp(p, "network:", 8) && !hf->network[0]) {
				p += 8 + strspn(p + 8, " \t");
				const size_t n = strcspn(p, " \t\r\n");
				if (n > 0 && n < sizeof hf->network) {
					memcpy(hf->network, p, n);
					hf->network[n] = '\0';
				}
			} else if (!strncmp(p, "spare:", 6)) {
				if (hf->n_spares == TERN_MAX_HOSTS) {
					rc = TERN_ERR(err, TERN_EINVAL, "%s:%d: more than %d spare hosts", path, lineno,
						      TERN_MAX_HOSTS);
					break;
				}
				const int k = host_line(p + 6, &hf->spare[hf->n_spares]);
				if (k < 0)
					rc = TERN_ERR(err, TERN_EINVAL, "%s:%d: a spare host with bad slots", path, lineno);
				else
					hf->n_spares += k;
			}
			continue;
		}
		line[strcspn(line, "#")] = '\0';
		if (hf->n_hosts == TERN_MAX_HOSTS) {
			char probe[sizeof line];
			memcpy(probe, line, sizeof probe);
			tern_host h;
			if (host_line(probe, &h) != 0)
				rc = TERN_ERR(err, TERN_EINVAL, "%s: more than %d hosts", path, TERN_MAX_HOSTS);
			continue;
		}
		const int k = host_line(line, &hf->host[hf->n_hosts]);
		if (k < 0)
			rc = TERN_ERR(err, TERN_EINVAL, "%s:%d: a host with bad slots (1..4096)", path, lineno);
		else if (k > 0)
			total += hf->host[hf->n_hosts++].slots;
	}
	fclose(f);
	if (rc < 0)
		return rc;
	if (total < 2)
		return TERN_ERR(err, TERN_EINVAL, "%s has %ld slot(s): the coordinator's and at least one stage's are needed",
				path, total);
	if (total > 4097)
		return TERN_ERR(err, TERN_EINVAL, "%s has %ld slots: at most 4097", path, total);
	hf->slots = (int)total;
	return 0;
}

int tern_hostfile_write(const tern_hostfile *hf, const char *path, tern_err *err)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return TERN_ERR(err, TERN_EIO, "cannot write %s: %s", path, strerror(errno));
	if (hf->network[0])
		fprintf(f, "# network: %s\n", hf->network);
	for (int i = 0; i < hf->n_hosts; i++)
		fprintf(f, "%s slots=%d\n", hf->host[i].name, hf->host[i].slots);
	for (int i = 0; i < hf->n_spares; i++)
		fprintf(f, "# spare: %s slots=%d\n", hf->spare[i].name, hf->spare[i].slots);
	if (fclose(f) != 0)
		return TERN_ERR(err, TERN_EIO, "cannot write %s: %s", path, strerror(errno));
	return 0;
}

/* Appends k words to argv at *n. */
static void push_words(const char **argv, int *n, const char *const *words, size_t k)
{
	for (size_t i = 0; i < k; i++)
		argv[(*n)++] = words[i];
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
	char network[256] = "";
	if (o->hostfile) {
		TERN_RETURN_IF(o->private_net, err, TERN_EINVAL, "--private-net is for a single box, not --hostfile");
		tern_hostfile hf;
		const int rc = tern_hostfile_read(o->hostfile, &hf, err);
		if (rc < 0)
			return rc;
		snprintf(network, sizeof network, "%s", o->network ? o->network : hf.network);
		stages = hf.slots - 1;
		TERN_RETURN_IF(!network[0], err, TERN_EINVAL,
			       "name the private cluster network MPI may use: --network CIDR, or a '# network: CIDR' "
			       "line in %s (MPI's TCP is unauthenticated)",
			       o->hostfile);
	} else if (stages < 0) {
		stages = tern_launch_numa_domains();
	}
	if (stages > 0 && !executable(node))
		return TERN_ERR(err, TERN_EINVAL, "no tern-node in %s or %s/../node", o->bin_dir, o->bin_dir);
	if (o->private_net) {
		TERN_RETURN_IF(geteuid() != 0, err, TERN_EINVAL, "--private-net needs root (a network namespace)");
		TERN_RETURN_IF(strncmp(o->grpc_listen, "unix:", 5) != 0, err, TERN_EINVAL,
			       "--private-net: the coordinator must serve on a unix: address (it is %s)", o->grpc_listen);
	}
	snprintf(stages_s, sizeof stages_s, "%d", stages);
	/* Fixed words: mpirun's 7, a hostfile's 13, "-n 1", the coordinator's 7,
	 * the stages' 4 and the NULL: 34 at most. */
	const char **argv = calloc((size_t)o->n_coord_args + 40, sizeof *argv);
	if (!argv)
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	int n = 0;
	const int mpirun = stages > 0;
	if (mpirun) {
		const char *pre[] = {"mpirun", "--bind-to", "none", "--oversubscribe", "--mca", "mpi_yield_when_idle",
				     "1"};
		push_words(argv, &n, pre, sizeof pre / sizeof pre[0]);
		if (o->hostfile) {
			/* TCP between ranks and daemons only on the cluster network. */
			const char *hf[] = {"--hostfile", o->hostfile, "--map-by", "slot", "--mca", "btl", "tcp,vader,self",
					    "--mca", "btl_tcp_if_include", network, "--mca", "oob_tcp_if_include",
					    network};
			push_words(argv, &n, hf, sizeof hf / sizeof hf[0]);
		} else {
			/* One box: shared memory between ranks (no TCP BTL listener),
			 * mpirun's OOB advertised on loopback. */
			const char *one[] = {"--mca", "btl", "self,vader", "--mca", "oob_tcp_if_include", "lo"};
			push_words(argv, &n, one, sizeof one / sizeof one[0]);
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
	/* The job's stderr comes through us (tern_launch_poll forwards it), so
	 * that what mpirun says of a failed host is read. */
	int errp[2];
	if (pipe2(errp, O_CLOEXEC) < 0) {
		free(argv);
		return TERN_ERR(err, TERN_EIO, "pipe: %s", strerror(errno));
	}
	const pid_t pid = fork();
	if (pid < 0) {
		free(argv);
		close(errp[0]);
		close(errp[1]);
		return TERN_ERR(err, TERN_EIO, "fork: %s", strerror(errno));
	}
	if (pid == 0) {
		dup2(errp[1], STDERR_FILENO);
		/* Its own process group: a terminal's Ctrl-C reaches tern-server,
		 * which stops the job in order. */
		setpgid(0, 0);
		signal(SIGPIPE, SIG_DFL);
		/* The job gets back the priority tern-server gave up (--nice). */
		if (o->restore_nice && setpriority(PRIO_PROCESS, 0, o->job_nice) < 0)
			fprintf(stderr, "tern-server: the job keeps tern-server's priority (cannot set nice %d: %s)\n",
				o->job_nice, strerror(errno));
		setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
		setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
		if (o->private_net && enter_private_net() < 0) {
			fprintf(stderr, "tern-server: cannot make a private network namespace: %s\n", strerror(errno));
			_exit(127);
		}
		execvp(argv[0], (char *const *)argv);
		fprintf(stderr, "tern-server: cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	setpgid(pid, pid);
	free(argv);
	close(errp[1]);
	fcntl(errp[0], F_SETFL, O_NONBLOCK);
	job->err_fd = errp[0];
	job->pid = pid;
	job->stages = stages;
	job->via_mpirun = mpirun;
	return 0;
}

/* A host named failed in a line of the job's stderr: mpirun's "Remote
 * daemon: [[j,0],k] on node H" (the host's daemon is gone) and "process rank
 * R with PID P on node H exited", the coordinator's "(rank R on host H,". */
static void note_failed_host(tern_job *job, const char *line)
{
	static const char *const marks[][2] = {
		{"Remote daemon:", " on node "},
		{" with PID ", " on node "},
		{" died", "(rank "},
	};
	for (size_t m = 0; m < sizeof marks / sizeof marks[0]; m++) {
		const char *p = strstr(line, marks[m][0]);
		if (!p)
			continue;
		const char *q = strstr(m == 2 ? line : p, marks[m][1]);
		if (m == 2 && q) {
			q = strstr(q, " on host ");
			if (q)
				q += 9;
		} else if (q) {
			q += strlen(marks[m][1]);
		}
		if (!q)
			continue;
		const size_t n = strcspn(q, " ,):\t\r\n");
		if (n == 0 || n >= sizeof job->failed[0])
			continue;
		for (int i = 0; i < job->n_failed; i++)
			if (!strncmp(job->failed[i], q, n) && !job->failed[i][n])
				return;
		if (job->n_failed < TERN_MAX_FAILED) {
			memcpy(job->failed[job->n_failed], q, n);
			job->failed[job->n_failed++][n] = '\0';
		}
		return;
	}
}

/* Forwards what the job wrote to stderr, a line at a time, noting failed hosts. */
static void read_stderr(tern_job *job)
{
	if (job->err_fd <= 0)
		return;
	for (;;) {
		const size_t room = sizeof job->line - 1 - job->line_len;
		const ssize_t n = read(job->err_fd, job->line + job->line_len, room);
		if (n <= 0) {
			if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
				if (job->line_len) {
					job->line[job->line_len] = '\0';
					note_failed_host(job, job->line);
					fprintf(stderr, "%s\n", job->line);
					job->line_len = 0;
				}
				close(job->err_fd);
				job->err_fd = -1;
			}
			return;
		}
		job->line_len += (size_t)n;
		job->line[job->line_len] = '\0';
		char *start = job->line, *nl;
		while ((nl = strchr(start, '\n'))) {
			*nl = '\0';
			note_failed_host(job, start);
			fprintf(stderr, "%s\n", start);
			start = nl + 1;
		}
		size_t rest = job->line_len - (size_t)(start - job->line);
		if (rest == sizeof job->line - 1) {
			/* A line longer than the buffer: passed on in pieces. */
			fprintf(stderr, "%s", job->line);
			rest = 0;
		}
		memmove(job->line, start, rest);
		job->line_len = rest;
	}
}

int tern_launch_poll(tern_job *job)
{
	read_stderr(job);
	if (job->exited)
		return 1;
	if (job->pid <= 0)
		return 1;
	int st;
	const pid_t r = waitpid(job->pid, &st, WNOHANG);
	if (r == job->pid) {
		job->exited = 1;
		job->status = st;
		/* What it wrote last (its children may hold the pipe a while). */
		read_stderr(job);
		return 1;
	}
	return 0;
}

void tern_launch_release(tern_job *job)
{
	if (job->err_fd > 0) {
		close(job->err_fd);
		job->err_fd = -1;
	}
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
