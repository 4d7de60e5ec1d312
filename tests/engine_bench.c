/* engine_bench: prefill and decode speed of the single-process engine (layer
 * engine + LM head) on a random model of a named shape built in memory, beside
 * the bandwidth bound (bytes read per token / read bandwidth measured in the
 * same run). Prints a table and, with --json, one JSON object per row in the
 * DESIGN.md convention (bench "run").
 *
 *   engine_bench [--preset 2b4t] [--layers N] [--threads 1,2] [--packing tl2]
 *                [--kernel auto] [--prompt 64] [--decode 32] [--lm-head f16,q8,q4]
 *                [--json]
 *
 * --lm-head: the LM head formats to compare (default f16): each thread count
 * runs them one after the other in the same process (alternating, so drift
 * of the machine hits them alike), each from the same random F16 matrix.
 *
 * Not a test: it asserts nothing and runs for minutes on big shapes. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

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

int main(int argc, char **argv)
{
	const char *preset = "2b4t";
	int layers = 0, n_prompt = 64, n_decode = 32, json = 0, thr[8] = {1, 2}, n_thr = 2;
	tern_packing packing = TERN_PACK_TL2;
	tern_isa isa = TERN_ISA_AUTO;
	tern_head_format fmts[TERN_HEAD_FORMAT_COUNT] = {TERN_HEAD_FILE};
	int n_fmt = 1;
	static const struct option long_opts[] = {
		{"lm-head", required_argument, NULL, 'H'},
		{"preset", required_argument, NULL, 'P'},   {"layers", required_argument, NULL, 'L'},
		{"prompt", required_argument, NULL, 'p'},   {"decode", required_argument, NULL, 'd'},
		{"packing", required_argument, NULL, 'k'},  {"kernel", required_argument, NULL, 'K'},
		{"json", no_argument, NULL, 'j'},           {"threads", required_argument, NULL, 't'},
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
		} else if (c == 't') {
			n_thr = 0;
			for (char *s = optarg, *tok; n_thr < 8 && (tok = strtok(s, ",")); s = NULL)
				if ((rc = tern_parse_int(tok, 1, 1024, "--threads", &thr[n_thr++], &perr)) < 0)
					break;
		} else {
			fprintf(stderr, "usage: engine_bench [--preset P] [--layers N] [--threads 1,2] [--packing tl2]"
					" [--kernel auto] [--prompt N] [--decode N] [--lm-head f16,q8,q4] [--json]\n");
			return tern_opt_fail("engine_bench", c, argv);
		}
		if (rc < 0)
			return tern_opt_bad("engine_bench", perr.msg);
	}
	if ((int)packing < 0 || (int)isa == -2 || n_prompt < 1 || n_decode < 1) {
		fprintf(stderr, "engine_bench: bad option value\n");
		return 2;
	}
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

	const int d = hp.n_embd;
	float *hid = tern_aligned_alloc(sizeof(float) * (size_t)n_prompt * d, TERN_ALIGN);
	float *logits = tern_aligned_alloc(sizeof(float) * (size_t)hp.n_vocab, TERN_ALIGN);
	int32_t *toks = malloc(sizeof(int32_t) * (size_t)n_prompt);
	tern_row *rows = malloc(sizeof(tern_row) * (size_t)n_prompt);
	if (!hid || !logits || !toks || !rows)
		return 1;
	for (int i = 0; i < n_prompt; i++)
		toks[i] = (int32_t)((i * 7919) % hp.n_vocab);

	for (int ti = 0; ti < n_thr; ti++) {
		tern_pool *pool = NULL;
		if (tern_pool_create(thr[ti], NULL, 0, &pool, &err) < 0) {
			fprintf(stderr, "engine_bench: %s\n", err.msg);
			return 1;
		}
		const double bw = read_bw(pool);
		const tern_engine_config ec = {1, n_prompt + n_decode + 1, n_prompt, isa, pool, NULL};
		tern_engine *e;
		int slot;
		if (tern_engine_create(&w, &ec, &e, &err) < 0 ||
		    tern_kv_slot_alloc(tern_engine_kv(e), &slot, &err) < 0) {
			fprintf(stderr, "engine_bench: %s\n", err.msg);
			return 1;
		}
		if (json)
			printf("{\"bench\":\"run\",\"what\":\"read_bw\",\"threads\":%d,\"value\":%.3f,\"unit\":\"GB/s\","
			       "\"bound\":null,\"fraction\":null}\n",
			       thr[ti], bw);
		for (int f = 0; f < n_fmt; f++) {
			tern_head *head = heads[f];
			/* prefill: the whole prompt as one chunk, logits of the last row */
			tern_head_embed(head, toks, n_prompt, hid, &err);
			for (int i = 0; i < n_prompt; i++)
				rows[i] = (tern_row){slot, i};
			double tp = tern_now_s();
			if (tern_engine_forward(e, rows, n_prompt, hid, &err) < 0 ||
			    tern_head_logits(head, pool, hid + (size_t)(n_prompt - 1) * d, 1, logits, &err) < 0) {
				fprintf(stderr, "engine_bench: %s\n", err.msg);
				return 1;
			}
			tp = tern_now_s() - tp;
			/* decode: one row per step, greedy, full LM head each step */
			double td = tern_now_s(), t_layers = 0, t_head = 0;
			for (int k = 0; k < n_decode; k++) {
				int32_t best = 0;
				for (int v = 1; v < hp.n_vocab; v++)
					best = logits[v] > logits[best] ? v : best;
				tern_head_embed(head, &best, 1, hid, &err);
				const tern_row r = {slot, n_prompt + k};
				const double t0s = tern_now_s();
				const int rc1 = tern_engine_forward(e, &r, 1, hid, &err);
				const double t1s = tern_now_s();
				const int rc2 = rc1 < 0 ? rc1 : tern_head_logits(head, pool, hid, 1, logits, &err);
				t_layers += t1s - t0s;
				t_head += tern_now_s() - t1s;
				if (rc1 < 0 || rc2 < 0) {
					fprintf(stderr, "engine_bench: %s\n", err.msg);
					return 1;
				}
			}
			td = tern_now_s() - td;
			const uint64_t hbytes = tern_head_bytes(head);
			const double bound = bw * 1e9 / (double)(lbytes + hbytes);
			const double hps = n_decode / t_head, hbound = bw * 1e9 / (double)hbytes;
			const double pre = n_prompt / tp, dec = n_decode / td;
			FILE *tf = json ? stderr : stdout;
			fprintf(
			    tf,
			    "  threads %d, LM head %s: read bw %.1f GB/s | prefill %.1f tok/s | decode %.2f tok/s, bound %.2f, %.0f%%\n",
			    thr[ti], fmt_name(fmts[f]), bw, pre, dec, bound, 100.0 * dec / bound);
			fprintf(tf, "    per decode token: layers %.1f ms (%.1f GB/s), LM head %.1f ms (%.1f GB/s, %.0f%% of its bound)\n",
				1e3 * t_layers / n_decode, lbytes / (t_layers / n_decode) / 1e9, 1e3 * t_head / n_decode,
				hbytes / (t_head / n_decode) / 1e9, 100.0 * hps / hbound);
			if (json) {
				printf(
				    "{\"bench\":\"run\",\"what\":\"prefill\",\"threads\":%d,\"value\":%.3f,\"unit\":\"tok/s\","
				    "\"bound\":null,\"fraction\":null,\"model\":\"%s\",\"phase\":\"prefill\",\"layers\":%d,"
				    "\"packing\":\"%s\",\"batch\":%d,\"lm_head\":\"%s\"}\n",
				    thr[ti], pre, preset, hp.n_layer, tern_packing_name(packing), n_prompt, fmt_name(fmts[f]));
				printf(
				    "{\"bench\":\"run\",\"what\":\"decode\",\"threads\":%d,\"value\":%.3f,\"unit\":\"tok/s\","
				    "\"bound\":%.3f,\"fraction\":%.6f,\"model\":\"%s\",\"phase\":\"decode\",\"layers\":%d,"
				    "\"packing\":\"%s\",\"bytes_per_token\":%llu,\"lm_head\":\"%s\",\"head_bytes_per_token\":%llu}\n",
				    thr[ti], dec, bound, dec / bound, preset, hp.n_layer, tern_packing_name(packing),
				    (unsigned long long)(lbytes + hbytes), fmt_name(fmts[f]), (unsigned long long)hbytes);
				/* the head alone: its calls per second against its own bytes */
				printf(
				    "{\"bench\":\"run\",\"what\":\"lm_head\",\"threads\":%d,\"value\":%.3f,\"unit\":\"tok/s\","
				    "\"bound\":%.3f,\"fraction\":%.6f,\"model\":\"%s\",\"phase\":\"decode\",\"lm_head\":\"%s\","
				    "\"bytes_per_token\":%llu}\n",
				    thr[ti], hps, hbound, hps / hbound, preset, fmt_name(fmts[f]), (unsigned long long)hbytes);
			}
		}
		tern_engine_free(e);
		tern_pool_free(pool);
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
