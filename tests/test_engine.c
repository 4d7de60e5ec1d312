/* test_engine: the layer engine (node/tern-engine.h) and the LM head
 * (coordinator/tern-head.h) on small random models built in memory.
 *
 * Checks: the float primitives against double-precision formulas; batch
 * invariance (one sequence alone, inside a batch of 16 others, with its prompt
 * chunked 1/3/7/all gives bit-identical hidden states and logits); KV slot
 * isolation; identical outputs for every packing, kernel ISA and thread count;
 * slot free/reuse and truncation; bad micro-batches rejected; the KV cache
 * types (f16 default, f32, bf16: the invariances for each, the stored
 * rounding exact, every ISA's widening the same); the paged KV cache
 * (sequences across block boundaries interleaved in one pool and on reused
 * blocks bit-identical to one block per slot, for every ISA; a step that
 * outgrows the pool refused whole); the LM head's
 * SIMD paths equal to its scalar code and to a double-precision dot. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tern-engine.h"
#include "tern-float.h"
#include "tern-half.h"
#include "tern-head.h"
#include "tern-test.h"

static uint64_t rng_state = 0x1234567887654321ull;

static uint64_t rng_next(void)
{
	uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static double rng_unit(void)
{
	return (double)(rng_next() >> 11) / 9007199254740992.0;
}

static float rng_f(float lo, float hi)
{
	return (float)(lo + (hi - lo) * rng_unit());
}

/* ---- primitives vs double ------------------------------------------------- */

static void test_rmsnorm(void)
{
	enum { N = 1000 };
	float x[N], w[N], out[N];
	for (int i = 0; i < N; i++) {
		x[i] = rng_f(-3, 3);
		w[i] = rng_f(0.5f, 1.5f);
	}
	tern_float_kernels_get(TERN_ISA_AUTO)->rmsnorm(x, w, N, 1e-5f, out);
	double ss = 0;
	for (int i = 0; i < N; i++)
		ss += (double)x[i] * x[i];
	const double s = 1.0 / sqrt(ss / N + 1e-5);
	double worst = 0;
	for (int i = 0; i < N; i++) {
		const double ref = x[i] * s * w[i];
		const double e = fabs(out[i] - ref) / (fabs(ref) + 1e-30);
		worst = e > worst ? e : worst;
	}
	TT_CHECKF(worst < 1e-6, "rmsnorm worst relative error %g", worst);
	/* in place equals out of place */
	float y[N];
	memcpy(y, x, sizeof y);
	tern_float_kernels_get(TERN_ISA_AUTO)->rmsnorm(y, w, N, 1e-5f, y);
	TT_CHECK(memcmp(y, out, sizeof y) == 0);
}

static void test_rope(void)
{
	enum { HD = 128, NPOS = 4096, NH = 3 };
	const float theta = 500000.0f;
	float *cs = malloc(sizeof(float) * NPOS * HD);
	TT_REQUIRE(cs);
	tern_rope_table(theta, HD, NPOS, cs);
	const int poss[] = {0, 1, 7, 100, 4095};
	double worst = 0;
	for (size_t pi = 0; pi < sizeof poss / sizeof poss[0]; pi++) {
		const int pos = poss[pi];
		float x[NH * HD], orig[NH * HD];
		for (int i = 0; i < NH * HD; i++)
			orig[i] = x[i] = rng_f(-2, 2);
		tern_float_kernels_get(TERN_ISA_AUTO)->rope(x, NH, HD, cs + (size_t)pos * HD);
		for (int h = 0; h < NH; h++)
			for (int j = 0; j < HD / 2; j++) {
				const double ang = pos * pow(theta, -2.0 * j / HD);
				const double a = orig[h * HD + j], b = orig[h * HD + j + HD / 2];
				const double r0 = a * cos(ang) - b * sin(ang), r1 = a * sin(ang) + b * cos(ang);
				const double e0 = fabs(x[h * HD + j] - r0), e1 = fabs(x[h * HD + j + HD / 2] - r1);
				worst = e0 > worst ? e0 : worst;
				worst = e1 > worst ? e1 : worst;
			}
		if (pos == 0)
			TT_CHECK(memcmp(x, orig, sizeof x) == 0);
	}
	TT_CHECKF(worst < 2e-6, "rope worst absolute error %g (inputs |x| <= 2)", worst);
	free(cs);
}

static void test_softmax_relu2_dot(void)
{
	enum { N = 777 };
	float x[N], g[N], u[N], out[N];
	double ref[N], mx = -1e30, sum = 0;
	for (int i = 0; i < N; i++) {
		x[i] = rng_f(-20, 20);
		mx = x[i] > mx ? x[i] : mx;
	}
	for (int i = 0; i < N; i++)
		sum += ref[i] = exp(x[i] - mx);
	tern_float_kernels_get(TERN_ISA_AUTO)->softmax(x, N);
	double worst = 0, total = 0;
	for (int i = 0; i < N; i++) {
		const double e = fabs(x[i] - ref[i] / sum) / (ref[i] / sum);
		worst = e > worst ? e : worst;
		total += x[i];
	}
	TT_CHECKF(worst < 1e-5, "softmax worst relative error %g", worst);
	TT_CHECK(fabs(total - 1.0) < 1e-5);

	for (int i = 0; i < N; i++) {
		g[i] = rng_f(-3, 3);
		u[i] = rng_f(-3, 3);
	}
	tern_float_kernels_get(TERN_ISA_REF)->relu2(g, u, N, out);
	worst = 0;
	for (int i = 0; i < N; i++) {
		const double r = g[i] > 0 ? (double)g[i] * g[i] * u[i] : 0.0;
		const double e = fabs(out[i] - r) / (fabs(r) + 1e-30);
		if (r == 0.0)
			TT_CHECK(out[i] == 0.0f);
		else
			worst = e > worst ? e : worst;
	}
	TT_CHECKF(worst < 3e-7, "relu2 worst relative error %g", worst);

	for (int n = 1; n < 70; n += 13) {
		double d = 0, mag = 0;
		for (int i = 0; i < n; i++) {
			d += (double)g[i] * u[i];
			mag += fabs((double)g[i] * u[i]);
		}
		const float f = tern_engine_dot(g, u, n);
		TT_CHECKF(fabs(f - d) <= 1e-6 * mag, "dot n=%d: %g vs %g", n, (double)f, d);
	}
}

/* ---- a small model ---------------------------------------------------------- */

typedef struct {
	tern_hparams hp;
	uint64_t seed;
	uint16_t *emb; /* (n_vocab, n_embd) f16 */
	float *onorm;  /* (n_embd) */
	tern_head *head;
} tmodel;

/* The architecture the tmodel cases run (test_llama_arch switches it). */
static const char *small_arch = "bitnet-b1.58";

static void small_hparams(tern_hparams *hp)
{
	memset(hp, 0, sizeof *hp);
	snprintf(hp->arch, sizeof hp->arch, "%s", small_arch);
	hp->n_embd = 192;
	hp->n_layer = 2;
	hp->n_head = 3;
	hp->n_head_kv = 1;
	hp->head_dim = 64;
	hp->n_ff = 320;
	hp->n_vocab = 300;
	hp->n_ctx_train = 256;
	hp->rope_theta = 10000.0f;
	hp->norm_eps = 1e-5f;
	hp->tied_embeddings = 1;
	hp->bos_id = 1;
	hp->eos_id = 2;
	hp->eot_id = -1;
}

static int tmodel_init(tmodel *m, uint64_t seed)
{
	memset(m, 0, sizeof *m);
	small_hparams(&m->hp);
	m->seed = seed;
	const size_t ne = (size_t)m->hp.n_vocab * m->hp.n_embd;
	m->emb = malloc(ne * 2);
	m->onorm = malloc(sizeof(float) * m->hp.n_embd);
	if (!m->emb || !m->onorm)
		return -1;
	for (size_t i = 0; i < ne; i++)
		m->emb[i] = tern_f32_to_f16(rng_f(-1, 1));
	for (int i = 0; i < m->hp.n_embd; i++)
		m->onorm[i] = rng_f(0.8f, 1.2f);
	tern_head_config hc = {m->hp.n_vocab, m->hp.n_embd,   TERN_DTYPE_F16, m->emb, 0,
			       m->onorm,      m->hp.norm_eps, TERN_ISA_AUTO, TERN_HEAD_FILE, NULL, TERN_DTYPE_NONE, NULL, 0, 0};
	return tern_head_create(&hc, &m->head, NULL);
}

static void tmodel_free(tmodel *m)
{
	tern_head_free(m->head);
	free(m->emb);
	free(m->onorm);
}

static int build_layers(const tmodel *m, tern_packing p, tern_layers *w)
{
	uint64_t seed = m->seed;
	tern_layer_source src = tern_layers_random_source(&seed);
	tern_err err = {0};
	const int rc = tern_layers_build(w, &m->hp, 0, m->hp.n_layer, p, &src, &err);
	if (rc < 0)
		fprintf(stderr, "build: %s\n", err.msg);
	return rc;
}

/* The KV cache type make_engine gives every engine: the default (f16) unless
 * a case runs the others. */
static int g_kv_type = TERN_KV_TYPE_DEFAULT;
/* and its paging: positions per block and pool blocks (0: the defaults) */
static int g_kv_block, g_kv_blocks;

static int make_engine(const tern_layers *w, int n_slots, int max_rows, tern_isa isa, tern_pool *pool, tern_engine **e)
{
	tern_engine_config cfg = {.n_slots = n_slots,
				  .n_ctx = 128,
				  .max_rows = max_rows,
				  .isa = isa,
				  .pool = pool,
				  .kv_type = g_kv_type,
				  .kv_block = g_kv_block,
				  .kv_blocks = g_kv_blocks};
	tern_err err = {0};
	const int rc = tern_engine_create(w, &cfg, e, &err);
	if (rc < 0)
		fprintf(stderr, "engine: %s\n", err.msg);
	return rc;
}

/* Runs tokens[0..n) of one sequence on slot through the engine in chunks of
 * `chunk` rows; out_h (n, n_embd) final hidden states, out_l (n, n_vocab). */
static int run_seq(tmodel *m, tern_engine *e, int slot, const int32_t *tokens, int n, int chunk, float *out_h,
		   float *out_l)
{
	const int d = m->hp.n_embd;
	tern_err err = {0};
	tern_row rows[64];
	const int start = tern_kv_slot_len(tern_engine_kv(e), slot);
	for (int i = 0; i < n; i += chunk) {
		const int c = n - i < chunk ? n - i : chunk;
		float *h = out_h + (size_t)i * d;
		if (tern_head_embed(m->head, tokens + i, c, h, &err) < 0)
			return -1;
		for (int j = 0; j < c; j++) {
			rows[j].slot = slot;
			rows[j].pos = start + i + j;
		}
		if (tern_engine_forward(e, rows, c, h, &err) < 0) {
			fprintf(stderr, "forward: %s\n", err.msg);
			return -1;
		}
	}
	return tern_head_logits(m->head, NULL, out_h, n, out_l, &err);
}

enum { SEQ = 23 };

static void seq_tokens(int32_t *t, int n, int vocab, uint64_t salt)
{
	uint64_t s = salt;
	for (int i = 0; i < n; i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		t[i] = (int32_t)((s >> 33) % (uint64_t)vocab);
	}
}

static void test_batch_invariance(void)
{
	tmodel m;
	TT_REQUIRE(tmodel_init(&m, 42) == 0);
	tern_layers w;
	TT_REQUIRE(build_layers(&m, TERN_PACK_TL2, &w) == 0);
	const int d = m.hp.n_embd, V = m.hp.n_vocab;
	int32_t tok[SEQ];
	seq_tokens(tok, SEQ, V, 7);
	float *h_ref = malloc(sizeof(float) * SEQ * d), *l_ref = malloc(sizeof(float) * SEQ * V);
	float *h = malloc(sizeof(float) * SEQ * d), *l = malloc(sizeof(float) * SEQ * V);
	TT_REQUIRE(h_ref && l_ref && h && l);

	/* alone, prompt in one piece */
	tern_engine *e = NULL;
	int slot;
	TT_REQUIRE(make_engine(&w, 1, 64, TERN_ISA_AUTO, NULL, &e) == 0);
	TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e), &slot, NULL) == 0);
	TT_REQUIRE(run_seq(&m, e, slot, tok, SEQ, SEQ, h_ref, l_ref) == 0);
	tern_engine_free(e);
	int finite = 1;
	for (int i = 0; i < SEQ * V; i++)
		finite &= isfinite(l_ref[i]) != 0;
	TT_CHECK(finite);

	/* chunked 1, 3, 7 (the engine's own split by max_rows = 5 as well) */
	const int chunks[] = {1, 3, 7};
	for (int ci = 0; ci < 3; ci++) {
		TT_REQUIRE(make_engine(&w, 1, 5, TERN_ISA_AUTO, NULL, &e) == 0);
		TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e), &slot, NULL) == 0);
		TT_REQUIRE(run_seq(&m, e, slot, tok, SEQ, chunks[ci], h, l) == 0);
		TT_CHECKF(memcmp(h, h_ref, sizeof(float) * SEQ * d) == 0, "hidden differs, chunk %d", chunks[ci]);
		TT_CHECKF(memcmp(l, l_ref, sizeof(float) * SEQ * V) == 0, "logits differ, chunk %d", chunks[ci]);
		tern_engine_free(e);
	}

	/* inside a batch of 16 other sequences at other positions: each step has
	 * a chunk of the target (sizes cycling 1..4) plus one row of each other */
	enum { NO = 16 };
	TT_REQUIRE(make_engine(&w, NO + 1, 64, TERN_ISA_AUTO, NULL, &e) == 0);
	int oslot[NO], olen[NO], tslot;
	int32_t otok[NO][48];
	float *bh = malloc(sizeof(float) * 64 * d);
	TT_REQUIRE(bh);
	for (int o = 0; o < NO; o++) {
		TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e), &oslot[o], NULL) == 0);
		seq_tokens(otok[o], 48, V, 100 + (uint64_t)o);
		olen[o] = 0;
	}
	/* give the others different prefix lengths first */
	for (int o = 0; o < NO; o++) {
		const int pre = o;
		if (!pre)
			continue;
		tern_row rows[16];
		TT_REQUIRE(tern_head_embed(m.head, otok[o], pre, bh, NULL) == 0);
		for (int j = 0; j < pre; j++)
			rows[j] = (tern_row){oslot[o], j};
		TT_REQUIRE(tern_engine_forward(e, rows, pre, bh, NULL) == 0);
		olen[o] = pre;
	}
	TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e), &tslot, NULL) == 0);
	int done = 0, step = 0;
	while (done < SEQ) {
		tern_row rows[64];
		int32_t bt[64];
		int n = 0;
		int c = 1 + step % 4;
		c = c > SEQ - done ? SEQ - done : c;
		/* the target's rows go in the middle of the batch */
		for (int o = 0; o < NO / 2; o++, n++) {
			rows[n] = (tern_row){oslot[o], olen[o]};
			bt[n] = otok[o][olen[o]];
		}
		const int tfirst = n;
		for (int j = 0; j < c; j++, n++) {
			rows[n] = (tern_row){tslot, done + j};
			bt[n] = tok[done + j];
		}
		for (int o = NO / 2; o < NO; o++, n++) {
			rows[n] = (tern_row){oslot[o], olen[o]};
			bt[n] = otok[o][olen[o]];
		}
		TT_REQUIRE(tern_head_embed(m.head, bt, n, bh, NULL) == 0);
		TT_REQUIRE(tern_engine_forward(e, rows, n, bh, NULL) == 0);
		memcpy(h + (size_t)done * d, bh + (size_t)tfirst * d, sizeof(float) * c * d);
		for (int o = 0; o < NO; o++)
			olen[o]++;
		done += c;
		step++;
	}
	TT_REQUIRE(tern_head_logits(m.head, NULL, h, SEQ, l, NULL) == 0);
	TT_CHECK(memcmp(h, h_ref, sizeof(float) * SEQ * d) == 0);
	TT_CHECK(memcmp(l, l_ref, sizeof(float) * SEQ * V) == 0);
	tern_engine_free(e);

	free(bh);
	free(h_ref);
	free(l_ref);
	free(h);
	free(l);
	tern_layers_free(&w);
	tmodel_free(&m);
}

/* Two sequences interleaved in one engine equal each run alone. */
static void test_slot_isolation(void)
{
	tmodel m;
	TT_REQUIRE(tmodel_init(&m, 5) == 0);
	tern_layers w;
	TT_REQUIRE(build_layers(&m, TERN_PACK_I2S, &w) == 0);
	const int d = m.hp.n_embd, V = m.hp.n_vocab;
	int32_t ta[SEQ], tb[SEQ];
	seq_tokens(ta, SEQ, V, 1);
	seq_tokens(tb, SEQ, V, 2);
	float *ha = malloc(sizeof(float) * SEQ * d), *hb = malloc(sizeof(float) * SEQ * d);
	float *la = malloc(sizeof(float) * SEQ * V), *bh = malloc(sizeof(float) * 2 * SEQ * d);
	float *ab = malloc(sizeof(float) * SEQ * d), *bb = malloc(sizeof(float) * SEQ * d);
	TT_REQUIRE(ha && hb && la && bh && ab && bb);
	tern_engine *e;
	int s;
	TT_REQUIRE(make_engine(&w, 1, 64, TERN_ISA_AUTO, NULL, &e) == 0);
	TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e), &s, NULL) == 0);
	TT_REQUIRE(run_seq(&m, e, s, ta, SEQ, SEQ, ha, la) == 0);
	tern_engine_free(e);
	TT_REQUIRE(make_engine(&w, 1, 64, TERN_ISA_AUTO, NULL, &e) == 0);
	TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e), &s, NULL) == 0);
	TT_REQUIRE(run_seq(&m, e, s, tb, SEQ, SEQ, hb, la) == 0);
	tern_engine_free(e);

	/* both in one batch, alternating rows, both prompts whole */
	TT_REQUIRE(make_engine(&w, 2, 64, TERN_ISA_AUTO, NULL, &e) == 0);
	int sa, sb;
	TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e), &sa, NULL) == 0);
	TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e), &sb, NULL) == 0);
	TT_CHECK(sa != sb);
	tern_row rows[2 * SEQ];
	int32_t bt[2 * SEQ];
	for (int i = 0; i < SEQ; i++) {
		rows[2 * i] = (tern_row){sa, i};
		rows[2 * i + 1] = (tern_row){sb, i};
		bt[2 * i] = ta[i];
		bt[2 * i + 1] = tb[i];
	}
	TT_REQUIRE(tern_head_embed(m.head, bt, 2 * SEQ, bh, NULL) == 0);
	TT_REQUIRE(tern_engine_forward(e, rows, 2 * SEQ, bh, NULL) == 0);
	for (int i = 0; i < SEQ; i++) {
		memcpy(ab + (size_t)i * d, bh + (size_t)(2 * i) * d, sizeof(float) * d);
		memcpy(bb + (size_t)i * d, bh + (size_t)(2 * i + 1) * d, sizeof(float) * d);
	}
	TT_CHECK(memcmp(ab, ha, sizeof(float) * SEQ * d) == 0);
	TT_CHECK(memcmp(bb, hb, sizeof(float) * SEQ * d) == 0);
	TT_CHECK(memcmp(ha, hb, sizeof(float) * SEQ * d) != 0);
	TT_EQ_INT(tern_kv_slot_len(tern_engine_kv(e), sa), SEQ);
	tern_engine_free(e);
	free(ha);
	free(hb);
	free(la);
	free(bh);
	free(ab);
	free(bb);
	tern_layers_free(&w);
	tmodel_free(&m);
}

/* Every packing x every available ISA x 1 or 2 threads: bit-identical. */
static void test_packings_isas_threads(void)
{
	tmodel m;
	TT_REQUIRE(tmodel_init(&m, 99) == 0);
	const int d = m.hp.n_embd, V = m.hp.n_vocab;
	int32_t tok[SEQ];
	seq_tokens(tok, SEQ, V, 3);
	float *h_ref = malloc(sizeof(float) * SEQ * d), *h = malloc(sizeof(float) * SEQ * d);
	float *l = malloc(sizeof(float) * SEQ * V);
	TT_REQUIRE(h_ref && h && l);
	tern_pool *pool = NULL;
	TT_REQUIRE(tern_pool_create(2, NULL, 0, &pool, NULL) == 0);
	int have_ref = 0, combos = 0;
	for (int p = 0; p < TERN_PACK_COUNT; p++) {
		tern_layers w;
		TT_REQUIRE(build_layers(&m, (tern_packing)p, &w) == 0);
		for (int isa = 0; isa < TERN_ISA_COUNT; isa++) {
			if (!tern_isa_available((tern_isa)isa)) {
				TT_NOTE_SKIP("%s", tern_isa_name((tern_isa)isa));
				continue;
			}
			for (int th = 0; th < 2; th++) {
				tern_engine *e;
				int s;
				TT_REQUIRE(make_engine(&w, 1, 8, (tern_isa)isa, th ? pool : NULL, &e) == 0);
				TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e), &s, NULL) == 0);
				/* prefill chunk of 8 rows then decode one at a time */
				TT_REQUIRE(run_seq(&m, e, s, tok, 16, 16, h, l) == 0);
				TT_REQUIRE(run_seq(&m, e, s, tok + 16, SEQ - 16, 1, h + 16 * d, l) == 0);
				tern_engine_free(e);
				if (!have_ref) {
					memcpy(h_ref, h, sizeof(float) * SEQ * d);
					have_ref = 1;
				} else {
					TT_CHECKF(memcmp(h, h_ref, sizeof(float) * SEQ * d) == 0,
						  "packing %s isa %s threads %d differs", tern_packing_name(p),
						  tern_isa_name(isa), th + 1);
				}
				combos++;
			}
		}
		tern_layers_free(&w);
	}
	fprintf(stderr, "  %d packing x ISA x thread combinations agree\n", combos);
	TT_CHECK(combos >= 6);
	tern_pool_free(pool);
	free(h_ref);
	free(h);
	free(l);
	tmodel_free(&m);
}

/* A freed slot can be reused and carries nothing over; truncation rewinds. */
static void test_slot_reuse_truncate(void)
{
	tmodel m;
	TT_REQUIRE(tmodel_init(&m, 11) == 0);
	tern_layers w;
	TT_REQUIRE(build_layers(&m, TERN_PACK_TL1, &w) == 0);
	const int d = m.hp.n_embd, V = m.hp.n_vocab;
	int32_t ta[SEQ], tb[SEQ];
	seq_tokens(ta, SEQ, V, 21);
	seq_tokens(tb, SEQ, V, 22);
	float *h1 = malloc(sizeof(float) * SEQ * d), *h2 = malloc(sizeof(float) * SEQ * d);
	float *l = malloc(sizeof(float) * SEQ * V);
	TT_REQUIRE(h1 && h2 && l);

	tern_engine *e;
	TT_REQUIRE(make_engine(&w, 2, 16, TERN_ISA_AUTO, NULL, &e) == 0);
	tern_kv_cache *kv = tern_engine_kv(e);
	int s0, s1, s2;
	TT_REQUIRE(tern_kv_slot_alloc(kv, &s0, NULL) == 0);
	TT_REQUIRE(tern_kv_slot_alloc(kv, &s1, NULL) == 0);
	tern_err err = {0};
	TT_EQ_INT(tern_kv_slot_alloc(kv, &s2, &err), TERN_EFULL);
	TT_REQUIRE(run_seq(&m, e, s0, ta, SEQ, 4, h1, l) == 0);
	TT_REQUIRE(tern_kv_slot_free(kv, s0, NULL) == 0);
	TT_EQ_INT(tern_kv_slot_free(kv, s0, &err), TERN_EINVAL);
	TT_EQ_INT(tern_kv_slot_len(kv, s0), -1);
	TT_REQUIRE(tern_kv_slot_alloc(kv, &s2, NULL) == 0);
	TT_EQ_INT(s2, s0);
	TT_EQ_INT(tern_kv_slot_len(kv, s2), 0);
	TT_REQUIRE(run_seq(&m, e, s2, tb, SEQ, 5, h1, l) == 0);
	tern_engine_free(e);
	TT_REQUIRE(make_engine(&w, 1, 16, TERN_ISA_AUTO, NULL, &e) == 0);
	TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e), &s0, NULL) == 0);
	TT_REQUIRE(run_seq(&m, e, s0, tb, SEQ, SEQ, h2, l) == 0);
	TT_CHECK(memcmp(h1, h2, sizeof(float) * SEQ * d) == 0);

	/* rewind: ta[0..10) + tb[10..SEQ) equals a fresh run of that sequence */
	kv = tern_engine_kv(e);
	TT_REQUIRE(tern_kv_slot_truncate(kv, s0, 10, NULL) == 0);
	TT_EQ_INT(tern_kv_slot_truncate(kv, s0, 11, &err), TERN_EINVAL);
	TT_REQUIRE(tern_kv_slot_truncate(kv, s0, 0, NULL) == 0);
	TT_REQUIRE(run_seq(&m, e, s0, ta, 10, 10, h1, l) == 0);
	TT_REQUIRE(run_seq(&m, e, s0, tb + 10, SEQ - 10, 3, h1 + 10 * d, l) == 0);
	tern_engine_free(e);
	int32_t mix[SEQ];
	memcpy(mix, ta, 10 * sizeof(int32_t));
	memcpy(mix + 10, tb + 10, (SEQ - 10) * sizeof(int32_t));
	TT_REQUIRE(make_engine(&w, 1, 16, TERN_ISA_AUTO, NULL, &e) == 0);
	TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e), &s0, NULL) == 0);
	TT_REQUIRE(run_seq(&m, e, s0, mix, SEQ, 7, h2, l) == 0);
	TT_CHECK(memcmp(h1, h2, sizeof(float) * SEQ * d) == 0);
	/* a row at position 0 restarts the slot without a truncate (what a
	 * pipeline stage does when the coordinator reuses a slot) */
	float *h3 = malloc(sizeof(float) * SEQ * d);
	TT_REQUIRE(h3);
	int32_t t0 = tb[0];
	TT_REQUIRE(tern_head_embed(m.head, &t0, 1, h3, NULL) == 0);
	tern_row r0 = {s0, 0};
	TT_REQUIRE(tern_engine_forward(e, &r0, 1, h3, NULL) == 0);
	TT_EQ_INT(tern_kv_slot_len(tern_engine_kv(e), s0), 1);
	TT_REQUIRE(run_seq(&m, e, s0, tb + 1, SEQ - 1, 6, h3 + d, l) == 0);
	TT_REQUIRE(tern_engine_forward(e, &r0, 0, h3, NULL) == 0);
	tern_engine_free(e);
	TT_REQUIRE(make_engine(&w, 1, 16, TERN_ISA_AUTO, NULL, &e) == 0);
	TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e), &s0, NULL) == 0);
	TT_REQUIRE(run_seq(&m, e, s0, tb, SEQ, SEQ, h2, l) == 0);
	TT_CHECK(memcmp(h3, h2, sizeof(float) * SEQ * d) == 0);
	free(h3);
	tern_engine_free(e);
	free(h1);
	free(h2);
	free(l);
	tern_layers_free(&w);
	tmodel_free(&m);
}

static void test_bad_batches(void)
{
	tmodel m;
	TT_REQUIRE(tmodel_init(&m, 3) == 0);
	tern_layers w;
	TT_REQUIRE(build_layers(&m, TERN_PACK_I2S, &w) == 0);
	tern_engine *e;
	TT_REQUIRE(make_engine(&w, 2, 8, TERN_ISA_AUTO, NULL, &e) == 0);
	tern_kv_cache *kv = tern_engine_kv(e);
	int s;
	TT_REQUIRE(tern_kv_slot_alloc(kv, &s, NULL) == 0);
	float h[4 * 192] = {0};
	tern_err err = {0};
	tern_row gap[1] = {{s, 1}};
	TT_EQ_INT(tern_engine_forward(e, gap, 1, h, &err), TERN_EINVAL);
	tern_row unalloc[1] = {{1, 0}};
	TT_EQ_INT(tern_engine_forward(e, unalloc, 1, h, &err), TERN_EINVAL);
	tern_row badslot[1] = {{7, 0}};
	TT_EQ_INT(tern_engine_forward(e, badslot, 1, h, &err), TERN_EINVAL);
	tern_row skip[2] = {{s, 0}, {s, 2}};
	TT_EQ_INT(tern_engine_forward(e, skip, 2, h, &err), TERN_EINVAL);
	tern_row past[1] = {{s, 128}};
	TT_EQ_INT(tern_engine_forward(e, past, 1, h, &err), TERN_EINVAL);
	TT_EQ_INT(tern_kv_slot_len(kv, s), 0);
	tern_row ok[2] = {{s, 0}, {s, 1}};
	TT_EQ_INT(tern_engine_forward(e, ok, 2, h, &err), 0);
	TT_EQ_INT(tern_kv_slot_len(kv, s), 2);
	tern_engine_free(e);
	tern_engine_free(NULL);
	tern_kv_free(NULL);
	tern_layers_free(NULL);

	/* shape mismatch between layers and hparams is refused */
	tern_layers bad = w;
	bad.hp.n_ff = 256;
	tern_engine_config cfg = {
	    .n_slots = 1, .n_ctx = 8, .max_rows = 4, .isa = TERN_ISA_AUTO, .kv_type = TERN_DTYPE_F16};
	TT_EQ_INT(tern_engine_create(&bad, &cfg, &e, &err), TERN_EINVAL);
	TT_CHECK(e == NULL);
	tern_layers_free(&w);
	tmodel_free(&m);
}

/* Layers split over two engines (pipeline stages [0,1) and [1,3)) run one
 * after the other give the same hidden states as one engine of all layers. */
static void test_stage_split(void)
{
	tmodel m;
	TT_REQUIRE(tmodel_init(&m, 8) == 0);
	m.hp.n_layer = 3;
	uint64_t seed = 8;
	tern_layer_source src = tern_layers_random_source(&seed);
	tern_layers all, s0, s1;
	TT_REQUIRE(tern_layers_build(&all, &m.hp, 0, 3, TERN_PACK_TL2, &src, NULL) == 0);
	TT_REQUIRE(tern_layers_build(&s0, &m.hp, 0, 1, TERN_PACK_TL2, &src, NULL) == 0);
	TT_REQUIRE(tern_layers_build(&s1, &m.hp, 1, 2, TERN_PACK_I2S, &src, NULL) == 0);
	tern_engine *ea, *e0, *e1;
	TT_REQUIRE(make_engine(&all, 1, 8, TERN_ISA_AUTO, NULL, &ea) == 0);
	TT_REQUIRE(make_engine(&s0, 1, 8, TERN_ISA_AUTO, NULL, &e0) == 0);
	TT_REQUIRE(make_engine(&s1, 1, 8, TERN_ISA_AUTO, NULL, &e1) == 0);
	int sa, s0s, s1s;
	TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(ea), &sa, NULL) == 0);
	TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e0), &s0s, NULL) == 0);
	TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e1), &s1s, NULL) == 0);
	const int d = m.hp.n_embd;
	int32_t tok[SEQ];
	seq_tokens(tok, SEQ, m.hp.n_vocab, 9);
	float *ha = malloc(sizeof(float) * SEQ * d), *hs = malloc(sizeof(float) * SEQ * d);
	TT_REQUIRE(ha && hs);
	TT_REQUIRE(tern_head_embed(m.head, tok, SEQ, ha, NULL) == 0);
	memcpy(hs, ha, sizeof(float) * SEQ * d);
	tern_row rows[SEQ];
	for (int i = 0; i < SEQ; i++)
		rows[i] = (tern_row){0, i};
	TT_REQUIRE(tern_engine_forward(ea, rows, SEQ, ha, NULL) == 0);
	/* stage 0 gets the prompt in pieces of 5, stage 1 in pieces of 9 */
	for (int i = 0; i < SEQ; i += 5)
		TT_REQUIRE(tern_engine_forward(e0, rows + i, SEQ - i < 5 ? SEQ - i : 5, hs + (size_t)i * d, NULL) == 0);
	for (int i = 0; i < SEQ; i += 9)
		TT_REQUIRE(tern_engine_forward(e1, rows + i, SEQ - i < 9 ? SEQ - i : 9, hs + (size_t)i * d, NULL) == 0);
	TT_CHECK(memcmp(ha, hs, sizeof(float) * SEQ * d) == 0);
	tern_engine_free(ea);
	tern_engine_free(e0);
	tern_engine_free(e1);
	tern_layers_free(&all);
	tern_layers_free(&s0);
	tern_layers_free(&s1);
	free(ha);
	free(hs);
	tmodel_free(&m);
}

/* A source that fails on one projection, to check error propagation. */
static int failing_proj(void *ctx, int layer, tern_proj p, int m, int k, int8_t *w, float *scales, int max_groups,
			int *group_rows, tern_err *err)
{
	if (layer == 1 && p == TERN_PROJ_UP)
		return TERN_ERR(err, TERN_EFORMAT, "synthetic failure at layer %d", layer);
	memset(w, 0, (size_t)m * (size_t)k);
	scales[0] = 1.0f;
	*group_rows = m;
	return 0;
}

static int ones_norm(void *ctx, int layer, tern_norm_kind n, int width, float *out, tern_err *err)
{
	for (int i = 0; i < width; i++)
		out[i] = 1.0f;
	return 0;
}

/* The threaded builder gives the same packed bytes; source errors propagate. */
static void test_builder(void)
{
	tern_hparams hp;
	small_hparams(&hp);
	hp.n_layer = 3;
	uint64_t seed = 77;
	tern_layer_source src = tern_layers_random_source(&seed);
	tern_pool *pool = NULL;
	TT_REQUIRE(tern_pool_create(2, NULL, 0, &pool, NULL) == 0);
	tern_layers a, b;
	TT_REQUIRE(tern_layers_build(&a, &hp, 0, 3, TERN_PACK_TL2, &src, NULL) == 0);
	TT_REQUIRE(tern_layers_build_mt(&b, &hp, 0, 3, TERN_PACK_TL2, &src, pool, NULL) == 0);
	int same = 1;
	for (int l = 0; l < 3; l++) {
		for (int p = 0; p < TERN_PROJ_COUNT; p++) {
			const tern_matrix *x = &a.l[l].proj[p], *y = &b.l[l].proj[p];
			same &= x->data_bytes == y->data_bytes && memcmp(x->data, y->data, x->data_bytes) == 0 &&
				x->n_groups == y->n_groups &&
				memcmp(x->scales, y->scales, sizeof(float) * x->n_groups) == 0;
		}
		for (int q = 0; q < TERN_LAYER_NORMS; q++)
			same &= !a.l[l].norm[q] == !b.l[l].norm[q] &&
				(!a.l[l].norm[q] || memcmp(a.l[l].norm[q], b.l[l].norm[q],
							   sizeof(float) * tern_norm_len(&hp, (tern_norm_kind)q)) == 0);
	}
	TT_CHECK(same);
	TT_CHECK(tern_layers_bytes(&a) > 0 && tern_layers_bytes(&a) == tern_layers_bytes(&b));
	/* a sub-range holds the same data as the matching layers of the whole */
	tern_layers c;
	TT_REQUIRE(tern_layers_build(&c, &hp, 1, 2, TERN_PACK_TL2, &src, NULL) == 0);
	TT_EQ_INT(c.first, 1);
	TT_CHECK(memcmp(c.l[0].proj[TERN_PROJ_DOWN].data, a.l[1].proj[TERN_PROJ_DOWN].data,
			a.l[1].proj[TERN_PROJ_DOWN].data_bytes) == 0);
	tern_layers_free(&c);
	tern_layers_free(&a);
	tern_layers_free(&b);

	const tern_layer_source bad = {failing_proj, ones_norm, NULL, NULL};
	for (int th = 0; th < 2; th++) {
		tern_err err = {0};
		TT_EQ_INT(tern_layers_build_mt(&a, &hp, 0, 3, TERN_PACK_I2S, &bad, th ? pool : NULL, &err),
			  TERN_EFORMAT);
		TT_CHECK(strstr(err.msg, "synthetic failure") != NULL);
		TT_CHECK(a.l == NULL && a.n == 0);
	}
	tern_err err = {0};
	TT_EQ_INT(tern_layers_build(&a, &hp, 2, 2, TERN_PACK_I2S, &src, &err), TERN_EINVAL);
	tern_pool_free(pool);
}

/* ---- LM head ------------------------------------------------------------------ */

static void test_head(void)
{
	enum { V = 37, D = 203, NB = 5 };
	uint16_t e16[V * D], eb16[V * D];
	float e32[V * D], norm[D], hid[NB * D];
	for (int i = 0; i < V * D; i++) {
		e16[i] = tern_f32_to_f16(rng_f(-1, 1));
		eb16[i] = tern_f32_to_bf16(rng_f(-1, 1));
		e32[i] = rng_f(-1, 1);
	}
	for (int i = 0; i < D; i++)
		norm[i] = rng_f(0.5f, 1.5f);
	for (int i = 0; i < NB * D; i++)
		hid[i] = rng_f(-4, 4);
	const void *embs[3] = {e32, e16, eb16};
	static float lg[3][NB * V], lg1[NB * V];
	tern_pool *pool = NULL;
	TT_REQUIRE(tern_pool_create(2, NULL, 0, &pool, NULL) == 0);
	for (int dt = 0; dt < 3; dt++) {
		int first = 1;
		for (int isa = 0; isa < TERN_ISA_COUNT; isa++) {
			if (!tern_isa_available((tern_isa)isa)) {
				TT_NOTE_SKIP("head %s", tern_isa_name((tern_isa)isa));
				continue;
			}
			tern_head_config hc = {V, D, (tern_dtype)dt, embs[dt], 0, norm, 1e-5f, (tern_isa)isa, TERN_HEAD_FILE, NULL, TERN_DTYPE_NONE, NULL, 0, 0};
			tern_head *h;
			TT_REQUIRE(tern_head_create(&hc, &h, NULL) == 0);
			float *dst = first ? lg[dt] : lg1;
			TT_REQUIRE(tern_head_logits(h, first ? NULL : pool, hid, NB, dst, NULL) == 0);
			if (!first)
				TT_CHECKF(memcmp(lg1, lg[dt], sizeof lg1) == 0, "dtype %d isa %s differs", dt,
					  tern_isa_name((tern_isa)isa));
			/* one row alone equals the same row inside the batch */
			float one[V];
			TT_REQUIRE(tern_head_logits(h, NULL, hid + 3 * D, 1, one, NULL) == 0);
			TT_CHECK(memcmp(one, dst + 3 * V, sizeof one) == 0);
			/* embedding rows convert exactly */
			float row[D];
			int32_t t = 17;
			TT_REQUIRE(tern_head_embed(h, &t, 1, row, NULL) == 0);
			const float want = dt == 0 ? e32[17 * D + 5] : dt == 2 ? tern_bf16_to_f32(eb16[17 * D + 5]) : 0;
			if (dt != 1)
				TT_CHECK(row[5] == want);
			tern_err err = {0};
			t = V;
			TT_EQ_INT(tern_head_embed(h, &t, 1, row, &err), TERN_EINVAL);
			tern_head_free(h);
			first = 0;
		}
		/* against a double-precision dot product of the same normed row */
		double worst = 0;
		for (int j = 0; j < NB; j++) {
			double ss = 0;
			for (int i = 0; i < D; i++)
				ss += (double)hid[j * D + i] * hid[j * D + i];
			const double s = 1.0 / sqrt(ss / D + 1e-5);
			for (int v = 0; v < V; v++) {
				double dot = 0, mag = 0;
				for (int i = 0; i < D; i++) {
					double ev;
					if (dt == 0) {
						ev = e32[v * D + i];
					} else if (dt == 2) {
						ev = tern_bf16_to_f32(eb16[v * D + i]);
					} else {
						const uint16_t hh = e16[v * D + i];
						const int ex = (hh >> 10) & 31, man = hh & 1023;
						ev = ldexp(1.0 + man / 1024.0, ex - 15) * ((hh & 0x8000) ? -1 : 1);
						if (ex == 0)
							ev = ldexp(man / 1024.0, -14) * ((hh & 0x8000) ? -1 : 1);
					}
					const double x = hid[j * D + i] * s * norm[i];
					dot += ev * x;
					mag += fabs(ev * x);
				}
				const double e = fabs(lg[dt][j * V + v] - dot) / mag;
				worst = e > worst ? e : worst;
			}
		}
		TT_CHECKF(worst < 1e-6, "dtype %d: worst error %g of sum |terms|", dt, worst);
	}
	/* Untied: the logits read the output matrix (here e32), the lookup the
	 * embeddings (eb16): the logits are the tied F32 head's (checked against
	 * double above) bit for bit, the lookup converts eb16's rows, and the
	 * quantized head packs the output matrix, not the embeddings. */
	{
		tern_head_config uc = {V, D, TERN_DTYPE_BF16, eb16, 0, norm, 1e-5f, TERN_ISA_AUTO, TERN_HEAD_FILE, NULL,
				       TERN_DTYPE_F32, e32, 0, 0};
		const tern_head_config tc = {V, D, TERN_DTYPE_F32, e32, 0, norm, 1e-5f, TERN_ISA_AUTO, TERN_HEAD_FILE, NULL,
					     TERN_DTYPE_NONE, NULL, 0, 0};
		tern_head *u, *t;
		TT_REQUIRE(tern_head_create(&uc, &u, NULL) == 0 && tern_head_create(&tc, &t, NULL) == 0);
		TT_REQUIRE(tern_head_logits(u, pool, hid, NB, lg1, NULL) == 0);
		TT_CHECK(memcmp(lg1, lg[0], sizeof lg1) == 0);
		TT_EQ_INT((int)tern_head_bytes(u), V * D * 4);
		float row[D];
		const int32_t tok = 11;
		TT_REQUIRE(tern_head_embed(u, &tok, 1, row, NULL) == 0);
		TT_CHECK(row[7] == tern_bf16_to_f32(eb16[11 * D + 7]) && row[7] != e32[11 * D + 7]);
		TT_REQUIRE(tern_head_quantize(u, TERN_HEAD_Q8, pool, NULL) == 0 &&
			   tern_head_quantize(t, TERN_HEAD_Q8, NULL, NULL) == 0);
		size_t nu, nt;
		const void *pu = tern_head_packed(u, &nu), *pt = tern_head_packed(t, &nt);
		TT_CHECK(nu == nt && nu > 0 && memcmp(pu, pt, nu) == 0);
		uc.head_dtype = TERN_DTYPE_I8;
		tern_head *bad;
		TT_EQ_INT(tern_head_create(&uc, &bad, NULL), TERN_EINVAL);
		tern_head_free(u);
		tern_head_free(t);
	}
	/* known F16 encodings */
	const uint16_t codes[5] = {0x3c00, 0xc000, 0x0001, 0x7bff, 0x8000};
	const float vals[5] = {1.0f, -2.0f, 0x1p-24f, 65504.0f, -0.0f};
	float nrm1[5] = {1, 1, 1, 1, 1};
	tern_head_config hc = {5, 1, TERN_DTYPE_F16, codes, 0, nrm1, 1e-5f, TERN_ISA_AUTO, TERN_HEAD_FILE, NULL, TERN_DTYPE_NONE, NULL, 0, 0};
	tern_head *h;
	TT_REQUIRE(tern_head_create(&hc, &h, NULL) == 0);
	TT_EQ_INT(tern_head_isa(h), tern_isa_default()); /* AUTO follows TERN_KERNEL like the layers */
	for (int t = 0; t < 5; t++) {
		float f;
		TT_REQUIRE(tern_head_embed(h, &t, 1, &f, NULL) == 0);
		TT_CHECKF(f == vals[t] && signbit(f) == signbit(vals[t]), "f16 %04x -> %g", codes[t], (double)f);
	}
	tern_head_free(h);
	tern_head_free(NULL);
	tern_pool_free(pool);
}

/* The quantized LM heads (Q8, Q4): the same logits on every ISA, thread
 * count and batch size, close to the F16 head, switchable, loadable
 * pre-packed, and the agreement count is what the argmaxes say. */
static void test_head_quantized(void)
{
	enum { V = 301, D = 200, NB = 40 };
	uint16_t *e16 = malloc(sizeof(uint16_t) * V * D);
	float norm[D], *hid = malloc(sizeof(float) * NB * D);
	float *l16 = malloc(sizeof(float) * NB * V), *lq = malloc(sizeof(float) * NB * V);
	float *lqb = malloc(sizeof(float) * NB * V);
	TT_REQUIRE(e16 && hid && l16 && lq && lqb);
	for (int i = 0; i < V * D; i++)
		e16[i] = tern_f32_to_f16(rng_f(-1, 1));
	for (int i = 0; i < D; i++)
		norm[i] = rng_f(0.5f, 1.5f);
	for (int i = 0; i < NB * D; i++)
		hid[i] = rng_f(-4, 4);
	tern_pool *pool = NULL;
	TT_REQUIRE(tern_pool_create(2, NULL, 0, &pool, NULL) == 0);
	for (int f = TERN_HEAD_Q8; f <= TERN_HEAD_Q4; f++) {
		int first = 1;
		for (int isa = 0; isa < TERN_ISA_COUNT; isa++) {
			if (!tern_isa_available((tern_isa)isa)) {
				TT_NOTE_SKIP("head %s", tern_isa_name((tern_isa)isa));
				continue;
			}
			tern_head_config hc = {V, D, TERN_DTYPE_F16, e16, 0, norm, 1e-5f, (tern_isa)isa, TERN_HEAD_FILE, NULL, TERN_DTYPE_NONE, NULL, 0, 0};
			tern_head *h;
			TT_REQUIRE(tern_head_create(&hc, &h, NULL) == 0);
			const uint64_t b16 = tern_head_bytes(h);
			TT_REQUIRE(tern_head_logits(h, NULL, hid, NB, l16, NULL) == 0);
			tern_err err = {0};
			int agree = -1;
			TT_EQ_INT(tern_head_agreement(h, NULL, hid, NB, &agree, &err), TERN_ESTATE);
			TT_EQ_INT(tern_head_quantize(h, (tern_head_format)7, pool, &err), TERN_EINVAL);
			TT_REQUIRE(tern_head_quantize(h, (tern_head_format)f, pool, NULL) == 0);
			TT_EQ_INT(tern_head_active(h), f);
			/* 19 groups of 16 rows, 7 blocks of 34 (Q8) or 18 (Q4) bytes per row */
			TT_EQ_INT(tern_head_bytes(h), 19 * 16 * 7 * (f == TERN_HEAD_Q8 ? 34 : 18));
			TT_CHECK(tern_head_bytes(h) * (f == TERN_HEAD_Q8 ? 1 : 2) < b16);
			TT_REQUIRE(tern_head_logits(h, pool, hid, NB, first ? lq : lqb, NULL) == 0);
			if (!first)
				TT_CHECKF(memcmp(lq, lqb, sizeof(float) * NB * V) == 0, "%s head differs on %s",
					  tern_head_format_name((tern_head_format)f), tern_isa_name((tern_isa)isa));
			/* one row at a time, single-threaded: the same bits */
			for (int j = 0; j < NB; j++)
				TT_REQUIRE(tern_head_logits(h, NULL, hid + (size_t)j * D, 1, lqb + (size_t)j * V, NULL) == 0);
			TT_CHECK(memcmp(lq, lqb, sizeof(float) * NB * V) == 0);
			/* close to the F16 head: per row, relative to its largest logit */
			double worst = 0;
			int same = 0;
			for (int j = 0; j < NB; j++) {
				double mx = 0, df = 0;
				int a16 = 0, aq = 0;
				for (int v = 0; v < V; v++) {
					mx = fabs(l16[j * V + v]) > mx ? fabs(l16[j * V + v]) : mx;
					const double dd = fabs((double)lq[j * V + v] - l16[j * V + v]);
					df = dd > df ? dd : df;
					a16 = l16[j * V + v] > l16[j * V + a16] ? v : a16;
					aq = lq[j * V + v] > lq[j * V + aq] ? v : aq;
				}
				worst = df / mx > worst ? df / mx : worst;
				same += a16 == aq;
			}
			TT_CHECKF(worst < (f == TERN_HEAD_Q8 ? 3e-2 : 0.25) && worst > 0, "%s head relative error %g",
				  tern_head_format_name((tern_head_format)f), worst);
			TT_REQUIRE(tern_head_agreement(h, pool, hid, NB, &agree, NULL) == 0);
			TT_EQ_INT(agree, same);
			TT_CHECK(agree >= (f == TERN_HEAD_Q8 ? NB * 3 / 4 : NB / 3));
			TT_EQ_INT(tern_head_active(h), f);
			/* a head created from the packed bytes (a plan's shard) gives the same logits */
			size_t pb = 0;
			const void *packed = tern_head_packed(h, &pb);
			TT_CHECK(packed && pb == tern_head_bytes(h));
			tern_head_config pc = hc;
			pc.qformat = (tern_head_format)f;
			pc.qhead = packed;
			tern_head *h2;
			TT_REQUIRE(tern_head_create(&pc, &h2, NULL) == 0);
			TT_EQ_INT(tern_head_active(h2), f);
			TT_REQUIRE(tern_head_logits(h2, pool, hid, NB, lqb, NULL) == 0);
			TT_CHECK(memcmp(lq, lqb, sizeof(float) * NB * V) == 0);
			tern_head_free(h2);
			pc.qformat = (tern_head_format)9;
			TT_EQ_INT(tern_head_create(&pc, &h2, &err), TERN_EINVAL);
			/* switched off, the F16 logits come back bit for bit */
			TT_REQUIRE(tern_head_quantize(h, TERN_HEAD_FILE, pool, NULL) == 0);
			TT_EQ_INT(tern_head_active(h), TERN_HEAD_FILE);
			TT_REQUIRE(tern_head_logits(h, pool, hid, NB, lqb, NULL) == 0);
			TT_CHECK(memcmp(lqb, l16, sizeof(float) * NB * V) == 0);
			tern_head_free(h);
			first = 0;
		}
	}
	TT_EQ_INT(tern_head_format_parse("int8"), TERN_HEAD_Q8);
	TT_EQ_INT(tern_head_format_parse("q4"), TERN_HEAD_Q4);
	TT_EQ_INT(tern_head_format_parse("file"), TERN_HEAD_FILE);
	TT_EQ_INT(tern_head_format_parse("q3"), -1);
	tern_pool_free(pool);
	free(e16);
	free(hid);
	free(l16);
	free(lq);
	free(lqb);
}

/* The Llama-style architecture row (SwiGLU, no sub-norms) through the same
 * batch-invariance case, and its logits differ from the same weights run as
 * BitNet b1.58 (the row is really read). */
static void test_llama_arch(void)
{
	enum { N = 9 };
	int32_t tok[N];
	float *l[2];
	for (int a = 0; a < 2; a++) {
		small_arch = a ? "llama" : "bitnet-b1.58";
		tmodel m;
		TT_REQUIRE(tmodel_init(&m, 42) == 0);
		seq_tokens(tok, N, m.hp.n_vocab, 7);
		tern_layers w;
		TT_REQUIRE(build_layers(&m, TERN_PACK_TL2, &w) == 0);
		tern_engine *e = NULL;
		int slot;
		float *h = malloc(sizeof(float) * N * (size_t)m.hp.n_embd);
		l[a] = malloc(sizeof(float) * N * (size_t)m.hp.n_vocab);
		TT_REQUIRE(h && l[a] && make_engine(&w, 1, 64, TERN_ISA_AUTO, NULL, &e) == 0);
		TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e), &slot, NULL) == 0);
		TT_REQUIRE(run_seq(&m, e, slot, tok, N, N, h, l[a]) == 0);
		tern_engine_free(e);
		tern_layers_free(&w);
		tmodel_free(&m);
		free(h);
	}
	TT_CHECK(memcmp(l[0], l[1], sizeof(float) * N * 300) != 0);
	free(l[0]);
	free(l[1]);
	test_batch_invariance();
	small_arch = "bitnet-b1.58";
}

/* The invariance and ISA cases again with the other KV cache types (the
 * cases above run the default, f16). */
static void test_kv_types_invariance(void)
{
	const int types[] = {TERN_DTYPE_F32, TERN_DTYPE_BF16};
	for (int i = 0; i < 2; i++) {
		g_kv_type = types[i];
		fprintf(stderr, "  KV %s:\n", tern_dtype_name(g_kv_type));
		test_batch_invariance();
		test_packings_isas_threads();
	}
	g_kv_type = TERN_KV_TYPE_DEFAULT;
}

/* What a half-precision cache stores and how it is read:
 * - layer 0's K and V (computed before any attention) are the f32 engine's
 *   rounded once, to nearest even: the bits tern_f32_to_f16/bf16 give;
 * - the outputs differ from f32 only by that rounding (close, not equal);
 * - half the bytes; a type that is not a KV type is refused;
 * - a head width that is not a multiple of 8 or 16 (the vector widenings'
 *   tails): every ISA and thread count still bit-identical, per type. */
static void test_kv_half(void)
{
	tmodel m;
	TT_REQUIRE(tmodel_init(&m, 5) == 0);
	tern_layers w;
	TT_REQUIRE(build_layers(&m, TERN_PACK_TL2, &w) == 0);
	const int d = m.hp.n_embd, V = m.hp.n_vocab, kvd = m.hp.n_head_kv * m.hp.head_dim;
	int32_t tok[SEQ];
	seq_tokens(tok, SEQ, V, 11);
	const int types[] = {TERN_DTYPE_F32, TERN_DTYPE_F16, TERN_DTYPE_BF16};
	float *h[3], *l[3];
	tern_engine *e[3];
	for (int t = 0; t < 3; t++) {
		h[t] = malloc(sizeof(float) * SEQ * d);
		l[t] = malloc(sizeof(float) * SEQ * V);
		TT_REQUIRE(h[t] && l[t]);
		g_kv_type = types[t];
		int s;
		TT_REQUIRE(make_engine(&w, 1, 8, TERN_ISA_AUTO, NULL, &e[t]) == 0);
		TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e[t]), &s, NULL) == 0);
		TT_REQUIRE(run_seq(&m, e[t], s, tok, SEQ, 8, h[t], l[t]) == 0);
		TT_EQ_INT(tern_engine_kv(e[t])->type, types[t]);
	}
	g_kv_type = TERN_KV_TYPE_DEFAULT;
	const tern_kv_cache *k32 = tern_engine_kv(e[0]);
	TT_CHECK(tern_engine_kv(e[1])->layer_bytes * 2 == k32->layer_bytes);
	TT_CHECK(tern_engine_kv(e[2])->layer_bytes * 2 == k32->layer_bytes);
	for (int t = 1; t < 3; t++) {
		const tern_kv_cache *kh = tern_engine_kv(e[t]);
		int same = 1;
		for (int c = 0; c < 2; c++) {
			const float *x = c ? k32->v[0] : k32->k[0];
			const uint16_t *y = c ? kh->v[0] : kh->k[0];
			for (int i = 0; i < SEQ * kvd; i++)
				same &= y[i] ==
					(types[t] == TERN_DTYPE_F16 ? tern_f32_to_f16(x[i]) : tern_f32_to_bf16(x[i]));
		}
		TT_CHECKF(same, "KV %s: layer 0 K/V are not the f32 cache rounded to nearest even",
			  tern_dtype_name(types[t]));
		double worst = 0;
		for (int r = 0; r < SEQ; r++) {
			double num = 0, den = 0;
			for (int i = 0; i < V; i++) {
				const double a = l[0][(size_t)r * V + i], b = l[t][(size_t)r * V + i];
				num = fabs(a - b) > num ? fabs(a - b) : num;
				den = fabs(a) > den ? fabs(a) : den;
			}
			worst = num / den > worst ? num / den : worst;
		}
		fprintf(stderr, "  KV %s vs f32: max relative logit difference %.2e\n", tern_dtype_name(types[t]),
			worst);
		TT_CHECKF(memcmp(h[0], h[t], sizeof(float) * SEQ * d) != 0, "KV %s gives exactly f32's numbers",
			  tern_dtype_name(types[t]));
		TT_CHECKF(worst < (types[t] == TERN_DTYPE_F16 ? 0.05 : 0.1), "KV %s: logits %.2e from f32's",
			  tern_dtype_name(types[t]), worst);
	}
	for (int t = 0; t < 3; t++) {
		tern_engine_free(e[t]);
		free(h[t]);
		free(l[t]);
	}
	tern_engine *bad = NULL;
	tern_err err = {0};
	tern_engine_config cfg = {
	    .n_slots = 1, .n_ctx = 8, .max_rows = 4, .isa = TERN_ISA_AUTO, .kv_type = TERN_DTYPE_I8};
	TT_EQ_INT(tern_engine_create(&w, &cfg, &bad, &err), TERN_EINVAL);
	TT_CHECK(bad == NULL && strstr(err.msg, "not a KV type") != NULL);
	tern_layers_free(&w);
	tmodel_free(&m);

	/* head width 36: 2 x 16 + 4 and 4 x 8 + 4 */
	TT_REQUIRE(tmodel_init(&m, 6) == 0);
	m.hp.n_embd = 108;
	m.hp.head_dim = 36;
	m.hp.n_ff = 160;
	tern_head_free(m.head);
	m.head = NULL;
	{
		tern_head_config hc = {m.hp.n_vocab, m.hp.n_embd,   TERN_DTYPE_F16, m.emb,          0,
				       m.onorm,      m.hp.norm_eps, TERN_ISA_AUTO,  TERN_HEAD_FILE, NULL, TERN_DTYPE_NONE, NULL, 0, 0};
		TT_REQUIRE(tern_head_create(&hc, &m.head, NULL) == 0);
	}
	TT_REQUIRE(build_layers(&m, TERN_PACK_I2S, &w) == 0);
	tern_pool *pool = NULL;
	TT_REQUIRE(tern_pool_create(2, NULL, 0, &pool, NULL) == 0);
	float *href = malloc(sizeof(float) * SEQ * 108), *hh = malloc(sizeof(float) * SEQ * 108);
	float *ll = malloc(sizeof(float) * SEQ * V);
	TT_REQUIRE(href && hh && ll);
	for (int t = 0; t < 3; t++) {
		g_kv_type = types[t];
		int have = 0, combos = 0;
		for (int isa = 0; isa < TERN_ISA_COUNT; isa++) {
			if (!tern_isa_available((tern_isa)isa)) {
				TT_NOTE_SKIP("%s", tern_isa_name((tern_isa)isa));
				continue;
			}
			for (int th = 0; th < 2; th++) {
				tern_engine *en;
				int s;
				TT_REQUIRE(make_engine(&w, 1, 8, (tern_isa)isa, th ? pool : NULL, &en) == 0);
				TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(en), &s, NULL) == 0);
				TT_REQUIRE(run_seq(&m, en, s, tok, SEQ, 5, hh, ll) == 0);
				tern_engine_free(en);
				if (!have)
					memcpy(href, hh, sizeof(float) * SEQ * 108);
				else
					TT_CHECKF(memcmp(hh, href, sizeof(float) * SEQ * 108) == 0,
						  "head width 36, KV %s, isa %s, threads %d differs",
						  tern_dtype_name(types[t]), tern_isa_name((tern_isa)isa), th + 1);
				have = 1;
				combos++;
			}
		}
		TT_CHECK(combos >= 2);
	}
	g_kv_type = TERN_KV_TYPE_DEFAULT;
	tern_pool_free(pool);
	free(href);
	free(hh);
	free(ll);
	tern_layers_free(&w);
	tmodel_free(&m);
}

/* ---- paged KV ------------------------------------------------------------- */

/* Runs ns sequences on slots[i] together: every call takes up to `chunk` rows
 * of each unfinished sequence, so their blocks interleave in the pool.
 * out_h[i] gets (lens[i], n_embd) final hidden states. */
static int run_interleaved(tmodel *m, tern_engine *e, const int *slots, int32_t *const *toks, const int *lens, int ns,
			   int chunk, float *const *out_h)
{
	const int d = m->hp.n_embd;
	tern_err err = {0};
	tern_row rows[64];
	float *h = malloc(sizeof(float) * 64 * (size_t)d);
	int done[8] = {0}, rc = -1;
	if (!h || ns > 8 || ns * chunk > 64)
		goto fail;
	for (;;) {
		int n = 0, own[64], at[64];
		for (int i = 0; i < ns; i++)
			for (int c = 0; c < chunk && done[i] < lens[i]; c++, done[i]++) {
				if (tern_head_embed(m->head, toks[i] + done[i], 1, h + (size_t)n * d, &err) < 0)
					goto fail;
				rows[n].slot = slots[i];
				rows[n].pos = done[i];
				own[n] = i;
				at[n++] = done[i];
			}
		if (n == 0)
			break;
		if (tern_engine_forward(e, rows, n, h, &err) < 0) {
			fprintf(stderr, "forward: %s\n", err.msg);
			goto fail;
		}
		for (int j = 0; j < n; j++)
			memcpy(out_h[own[j]] + (size_t)at[j] * d, h + (size_t)j * d, sizeof(float) * (size_t)d);
	}
	rc = 0;
fail:
	free(h);
	return rc;
}

/* Sequences across block boundaries (block - 1, block, block + 1 and several
 * blocks), interleaved in one pool, then freed and their blocks reused in
 * another order: every hidden state bit-identical to the same sequence alone
 * in one block per slot (the unpaged layout), for f16 and f32 and every ISA
 * (the AVX-512 half-precision copy reads through the table with its
 * prefetches crossing blocks). */
static void test_kv_paged(void)
{
	tmodel m;
	TT_REQUIRE(tmodel_init(&m, 77) == 0);
	tern_layers w;
	TT_REQUIRE(build_layers(&m, TERN_PACK_TL2, &w) == 0);
	const int d = m.hp.n_embd, V = m.hp.n_vocab;
	enum { NS = 5, MAXLEN = 60 };
	const int blocks[] = {1, 7, 16};
	const int types[] = {TERN_DTYPE_F16, TERN_DTYPE_F32};
	int32_t *toks[NS];
	float *ref[NS], *got[NS];
	for (int i = 0; i < NS; i++) {
		toks[i] = malloc(sizeof(int32_t) * MAXLEN);
		ref[i] = malloc(sizeof(float) * MAXLEN * d);
		got[i] = malloc(sizeof(float) * MAXLEN * d);
		TT_REQUIRE(toks[i] && ref[i] && got[i]);
		seq_tokens(toks[i], MAXLEN, V, 100 + (uint64_t)i);
	}
	float *lg = malloc(sizeof(float) * MAXLEN * V);
	TT_REQUIRE(lg);
	int combos = 0;
	for (int ti = 0; ti < 2; ti++) {
		g_kv_type = types[ti];
		for (int isa = 0; isa < TERN_ISA_COUNT; isa++) {
			if (!tern_isa_available((tern_isa)isa)) {
				TT_NOTE_SKIP("%s", tern_isa_name((tern_isa)isa));
				continue;
			}
			for (int bi = 0; bi < 3; bi++) {
				const int bs = blocks[bi];
				int lens[NS] = {bs - 1 > 0 ? bs - 1 : 2, bs, bs + 1, 3 * bs + 2, MAXLEN};
				/* each alone, one block of 128 per slot */
				g_kv_block = 128;
				for (int i = 0; i < NS; i++) {
					tern_engine *e1;
					int s;
					TT_REQUIRE(make_engine(&w, 1, 64, (tern_isa)isa, NULL, &e1) == 0);
					TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e1), &s, NULL) == 0);
					TT_REQUIRE(run_seq(&m, e1, s, toks[i], lens[i], 64, ref[i], lg) == 0);
					tern_engine_free(e1);
				}
				g_kv_block = bs;
				tern_engine *e;
				int slots[NS];
				TT_REQUIRE(make_engine(&w, NS, 64, (tern_isa)isa, NULL, &e) == 0);
				tern_kv_cache *kv = tern_engine_kv(e);
				TT_EQ_INT(kv->block, bs);
				TT_EQ_INT(kv->n_blocks, NS * ((128 + bs - 1) / bs));
				for (int i = 0; i < NS; i++)
					TT_REQUIRE(tern_kv_slot_alloc(kv, &slots[i], NULL) == 0);
				TT_REQUIRE(run_interleaved(&m, e, slots, toks, lens, NS, 3, got) == 0);
				int same = 1, held = 0;
				for (int i = 0; i < NS; i++) {
					same &= memcmp(got[i], ref[i], sizeof(float) * (size_t)lens[i] * d) == 0;
					held += tern_kv_blocks_for(kv, lens[i]);
					TT_EQ_INT(kv->held[slots[i]], tern_kv_blocks_for(kv, lens[i]));
				}
				TT_CHECKF(same, "KV %s, isa %s, block %d: interleaved sequences differ from alone",
					  tern_dtype_name(types[ti]), tern_isa_name((tern_isa)isa), bs);
				TT_EQ_INT(kv->n_free, kv->n_blocks - held);
				/* free two, run them again: the blocks come back in another order */
				TT_REQUIRE(tern_kv_slot_free(kv, slots[3], NULL) == 0);
				TT_REQUIRE(tern_kv_slot_free(kv, slots[1], NULL) == 0);
				TT_EQ_INT(kv->n_free, kv->n_blocks - held + tern_kv_blocks_for(kv, lens[1]) +
							  tern_kv_blocks_for(kv, lens[3]));
				int s2[2];
				TT_REQUIRE(tern_kv_slot_alloc(kv, &s2[0], NULL) == 0);
				TT_REQUIRE(tern_kv_slot_alloc(kv, &s2[1], NULL) == 0);
				int32_t *t2[2] = {toks[4], toks[3]};
				const int l2[2] = {lens[4], lens[3]};
				float *g2[2] = {got[4], got[3]};
				TT_REQUIRE(tern_kv_slot_truncate(kv, slots[4], 0, NULL) == 0);
				TT_REQUIRE(tern_kv_slot_free(kv, slots[4], NULL) == 0);
				TT_REQUIRE(run_interleaved(&m, e, s2, t2, l2, 2, 5, g2) == 0);
				TT_CHECKF(memcmp(got[4], ref[4], sizeof(float) * (size_t)lens[4] * d) == 0 &&
					      memcmp(got[3], ref[3], sizeof(float) * (size_t)lens[3] * d) == 0,
					  "KV %s, isa %s, block %d: sequences on reused blocks differ",
					  tern_dtype_name(types[ti]), tern_isa_name((tern_isa)isa), bs);
				tern_engine_free(e);
				combos++;
			}
		}
	}
	TT_CHECK(combos >= 6);
	g_kv_type = TERN_KV_TYPE_DEFAULT;
	g_kv_block = 0;
	for (int i = 0; i < NS; i++) {
		free(toks[i]);
		free(ref[i]);
		free(got[i]);
	}
	free(lg);
	tern_layers_free(&w);
	tmodel_free(&m);
}

/* A pool smaller than the slots' contexts: a step that needs more blocks than
 * are free is refused whole (TERN_EFULL, no length or block changed), and
 * runs once blocks come back; the memory is the pool's. */
static void test_kv_pool_exhaustion(void)
{
	tmodel m;
	TT_REQUIRE(tmodel_init(&m, 78) == 0);
	tern_layers w;
	TT_REQUIRE(build_layers(&m, TERN_PACK_TL2, &w) == 0);
	const int d = m.hp.n_embd, V = m.hp.n_vocab, kvd = m.hp.n_head_kv * m.hp.head_dim;
	enum { BS = 16 };
	int32_t tok[64];
	seq_tokens(tok, 64, V, 9);
	float *h = malloc(sizeof(float) * 64 * d), *lg = malloc(sizeof(float) * 64 * V);
	float *ref = malloc(sizeof(float) * 64 * d);
	TT_REQUIRE(h && lg && ref);
	tern_engine *e;
	TT_REQUIRE(make_engine(&w, 1, 64, TERN_ISA_AUTO, NULL, &e) == 0);
	int s;
	TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e), &s, NULL) == 0);
	TT_REQUIRE(run_seq(&m, e, s, tok, 20, 64, ref, lg) == 0);
	tern_engine_free(e);

	g_kv_block = BS;
	g_kv_blocks = 3;
	TT_REQUIRE(make_engine(&w, 2, 64, TERN_ISA_AUTO, NULL, &e) == 0);
	tern_kv_cache *kv = tern_engine_kv(e);
	TT_CHECK(kv->layer_bytes == (size_t)3 * BS * kvd * kv->elem_bytes);
	int a, b;
	TT_REQUIRE(tern_kv_slot_alloc(kv, &a, NULL) == 0);
	TT_REQUIRE(tern_kv_slot_alloc(kv, &b, NULL) == 0);
	TT_REQUIRE(run_seq(&m, e, a, tok, 40, 64, h, lg) == 0); /* 3 blocks */
	TT_EQ_INT(kv->n_free, 0);
	tern_err err = {0};
	tern_row rows[2] = {{b, 0}, {a, 40}};
	TT_REQUIRE(tern_head_embed(m.head, tok, 2, h, &err) == 0);
	TT_EQ_INT(tern_engine_forward(e, rows, 1, h, &err), TERN_EFULL); /* b needs a block */
	TT_CHECK(strstr(err.msg, "KV blocks") != NULL);
	TT_EQ_INT(tern_engine_forward(e, rows, 2, h, &err), TERN_EFULL);
	TT_EQ_INT(tern_kv_slot_len(kv, a), 40);
	TT_EQ_INT(tern_kv_slot_len(kv, b), 0);
	TT_EQ_INT(kv->n_free, 0);
	TT_EQ_INT(kv->held[b], 0);
	TT_REQUIRE(tern_engine_forward(e, rows + 1, 1, h, &err) == 0); /* a's third block has room */
	TT_EQ_INT(tern_kv_slot_len(kv, a), 41);
	TT_REQUIRE(run_seq(&m, e, a, tok + 41, 7, 8, h, lg) == 0); /* 41..47: still three blocks */
	rows[1].pos = 48;
	TT_EQ_INT(tern_engine_forward(e, rows + 1, 1, h, &err), TERN_EFULL); /* a's fourth */
	TT_EQ_INT(tern_kv_slot_len(kv, a), 48);
	/* a rewound by a row at position 5 (a new sequence on the slot) gives back
	 * its last two blocks; b then fits, on blocks a had written */
	rows[1].pos = 5;
	TT_REQUIRE(tern_head_embed(m.head, tok + 5, 1, h, &err) == 0);
	TT_REQUIRE(tern_engine_forward(e, rows + 1, 1, h, &err) == 0);
	TT_EQ_INT(kv->held[a], 1);
	TT_EQ_INT(kv->n_free, 2);
	TT_REQUIRE(run_seq(&m, e, b, tok, 20, 64, h, lg) == 0);
	TT_CHECKF(memcmp(h, ref, sizeof(float) * 20 * d) == 0, "a sequence on reused blocks differs from alone");
	TT_EQ_INT(kv->n_free, 0);
	TT_EQ_INT(tern_kv_slot_reserve(kv, a, 17, &err), TERN_EFULL);
	TT_REQUIRE(tern_kv_slot_truncate(kv, b, 16, NULL) == 0);
	TT_EQ_INT(kv->n_free, 1);
	TT_REQUIRE(tern_kv_slot_reserve(kv, a, 17, NULL) == 0);
	TT_EQ_INT(kv->held[a], 2);
	TT_EQ_INT(tern_kv_slot_reserve(kv, a, 129, &err), TERN_EINVAL);
	TT_REQUIRE(tern_kv_slot_free(kv, a, NULL) == 0);
	TT_REQUIRE(tern_kv_slot_free(kv, b, NULL) == 0);
	TT_EQ_INT(kv->n_free, 3);
	tern_engine_free(e);
	g_kv_block = 0;
	g_kv_blocks = 0;

	tern_kv_cache *bad = NULL;
	TT_EQ_INT(tern_kv_create(&bad, 1, 1, 8, 8, TERN_DTYPE_F16, 1 << 17, 0, NULL, &err), TERN_EINVAL);
	TT_EQ_INT(tern_kv_create(&bad, 1, 1, 8, 8, TERN_DTYPE_F16, 4, -1, NULL, &err), TERN_EINVAL);
	TT_CHECK(bad == NULL);
	free(h);
	free(lg);
	free(ref);
	tern_layers_free(&w);
	tmodel_free(&m);
}

/* The prefix cache (issue 16): 16 sequences sharing a 70-token prefix attach
 * its 4 full blocks of 16 (published by a warm sequence) and prefill only
 * the rest, batched together; their logits and greedy ids over 8 decode
 * steps equal each one run alone without the cache, bit for bit. Then the
 * checks: references, no write into a shared block, truncate dropping the
 * reference, LRU eviction when the pool needs blocks. */
enum { PFX = 70, PROMPT = 80, NGEN = 8, NSEQ = 16, PBLK = 16 };

static int argmax(const float *l, int n)
{
	int b = 0;
	for (int i = 1; i < n; i++)
		if (l[i] > l[b])
			b = i;
	return b;
}

static void test_prefix_cache(void)
{
	tmodel m;
	TT_REQUIRE(tmodel_init(&m, 77) == 0);
	tern_layers w;
	TT_REQUIRE(build_layers(&m, TERN_PACK_TL2, &w) == 0);
	const int d = m.hp.n_embd, V = m.hp.n_vocab;
	static int32_t tok[NSEQ][PROMPT + NGEN];
	for (int i = 0; i < NSEQ; i++) {
		seq_tokens(tok[i], PFX, V, 5);
		seq_tokens(tok[i] + PFX, PROMPT - PFX, V, 100 + (uint64_t)i);
	}
	float *h = malloc(sizeof(float) * NSEQ * PROMPT * d);
	float *lg = malloc(sizeof(float) * NSEQ * PROMPT * V);
	float *ref = malloc(sizeof(float) * NSEQ * (NGEN + 1) * V); /* logits of the last prompt row, each step */
	float *got = malloc(sizeof(float) * NSEQ * (NGEN + 1) * V);
	tern_row *rows = malloc(sizeof *rows * NSEQ * PROMPT);
	int32_t *rt = malloc(sizeof *rt * NSEQ * PROMPT);
	TT_REQUIRE(h && lg && ref && got && rows && rt);
	g_kv_block = PBLK;
	tern_err err = {0};

	/* the misses: each sequence alone, greedy */
	tern_engine *e;
	TT_REQUIRE(make_engine(&w, 1, 16, TERN_ISA_AUTO, NULL, &e) == 0);
	int s0;
	TT_REQUIRE(tern_kv_slot_alloc(tern_engine_kv(e), &s0, NULL) == 0);
	for (int i = 0; i < NSEQ; i++) {
		TT_REQUIRE(tern_kv_slot_truncate(tern_engine_kv(e), s0, 0, NULL) == 0);
		TT_REQUIRE(run_seq(&m, e, s0, tok[i], PROMPT, 7, h, lg) == 0);
		memcpy(ref + (size_t)i * (NGEN + 1) * V, lg + (size_t)(PROMPT - 1) * V, sizeof(float) * V);
		for (int g = 0; g < NGEN; g++) {
			tok[i][PROMPT + g] = argmax(ref + ((size_t)i * (NGEN + 1) + g) * V, V);
			TT_REQUIRE(run_seq(&m, e, s0, tok[i] + PROMPT + g, 1, 1, h, lg) == 0);
			memcpy(ref + ((size_t)i * (NGEN + 1) + g + 1) * V, lg, sizeof(float) * V);
		}
	}
	tern_engine_free(e);

	/* the hits: a warm sequence publishes, 16 attach and run batched */
	TT_REQUIRE(make_engine(&w, NSEQ + 1, 64, TERN_ISA_AUTO, NULL, &e) == 0);
	tern_kv_cache *kv = tern_engine_kv(e);
	int slot[NSEQ + 1];
	for (int i = 0; i <= NSEQ; i++)
		TT_REQUIRE(tern_kv_slot_alloc(kv, &slot[i], NULL) == 0);
	const int warm = slot[NSEQ];
	TT_REQUIRE(run_seq(&m, e, warm, tok[0], PROMPT, 9, h, lg) == 0);
	TT_EQ_INT(tern_kv_prefix_publish(kv, warm, tok[0], PROMPT, NULL), PROMPT / PBLK);
	TT_EQ_INT(tern_kv_prefix_publish(kv, warm, tok[0], PROMPT, NULL), 0); /* each block once */
	TT_EQ_INT(tern_kv_prefix_publish(kv, warm, tok[0], PROMPT + 1, &err), TERN_EINVAL);
	const int hit = PFX / PBLK * PBLK;
	for (int i = 0; i < NSEQ; i++)
		TT_EQ_INT(tern_kv_prefix_attach(kv, slot[i], tok[i], PROMPT, NULL), hit);
	const int32_t b0 = kv->table[(size_t)warm * (size_t)kv->max_blocks];
	TT_EQ_INT(kv->ref[b0], NSEQ + 1);
	TT_EQ_INT(kv->table[(size_t)slot[3] * (size_t)kv->max_blocks + 1],
		  kv->table[(size_t)warm * (size_t)kv->max_blocks + 1]);
	int n = 0;
	for (int i = 0; i < NSEQ; i++)
		for (int p = hit; p < PROMPT; p++) {
			rows[n].slot = slot[i];
			rows[n].pos = p;
			rt[n++] = tok[i][p];
		}
	TT_REQUIRE(tern_head_embed(m.head, rt, n, h, NULL) == 0);
	TT_REQUIRE(tern_engine_forward(e, rows, n, h, &err) == 0);
	for (int i = 0; i < NSEQ; i++)
		memcpy(h + (size_t)i * d, h + (size_t)((i + 1) * (PROMPT - hit) - 1) * d, sizeof(float) * d);
	for (int g = 0; g <= NGEN; g++) {
		TT_REQUIRE(tern_head_logits(m.head, NULL, h, NSEQ, lg, NULL) == 0);
		for (int i = 0; i < NSEQ; i++) {
			memcpy(got + ((size_t)i * (NGEN + 1) + g) * V, lg + (size_t)i * V, sizeof(float) * V);
			rows[i].slot = slot[i];
			rows[i].pos = PROMPT + g;
			rt[i] = argmax(lg + (size_t)i * V, V);
			if (g < NGEN)
				TT_CHECKF(rt[i] == tok[i][PROMPT + g], "seq %d step %d: id %d with the cache, %d without", i,
					  g, rt[i], tok[i][PROMPT + g]);
		}
		if (g < NGEN) {
			TT_REQUIRE(tern_head_embed(m.head, rt, NSEQ, h, NULL) == 0);
			TT_REQUIRE(tern_engine_forward(e, rows, NSEQ, h, &err) == 0);
		}
	}
	TT_CHECKF(memcmp(got, ref, sizeof(float) * NSEQ * (NGEN + 1) * V) == 0,
		  "logits with the prefix cache differ from without");

	/* never a write into a shared block: a rewind into one is refused, whole */
	tern_row bad = {slot[0], 40};
	TT_REQUIRE(tern_head_embed(m.head, &tok[0][40], 1, h, NULL) == 0);
	TT_EQ_INT(tern_engine_forward(e, &bad, 1, h, &err), TERN_EINVAL);
	TT_CHECK(strstr(err.msg, "shared KV block") != NULL);
	TT_EQ_INT(tern_kv_slot_len(kv, slot[0]), PROMPT + NGEN);
	TT_CHECK(tern_kv_block_shared(kv, slot[0], 40));
	TT_CHECK(!tern_kv_block_shared(kv, slot[0], PROMPT));
	/* a rewind to a block's start drops the references past it */
	const int32_t b2 = kv->table[(size_t)slot[0] * (size_t)kv->max_blocks + 2];
	TT_REQUIRE(tern_kv_slot_truncate(kv, slot[0], 32, NULL) == 0);
	TT_EQ_INT(kv->ref[b2], NSEQ);
	TT_EQ_INT(kv->ref[b0], NSEQ + 1);
	/* all let go: the published blocks stay, evictable, and hit again */
	for (int i = 0; i <= NSEQ; i++)
		TT_REQUIRE(tern_kv_slot_free(kv, slot[i], NULL) == 0);
	TT_EQ_INT(kv->n_evictable, PROMPT / PBLK);
	TT_EQ_INT(kv->n_free + kv->n_evictable, kv->n_blocks);
	TT_REQUIRE(tern_kv_slot_alloc(kv, &s0, NULL) == 0);
	TT_EQ_INT(tern_kv_prefix_attach(kv, s0, tok[0], PROMPT + 1, NULL), PROMPT);
	TT_EQ_INT(kv->n_evictable, 0);
	TT_EQ_INT(tern_kv_prefix_attach(kv, s0, tok[0], PBLK, NULL), 0); /* the last id always runs */
	TT_EQ_INT(tern_kv_prefix_attach(kv, s0, tok[1], 129, &err), TERN_EINVAL);
	tern_engine_free(e);

	/* LRU eviction: a pool of 6 blocks, 5 published and let go; a slot
	 * needing 3 takes the free one and the 2 released first (the prompt's
	 * last), growing to 5 two more; the prompt then hits on its first
	 * block only and runs on from there exactly */
	g_kv_blocks = 6;
	TT_REQUIRE(make_engine(&w, 2, 16, TERN_ISA_AUTO, NULL, &e) == 0);
	kv = tern_engine_kv(e);
	int a, b;
	TT_REQUIRE(tern_kv_slot_alloc(kv, &a, NULL) == 0);
	TT_REQUIRE(tern_kv_slot_alloc(kv, &b, NULL) == 0);
	TT_REQUIRE(run_seq(&m, e, a, tok[0], PROMPT, 16, h, lg) == 0);
	TT_EQ_INT(tern_kv_prefix_publish(kv, a, tok[0], PROMPT, NULL), 5);
	TT_REQUIRE(tern_kv_slot_truncate(kv, a, 0, NULL) == 0);
	TT_EQ_INT(kv->n_free, 1);
	TT_EQ_INT(kv->n_evictable, 5);
	TT_REQUIRE(tern_kv_slot_reserve(kv, b, 3 * PBLK, NULL) == 0);
	TT_EQ_INT(kv->n_evicted, 2);
	TT_EQ_INT(tern_kv_slot_reserve(kv, b, 5 * PBLK, NULL), 0);
	TT_EQ_INT(tern_kv_slot_reserve(kv, b, 7 * PBLK, &err), TERN_EFULL);
	TT_REQUIRE(tern_kv_slot_truncate(kv, b, 0, NULL) == 0);
	TT_EQ_INT(kv->n_evicted, 4);
	TT_EQ_INT(kv->n_free, 5);
	TT_EQ_INT(tern_kv_prefix_attach(kv, a, tok[0], PROMPT, NULL), PBLK);
	TT_REQUIRE(run_seq(&m, e, a, tok[0] + PBLK, PROMPT - PBLK, 16, h, lg) == 0);
	TT_CHECKF(memcmp(lg + (size_t)(PROMPT - PBLK - 1) * V, ref, sizeof(float) * V) == 0,
		  "a prompt on the blocks left after eviction differs");
	tern_engine_free(e);
	g_kv_block = 0;
	g_kv_blocks = 0;
	free(h);
	free(lg);
	free(ref);
	free(got);
	free(rows);
	free(rt);
	tern_layers_free(&w);
	tmodel_free(&m);
}

TT_MAIN(TT_CASE(test_rmsnorm), TT_CASE(test_llama_arch), TT_CASE(test_rope), TT_CASE(test_softmax_relu2_dot),
	TT_CASE(test_batch_invariance), TT_CASE(test_slot_isolation), TT_CASE(test_packings_isas_threads),
	TT_CASE(test_kv_types_invariance), TT_CASE(test_kv_half), TT_CASE(test_kv_paged),
	TT_CASE(test_kv_pool_exhaustion), TT_CASE(test_prefix_cache), TT_CASE(test_slot_reuse_truncate), TT_CASE(test_bad_batches),
	TT_CASE(test_stage_split), TT_CASE(test_builder), TT_CASE(test_head), TT_CASE(test_head_quantized))
