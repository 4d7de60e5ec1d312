/* tern-ppl: perplexity of a text file under a model with the single-process
 * engine (coordinator/tern-perplexity.h), for the quality tests until
 * tern-run has --perplexity. Prints one line
 *   tokens N windows W nll X ppl Y
 * and, with --ids, the text's token ids (one line, comma-separated) first,
 * so a test can check the tokenizer against the training script's.
 *
 *   tern-ppl -m MODEL -f FILE [-c N_CTX] [-t THREADS] [-b BATCH] [--packing P] [--ids] */
#include <errno.h>
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
	int n_ctx, threads, batch, packing, ids;
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
	const tern_engine_config ec = {1, n_ctx, o->batch, TERN_ISA_AUTO, pool, NULL};
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

static int parse_int(const char *s, int lo, int hi, int *out)
{
	char *end;
	errno = 0;
	const long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -1;
	*out = (int)v;
	return 0;
}

int main(int argc, char **argv)
{
	ppl_opts o = {NULL, NULL, 0, 1, 32, TERN_PACK_TL2, 0};
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		int bad = 0;
		if (!strcmp(a, "--ids")) {
			o.ids = 1;
			continue;
		}
		if (!v) {
			fprintf(stderr,
				"tern-ppl: %s needs a value (usage: -m MODEL -f FILE [-c N] [-t N] [-b N] "
				"[--packing P] [--ids])\n",
				a);
			return 2;
		}
		i++;
		if (!strcmp(a, "-m"))
			o.model = v;
		else if (!strcmp(a, "-f"))
			o.file = v;
		else if (!strcmp(a, "-c"))
			bad = parse_int(v, 2, 1 << 20, &o.n_ctx);
		else if (!strcmp(a, "-t"))
			bad = parse_int(v, 1, 1024, &o.threads);
		else if (!strcmp(a, "-b"))
			bad = parse_int(v, 1, 4096, &o.batch);
		else if (!strcmp(a, "--packing"))
			bad = (o.packing = tern_packing_parse(v)) < 0;
		else
			bad = 1;
		if (bad) {
			fprintf(stderr, "tern-ppl: bad option or value: %s %s\n", a, v);
			return 2;
		}
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
