/* server-main.c: tern-server, the long-lived front end outside mpirun.
 *
 *   tern-server -m MODEL|PLAN [--stages N | --hostfile HOSTS] [--http ADDR]
 *               [--grpc ADDR] [--api-key-file F] [-- coordinator options]
 *   tern-server --attach ADDR [--http ADDR] [--api-key-file F]
 *
 * It launches the MPI job (deploy/tern-up's MPMD line: tern-coordinator +
 * one tern-node per NUMA domain by default; --stages 0 runs the layers in the
 * coordinator's process) or attaches to a coordinator already serving, waits
 * until its Health says ready, then serves the OpenAI HTTP API
 * (coordinator/server/tern-http.h) and tern.v1.Tern gRPC itself
 * (coordinator/server/tern-relay.h), both by calling the coordinator over
 * tern.v1.Tern gRPC: a private Unix socket when it launches the job on this
 * box. SIGINT/SIGTERM: stop accepting, stop the job (the coordinator ends
 * every request and drains the pipeline), exit. */
#include <getopt.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tern-base.h"
#include "tern-grpc-client.h"
#include "tern-grpc.h"
#include "tern-http.h"
#include "tern-launch.h"
#include "tern-supervise.h"
#include "tern-relay.h"
#include "tern.pb-c.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: tern-server -m MODEL|PLAN [--stages N | --hostfile HOSTS] [--http ADDR] [--grpc ADDR]\n"
		   "                   [--api-key-file F] [--coordinator ADDR] [-- coordinator options]\n"
		   "       tern-server --attach ADDR [--http ADDR] [--grpc ADDR] [--api-key-file F]\n"
		   "  -m, --model PATH     GGUF file, HF checkpoint directory or plan directory\n"
		   "  --stages N           pipeline stages on this box (default: one per NUMA domain; 0 = the\n"
		   "                       layers in the coordinator's process)\n"
		   "  --hostfile HOSTS     Open MPI hostfile: the coordinator takes the first slot, stages the rest\n"
		   "  --network NET        with --hostfile: the private cluster network MPI may use (CIDR or\n"
		   "                       interfaces; default the hostfile's '# network: NET' line)\n"
		   "  --private-net        single box: the MPI job in its own network namespace, loopback only\n"
		   "                       (root); the coordinator on its private Unix socket\n"
		   "  --http ADDR          OpenAI HTTP API, and the chat page at / (default 127.0.0.1:8080)\n"
		   "  --grpc ADDR|off      tern.v1.Tern gRPC, relayed to the coordinator (default 127.0.0.1:50051)\n"
		   "  --api-key-file F     require 'Authorization: Bearer <key>' (key = first line of F) on all but\n"
		   "                       HTTP / (the chat page) and /health (over gRPC on every call)\n"
		   "  --coordinator ADDR   where the launched coordinator serves gRPC (default: a private Unix\n"
		   "                       socket on this box; with --hostfile 127.0.0.1:50052, the coordinator\n"
		   "                       being on the hostfile's first host)\n"
		   "  --attach ADDR        use a coordinator already serving at ADDR instead of launching one\n"
		   "  --tls-cert F --tls-key F   HTTPS and gRPC over TLS (PEM files)\n"
		   "  --cors ORIGIN        let pages from ORIGIN (or *) call the HTTP API (default: off)\n"
		   "  --max-connections N  connections open at once on each port; more are refused (default\n"
		   "                       2048 HTTP, 1024 gRPC)\n"
		   "  --ready-timeout S    wait at most S seconds for the coordinator to be ready (default 600)\n"
		   "  --restart-limit N/W  a job that dies is restarted (back-off 1, 2, 4 ... 30 s) and the\n"
		   "                       requests in flight resume; more than N restarts within W seconds\n"
		   "                       and it is left down (default 5/300; 0/1: never restart)\n"
		   "  --backoff-reset S    a job that has served S seconds (Health answering) is restarted\n"
		   "                       after 1 s again when it next dies (default 10)\n"
		   "  --stall-timeout S    a coordinator that does not answer Health for S seconds is killed\n"
		   "                       and restarted (default 10)\n"
		   "  --nice N             tern-server runs N nicer than the job it launches, so relaying\n"
		   "                       tokens yields the cores to the engine (default 10; 0: off)\n"
		   "  after --: tern-coordinator options (--slots, --ctx, --queue, --threads, ...; not --listen)\n");
}

/* How long the job may take to stop after SIGTERM before it is killed: the
 * coordinator's default --drain-timeout (30 s) and then its own shutdown. */
#define TERN_SERVER_STOP_S 45.0

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
	g_stop = sig;
}

enum { OPT_STAGES = 256, OPT_HOSTFILE, OPT_HTTP, OPT_GRPC, OPT_API_KEY_FILE, OPT_ATTACH, OPT_READY_TIMEOUT,
       OPT_COORDINATOR, OPT_MAX_CONNS, OPT_NETWORK, OPT_PRIVATE_NET, OPT_TLS_CERT, OPT_TLS_KEY,
       OPT_CORS, OPT_RESTART_LIMIT, OPT_STALL_TIMEOUT,
       OPT_BACKOFF_RESET, OPT_NICE };

/* The name clients see: the model file's (or plan directory's) base name
 * without ".gguf". */
static void model_id_of(const char *path, char *out, size_t len)
{
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof tmp, "%s", path && path[0] ? path : "tern");
	size_t n = strlen(tmp);
	while (n > 1 && tmp[n - 1] == '/')
		tmp[--n] = '\0';
	const char *base = strrchr(tmp, '/') ? strrchr(tmp, '/') + 1 : tmp;
	snprintf(out, len, "%s", base);
	n = strlen(out);
	if (n > 5 && !strcmp(out + n - 5, ".gguf"))
		out[n - 5] = '\0';
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* Makes this process `by` nicer than it was. Every token of every stream
 * passes through our threads; on a box whose cores the engine's ranks keep
 * busy, a relay thread that wins a core delays a whole pipeline step (at 64
 * streams the relay kept ~84% of the direct aggregate at equal priority,
 * ~97% at nice 10: tests/README.md). The job we launch runs at the old
 * priority (*job_nice), which only root (or RLIMIT_NICE) may give back:
 * where it may not, nothing is changed. Returns 1 when niced. */
static int lower_priority(int by, int launches, int *job_nice)
{
	errno = 0;
	const int base = getpriority(PRIO_PROCESS, 0);
	if (by <= 0 || (base == -1 && errno))
		return 0;
	int may_restore = geteuid() == 0;
	struct rlimit rl;
	if (!may_restore && getrlimit(RLIMIT_NICE, &rl) == 0)
		may_restore = rl.rlim_cur == RLIM_INFINITY || 20 - (int)rl.rlim_cur <= base;
	if (launches && !may_restore) {
		tern_log(TERN_LOG_INFO, "server",
			 "--nice %d not applied: the job could not be given back nice %d (not root, RLIMIT_NICE)", by,
			 base);
		return 0;
	}
	const int target = base + by > 19 ? 19 : base + by;
	if (setpriority(PRIO_PROCESS, 0, target) < 0) {
		tern_log(TERN_LOG_INFO, "server", "--nice %d not applied: %s", by, strerror(errno));
		return 0;
	}
	*job_nice = base;
	return launches;
}

int main(int argc, char **argv)
{
	static const struct option long_opts[] = {
		{"help", no_argument, NULL, 'h'},
		{"model", required_argument, NULL, 'm'},
		{"stages", required_argument, NULL, OPT_STAGES},
		{"hostfile", required_argument, NULL, OPT_HOSTFILE},
		{"http", required_argument, NULL, OPT_HTTP},
		{"grpc", required_argument, NULL, OPT_GRPC},
		{"api-key-file", required_argument, NULL, OPT_API_KEY_FILE},
		{"attach", required_argument, NULL, OPT_ATTACH},
		{"coordinator", required_argument, NULL, OPT_COORDINATOR},
		{"max-connections", required_argument, NULL, OPT_MAX_CONNS},
		{"network", required_argument, NULL, OPT_NETWORK},
		{"private-net", no_argument, NULL, OPT_PRIVATE_NET},
		{"tls-cert", required_argument, NULL, OPT_TLS_CERT},
		{"tls-key", required_argument, NULL, OPT_TLS_KEY},
		{"cors", required_argument, NULL, OPT_CORS},
		{"ready-timeout", required_argument, NULL, OPT_READY_TIMEOUT},
		{"restart-limit", required_argument, NULL, OPT_RESTART_LIMIT},
		{"stall-timeout", required_argument, NULL, OPT_STALL_TIMEOUT},
		{"backoff-reset", required_argument, NULL, OPT_BACKOFF_RESET},
		{"nice", required_argument, NULL, OPT_NICE},
		{NULL, 0, NULL, 0},
	};
	const char *model = NULL, *hostfile = NULL, *http = "127.0.0.1:8080", *grpc = "127.0.0.1:50051";
	const char *key_file = NULL, *attach = NULL, *coord_addr = NULL, *network = NULL;
	const char *tls_cert = NULL, *tls_key = NULL, *cors = NULL;
	int private_net = 0;
	int stages = -1, max_conns = 0;
	double ready_timeout = 600, restart_window = 300, stall_timeout = 10, backoff_reset = 10;
	int restart_limit = 5, nice_by = 10;
	tern_err err;
	tern_err_clear(&err);
	opterr = 0;
	int oc;
	while ((oc = getopt_long(argc, argv, ":hm:", long_opts, NULL)) != -1) {
		int rc = 0;
		switch (oc) {
		case 'h':
			usage(stdout);
			return 0;
		case 'm':
			model = optarg;
			break;
		case OPT_STAGES:
			rc = tern_parse_int(optarg, 0, 4096, "--stages", &stages, &err);
			break;
		case OPT_HOSTFILE:
			hostfile = optarg;
			break;
		case OPT_HTTP:
			http = optarg;
			break;
		case OPT_GRPC:
			grpc = optarg;
			break;
		case OPT_API_KEY_FILE:
			key_file = optarg;
			break;
		case OPT_ATTACH:
			attach = optarg;
			break;
		case OPT_COORDINATOR:
			coord_addr = optarg;
			break;
		case OPT_NETWORK:
			network = optarg;
			break;
		case OPT_PRIVATE_NET:
			private_net = 1;
			break;
		case OPT_TLS_CERT:
			tls_cert = optarg;
			break;
		case OPT_TLS_KEY:
			tls_key = optarg;
			break;
		case OPT_CORS:
			cors = optarg;
			break;
		case OPT_MAX_CONNS:
			rc = tern_parse_int(optarg, 1, 1 << 20, "--max-connections", &max_conns, &err);
			break;
		case OPT_READY_TIMEOUT:
			rc = tern_parse_double(optarg, 0.1, 1e7, "--ready-timeout", &ready_timeout, &err);
			break;
		case OPT_RESTART_LIMIT: {
			/* N/WINDOW */
			char n_s[32];
			const char *slash = strchr(optarg, '/');
			if (!slash || (size_t)(slash - optarg) >= sizeof n_s) {
				rc = TERN_ERR(&err, TERN_EINVAL, "--restart-limit: N/WINDOW, e.g. 5/300 (got '%s')",
					      optarg);
				break;
			}
			memcpy(n_s, optarg, (size_t)(slash - optarg));
			n_s[slash - optarg] = '\0';
			rc = tern_parse_int(n_s, 0, 1000, "--restart-limit N", &restart_limit, &err);
			if (rc == 0)
				rc = tern_parse_double(slash + 1, 1, 1e7, "--restart-limit WINDOW", &restart_window, &err);
			break;
		}
		case OPT_STALL_TIMEOUT:
			rc = tern_parse_double(optarg, 1, 1e6, "--stall-timeout", &stall_timeout, &err);
			break;
		case OPT_BACKOFF_RESET:
			rc = tern_parse_double(optarg, 0.1, 1e7, "--backoff-reset", &backoff_reset, &err);
			break;
		case OPT_NICE:
			rc = tern_parse_int(optarg, 0, 19, "--nice", &nice_by, &err);
			break;
		default:
			return tern_opt_fail("tern-server", oc, argv);
		}
		if (rc < 0)
			return tern_opt_bad("tern-server", err.msg);
	}
	/* Everything after "--" is the coordinator's. */
	const int dashdash = optind > 1 && !strcmp(argv[optind - 1], "--");
	if (!dashdash && optind < argc) {
		fprintf(stderr, "tern-server: unexpected argument '%s' (coordinator options go after --)\n",
			argv[optind]);
		return 2;
	}
	if (!attach && !model) {
		fprintf(stderr, "tern-server: which model? (-m MODEL, or --attach ADDR)\n");
		usage(stderr);
		return 2;
	}
	if (attach && (model || hostfile || stages >= 0 || coord_addr || (dashdash && optind < argc))) {
		fprintf(stderr, "tern-server: --attach uses a running coordinator: no -m, --stages, --hostfile, "
				"--coordinator or coordinator options\n");
		return 2;
	}
	if (!tls_cert != !tls_key) {
		fprintf(stderr, "tern-server: TLS needs both --tls-cert and --tls-key\n");
		return 2;
	}
	if (hostfile && stages >= 0) {
		fprintf(stderr, "tern-server: --stages or --hostfile, not both (the hostfile's slots give the stages)\n");
		return 2;
	}
	for (int i = optind; dashdash && i < argc; i++)
		if (!strcmp(argv[i], "--listen") || !strncmp(argv[i], "--listen=", 9)) {
			fprintf(stderr, "tern-server: give the coordinator's address with --coordinator, not -- --listen\n");
			return 2;
		}
	char *api_key = NULL;
	if (key_file && !(api_key = tern_read_first_line(key_file, &err))) {
		fprintf(stderr, "tern-server: the API key: %s\n", err.msg);
		return 2;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGPIPE, SIG_IGN);
	/* Before any thread exists, so every thread of ours inherits it. */
	int job_nice = 0;
	const int niced = lower_priority(nice_by, !attach, &job_nice);

	const int relay_on = strcmp(grpc, "off") != 0;
	int status = 1;
	tern_grpc_client *up = NULL;
	tern_http_server *hs = NULL;
	tern_relay *relay = NULL;
	tern_grpc_server *gs = NULL;
	tern_supervisor *sup = NULL;
	tern_metrics *metrics = NULL;
	/* The launched coordinator's gRPC: a Unix socket in a directory only we
	 * can enter, unless told otherwise. */
	char run_dir[64] = "", sock_addr[128] = "";
	if (!attach && !coord_addr && !hostfile) {
		snprintf(run_dir, sizeof run_dir, "/tmp/tern-server-XXXXXX");
		if (!mkdtemp(run_dir)) {
			TERN_ERR(&err, TERN_EIO, "cannot make a directory for the coordinator's socket: %s",
				 strerror(errno));
			run_dir[0] = '\0';
			goto fail;
		}
		snprintf(sock_addr, sizeof sock_addr, "unix:%s/coordinator.sock", run_dir);
		coord_addr = sock_addr;
	} else if (!attach && !coord_addr) {
		coord_addr = "127.0.0.1:50052";
	}
	const char *target = attach ? attach : coord_addr;
	tern_grpc_client_opts co = {.target = target};
	if (tern_grpc_client_open(&co, &up, &err) < 0)
		goto fail;
	char exe[PATH_MAX];
	tern_launch_opts lo;
	if (!attach) {
		const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
		if (n <= 0) {
			TERN_ERR(&err, TERN_EIO, "cannot find my own binary (/proc/self/exe)");
			goto fail;
		}
		exe[n] = '\0';
		lo = (tern_launch_opts){.model = model,
					.stages = stages,
					.hostfile = hostfile,
					.bin_dir = dirname(exe),
					.grpc_listen = coord_addr,
					.network = network,
					.private_net = private_net,
					.coord_args = dashdash ? argv + optind : NULL,
					.n_coord_args = dashdash ? argc - optind : 0,
					.restore_nice = niced,
					.job_nice = job_nice};
	}
	if (!(metrics = tern_metrics_create())) {
		TERN_ERR(&err, TERN_ENOMEM, "out of memory");
		goto fail;
	}
	tern_supervisor_opts so = {.launch = attach ? NULL : &lo,
				   .up = up,
				   .metrics = metrics,
				   .ready_timeout_s = ready_timeout,
				   .restart_limit = restart_limit,
				   .restart_window_s = restart_window,
				   .stall_s = stall_timeout,
				   .backoff_reset_s = backoff_reset,
				   .unix_socket = sock_addr[0] ? sock_addr + 5 : NULL};
	if (tern_supervisor_start(&so, &sup, &err) < 0)
		goto fail;
	char served[PATH_MAX] = "";
	if (attach) {
		/* Nothing launched: wait until the coordinator answers ready. */
		const double t0 = tern_now_s();
		while (tern_coordinator_health(up, 2.0, served, sizeof served) != 1) {
			if (g_stop)
				goto stop;
			if (tern_now_s() - t0 > ready_timeout) {
				TERN_ERR(&err, TERN_ETIMEOUT, "the coordinator at %s was not ready within %.0f s", target,
					 ready_timeout);
				goto fail;
			}
			sleep_ms(200);
		}
	} else {
		for (;;) {
			char why[512];
			const int r = tern_supervisor_await(sup, 0, 0.2, NULL, served, sizeof served, why, sizeof why);
			if (r == 1)
				break;
			if (r < 0) {
				TERN_ERR(&err, TERN_ESTATE, "%s", why);
				goto fail;
			}
			if (g_stop)
				goto stop;
		}
	}
	char model_id[256];
	model_id_of(served, model_id, sizeof model_id);
	tern_http_opts ho = {.listen = http,
			     .api_key = api_key,
			     .upstream = up,
			     .model_id = model_id,
			     .max_connections = (unsigned)max_conns,
			     .tls_cert_file = tls_cert,
			     .tls_key_file = tls_key,
			     .cors_origin = cors,
			     .supervisor = sup,
			     .metrics = metrics};
	if (tern_http_start(&ho, &hs, &err) < 0)
		goto fail;
	if (relay_on) {
		if (tern_relay_create(up, sup, &relay, &err) < 0)
			goto fail;
		tern_grpc_opts go = {.listen = grpc,
				     .auth_token = api_key,
				     .max_connections = (unsigned)max_conns,
				     .tls_cert_file = tls_cert,
				     .tls_key_file = tls_key};
		if (tern_grpc_start(&go, tern_relay_service(relay), &gs, &err) < 0)
			goto fail;
	}
	printf("tern-server: serving the OpenAI API on %s://%s (port %d), model '%s'%s; coordinator at %s\n",
	       tls_cert ? "https" : "http", http,
	       tern_http_port(hs), model_id, api_key ? ", API key required" : "", target);
	if (gs)
		printf("tern-server: serving tern.v1.Tern gRPC on %s (port %d)\n", grpc, tern_grpc_port(gs));
	fflush(stdout);
	while (!g_stop)
		sleep_ms(200);
stop:
	if (g_stop)
		fprintf(stderr, "tern-server: stopping on signal %d\n", (int)g_stop);
	status = 0;
	goto cleanup;
fail:
	fprintf(stderr, "tern-server: %s\n", err.msg[0] ? err.msg : "failed");
	status = 1;
cleanup:
	/* New connections stop first; the coordinator then ends the requests
	 * in flight (their clients hear it), then the connections close. */
	tern_http_quiesce(hs);
	{
		/* A job that failed earlier is reported, not this stop's failure;
		 * one that would not stop is. */
		const int js = tern_supervisor_stop(sup, TERN_SERVER_STOP_S);
		if (js < 0)
			status = 1;
		else if (js != 0)
			fprintf(stderr, "tern-server: the MPI job ended with status %d\n", js);
	}
	/* gRPC clients streaming through the relay heard the coordinator's
	 * drain like HTTP clients did; what is left is cancelled. */
	tern_grpc_stop(gs, 5.0);
	tern_http_stop(hs);
	tern_relay_free(relay);
	tern_supervisor_free(sup);
	tern_metrics_free(metrics);
	tern_grpc_client_close(up);
	free(api_key);
	if (run_dir[0]) {
		unlink(sock_addr + 5);
		rmdir(run_dir);
	}
	return status;
}
