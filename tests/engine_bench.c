/* engine_bench: prefill and decode speed of the single-process engine (layer
 * engine + LM head) on a random model of a named shape built in memory, beside
 * the bandwidth bound (bytes read per token / read bandwidth measured in the
 * same run). Prints a table and, with --json, one JSON object per row in the
 * DESIGN.md convention (bench "run").
 *
 *   engine_bench [--preset 2b4t] [--layers N] [--threads 1,2] [--packing tl2]
 *                [--kernel auto] [--prompt 64] [--decode 32] [--lm-head f16,q8,q4]
 *                [--depth 0,512,2048] [--kv-type f16,f32] [--json]
 *
 * --lm-head: the LM head formats to compare (default f16): each thread count
 * runs them one after the other in the same process (alternating, so drift
 * of the machine hits them alike), each from the same random F16 matrix.
 * --depth: decode after N tokens of context (default: N = --prompt): the
 * context is prefilled for real (in chunks of --prompt rows, at the largest
 * thread count; the other thread counts get a copy of that cache, which is
 * what they would compute, bit for bit), then --decode tokens are timed and
 * the cache is cut back to N for the next measurement. Depths grow, so each
 * prefill only adds the difference. --kv-type: the KV cache types to compare
 * (default f16), alternated like the heads.
 * The bound counts every byte a decode token reads: packed layers + LM head
 * + the K and V of every position attended (depth + 1 .. depth + decode, the
 * mean of them) x layers, in the KV type.
 *
 * Not a test: it asserts nothing and runs for minutes on big shapes. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "bench.h" /* the int8 peak (tests/bench/bench-peak.c) */
#include "tern-engine.h"
#include "tern-half.h"
#include "tern-head.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

typedef struct {
	const uint8_t *buf;
	size_t bytes;
	double sink[TERN_POOL_MAX_THREADS];
} bw_job;

#if defined(__x86_64__)
__attribute__((target("avx2"))) static double sum_avx2(const uint8_t *p, size_t n)
{
	__m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
	for (size_t i = 0; i + 128 <= n; i += 128) {
		a0 = _mm256_xor_si256(a0, _mm256_load_si256((const __m256i *)(const void *)(p + i)));
		a1 = _mm256_xor_si256(a1, _mm256_load_si256((const __m256i *)(const void *)(p + i + 32)));
		a2 = _mm256_xor_si256(a2, _mm256_load_si256((const __m256i *)(const void *)(p + i + 64)));
		a3 = _mm256_xor_si256(a3, _mm256_load_si256((const __m256i *)(const void *)(p + i + 96)));
	}
	a0 = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
	return (double)_mm256_extract_epi64(a0, 0);
}
#endif

static void bw_run(void *ctx, int tid, int nth)
{
	bw_job *j = ctx;
	const size_t chunk = (j->bytes / (size_t)nth) & ~(size_t)127;
	const uint8_t *p = j->buf + chunk * (size_t)tid;
#if defined(__x86_64__)
	if (tern_cpu_get()->avx2) {
		j->sink[tid] = sum_avx2(p, chunk);
		return;
	}
#endif
	uint64_t x = 0;
	for (size_t i = 0; i < chunk; i += 8) {
		uint64_t v;
		memcpy(&v, p + i, 8);
		x ^= v;
	}
	j->sink[tid] = (double)x;
}

/* Best read bandwidth (GB/s) of 5 passes over 1 GiB with the pool's threads. */
static double read_bw(tern_pool *pool)
{
	const size_t bytes = (size_t)1 << 30;
	uint8_t *buf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return 0;
	madvise(buf, bytes, MADV_HUGEPAGE);
	/* distinct data everywhere: zero or repeated pages can be deduplicated
	 * by the host and then read from cache */
	for (size_t i = 0; i < bytes / 8; i++)
		((uint64_t *)(void *)buf)[i] = i * 0x9E3779B97F4A7C15ull;
	bw_job j = {buf, bytes, {0}};
	double best = 0;
	for (int r = 0; r < 5; r++) {
		const double t0 = tern_now_s();
		tern_pool_run(pool, bw_run, &j);
		const double gbs = (double)bytes / (tern_now_s() - t0) / 1e9;
		best = gbs > best ? gbs : best;
	}
	munmap(buf, bytes);
	return best;
}

static const char *fmt_name(tern_head_format f)
{
	return f == TERN_HEAD_FILE ? "f16" : tern_head_format_name(f);
}

/* The KV type of variant v (variants: every block size x every type), and
 * its name in the text lines: the type, with "/block N" when several sizes run. */
#define KVT(v) kvt[(v) % n_kvt]
static const char *kv_label(const int *kvt, int n_kvt, const int *kvb, int n_kvb, int v, char *buf)
{
	if (n_kvb == 1)
		return tern_dtype_name(kvt[v % n_kvt]);
	snprintf(buf, 32, "%s/block %d", tern_dtype_name(kvt[v % n_kvt]), kvb[v / n_kvt]);
	return buf;
}

int main(int argc, char **argv)
{
	const char *preset = "2b4t";
	int layers = 0, n_prompt = 64, n_decode = 32, json = 0, thr[8] = {1, 2}, n_thr = 2;
	tern_packing packing = TERN_PACK_TL2;
	tern_isa isa = TERN_ISA_AUTO;
	tern_head_format fmts[TERN_HEAD_FORMAT_COUNT] = {TERN_HEAD_FILE};
	int n_fmt = 1;
	int depths[16], n_depth = 0, kvt[3] = {TERN_KV_TYPE_DEFAULT}, n_kvt = 1;
	int kvb[3] = {0}, n_kvb = 1; /* positions per KV block, 0: the engine's default */
	static const struct option long_opts[] = {
		{"lm-head", required_argument, NULL, 'H'},
		{"preset", required_argument, NULL, 'P'},   {"layers", required_argument, NULL, 'L'},
		{"prompt", required_argument, NULL, 'p'},   {"decode", required_argument, NULL, 'd'},
		{"packing", required_argument, NULL, 'k'},  {"kernel", required_argument, NULL, 'K'},
		{"json", no_argument, NULL, 'j'},           {"threads", required_argument, NULL, 't'},
		{"depth", required_argument, NULL, 'D'},    {"kv-type", required_argument, NULL, 'V'},
		{"kv-block", required_argument, NULL, 'B'},
		{NULL, 0, NULL, 0},
	};
	tern_err perr;
	tern_err_clear(&perr);
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, ":", long_opts, NULL)) != -1) {
		int rc = 0;
		if (c == 'P') {
			preset = optarg;
		} else if (c == 'L') {
			rc = tern_parse_int(optarg, 0, 1 << 16, "--layers", &layers, &perr);
		} else if (c == 'p') {
			rc = tern_parse_int(optarg, 1, 1 << 20, "--prompt", &n_prompt, &perr);
		} else if (c == 'd') {
			rc = tern_parse_int(optarg, 1, 1 << 20, "--decode", &n_decode, &perr);
		} else if (c == 'k') {
			packing = (tern_packing)tern_packing_parse(optarg);
		} else if (c == 'K') {
			isa = (tern_isa)tern_isa_parse(optarg);
		} else if (c == 'j') {
			json = 1;
		} else if (c == 'H') {
			n_fmt = 0;
			for (char *s = optarg, *tok; (tok = strtok(s, ",")); s = NULL) {
				const int f = !strcmp(tok, "f16") ? TERN_HEAD_FILE : tern_head_format_parse(tok);
				if (f < 0 || n_fmt == TERN_HEAD_FORMAT_COUNT)
					return tern_opt_bad("engine_bench", "--lm-head wants a list of f16, q8, q4");
				fmts[n_fmt++] = (tern_head_format)f;
			}
		} else if (c == 'D') {
			n_depth = 0;
			for (char *s = optarg, *tok; (tok = strtok(s, ",")); s = NULL) {
				if (n_depth == 16)
					return tern_opt_bad("engine_bench", "--depth takes at most 16 depths");
				if ((rc = tern_parse_int(tok, 0, 1 << 20, "--depth", &depths[n_depth++], &perr)) < 0)
					break;
				if (n_depth > 1 && depths[n_depth - 1] < depths[n_depth - 2])
					return tern_opt_bad("engine_bench", "--depth wants increasing depths");
			}
		} else if (c == 'V') {
			n_kvt = 0;
			for (char *s = optarg, *tok; (tok = strtok(s, ",")); s = NULL) {
				if (n_kvt == 3)
					return tern_opt_bad("engine_bench", "--kv-type takes at most 3 types");
				if ((rc = tern_kv_type_parse(tok, "--kv-type", &kvt[n_kvt++], &perr)) < 0)
					break;
			}
		} else if (c == 'B') {
			n_kvb = 0;
			for (char *s = optarg, *tok; (tok = strtok(s, ",")); s = NULL) {
				if (n_kvb == 3)
					return tern_opt_bad("engine_bench", "--kv-block takes at most 3 sizes");
				if ((rc = tern_parse_int(tok, 1, 1 << 16, "--kv-block", &kvb[n_kvb++], &perr)) < 0)
					break;
			}
		} else if (c == 't') {
			n_thr = 0;
			for (char *s = optarg, *tok; n_thr < 8 && (tok = strtok(s, ",")); s = NULL)
				if ((rc = tern_parse_int(tok, 1, 1024, "--threads", &thr[n_thr++], &perr)) < 0)
					break;
		} else {
			fprintf(stderr, "usage: engine_bench [--preset P] [--layers N] [--threads 1,2] [--packing tl2]"
					" [--kernel auto] [--prompt N] [--decode N] [--lm-head f16,q8,q4]"
					" [--depth N,...] [--kv-type f16,f32] [--kv-block N,...] [--json]\n");
			return tern_opt_fail("engine_bench", c, argv);
		}
		if (rc < 0)
			return tern_opt_bad("engine_bench", perr.msg);
	}
	if ((int)packing < 0 || (int)isa == -2 || n_prompt < 1 || n_decode < 1 || n_kvt < 1) {
		fprintf(stderr, "engine_bench: bad option value\n");
		return 2;
	}
	const int n_var = n_kvt * n_kvb;
	char lab[32];
	const int by_depth = n_depth > 0; /* rows carry "depth" and "kv_type" */
	if (!by_depth)
		depths[n_depth++] = n_prompt;
	tern_err err = {0};
	tern_hparams hp;
	if (tern_hparams_preset(preset, &hp, &err) < 0) {
		fprintf(stderr, "engine_bench: %s\n", err.msg);
		return 2;
	}
	if (layers > 0 && layers < hp.n_layer)
		hp.n_layer = layers;
	uint64_t seed = 1;
	tern_layer_source src = tern_layers_random_source(&seed);
	tern_layers w;
	double t0 = tern_now_s();
	if (tern_layers_build(&w, &hp, 0, hp.n_layer, packing, &src, &err) < 0) {
		fprintf(stderr, "engine_bench: %s\n", err.msg);
		return 1;
	}
	const size_t ne = (size_t)hp.n_vocab * (size_t)hp.n_embd;
	uint16_t *emb = tern_aligned_alloc(ne * 2, TERN_ALIGN);
	float *onorm = malloc(sizeof(float) * (size_t)hp.n_embd);
	if (!emb || !onorm)
		return 1;
	uint64_t s = 7;
	for (size_t i = 0; i < ne; i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		emb[i] = tern_f32_to_f16(((float)(s >> 40) / 16777216.0f - 0.5f) * 0.1f);
	}
	for (int i = 0; i < hp.n_embd; i++)
		onorm[i] = 1.0f;
	const tern_head_config hc = {hp.n_vocab, hp.n_embd, TERN_DTYPE_F16, emb, 0, onorm, hp.norm_eps, TERN_ISA_AUTO,
				     TERN_HEAD_FILE, NULL, TERN_DTYPE_NONE, NULL, 0, 0};
	/* one head per format, all reading the same F16 matrix */
	tern_head *heads[TERN_HEAD_FORMAT_COUNT] = {NULL};
	{
		tern_pool *bp = NULL;
		if (tern_pool_create(thr[n_thr - 1], NULL, 0, &bp, &err) < 0) {
			fprintf(stderr, "engine_bench: %s\n", err.msg);
			return 1;
		}
		for (int f = 0; f < n_fmt; f++)
			if (tern_head_create(&hc, &heads[f], &err) < 0 || tern_head_quantize(heads[f], fmts[f], bp, &err) < 0) {
				fprintf(stderr, "engine_bench: %s\n", err.msg);
				return 1;
			}
		tern_pool_free(bp);
	}
	const double t_build = tern_now_s() - t0;
	const uint64_t lbytes = tern_layers_bytes(&w);
	fprintf(json ? stderr : stdout, "engine_bench: %s shape, %d layers, %s, kernels %s, head %s; built in %.1f s\n",
		preset, hp.n_layer, tern_packing_name(packing),
		tern_isa_name(isa == TERN_ISA_AUTO ? tern_isa_default() : isa), tern_isa_name(tern_head_isa(heads[0])),
		t_build);
	for (int f = 0; f < n_fmt; f++) {
		const uint64_t hbytes = tern_head_bytes(heads[f]);
		fprintf(json ? stderr : stdout, "  bytes per decode token, LM head %s: layers %.1f MB + head %.1f MB = %.1f MB\n",
			fmt_name(fmts[f]), lbytes / 1e6, hbytes / 1e6, (lbytes + hbytes) / 1e6);
	}

	const int d = hp.n_embd, max_depth = depths[n_depth - 1], chunk = n_prompt;
	const int n_ctx = max_depth + n_decode + 1;
	float *hid = tern_aligned_alloc(sizeof(float) * (size_t)chunk * d, TERN_ALIGN);
	float *logits = tern_aligned_alloc(sizeof(float) * (size_t)hp.n_vocab, TERN_ALIGN);
	int32_t *toks = malloc(sizeof(int32_t) * (size_t)(max_depth + 1));
	tern_row *rows = malloc(sizeof(tern_row) * (size_t)chunk);
	if (!hid || !logits || !toks || !rows)
		return 1;
	for (int i = 0; i <= max_depth; i++)
		toks[i] = (int32_t)((i * 7919) % hp.n_vocab);

	/* every (thread count, KV type) engine at once, so the measurements
	 * alternate between them at each depth */
	tern_pool *pools[8] = {NULL};
	tern_engine *eng[8][9] = {{NULL}};
	double bws[8];
	for (int ti = 0; ti < n_thr; ti++) {
		if (tern_pool_create(thr[ti], NULL, 0, &pools[ti], &err) < 0) {
			fprintf(stderr, "engine_bench: %s\n", err.msg);
			return 1;
		}
		bws[ti] = read_bw(pools[ti]);
		if (json)
			printf("{\"bench\":\"run\",\"what\":\"read_bw\",\"threads\":%d,\"value\":%.3f,\"unit\":\"GB/s\","
			       "\"bound\":null,\"fraction\":null}\n",
			       thr[ti], bws[ti]);
		for (int v = 0; v < n_var; v++) {
			const tern_engine_config ec = {.n_slots = 1,
						       .n_ctx = n_ctx,
						       .max_rows = chunk,
						       .isa = isa,
						       .pool = pools[ti],
						       .kv_type = KVT(v),
						       .kv_block = kvb[v / n_kvt]};
			int slot;
			if (tern_engine_create(&w, &ec, &eng[ti][v], &err) < 0 ||
			    tern_kv_slot_alloc(tern_engine_kv(eng[ti][v]), &slot, &err) < 0) {
				fprintf(stderr, "engine_bench: %s\n", err.msg);
				return 1;
			}
		}
	}
	for (int v = 0; v < n_var; v++) {
		const tern_kv_cache *kv = tern_engine_kv(eng[0][v]);
		fprintf(json ? stderr : stdout, "  KV cache %s: %.1f MB per slot at %d positions (%d layers)\n",
			kv_label(kvt, n_kvt, kvb, n_kvb, v, lab), 2.0 * (double)kv->layer_bytes * hp.n_layer / 1e6,
			n_ctx, hp.n_layer);
	}
	const int big = n_thr - 1; /* the engine that prefills */
	/* Prefill is the projections' GEMMs: its bound is the int8 peak of the
	 * prefilling pool's best unit over 2 ops per ternary weight per token
	 * (the head's one last row is left out, as issue 13 counts it). */
	bench_peak peaks[8];
	const int n_peaks = bench_int8_peaks(pools[big], 0.3, peaks, 8);
	double peak = 0;
	const char *peak_unit = NULL;
	for (int i = 0; i < n_peaks; i++)
		if (!peaks[i].skipped && peaks[i].gops > peak)
			peak = peaks[i].gops, peak_unit = peaks[i].unit;
	const double layer_macs = (double)tern_hparams_layer_params(&hp) * hp.n_layer;
	const double pre_bound = peak > 0 ? peak * 1e9 / (2.0 * layer_macs) : 0;
	if (peak > 0) {
		fprintf(json ? stderr : stdout, "  int8 peak %s, %d thread%s: %.0f GOPS -> prefill bound %.1f tok/s\n",
			peak_unit, thr[big], thr[big] > 1 ? "s" : "", peak, pre_bound);
		if (json)
			printf("{\"bench\":\"run\",\"what\":\"int8_peak\",\"threads\":%d,\"value\":%.1f,\"unit\":\"GOPS\","
			       "\"bound\":null,\"fraction\":null,\"int8_unit\":\"%s\"}\n",
			       thr[big], peak, peak_unit);
	}
	const int slot = 0;
	int cur = 0;
	FILE *tf = json ? stderr : stdout;
	for (int di = 0; di < n_depth; di++) {
		const int depth = depths[di];
		/* prefill cur..depth in chunks, on the largest pool, each KV type */
		for (int v = 0; v < n_var; v++) {
			tern_engine *e = eng[big][v];
			double tp = tern_now_s();
			for (int p0 = cur; p0 < depth; p0 += chunk) {
				const int cnt = depth - p0 < chunk ? depth - p0 : chunk;
				tern_head_embed(heads[0], toks + p0, cnt, hid, &err);
				for (int i = 0; i < cnt; i++)
					rows[i] = (tern_row){slot, p0 + i};
				if (tern_engine_forward(e, rows, cnt, hid, &err) < 0) {
					fprintf(stderr, "engine_bench: %s\n", err.msg);
					return 1;
				}
			}
			tp = tern_now_s() - tp;
			if (depth > cur) {
				const double pre = (depth - cur) / tp;
				fprintf(tf, "  threads %d, KV %s: prefill %d..%d %.1f tok/s", thr[big],
					kv_label(kvt, n_kvt, kvb, n_kvb, v, lab), cur, depth, pre);
				if (pre_bound > 0)
					fprintf(tf, ", %.0f%% of the int8 bound %.1f", 100.0 * pre / pre_bound, pre_bound);
				fprintf(tf, "\n");
				if (json) {
					if (pre_bound > 0)
						printf("{\"bench\":\"run\",\"what\":\"prefill\",\"threads\":%d,\"value\":%.3f,"
						       "\"unit\":\"tok/s\",\"bound\":%.3f,\"fraction\":%.6f,\"bound_kind\":\"compute\",",
						       thr[big], pre, pre_bound, pre / pre_bound);
					else
						printf("{\"bench\":\"run\",\"what\":\"prefill\",\"threads\":%d,\"value\":%.3f,"
						       "\"unit\":\"tok/s\",\"bound\":null,\"fraction\":null,",
						       thr[big], pre);
					printf("\"model\":\"%s\",\"phase\":\"prefill\",\"layers\":%d,\"packing\":\"%s\","
					       "\"batch\":%d,\"lm_head\":\"%s\"",
					       preset, hp.n_layer, tern_packing_name(packing), chunk, fmt_name(fmts[0]));
					if (by_depth)
						printf(",\"depth\":%d,\"from\":%d,\"kv_type\":\"%s\"", depth, cur,
						       tern_dtype_name(KVT(v)));
					printf("}\n");
				}
			}
			/* the other thread counts: a copy of what they would have computed */
			const tern_kv_cache *from = tern_engine_kv(e);
			for (int ti = 0; ti < big; ti++) {
				if (tern_kv_slot_copy(tern_engine_kv(eng[ti][v]), slot, from, slot, depth, &err) < 0) {
					fprintf(stderr, "engine_bench: %s\n", err.msg);
					return 1;
				}
			}
		}
		cur = depth;
		for (int ti = 0; ti < n_thr; ti++) {
			const double bw = bws[ti];
			tern_pool *pool = pools[ti];
			for (int f = 0; f < n_fmt; f++) {
				for (int v = 0; v < n_var; v++) {
					tern_engine *e = eng[ti][v];
					tern_head *hd = heads[f];
					/* decode: one row per step, greedy, full LM head each step */
					double td = tern_now_s(), t_layers = 0, t_head = 0;
					int32_t best = toks[depth];
					for (int k = 0; k < n_decode; k++) {
						if (k > 0) {
							best = 0;
							for (int x = 1; x < hp.n_vocab; x++)
								best = logits[x] > logits[best] ? x : best;
						}
						tern_head_embed(hd, &best, 1, hid, &err);
						const tern_row r = {slot, depth + k};
						const double t0s = tern_now_s();
						const int rc1 = tern_engine_forward(e, &r, 1, hid, &err);
						const double t1s = tern_now_s();
						const int rc2 = rc1 < 0 ? rc1 : tern_head_logits(hd, pool, hid, 1, logits, &err);
						t_layers += t1s - t0s;
						t_head += tern_now_s() - t1s;
						if (rc1 < 0 || rc2 < 0) {
							fprintf(stderr, "engine_bench: %s\n", err.msg);
							return 1;
						}
					}
					td = tern_now_s() - td;
					if (tern_kv_slot_truncate(tern_engine_kv(e), slot, depth, &err) < 0) {
						fprintf(stderr, "engine_bench: %s\n", err.msg);
						return 1;
					}
					/* step k attends depth + k + 1 positions: the mean over the run */
					const uint64_t kv_tok =
					    tern_hparams_kv_bytes_per_token_layer(&hp, KVT(v)) * (uint64_t)hp.n_layer;
					const uint64_t kvbytes =
					    (uint64_t)((double)kv_tok * ((double)depth + (n_decode + 1) / 2.0) + 0.5);
					const uint64_t hbytes = tern_head_bytes(hd);
					const uint64_t tbytes = lbytes + hbytes + kvbytes;
					const double bound = bw * 1e9 / (double)tbytes;
					const double hps = n_decode / t_head, hbound = bw * 1e9 / (double)hbytes;
					const double dec = n_decode / td;
					fprintf(tf,
						"  threads %d, LM head %s, KV %s, depth %d: read bw %.1f GB/s | decode "
						"%.2f "
						"tok/s, bound %.2f (%.1f MB/token, KV %.1f MB), %.0f%%\n",
						thr[ti], fmt_name(fmts[f]), kv_label(kvt, n_kvt, kvb, n_kvb, v, lab),
						depth, bw, dec, bound, tbytes / 1e6, kvbytes / 1e6,
						100.0 * dec / bound);
					fprintf(tf,
						"    per decode token: layers %.1f ms (%.1f GB/s), LM head %.1f ms (%.1f GB/s, "
						"%.0f%% of its bound)\n",
						1e3 * t_layers / n_decode, (lbytes + kvbytes) / (t_layers / n_decode) / 1e9,
						1e3 * t_head / n_decode, hbytes / (t_head / n_decode) / 1e9, 100.0 * hps / hbound);
					if (json) {
						printf("{\"bench\":\"run\",\"what\":\"decode\",\"threads\":%d,\"value\":%.3f,"
						       "\"unit\":\"tok/s\",\"bound\":%.3f,\"fraction\":%.6f,\"model\":\"%s\","
						       "\"phase\":\"decode\",\"layers\":%d,\"packing\":\"%s\","
						       "\"bytes_per_token\":%llu,\"lm_head\":\"%s\",\"head_bytes_per_token\":%llu,"
						       "\"kv_bytes_per_token\":%llu",
						       thr[ti], dec, bound, dec / bound, preset, hp.n_layer,
						       tern_packing_name(packing), (unsigned long long)tbytes, fmt_name(fmts[f]),
						       (unsigned long long)hbytes, (unsigned long long)kvbytes);
						if (by_depth)
							printf(",\"depth\":%d,\"kv_type\":\"%s\"", depth,
							       tern_dtype_name(KVT(v)));
						printf("}\n");
						/* the head alone: its calls per second against its own bytes */
						if (v == 0)
							printf("{\"bench\":\"run\",\"what\":\"lm_head\",\"threads\":%d,"
							       "\"value\":%.3f,\"unit\":\"tok/s\",\"bound\":%.3f,"
							       "\"fraction\":%.6f,\"model\":\"%s\",\"phase\":\"decode\","
							       "\"lm_head\":\"%s\",\"bytes_per_token\":%llu}\n",
							       thr[ti], hps, hbound, hps / hbound, preset, fmt_name(fmts[f]),
							       (unsigned long long)hbytes);
					}
				}
			}
		}
	}
	for (int ti = 0; ti < n_thr; ti++) {
		for (int v = 0; v < n_var; v++)
			tern_engine_free(eng[ti][v]);
		tern_pool_free(pools[ti]);
	}
	free(rows);
	free(toks);
	tern_aligned_free(hid);
	tern_aligned_free(logits);
	for (int f = 0; f < n_fmt; f++)
		tern_head_free(heads[f]);
	free(onorm);
	tern_aligned_free(emb);
	tern_layers_free(&w);
	return 0;
}
