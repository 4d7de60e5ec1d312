/* run-main.c: tern-run, the single-process engine: one model, one sequence,
 * every layer in this process. It is the reference every distributed run
 * must match bit for bit, and the quickest way to try a model.
 *
 * Prompt -> tokens (or --tokens ids) -> chunked prefill through the layer
 * engine with the GEMM path -> final norm + LM head -> sample -> stream text;
 * then decode one token per step (GEMV). Prompt and decode speed go to
 * stderr at the end; --dump-logits writes every row's logits (the prompt
 * rows and each fed generated token) as a .npy float32 matrix, for the
 * reference comparison (tests/engine_vs_ref.py). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern-engine.h"
#include "tern-coord.h"
#include "tern-head.h"
#include "tern-perplexity.h"
#include "tern-plan.h"
#include "tern-sampling.h"
#include "tern-source.h"
#include "tern-step.h"
#include "tern-tokenizer.h"

typedef struct {
	const char *model;
	const char *prompt;
	const char *tokens;
	const char *dump;
	int n_predict;
	int threads;
	int n_ctx;
	int batch;
	int chat;
	int packing;
	int isa;
	int kv_type; /* KV cache element type (tern_kv_type_parse) */
	int kv_blocks; /* KV pool in blocks of TERN_KV_BLOCK_DEFAULT positions, 0: the whole context */
	int layers; /* 0: all */
	int ignore_eos;
	int quiet;
	int print_ids; /* --print-ids: "ids: ..." of the generated tokens on stderr */
	const char *ppl; /* --perplexity FILE */
	int head_fmt;    /* --lm-head: tern_head_format */
	int head_f16;    /* --lm-head f16: the file's precision, which must be F16 */
	int head_asked;  /* --lm-head given: a quantized head's top-1 agreement is printed */
	const char *stops[16];
	int n_stops;
	tern_sampling_params sp;
} run_opts;

static void usage(FILE *f)
{
	fprintf(f, "usage: tern-run -m MODEL -p PROMPT [-n N] [options]\n"
		   "  -m, --model PATH       GGUF file or Hugging Face checkpoint directory\n"
		   "  -p, --prompt TEXT      prompt text\n"
		   "      --tokens 1,2,3     prompt as token ids (instead of -p)\n"
		   "  -n, --n-predict N      tokens to generate (default 64)\n"
		   "  -t, --threads N        threads (default: every CPU this process may use)\n"
		   "  -c, --ctx-size N       context length (default: the model's, at most 4096)\n"
		   "  -b, --batch-size N     prefill chunk, rows per engine step (default 64)\n"
		   "      --temp T           temperature (default 0.8; 0 = greedy)\n"
		   "      --top-k K          (default 40; 0 = off)\n"
		   "      --top-p P          (default 0.95; 1 = off)\n"
		   "      --min-p P          (default 0.05; 0 = off)\n"
		   "      --repeat-penalty R (default 1.0 = off)\n"
		   "      --repeat-last-n N  history the penalty looks at (default 64)\n"
		   "      --seed S           sampling seed (default: random, printed)\n"
		   "      --stop STR         stop when the text contains STR (repeatable)\n"
		   "      --chat             wrap the prompt in the model's chat template\n"
		   "      --packing P        tl2 | i2_s | tl1 (default tl2)\n"
		   "      --kernel K         ref | avx2 | avx512 | auto (default auto)\n"
		   "      --kv-type T        KV cache elements: f16 (default, half the bytes), f32, bf16\n"
		   "      --kv-blocks N      KV pool of N blocks of %d positions (default: the whole\n"
		   "                         context); a prompt or reply that outgrows it stops with an error\n"
		   "      --layers L         run only the first L layers (tests)\n"
		   "      --ignore-eos       keep generating past end-of-generation tokens\n"
		   "      --lm-head F        q8 | q4 | file | f16: LM head quantized in blocks of 32\n"
		   "                         with integer dot products (q8, the default: 8-bit, about\n"
		   "                         half the bytes of F16; q4: 4-bit, about a quarter; int8 =\n"
		   "                         q8; lossy: given explicitly, the top-1 agreement with the\n"
		   "                         file-precision head is printed at the end) or in the file's\n"
		   "                         precision (file; f16 = the same, checked to be F16)\n"
		   "      --dump-logits FILE write every row's logits as float32 .npy\n"
		   "  -q, --quiet            no text on stdout (speed only)\n",
		TERN_KV_BLOCK_DEFAULT);
}

enum {
	OPT_TOKENS = 256,
	OPT_TEMP,
	OPT_TOP_K,
	OPT_TOP_P,
	OPT_MIN_P,
	OPT_REPEAT_PENALTY,
	OPT_REPEAT_LAST_N,
	OPT_SEED,
	OPT_STOP,
	OPT_CHAT,
	OPT_PACKING,
	OPT_KERNEL,
	OPT_KV_TYPE,
	OPT_KV_BLOCKS,
	OPT_LAYERS,
	OPT_IGNORE_EOS,
	OPT_LM_HEAD,
	OPT_DUMP_LOGITS,
	OPT_PERPLEXITY,
	OPT_PRINT_IDS,
};

static const struct option run_long_opts[] = {
	{"help", no_argument, NULL, 'h'},
	{"model", required_argument, NULL, 'm'},
	{"prompt", required_argument, NULL, 'p'},
	{"tokens", required_argument, NULL, OPT_TOKENS},
	{"n-predict", required_argument, NULL, 'n'},
	{"threads", required_argument, NULL, 't'},
	{"ctx-size", required_argument, NULL, 'c'},
	{"batch-size", required_argument, NULL, 'b'},
	{"temp", required_argument, NULL, OPT_TEMP},
	{"top-k", required_argument, NULL, OPT_TOP_K},
	{"top-p", required_argument, NULL, OPT_TOP_P},
	{"min-p", required_argument, NULL, OPT_MIN_P},
	{"repeat-penalty", required_argument, NULL, OPT_REPEAT_PENALTY},
	{"repeat-last-n", required_argument, NULL, OPT_REPEAT_LAST_N},
	{"seed", required_argument, NULL, OPT_SEED},
	{"stop", required_argument, NULL, OPT_STOP},
	{"chat", no_argument, NULL, OPT_CHAT},
	{"packing", required_argument, NULL, OPT_PACKING},
	{"kernel", required_argument, NULL, OPT_KERNEL},
	{"kv-type", required_argument, NULL, OPT_KV_TYPE},
	{"kv-blocks", required_argument, NULL, OPT_KV_BLOCKS},
	{"layers", required_argument, NULL, OPT_LAYERS},
	{"ignore-eos", no_argument, NULL, OPT_IGNORE_EOS},
	{"lm-head", required_argument, NULL, OPT_LM_HEAD},
	{"dump-logits", required_argument, NULL, OPT_DUMP_LOGITS},
	{"perplexity", required_argument, NULL, OPT_PERPLEXITY},
	{"print-ids", no_argument, NULL, OPT_PRINT_IDS},
	{"quiet", no_argument, NULL, 'q'},
	{NULL, 0, NULL, 0},
};

/* Fills o from the command line; 0, or the exit status (2) after a one-line
 * error. Sampling ranges are checked later by tern_sampler_create. */
static int parse_args(int argc, char **argv, run_opts *o)
{
	memset(o, 0, sizeof *o);
	o->n_predict = 64;
	o->threads = tern_cpu_count();
	if (o->threads > TERN_POOL_MAX_THREADS)
		o->threads = TERN_POOL_MAX_THREADS;
	o->batch = 64;
	o->packing = TERN_PACK_TL2;
	o->isa = TERN_ISA_AUTO;
	o->kv_type = TERN_KV_TYPE_DEFAULT;
	o->head_fmt = TERN_PLAN_HEAD_DEFAULT;
	tern_sampling_params_default(&o->sp);
	tern_err err;
	tern_err_clear(&err);
	const float fmax = 3.4e38f;
	opterr = 0;
	int c, li = 0;
	while ((c = getopt_long(argc, argv, ":hm:p:n:t:c:b:q", run_long_opts, &li)) != -1) {
		const char *v = optarg;
		int rc = 0;
		switch (c) {
		case 'h':
			usage(stdout);
			exit(0);
		case 'm':
			o->model = v;
			break;
		case 'p':
			o->prompt = v;
			break;
		case OPT_TOKENS:
			o->tokens = v;
			break;
		case 'n':
			rc = tern_parse_int(v, 0, 1 << 22, "--n-predict", &o->n_predict, &err);
			break;
		case 't':
			rc = tern_parse_int(v, 1, TERN_POOL_MAX_THREADS, "--threads", &o->threads, &err);
			break;
		case 'c':
			rc = tern_parse_int(v, 1, 1 << 22, "--ctx-size", &o->n_ctx, &err);
			break;
		case 'b':
			rc = tern_parse_int(v, 1, 4096, "--batch-size", &o->batch, &err);
			break;
		case OPT_TEMP:
			rc = tern_parse_float(v, -fmax, fmax, "--temp", &o->sp.temperature, &err);
			break;
		case OPT_TOP_K:
			rc = tern_parse_int(v, 0, INT_MAX, "--top-k", &o->sp.top_k, &err);
			break;
		case OPT_TOP_P:
			rc = tern_parse_float(v, -fmax, fmax, "--top-p", &o->sp.top_p, &err);
			break;
		case OPT_MIN_P:
			rc = tern_parse_float(v, -fmax, fmax, "--min-p", &o->sp.min_p, &err);
			break;
		case OPT_REPEAT_PENALTY:
			rc = tern_parse_float(v, -fmax, fmax, "--repeat-penalty", &o->sp.repeat_penalty, &err);
			break;
		case OPT_REPEAT_LAST_N:
			rc = tern_parse_int(v, 0, 1 << 20, "--repeat-last-n", &o->sp.repeat_last_n, &err);
			break;
		case OPT_SEED:
			rc = tern_parse_uint64(v, "--seed", &o->sp.seed, &err);
			break;
		case OPT_STOP:
			if (o->n_stops == 16 || !*v)
				return tern_opt_bad("tern-run", o->n_stops == 16 ? "at most 16 --stop strings"
									 : "--stop wants a non-empty string");
			o->stops[o->n_stops++] = v;
			break;
		case OPT_LM_HEAD:
			o->head_f16 = !strcmp(v, "f16");
			o->head_asked = 1;
			if ((o->head_fmt = o->head_f16 ? TERN_HEAD_FILE : tern_head_format_parse(v)) < 0)
				rc = TERN_ERR(&err, TERN_EINVAL, "bad value '%s' for --lm-head: expected file, f16, q8 or q4",
					      v);
			break;
		case OPT_CHAT:
			o->chat = 1;
			break;
		case OPT_PACKING:
			if ((o->packing = tern_packing_parse(v)) < 0)
				rc = TERN_ERR(&err, TERN_EINVAL, "bad value '%s' for --packing: expected tl2, i2_s or tl1", v);
			break;
		case OPT_KERNEL:
			if ((o->isa = tern_isa_parse(v)) == -2)
				rc = TERN_ERR(&err, TERN_EINVAL, "bad value '%s' for --kernel: expected ref, avx2, avx512, "
								 "neon or auto", v);
			break;
		case OPT_KV_TYPE:
			rc = tern_kv_type_parse(v, "--kv-type", &o->kv_type, &err);
			break;
		case OPT_KV_BLOCKS:
			rc = tern_parse_int(v, 1, 1 << 30, "--kv-blocks", &o->kv_blocks, &err);
			break;
		case OPT_LAYERS:
			rc = tern_parse_int(v, 1, 1 << 16, "--layers", &o->layers, &err);
			break;
		case OPT_IGNORE_EOS:
			o->ignore_eos = 1;
			break;
		case OPT_DUMP_LOGITS:
			o->dump = v;
			break;
		case OPT_PERPLEXITY:
			o->ppl = v;
			break;
		case OPT_PRINT_IDS:
			o->print_ids = 1;
			break;
		case 'q':
			o->quiet = 1;
			break;
		default:
			return tern_opt_fail("tern-run", c, argv);
		}
		if (rc < 0)
			return tern_opt_bad("tern-run", err.msg);
	}
	if (optind < argc) {
		fprintf(stderr, "tern-run: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (!o->model || (!o->prompt && !o->tokens && !o->ppl)) {
		usage(stderr);
		return 2;
	}
	return 0;
}

/* Parses "1,2,3" into ids (all within [0, n_vocab)). */
static int parse_ids(const char *s, int n_vocab, tern_tokens *out, tern_err *err)
{
	const char *p = s;
	while (*p) {
		char *end;
		errno = 0;
		const long v = strtol(p, &end, 10);
		TERN_RETURN_IF(errno || end == p || v < 0 || v >= n_vocab, err, TERN_EINVAL,
			       "--tokens: bad token id near '%.20s' (vocabulary %d)", p, n_vocab);
		if (out->n == out->cap) {
			const size_t cap = out->cap ? 2 * out->cap : 64;
			int32_t *ids = realloc(out->ids, cap * sizeof *ids);
			TERN_RETURN_IF(!ids, err, TERN_ENOMEM, "out of memory");
			out->ids = ids;
			out->cap = cap;
		}
		out->ids[out->n++] = (int32_t)v;
		p = end;
		if (*p == ',')
			p++;
		else
			TERN_RETURN_IF(*p, err, TERN_EINVAL, "--tokens: expected ',' near '%.20s'", p);
	}
	TERN_RETURN_IF(out->n == 0, err, TERN_EINVAL, "--tokens: no ids");
	return 0;
}

/* A .npy (version 1.0) header for a float32 (rows, cols) C-order matrix. */
static int npy_write_header(FILE *f, long rows, long cols)
{
	char dict[128];
	int n =
	    snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (%ld, %ld), }", rows, cols);
	const int total = ((10 + n + 1 + 63) / 64) * 64;
	const int pad = total - 10 - n - 1;
	unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
	pre[8] = (unsigned char)((total - 10) & 0xff);
	pre[9] = (unsigned char)((total - 10) >> 8);
	if (fwrite(pre, 1, 10, f) != 10 || fwrite(dict, 1, (size_t)n, f) != (size_t)n)
		return -1;
	for (int i = 0; i < pad; i++)
		fputc(' ', f);
	fputc('\n', f);
	return ferror(f) ? -1 : 0;
}

typedef struct {
	run_opts o;
	tern_source *src;
	tern_pool *pool;
	tern_layers layers;
	tern_engine *eng;
	tern_head *head;
	tern_tokenizer *tok;
	tern_sampler *smp;
	tern_step *step; /* detokenizer, stop strings, EOS and length: the scheduler's step */
	tern_tokens prompt;
	float *hidden; /* (batch, n_embd) */
	float *logits; /* (batch, n_vocab) */
	float *seen;   /* (n_seen_cap, n_embd) final hidden state of every row, for the quantized head check */
	int n_seen;
	int n_seen_cap;
	FILE *dump;
	long dump_rows;
} run_state;

static void run_free(run_state *s)
{
	tern_step_free(s->step);
	tern_sampler_free(s->smp);
	tern_tokenizer_free(s->tok);
	tern_head_free(s->head);
	tern_engine_free(s->eng);
	tern_layers_free(&s->layers);
	tern_pool_free(s->pool);
	tern_source_close(s->src);
	tern_tokens_free(&s->prompt);
	tern_aligned_free(s->hidden);
	tern_aligned_free(s->logits);
	free(s->seen);
	if (s->dump)
		fclose(s->dump);
}

/* Runs ids[0..n) at positions pos.. through the engine and the head; the
 * logits of the last row are left in s->logits + (rows-1)*n_vocab. With a
 * dump file every row's logits are written; otherwise only the last row's
 * are computed. */
static int feed(run_state *s, const int32_t *ids, int n, int pos, float **last, tern_err *err)
{
	const int d = tern_source_hparams(s->src)->n_embd, V = tern_source_hparams(s->src)->n_vocab;
	tern_row rows[4096];
	for (int i = 0; i < n; i += s->o.batch) {
		const int c = n - i < s->o.batch ? n - i : s->o.batch;
		TERN_FORWARD_IF_ERROR(tern_head_embed(s->head, ids + i, c, s->hidden, err));
		for (int j = 0; j < c; j++)
			rows[j] = (tern_row){0, pos + i + j};
		TERN_FORWARD_IF_ERROR(tern_engine_forward(s->eng, rows, c, s->hidden, err));
		if (s->seen && s->n_seen + c <= s->n_seen_cap) {
			memcpy(s->seen + (size_t)s->n_seen * d, s->hidden, (size_t)c * d * sizeof(float));
			s->n_seen += c;
		}
		if (s->dump) {
			TERN_FORWARD_IF_ERROR(tern_head_logits(s->head, s->pool, s->hidden, c, s->logits, err));
			TERN_RETURN_IF(fwrite(s->logits, sizeof(float), (size_t)c * V, s->dump) != (size_t)c * V, err,
				       TERN_EIO, "%s: write failed", s->o.dump);
			s->dump_rows += c;
			*last = s->logits + (size_t)(c - 1) * V;
		} else if (i + c == n) {
			TERN_FORWARD_IF_ERROR(
			    tern_head_logits(s->head, s->pool, s->hidden + (size_t)(c - 1) * d, 1, s->logits, err));
			*last = s->logits;
		}
	}
	return 0;
}

/* Streams text to stdout (unless --quiet). */
static void show(const run_state *s, const char *text, size_t len)
{
	if (!s->o.quiet && len) {
		fwrite(text, 1, len, stdout);
		fflush(stdout);
	}
}

static int run(run_state *s, tern_err *err)
{
	const run_opts *o = &s->o;
	double t0 = tern_now_s();
	TERN_FORWARD_IF_ERROR(tern_source_open(&s->src, o->model, err));
	tern_hparams hp = *tern_source_hparams(s->src);
	const int n_layer = o->layers ? (o->layers < hp.n_layer ? o->layers : hp.n_layer) : hp.n_layer;
	int n_ctx = o->n_ctx ? o->n_ctx : (hp.n_ctx_train < 4096 ? hp.n_ctx_train : 4096);
	TERN_FORWARD_IF_ERROR(tern_pool_create(o->threads, NULL, 0, &s->pool, err));
	TERN_FORWARD_IF_ERROR(
	    tern_layers_from_source_mt(&s->layers, s->src, 0, n_layer, (tern_packing)o->packing, 0, s->pool, err));
	const tern_engine_config ec = {.n_slots = 1,
				       .n_ctx = n_ctx,
				       .max_rows = o->batch,
				       .isa = (tern_isa)o->isa,
				       .pool = s->pool,
				       .kv_type = o->kv_type,
				       .kv_blocks = o->kv_blocks};
	TERN_FORWARD_IF_ERROR(tern_engine_create(&s->layers, &ec, &s->eng, err));
	TERN_FORWARD_IF_ERROR(tern_head_from_source(s->src, TERN_ISA_AUTO, &s->head, err));
	if (o->head_f16) {
		/* the head matrix: token_embd when tied, the output matrix when not */
		const tern_dense_kind hk = hp.tied_embeddings ? TERN_DENSE_TOKEN_EMBD : TERN_DENSE_OUTPUT;
		tern_dense_view te;
		TERN_FORWARD_IF_ERROR(tern_source_dense(s->src, hk, &te, err));
		TERN_RETURN_IF(te.type != TERN_DTYPE_F16, err, TERN_EINVAL,
			       "--lm-head f16: %s stores %s as %s (use --lm-head file)", o->model, tern_dense_gguf(hk),
			       tern_dtype_name(te.type));
	}
	TERN_FORWARD_IF_ERROR(tern_head_quantize(s->head, (tern_head_format)o->head_fmt, s->pool, err));
	int slot;
	TERN_FORWARD_IF_ERROR(tern_kv_slot_alloc(tern_engine_kv(s->eng), &slot, err));

	const int have_vocab = tern_source_vocab(s->src, &(const tern_vocab *){NULL}, NULL) == 0;
	if (have_vocab)
		TERN_FORWARD_IF_ERROR(tern_coord_tokenizer_from_source(s->src, &s->tok, err));
	if (o->ppl) {
		TERN_RETURN_IF(!s->tok, err, TERN_EFORMAT, "%s has no tokenizer: --perplexity needs one", o->model);
		const tern_ppl_config pc = {n_ctx, o->batch, tern_tokenizer_bos(s->tok), slot, s->pool, NULL, NULL};
		tern_ppl_result r;
		TERN_FORWARD_IF_ERROR(tern_perplexity_file(s->eng, s->head, s->tok, hp.n_embd, &pc, o->ppl, &r, err));
		printf("perplexity: %s: %lld tokens in %lld windows of %d, nll %.6f, ppl %.4f\n", o->ppl,
		       (long long)r.n_scored, (long long)r.n_windows, n_ctx, r.nll, r.ppl);
		return 0;
	}
	if (o->tokens) {
		TERN_FORWARD_IF_ERROR(parse_ids(o->tokens, hp.n_vocab, &s->prompt, err));
	} else {
		TERN_RETURN_IF(!s->tok, err, TERN_EFORMAT, "%s has no tokenizer: use --tokens", o->model);
		char *text = NULL;
		size_t len = 0;
		unsigned flags = TERN_ENCODE_ADD_SPECIAL;
		if (o->chat) {
			const tern_chat_msg m = {"user", o->prompt};
			TERN_FORWARD_IF_ERROR(tern_chat_render(TERN_CHAT_BITNET, &m, 1, 1, &text, &len, err));
			flags |= TERN_ENCODE_PARSE_SPECIAL;
		}
		const char *p = text ? text : o->prompt;
		const int rc = tern_tokenizer_encode(s->tok, p, strlen(p), flags, &s->prompt, err);
		free(text);
		TERN_FORWARD_IF_ERROR(rc);
		TERN_RETURN_IF(s->prompt.n == 0, err, TERN_EINVAL, "the prompt encodes to no tokens");
	}
	TERN_RETURN_IF((long)s->prompt.n + o->n_predict > n_ctx, err, TERN_EINVAL,
		       "prompt of %zu tokens + %d to generate exceeds the context of %d (-c)", s->prompt.n,
		       o->n_predict, n_ctx);
	/* Text as the tokens' bytes (invalid UTF-8 passed on as it is). */
	const tern_step_config stc = {.tok = s->tok,
				      .decode_flags = 0,
				      .stops = o->stops,
				      .n_stops = (size_t)o->n_stops,
				      .max_tokens = o->n_predict,
				      .ignore_eos = o->ignore_eos};
	TERN_FORWARD_IF_ERROR(tern_step_create(&stc, &s->step, err));
	TERN_FORWARD_IF_ERROR(tern_sampler_create(&o->sp, hp.n_vocab, &s->smp, err));
	s->hidden = tern_aligned_alloc((size_t)o->batch * hp.n_embd * sizeof(float), TERN_ALIGN);
	s->logits = tern_aligned_alloc((size_t)o->batch * hp.n_vocab * sizeof(float), TERN_ALIGN);
	TERN_RETURN_IF(!s->hidden || !s->logits, err, TERN_ENOMEM, "out of memory for %d rows", o->batch);
	if (o->head_fmt != TERN_HEAD_FILE && o->head_asked) {
		s->n_seen_cap = (int)s->prompt.n + o->n_predict;
		s->seen = malloc((size_t)s->n_seen_cap * hp.n_embd * sizeof(float));
		TERN_RETURN_IF(!s->seen, err, TERN_ENOMEM, "out of memory for %d hidden rows", s->n_seen_cap);
	}
	if (o->dump) {
		s->dump = fopen(o->dump, "wb");
		TERN_RETURN_IF(!s->dump, err, TERN_EIO, "%s: cannot create: %s", o->dump, strerror(errno));
		/* the header is rewritten with the real row count at the end */
		TERN_RETURN_IF(npy_write_header(s->dump, 0, hp.n_vocab) < 0, err, TERN_EIO, "%s: write failed",
			       o->dump);
	}
	const double t_load = tern_now_s() - t0;
	TERN_LOGI("run",
		  "%s: %d/%d layers, %s, %s kernels, %d thread%s, LM head %s (%s), context %d (%s KV), seed %llu, loaded in %.2f s",
		  o->model, n_layer, hp.n_layer, tern_layers_format(&s->layers),
		  tern_isa_name(o->isa == TERN_ISA_AUTO ? tern_isa_default() : (tern_isa)o->isa), o->threads,
		  o->threads > 1 ? "s" : "", tern_head_format_name(tern_head_active(s->head)),
		  tern_isa_name(tern_head_isa(s->head)), n_ctx, tern_dtype_name(o->kv_type),
		  (unsigned long long)tern_sampler_seed(s->smp), t_load);
	if (o->tokens && s->tok && !o->quiet) {
		for (size_t i = 0; i < s->prompt.n; i++) {
			const char *text;
			size_t len;
			TERN_FORWARD_IF_ERROR(tern_step_prompt(s->step, s->prompt.ids[i], &text, &len, err));
			show(s, text, len);
		}
	} else if (!o->quiet) {
		fputs(o->prompt, stdout);
		fflush(stdout);
	}

	/* prefill */
	float *last = NULL;
	const int n_prompt = (int)s->prompt.n;
	const double tp0 = tern_now_s();
	TERN_FORWARD_IF_ERROR(feed(s, s->prompt.ids, n_prompt, 0, &last, err));
	const double t_prompt = tern_now_s() - tp0;
	for (int i = 0; i < n_prompt; i++)
		tern_sampler_accept(s->smp, s->prompt.ids[i]);

	/* decode */
	int pos = n_prompt, n_gen = 0, n_fed = 0;
	const double td0 = tern_now_s();
	if (o->print_ids)
		fputs("ids:", stderr);
	tern_step_out so = {TERN_FINISH_NONE, "", 0, "", 0};
	if (o->n_predict == 0)
		TERN_FORWARD_IF_ERROR(tern_step_end(s->step, TERN_FINISH_LENGTH, &so, err));
	while (so.finish == TERN_FINISH_NONE) {
		int32_t id;
		TERN_FORWARD_IF_ERROR(tern_sampler_sample(s->smp, last, &id, err));
		n_gen++;
		TERN_FORWARD_IF_ERROR(tern_step_token(s->step, id, &so, err));
		if (o->print_ids && so.finish != TERN_FINISH_EOS)
			fprintf(stderr, " %d", id);
		show(s, so.text, so.len);
		if (so.finish != TERN_FINISH_NONE)
			break;
		TERN_FORWARD_IF_ERROR(feed(s, &id, 1, pos, &last, err));
		pos++;
		n_fed++;
	}
	const double t_decode = tern_now_s() - td0;
	if (o->print_ids)
		fputc('\n', stderr);
	show(s, so.tail, so.tail_len);
	if (!o->quiet)
		fputc('\n', stdout);
	fflush(stdout);
	if (s->dump) {
		TERN_RETURN_IF(fseek(s->dump, 0, SEEK_SET) != 0 ||
				   npy_write_header(s->dump, s->dump_rows, hp.n_vocab) < 0,
			       err, TERN_EIO, "%s: write failed", o->dump);
		const int rc = fclose(s->dump);
		s->dump = NULL;
		TERN_RETURN_IF(rc != 0, err, TERN_EIO, "%s: write failed", o->dump);
	}
	fprintf(stderr, "tern-run: prompt %d tokens in %.3f s = %.2f tokens/s\n", n_prompt, t_prompt,
		t_prompt > 0 ? n_prompt / t_prompt : 0.0);
	fprintf(stderr, "tern-run: decode %d tokens in %.3f s = %.2f tokens/s (%d engine steps)\n", n_gen, t_decode,
		t_decode > 0 && n_fed ? n_fed / t_decode : 0.0, n_fed);
	if (o->head_fmt != TERN_HEAD_FILE && o->head_asked && s->n_seen > 0) {
		int agree = 0;
		TERN_FORWARD_IF_ERROR(tern_head_agreement(s->head, s->pool, s->seen, s->n_seen, &agree, err));
		fprintf(stderr,
			"tern-run: %s LM head: top-1 agrees with the file-precision head at %d of %d positions "
			"(%.2f%%)\n",
			tern_head_format_name((tern_head_format)o->head_fmt), agree, s->n_seen, 100.0 * agree / s->n_seen);
	}
	return 0;
}

int main(int argc, char **argv)
{
	run_state s;
	memset(&s, 0, sizeof s);
	const int bad = parse_args(argc, argv, &s.o);
	if (bad)
		return bad;
	tern_err err = {0};
	const int rc = run(&s, &err);
	if (rc < 0)
		fprintf(stderr, "tern-run: %s\n", err.msg);
	run_free(&s);
	return rc < 0 ? 1 : 0;
}
