/* coord-main.c: tern-coordinator, MPI rank 0.
 *
 *   mpirun -n 1 tern-coordinator -m MODEL [options] : -n S tern-node
 *
 * Start-up: check that the ranks launched match the stages expected, give
 * each stage its layer range (HELLO), wait (bounded) for every READY and
 * print where each stage runs. Then serve: the gRPC server (default) or the
 * offline batch mode (--batch), both feeding one scheduler that pipelines
 * micro-batches through the stages. With no tern-node ranks (--stages 0) the
 * layers run in this process. A stage that fails to start, dies or hangs is a
 * clear error and a non-zero exit, never a hang. Without -m it only runs the
 * start-up handshake. */
#include <getopt.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tern-coord.h"
#include "tern-plan.h"
#include "tern-grpc.h"
#include "tern-link.h"
#include "tern-pipeline.h"
#include "tern-pool.h"

typedef struct coord_opts {
	const char *model;
	int stages;          /* -1: from the MPI world size */
	const char *plan_id;
	double timeout;      /* start-up: READY within this */
	int packing;
	int isa;
	int kv_type; /* KV cache element type, every stage's (tern_kv_type_parse) */
	int kv_blocks; /* every stage's KV pool in blocks of TERN_KV_BLOCK_DEFAULT; 0: every slot's whole context */
	int no_prefix_cache; /* --no-prefix-cache: every prompt computed whole */
	int slots, ctx, max_rows, chunk, threads, head_threads, queue, max_tokens, max_conns;
	int lm_head; /* tern_head_format; -1: a plan's stored head, a model file's TERN_PLAN_HEAD_DEFAULT */
	double stall, drain;
	int in_flight; /* micro-batches in the pipeline at most; 0: from where the stages run */
	const char *listen, *tls_cert, *tls_key, *token_file;
	const char *batch_in, *batch_out;
} coord_opts;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: tern-coordinator -m MODEL [options]      (rank 0 of: mpirun -n 1 tern-coordinator ... : -n S tern-node)\n"
		"  -m, --model PATH        GGUF file or HF checkpoint directory; every stage loads its layers from it\n"
		"  --stages N              stages expected (default: the tern-node ranks launched; 0 = layers in this process)\n"
		"  --packing tl2|i2_s|tl1  kernel weight layout on the stages (default tl2)\n"
		"  --kernel ISA            ref|avx2|avx512|neon|auto (default auto)\n"
		"  --slots N               sequences generating at once (default 16)\n"
		"  -c, --ctx N             context per sequence (default min(4096, the model's))\n"
		"  --kv-type f16|f32|bf16  KV cache element type on every stage (default f16)\n"
		"  --kv-blocks N           KV pool of every stage: N blocks of %d positions (default: every slot's\n"
		"                          whole context); a request waits for the blocks of its prompt + max_tokens\n"
		"  --no-prefix-cache       compute every prompt whole (default: with --stages 0, a prompt starting\n"
		"                          with the full KV blocks of an earlier one attaches them)\n"
		"  --max-rows N            rows per micro-batch (default 256)\n"
		"  --chunk N               prompt rows of one sequence per micro-batch (default 64)\n"
		"  -t, --threads N         kernel threads per stage (default: its NUMA domain's cores)\n"
		"  --head-threads N        LM head threads on the coordinator (default: all CPUs)\n"
		"  --lm-head q8|q4|file    LM head precision: quantized (q8 is a model file's default) or\n"
		"                          the file's, as tern-run --lm-head (the same logits bit for bit);\n"
		"                          a plan's default is the head it stores (tern-partition\n"
		"                          --lm-head), another format is quantized from its full-precision\n"
		"                          matrix at load\n"
		"  --queue N               requests that may wait for a slot (default 64)\n"
		"  -n, --max-tokens N      default max_tokens of a request (default 256)\n"
		"  --stall-timeout S       a pipeline silent this long is dead (default 8)\n"
		"  --in-flight N           micro-batches in the pipeline at most (default: one per group of\n"
		"                          stages on the same host and CPUs, plus one for the LM head when\n"
		"                          no stage shares the coordinator's host; 1 on one box)\n"
		"  --drain-timeout S       on SIGTERM/SIGINT: refuse new requests, let accepted ones run\n"
		"                          up to S seconds, end the rest; a second signal stops at once (default 30)\n"
		"  --listen ADDR           gRPC address (default 127.0.0.1:50051)\n"
		"  --max-connections N     gRPC over plain TCP: connections open at once; more are closed\n"
		"                          at once (default 1024)\n"
		"  --tls-cert F --tls-key F   serve TLS\n"
		"  --auth-token-file F     require 'authorization: Bearer <token>' (token = first line of F)\n"
		"  --batch IN.jsonl --out OUT.jsonl   offline batch mode instead of the server\n"
		"  --timeout S             start-up: every stage READY within S seconds (default 300)\n",
		TERN_KV_BLOCK_DEFAULT);
}

static volatile sig_atomic_t g_signal;
static tern_sched *g_sched;

static double g_drain_s;

/* The first SIGTERM/SIGINT drains (systemctl stop, tern-down), a second one
 * stops at once. */
static void on_signal(int sig)
{
	const int again = g_signal != 0;
	g_signal = sig;
	if (!g_sched)
		return;
	if (!again && g_drain_s > 0)
		tern_sched_drain(g_sched);
	else
		tern_sched_stop(g_sched);
}

enum {
	OPT_STAGES = 256,
	OPT_PLAN_ID,
	OPT_TIMEOUT,
	OPT_STALL,
	OPT_IN_FLIGHT,
	OPT_DRAIN,
	OPT_PACKING,
	OPT_KERNEL,
	OPT_KV_TYPE,
	OPT_KV_BLOCKS,
	OPT_NO_PREFIX_CACHE,
	OPT_SLOTS,
	OPT_MAX_ROWS,
	OPT_CHUNK,
	OPT_HEAD_THREADS,
	OPT_LM_HEAD,
	OPT_QUEUE,
	OPT_LISTEN,
	OPT_MAX_CONNS,
	OPT_TLS_CERT,
	OPT_TLS_KEY,
	OPT_TOKEN_FILE,
	OPT_BATCH,
	OPT_OUT,
};

/* Fills o from the command line: 0, 1 after --help, 2 after a one-line error. */
static int parse_args(int argc, char **argv, coord_opts *o)
{
	memset(o, 0, sizeof *o);
	o->stages = -1;
	o->plan_id = "none";
	o->timeout = 300;
	o->packing = TERN_PACK_TL2;
	o->isa = TERN_ISA_AUTO;
	o->kv_type = TERN_KV_TYPE_DEFAULT;
	o->slots = 16;
	o->max_rows = 256;
	o->chunk = 64;
	o->lm_head = -1;
	o->head_threads = tern_cpu_count();
	if (o->head_threads < 1)
		o->head_threads = 1;
	o->queue = 64;
	o->max_tokens = 256;
	o->stall = 8;
	o->drain = 30;
	o->listen = "127.0.0.1:50051";
	static const struct option long_opts[] = {
		{"help", no_argument, NULL, 'h'},
		{"model", required_argument, NULL, 'm'},
		{"stages", required_argument, NULL, OPT_STAGES},
		{"plan-id", required_argument, NULL, OPT_PLAN_ID},
		{"timeout", required_argument, NULL, OPT_TIMEOUT},
		{"stall-timeout", required_argument, NULL, OPT_STALL},
		{"in-flight", required_argument, NULL, OPT_IN_FLIGHT},
		{"drain-timeout", required_argument, NULL, OPT_DRAIN},
		{"packing", required_argument, NULL, OPT_PACKING},
		{"kernel", required_argument, NULL, OPT_KERNEL},
		{"kv-type", required_argument, NULL, OPT_KV_TYPE},
		{"kv-blocks", required_argument, NULL, OPT_KV_BLOCKS},
		{"no-prefix-cache", no_argument, NULL, OPT_NO_PREFIX_CACHE},
		{"slots", required_argument, NULL, OPT_SLOTS},
		{"ctx", required_argument, NULL, 'c'},
		{"max-rows", required_argument, NULL, OPT_MAX_ROWS},
		{"chunk", required_argument, NULL, OPT_CHUNK},
		{"threads", required_argument, NULL, 't'},
		{"head-threads", required_argument, NULL, OPT_HEAD_THREADS},
		{"lm-head", required_argument, NULL, OPT_LM_HEAD},
		{"queue", required_argument, NULL, OPT_QUEUE},
		{"max-tokens", required_argument, NULL, 'n'},
		{"listen", required_argument, NULL, OPT_LISTEN},
		{"max-connections", required_argument, NULL, OPT_MAX_CONNS},
		{"tls-cert", required_argument, NULL, OPT_TLS_CERT},
		{"tls-key", required_argument, NULL, OPT_TLS_KEY},
		{"auth-token-file", required_argument, NULL, OPT_TOKEN_FILE},
		{"batch", required_argument, NULL, OPT_BATCH},
		{"out", required_argument, NULL, OPT_OUT},
		{NULL, 0, NULL, 0},
	};
	tern_err err;
	tern_err_clear(&err);
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, ":hm:c:t:n:", long_opts, NULL)) != -1) {
		const char *v = optarg;
		int rc = 0;
		switch (c) {
		case 'h':
			usage(stdout);
			return 1;
		case 'm':
			o->model = v;
			break;
		case OPT_STAGES:
			rc = tern_parse_int(v, 0, 4096, "--stages", &o->stages, &err);
			break;
		case OPT_PLAN_ID:
			o->plan_id = v;
			break;
		case OPT_TIMEOUT:
			rc = tern_parse_double(v, -1, 1e9, "--timeout", &o->timeout, &err);
			break;
		case OPT_STALL:
			rc = tern_parse_double(v, 1e-3, 1e9, "--stall-timeout", &o->stall, &err);
			break;
		case OPT_IN_FLIGHT:
			rc = tern_parse_int(v, 1, TERN_PIPE_MAX_STAGES + 1, "--in-flight", &o->in_flight, &err);
			break;
		case OPT_DRAIN:
			rc = tern_parse_double(v, 0, 1e9, "--drain-timeout", &o->drain, &err);
			break;
		case OPT_PACKING:
			o->packing = tern_packing_parse(v);
			if (o->packing < 0)
				rc = TERN_ERR(&err, TERN_EINVAL, "unknown packing '%s' (tl2, i2_s, tl1)", v);
			break;
		case OPT_KERNEL:
			o->isa = tern_isa_parse(v);
			if (o->isa == -2)
				rc = TERN_ERR(&err, TERN_EINVAL, "unknown kernel ISA '%s'", v);
			break;
		case OPT_KV_TYPE:
			rc = tern_kv_type_parse(v, "--kv-type", &o->kv_type, &err);
			break;
		case OPT_KV_BLOCKS:
			rc = tern_parse_int(v, 1, 1 << 30, "--kv-blocks", &o->kv_blocks, &err);
			break;
		case OPT_NO_PREFIX_CACHE:
			o->no_prefix_cache = 1;
			break;
		case OPT_SLOTS:
			rc = tern_parse_int(v, 1, 4096, "--slots", &o->slots, &err);
			break;
		case 'c':
			rc = tern_parse_int(v, 2, 1 << 22, "--ctx", &o->ctx, &err);
			break;
		case OPT_MAX_ROWS:
			rc = tern_parse_int(v, 1, 1 << 16, "--max-rows", &o->max_rows, &err);
			break;
		case OPT_CHUNK:
			rc = tern_parse_int(v, 1, 1 << 16, "--chunk", &o->chunk, &err);
			break;
		case 't':
			rc = tern_parse_int(v, 0, 1024, "--threads", &o->threads, &err);
			break;
		case OPT_HEAD_THREADS:
			rc = tern_parse_int(v, 1, 1024, "--head-threads", &o->head_threads, &err);
			break;
		case OPT_LM_HEAD:
			if ((o->lm_head = tern_head_format_parse(v)) < 0)
				rc = TERN_ERR(&err, TERN_EINVAL, "bad value '%s' for --lm-head: expected file, q8 or q4", v);
			break;
		case OPT_QUEUE:
			rc = tern_parse_int(v, 0, 1 << 20, "--queue", &o->queue, &err);
			break;
		case 'n':
			rc = tern_parse_int(v, 1, 1 << 22, "--max-tokens", &o->max_tokens, &err);
			break;
		case OPT_LISTEN:
			o->listen = v;
			break;
		case OPT_MAX_CONNS:
			rc = tern_parse_int(v, 1, 1 << 20, "--max-connections", &o->max_conns, &err);
			break;
		case OPT_TLS_CERT:
			o->tls_cert = v;
			break;
		case OPT_TLS_KEY:
			o->tls_key = v;
			break;
		case OPT_TOKEN_FILE:
			o->token_file = v;
			break;
		case OPT_BATCH:
			o->batch_in = v;
			break;
		case OPT_OUT:
			o->batch_out = v;
			break;
		default:
			return tern_opt_fail("tern-coordinator", c, argv);
		}
		if (rc < 0)
			return tern_opt_bad("tern-coordinator", err.msg);
	}
	if (optind < argc) {
		fprintf(stderr, "tern-coordinator: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (!!o->batch_in != !!o->batch_out) {
		fprintf(stderr, "tern-coordinator: --batch and --out go together\n");
		return 2;
	}
	if (!!o->tls_cert != !!o->tls_key) {
		fprintf(stderr, "tern-coordinator: --tls-cert and --tls-key go together\n");
		return 2;
	}
	return 0;
}

static void shutdown_stages_control(int n_stages)
{
	Tern__V1__Frame f = TERN__V1__FRAME__INIT;
	f.kind = TERN__V1__FRAME_KIND__FRAME_KIND_SHUTDOWN;
	for (int s = 1; s <= n_stages; s++)
		tern_link_send(s, TERN_TAG_CONTROL, &f, NULL, 0, NULL);
}

/* Each stage's host and pid from its READY, for the pipeline back end to
 * name a dead or stopped one. */
static char g_stage_host[TERN_PIPE_MAX_STAGES][64];
static char g_stage_binding[TERN_PIPE_MAX_STAGES][128];
static uint32_t g_stage_pid[TERN_PIPE_MAX_STAGES];

/* HELLO to every stage, then every READY (bounded). Fills desc with one
 * "host\tbinding\tfirst\tlast" line per stage. Returns 0 when all are up. */
static int start_stages(const coord_opts *o, int n_stages, const tern_coord_model *m, int ctx, char *desc,
			size_t desc_len, uint64_t *weight_bytes, tern_err *err)
{
	const tern_hparams *hp = m ? &m->hp : NULL;
	*weight_bytes = 0;
	Tern__V1__Frame hello = TERN__V1__FRAME__INIT;
	hello.kind = TERN__V1__FRAME_KIND__FRAME_KIND_HELLO;
	hello.plan_id = (char *)o->plan_id;
	hello.n_stages = (uint32_t)n_stages;
	/* Stages read the plan's shards, or their layers of the model file; the
	 * path is passed as given ("%h" is expanded on each host). */
	const int plan = m && m->from_plan;
	hello.model_path = (char *)(o->model && !plan ? o->model : "");
	hello.plan_dir = (char *)(o->model && plan ? o->model : "");
	hello.packing = (uint32_t)o->packing;
	hello.n_slots = (uint32_t)o->slots;
	hello.n_ctx = (uint32_t)ctx;
	hello.threads = (uint32_t)o->threads;
	hello.isa = o->isa;
	hello.kv_type = (char *)tern_dtype_name(o->kv_type);
	hello.kv_block = TERN_KV_BLOCK_DEFAULT;
	hello.kv_blocks = (uint32_t)o->kv_blocks;
	hello.max_rows = (uint32_t)o->max_rows;
	for (int s = 1; s <= n_stages; s++) {
		hello.stage = (uint32_t)s;
		if (m) {
			int first = 0, count = 0;
			TERN_FORWARD_IF_ERROR(tern_coord_model_stage_range(m, s, n_stages, &first, &count, err));
			hello.first_layer = (uint32_t)first;
			hello.n_layers = (uint32_t)count;
		}
		TERN_FORWARD_IF_ERROR(tern_link_send(s, TERN_TAG_CONTROL, &hello, NULL, 0, err));
	}
	int failed = 0;
	char lines[64][400];
	memset(lines, 0, sizeof lines);
	for (int got = 0; got < n_stages; got++) {
		uint8_t *buf;
		Tern__V1__Frame *h;
		const uint8_t *payload;
		size_t pl;
		int from = -1;
		int rc = tern_link_recv(MPI_ANY_SOURCE, TERN_TAG_CONTROL, o->timeout, &buf, &h, &payload, &pl, &from,
					err);
		if (rc < 0)
			return TERN_ERR(err, rc, "waiting for stage READY: %s", err->msg);
		if (h->kind != TERN__V1__FRAME_KIND__FRAME_KIND_READY || (h->error && h->error[0])) {
			fprintf(stderr, "tern-coordinator: stage %d failed to start: %s\n", from,
				h->error && h->error[0] ? h->error : "unexpected frame");
			failed = 1;
		} else {
			if (hp)
				printf("stage %d ready on %s: %s, layers %u..%u, %.1f MiB\n", from, h->host, h->binding,
				       h->first_layer, h->first_layer + h->n_layers - 1,
				       (double)h->weight_bytes / (1 << 20));
			else
				printf("stage %d ready on %s: %s\n", from, h->host, h->binding);
			*weight_bytes += h->weight_bytes;
			if (from >= 1 && from <= TERN_PIPE_MAX_STAGES) {
				snprintf(g_stage_host[from - 1], sizeof g_stage_host[0], "%s", h->host ? h->host : "");
				snprintf(g_stage_binding[from - 1], sizeof g_stage_binding[0], "%s",
					 h->binding ? h->binding : "");
				g_stage_pid[from - 1] = h->pid;
			}
			if (from >= 1 && from <= 64)
				snprintf(lines[from - 1], sizeof lines[0], "%s\t%s\t%u\t%u\n", h->host, h->binding,
					 h->first_layer, h->first_layer + (h->n_layers ? h->n_layers - 1 : 0));
		}
		tern__v1__frame__free_unpacked(h, NULL);
		free(buf);
	}
	fflush(stdout);
	size_t used = 0;
	desc[0] = '\0';
	for (int s = 0; s < n_stages && s < 64; s++) {
		int w = snprintf(desc + used, desc_len - used, "%s", lines[s]);
		if (w < 0 || (size_t)w >= desc_len - used)
			break;
		used += (size_t)w;
	}
	return failed ? TERN_ERR(err, TERN_ESTATE, "a stage failed to start") : 0;
}

int main(int argc, char **argv)
{
	coord_opts o;
	int prc = parse_args(argc, argv, &o);
	if (prc)
		return prc == 1 ? 0 : 2;
	int provided = 0;
	MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
	MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
	int rank = 0, size = 0;
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	if (rank != 0) {
		fprintf(stderr, "tern-coordinator: must be rank 0 (list it first in the mpirun line)\n");
		MPI_Abort(MPI_COMM_WORLD, 2);
	}
	tern_link_host_stage_index(0);
	const int n_stages = size - 1;
	if ((o.stages >= 0 && o.stages != n_stages) || (n_stages < 1 && !o.model)) {
		fprintf(stderr, "tern-coordinator: the plan has %d stages but mpirun started %d tern-node ranks\n",
			o.stages >= 0 ? o.stages : 1, n_stages);
		MPI_Abort(MPI_COMM_WORLD, 2);
	}
	tern_err err;
	tern_err_clear(&err);
	char desc[8192] = "";
	if (!o.model) {
		/* Start-up check only. */
		uint64_t wb;
		int rc = start_stages(&o, n_stages, NULL, 0, desc, sizeof desc, &wb, &err);
		if (rc < 0 && err.code == TERN_ETIMEOUT) {
			fprintf(stderr, "tern-coordinator: %s\n", err.msg);
			MPI_Abort(MPI_COMM_WORLD, 3);
		}
		shutdown_stages_control(n_stages);
		MPI_Finalize();
		return rc < 0 ? 1 : 0;
	}

	int status = 1;
	tern_coord_model *model = NULL;
	tern_pool *head_pool = NULL, *local_pool = NULL;
	tern_layers local_layers;
	memset(&local_layers, 0, sizeof local_layers);
	tern_engine *local_engine = NULL;
	tern_sched_backend be;
	memset(&be, 0, sizeof be);
	tern_sched *sched = NULL;
	tern_grpc_server *srv = NULL;
	char *token = NULL;
	int abort_mpi = 0;
	int hello_sent = 0; /* start_stages ran: the stages have their HELLO */
	uint64_t layer_bytes = 0;

	const double t_open = tern_now_s();
	if (tern_coord_model_open(o.model, &model, &err) < 0)
		goto fail;
	/* Its share of a restart's load time (bench_faults.py reads it). */
	TERN_LOGI("coord", "%s opened in %.2f s", model->path, tern_now_s() - t_open);
	const tern_hparams *hp = &model->hp;
	const int ctx = o.ctx ? o.ctx : (hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096);
	if (n_stages > 0) {
		hello_sent = 1;
		if (start_stages(&o, n_stages, model, ctx, desc, sizeof desc, &layer_bytes, &err) < 0) {
			/* Stages that did load wait on the activation path: only an
			 * abort ends them all. */
			abort_mpi = 1;
			goto fail;
		}
		/* At most one micro-batch per stage plus one at the coordinator's
		 * head; fewer where stages share cores (set_stage). */
		const int cap = o.in_flight > n_stages + 1 ? o.in_flight : n_stages + 1;
		if (tern_coord_pipeline_backend(n_stages, hp->n_embd, cap, &be, &err) < 0)
			goto fail;
		for (int st = 1; st <= n_stages && st <= TERN_PIPE_MAX_STAGES; st++)
			tern_coord_pipeline_set_stage(&be, st, g_stage_host[st - 1], g_stage_binding[st - 1],
						      g_stage_pid[st - 1]);
		if (o.in_flight > 0)
			be.max_in_flight = o.in_flight;
		TERN_LOGI("coord", "pipeline: %d micro-batch%s in flight at most (%d stage%s)", be.max_in_flight,
			  be.max_in_flight > 1 ? "es" : "", n_stages, n_stages > 1 ? "s" : "");
	} else {
		tern_engine_config cfg = {.n_slots = o.slots, .n_ctx = ctx, .max_rows = o.max_rows,
					  .isa = (tern_isa)o.isa, .kv_type = o.kv_type, .kv_block = TERN_KV_BLOCK_DEFAULT,
					  .kv_blocks = o.kv_blocks};
		const int threads = o.threads > 0 ? o.threads : tern_cpu_count();
		/* The layers come from the model (or plan) already open: one parse. */
		if (tern_pool_create(threads, NULL, 0, &local_pool, &err) < 0 ||
		    tern_coord_model_layers(model, o.packing, local_pool, &local_layers, &err) < 0)
			goto fail;
		cfg.pool = local_pool;
		if (tern_engine_create(&local_layers, &cfg, &local_engine, &err) < 0)
			goto fail;
		int slot;
		while (tern_kv_slot_alloc(tern_engine_kv(local_engine), &slot, NULL) == 0)
			;
		if (tern_sched_local_backend(local_engine, &be, &err) < 0)
			goto fail;
		snprintf(desc, sizeof desc, "local\tin-process\t0\t%d\n", hp->n_layer - 1);
		layer_bytes = tern_layers_bytes(&local_layers);
	}
	if (tern_pool_create(o.head_threads, NULL, 0, &head_pool, &err) < 0)
		goto fail;
	tern_tokenizer *tok = model->tok;
	tern_head *head = model->head;
	const int lm_head = o.lm_head >= 0 ? o.lm_head : model->from_plan ? -1 : TERN_PLAN_HEAD_DEFAULT;
	if (lm_head >= 0 && tern_head_quantize(head, (tern_head_format)lm_head, head_pool, &err) < 0)
		goto fail;
	tern_sched_config sc = {
		.n_embd = hp->n_embd,
		.n_vocab = hp->n_vocab,
		.n_slots = o.slots,
		.n_ctx = ctx,
		.kv_block = TERN_KV_BLOCK_DEFAULT,
		.kv_blocks = o.kv_blocks,
		.max_rows = o.max_rows,
		.prefill_chunk = o.chunk,
		.prefix_cache = !o.no_prefix_cache,
		.queue_limit = o.queue,
		.default_max_tokens = o.max_tokens,
		.stall_timeout_s = o.stall,
		.drain_timeout_s = o.drain,
		.tok = tok,
		.head = head,
		.head_pool = head_pool,
		.chat_style = TERN_CHAT_BITNET,
		.model_name = model->path,
		.stage_desc = desc,
	};
	if (tern_sched_create(&sc, &be, &sched, &err) < 0)
		goto fail;
	/* What one decode step of one sequence must read: the bandwidth bound
	 * benchmarks print beside their figures. */
	printf("tern-coordinator: decode reads %llu bytes per token (layers %llu + LM head %llu)\n",
	       (unsigned long long)(layer_bytes + tern_head_bytes(head)), (unsigned long long)layer_bytes,
	       (unsigned long long)tern_head_bytes(head));
	/* And what it must compute: the int8 bound of batched decode and prefill
	 * (one multiply-add per ternary weight, one per head weight). */
	const uint64_t layer_macs = tern_hparams_layer_params(hp) * (uint64_t)hp->n_layer;
	const uint64_t head_macs = (uint64_t)hp->n_vocab * (uint64_t)hp->n_embd;
	printf("tern-coordinator: decode does %llu multiply-adds per token (layers %llu + LM head %llu)\n",
	       (unsigned long long)(layer_macs + head_macs), (unsigned long long)layer_macs,
	       (unsigned long long)head_macs);
	g_sched = sched;
	g_drain_s = o.drain;
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGPIPE, SIG_IGN);

	int rc;
	if (o.batch_in) {
		rc = tern_coord_batch(sched, o.batch_in, o.batch_out, &err);
	} else {
		if (o.token_file && !(token = tern_read_first_line(o.token_file, &err)))
			goto fail;
		tern_grpc_opts go = {.listen = o.listen,
				     .tls_cert_file = o.tls_cert,
				     .tls_key_file = o.tls_key,
				     .auth_token = token,
				     .max_connections = (unsigned)o.max_conns};
		if (tern_grpc_start(&go, tern_sched_service(sched), &srv, &err) < 0)
			goto fail;
		char where[32] = "Unix socket";
		if (strncmp(o.listen, "unix:", 5) != 0)
			snprintf(where, sizeof where, "port %d", tern_grpc_port(srv));
		printf("tern-coordinator: serving tern.v1.Tern on %s (%s)%s%s, %d stage(s)\n", o.listen, where,
		       o.tls_cert ? ", TLS" : "", token ? ", bearer token" : "", n_stages);
		fflush(stdout);
		rc = tern_sched_run(sched, 0, &err);
	}
	if (rc < 0) {
		/* The pipeline failed: every request has ended UNAVAILABLE; let the
		 * clients hear it, then take the whole job down (a hung stage would
		 * never finalize). */
		abort_mpi = n_stages > 0;
		goto fail;
	}
	/* A signal is the ordinary way to stop a server: exit 0 if the pipeline
	 * then drains (below), non-zero if it cannot. */
	status = 0;
	if (g_signal)
		fprintf(stderr, "tern-coordinator: stopping on signal %d\n", (int)g_signal);
	goto cleanup;
fail:
	fprintf(stderr, "tern-coordinator: %s\n", err.msg[0] ? err.msg : "failed");
	status = 1;
cleanup:
	g_sched = NULL;
	/* Requests first (their clients hear UNAVAILABLE), then the server,
	 * which waits for those calls to drain. */
	if (sched) {
		/* mpirun signals us when a stage dies: say which, if it is known. */
		char why[256] = "the server is shutting down";
		if (g_signal && n_stages > 0 && be.diagnose && be.diagnose(be.self, why, sizeof why))
			fprintf(stderr, "tern-coordinator: %s\n", why);
		tern_sched_shutdown(sched, why);
	}
	tern_grpc_stop(srv, 5.0);
	tern_sched_free(sched);
	/* Stages still waiting for their HELLO (the failure came before
	 * start_stages) are told to stop, or MPI_Finalize would wait for them. */
	if (n_stages > 0 && !hello_sent && !abort_mpi)
		shutdown_stages_control(n_stages);
	if (n_stages > 0 && be.self && !abort_mpi) {
		tern_err se;
		/* After a signal a stage may be gone (mpirun signals us when one
		 * dies): do not wait long for the drain. */
		if (tern_coord_pipeline_shutdown(&be, g_signal ? 3.0 : 10.0, &se) < 0) {
			fprintf(stderr, "tern-coordinator: shutting the pipeline down: %s\n", se.msg);
			abort_mpi = 1;
			status = 1;
		}
	}
	if (n_stages == 0)
		tern_sched_local_free(&be);
	tern_engine_free(local_engine);
	tern_layers_free(&local_layers);
	tern_pool_free(local_pool);
	tern_pool_free(head_pool);
	tern_coord_model_close(model);
	free(token);
	fflush(stdout);
	if (abort_mpi)
		MPI_Abort(MPI_COMM_WORLD, status ? status : 1);
	MPI_Finalize();
	return status;
}
