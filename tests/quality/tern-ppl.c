/* tern-ppl: perplexity of a text file under a model with the single-process
 * engine (coordinator/tern-perplexity.h), for the quality tests until
 * tern-run has --perplexity. Prints one line
 *   tokens N windows W nll X ppl Y
 * and, with --ids, the text's token ids (one line, comma-separated) first,
 * so a test can check the tokenizer against the training script's.
 *
 *   tern-ppl -m MODEL -f FILE [-c N_CTX] [-t THREADS] [-b BATCH] [--packing P] [--ids] */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern-coord.h"
#include "tern-engine.h"
#include "tern-head.h"
#include "tern-perplexity.h"
#include "tern-pool.h"
#include "tern-source.h"

typedef struct {
	const char *model, *file;
	int n_ctx, threads, batch, packing, ids, kv_type;
} ppl_opts;

/* Collects the scored ids in order (the text's tokens) for --ids. */
typedef struct {
	int32_t *ids;
	size_t n, cap;
	int oom;
} id_list;

static void collect(void *ctx, size_t index, int32_t id, double nll)
{
	id_list *l = ctx;
	(void)nll;
	if (l->oom || index != l->n)
		return;
	if (l->n == l->cap) {
		const size_t cap = l->cap ? l->cap * 2 : 1024;
		int32_t *ni = realloc(l->ids, cap * sizeof *ni);
		if (!ni) {
			l->oom = 1;
			return;
		}
		l->ids = ni;
		l->cap = cap;
	}
	l->ids[l->n++] = id;
}

static int run(const ppl_opts *o, tern_err *err)
{
	tern_source *src = NULL;
	tern_pool *pool = NULL;
	tern_layers layers = {0};
	tern_engine *eng = NULL;
	tern_head *head = NULL;
	tern_tokenizer *tok = NULL;
	id_list ids = {0};
	int rc;
	if ((rc = tern_source_open(&src, o->model, err)) < 0)
		goto done;
	const tern_hparams *hp = tern_source_hparams(src);
	const int n_ctx = o->n_ctx ? o->n_ctx : hp->n_ctx_train;
	int slot;
	if ((rc = tern_pool_create(o->threads, NULL, 0, &pool, err)) < 0 ||
	    (rc = tern_layers_from_source_mt(&layers, src, 0, hp->n_layer, (tern_packing)o->packing, 0, pool, err)) < 0)
		goto done;
	const tern_engine_config ec = {.n_slots = 1,
				       .n_ctx = n_ctx,
				       .max_rows = o->batch,
				       .isa = TERN_ISA_AUTO,
				       .pool = pool,
				       .kv_type = o->kv_type};
	if ((rc = tern_engine_create(&layers, &ec, &eng, err)) < 0 ||
	    (rc = tern_head_from_source(src, TERN_ISA_AUTO, &head, err)) < 0 ||
	    (rc = tern_coord_tokenizer_from_source(src, &tok, err)) < 0 ||
	    (rc = tern_kv_slot_alloc(tern_engine_kv(eng), &slot, err)) < 0)
		goto done;
	const tern_ppl_config pc = {n_ctx, o->batch, -1, slot, pool, o->ids ? collect : NULL, &ids};
	tern_ppl_result r;
	if ((rc = tern_perplexity_file(eng, head, tok, hp->n_embd, &pc, o->file, &r, err)) < 0)
		goto done;
	if (ids.oom) {
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory for the token ids");
		goto done;
	}
	for (size_t i = 0; i < ids.n; i++)
		printf("%s%d", i ? "," : "", (int)ids.ids[i]);
	if (ids.n)
		printf("\n");
	printf("tokens %lld windows %lld nll %.6f ppl %.4f\n", (long long)r.n_scored, (long long)r.n_windows, r.nll,
	       r.ppl);
done:
	free(ids.ids);
	tern_tokenizer_free(tok);
	tern_head_free(head);
	tern_engine_free(eng);
	tern_layers_free(&layers);
	tern_pool_free(pool);
	tern_source_close(src);
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option long_opts[] = {
		{"help", no_argument, NULL, 'h'},
		{"ids", no_argument, NULL, 'I'},
		{"packing", required_argument, NULL, 'P'},
		{"kv-type", required_argument, NULL, 'K'},
		{NULL, 0, NULL, 0},
	};
	ppl_opts o = {NULL, NULL, 0, 1, 32, TERN_PACK_TL2, 0, TERN_KV_TYPE_DEFAULT};
	tern_err perr;
	tern_err_clear(&perr);
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, ":hm:f:c:t:b:", long_opts, NULL)) != -1) {
		int rc = 0;
		switch (c) {
		case 'h':
			printf("usage: tern-ppl -m MODEL -f FILE [-c N] [-t N] [-b N] [--packing P] [--kv-type T] [--ids]\n");
			return 0;
		case 'I':
			o.ids = 1;
			break;
		case 'm':
			o.model = optarg;
			break;
		case 'f':
			o.file = optarg;
			break;
		case 'c':
			rc = tern_parse_int(optarg, 2, 1 << 20, "-c", &o.n_ctx, &perr);
			break;
		case 't':
			rc = tern_parse_int(optarg, 1, 1024, "-t", &o.threads, &perr);
			break;
		case 'b':
			rc = tern_parse_int(optarg, 1, 4096, "-b", &o.batch, &perr);
			break;
		case 'P':
			if ((o.packing = tern_packing_parse(optarg)) < 0)
				rc = TERN_ERR(&perr, TERN_EINVAL, "bad value '%s' for --packing", optarg);
			break;
		case 'K':
			rc = tern_kv_type_parse(optarg, "--kv-type", &o.kv_type, &perr);
			break;
		default:
			fprintf(stderr, "tern-ppl: usage: -m MODEL -f FILE [-c N] [-t N] [-b N] [--packing P] [--kv-type T] "
					"[--ids]\n");
			return tern_opt_fail("tern-ppl", c, argv);
		}
		if (rc < 0)
			return tern_opt_bad("tern-ppl", perr.msg);
	}
	if (optind < argc) {
		fprintf(stderr, "tern-ppl: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (!o.model || !o.file) {
		fprintf(stderr, "tern-ppl: need -m MODEL and -f FILE\n");
		return 2;
	}
	tern_err err = {0};
	if (run(&o, &err) < 0) {
		fprintf(stderr, "tern-ppl: %s\n", err.msg);
		return 1;
	}
	return 0;
}
