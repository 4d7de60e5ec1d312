/* test_plan.c: the planner (balance, optimality against brute force, memory
 * refusal with the exact shortfall), the hosts file parser (good files and
 * errors with line numbers), a dry-run 100B plan over a multi-host cluster,
 * and plan round trips: synthetic GGUF -> plan directory -> shards loaded
 * -> unpacked weights identical to the generator's ternary values, scales
 * and norms carried through (also per-row-block scales from a
 * full-precision source), and damaged files named by verify and load. */
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "plan.pb-c.h"
#include "tern-float.h"
#include "tern-gguf.h"
#include "tern-plan.h"
#include "tern-shard.h"
#include "tern-source.h"
#include "tern-synth.h"
#include "tern-test.h"
#include "test-util.h"

/* ---- helpers --------------------------------------------------------------- */

/* A model whose cost the tests can reason about: small vocabulary, so the
 * coordinator's head is cheap next to a layer. */
static tern_plan_model small_model(int layers)
{
	tern_plan_model m;
	memset(&m, 0, sizeof m);
	TT_CHECK(tern_hparams_preset("125m", &m.hp, NULL) == 0);
	m.hp.n_layer = layers;
	m.hp.n_vocab = 512;
	m.embd_type = TERN_DTYPE_F16;
	return m;
}

static void cluster_mem(tern_cluster *c, int n, const uint64_t *mem)
{
	memset(c, 0, sizeof *c);
	TT_CHECK(tern_cluster_add_host(c, "h0", NULL, NULL) == 0);
	for (int i = 0; i < n; i++)
		TT_CHECK(tern_cluster_add_domain(c, 0, i, mem[i], 4, NULL) == i);
}

/* ---- planner --------------------------------------------------------------- */

static void test_balance_even(void)
{
	/* 30 equal layers on 3 stages with a head cheaper than one layer: the
	 * only optimum is 10/10/10 (9/10/11 puts 11 layers somewhere). */
	tern_plan_model m = small_model(30);
	tern_plan_opts o;
	tern_plan_opts_default(&o, &m.hp);
	TT_REQUIRE(tern_plan_coord_token_bytes(&m) < tern_plan_layer_token_bytes(&m.hp, &o));
	tern_cluster c;
	const uint64_t big[3] = {1ull << 40, 1ull << 40, 1ull << 40};
	cluster_mem(&c, 3, big);
	tern_plan_layout l;
	tern_err err = {0};
	TT_REQUIRE(tern_plan_compute(&m, &o, &c, &l, NULL, &err) == 0);
	TT_EQ_INT(l.n_stages, 3);
	for (int s = 0; s < 3; s++) {
		TT_EQ_INT(l.stages[s].first_layer, 10 * s);
		TT_EQ_INT(l.stages[s].last_layer, 10 * s + 9);
		TT_EQ_INT(l.stages[s].index, s + 1);
	}
	double share = l.coord_share;
	for (int s = 0; s < 3; s++)
		share += l.stages[s].token_share;
	TT_CHECK(fabs(share - 1.0) < 1e-9);
	TT_EQ_INT(l.bottleneck_bytes, l.stages[0].token_bytes + l.coord_token_bytes);
	tern_plan_layout_free(&l);
	tern_cluster_free(&c);
}

/* Brute force over every composition of L layers into S non-empty groups. */
static void brute(const tern_plan_model *m, const tern_plan_opts *o, const tern_cluster *c, int L, int S, int s,
		  int start, uint64_t cur_max, int64_t cur_over, uint64_t *best, int64_t *best_over)
{
	const uint64_t lt = tern_plan_layer_token_bytes(&m->hp, o);
	const uint64_t lm = tern_plan_layer_weight_bytes(&m->hp, o) + tern_plan_layer_kv_bytes(&m->hp, o);
	const uint64_t work = tern_plan_stage_work_bytes(&m->hp, o);
	const uint64_t cmem = tern_plan_coord_weight_bytes(m) + tern_plan_coord_work_bytes(m, o);
	if (s == S) {
		if (start != L)
			return;
		if (cur_over <= 0 && cur_max < *best)
			*best = cur_max;
		if (cur_over < *best_over)
			*best_over = cur_over;
		return;
	}
	for (int end = start + 1; end <= L - (S - s - 1); end++) {
		const int n = end - start;
		uint64_t cost = lt * (uint64_t)n, need = lm * (uint64_t)n + work;
		if (s == c->coord_domain) {
			cost += tern_plan_coord_token_bytes(m);
			need += cmem;
		}
		const int64_t over = (int64_t)need - (int64_t)c->domains[s].mem_bytes;
		brute(m, o, c, L, S, s + 1, end, cost > cur_max ? cost : cur_max, over > cur_over ? over : cur_over, best,
		      best_over);
	}
}

static void test_optimal_vs_brute(void)
{
	/* heterogeneous memory so that memory, not just balance, shapes the plan */
	tern_plan_model m = small_model(12);
	m.hp.n_vocab = 32000; /* a head worth several layers */
	tern_plan_opts o;
	tern_plan_opts_default(&o, &m.hp);
	o.n_ctx = 1024;
	const uint64_t lm = tern_plan_layer_weight_bytes(&m.hp, &o) + tern_plan_layer_kv_bytes(&m.hp, &o);
	const uint64_t work = tern_plan_stage_work_bytes(&m.hp, &o);
	for (int S = 1; S <= 5; S++) {
		for (int variant = 0; variant < 3; variant++) {
			uint64_t mem[5];
			for (int i = 0; i < S; i++)
				mem[i] = work + lm * (uint64_t)(variant == 0 ? 12 : 2 + (i * 7 + variant) % 5) +
					 (i == 0 ? tern_plan_coord_weight_bytes(&m) + tern_plan_coord_work_bytes(&m, &o) : 0);
			tern_cluster c;
			cluster_mem(&c, S, mem);
			uint64_t best = UINT64_MAX;
			int64_t best_over = INT64_MAX;
			brute(&m, &o, &c, 12, S, 0, 0, 0, INT64_MIN, &best, &best_over);
			tern_plan_layout l;
			uint64_t shortfall = 7;
			tern_err err = {0};
			const int rc = tern_plan_compute(&m, &o, &c, &l, &shortfall, &err);
			if (best == UINT64_MAX) {
				TT_CHECKF(rc == TERN_ERANGE, "S=%d variant %d should not fit", S, variant);
				TT_EQ_INT(shortfall, best_over);
			} else {
				TT_CHECKF(rc == 0, "S=%d variant %d: %s", S, variant, err.msg);
				if (rc == 0) {
					TT_EQ_INT(l.bottleneck_bytes, best);
					int next = 0;
					for (int s = 0; s < S; s++) {
						TT_EQ_INT(l.stages[s].first_layer, next);
						TT_CHECK(l.stages[s].last_layer >= l.stages[s].first_layer);
						TT_CHECK(l.stages[s].mem_need <= mem[s]);
						next = l.stages[s].last_layer + 1;
					}
					TT_EQ_INT(next, 12);
				}
				tern_plan_layout_free(&l);
			}
			tern_cluster_free(&c);
		}
	}
}

static void test_memory_refusal_exact(void)
{
	tern_plan_model m = small_model(8);
	tern_plan_opts o;
	tern_plan_opts_default(&o, &m.hp);
	const uint64_t need = 8 * (tern_plan_layer_weight_bytes(&m.hp, &o) + tern_plan_layer_kv_bytes(&m.hp, &o)) +
			      tern_plan_stage_work_bytes(&m.hp, &o) + tern_plan_coord_weight_bytes(&m) +
			      tern_plan_coord_work_bytes(&m, &o);
	tern_cluster c;
	uint64_t mem = need - 12345;
	cluster_mem(&c, 1, &mem);
	tern_plan_layout l;
	uint64_t shortfall = 0;
	tern_err err = {0};
	TT_EQ_INT(tern_plan_compute(&m, &o, &c, &l, &shortfall, &err), TERN_ERANGE);
	TT_EQ_INT(shortfall, 12345);
	TT_CHECKF(strstr(err.msg, "short by 12345 bytes") != NULL, "%s", err.msg);
	TT_CHECK(strchr(err.msg, '\n') == NULL);
	tern_cluster_free(&c);
	/* exactly enough fits */
	mem = need;
	cluster_mem(&c, 1, &mem);
	TT_EQ_INT(tern_plan_compute(&m, &o, &c, &l, &shortfall, &err), 0);
	TT_EQ_INT(l.stages[0].mem_need, need);
	tern_plan_layout_free(&l);
	tern_cluster_free(&c);
	/* two stages: 8 layers, the coordinator on stage 1. With memory for 3
	 * layers per stage (plus the coordinator's part on stage 1) the best
	 * split 4/4 is one layer short on each side. */
	const uint64_t lm = tern_plan_layer_weight_bytes(&m.hp, &o) + tern_plan_layer_kv_bytes(&m.hp, &o);
	const uint64_t work = tern_plan_stage_work_bytes(&m.hp, &o);
	const uint64_t cm = tern_plan_coord_weight_bytes(&m) + tern_plan_coord_work_bytes(&m, &o);
	const uint64_t two[2] = {3 * lm + work + cm, 3 * lm + work};
	cluster_mem(&c, 2, two);
	TT_EQ_INT(tern_plan_compute(&m, &o, &c, &l, &shortfall, &err), TERN_ERANGE);
	TT_EQ_INT(shortfall, lm);
	tern_cluster_free(&c);
	/* more stages than layers */
	const uint64_t nine[9] = {1ull << 40, 1ull << 40, 1ull << 40, 1ull << 40, 1ull << 40,
				  1ull << 40, 1ull << 40, 1ull << 40, 1ull << 40};
	cluster_mem(&c, 9, nine);
	TT_EQ_INT(tern_plan_compute(&m, &o, &c, &l, &shortfall, &err), TERN_EINVAL);
	tern_cluster_free(&c);
}

/* ---- hosts file ------------------------------------------------------------- */

static const char hosts4[] = "# four hosts, two domains each\n"
			     "hosts:\n"
			     "  - name: node-a\n"
			     "    address: 10.0.0.1\n"
			     "    domains:\n"
			     "      - numa: 0\n"
			     "        memory: 64GiB\n"
			     "        cores: 16\n"
			     "      - numa: 1\n"
			     "        memory: 64GiB   # trailing comment\n"
			     "        cores: 16\n"
			     "  - name: \"node-b\"\n"
			     "    domains:\n"
			     "    - {numa: 0, memory: 64GiB, cores: 16}\n"
			     "    - {numa: 1, memory: 68719476736, cores: 16}\n"
			     "  - name: node-c\n"
			     "    coordinator: true\n"
			     "    domains:\n"
			     "      - {memory: 64G, cores: 16}\n"
			     "      - {memory: 65536MiB, cores: 16}\n"
			     "  - name: node-d\n"
			     "    address: 'node-d.example'\n"
			     "    domains:\n"
			     "      - {numa: 0, memory: 64GiB, cores: 16}\n"
			     "      - {numa: 1, memory: 64GiB, cores: 16}\n";

static void test_hosts_parse(void)
{
	tern_cluster c;
	tern_err err = {0};
	TT_REQUIRE(tern_cluster_parse_yaml(&c, hosts4, strlen(hosts4), "hosts.yaml", &err) == 0);
	TT_EQ_INT(c.n_hosts, 4);
	TT_EQ_INT(c.n_domains, 8);
	TT_CHECK(strcmp(c.hosts[0].address, "10.0.0.1") == 0);
	TT_CHECK(strcmp(c.hosts[1].name, "node-b") == 0);
	TT_CHECK(strcmp(c.hosts[1].address, "node-b") == 0);
	TT_CHECK(strcmp(c.hosts[3].address, "node-d.example") == 0);
	for (int i = 0; i < 8; i++) {
		TT_EQ_INT(c.domains[i].host, i / 2);
		TT_EQ_INT(c.domains[i].numa, i % 2);
		TT_EQ_INT(c.domains[i].mem_bytes, 64ull << 30);
		TT_EQ_INT(c.domains[i].cores, 16);
	}
	TT_EQ_INT(c.coord_domain, 4);
	TT_EQ_INT(c.domains[4].line, 19);
	tern_cluster_free(&c);
	/* the shipped example parses */
	const char *src = getenv("TERN_SOURCE_DIR");
	if (src) {
		char p[512];
		snprintf(p, sizeof p, "%s/deploy/hosts.example.yaml", src);
		TT_CHECKF(tern_cluster_load_yaml(&c, p, &err) == 0, "%s", err.msg);
		TT_EQ_INT(c.n_domains, 8);
		tern_cluster_free(&c);
	}
}

static void test_hosts_errors(void)
{
	static const struct {
		const char *text;
		const char *want; /* substring of the message, starting with the line */
	} cases[] = {
		{"hosts:\n  - name: a\n\t  domains:\n", "hosts.yaml:3: tab"},
		{"hosts:\n  - name: a\n    colour: red\n    domains:\n      - {memory: 1G, cores: 1}\n",
		 "hosts.yaml:3: unknown key 'colour'"},
		{"hosts:\n  - name: a\n    domains:\n      - numa: 0\n        cores: 2\n", "hosts.yaml:4: domain without 'memory'"},
		{"hosts:\n  - name: a\n    domains:\n      - {memory: 12 parsecs, cores: 1}\n", "hosts.yaml:4: memory"},
		{"hosts:\n  - name: a\n    domains:\n      - {memory: 1G, cores: 1}\n  - name: a\n    domains:\n      - "
		 "{memory: 1G, cores: 1}\n",
		 "hosts.yaml:5: host 'a' listed twice"},
		{"hosts: [a, b]\n", "hosts.yaml:1: unsupported"},
		{"hosts:\n  - name: a\n    name: b\n", "hosts.yaml:3: duplicate key 'name'"},
		{"", "empty hosts file"},
		{"# nothing\n\n", "empty hosts file"},
		{"hosts:\n  - name: a\n    domains:\n      - {memory: 1G, cores: 0}\n", "hosts.yaml:4: cores"},
		{"hosts:\n  - name: a\n    coordinator: true\n    domains:\n      - {memory: 1G, cores: 1}\n  - name: b\n"
		 "    coordinator: true\n    domains:\n      - {memory: 1G, cores: 1}\n",
		 "hosts.yaml:7: coordinator already on the host of line 3"},
		{"hosts:\n  - name: a\n    domains:\n      - {memory: 1G, cores: 1\n", "hosts.yaml:4: unterminated flow map"},
		{"hosts:\n  - name: a\n    domains: 3\n", "hosts.yaml:3: 'domains' must be a non-empty list"},
		{"hosts:\n  - name: a\n", "hosts.yaml:2: host 'a' has no 'domains'"},
		{"hosts:\n  - name: a b\n    domains:\n      - {memory: 1G, cores: 1}\n", "hosts.yaml:2: bad host name"},
		{"hosts:\n  - name: a\n    domains:\n      - {memory: 99999999999T, cores: 1}\n", "hosts.yaml:4: memory"},
		{"hosts:\n  - name: a\n      domains:\n", "hosts.yaml:3: bad indentation"},
		{"nodes:\n  - name: a\n", "hosts.yaml:1: unknown key 'nodes'"},
		{"hosts:\n  - name: \"a\n", "hosts.yaml:2: unterminated quoted string"},
		{"hosts:\n  - name: a\n    domains:\n      - {numa: 0, memory: 1G, cores: 1}\n      - {numa: 0, memory: 1G, "
		 "cores: 1}\n",
		 "hosts.yaml:5: NUMA domain 0 of host a listed twice"},
		{"hosts:\n  - name: a\n    domains:\n      - &d {memory: 1G, cores: 1}\n      - *d\n",
		 "hosts.yaml:4: unsupported YAML feature: anchor '&d'"},
		{"hosts:\n  - name: a\n    domains:\n      - *d\n", "hosts.yaml:4: unsupported YAML feature: alias '*d'"},
		{"hosts: !!seq\n  - name: a\n", "hosts.yaml:1: unsupported YAML feature: tag"},
		{"hosts:\n  - name: |\n      a\n", "hosts.yaml:2: unsupported YAML feature: block string"},
		{"hosts:\n  - name: a\n---\nhosts:\n", "hosts.yaml:3: more than one YAML document"},
		{"hosts:\n  - name: \"a\\0\"\n", "hosts.yaml:2: NUL character"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		tern_cluster c;
		tern_err err = {0};
		const int rc = tern_cluster_parse_yaml(&c, cases[i].text, strlen(cases[i].text), "hosts.yaml", &err);
		TT_CHECKF(rc < 0, "case %zu parsed", i);
		TT_CHECKF(strstr(err.msg, cases[i].want) != NULL, "case %zu: got '%s', want '%s'", i, err.msg,
			  cases[i].want);
		TT_CHECK(strchr(err.msg, '\n') == NULL);
		TT_EQ_INT(c.n_domains, 0);
	}
	tern_cluster c;
	tern_err err = {0};
	TT_CHECK(tern_cluster_load_yaml(&c, "/nonexistent/hosts.yaml", &err) == TERN_EIO);
	TT_CHECK(strstr(err.msg, "/nonexistent/hosts.yaml") != NULL);
}

static void test_dry_run_100b(void)
{
	tern_plan_model m;
	memset(&m, 0, sizeof m);
	TT_REQUIRE(tern_hparams_preset("100b", &m.hp, NULL) == 0);
	m.embd_type = TERN_DTYPE_F16;
	tern_plan_opts o;
	tern_plan_opts_default(&o, &m.hp);
	tern_cluster c;
	tern_err err = {0};
	TT_REQUIRE(tern_cluster_parse_yaml(&c, hosts4, strlen(hosts4), "hosts.yaml", &err) == 0);
	tern_plan_layout l;
	TT_REQUIRE(tern_plan_compute(&m, &o, &c, &l, NULL, &err) == 0);
	TT_EQ_INT(l.n_stages, 8);
	int next = 0;
	uint64_t maxdom = 0;
	for (int s = 0; s < 8; s++) {
		TT_EQ_INT(l.stages[s].first_layer, next);
		next = l.stages[s].last_layer + 1;
		TT_CHECK(l.stages[s].mem_need <= c.domains[s].mem_bytes);
		const uint64_t dom = l.stages[s].token_bytes + (s == c.coord_domain ? l.coord_token_bytes : 0);
		if (dom > maxdom)
			maxdom = dom;
	}
	TT_EQ_INT(next, 116);
	TT_EQ_INT(maxdom, l.bottleneck_bytes);
	/* the coordinator's domain (node-c numa 0) carries fewer layers than an
	 * average stage: its head read is counted there */
	const tern_plan_stage *cs = &l.stages[c.coord_domain];
	TT_CHECK(cs->last_layer - cs->first_layer + 1 < 116 / 8);
	/* the table: a header, the coordinator row and one row per stage */
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	tern_plan_print_table(f, &m, &o, &c, &l);
	fclose(f);
	int rows = 0;
	for (char *p = buf; (p = strstr(p, "node-")) != NULL; p++)
		rows++;
	TT_EQ_INT(rows, 9);
	TT_CHECK(strstr(buf, "coord") != NULL && strstr(buf, "weight MiB") != NULL && strstr(buf, "share") != NULL);
	free(buf);
	tern_plan_layout_free(&l);
	/* the same model on two 16 GiB domains with an f32 KV cache does not fit:
	 * refused, with a shortfall; the default f16 cache needs 2 (K, V) x 4
	 * seqs x 4096 x 116 layers x 1024 x 2 bytes (7.25 GiB) less, and fits */
	tern_cluster small;
	const uint64_t mem[2] = {16ull << 30, 16ull << 30};
	cluster_mem(&small, 2, mem);
	uint64_t shortfall = 0;
	o.kv_type = TERN_DTYPE_F32;
	TT_EQ_INT(tern_plan_compute(&m, &o, &small, &l, &shortfall, &err), TERN_ERANGE);
	TT_CHECK(shortfall > 0);
	o.kv_type = TERN_DTYPE_F16;
	TT_EQ_INT(tern_plan_compute(&m, &o, &small, &l, &shortfall, &err), 0);
	TT_CHECK(l.stages[0].kv_bytes + l.stages[1].kv_bytes ==
		 116ull * 4 * 4096 * tern_hparams_kv_bytes_per_token_layer(&m.hp, TERN_DTYPE_F16));
	tern_plan_layout_free(&l);
	/* half the KV memory on 10 GiB domains is still too much */
	const uint64_t mem10[2] = {10ull << 30, 10ull << 30};
	tern_cluster_free(&small);
	cluster_mem(&small, 2, mem10);
	TT_EQ_INT(tern_plan_compute(&m, &o, &small, &l, &shortfall, &err), TERN_ERANGE);
	TT_CHECK(shortfall > 0);
	tern_cluster_free(&small);
	tern_cluster_free(&c);
}

/* ---- shards and plans ------------------------------------------------------- */

typedef struct {
	int n_alloc, n_free, misaligned;
} count_alloc;

static void *ca_alloc(void *ctx, size_t n, size_t align)
{
	count_alloc *c = ctx;
	void *p = tern_aligned_alloc(n ? n : 1, align);
	c->n_alloc++;
	if ((uintptr_t)p % 64)
		c->misaligned++;
	return p;
}

static void ca_free(void *ctx, void *p, size_t n)
{
	(void)n;
	count_alloc *c = ctx;
	c->n_free++;
	tern_aligned_free(p);
}

/* Packed-data checksums of every projection of a reference plan, indexed
 * [layer][proj]: later plans of the same model must carry identical bytes. */
static uint64_t ref_hash[64][TERN_PROJ_COUNT];

/* Loads every stage of the plan in dir and compares with the generator:
 * full = unpack every projection and compare with the generator's ternary
 * values (and record the packed bytes' checksums); otherwise the packed bytes
 * must have the checksums recorded from a fully checked plan (the load itself
 * decompresses them and checks the data against those checksums). */
static void check_plan_vs_synth(const char *dir, const tern_hparams *hp, uint64_t seed, int n_stages,
				tern_packing packing, int full)
{
	tern_plan_manifest *p;
	tern_err err = {0};
	TT_REQUIRE(tern_plan_manifest_read(&p, dir, &err) == 0);
	TT_EQ_INT(p->n_stages, n_stages);
	TT_EQ_INT(p->packing, packing + 1);
	TT_EQ_INT(p->hparams->n_layer, hp->n_layer);
	TT_EQ_INT(p->hparams->n_embd, hp->n_embd);
	TT_CHECK(p->tokenizer != NULL && p->tokenizer->n_tokens == (size_t)hp->n_vocab);
	count_alloc ca = {0};
	tern_shard_alloc a = {ca_alloc, ca_free, &ca};
	int8_t *w = malloc((size_t)hp->n_ff * (size_t)hp->n_embd), *ref = malloc((size_t)hp->n_ff * (size_t)hp->n_embd);
	TT_REQUIRE(w && ref);
	int layers_seen = 0;
	for (size_t s = 0; s < p->n_stages; s++) {
		char path[512];
		snprintf(path, sizeof path, "%s/%s", dir, p->stages[s]->shard);
		uint64_t h = 0;
		for (size_t i = 0; i < p->n_files; i++)
			if (!strcmp(p->files[i]->name, p->stages[s]->shard))
				h = p->files[i]->xxh64;
		tern_shard *sh;
		TT_REQUIRE(tern_shard_open(&sh, path, &h, &err) == 0);
		tern_shard_layer *ys;
		int n;
		TT_REQUIRE(tern_shard_load_layers(sh, &a, &ys, &n, &err) == 0);
		TT_EQ_INT(n, (int)(p->stages[s]->last_layer - p->stages[s]->first_layer + 1));
		for (int i = 0; i < n; i++) {
			const tern_shard_layer *y = &ys[i];
			TT_EQ_INT(y->layer, (int)p->stages[s]->first_layer + i);
			layers_seen++;
			for (int q = 0; q < TERN_PROJ_COUNT; q++) {
				int m, k;
				tern_proj_shape(hp, (tern_proj)q, &m, &k);
				const tern_matrix *mat = &y->proj[q];
				TT_EQ_INT(mat->m, m);
				TT_EQ_INT(mat->k, k);
				TT_EQ_INT(mat->packing, packing);
				TT_EQ_INT(mat->n_groups, 1);
				const tern_shard_tensor *t = tern_shard_tensor_at(sh, tern_shard_find(sh, (tern_shard_role)q, y->layer));
				TT_REQUIRE(t != NULL && y->layer < 64);
				if (full) {
					TT_REQUIRE(tern_matrix_unpack(mat, w, &err) == 0);
					tern_synth_ternary_rows(seed, hp, y->layer, (tern_proj)q, 0, m, ref);
					TT_CHECKF(memcmp(w, ref, (size_t)m * (size_t)k) == 0, "layer %d proj %d differs",
						  y->layer, q);
					ref_hash[y->layer][q] = t->raw_xxh64;
				} else {
					TT_CHECKF(t->raw_xxh64 == ref_hash[y->layer][q], "layer %d proj %d differs", y->layer, q);
				}
				const float sc = tern_synth_scale(seed, hp, y->layer, (tern_proj)q);
				TT_CHECK(memcmp(&mat->scales[0], &sc, sizeof sc) == 0);
			}
			for (int e = 0; e < hp->n_embd; e += 97) {
				TT_CHECK(y->attn_norm[e] == tern_synth_norm(seed, y->layer, TERN_NORM_ATTN, e));
				TT_CHECK(y->ffn_norm[e] == tern_synth_norm(seed, y->layer, TERN_NORM_FFN, e));
				TT_CHECK(y->attn_sub_norm[e] == tern_synth_norm(seed, y->layer, TERN_NORM_ATTN_SUB, e));
			}
			TT_CHECK(y->ffn_sub_norm[hp->n_ff - 1] ==
				 tern_synth_norm(seed, y->layer, TERN_NORM_FFN_SUB, hp->n_ff - 1));
		}
		tern_shard_layers_free(ys, n, &a);
		tern_shard_close(sh);
	}
	TT_EQ_INT(layers_seen, hp->n_layer);
	TT_EQ_INT(ca.n_alloc, ca.n_free);
	TT_EQ_INT(ca.misaligned, 0);
	/* the coordinator's shard: embeddings as stored, output norm */
	char path[512];
	snprintf(path, sizeof path, "%s/%s", dir, p->coordinator->shard);
	tern_shard *sh;
	TT_REQUIRE(tern_shard_open(&sh, path, NULL, &err) == 0);
	TT_EQ_INT(tern_shard_stage(sh), 0);
	const int ie = tern_shard_find(sh, TERN_ROLE_TOKEN_EMBD, -1), in = tern_shard_find(sh, TERN_ROLE_OUTPUT_NORM, -1);
	TT_REQUIRE(ie >= 0 && in >= 0);
	const tern_shard_tensor *te = tern_shard_tensor_at(sh, ie);
	TT_EQ_INT(te->dtype, TERN_DTYPE_F16);
	TT_EQ_INT(te->m, hp->n_vocab);
	TT_EQ_INT(te->k, hp->n_embd);
	uint16_t *emb = malloc((size_t)te->raw_bytes);
	TT_REQUIRE(emb && tern_shard_read_tensor(sh, ie, emb, (size_t)te->raw_bytes, NULL, &err) == 0);
	int bad = 0;
	for (int64_t t = 0; t < hp->n_vocab; t += 7)
		for (int64_t e = 0; e < hp->n_embd; e += 13)
			bad += emb[t * hp->n_embd + e] != tern_synth_embd_f16(seed, hp, t, e);
	TT_EQ_INT(bad, 0);
	free(emb);
	tern_shard_close(sh);
	free(w);
	free(ref);
	tern_plan_manifest_free(p);
}

static void synth_small(const char *path, tern_hparams *hp, const char *preset, const char *over, uint64_t seed)
{
	tern_err err = {0};
	TT_CHECK(tern_hparams_preset(preset, hp, &err) == 0);
	TT_CHECKF(tern_synth_override(hp, over, &err) == 0, "%s", err.msg);
	TT_CHECKF(tern_synth_write(path, hp, seed, NULL, &err) == 0, "%s", err.msg);
}

/* Plans gguf (hparams hp) with the default options over `domains` uniform
 * domains (2 cores, 8 GiB each) into the temporary directory `name`: the
 * directory, or NULL with the error in err. */
static const char *plan_default(const char *gguf, const tern_hparams *hp, int domains, const char *name,
				tern_err *err)
{
	tern_cluster c;
	if (tern_cluster_uniform(&c, "box", domains, 8ull << 30, 2, err) < 0)
		return NULL;
	tern_plan_opts o;
	tern_plan_opts_default(&o, hp);
	const char *dir = tt_tmp(name);
	const int rc = tern_plan_write(gguf, &o, &c, dir, 1, 0, NULL, err);
	tern_cluster_free(&c);
	return rc < 0 ? NULL : dir;
}

static void test_roundtrip_2b4t_width(void)
{
	/* 2B4T's widths (2560 / 640 KV / 6912), cut to 4 layers and a small vocabulary */
	tern_hparams hp;
	const char *gguf = tt_tmp("w2b4t.gguf");
	synth_small(gguf, &hp, "2b4t", "n_layer=4,n_vocab=1024,bos=1000,eos=1001,eot=1002", 42);
	for (int S = 1; S <= 4; S++) {
		tern_cluster c;
		tern_err err = {0};
		TT_REQUIRE(tern_cluster_uniform(&c, "box", S, 64ull << 30, 8, &err) == 0);
		tern_plan_opts o;
		tern_plan_opts_default(&o, &hp);
		char name[32];
		snprintf(name, sizeof name, "plan-2b4t-%d", S);
		const char *dir = tt_tmp(name);
		TT_REQUIRE(tern_plan_write(gguf, &o, &c, dir, 1, 0, NULL, &err) == 0);
		TT_CHECKF(tern_plan_verify(dir, 0, &err) == 0, "%s", err.msg);
		check_plan_vs_synth(dir, &hp, 42, S, TERN_PACK_TL2, S == 1);
		tern_cluster_free(&c);
		tt_rm_rf(dir);
	}
}

static void test_roundtrip_packings(void)
{
	tern_hparams hp;
	const char *gguf = tt_tmp("p125.gguf");
	synth_small(gguf, &hp, "125m", "n_layer=3,n_vocab=600,bos=1,eos=2,eot=3", 7);
	const tern_packing packs[] = {TERN_PACK_I2S, TERN_PACK_TL1, TERN_PACK_TL2};
	for (int i = 0; i < 3; i++) {
		tern_cluster c;
		tern_err err = {0};
		TT_REQUIRE(tern_cluster_uniform(&c, "box", 2, 8ull << 30, 2, &err) == 0);
		tern_plan_opts o;
		tern_plan_opts_default(&o, &hp);
		o.packing = packs[i];
		char name[32];
		snprintf(name, sizeof name, "plan-pack-%d", i);
		const char *dir = tt_tmp(name);
		TT_REQUIRE(tern_plan_write(gguf, &o, &c, dir, i, 0, NULL, &err) == 0); /* zstd levels 0, 1, 2 */
		TT_CHECKF(tern_plan_verify(dir, 0, &err) == 0, "%s", err.msg);
		check_plan_vs_synth(dir, &hp, 7, 2, packs[i], 1);
		tern_cluster_free(&c);
		tt_rm_rf(dir);
	}
}

/* ---- full-precision source: per-row-block scales ------------------------------ */

/* A small bitnet GGUF with f32 projections whose magnitude changes every 16
 * rows, so per-row-block scales differ from group to group. */
static float fp_weight(int layer, int p, int i, int j)
{
	const uint32_t h = ((uint32_t)layer * 7919u + (uint32_t)p * 104729u + (uint32_t)i * 1299709u +
			    (uint32_t)j * 15485863u) * 2654435761u;
	const float t = (float)((int)(h >> 29) % 3 - 1); /* -1, 0, 1 */
	const float mag = 0.01f * (float)(1 + (i / 16) % 5);
	return t * mag * (1.0f + (float)((h >> 8) & 255) / 1024.0f);
}

static void write_fp_gguf(const char *path, tern_hparams *hp)
{
	tern_err err = {0};
	memset(hp, 0, sizeof *hp);
	snprintf(hp->arch, sizeof hp->arch, "bitnet-b1.58");
	hp->n_embd = 256;
	hp->n_layer = 2;
	hp->n_head = 4;
	hp->n_head_kv = 2;
	hp->head_dim = 64;
	hp->n_ff = 512;
	hp->n_vocab = 300;
	hp->n_ctx_train = 512;
	hp->rope_theta = 10000.0f;
	hp->norm_eps = 1e-5f;
	hp->tied_embeddings = 0; /* an output.weight tensor follows */
	tern_gguf_writer *w;
	TT_REQUIRE(tern_gguf_writer_open(&w, path, 3, 0, &err) == 0);
	const char *a = "bitnet-b1.58";
	int rc = tern_gguf_writer_add_str(w, "general.architecture", a, &err);
	rc |= tern_gguf_writer_add_u32(w, "bitnet-b1.58.embedding_length", 256, &err);
	rc |= tern_gguf_writer_add_u32(w, "bitnet-b1.58.block_count", 2, &err);
	rc |= tern_gguf_writer_add_u32(w, "bitnet-b1.58.attention.head_count", 4, &err);
	rc |= tern_gguf_writer_add_u32(w, "bitnet-b1.58.attention.head_count_kv", 2, &err);
	rc |= tern_gguf_writer_add_u32(w, "bitnet-b1.58.feed_forward_length", 512, &err);
	rc |= tern_gguf_writer_add_u32(w, "bitnet-b1.58.context_length", 512, &err);
	rc |= tern_gguf_writer_add_u32(w, "bitnet-b1.58.vocab_size", 300, &err);
	TT_REQUIRE(rc == 0);
	char name[64];
	uint64_t ne[2] = {256, 300};
	TT_REQUIRE(tern_gguf_writer_add_tensor(w, "token_embd.weight", 2, ne, TERN_DTYPE_BF16, &err) == 0);
	TT_REQUIRE(tern_gguf_writer_add_tensor(w, "output.weight", 2, ne, TERN_DTYPE_F16, &err) == 0);
	ne[0] = 256;
	TT_REQUIRE(tern_gguf_writer_add_tensor(w, "output_norm.weight", 1, ne, TERN_DTYPE_F32, &err) == 0);
	for (int l = 0; l < 2; l++) {
		for (int p = 0; p < TERN_PROJ_COUNT; p++) {
			int m, k;
			tern_proj_shape(hp, (tern_proj)p, &m, &k);
			tern_proj_gguf_name((tern_proj)p, l, name, sizeof name);
			const uint64_t pne[2] = {(uint64_t)k, (uint64_t)m};
			TT_REQUIRE(tern_gguf_writer_add_tensor(w, name, 2, pne, TERN_DTYPE_F32, &err) == 0);
		}
		for (int n = TERN_NORM_ATTN; n <= TERN_NORM_FFN_SUB; n++) {
			tern_norm_gguf_name((tern_norm_kind)n, l, name, sizeof name);
			const uint64_t nne[1] = {(uint64_t)tern_norm_len(hp, (tern_norm_kind)n)};
			TT_REQUIRE(tern_gguf_writer_add_tensor(w, name, 1, nne, TERN_DTYPE_F32, &err) == 0);
		}
	}
	TT_REQUIRE(tern_gguf_writer_write_header(w, &err) == 0);
	uint16_t *emb = malloc(256 * 300 * 2);
	for (int i = 0; i < 256 * 300; i++)
		emb[i] = (uint16_t)(0x3000 + (i % 1024));
	TT_REQUIRE(tern_gguf_writer_write(w, emb, 256 * 300 * 2, &err) == 0);
	for (int i = 0; i < 256 * 300; i++)
		emb[i] = (uint16_t)(0x2c00 + (i % 2048));
	TT_REQUIRE(tern_gguf_writer_write(w, emb, 256 * 300 * 2, &err) == 0);
	free(emb);
	float *row = malloc(sizeof(float) * 512);
	for (int i = 0; i < 256; i++)
		row[i] = 1.0f + (float)i / 1024.0f;
	TT_REQUIRE(tern_gguf_writer_write(w, row, 256 * 4, &err) == 0);
	for (int l = 0; l < 2; l++) {
		for (int p = 0; p < TERN_PROJ_COUNT; p++) {
			int m, k;
			tern_proj_shape(hp, (tern_proj)p, &m, &k);
			for (int i = 0; i < m; i++) {
				for (int j = 0; j < k; j++)
					row[j] = fp_weight(l, p, i, j);
				TT_REQUIRE(tern_gguf_writer_write(w, row, (size_t)k * 4, &err) == 0);
			}
		}
		for (int n = TERN_NORM_ATTN; n <= TERN_NORM_FFN_SUB; n++) {
			const int len = tern_norm_len(hp, (tern_norm_kind)n);
			for (int i = 0; i < len; i++)
				row[i] = 0.5f + (float)(l * 5 + n) / 8.0f + (float)i / 4096.0f;
			TT_REQUIRE(tern_gguf_writer_write(w, row, (size_t)len * 4, &err) == 0);
		}
	}
	free(row);
	TT_CHECKF(tern_gguf_writer_finish(w, &err) == 0, "%s", err.msg);
	tern_gguf_writer_free(w);
}

static void test_group_scales_full_precision(void)
{
	tern_hparams hp;
	const char *gguf = tt_tmp("fp.gguf");
	write_fp_gguf(gguf, &hp);
	tern_cluster c;
	tern_err err = {0};
	TT_REQUIRE(tern_cluster_uniform(&c, "box", 2, 8ull << 30, 2, &err) == 0);
	tern_plan_opts o;
	tern_plan_opts_default(&o, &hp);
	o.group_rows = 32;
	const char *dir = tt_tmp("plan-fp");
	const int rc = tern_plan_write(gguf, &o, &c, dir, 1, 0, NULL, &err);
	TT_CHECKF(rc == 0, "%s", err.msg);
	if (rc != 0) {
		tern_cluster_free(&c);
		return;
	}
	TT_CHECKF(tern_plan_verify(dir, 0, &err) == 0, "%s", err.msg);
	tern_plan_manifest *p;
	TT_REQUIRE(tern_plan_manifest_read(&p, dir, &err) == 0);
	TT_EQ_INT(p->group_rows, 32);
	TT_CHECK(!p->hparams->tied_embeddings);
	TT_EQ_INT(p->coordinator->embd_type, tern_dtype_ggml(TERN_DTYPE_BF16));
	/* the coordinator's shard: the BF16 embedding and the F16 head, as stored */
	{
		char cpath[512];
		snprintf(cpath, sizeof cpath, "%s/%s", dir, p->coordinator->shard);
		tern_shard *cs;
		TT_REQUIRE(tern_shard_open(&cs, cpath, NULL, &err) == 0);
		const int ie = tern_shard_find(cs, TERN_ROLE_TOKEN_EMBD, -1), io = tern_shard_find(cs, TERN_ROLE_OUTPUT, -1);
		TT_REQUIRE(ie >= 0 && io >= 0);
		TT_EQ_INT(tern_shard_tensor_at(cs, ie)->dtype, TERN_DTYPE_BF16);
		TT_EQ_INT(tern_shard_tensor_at(cs, io)->dtype, TERN_DTYPE_F16);
		uint16_t *e = malloc(256 * 300 * 2);
		TT_REQUIRE(e && tern_shard_read_tensor(cs, io, e, 256 * 300 * 2, NULL, &err) == 0);
		int bad = 0;
		for (int i = 0; i < 256 * 300; i++)
			bad += e[i] != (uint16_t)(0x2c00 + (i % 2048));
		TT_EQ_INT(bad, 0);
		TT_REQUIRE(tern_shard_read_tensor(cs, ie, e, 256 * 300 * 2, NULL, &err) == 0);
		TT_EQ_INT(e[1234], 0x3000 + 1234 % 1024);
		free(e);
		tern_shard_close(cs);
	}
	int8_t *w = malloc(512 * 256);
	float *x = malloc(sizeof(float) * 512 * 256);
	for (size_t s = 0; s < p->n_stages; s++) {
		char path[512];
		snprintf(path, sizeof path, "%s/%s", dir, p->stages[s]->shard);
		tern_shard *sh;
		TT_REQUIRE(tern_shard_open(&sh, path, NULL, &err) == 0);
		tern_shard_layer *ys;
		int n;
		TT_REQUIRE(tern_shard_load_layers(sh, NULL, &ys, &n, &err) == 0);
		for (int i = 0; i < n; i++) {
			const int l = ys[i].layer;
			for (int q = 0; q < TERN_PROJ_COUNT; q++) {
				const tern_matrix *mat = &ys[i].proj[q];
				const int m = mat->m, k = mat->k;
				TT_EQ_INT(mat->group_rows, 32);
				TT_EQ_INT(mat->n_groups, (m + 31) / 32);
				TT_REQUIRE(tern_matrix_unpack(mat, w, &err) == 0);
				/* the absmean rule per 32-row group, computed here from the
				 * values written, is the oracle */
				for (int r = 0; r < m; r++)
					for (int j = 0; j < k; j++)
						x[(size_t)r * k + j] = fp_weight(l, q, r, j);
				int bad_scale = 0, bad_w = 0;
				for (int g = 0; g < mat->n_groups; g++) {
					double sum = 0;
					for (int r = g * 32; r < (g + 1) * 32 && r < m; r++)
						for (int j = 0; j < k; j++)
							sum += fabs((double)x[(size_t)r * k + j]);
					const int rows = (g + 1) * 32 <= m ? 32 : m - g * 32;
					float mean = (float)(sum / ((double)rows * k));
					const float scale = mean > 1e-5f ? mean : 1e-5f;
					bad_scale += mat->scales[g] != scale;
					const float inv = 1.0f / scale;
					for (int r = g * 32; r < g * 32 + rows; r++)
						for (int j = 0; j < k; j++) {
							float v = rintf(x[(size_t)r * k + j] * inv);
							v = v > 1 ? 1 : v < -1 ? -1 : v;
							bad_w += w[(size_t)r * k + j] != (int8_t)v;
						}
				}
				TT_CHECKF(bad_scale == 0, "layer %d proj %d: %d scales differ", l, q, bad_scale);
				TT_CHECKF(bad_w == 0, "layer %d proj %d: %d weights differ", l, q, bad_w);
				/* the magnitudes change every 16 rows, so groups really differ */
				TT_CHECK(mat->n_groups < 2 || mat->scales[0] != mat->scales[1]);
			}
		}
		tern_shard_layers_free(ys, n, NULL);
		tern_shard_close(sh);
	}
	free(w);
	free(x);
	tern_plan_manifest_free(p);
	tern_cluster_free(&c);
	tt_rm_rf(dir);
}

/* Rewrites dir's manifest with Coordinator.lm_head = lm (a damaged plan). */
static void set_manifest_lm_head(const char *dir, int lm)
{
	tern_err err = {0};
	tern_plan_manifest *p;
	TT_REQUIRE(tern_plan_manifest_read(&p, dir, &err) == 0);
	p->coordinator->lm_head = (Tern__V1__LmHead)lm;
	const size_t len = tern__v1__plan__get_packed_size(p);
	uint8_t *buf = malloc(len);
	TT_REQUIRE(buf);
	tern__v1__plan__pack(p, buf);
	char path[512];
	snprintf(path, sizeof path, "%s/%s", dir, TERN_PLAN_MANIFEST);
	FILE *f = fopen(path, "wb");
	TT_REQUIRE(f && fwrite(buf, 1, len, f) == len && fclose(f) == 0);
	free(buf);
	tern_plan_manifest_free(p);
}

/* The packed LM head stored in the plan (--lm-head q8), on the untied model
 * (BF16 token_embd, F16 output.weight): the coordinator's shard holds the
 * output matrix packed exactly as kernels/'s tern_qh_pack_rows packs it, the
 * BF16 token_embd for the lookup and no F16 output matrix; the manifest says
 * q8 and the planner counts the packed head's bytes. A manifest whose format
 * is unknown, or names a format whose size the shard's tensor does not have,
 * or names none while the shard has one, is a one-line error. */
static void test_packed_head(void)
{
	tern_hparams hp;
	const char *gguf = tt_tmp("fpq.gguf");
	write_fp_gguf(gguf, &hp);
	tern_cluster c;
	tern_err err = {0};
	TT_REQUIRE(tern_cluster_uniform(&c, "box", 2, 8ull << 30, 2, &err) == 0);
	tern_plan_opts o;
	tern_plan_opts_default(&o, &hp);
	TT_EQ_INT(o.lm_head, TERN_PLAN_HEAD_STORED);
	o.lm_head = TERN_PLAN_HEAD_Q8;
	o.lm_head_f16 = 1; /* output.weight is F16: accepted */
	const char *dir = tt_tmp("plan-q8");
	TT_REQUIRE(tern_plan_write(gguf, &o, &c, dir, 1, 0, NULL, &err) == 0);
	TT_CHECKF(tern_plan_verify(dir, 0, &err) == 0, "%s", err.msg);
	const uint64_t qbytes = tern_qh_bytes(TERN_QH_Q8, 300, 256);
	TT_EQ_INT((long long)tern_plan_head_packed_bytes(TERN_PLAN_HEAD_Q8, 300, 256), (long long)qbytes);
	TT_EQ_INT((long long)qbytes, 19 * (512 + 32) * 8); /* 19 groups of 16 rows, 8 blocks of 32 */
	tern_plan_manifest *p;
	TT_REQUIRE(tern_plan_manifest_read(&p, dir, &err) == 0);
	TT_EQ_INT(p->coordinator->lm_head, TERN_PLAN_HEAD_Q8);
	/* per token: the packed head, one BF16 embedding row and the f32 norm */
	TT_EQ_INT((long long)p->coordinator->token_bytes, (long long)(qbytes + 256 * (4 + 2)));
	TT_EQ_INT((long long)p->coordinator->weight_bytes, (long long)(qbytes + 300 * 256 * 2 + 256 * 4));
	char cpath[512];
	snprintf(cpath, sizeof cpath, "%s/%s", dir, p->coordinator->shard);
	tern_shard *cs;
	TT_REQUIRE(tern_shard_open(&cs, cpath, NULL, &err) == 0);
	TT_CHECK(tern_shard_find(cs, TERN_ROLE_OUTPUT, -1) < 0);
	const int ie = tern_shard_find(cs, TERN_ROLE_TOKEN_EMBD, -1), iq = tern_shard_find(cs, TERN_ROLE_HEAD_PACKED, -1);
	TT_REQUIRE(ie >= 0 && iq >= 0);
	TT_EQ_INT(tern_shard_tensor_at(cs, ie)->dtype, TERN_DTYPE_BF16);
	const tern_shard_tensor *tq = tern_shard_tensor_at(cs, iq);
	TT_CHECK(tq->dtype == TERN_DTYPE_U8 && tq->m == 19 && tq->k == (512 + 32) * 8 && tq->raw_bytes == qbytes);
	int qi, qt;
	TT_REQUIRE(tern_plan_packed_head(p, cs, cpath, &qi, &qt, &err) == 0);
	TT_CHECK(qi == iq && qt == TERN_QH_Q8);
	uint8_t *got = malloc(qbytes), *want = malloc(qbytes);
	float *scratch = malloc(sizeof(float) * 16 * 256);
	TT_REQUIRE(got && want && scratch && tern_shard_read_tensor(cs, iq, got, qbytes, NULL, &err) == 0);
	tern_source *src;
	TT_REQUIRE(tern_source_open(&src, gguf, &err) == 0);
	tern_dense_view v;
	TT_REQUIRE(tern_source_dense(src, TERN_DENSE_OUTPUT, &v, &err) == 0 && v.type == TERN_DTYPE_F16);
	tern_qh_pack_rows(TERN_QH_Q8, v.data, TERN_DOT_F16, v.row_bytes, 300, 256, 0, 19, scratch, want);
	TT_CHECK(memcmp(got, want, qbytes) == 0);
	/* token_embd is stored raw and read in place (the coordinator maps it);
	 * the compressed packed head cannot be mapped */
	const tern_shard_tensor *te = tern_shard_tensor_at(cs, ie);
	TT_EQ_INT(te->compression, 0);
	TT_CHECK(tq->compression == 1);
	const void *mapped = NULL;
	TT_CHECKF(tern_shard_map_tensor(cs, ie, &mapped, &err) == 0, "%s", err.msg);
	tern_dense_view ve;
	TT_REQUIRE(tern_source_dense(src, TERN_DENSE_TOKEN_EMBD, &ve, &err) == 0);
	TT_CHECK(mapped && te->raw_bytes == 300 * 256 * 2 && memcmp(mapped, ve.data, te->raw_bytes) == 0);
	TT_EQ_INT(tern_shard_map_tensor(cs, iq, &mapped, &err), TERN_EUNSUP);
	TT_CHECKF(mapped == NULL && strstr(err.msg, "is compressed") != NULL, "%s", err.msg);
	/* a shard opened without the file's digest: the mapped tensor's own xxh64
	 * is checked, so one flipped byte in it is a checksum error */
	FILE *cf = fopen(cpath, "rb");
	TT_REQUIRE(cf != NULL);
	fseek(cf, 0, SEEK_END);
	const long clen = ftell(cf);
	fseek(cf, 0, SEEK_SET);
	uint8_t *cbuf = malloc((size_t)clen);
	TT_REQUIRE(cbuf && fread(cbuf, 1, (size_t)clen, cf) == (size_t)clen);
	fclose(cf);
	tern_shard *ms;
	TT_REQUIRE(tern_shard_open_mem(&ms, cbuf, (size_t)clen, "copy", &err) == 0);
	TT_CHECK(tern_shard_map_tensor(ms, ie, &mapped, &err) == 0);
	cbuf[(const uint8_t *)mapped - cbuf + 1000] ^= 0x40;
	TT_EQ_INT(tern_shard_map_tensor(ms, ie, &mapped, &err), TERN_ECHECKSUM);
	TT_CHECKF(strstr(err.msg, "checksum mismatch") != NULL, "%s", err.msg);
	tern_shard_close(ms);
	free(cbuf);
	tern_source_close(src);
	free(got);
	free(want);
	free(scratch);
	tern_shard_close(cs);
	tern_plan_manifest_free(p);

	/* damaged manifests: unknown format, a format whose size differs, none */
	set_manifest_lm_head(dir, TERN_PLAN_HEAD_Q4);
	TT_EQ_INT(tern_plan_verify(dir, 0, &err), TERN_EFORMAT);
	TT_CHECKF(strstr(err.msg, "coord.shard: q4 LM head of") != NULL && strchr(err.msg, '\n') == NULL, "%s",
		  err.msg);
	set_manifest_lm_head(dir, TERN_PLAN_HEAD_STORED);
	TT_EQ_INT(tern_plan_verify(dir, 0, &err), TERN_EFORMAT);
	TT_CHECKF(strstr(err.msg, "a packed LM head the manifest does not name") != NULL, "%s", err.msg);
	set_manifest_lm_head(dir, 7); /* last: the manifest no longer decodes */
	TT_EQ_INT(tern_plan_manifest_read(&p, dir, &err), TERN_EFORMAT);
	TT_CHECKF(strstr(err.msg, "unknown LM head format 7") != NULL, "%s", err.msg);
	tt_rm_rf(dir);

	tern_cluster_free(&c);
}

/* An allocator that fails after a budget of allocations: every failure
 * point must give ENOMEM and release what was allocated (ASan checks). */
typedef struct {
	int left, live;
} fail_alloc;

static void *fa_alloc(void *ctx, size_t n, size_t align)
{
	fail_alloc *f = ctx;
	if (f->left-- <= 0)
		return NULL;
	f->live++;
	return tern_aligned_alloc(n ? n : 1, align);
}

static void fa_free(void *ctx, void *p, size_t n)
{
	(void)n;
	fail_alloc *f = ctx;
	f->live--;
	tern_aligned_free(p);
}

static void test_alloc_failure(void)
{
	tern_hparams hp;
	const char *gguf = tt_tmp("af.gguf");
	synth_small(gguf, &hp, "125m", "n_layer=2,n_embd=256,n_head=4,n_head_kv=2,n_ff=512,n_vocab=300,bos=256,eos=257,"
				       "eot=258",
		    3);
	tern_err err = {0};
	const char *dir = plan_default(gguf, &hp, 1, "plan-af", &err);
	TT_REQUIRE(dir);
	char path[512];
	snprintf(path, sizeof path, "%s/stage-001.shard", dir);
	tern_shard *sh;
	TT_REQUIRE(tern_shard_open(&sh, path, NULL, &err) == 0);
	/* 2 layers x (7 matrices x 2 buffers + 4 norms) = 36 allocations */
	for (int budget = 0; budget <= 36; budget++) {
		fail_alloc f = {budget, 0};
		tern_shard_alloc a = {fa_alloc, fa_free, &f};
		tern_shard_layer *ys;
		int n;
		const int rc = tern_shard_load_layers(sh, &a, &ys, &n, &err);
		if (budget < 36) {
			TT_CHECKF(rc == TERN_ENOMEM, "budget %d: rc %d", budget, rc);
			TT_EQ_INT(f.live, 0);
		} else {
			TT_REQUIRE(rc == 0);
			TT_EQ_INT(f.live, 36);
			tern_shard_layers_free(ys, n, &a);
			TT_EQ_INT(f.live, 0);
		}
	}
	tern_shard_close(sh);
	tt_rm_rf(dir);
}

/* Tensors zstd cannot shrink by 1/32 (packed ternary weights, random bytes)
 * are stored raw, even when the frame came out larger than the data (the
 * file is cut back); compressible ones stay compressed; every tensor reads
 * back exact and the finished file passes the whole-file digest. */
static void test_shard_raw_fallback(void)
{
	const char *path = tt_tmp("raw.shard");
	tern_err err = {0};
	tern_shard_writer *w;
	TT_REQUIRE(tern_shard_writer_open(&w, path, 1, 0, 0, TERN_PACK_TL2, 8, 3, &err) == 0);
	enum { N = 3008 }; /* F32: 12032 bytes each, a multiple of 64: the cut is not hidden by padding */
	static float rnd1[N], zeros[N], rnd2[N];
	uint64_t seed = 77;
	for (int i = 0; i < N; i++) {
		/* random bits with the exponent kept finite (no NaN payload games) */
		uint32_t u = tt_xorshift_star(&seed) & 0xBF7FFFFFu, v = tt_xorshift_star(&seed) & 0xBF7FFFFFu;
		memcpy(&rnd1[i], &u, 4);
		memcpy(&rnd2[i], &v, 4);
	}
	TT_REQUIRE(tern_shard_write_dense(w, TERN_ROLE_OUTPUT, -1, TERN_DTYPE_F32, 1, N, rnd1, &err) == 0);
	TT_REQUIRE(tern_shard_write_dense(w, TERN_ROLE_ATTN_NORM, 0, TERN_DTYPE_F32, 1, N, zeros, &err) == 0);
	TT_REQUIRE(tern_shard_write_dense(w, TERN_ROLE_FFN_NORM, 0, TERN_DTYPE_F32, 1, N, rnd2, &err) == 0);
	uint64_t bytes, digest;
	const int closed = tern_shard_writer_close(w, &bytes, &digest, &err);
	TT_CHECKF(closed == 0, "%s", err.msg);
	TT_REQUIRE(closed == 0);
	tern_shard *sh;
	const int opened = tern_shard_open(&sh, path, &digest, &err);
	TT_CHECKF(opened == 0, "%s", err.msg);
	TT_REQUIRE(opened == 0);
	const float *want[3] = {rnd1, zeros, rnd2};
	const int roles[3] = {TERN_ROLE_OUTPUT, TERN_ROLE_ATTN_NORM, TERN_ROLE_FFN_NORM};
	const int comp[3] = {0, 1, 0};
	static float got[N];
	for (int t = 0; t < 3; t++) {
		const int i = tern_shard_find(sh, (tern_shard_role)roles[t], t ? 0 : -1);
		TT_REQUIRE(i >= 0);
		const tern_shard_tensor *st = tern_shard_tensor_at(sh, i);
		TT_EQ_INT(st->compression, comp[t]);
		TT_CHECK(comp[t] ? st->stored_bytes < st->raw_bytes / 4 : st->stored_bytes == st->raw_bytes);
		TT_REQUIRE(tern_shard_read_tensor(sh, i, got, sizeof got, NULL, &err) == 0);
		TT_CHECK(memcmp(got, want[t], sizeof got) == 0);
	}
	tern_shard_close(sh);
	struct stat stt;
	TT_REQUIRE(stat(path, &stt) == 0);
	TT_EQ_INT((long long)stt.st_size, (long long)bytes);
	remove(path);
}

/* ---- damage ------------------------------------------------------------------ */

static void flip_byte(const char *path, long off)
{
	FILE *f = fopen(path, "r+b");
	TT_REQUIRE(f);
	fseek(f, off, SEEK_SET);
	const int c = fgetc(f);
	fseek(f, off, SEEK_SET);
	fputc(c ^ 0x40, f);
	fclose(f);
}

static void test_damage(void)
{
	tern_hparams hp;
	const char *gguf = tt_tmp("dmg.gguf");
	synth_small(gguf, &hp, "125m", "n_layer=2,n_vocab=600,bos=1,eos=2,eot=3", 9);
	tern_err err = {0};
	const char *dir = plan_default(gguf, &hp, 2, "plan-dmg", &err);
	TT_REQUIRE(dir);
	TT_REQUIRE(tern_plan_verify(dir, 0, &err) == 0);
	char s2[512], co[512], man[512];
	snprintf(s2, sizeof s2, "%s/stage-002.shard", dir);
	snprintf(co, sizeof co, "%s/coord.shard", dir);
	snprintf(man, sizeof man, "%s/plan.pb", dir);
	struct stat st;
	TT_REQUIRE(stat(s2, &st) == 0);

	/* a flipped byte in the data: verify and a checked load name the file */
	flip_byte(s2, (long)st.st_size / 2);
	TT_EQ_INT(tern_plan_verify(dir, 0, &err), TERN_ECHECKSUM);
	TT_CHECKF(strstr(err.msg, "stage-002.shard") != NULL, "%s", err.msg);
	tern_plan_manifest *p;
	TT_REQUIRE(tern_plan_manifest_read(&p, dir, &err) == 0);
	tern_shard *sh;
	TT_EQ_INT(tern_shard_open(&sh, s2, &p->files[1]->xxh64, &err), TERN_ECHECKSUM);
	TT_CHECK(strstr(err.msg, "stage-002.shard") != NULL);
	/* without the manifest's checksum, reading the damaged tensor catches it */
	TT_REQUIRE(tern_shard_open(&sh, s2, NULL, &err) == 0);
	tern_shard_layer *ys;
	int n;
	TT_CHECK(tern_shard_load_layers(sh, NULL, &ys, &n, &err) < 0);
	TT_CHECKF(strstr(err.msg, "stage-002.shard") != NULL && strstr(err.msg, "tensor") != NULL, "%s", err.msg);
	tern_shard_close(sh);
	flip_byte(s2, (long)st.st_size / 2); /* repair */
	TT_CHECK(tern_plan_verify(dir, 0, &err) == 0);

	/* a flipped byte in the index */
	flip_byte(s2, 64 + 100);
	TT_CHECK(tern_shard_open(&sh, s2, NULL, &err) == TERN_ECHECKSUM);
	TT_CHECK(strstr(err.msg, "index") != NULL);
	flip_byte(s2, 64 + 100);

	/* truncated shard */
	TT_REQUIRE(truncate(s2, st.st_size - 1000) == 0);
	TT_EQ_INT(tern_plan_verify(dir, 0, &err), TERN_EFORMAT);
	TT_CHECKF(strstr(err.msg, "stage-002.shard") != NULL && strstr(err.msg, "truncated") != NULL, "%s", err.msg);
	TT_CHECK(tern_shard_open(&sh, s2, NULL, &err) < 0);
	TT_CHECK(strstr(err.msg, "stage-002.shard") != NULL && strstr(err.msg, "truncated") != NULL);
	TT_REQUIRE(truncate(s2, 10) == 0);
	TT_CHECK(tern_shard_open(&sh, s2, NULL, &err) < 0);
	TT_CHECK(strstr(err.msg, "stage-002.shard") != NULL);

	/* missing coordinator shard */
	TT_REQUIRE(remove(co) == 0);
	TT_CHECK(tern_plan_verify(dir, 0, &err) < 0);
	TT_CHECK(strstr(err.msg, "shard") != NULL);

	/* damaged manifest */
	TT_REQUIRE(stat(man, &st) == 0);
	TT_REQUIRE(truncate(man, st.st_size / 2) == 0);
	TT_CHECK(tern_plan_verify(dir, 0, &err) < 0);
	TT_CHECKF(strstr(err.msg, "plan.pb") != NULL, "%s", err.msg);
	tern_plan_manifest_free(p);
	tt_rm_rf(dir);
}

/* A group-scaled (Q2_0) projection in a shard: the blocks come back byte for
 * byte, raw and zstd, as dtype q2_0 with no row scales; a width that is not a
 * multiple of 64 and a non-projection role are refused; tern_shard_load_matrix
 * (packed ternary only) refuses it. */
static void test_shard_q2_0(void)
{
	enum { M = 5, K = 128 };
	uint8_t blocks[M * (K / 64) * 18];
	for (size_t i = 0; i < sizeof blocks; i++)
		blocks[i] = (uint8_t)(i * 37 + 11);
	for (size_t b = 0; b < sizeof blocks; b += 18) { /* finite f16 scales: 0x3c00 = 1.0 */
		blocks[b] = 0x00;
		blocks[b + 1] = 0x3c;
	}
	for (int z = 0; z < 2; z++) {
		const char *path = tt_tmp(z ? "q2z.shard" : "q2.shard");
		tern_err err = {0};
		tern_shard_writer *w;
		TT_REQUIRE(tern_shard_writer_open(&w, path, 1, 0, 0, TERN_PACK_TL2, 4, z ? 3 : 0, &err) == 0);
		TT_EQ_INT(tern_shard_write_gq(w, TERN_ROLE_Q, 0, M, 100, blocks, &err), TERN_EINVAL);
		TT_EQ_INT(tern_shard_write_gq(w, TERN_ROLE_ATTN_NORM, 0, M, K, blocks, &err), TERN_EINVAL);
		TT_REQUIRE(tern_shard_write_gq(w, TERN_ROLE_Q, 0, M, K, blocks, &err) == 0);
		TT_REQUIRE(tern_shard_writer_close(w, NULL, NULL, &err) == 0);
		tern_shard *sh;
		TT_REQUIRE(tern_shard_open(&sh, path, NULL, &err) == 0);
		const int i = tern_shard_find(sh, TERN_ROLE_Q, 0);
		TT_REQUIRE(i >= 0);
		const tern_shard_tensor *t = tern_shard_tensor_at(sh, i);
		TT_CHECK(t->dtype == TERN_DTYPE_Q2_0 && t->m == M && t->k == K && t->n_groups == 0 &&
			 t->raw_bytes == sizeof blocks);
		uint8_t got[sizeof blocks];
		TT_REQUIRE(tern_shard_read_tensor(sh, i, got, sizeof got, NULL, &err) == 0);
		TT_CHECK(memcmp(got, blocks, sizeof got) == 0);
		tern_matrix mat;
		TT_CHECK(tern_shard_load_matrix(sh, i, NULL, &mat, &err) < 0);
		tern_shard_close(sh);
		remove(path);
	}
}

TT_MAIN(TT_CASE(test_shard_q2_0), TT_CASE(test_balance_even), TT_CASE(test_shard_raw_fallback), TT_CASE(test_optimal_vs_brute), TT_CASE(test_memory_refusal_exact),
	TT_CASE(test_hosts_parse), TT_CASE(test_hosts_errors), TT_CASE(test_dry_run_100b),
	TT_CASE(test_roundtrip_2b4t_width), TT_CASE(test_roundtrip_packings), TT_CASE(test_group_scales_full_precision),
	TT_CASE(test_packed_head), TT_CASE(test_alloc_failure), TT_CASE(test_damage))
