/* partition-main.c: the tern-partition command line: cut a model into a plan
 * directory (or just print the plan with --dry-run), write synthetic models,
 * verify a plan. The only place in partition/ that talks to hwloc (--hwloc:
 * one stage per NUMA domain of this machine). */
#include <errno.h>
#include <getopt.h>
#include <hwloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "plan.pb-c.h"
#include "tern-float.h"
#include "tern-plan.h"
#include "tern-progress.h"
#include "tern-source.h"
#include "tern-synth.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage:\n"
		"  tern-partition MODEL (--stages N | --cluster HOSTS.yaml | --hwloc) -o PLAN_DIR [options]\n"
		"  tern-partition MODEL (--stages N | --cluster HOSTS.yaml | --hwloc) --dry-run [options]\n"
		"  tern-partition synth (PRESET | --dims K=V,...) [--layers N] [--seed S] -o FILE.gguf\n"
		"  tern-partition verify PLAN_DIR\n"
		"\n"
		"MODEL is a GGUF file or a Hugging Face checkpoint directory; for --dry-run also a\n"
		"preset name (%s).\n"
		"options:\n"
		"  --packing tl2|i2_s|tl1  weight layout of the stage shards (default tl2)\n"
		"  --group-rows N          rows per scale group when quantizing full-precision weights\n"
		"                          (default: one scale per tensor)\n"
		"  --seqs N                sequences to size the KV caches for (default 4)\n"
		"  --ctx N                 context per sequence (default min(4096, trained context))\n"
		"  --kv-type T             KV cache element type the stages are sized for: f16 (default), f32, bf16\n"
		"  --mem SIZE              with --stages: memory to split over the stages (default: this\n"
		"                          host's RAM), e.g. 16GiB\n"
		"  --zstd-level N          shard compression level 0..19 (default 1; 0 stores raw)\n"
		"  --lm-head q8|q4|file|f16  LM head the coordinator's shard stores: packed quantized as\n"
		"                          tern-run --lm-head q8|q4 packs it (default q8), or the head\n"
		"                          matrix as the model stores it (file; f16: the same, refused\n"
		"                          unless F16); token_embd is kept for the token lookup\n"
		"  --no-progress           never draw a progress bar\n"
		"synth: --dims takes n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx, ... and\n"
		"starts from PRESET (or 125m when none is given).\n",
		tern_hparams_preset_names());
}

#define PROG "tern-partition"

static void host_name(char *buf, size_t len)
{
	if (gethostname(buf, len) != 0 || !*buf)
		snprintf(buf, len, "localhost");
	buf[len - 1] = 0;
	/* keep only what tern_cluster_add_host accepts */
	for (char *p = buf; *p; p++)
		if (!(*p >= 'a' && *p <= 'z') && !(*p >= 'A' && *p <= 'Z') && !(*p >= '0' && *p <= '9') && *p != '.' &&
		    *p != '-' && *p != '_')
			*p = '-';
}

static int cluster_from_hwloc(tern_cluster *c, tern_err *err)
{
	memset(c, 0, sizeof *c);
	hwloc_topology_t topo;
	TERN_RETURN_IF(hwloc_topology_init(&topo) != 0, err, TERN_EIO, "hwloc: init failed");
	if (hwloc_topology_load(topo) != 0) {
		hwloc_topology_destroy(topo);
		return TERN_ERR(err, TERN_EIO, "hwloc: cannot load this machine's topology");
	}
	char name[64];
	host_name(name, sizeof name);
	int rc = tern_cluster_add_host(c, name, NULL, err);
	const int n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
	for (int i = 0; rc >= 0 && i < n; i++) {
		hwloc_obj_t node = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, (unsigned)i);
		int cores = hwloc_get_nbobjs_inside_cpuset_by_type(topo, node->cpuset, HWLOC_OBJ_CORE);
		if (cores < 1)
			cores = hwloc_get_nbobjs_inside_cpuset_by_type(topo, node->cpuset, HWLOC_OBJ_PU);
		uint64_t mem = node->attr ? node->attr->numanode.local_memory : 0;
		if (!mem) /* synthetic topologies carry no memory size: share the RAM */
			mem = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE) / (uint64_t)(n > 0 ? n : 1);
		rc = tern_cluster_add_domain(c, 0, (int)node->os_index, mem, cores > 0 ? cores : 1, err);
	}
	hwloc_topology_destroy(topo);
	if (rc >= 0 && c->n_domains == 0)
		rc = TERN_ERR(err, TERN_EIO, "hwloc: no NUMA domains found");
	if (rc < 0) {
		tern_cluster_free(c);
		return rc;
	}
	return 0;
}

static void synth_progress(void *ud, uint64_t done, uint64_t total)
{
	tern_progress *p = ud;
	if (done > p->done)
		tern_progress_add(p, done - p->done);
}

static int cmd_synth(int argc, char **argv)
{
	static const struct option long_opts[] = {
		{"dims", required_argument, NULL, 'd'},
		{"layers", required_argument, NULL, 'L'},
		{"seed", required_argument, NULL, 'S'},
		{"no-progress", no_argument, NULL, 'P'},
		{NULL, 0, NULL, 0},
	};
	const char *preset = NULL, *dims = NULL, *out = NULL;
	int layers = 0, progress = 1;
	uint64_t seed = 1;
	tern_err perr;
	tern_err_clear(&perr);
	/* argv[1] ("synth") stands in for the program name. */
	optind = 1;
	opterr = 0;
	int c;
	while ((c = getopt_long(argc - 1, argv + 1, ":o:", long_opts, NULL)) != -1) {
		int rc = 0;
		if (c == 'd')
			dims = optarg;
		else if (c == 'L')
			rc = tern_parse_int(optarg, 1, 1024, "--layers", &layers, &perr);
		else if (c == 'S')
			rc = tern_parse_uint64(optarg, "--seed", &seed, &perr);
		else if (c == 'o')
			out = optarg;
		else if (c == 'P')
			progress = 0;
		else
			return tern_opt_fail(PROG, c, argv + 1);
		if (rc < 0)
			return tern_opt_bad(PROG, perr.msg);
	}
	for (int i = optind + 1; i < argc; i++) {
		if (preset) {
			fprintf(stderr, PROG ": unexpected argument '%s'\n", argv[i]);
			usage(stderr);
			return 2;
		}
		preset = argv[i];
	}
	if (!out || (!preset && !dims)) {
		usage(stderr);
		return 2;
	}
	tern_err err = {0};
	tern_hparams hp;
	if (tern_hparams_preset(preset ? preset : "125m", &hp, &err) < 0 ||
	    (dims && tern_synth_override(&hp, dims, &err) < 0)) {
		fprintf(stderr, "tern-partition: %s\n", err.msg);
		return 1;
	}
	if (layers)
		hp.n_layer = layers;
	tern_progress pr;
	tern_progress_start(&pr, "synth", tern_synth_file_bytes(&hp, NULL), progress);
	tern_synth_opts so = {0};
	so.n_merges = -1;
	so.progress = synth_progress;
	so.progress_ud = &pr;
	const double t0 = tern_now_s();
	const int rc = tern_synth_write(out, &hp, seed, &so, &err);
	tern_progress_finish(&pr);
	if (rc < 0) {
		fprintf(stderr, "tern-partition: %s\n", err.msg);
		return 1;
	}
	printf("wrote %s: %d layers, n_embd %d, %.2f GB in %.1f s\n", out, hp.n_layer, hp.n_embd,
	       (double)tern_synth_file_bytes(&hp, NULL) / 1e9, tern_now_s() - t0);
	return 0;
}

static int cmd_verify(int argc, char **argv)
{
	static const struct option long_opts[] = {
		{"no-progress", no_argument, NULL, 'P'},
		{NULL, 0, NULL, 0},
	};
	int progress = 1;
	const char *dir = NULL;
	optind = 1;
	opterr = 0;
	int c;
	while ((c = getopt_long(argc - 1, argv + 1, ":", long_opts, NULL)) != -1) {
		if (c != 'P')
			return tern_opt_fail(PROG, c, argv + 1);
		progress = 0;
	}
	if (optind + 2 != argc) {
		usage(stderr);
		return 2;
	}
	dir = argv[optind + 1];
	tern_err err = {0};
	if (tern_plan_verify(dir, progress, &err) < 0) {
		fprintf(stderr, "tern-partition: verify failed: %s\n", err.msg);
		return 1;
	}
	tern_plan_manifest *p;
	if (tern_plan_manifest_read(&p, dir, &err) == 0) {
		printf("%s: plan %s OK (%zu stages, %zu shards + manifest)\n", dir, p->plan_id, p->n_stages, p->n_files);
		tern_plan_manifest_free(p);
	}
	return 0;
}

/* hparams and the embedding type, from a model file or a preset name. */
static int model_desc(const char *model, int allow_preset, tern_plan_model *pm, tern_err *err)
{
	memset(pm, 0, sizeof *pm);
	struct stat st;
	if (stat(model, &st) != 0 && allow_preset) {
		TERN_RETURN_IF(tern_hparams_preset(model, &pm->hp, NULL) < 0, err, TERN_EINVAL,
			       "%s: no such file, and not a preset name (%s)", model, tern_hparams_preset_names());
		pm->embd_type = TERN_DTYPE_F16;
		return 0;
	}
	tern_source *src;
	TERN_FORWARD_IF_ERROR(tern_source_open(&src, model, err));
	pm->hp = *tern_source_hparams(src);
	tern_dense_view v;
	int rc = tern_source_dense(src, TERN_DENSE_TOKEN_EMBD, &v, err);
	if (rc == 0)
		pm->embd_type = v.type;
	tern_source_close(src);
	return rc;
}

enum {
	OPT_STAGES = 256,
	OPT_CLUSTER,
	OPT_HWLOC,
	OPT_PACKING,
	OPT_GROUP_ROWS,
	OPT_SEQS,
	OPT_CTX,
	OPT_KV_TYPE,
	OPT_MEM,
	OPT_ZSTD_LEVEL,
	OPT_DRY_RUN,
	OPT_NO_PROGRESS,
	OPT_LM_HEAD,
};

int main(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	if (!strcmp(argv[1], "synth"))
		return cmd_synth(argc, argv);
	if (!strcmp(argv[1], "verify"))
		return cmd_verify(argc, argv);

	const char *model = NULL, *cluster_path = NULL, *out = NULL;
	int stages = 0, hw = 0, dry = 0, progress = 1, zlevel = 1;
	int group_rows = 0, seqs = 0, ctx = 0, kv_type = TERN_KV_TYPE_DEFAULT;
	int packing = TERN_PACK_TL2;
	int lm_head = TERN_PLAN_HEAD_DEFAULT, lm_head_f16 = 0;
	uint64_t mem = 0;
	static const struct option long_opts[] = {
		{"stages", required_argument, NULL, OPT_STAGES},
		{"cluster", required_argument, NULL, OPT_CLUSTER},
		{"hwloc", no_argument, NULL, OPT_HWLOC},
		{"packing", required_argument, NULL, OPT_PACKING},
		{"group-rows", required_argument, NULL, OPT_GROUP_ROWS},
		{"seqs", required_argument, NULL, OPT_SEQS},
		{"ctx", required_argument, NULL, OPT_CTX},
		{"kv-type", required_argument, NULL, OPT_KV_TYPE},
		{"mem", required_argument, NULL, OPT_MEM},
		{"zstd-level", required_argument, NULL, OPT_ZSTD_LEVEL},
		{"dry-run", no_argument, NULL, OPT_DRY_RUN},
		{"no-progress", no_argument, NULL, OPT_NO_PROGRESS},
		{"lm-head", required_argument, NULL, OPT_LM_HEAD},
		{NULL, 0, NULL, 0},
	};
	tern_err perr;
	tern_err_clear(&perr);
	opterr = 0;
	int oc;
	while ((oc = getopt_long(argc, argv, ":o:", long_opts, NULL)) != -1) {
		const char *v = optarg;
		int rc = 0;
		switch (oc) {
		case OPT_STAGES:
			rc = tern_parse_int(v, 1, 4096, "--stages", &stages, &perr);
			break;
		case OPT_CLUSTER:
			cluster_path = v;
			break;
		case OPT_HWLOC:
			hw = 1;
			break;
		case 'o':
			out = v;
			break;
		case OPT_PACKING:
			packing = tern_packing_parse(v);
			if (packing < 0 || packing >= TERN_PACK_COUNT)
				rc = TERN_ERR(&perr, TERN_EINVAL, "bad value '%s' for --packing: expected tl2, i2_s or tl1", v);
			break;
		case OPT_GROUP_ROWS:
			rc = tern_parse_int(v, 1, 1 << 20, "--group-rows", &group_rows, &perr);
			break;
		case OPT_SEQS:
			rc = tern_parse_int(v, 1, 1 << 16, "--seqs", &seqs, &perr);
			break;
		case OPT_CTX:
			rc = tern_parse_int(v, 1, 1 << 22, "--ctx", &ctx, &perr);
			break;
		case OPT_KV_TYPE:
			rc = tern_kv_type_parse(v, "--kv-type", &kv_type, &perr);
			break;
		case OPT_MEM:
			rc = tern_parse_size(v, 1, UINT64_MAX, "--mem", &mem, &perr);
			break;
		case OPT_ZSTD_LEVEL:
			rc = tern_parse_int(v, 0, 19, "--zstd-level", &zlevel, &perr);
			break;
		case OPT_DRY_RUN:
			dry = 1;
			break;
		case OPT_NO_PROGRESS:
			progress = 0;
			break;
		case OPT_LM_HEAD: {
			const int q = tern_qh_parse(v);
			lm_head_f16 = !strcmp(v, "f16");
			if (lm_head_f16 || !strcmp(v, "file"))
				lm_head = TERN_PLAN_HEAD_STORED;
			else if (q >= 0)
				lm_head = q == TERN_QH_Q4 ? TERN_PLAN_HEAD_Q4 : TERN_PLAN_HEAD_Q8;
			else
				rc = TERN_ERR(&perr, TERN_EINVAL, "bad value '%s' for --lm-head: expected file, f16, q8 or q4",
					      v);
			break;
		}
		default:
			return tern_opt_fail(PROG, oc, argv);
		}
		if (rc < 0)
			return tern_opt_bad(PROG, perr.msg);
	}
	for (int i = optind; i < argc; i++) {
		if (model) {
			fprintf(stderr, PROG ": unexpected argument '%s'\n", argv[i]);
			usage(stderr);
			return 2;
		}
		model = argv[i];
	}
	if (!model || (!!stages + !!cluster_path + hw) != 1 || (!dry && !out)) {
		fprintf(stderr, "tern-partition: need MODEL, exactly one of --stages/--cluster/--hwloc, and -o (or "
				"--dry-run)\n");
		usage(stderr);
		return 2;
	}

	tern_err err = {0};
	tern_plan_model pm;
	tern_cluster c;
	memset(&c, 0, sizeof c);
	int rc = model_desc(model, dry, &pm, &err);
	if (rc == 0) {
		if (cluster_path) {
			rc = tern_cluster_load_yaml(&c, cluster_path, &err);
		} else if (hw) {
			rc = cluster_from_hwloc(&c, &err);
		} else {
			char name[64];
			host_name(name, sizeof name);
			if (!mem)
				mem = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
			rc = tern_cluster_uniform(&c, name, stages, mem, (int)sysconf(_SC_NPROCESSORS_ONLN), &err);
		}
	}
	if (rc < 0) {
		fprintf(stderr, "tern-partition: %s\n", err.msg);
		tern_cluster_free(&c);
		return 1;
	}
	tern_plan_opts o;
	tern_plan_opts_default(&o, &pm.hp);
	o.packing = (tern_packing)packing;
	o.group_rows = group_rows;
	if (seqs)
		o.n_seqs = seqs;
	if (ctx)
		o.n_ctx = ctx;
	o.kv_type = kv_type;
	o.lm_head = pm.lm_head = lm_head;
	o.lm_head_f16 = lm_head_f16;
	if (dry) {
		tern_plan_layout lay;
		rc = tern_plan_compute(&pm, &o, &c, &lay, NULL, &err);
		if (rc == 0) {
			tern_plan_print_table(stdout, &pm, &o, &c, &lay);
			tern_plan_layout_free(&lay);
		} else {
			fprintf(stderr, "tern-partition: %s\n", err.msg);
		}
		tern_cluster_free(&c);
		return rc < 0 ? 1 : 0;
	}
	const double t0 = tern_now_s();
	rc = tern_plan_write(model, &o, &c, out, zlevel, progress, stdout, &err);
	if (rc < 0) {
		fprintf(stderr, "tern-partition: %s\n", err.msg);
		tern_cluster_free(&c);
		return 1;
	}
	const double dt = tern_now_s() - t0;
	tern_plan_manifest *p;
	if (tern_plan_manifest_read(&p, out, &err) == 0) {
		uint64_t total = 0;
		for (size_t i = 0; i < p->n_files; i++)
			total += p->files[i]->size;
		printf("wrote %s: plan %s, %zu shards (%.1f MiB) + manifest, in %.1f s\n", out, p->plan_id, p->n_files,
		       (double)total / 1048576.0, dt);
		tern_plan_manifest_free(p);
	}
	tern_cluster_free(&c);
	return 0;
}
