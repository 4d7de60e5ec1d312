/* node-main.c: tern-node, one pipeline stage (MPI ranks 1..S).
 *
 * Start-up: wait for the coordinator's HELLO, pin to this host's NUMA domain
 * (stages on one host take domains round-robin in rank order), load the
 * layer range HELLO names with the memory policy of that domain, start the
 * kernel threads on the domain's CPUs, answer READY with host, binding and
 * weight bytes (or the error), then serve activation frames until SHUTDOWN.
 * A HELLO without a model is the bare start-up check. */
#include <getopt.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tern-link.h"
#include "tern-stage.h"
#include "tern-topo.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: tern-node [--no-bind] [--timeout SECONDS]\n"
		   "  Runs one pipeline stage; launched by mpirun as ranks 1..S beside tern-coordinator,\n"
		   "  which tells it (HELLO) what to load.\n");
}

int main(int argc, char **argv)
{
	int bind = 1;
	double timeout = 120.0;
	static const struct option long_opts[] = {
		{"help", no_argument, NULL, 'h'},
		{"no-bind", no_argument, NULL, 'B'},
		{"timeout", required_argument, NULL, 'T'},
		{NULL, 0, NULL, 0},
	};
	tern_err perr;
	tern_err_clear(&perr);
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, ":h", long_opts, NULL)) != -1) {
		if (c == 'h') {
			usage(stdout);
			return 0;
		} else if (c == 'B') {
			bind = 0;
		} else if (c == 'T') {
			if (tern_parse_double(optarg, -1, 1e9, "--timeout", &timeout, &perr) < 0)
				return tern_opt_bad("tern-node", perr.msg);
		} else {
			return tern_opt_fail("tern-node", c, argv);
		}
	}
	if (optind < argc) {
		fprintf(stderr, "tern-node: unknown argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	/* A stage stops when the coordinator says so (SHUTDOWN through the
	 * pipeline), so no request is cut off by a signal meant for the job;
	 * if the coordinator is gone, mpirun kills the stages. */
	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	int provided = 0;
	MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
	MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
	int rank = 0, size = 0;
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	if (rank == 0) {
		fprintf(stderr, "tern-node: rank 0 is the coordinator's; launch tern-coordinator first (MPMD)\n");
		MPI_Abort(MPI_COMM_WORLD, 2);
	}
	/* Stages sharing a host split its NUMA domains round-robin. */
	const int local_index = tern_link_host_stage_index(1);

	tern_err err;
	tern_err_clear(&err);
	char host[256] = "?";
	gethostname(host, sizeof host - 1);
	uint8_t *buf = NULL;
	Tern__V1__Frame *hello = NULL;
	const uint8_t *payload;
	size_t pl;
	int rc = tern_link_recv(0, TERN_TAG_CONTROL, timeout, &buf, &hello, &payload, &pl, NULL, &err);
	if (rc >= 0 && hello->kind == TERN__V1__FRAME_KIND__FRAME_KIND_SHUTDOWN) {
		/* The coordinator failed before it could start us (it says why). */
		tern__v1__frame__free_unpacked(hello, NULL);
		free(buf);
		MPI_Finalize();
		return 0;
	}
	if (rc < 0 || hello->kind != TERN__V1__FRAME_KIND__FRAME_KIND_HELLO) {
		fprintf(stderr, "tern-node %d: no HELLO from the coordinator: %s\n", rank,
			rc < 0 ? err.msg : "unexpected frame");
		MPI_Abort(MPI_COMM_WORLD, 3);
	}

	char binding[256] = "unbound";
	char errmsg[512] = "";
	int cpus[1024];
	int n_cpus = 0;
	tern_topo *topo = NULL;
	if (tern_node_topo_load(&topo, &err) < 0) {
		snprintf(errmsg, sizeof errmsg, "%s", err.msg);
	} else if (bind && tern_node_topo_n_domains(topo) > 0) {
		int mem_bound = 0;
		const int d = local_index % tern_node_topo_n_domains(topo);
		if (tern_node_topo_bind(topo, d, &mem_bound, binding, sizeof binding, &err) < 0)
			snprintf(errmsg, sizeof errmsg, "%s", err.msg);
		n_cpus = tern_node_topo_domain_cpus(topo, d, cpus, 1024, NULL);
		if (n_cpus > 1024)
			n_cpus = 1024;
	}
	TERN_LOGI("node", "stage %d on %s: %s", rank, host, binding);

	/* Load after binding, so first-touch puts the weights on the domain. */
	tern_layers layers;
	memset(&layers, 0, sizeof layers);
	tern_pool *pool = NULL;
	tern_engine *engine = NULL;
	const int serving = (hello->model_path && hello->model_path[0]) || (hello->plan_dir && hello->plan_dir[0]);
	if (serving && !errmsg[0]) {
		const double t0 = tern_now_s();
		int threads = (int)hello->threads;
		/* Default: every core of the domain; unbound, every CPU this
		 * process may use (as tern-run). */
		if (threads <= 0) {
			threads = n_cpus > 0 ? n_cpus : tern_cpu_count();
			if (threads > TERN_POOL_MAX_THREADS)
				threads = TERN_POOL_MAX_THREADS;
		}
		tern_engine_config cfg = {
			.n_slots = (int)hello->n_slots,
			.n_ctx = (int)hello->n_ctx,
			.max_rows = (int)hello->max_rows,
			.isa = (tern_isa)hello->isa,
			.kv_type = TERN_KV_TYPE_DEFAULT,
			.kv_block = (int)hello->kv_block,
			.kv_blocks = (int)hello->kv_blocks,
		};
		if (hello->kv_block > 65536 || hello->kv_blocks > (1u << 30)) {
			snprintf(errmsg, sizeof errmsg, "HELLO: KV paging of %u blocks of %u positions is out of range",
				 hello->kv_blocks, hello->kv_block);
		} else if ((hello->kv_type && hello->kv_type[0] &&
			    tern_kv_type_parse(hello->kv_type, "HELLO kv_type", &cfg.kv_type, &err) < 0) ||
			   tern_stage_load(hello, &layers, &err) < 0 ||
			   tern_pool_create(threads, n_cpus > 0 ? cpus : NULL, n_cpus, &pool, &err) < 0) {
			snprintf(errmsg, sizeof errmsg, "%s", err.msg);
		} else {
			cfg.pool = pool;
			if (tern_engine_create(&layers, &cfg, &engine, &err) < 0) {
				snprintf(errmsg, sizeof errmsg, "%s", err.msg);
			} else {
				/* Every slot is claimed once; the coordinator decides who uses it. */
				int slot;
				while (tern_kv_slot_alloc(tern_engine_kv(engine), &slot, NULL) == 0)
					;
				TERN_LOGI("node",
					  "stage %d: layers %u..%u, %.1f MiB packed, %.1f MiB %s KV (%d blocks of %d "
					  "positions), %d threads, loaded in %.2f s",
					  rank, hello->first_layer, hello->first_layer + hello->n_layers - 1,
					  (double)tern_layers_bytes(&layers) / (1 << 20),
					  2.0 * (double)tern_engine_kv(engine)->layer_bytes * hello->n_layers / (1 << 20),
					  tern_dtype_name(cfg.kv_type), tern_engine_kv(engine)->n_blocks,
					  tern_engine_kv(engine)->block, threads, tern_now_s() - t0);
			}
		}
	}

	Tern__V1__Frame ready = TERN__V1__FRAME__INIT;
	ready.kind = TERN__V1__FRAME_KIND__FRAME_KIND_READY;
	ready.stage = (uint32_t)rank;
	ready.host = host;
	ready.binding = binding;
	ready.plan_id = hello->plan_id;
	ready.error = errmsg;
	ready.weight_bytes = tern_layers_bytes(&layers);
	ready.pid = (uint32_t)getpid();
	ready.first_layer = hello->first_layer;
	ready.n_layers = hello->n_layers;
	if (tern_link_send(0, TERN_TAG_CONTROL, &ready, NULL, 0, &err) < 0) {
		fprintf(stderr, "tern-node %d: %s\n", rank, err.msg);
		MPI_Abort(MPI_COMM_WORLD, 3);
	}
	tern__v1__frame__free_unpacked(hello, NULL);
	free(buf);

	int status = errmsg[0] ? 1 : 0;
	if (engine) {
		tern_stage_opts so = {.rank = rank, .n_ranks = size, .cpus = cpus, .n_cpus = n_cpus};
		if (tern_stage_serve(engine, &so, &err) < 0) {
			fprintf(stderr, "tern-node %d: %s\n", rank, err.msg);
			status = 1;
		}
	} else {
		/* Bare start-up (or failed load): wait for the coordinator's word. */
		if (tern_link_recv_until(0, MPI_ANY_TAG, -1, TERN__V1__FRAME_KIND__FRAME_KIND_SHUTDOWN, &err) < 0) {
			fprintf(stderr, "tern-node %d: %s\n", rank, err.msg);
			status = 1;
		}
	}
	tern_engine_free(engine);
	tern_pool_free(pool);
	tern_layers_free(&layers);
	tern_node_topo_free(topo);
	MPI_Finalize();
	return status;
}
