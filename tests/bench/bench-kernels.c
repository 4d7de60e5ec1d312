/* bench-kernels.c: `tern-bench kernels`: how close each packing x ISA x
 * thread count gets to the machine's read bandwidth on GEMV, and what
 * batching buys on GEMM.
 *
 * Decode reads every weight of a model once per token, so a GEMV timed on a
 * matrix that sits in cache says nothing about decode. Here every shape gets a
 * working set of distinct matrices (>= 1 GiB by default, far beyond the L3)
 * laid out in one buffer and visited in a cycle, so each call's weights come
 * from DRAM. The matrices are copies of a few packed random ones: the bytes
 * are distinct in memory, which is all the memory system sees. The read
 * bandwidth they are compared with is measured in the same run with the same
 * threads, by summing a buffer of the same kind with the widest loads: once
 * at the start, and again in passes interleaved with the GEMV passes, whose
 * best is each GEMV row's bound, so that load from other processes on a
 * shared machine weighs on a figure and its bound alike. The read_bw rows,
 * emitted last, give the best pass of the whole run per thread count. GEMM
 * rows run the same working set at batch 1..128 and report tokens/s, GOPS and
 * the speed-up over GEMV for the same matrices; their bound is the tokens/s
 * that bandwidth would allow (batch tokens per read of the matrix).
 *
 * Figures are the best repetition (each repetition a full pass over the
 * working set for GEMV, a calibrated number of calls for GEMM); the median is
 * reported beside it. */
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "tern-float.h"
#include "test-util.h"

#define MAX_LIST 16
#define MAX_REPS 256
#define N_SOURCES 4 /* distinct random matrices per working set */

typedef struct kopts {
	int packings[TERN_PACK_COUNT], n_packings;
	int isas[TERN_ISA_COUNT], n_isas;
	int threads[MAX_LIST], n_threads;
	int batches[MAX_LIST], n_batches;
	int shapes[MAX_LIST][2], n_shapes; /* (m, k) */
	int heads[TERN_QH_COUNT], n_heads;  /* quantized LM head formats measured (tern_qh_type) */
	int head_shape[2];                   /* (vocabulary, width) of the head rows */
	double ws_mib, bw_mib, min_s;
	int min_reps, gemv_reps; /* repetitions at least (GEMM, GEMV) */
	int pin, quick;
	bench_fmt fmt;
} kopts;

/* One measured (shape, packing, isa, threads, batch); batch 0 is the GEMV. */
typedef struct kresult {
	int shape, packing, isa, threads, batch;
	double s_per_call;
	double bw;   /* GB/s read bandwidth measured beside it (the bound) */
	double peak; /* GOPS int8 peak measured beside a GEMM (NaN: none) */
	size_t bytes;
} kresult;

typedef struct kbench {
	kopts o;
	bench_out out;
	int cpus[TERN_POOL_MAX_THREADS], n_cpus;
	tern_pool *pools[MAX_LIST];
	double bw[MAX_LIST];      /* GB/s per entry of o.threads, measured first */
	double bw_best[MAX_LIST]; /* the best of that and every interleaved pass */
	void *bw_buf;             /* (bw_bytes) the read-bandwidth buffer */
	bench_peak peaks[MAX_LIST][8]; /* int8 units per entry of o.threads, best over the run */
	int n_peaks[MAX_LIST];
	size_t bw_bytes;
	kresult *res;
	int n_res, cap_res;
} kbench;

static const char *const csv_cols[] = {"bench",    "what",         "threads",  "value",       "unit",      "bound",
				       "fraction", "packing",      "isa",      "op",          "batch",     "m",
				       "k",        "weight_bytes", "matrices", "us_per_call", "us_median", "gb_s",
				       "tok_s",    "gops",         "speedup",  "read_bw",     "int8_unit", "peak_gops",
				       "bound_gops", "bound_kind", NULL};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: tern-bench kernels [options]\n"
		"  --packing LIST   i2_s,tl1,tl2 (default all)\n"
		"  --isa LIST       ref,avx2,avx512,neon,auto (default: every available SIMD ISA; ref only if asked)\n"
		"  --threads LIST   thread counts (default 1,2,all CPUs, deduplicated)\n"
		"  --shape MxK      a matrix shape, repeatable (default the BitNet 2B4T set\n"
		"                   2560x2560, 640x2560, 6912x2560, 2560x6912)\n"
		"  --batches LIST   GEMM batch sizes (default 1,8,32,128)\n"
		"  --head LIST      quantized LM head rows: q8,q4 or none (default q8)\n"
		"  --head-shape VxD the head's vocabulary x width (default 2B4T's 128256x2560)\n"
		"  --ws-mib N       working set of distinct matrices per shape (default 1024)\n"
		"  --bw-mib N       buffer for the read-bandwidth probe (default 1024)\n"
		"  --min-time S     seconds per measurement, at least (default 0.3)\n"
		"  --no-pin         do not pin thread i to the i-th allowed CPU\n"
		"  --quick          smoke run: 8 MiB working set, one small shape, few repetitions\n"
		"  --json | --csv   machine-readable rows on stdout (the table then goes to stderr)\n");
}

static int parse_names(const char *s, int *out, int max, int (*parse)(const char *), const char *what)
{
	char buf[256];
	snprintf(buf, sizeof buf, "%s", s);
	int n = 0;
	for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		int v = parse(tok);
		if (v == -2 || n >= max) {
			fprintf(stderr, "tern-bench kernels: unknown %s '%s'\n", what, tok);
			return -1;
		}
		out[n++] = v;
	}
	return n;
}

/* A head format name for parse_names (-2: unknown). */
static int head_parse(const char *s)
{
	const int t = tern_qh_parse(s);
	return t < 0 ? -2 : t;
}

static int dedupe(int *v, int n)
{
	int m = 0;
	for (int i = 0; i < n; i++) {
		int seen = 0;
		for (int j = 0; j < m; j++)
			seen |= v[j] == v[i];
		if (!seen)
			v[m++] = v[i];
	}
	return m;
}

static int parse_opts(kbench *b, int argc, char **argv)
{
	kopts *o = &b->o;
	memset(o, 0, sizeof *o);
	o->ws_mib = 1024;
	o->bw_mib = 1024;
	o->min_s = 0.3;
	o->min_reps = 3;
	/* A GEMV repetition is one pass over the working set and the figure its
	 * best: more of them make one quiet pass likelier on a shared machine. */
	o->gemv_reps = 5;
	o->pin = 1;
	int ws_set = 0, bw_set = 0, time_set = 0, head_set = 0;
	enum {
		O_PACK = 256,
		O_ISA,
		O_THREADS,
		O_SHAPE,
		O_BATCHES,
		O_WS,
		O_BW,
		O_TIME,
		O_NOPIN,
		O_QUICK,
		O_JSON,
		O_CSV,
		O_HEAD,
		O_HEAD_SHAPE
	};
	static const struct option lopts[] = {{"packing", required_argument, 0, O_PACK},
					      {"isa", required_argument, 0, O_ISA},
					      {"threads", required_argument, 0, O_THREADS},
					      {"shape", required_argument, 0, O_SHAPE},
					      {"batches", required_argument, 0, O_BATCHES},
					      {"ws-mib", required_argument, 0, O_WS},
					      {"bw-mib", required_argument, 0, O_BW},
					      {"min-time", required_argument, 0, O_TIME},
					      {"no-pin", no_argument, 0, O_NOPIN},
					      {"quick", no_argument, 0, O_QUICK},
					      {"json", no_argument, 0, O_JSON},
					      {"csv", no_argument, 0, O_CSV},
					      {"head", required_argument, 0, O_HEAD},
					      {"head-shape", required_argument, 0, O_HEAD_SHAPE},
					      {"help", no_argument, 0, 'h'},
					      {0, 0, 0, 0}};
	optind = 1;
	int c;
	while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
		char *end;
		switch (c) {
		case O_PACK:
			o->n_packings =
			    parse_names(optarg, o->packings, TERN_PACK_COUNT, tern_packing_parse, "packing");
			if (o->n_packings < 0)
				return -1;
			for (int i = 0; i < o->n_packings; i++)
				if (o->packings[i] < 0) {
					fprintf(stderr, "tern-bench kernels: --packing needs a packing name\n");
					return -1;
				}
			break;
		case O_ISA:
			o->n_isas = parse_names(optarg, o->isas, TERN_ISA_COUNT, tern_isa_parse, "isa");
			if (o->n_isas < 0)
				return -1;
			break;
		case O_THREADS:
		case O_BATCHES: {
			const int th = c == O_THREADS;
			int *n = th ? &o->n_threads : &o->n_batches;
			if ((*n = bench_parse_int_list(optarg, th ? o->threads : o->batches, MAX_LIST)) < 1) {
				fprintf(stderr, "tern-bench kernels: bad --%s '%s'\n", th ? "threads" : "batches", optarg);
				return -1;
			}
			break;
		}
		case O_SHAPE:
		case O_HEAD_SHAPE: {
			const int head = c == O_HEAD_SHAPE;
			long m = strtol(optarg, &end, 10), k = 0;
			if (*end == 'x' || *end == 'X')
				k = strtol(end + 1, &end, 10);
			if (*end || m < 1 || k < 1 || m > (1 << 20) || k > (1 << 20) || (!head && o->n_shapes >= MAX_LIST)) {
				fprintf(stderr, "tern-bench kernels: bad --%s '%s' (want %s)\n", head ? "head-shape" : "shape",
					optarg, head ? "VxD" : "MxK");
				return -1;
			}
			int *dst = head ? o->head_shape : o->shapes[o->n_shapes++];
			dst[0] = (int)m;
			dst[1] = (int)k;
			break;
		}
		case O_HEAD:
			head_set = 1;
			o->n_heads = 0;
			if (strcmp(optarg, "none") != 0 &&
			    (o->n_heads = parse_names(optarg, o->heads, TERN_QH_COUNT, head_parse, "head format")) < 0)
				return -1;
			break;
		case O_WS:
		case O_BW:
		case O_TIME: {
			double v = 0;
			tern_err perr;
			if (tern_parse_double(optarg, 1e-9, 1e6, c == O_WS ? "--ws-mib" : c == O_BW ? "--bw-mib" : "--min-time",
					      &v, &perr) < 0) {
				fprintf(stderr, "tern-bench kernels: %s\n", perr.msg);
				return -1;
			}
			if (c == O_WS)
				o->ws_mib = v, ws_set = 1;
			else if (c == O_BW)
				o->bw_mib = v, bw_set = 1;
			else
				o->min_s = v, time_set = 1;
			break;
		}
		case O_NOPIN: o->pin = 0; break;
		case O_QUICK: o->quick = 1; break;
		case O_JSON: o->fmt = BENCH_FMT_JSON; break;
		case O_CSV: o->fmt = BENCH_FMT_CSV; break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "tern-bench kernels: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	if (o->quick) {
		if (!ws_set)
			o->ws_mib = 8;
		if (!bw_set)
			o->bw_mib = 64;
		if (!time_set)
			o->min_s = 0.01;
		o->min_reps = 1;
		o->gemv_reps = 1;
		if (!o->n_shapes) {
			o->shapes[0][0] = 640;
			o->shapes[0][1] = 2560;
			o->n_shapes = 1;
		}
		if (!o->head_shape[0]) {
			o->head_shape[0] = 1000;
			o->head_shape[1] = 256;
		}
	}
	if (!head_set)
		o->heads[o->n_heads++] = TERN_QH_Q8;
	o->n_heads = dedupe(o->heads, o->n_heads);
	if (!o->head_shape[0]) {
		o->head_shape[0] = 128256;
		o->head_shape[1] = 2560;
	}
	if (!o->n_packings)
		for (int p = 0; p < TERN_PACK_COUNT; p++)
			o->packings[o->n_packings++] = p;
	o->n_packings = dedupe(o->packings, o->n_packings);
	if (!o->n_isas) {
		for (int i = TERN_ISA_REF + 1; i < TERN_ISA_COUNT; i++)
			if (tern_isa_available((tern_isa)i))
				o->isas[o->n_isas++] = i;
		if (!o->n_isas)
			o->isas[o->n_isas++] = TERN_ISA_REF;
	}
	for (int i = 0; i < o->n_isas; i++) {
		if (o->isas[i] == TERN_ISA_AUTO)
			o->isas[i] = (int)tern_isa_default();
		if (!tern_isa_available((tern_isa)o->isas[i])) {
			fprintf(stderr, "tern-bench kernels: ISA %s is not available on this CPU/build\n",
				tern_isa_name((tern_isa)o->isas[i]));
			return -1;
		}
	}
	o->n_isas = dedupe(o->isas, o->n_isas);
	if (!o->n_threads) {
		o->threads[0] = 1;
		o->threads[1] = 2 < b->n_cpus ? 2 : b->n_cpus;
		o->threads[2] = b->n_cpus;
		o->n_threads = 3;
	}
	for (int i = 0; i < o->n_threads; i++)
		if (o->threads[i] < 1 || o->threads[i] > TERN_POOL_MAX_THREADS) {
			fprintf(stderr, "tern-bench kernels: thread count %d outside [1, %d]\n", o->threads[i],
				TERN_POOL_MAX_THREADS);
			return -1;
		}
	o->n_threads = dedupe(o->threads, o->n_threads);
	if (!o->n_batches) {
		static const int def[] = {1, 8, 32, 128};
		memcpy(o->batches, def, sizeof def);
		o->n_batches = 4;
	}
	for (int i = 0; i < o->n_batches; i++)
		if (o->batches[i] < 1 || o->batches[i] > 4096) {
			fprintf(stderr, "tern-bench kernels: batch %d outside [1, 4096]\n", o->batches[i]);
			return -1;
		}
	if (!o->n_shapes) {
		static const int def[4][2] = {{2560, 2560}, {640, 2560}, {6912, 2560}, {2560, 6912}};
		memcpy(o->shapes, def, sizeof def);
		o->n_shapes = 4;
	}
	return 0;
}

/* ---- the working set -------------------------------------------------------- */

typedef struct wset {
	tern_matrix src[N_SOURCES]; /* packed random matrices (own their data) */
	int n_src;
	tern_matrix *mats; /* (n) views into arena, copies of src[i % n_src] */
	int n;
	uint8_t *arena;
	size_t arena_bytes;
} wset;

static uint64_t rng = 0x243f6a8885a308d3ull;

static uint32_t rnd32(void)
{
	return tt_xorshift_star(&rng);
}

static void wset_free(wset *ws)
{
	for (int i = 0; i < ws->n_src; i++)
		tern_matrix_free(&ws->src[i]);
	free(ws->mats);
	bench_big_free(ws->arena, ws->arena_bytes);
	memset(ws, 0, sizeof *ws);
}

static int wset_build(wset *ws, tern_packing pk, int m, int k, double ws_mib, tern_err *e)
{
	memset(ws, 0, sizeof *ws);
	const size_t bytes = tern_matrix_data_bytes(pk, m, k);
	TERN_RETURN_IF(bytes == 0, e, TERN_EINVAL, "no packed size for %s %dx%d", tern_packing_name(pk), m, k);
	const double want = ws_mib * 1048576.0;
	ws->n = (int)ceil(want / (double)bytes);
	if (ws->n < 1)
		ws->n = 1;
	ws->n_src = ws->n < N_SOURCES ? ws->n : N_SOURCES;
	int8_t *w = malloc((size_t)m * k);
	TERN_RETURN_IF(!w, e, TERN_ENOMEM, "out of memory for a %dx%d matrix", m, k);
	const float scale = 0.0125f;
	for (int s = 0; s < ws->n_src; s++) {
		for (size_t i = 0; i < (size_t)m * k; i++)
			w[i] = (int8_t)((int)(rnd32() % 3) - 1);
		int rc = tern_matrix_pack(&ws->src[s], pk, w, m, k, &scale, m, e);
		if (rc) {
			free(w);
			ws->n_src = s;
			wset_free(ws);
			return rc;
		}
	}
	free(w);
	const size_t stride = (ws->src[0].data_bytes + TERN_ALIGN - 1) / TERN_ALIGN * TERN_ALIGN;
	ws->arena_bytes = stride * (size_t)ws->n;
	ws->arena = bench_big_alloc(ws->arena_bytes);
	ws->mats = calloc((size_t)ws->n, sizeof *ws->mats);
	if (!ws->arena || !ws->mats) {
		wset_free(ws);
		return TERN_ERR(e, TERN_ENOMEM, "out of memory for a %.0f MiB working set", ws_mib);
	}
	for (int i = 0; i < ws->n; i++) {
		const tern_matrix *s = &ws->src[i % ws->n_src];
		ws->mats[i] = *s;
		ws->mats[i].data = ws->arena + stride * (size_t)i;
		ws->mats[i].owns_data = 0;
		memcpy(ws->mats[i].data, s->data, s->data_bytes);
	}
	return 0;
}

/* ---- timing ------------------------------------------------------------------ */

typedef struct krun {
	const wset *ws;
	int cursor;
	const tern_act *act;
	float *y; /* (batch, m) */
	tern_isa isa;
	tern_pool *pool;
	const void *bw_buf; /* read between GEMV passes, see measure() */
	size_t bw_bytes;
	const char *peak_unit; /* int8 unit run between GEMM passes (NULL: none) */
	const struct hset *hs; /* non-NULL: the quantized head's rows instead of ws */
	tern_qdot_args qa;     /* the head call (w set per copy) */
	const tern_float_kernels *fk;
} krun;

/* ---- the quantized LM head's working set --------------------------------------------- */

/* Copies of a head packed in the tern_qh layout (kernels/tern-float.h), as
 * tern_head_logits runs it: each thread takes a contiguous range of 16-row
 * groups. The group bytes are copies of N_SOURCES packed random groups. */
typedef struct hset {
	tern_qh_type t;
	int rows, n, ng;  /* vocabulary, width, 16-row groups */
	size_t bytes;     /* one copy (tern_qh_bytes) */
	size_t stride;    /* bytes between copies */
	int copies;
	uint8_t *arena;
	size_t arena_bytes;
} hset;

static void hset_free(hset *hs)
{
	bench_big_free(hs->arena, hs->arena_bytes);
	memset(hs, 0, sizeof *hs);
}

static int hset_build(hset *hs, tern_qh_type t, int rows, int n, double ws_mib, tern_err *e)
{
	memset(hs, 0, sizeof *hs);
	hs->t = t, hs->rows = rows, hs->n = n, hs->ng = (rows + TERN_QH_GROUP - 1) / TERN_QH_GROUP;
	hs->bytes = tern_qh_bytes(t, rows, n);
	hs->stride = (hs->bytes + TERN_ALIGN - 1) / TERN_ALIGN * TERN_ALIGN;
	hs->copies = (int)ceil(ws_mib * 1048576.0 / (double)hs->bytes);
	if (hs->copies < 1)
		hs->copies = 1;
	hs->arena_bytes = hs->stride * (size_t)hs->copies;
	const size_t gb = tern_qh_group_bytes(t, n);
	float *w = malloc(sizeof(float) * TERN_QH_GROUP * (size_t)n);
	uint8_t *src = malloc(gb * N_SOURCES);
	hs->arena = w && src ? bench_big_alloc(hs->arena_bytes) : NULL;
	if (!hs->arena) {
		free(w);
		free(src);
		hset_free(hs);
		return TERN_ERR(e, TERN_ENOMEM, "out of memory for a %.0f MiB head working set", ws_mib);
	}
	/* an embedding matrix's kind of values: unit-scale with outliers */
	for (int g = 0; g < N_SOURCES; g++) {
		for (size_t i = 0; i < (size_t)TERN_QH_GROUP * n; i++)
			w[i] = ((float)(rnd32() % 20001) - 10000.0f) / 1e5f * (rnd32() % 64 ? 1.0f : 6.0f);
		tern_qh_pack_group(t, w, (size_t)n, TERN_QH_GROUP, n, src + (size_t)g * gb);
	}
	for (int c = 0; c < hs->copies; c++)
		for (int g = 0; g < hs->ng; g++)
			memcpy(hs->arena + hs->stride * (size_t)c + gb * (size_t)g, src + gb * (size_t)(g % N_SOURCES), gb);
	free(w);
	free(src);
	return 0;
}

typedef struct {
	const krun *r;
	tern_qdot_args a;
} head_job;

static void head_run(void *ctx, int tid, int nth)
{
	const head_job *j = ctx;
	const int ng = j->r->hs->ng;
	const int g0 = (int)((int64_t)ng * tid / nth), g1 = (int)((int64_t)ng * (tid + 1) / nth);
	if (g0 < g1)
		j->r->fk->qdot_groups(&j->a, g0, g1);
}

static int run_calls(krun *r, long calls, tern_err *e)
{
	if (r->hs) {
		for (long c = 0; c < calls; c++) {
			head_job j = {r, r->qa};
			j.a.w = r->hs->arena + r->hs->stride * (size_t)r->cursor;
			if (++r->cursor == r->hs->copies)
				r->cursor = 0;
			tern_pool_run(r->pool, head_run, &j);
		}
		return 0;
	}
	for (long c = 0; c < calls; c++) {
		const tern_matrix *w = &r->ws->mats[r->cursor];
		if (++r->cursor == r->ws->n)
			r->cursor = 0;
		TERN_FORWARD_IF_ERROR(tern_gemm_f32_mt(r->pool, w, r->act, r->y, w->m, 0, w->m, r->isa, e));
	}
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	const double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Best and median seconds per call. A GEMV repetition is at least one full
 * pass over the working set, so its figure is a DRAM figure. Each GEMV
 * repetition follows one pass of the read-bandwidth probe on the same
 * threads, and *bw is the best of those: other processes on a shared machine
 * then weigh on the figure and its bound alike. Each GEMM repetition follows
 * one pass of the int8 peak loop of r->peak_unit for the same reason; *bw is
 * then the best GOPS of those (NaN without a unit). */
static int measure(krun *r, int gemv, const kopts *o, double *best, double *median, double *bw, tern_err *e)
{
	const int n_mats = r->hs ? r->hs->copies : r->ws->n;
	if (gemv)
		TERN_FORWARD_IF_ERROR(run_calls(r, n_mats, e));
	else
		TERN_FORWARD_IF_ERROR(run_calls(r, 1, e));
	double t0 = tern_now_s();
	TERN_FORWARD_IF_ERROR(run_calls(r, 1, e));
	const double t1 = fmax(tern_now_s() - t0, 1e-7);
	const int min_reps = gemv ? o->gemv_reps : o->min_reps;
	long cpr = (long)ceil(o->min_s / min_reps / t1);
	if (cpr < 1)
		cpr = 1;
	if (gemv && cpr < n_mats)
		cpr = n_mats;
	double times[MAX_REPS], spent = 0;
	int reps = 0;
	*bw = gemv || r->peak_unit ? 0 : NAN;
	while (reps < MAX_REPS && (reps < min_reps || spent < o->min_s)) {
		if (gemv) {
			const double gbs = bench_read_pass(r->pool, r->bw_buf, r->bw_bytes);
			*bw = gbs > *bw ? gbs : *bw;
		} else if (r->peak_unit) {
			const double g = bench_int8_peak_pass(r->pool, r->peak_unit);
			*bw = g > *bw ? g : *bw;
		}
		t0 = tern_now_s();
		TERN_FORWARD_IF_ERROR(run_calls(r, cpr, e));
		const double dt = tern_now_s() - t0;
		spent += dt;
		times[reps++] = dt / (double)cpr;
	}
	qsort(times, (size_t)reps, sizeof times[0], cmp_double);
	*best = times[0];
	*median = reps % 2 ? times[reps / 2] : 0.5 * (times[reps / 2 - 1] + times[reps / 2]);
	return 0;
}

static int add_result(kbench *b, kresult r)
{
	if (b->n_res == b->cap_res) {
		int cap = b->cap_res ? 2 * b->cap_res : 256;
		kresult *n = realloc(b->res, (size_t)cap * sizeof *n);
		if (!n)
			return -1;
		b->res = n;
		b->cap_res = cap;
	}
	b->res[b->n_res++] = r;
	return 0;
}

static const kresult *find_result(const kbench *b, int shape, int pk, int isa, int threads, int batch)
{
	for (int i = 0; i < b->n_res; i++) {
		const kresult *r = &b->res[i];
		if (r->shape == shape && r->packing == pk && r->isa == isa && r->threads == threads &&
		    r->batch == batch)
			return r;
	}
	return NULL;
}

/* The 1-minute load average (NaN where unknown): how busy the machine was
 * around a run, printed so noisy figures can be told from slow kernels. */
static double load_average(void)
{
	double v = NAN;
	FILE *f = fopen("/proc/loadavg", "r");
	if (f) {
		if (fscanf(f, "%lf", &v) != 1)
			v = NAN;
		fclose(f);
	}
	return v;
}

/* ---- the run ------------------------------------------------------------------- */

/* The int8 unit that bounds an ISA's GEMM on this CPU (NULL: none measured). */
static const char *isa_int8_unit(tern_isa isa)
{
	const tern_cpu *c = tern_cpu_get();
	if (isa == TERN_ISA_AVX512 && c->avx512vnni)
		return "avx512_vnni";
	if (isa == TERN_ISA_AVX2)
		return c->avxvnni ? "avx_vnni" : c->avx2 ? "avx2_maddubs" : NULL;
	return NULL;
}

/* Keeps the best peak seen for unit on thread entry ti (the int8_peak rows). */
static void note_peak(kbench *b, int ti, const char *unit, double gops)
{
	for (int i = 0; unit && i < b->n_peaks[ti]; i++)
		if (!strcmp(b->peaks[ti][i].unit, unit) && gops > b->peaks[ti][i].gops)
			b->peaks[ti][i].gops = gops;
}

/* GEMM rows: value tok/s; bound = min(compute, bandwidth) in tok/s, where
 * compute = peak GOPS / (2 m k) and bandwidth = read_bw / packed bytes x
 * batch (each call reads the matrix once for `batch` tokens). */
/* What a row measured: a matrix of m x k weights stored in bytes, n_mats
 * copies in the working set; head: the quantized LM head (rows "what":
 * "head", op gemv | gemm, packing q8 | q4). */
typedef struct krow {
	const char *pack;
	int m, k, n_mats, head;
	size_t bytes;
} krow;

static void kernel_row(kbench *b, int ti, const krow *kw, tern_isa isa, int batch, double best, double median,
		       double gemv_s, double bw, double peak)
{
	const int threads = b->o.threads[ti];
	const int gemv = batch == 0;
	if (gemv)
		batch = 1;
	const double bytes = (double)kw->bytes;
	const double gbs = bytes / best / 1e9, tok_s = batch / best;
	const double gops = 2.0 * kw->m * kw->k * batch / best / 1e9;
	bench_row row;
	const double ops_per_tok = 2.0 * kw->m * kw->k;
	const double bw_tok = bw * 1e9 / bytes * batch, peak_tok = peak * 1e9 / ops_per_tok;
	const int compute_bound = !gemv && peak_tok < bw_tok; /* false for a NaN peak */
	const double bound_tok = compute_bound ? peak_tok : bw_tok;
	const char *what = kw->head ? "head" : gemv ? "gemv" : "gemm";
	if (gemv)
		bench_row_init(&row, "kernels", what, threads, gbs, "GB/s", bw);
	else
		bench_row_init(&row, "kernels", what, threads, tok_s, "tok/s", bound_tok);
	bench_row_str(&row, "packing", kw->pack);
	bench_row_str(&row, "isa", tern_isa_name(isa));
	bench_row_str(&row, "op", gemv ? "gemv" : "gemm");
	bench_row_int(&row, "batch", batch);
	bench_row_int(&row, "m", kw->m);
	bench_row_int(&row, "k", kw->k);
	bench_row_int(&row, "weight_bytes", (long long)kw->bytes);
	bench_row_int(&row, "matrices", kw->n_mats);
	bench_row_num(&row, "us_per_call", best * 1e6);
	bench_row_num(&row, "us_median", median * 1e6);
	bench_row_num(&row, "gb_s", gbs);
	bench_row_num(&row, "tok_s", tok_s);
	bench_row_num(&row, "gops", gops);
	const double speedup = gemv ? 1.0 : tok_s * gemv_s;
	bench_row_num(&row, "speedup", speedup);
	bench_row_num(&row, "read_bw", bw);
	if (!gemv) {
		const char *unit = isa_int8_unit(isa);
		bench_row_str(&row, "int8_unit", unit && peak == peak ? unit : "none");
		bench_row_num(&row, "peak_gops", peak);
		bench_row_num(&row, "bound_gops", bound_tok * ops_per_tok / 1e9);
		bench_row_str(&row, "bound_kind", compute_bound ? "compute" : "bandwidth");
	}
	bench_emit(&b->out, &row);
	char shape[32];
	snprintf(shape, sizeof shape, "%dx%d", kw->m, kw->k);
	char peak_s[16] = "-", frac_s[16] = "-";
	if (!gemv) {
		if (peak == peak)
			snprintf(peak_s, sizeof peak_s, "%.0f", peak);
		snprintf(frac_s, sizeof frac_s, "%.0f%%%s", 100.0 * tok_s / bound_tok, compute_bound ? "c" : "b");
	}
	bench_table(&b->out, "%-10s %-5s %-7s %3d %-4s %5d %8.3f %9.1f %7.2f %6.2f %5.0f%% %10.0f %8.1f %7.2f %6s %6s\n",
		    shape, kw->pack, tern_isa_name(isa), threads, kw->head ? (gemv ? "hgmv" : "hgmm") : gemv ? "gemv" : "gemm", batch,
		    bytes / 1048576.0, best * 1e6, gbs, bw, 100.0 * gbs / bw, tok_s, gops, speedup, peak_s, frac_s);
}

static int run_shape_packing(kbench *b, int si, tern_packing pk, const float *x, int max_batch, tern_err *e)
{
	const int m = b->o.shapes[si][0], k = b->o.shapes[si][1];
	wset ws;
	TERN_FORWARD_IF_ERROR(wset_build(&ws, pk, m, k, b->o.ws_mib, e));
	float *y = tern_aligned_alloc((size_t)max_batch * m * sizeof *y, TERN_ALIGN);
	tern_act act;
	memset(&act, 0, sizeof act);
	int rc = y ? 0 : TERN_ERR(e, TERN_ENOMEM, "out of memory for the output");
	for (int ii = 0; rc == 0 && ii < b->o.n_isas; ii++) {
		const tern_isa isa = (tern_isa)b->o.isas[ii];
		for (int ti = 0; rc == 0 && ti < b->o.n_threads; ti++) {
			krun r = {.ws = &ws,
				  .y = y,
				  .isa = isa,
				  .pool = b->pools[ti],
				  .act = &act,
				  .bw_buf = b->bw_buf,
				  .bw_bytes = b->bw_bytes,
				  .peak_unit = isa_int8_unit(isa)};
			double best, median, bw, peak;
			rc = tern_act_prepare(&act, pk, isa, x, 1, k, k, e);
			if (rc == 0)
				rc = measure(&r, 1, &b->o, &best, &median, &bw, e);
			if (rc)
				break;
			kresult kr = {si, pk, isa, b->o.threads[ti], 0, best, bw, NAN, ws.mats[0].data_bytes};
			b->bw_best[ti] = bw > b->bw_best[ti] ? bw : b->bw_best[ti];
			if (add_result(b, kr))
				rc = TERN_ERR(e, TERN_ENOMEM, "out of memory");
			const krow kw = {tern_packing_name(pk), m, k, ws.n, 0, ws.mats[0].data_bytes};
			kernel_row(b, ti, &kw, isa, 0, best, median, best, bw, NAN);
			const double gemv_s = best;
			for (int bi = 0; rc == 0 && bi < b->o.n_batches; bi++) {
				const int batch = b->o.batches[bi];
				rc = tern_act_prepare(&act, pk, isa, x, batch, k, k, e);
				if (rc == 0)
					rc = measure(&r, 0, &b->o, &best, &median, &peak, e);
				if (rc)
					break;
				kr.batch = batch;
				kr.s_per_call = best;
				kr.peak = peak;
				note_peak(b, ti, r.peak_unit, peak);
				if (add_result(b, kr))
					rc = TERN_ERR(e, TERN_ENOMEM, "out of memory");
				kernel_row(b, ti, &kw, isa, batch, best, median, gemv_s, bw, peak);
			}
		}
	}
	tern_act_free(&act);
	tern_aligned_free(y);
	wset_free(&ws);
	return rc;
}

/* The quantized LM head of format t over every ISA x thread count: one row
 * (decode) against the read bandwidth, then each batch against min(int8
 * peak, bandwidth x batch), as the GEMM rows. */
static int run_head(kbench *b, tern_qh_type t, const float *x, int max_batch, tern_err *e)
{
	const int V = b->o.head_shape[0], D = b->o.head_shape[1];
	const int nb = tern_qh_blocks(D);
	hset hs;
	TERN_FORWARD_IF_ERROR(hset_build(&hs, t, V, D, b->o.ws_mib, e));
	float *y = tern_aligned_alloc((size_t)max_batch * V * sizeof *y, TERN_ALIGN);
	int8_t *xq = malloc((size_t)max_batch * nb * TERN_QH_BLOCK);
	float *xd = malloc((size_t)max_batch * nb * sizeof *xd);
	int32_t *xs = malloc((size_t)max_batch * nb * sizeof *xs);
	int rc = y && xq && xd && xs ? 0 : TERN_ERR(e, TERN_ENOMEM, "out of memory for the head's rows");
	/* the activations: x's rows, D floats each (x holds max_batch x max(k, D)) */
	for (int j = 0; rc == 0 && j < max_batch; j++)
		tern_qx_quantize(x + (size_t)j * D, D, xq + (size_t)j * nb * TERN_QH_BLOCK, xd + (size_t)j * nb,
				 xs + (size_t)j * nb);
	const krow kw = {tern_qh_name(t), V, D, hs.copies, 1, hs.bytes};
	for (int ii = 0; rc == 0 && ii < b->o.n_isas; ii++) {
		const tern_isa isa = (tern_isa)b->o.isas[ii];
		const tern_float_kernels *fk = tern_float_kernels_get(isa);
		if (!fk)
			continue;
		for (int ti = 0; rc == 0 && ti < b->o.n_threads; ti++) {
			krun r = {.y = y,
				  .isa = isa,
				  .pool = b->pools[ti],
				  .bw_buf = b->bw_buf,
				  .bw_bytes = b->bw_bytes,
				  .peak_unit = isa_int8_unit(isa),
				  .hs = &hs,
				  .fk = fk};
			r.qa = (tern_qdot_args){t, hs.arena, D, V, xq, xd, xs, 1, y, (size_t)V};
			double best, median, bw, peak;
			if ((rc = measure(&r, 1, &b->o, &best, &median, &bw, e)))
				break;
			b->bw_best[ti] = bw > b->bw_best[ti] ? bw : b->bw_best[ti];
			kernel_row(b, ti, &kw, isa, 0, best, median, best, bw, NAN);
			const double gemv_s = best;
			for (int bi = 0; rc == 0 && bi < b->o.n_batches; bi++) {
				r.qa.nx = b->o.batches[bi];
				if ((rc = measure(&r, 0, &b->o, &best, &median, &peak, e)))
					break;
				note_peak(b, ti, r.peak_unit, peak);
				kernel_row(b, ti, &kw, isa, r.qa.nx, best, median, gemv_s, bw, peak);
			}
		}
	}
	free(xq);
	free(xd);
	free(xs);
	tern_aligned_free(y);
	hset_free(&hs);
	return rc;
}

/* Per packing x ISA x threads over the whole shape set: GEMV bytes over time
 * (one matrix of each shape, as in one layer), and the batch speed-ups as
 * time per token over the same set. */
static void summary(kbench *b)
{
	const kopts *o = &b->o;
	bench_table(&b->out,
		    "\nsummary over the %d shape(s): GEMV GB/s and fraction of read bandwidth; GEMM speed-up "
		    "in tokens/s over GEMV\n",
		    o->n_shapes);
	bench_table(&b->out, "%-5s %-7s %3s %8s %6s", "pack", "isa", "thr", "GB/s", "bw%");
	for (int bi = 0; bi < o->n_batches; bi++) {
		char lab[16];
		snprintf(lab, sizeof lab, "x b%d", o->batches[bi]);
		bench_table(&b->out, " %8s", lab);
	}
	bench_table(&b->out, "\n");
	for (int pi = 0; pi < o->n_packings; pi++)
		for (int ii = 0; ii < o->n_isas; ii++)
			for (int ti = 0; ti < o->n_threads; ti++) {
				double bytes = 0, t_gemv = 0, t_bound = 0;
				int ok = 1;
				for (int si = 0; si < o->n_shapes; si++) {
					const kresult *r =
					    find_result(b, si, o->packings[pi], o->isas[ii], o->threads[ti], 0);
					if (!r) {
						ok = 0;
						break;
					}
					bytes += (double)r->bytes;
					t_gemv += r->s_per_call;
					t_bound += (double)r->bytes / (r->bw * 1e9);
				}
				if (!ok)
					continue;
				const double gbs = bytes / t_gemv / 1e9;
				bench_table(&b->out, "%-5s %-7s %3d %8.2f %5.0f%%", tern_packing_name(o->packings[pi]),
					    tern_isa_name(o->isas[ii]), o->threads[ti], gbs, 100.0 * t_bound / t_gemv);
				for (int bi = 0; bi < o->n_batches; bi++) {
					double t_tok = 0;
					for (int si = 0; si < o->n_shapes; si++) {
						const kresult *r = find_result(b, si, o->packings[pi], o->isas[ii],
									       o->threads[ti], o->batches[bi]);
						t_tok += r ? r->s_per_call / o->batches[bi] : NAN;
					}
					bench_table(&b->out, " %8.2f", t_gemv / t_tok);
				}
				bench_table(&b->out, "\n");
			}
}

int bench_kernels_main(int argc, char **argv)
{
	kbench *b = calloc(1, sizeof *b);
	if (!b)
		return 1;
	int status = 1;
	float *x = NULL;
	tern_err e;
	tern_err_clear(&e);
	b->n_cpus = bench_allowed_cpus(b->cpus, TERN_POOL_MAX_THREADS);
	if (parse_opts(b, argc, argv))
		goto done;
	bench_out_init(&b->out, b->o.fmt, csv_cols);
	const kopts *o = &b->o;

	if (o->pin)
		bench_pin_self(b->cpus[0]);
	for (int ti = 0; ti < o->n_threads; ti++) {
		if (tern_pool_create(o->threads[ti], o->pin ? b->cpus : NULL, o->pin ? b->n_cpus : 0, &b->pools[ti],
				     &e)) {
			fprintf(stderr, "tern-bench kernels: %s\n", e.msg);
			goto done;
		}
	}

	char feat[256];
	tern_cpu_describe(tern_cpu_get(), feat, sizeof feat);
	bench_table(&b->out, "# tern-bench kernels: %d CPU(s) allowed, features: %s\n", b->n_cpus, feat);
	bench_table(&b->out,
		    "# working set %.0f MiB of distinct matrices per shape, read-bandwidth buffer %.0f MiB "
		    "(%s loads), >= %.2f s per figure, %s\n",
		    o->ws_mib, o->bw_mib, bench_read_bw_isa(), o->min_s, o->pin ? "pinned" : "unpinned");
	bench_table(&b->out, "# load average at the start: %.2f\n", load_average());

	/* Read bandwidth first, per thread count (GEMV rows are bounded by the
	 * passes interleaved with them, see measure()). */
	const size_t bw_bytes = (size_t)(o->bw_mib * 1048576.0) / 256 * 256;
	void *buf = bench_big_alloc(bw_bytes);
	b->bw_buf = buf;
	b->bw_bytes = bw_bytes;
	if (!buf) {
		fprintf(stderr, "tern-bench kernels: cannot allocate the %.0f MiB bandwidth buffer\n", o->bw_mib);
		goto done;
	}
	for (int ti = 0; ti < o->n_threads; ti++) {
		b->bw[ti] = bench_read_bw(b->pools[ti], buf, bw_bytes, o->quick ? 2 : 5, o->quick ? 0.01 : 0.5);
		b->bw_best[ti] = b->bw[ti];
		bench_table(&b->out, "# read bandwidth, %d thread(s): %.2f GB/s\n", o->threads[ti], b->bw[ti]);
	}
	/* int8 peaks per unit and thread count: first here, then a pass beside
	 * every GEMM figure (see measure()); the int8_peak rows give the best. */
	for (int ti = 0; ti < o->n_threads; ti++) {
		b->n_peaks[ti] = bench_int8_peaks(b->pools[ti], o->quick ? 0.02 : 0.3, b->peaks[ti], 8);
		for (int i = 0; i < b->n_peaks[ti]; i++) {
			const bench_peak *p = &b->peaks[ti][i];
			if (p->skipped)
				bench_table(&b->out, "# int8 peak %s (%s), %d thread(s): SKIPPED (no verified path in this build)\n",
					    p->unit, p->instr, o->threads[ti]);
			else
				bench_table(&b->out, "# int8 peak %s (%s), %d thread(s): %.0f GOPS\n", p->unit, p->instr,
					    o->threads[ti], p->gops);
		}
	}

	int max_batch = 1, max_k = o->n_heads ? o->head_shape[1] : 1;
	for (int i = 0; i < o->n_batches; i++)
		max_batch = o->batches[i] > max_batch ? o->batches[i] : max_batch;
	for (int i = 0; i < o->n_shapes; i++)
		max_k = o->shapes[i][1] > max_k ? o->shapes[i][1] : max_k;
	/* Activations like a hidden state after a norm: a few outliers in a
	 * unit-scale bulk, so the int8 rows use the whole range. */
	x = malloc((size_t)max_batch * max_k * sizeof *x);
	if (!x)
		goto done;
	for (size_t i = 0; i < (size_t)max_batch * max_k; i++)
		x[i] = ((float)(rnd32() % 20001) - 10000.0f) / 10000.0f * (rnd32() % 64 ? 1.0f : 8.0f);

	bench_table(&b->out,
		    "\n(GEMM: peak = int8 GOPS of the ISA's unit beside the figure; frac = tok/s over min(compute, "
		    "bandwidth x batch), c/b = which bound)\n");
	bench_table(&b->out, "%-10s %-5s %-7s %3s %-4s %5s %8s %9s %7s %6s %6s %10s %8s %7s %6s %6s\n", "shape", "pack",
		    "isa", "thr", "op", "batch", "MiB/mat", "us/call", "GB/s", "bound", "bw%", "tok/s", "GOPS", "x gemv",
		    "peak", "frac");
	for (int si = 0; si < o->n_shapes; si++)
		for (int pi = 0; pi < o->n_packings; pi++)
			if (run_shape_packing(b, si, (tern_packing)o->packings[pi], x, max_batch, &e)) {
				fprintf(stderr, "tern-bench kernels: %s %dx%d: %s\n",
					tern_packing_name((tern_packing)o->packings[pi]), o->shapes[si][0],
					o->shapes[si][1], e.msg);
				goto done;
			}
	for (int hi = 0; hi < o->n_heads; hi++)
		if (run_head(b, (tern_qh_type)o->heads[hi], x, max_batch, &e)) {
			fprintf(stderr, "tern-bench kernels: %s LM head %dx%d: %s\n", tern_qh_name((tern_qh_type)o->heads[hi]),
				o->head_shape[0], o->head_shape[1], e.msg);
			goto done;
		}
	summary(b);
	/* The read_bw rows come last: the machine's figure is the best pass of
	 * the whole run (a busy moment at the start must not define it). */
	for (int ti = 0; ti < o->n_threads; ti++) {
		bench_row row;
		bench_row_init(&row, "kernels", "read_bw", o->threads[ti], b->bw_best[ti], "GB/s", NAN);
		bench_row_num(&row, "at_start", b->bw[ti]);
		bench_row_num(&row, "buffer_mib", o->bw_mib);
		bench_row_str(&row, "loads", bench_read_bw_isa());
		bench_emit(&b->out, &row);
		bench_table(&b->out,
			    "# read bandwidth, %d thread(s): %.2f GB/s best over the run (%.2f at the start)\n",
			    o->threads[ti], b->bw_best[ti], b->bw[ti]);
	}
	int skipped = 0;
	for (int ti = 0; ti < o->n_threads; ti++)
		for (int i = 0; i < b->n_peaks[ti]; i++) {
			const bench_peak *p = &b->peaks[ti][i];
			if (p->skipped) {
				skipped++;
				continue;
			}
			bench_row row;
			bench_row_init(&row, "kernels", "int8_peak", o->threads[ti], p->gops, "GOPS", NAN);
			bench_row_str(&row, "int8_unit", p->unit);
			bench_row_str(&row, "instr", p->instr);
			bench_emit(&b->out, &row);
			bench_table(&b->out, "# int8 peak %s, %d thread(s): %.0f GOPS best over the run\n", p->unit,
				    o->threads[ti], p->gops);
		}
	if (skipped)
		bench_table(&b->out, "# int8 peaks SKIPPED: %d (units this CPU has without a verified path here)\n",
			    skipped);
	bench_table(&b->out, "# load average at the end: %.2f (%d CPU(s))\n", load_average(), b->n_cpus);
	status = 0;
done:
	free(x);
	bench_big_free(b->bw_buf, b->bw_bytes);
	for (int ti = 0; ti < MAX_LIST; ti++)
		tern_pool_free(b->pools[ti]);
	free(b->res);
	free(b);
	return status;
}
