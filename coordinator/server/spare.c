/* spare.c: the files a spare host needs, copied to it by checksum before it
 * takes a failed host's place (tern-launch.h, tern_launch_sync_host). The
 * same mechanism as deploy/tern-up's copies: the remote shell mpirun
 * starts its daemons with runs `xxhsum -H1 PATH` on the host, and a file
 * whose xxh64 differs (or that is missing) is sent through that shell's
 * stdin into PATH.part, renamed into place once whole. */
#include "tern-launch.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "plan.pb-c.h"
#include "tern-plan.h"

extern char **environ;

#define SPARE_CHECK_S 60.0  /* a checksum on the host answers within this */
#define SPARE_MIN_RATE 10e6 /* a copy slower than this many bytes/s (after the first minute) has failed */
#define SPARE_MAX_FILES 64  /* files of an HF checkpoint directory */
#define SPARE_RSH_WORDS 8

/* path with "%h" replaced by host (tern_path_expand_host does it for this
 * host only); relative paths are taken from the working directory, as the
 * remote shell's would not be. */
static void expand_for(const char *path, const char *host, char *out, size_t out_len)
{
	size_t o = 0;
	if (path[0] != '/' && getcwd(out, out_len - 1)) {
		o = strlen(out);
		if (o + 1 < out_len)
			out[o++] = '/';
	}
	for (const char *p = path; *p && o + 1 < out_len; p++) {
		if (p[0] == '%' && p[1] == 'h') {
			const size_t hl = strlen(host);
			const size_t n = hl < out_len - 1 - o ? hl : out_len - 1 - o;
			memcpy(out + o, host, n);
			o += n;
			p++;
		} else {
			out[o++] = *p;
		}
	}
	out[o] = '\0';
}

/* The remote shell's words: the first alternative of Open MPI's launch
 * agent (OMPI_MCA_plm_rsh_agent, "ssh : rsh" when unset), so the copy
 * reaches the host as mpirun's daemons do. Returns the word count. */
static int rsh_words(char *buf, size_t len, char **w)
{
	const char *agent = getenv("OMPI_MCA_plm_rsh_agent");
	snprintf(buf, len, "%s", agent && *agent ? agent : "ssh");
	buf[strcspn(buf, ":")] = '\0';
	int n = 0;
	for (char *save = NULL, *t = strtok_r(buf, " \t", &save); t && n < SPARE_RSH_WORDS;
	     t = strtok_r(NULL, " \t", &save))
		w[n++] = t;
	return n;
}

/* Runs cmd on host through the remote shell with stdin from in_fd (-1:
 * /dev/null), its stdout into out (out_len, NUL-terminated; may be NULL),
 * killed after max_s. Returns its exit status, or -1 (not started, killed). */
static int run_remote(const char *host, const char *cmd, int in_fd, char *out, size_t out_len, double max_s)
{
	char buf[1024];
	char *argv[SPARE_RSH_WORDS + 3];
	int n = rsh_words(buf, sizeof buf, argv);
	if (n == 0)
		return -1;
	argv[n++] = (char *)host;
	argv[n++] = (char *)cmd;
	argv[n] = NULL;
	int outp[2];
	if (pipe(outp) < 0)
		return -1;
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&at);
	if (in_fd >= 0)
		posix_spawn_file_actions_adddup2(&fa, in_fd, STDIN_FILENO);
	else
		posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, outp[1], STDOUT_FILENO);
	posix_spawn_file_actions_addclose(&fa, outp[0]);
	posix_spawn_file_actions_addclose(&fa, outp[1]);
	/* Its own process group (killed whole on a timeout), no signal of
	 * tern-server's blocked or ignored. */
	sigset_t none, def;
	sigemptyset(&none);
	sigemptyset(&def);
	sigaddset(&def, SIGPIPE);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &def);
	posix_spawnattr_setpgroup(&at, 0);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	pid_t pid;
	const int rc = posix_spawnp(&pid, argv[0], &fa, &at, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	close(outp[1]);
	if (rc != 0) {
		close(outp[0]);
		return -1;
	}
	fcntl(outp[0], F_SETFL, O_NONBLOCK);
	size_t got = 0;
	const double t0 = tern_now_s();
	int st = 0, status = -1;
	for (;;) {
		char chunk[512];
		ssize_t k;
		while ((k = read(outp[0], chunk, sizeof chunk)) > 0)
			if (out && got + 1 < out_len) {
				const size_t c = (size_t)k < out_len - 1 - got ? (size_t)k : out_len - 1 - got;
				memcpy(out + got, chunk, c);
				got += c;
			}
		const pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid) {
			status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
			break;
		}
		if (r < 0 && errno != EINTR)
			break;
		if (tern_now_s() - t0 > max_s) {
			kill(-pid, SIGKILL);
			waitpid(pid, &st, 0);
			break;
		}
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	close(outp[0]);
	if (out)
		out[got] = '\0';
	return status;
}

/* a + "/" + b (b "" : a alone) into out: 0, or -1 when it does not fit. */
static int join(char *out, size_t len, const char *a, const char *b)
{
	const int n = snprintf(out, len, "%s%s%s", a, b[0] ? "/" : "", b);
	return n < 0 || (size_t)n >= len ? -1 : 0;
}

/* XXH64 (seed 0) of a whole local file. */
static int file_xxh64(const char *path, uint64_t *h, uint64_t *size, tern_err *err)
{
	FILE *f = fopen(path, "rb");
	TERN_RETURN_IF(!f, err, TERN_EIO, "cannot read %s: %s", path, strerror(errno));
	const size_t chunk = 4u << 20;
	uint8_t *buf = malloc(chunk);
	if (!buf) {
		fclose(f);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	}
	XXH64_state_t *s = XXH64_createState();
	XXH64_reset(s, 0);
	size_t n;
	*size = 0;
	while ((n = fread(buf, 1, chunk, f)) > 0) {
		XXH64_update(s, buf, n);
		*size += n;
	}
	const int bad = ferror(f);
	fclose(f);
	free(buf);
	*h = XXH64_digest(s);
	XXH64_freeState(s);
	TERN_RETURN_IF(bad, err, TERN_EIO, "%s: read error", path);
	return 0;
}

/* One file the host must hold: its name in the model directory ("" for a
 * model file itself), xxh64 and size. */
typedef struct want_file {
	char name[256];
	uint64_t xxh64;
	uint64_t size;
} want_file;

/* Makes the host's dst the same as the local src (w: its xxh64 and size),
 * by xxh64: 1 copied, 0 it was there already, < 0 an error. */
static int sync_one(const char *host, const char *src, const char *dst, const want_file *w, tern_err *err)
{
	char cmd[4 * (4096 + 260) + 128], out[256];
	snprintf(cmd, sizeof cmd, "xxhsum -H1 '%s' 2>/dev/null", dst);
	run_remote(host, cmd, -1, out, sizeof out, SPARE_CHECK_S);
	char want[17];
	snprintf(want, sizeof want, "%016" PRIx64, w->xxh64);
	if (!strncmp(out, want, 16) && (out[16] == ' ' || out[16] == '\t'))
		return 0;
	const int fd = open(src, O_RDONLY | O_CLOEXEC);
	TERN_RETURN_IF(fd < 0, err, TERN_EIO, "cannot read %s: %s", src, strerror(errno));
	char dir[4096];
	const size_t dl = strlen(dst);
	TERN_RETURN_IF(dl >= sizeof dir, err, TERN_EINVAL, "a path too long: %s", dst);
	memcpy(dir, dst, dl + 1);
	char *slash = strrchr(dir, '/');
	if (slash)
		*(slash == dir ? slash + 1 : slash) = '\0';
	(void)!snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cat > '%s.part' && mv -f '%s.part' '%s'", dir, dst, dst,
			dst);
	const int rc = run_remote(host, cmd, fd, NULL, 0, 60 + (double)w->size / SPARE_MIN_RATE);
	close(fd);
	TERN_RETURN_IF(rc != 0, err, TERN_EIO, "copying %s to %s:%s failed (%s %d)", src, host, dst,
		       rc < 0 ? "killed or not started," : "exit status", rc);
	return 1;
}

/* The files stages [first, first + n) of a job of `stages` stages read from
 * the model at src: a plan's manifest and those stages' shards (every
 * stage's when the job's stages are not the plan's), a model file, or
 * every file of a checkpoint directory. Returns how many into w, or < 0. */
static int wanted(const char *src, int first, int n, int stages, want_file *w, int max, tern_err *err)
{
	struct stat st;
	TERN_RETURN_IF(stat(src, &st) < 0, err, TERN_EIO, "cannot read %s here: %s", src, strerror(errno));
	uint64_t size;
	int k = 0;
	if (!S_ISDIR(st.st_mode)) {
		w[0].name[0] = '\0';
		const int rc = file_xxh64(src, &w[0].xxh64, &w[0].size, err);
		return rc < 0 ? rc : 1;
	}
	char path[4096];
	TERN_RETURN_IF(join(path, sizeof path, src, TERN_PLAN_MANIFEST) < 0, err, TERN_EINVAL, "a path too long: %s",
		       src);
	if (access(path, F_OK) == 0) {
		tern_plan_manifest *pm;
		int rc = tern_plan_manifest_read(&pm, src, err);
		if (rc < 0)
			return rc;
		snprintf(w[k].name, sizeof w[k].name, "%s", TERN_PLAN_MANIFEST);
		rc = file_xxh64(path, &w[k].xxh64, &size, err);
		w[k++].size = size;
		const int all = (int)pm->n_stages != stages;
		for (size_t s = 0; rc == 0 && s < pm->n_stages; s++) {
			const int idx = (int)pm->stages[s]->index;
			if (!all && (idx < first || idx >= first + n))
				continue;
			for (size_t f = 0; f < pm->n_files && k < max; f++)
				if (!strcmp(pm->files[f]->name, pm->stages[s]->shard)) {
					snprintf(w[k].name, sizeof w[k].name, "%s", pm->files[f]->name);
					w[k].xxh64 = pm->files[f]->xxh64;
					w[k++].size = pm->files[f]->size;
				}
		}
		tern_plan_manifest_free(pm);
		return rc < 0 ? rc : k;
	}
	DIR *d = opendir(src);
	TERN_RETURN_IF(!d, err, TERN_EIO, "cannot read %s: %s", src, strerror(errno));
	struct dirent *e;
	int rc = 0;
	while (rc == 0 && (e = readdir(d))) {
		if (join(path, sizeof path, src, e->d_name) < 0 || stat(path, &st) < 0 || !S_ISREG(st.st_mode))
			continue;
		if (k == max) {
			rc = TERN_ERR(err, TERN_EINVAL, "%s holds more than %d files", src, max);
			break;
		}
		snprintf(w[k].name, sizeof w[k].name, "%s", e->d_name);
		rc = file_xxh64(path, &w[k].xxh64, &w[k].size, err);
		k++;
	}
	closedir(d);
	return rc < 0 ? rc : k;
}

int tern_launch_sync_host(const tern_launch_opts *o, const char *host, int first_stage, int n_stages, int stages,
			  tern_sync_result *r, tern_err *err)
{
	memset(r, 0, sizeof *r);
	char self[256] = "", src[4096], dst[4096];
	gethostname(self, sizeof self - 1);
	expand_for(o->model, self, src, sizeof src);
	expand_for(o->model, host, dst, sizeof dst);
	TERN_RETURN_IF(strchr(dst, '\'') || strchr(host, '\''), err, TERN_EINVAL,
		       "cannot copy to %s:%s: a quote in the path", host, dst);
	want_file w[SPARE_MAX_FILES];
	const int n = wanted(src, first_stage, n_stages, stages, w, SPARE_MAX_FILES, err);
	if (n < 0)
		return n;
	const double t0 = tern_now_s();
	for (int i = 0; i < n; i++) {
		char s[4096 + 260], d[4096 + 260];
		TERN_RETURN_IF(join(s, sizeof s, src, w[i].name) < 0 || join(d, sizeof d, dst, w[i].name) < 0, err,
			       TERN_EINVAL, "a path too long: %s", src);
		const int rc = sync_one(host, s, d, &w[i], err);
		if (rc < 0)
			return rc;
		r->files++;
		if (rc == 1) {
			r->copied++;
			r->bytes += w[i].size;
		}
	}
	r->seconds = tern_now_s() - t0;
	return 0;
}
