/* test_loader.c: the engine's plain-argument loader (node/loader.c): layers
 * from a plan directory are the very weights packed from the model file
 * (across shard boundaries too), packing and range errors, and a damaged
 * shard caught once, by its whole-file checksum, naming the file, while
 * layers held by the other, intact shard still load. */
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tern-engine.h"
#include "tern-plan.h"
#include "tern-synth.h"
#include "tern-test.h"

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static char root[64];
static char gguf[128], plan[128];
static tern_hparams hp;

static void rm_root(void)
{
	nftw(root, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* A 4-layer model and a 2-stage TL2 plan of it (stages hold layers 0-1, 2-3). */
static int make_model_and_plan(void)
{
	if (root[0])
		return 0;
	snprintf(root, sizeof root, "/tmp/tern-test-loader-XXXXXX");
	if (!mkdtemp(root))
		return -1;
	atexit(rm_root);
	snprintf(gguf, sizeof gguf, "%s/m.gguf", root);
	snprintf(plan, sizeof plan, "%s/plan", root);
	tern_err err = {0};
	if (tern_hparams_preset("125m", &hp, &err) < 0 ||
	    tern_synth_override(&hp, "n_layer=4,n_embd=128,n_head=2,n_head_kv=1,n_ff=256,n_vocab=300,bos=256,eos=257,eot=258",
				&err) < 0 ||
	    tern_synth_write(gguf, &hp, 7, NULL, &err) < 0) {
		fprintf(stderr, "  synth: %s\n", err.msg);
		return -1;
	}
	tern_cluster c;
	tern_plan_opts o;
	tern_plan_opts_default(&o, &hp);
	o.packing = TERN_PACK_TL2;
	if (tern_cluster_uniform(&c, "box", 2, 8ull << 30, 2, &err) < 0)
		return -1;
	const int rc = tern_plan_write(gguf, &o, &c, plan, 3, 0, NULL, &err);
	tern_cluster_free(&c);
	if (rc < 0)
		fprintf(stderr, "  plan: %s\n", err.msg);
	return rc;
}

static int same_layer(const tern_layer_weights *a, const tern_layer_weights *b, const tern_hparams *h)
{
	for (int p = 0; p < TERN_PROJ_COUNT; p++) {
		const tern_matrix *x = &a->proj[p], *y = &b->proj[p];
		if (x->packing != y->packing || x->m != y->m || x->k != y->k || x->n_groups != y->n_groups ||
		    x->data_bytes != y->data_bytes || memcmp(x->data, y->data, x->data_bytes) ||
		    memcmp(x->scales, y->scales, (size_t)x->n_groups * sizeof(float)))
			return 0;
	}
	for (int q = 0; q < TERN_LAYER_NORMS; q++)
		if (!a->norm[q] != !b->norm[q] ||
		    (a->norm[q] && memcmp(a->norm[q], b->norm[q], (size_t)tern_norm_len(h, (tern_norm_kind)q) * sizeof(float))))
			return 0;
	return 1;
}

static void test_plan_equals_model(void)
{
	TT_REQUIRE(make_model_and_plan() == 0);
	tern_err err = {0};
	tern_layers a, b, c;
	TT_REQUIRE(tern_layers_load(&a, gguf, 0, 4, TERN_PACK_TL2, NULL, &err) == 0);
	TT_REQUIRE(tern_layers_load(&b, plan, 0, 4, TERN_LAYERS_PACKING_AS_STORED, NULL, &err) == 0);
	TT_EQ_INT(b.first, 0);
	TT_EQ_INT(b.n, 4);
	TT_EQ_INT(b.packing, TERN_PACK_TL2);
	TT_EQ_INT(b.hp.n_embd, hp.n_embd);
	TT_EQ_INT(tern_layers_bytes(&a), tern_layers_bytes(&b));
	for (int l = 0; l < 4; l++)
		TT_CHECKF(same_layer(&a.l[l], &b.l[l], &hp), "layer %d differs", l);
	/* a range across the two shards, asking for the plan's packing by name */
	TT_REQUIRE(tern_layers_load(&c, plan, 1, 2, TERN_PACK_TL2, NULL, &err) == 0);
	TT_EQ_INT(c.first, 1);
	TT_CHECK(same_layer(&c.l[0], &a.l[1], &hp) && same_layer(&c.l[1], &a.l[2], &hp));
	/* from a plan every matrix lies in one region per shard read (two here),
	 * owned by the layers, not by the matrices; a model file has none */
	TT_EQ_INT(c.n_arena, 2);
	TT_EQ_INT(a.n_arena, 0);
	int inside = 0;
	for (int l = 0; l < c.n; l++)
		for (int p = 0; p < TERN_PROJ_COUNT; p++) {
			const tern_matrix *x = &c.l[l].proj[p];
			for (int r = 0; r < c.n_arena; r++) {
				const char *lo = c.arena[r].base, *hi = lo + c.arena[r].used;
				inside += !x->owns_data && (const char *)x->data >= lo &&
					  (const char *)x->data + x->data_bytes <= hi && (const char *)x->scales >= lo &&
					  (const char *)(x->scales + x->n_groups) <= hi;
			}
		}
	TT_EQ_INT(inside, c.n * TERN_PROJ_COUNT);
	tern_layers_free(&c);
	/* the model file's loader with a pool gives the same weights */
	tern_pool *pool = NULL;
	TT_REQUIRE(tern_pool_create(2, NULL, 0, &pool, &err) == 0);
	TT_REQUIRE(tern_layers_load(&c, gguf, 2, 2, TERN_PACK_TL2, pool, &err) == 0);
	TT_CHECK(same_layer(&c.l[0], &a.l[2], &hp) && same_layer(&c.l[1], &a.l[3], &hp));
	tern_layers_free(&c);
	tern_pool_free(pool);
	tern_layers_free(&a);
	tern_layers_free(&b);
	TT_CHECK(b.l == NULL && b.n == 0);
}

static void test_errors(void)
{
	TT_REQUIRE(make_model_and_plan() == 0);
	tern_err err = {0};
	tern_layers l;
	TT_EQ_INT(tern_layers_load(&l, plan, 0, 4, TERN_PACK_I2S, NULL, &err), TERN_EINVAL);
	TT_CHECKF(strstr(err.msg, "packed as tl2") != NULL, "%s", err.msg);
	TT_EQ_INT(tern_layers_load(&l, plan, 3, 2, TERN_LAYERS_PACKING_AS_STORED, NULL, &err), TERN_EINVAL);
	TT_CHECKF(strstr(err.msg, "layers 3..4 asked for, the model has 4") != NULL, "%s", err.msg);
	TT_EQ_INT(tern_layers_load(&l, gguf, 0, 5, TERN_PACK_TL2, NULL, &err), TERN_EINVAL);
	TT_CHECKF(strstr(err.msg, "m.gguf: layers 0..4 asked for") != NULL, "%s", err.msg);
	TT_EQ_INT(tern_layers_load(&l, gguf, 0, 4, TERN_LAYERS_PACKING_AS_STORED, NULL, &err), TERN_EINVAL);
	TT_CHECK(tern_layers_load(&l, "/nonexistent/m.gguf", 0, 1, TERN_PACK_TL2, NULL, &err) < 0);
	TT_CHECKF(strstr(err.msg, "/nonexistent/m.gguf") != NULL, "%s", err.msg);
	TT_CHECK(l.l == NULL && l.n == 0);
}

static void test_damaged_shard(void)
{
	TT_REQUIRE(make_model_and_plan() == 0);
	char s2[200];
	snprintf(s2, sizeof s2, "%s/stage-002.shard", plan);
	struct stat st;
	TT_REQUIRE(stat(s2, &st) == 0);
	FILE *f = fopen(s2, "r+b");
	TT_REQUIRE(f);
	fseek(f, (long)st.st_size / 2, SEEK_SET);
	const int ch = fgetc(f);
	fseek(f, (long)st.st_size / 2, SEEK_SET);
	fputc(ch ^ 0x40, f);
	fclose(f);
	tern_err err = {0};
	tern_layers l;
	TT_EQ_INT(tern_layers_load(&l, plan, 0, 4, TERN_LAYERS_PACKING_AS_STORED, NULL, &err), TERN_ECHECKSUM);
	TT_CHECKF(strstr(err.msg, "stage-002.shard") && strstr(err.msg, "checksum mismatch"), "%s", err.msg);
	TT_CHECK(l.l == NULL);
	/* stage 1's layers do not touch the damaged shard */
	TT_CHECKF(tern_layers_load(&l, plan, 0, 2, TERN_LAYERS_PACKING_AS_STORED, NULL, &err) == 0, "%s", err.msg);
	tern_layers_free(&l);
	/* a missing shard names it */
	TT_REQUIRE(remove(s2) == 0);
	TT_CHECK(tern_layers_load(&l, plan, 2, 2, TERN_LAYERS_PACKING_AS_STORED, NULL, &err) < 0);
	TT_CHECKF(strstr(err.msg, "stage-002.shard") != NULL, "%s", err.msg);
	/* the plan is now broken: rebuild it for any later case */
	rm_root();
	root[0] = '\0';
}

/* "%h" in the path is this host's name (per-host copies of a plan). */
static void test_host_path(void)
{
	TT_REQUIRE(make_model_and_plan() == 0);
	char host[256] = "", dir[400], link[420], pattern[400];
	gethostname(host, sizeof host - 1);
	snprintf(dir, sizeof dir, "%s/%s", root, host);
	TT_REQUIRE(mkdir(dir, 0755) == 0);
	snprintf(link, sizeof link, "%s/plan", dir);
	TT_REQUIRE(symlink(plan, link) == 0);
	snprintf(pattern, sizeof pattern, "%s/%%h/plan", root);
	tern_err err = {0};
	tern_layers l;
	TT_CHECKF(tern_layers_load(&l, pattern, 0, 4, TERN_LAYERS_PACKING_AS_STORED, NULL, &err) == 0, "%s", err.msg);
	tern_layers_free(&l);
}

TT_MAIN(TT_CASE(test_plan_equals_model), TT_CASE(test_errors), TT_CASE(test_host_path), TT_CASE(test_damaged_shard))
