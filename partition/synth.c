/* synth.c: the synthetic model generator of tern-synth.h. Values come from a
 * counter-based hash (splitmix64 finaliser over seed, tensor id, counter), so
 * each tensor, and each row range of it, is generated independently; the
 * writer streams chunks of about 4M elements through tern-gguf's writer. */
#include "tern-synth.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern-gguf.h"
#include "tern-half.h"

#define CHUNK_ELEMS (UINT64_C(1) << 22)

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

/* Tensor ids: (layer+1) << 8 | kind; kind 0..6 projections, 16+n norms,
 * 32 the embedding. layer -1 for global tensors. */
static uint64_t tid_of(int layer, int kind)
{
	return ((uint64_t)(int64_t)(layer + 1) << 8) | (uint64_t)kind;
}

/* The per-tensor part of the hash, computed once per tensor in loops. */
static uint64_t tensor_base(uint64_t seed, uint64_t tid)
{
	return mix64(seed * 0x9E3779B97F4A7C15ULL + mix64(tid + 0x632BE59BD9B4E019ULL));
}

static uint64_t hash_at(uint64_t base, uint64_t ctr)
{
	return mix64(base ^ (ctr * 0xD1B54A32D192ED03ULL + 0x8CB92BA72F3D8DD7ULL));
}

static uint64_t hash3(uint64_t seed, uint64_t tid, uint64_t ctr)
{
	return hash_at(tensor_base(seed, tid), ctr);
}

static double unit(uint64_t h)
{
	return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}

void tern_synth_ternary_rows(uint64_t seed, const tern_hparams *hp, int layer, tern_proj p, int64_t row0, int64_t nrows,
			     int8_t *w)
{
	int m, k;
	tern_proj_shape(hp, p, &m, &k);
	(void)m;
	const uint64_t base = tensor_base(seed, tid_of(layer, (int)p));
	const uint64_t i0 = (uint64_t)row0 * (uint64_t)k, n = (uint64_t)nrows * (uint64_t)k;
	/* One hash gives 8 bytes -> 8 weights: byte*3>>8 in {0,1,2} (85/86/85 of 256). */
	uint64_t h = 0, hidx = UINT64_MAX;
	for (uint64_t e = 0; e < n; e++) {
		const uint64_t i = i0 + e;
		if (i / 8 != hidx) {
			hidx = i / 8;
			h = hash_at(base, hidx);
		}
		const unsigned byte = (unsigned)(h >> (8 * (i % 8))) & 0xFF;
		w[e] = (int8_t)((int)((byte * 3) >> 8) - 1);
	}
}

float tern_synth_scale(uint64_t seed, const tern_hparams *hp, int layer, tern_proj p)
{
	int m, k;
	tern_proj_shape(hp, p, &m, &k);
	const double u = unit(hash3(seed, tid_of(layer, (int)p), UINT64_MAX));
	return (float)((0.75 + 0.5 * u) / sqrt((double)k));
}

float tern_synth_norm(uint64_t seed, int layer, tern_norm_kind n, int64_t i)
{
	const int l = n == TERN_NORM_OUTPUT ? -1 : layer;
	/* stream ids fixed when the output norm was kind 4: the same values for
	 * every model written before the q/k norms came (kinds 4, 5 -> 28, 29) */
	const int tag = n == TERN_NORM_OUTPUT ? 20 : n >= TERN_NORM_ATTN_Q ? 24 + (int)n : 16 + (int)n;
	return (float)(0.9 + 0.2 * unit(hash3(seed, tid_of(l, tag), (uint64_t)i)));
}

static uint16_t embd_value(uint64_t h, double sigma)
{
	/* Irwin-Hall of four 16-bit uniforms: mean 2, variance 1/3 -> ~N(0,1). */
	const double s =
	    (double)(h & 0xFFFF) + (double)((h >> 16) & 0xFFFF) + (double)((h >> 32) & 0xFFFF) + (double)(h >> 48);
	const double z = (s / 65536.0 - 2.0) * 1.7320508075688772;
	return tern_f32_to_f16((float)(z * sigma));
}

static double embd_sigma(const tern_hparams *hp)
{
	const double sigma = 2.0 / sqrt((double)hp->n_embd);
	return sigma > 1.0 ? 1.0 : sigma;
}

uint16_t tern_synth_embd_f16(uint64_t seed, const tern_hparams *hp, int64_t token, int64_t i)
{
	const uint64_t h = hash3(seed, tid_of(-1, 32), (uint64_t)token * (uint64_t)hp->n_embd + (uint64_t)i);
	return embd_value(h, embd_sigma(hp));
}

/* ---- vocabulary ------------------------------------------------------------- */

/* Fragments the synthetic merges build, left to right (' ' is Ġ, '\n' is Ċ
 * after byte-level encoding). */
static const char *const merge_words[] = {
    " the",   " of",  " and",  " to",    " in",    " is",    " that",  " for",  " it",      " was",    " on",
    " with",  " as",  " be",   " at",    " by",    " this",  " have",  " from", " are",     " not",    " or",
    " an",    " we",  " they", " you",   " he",    " she",   " his",   " her",  " which",   " one",    " all",
    " there", " can", " will", " model", " token", " hello", " world", " tern", " ternary", " weight", "the",
    "The",    " The", "ing",   "ed",     "er",     "es",     "in",     "on",    "an",       "re",      "at",
    "en",     "or",   "th",    "Hello",  "\n\n",   "  ",     "    ",   "...",   "123",      "00",
};

typedef struct {
	char **tok;    /* (n_vocab) */
	int32_t *type; /* (n_vocab) */
	char **merges; /* (n_merges) */
	int64_t n_merges;
} synth_vocab;

static void free_vocab(synth_vocab *v, int64_t n_vocab)
{
	if (v->tok)
		for (int64_t i = 0; i < n_vocab; i++)
			free(v->tok[i]);
	for (int64_t i = 0; i < v->n_merges; i++)
		free(v->merges[i]);
	free(v->tok);
	free(v->type);
	free(v->merges);
}

/* GPT-2 byte -> code point map (MODEL-FORMATS 3.2), as UTF-8. */
static void byte_token(int b, char out[4])
{
	int cp;
	if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
		cp = b;
	} else {
		int n = 0;
		for (int x = 0; x < b; x++)
			if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF)))
				n++;
		cp = 0x100 + n;
	}
	if (cp < 0x80) {
		out[0] = (char)cp;
		out[1] = 0;
	} else {
		out[0] = (char)(0xC0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3F));
		out[2] = 0;
	}
}

static int build_vocab(const tern_hparams *hp, int max_merges, synth_vocab *v, tern_err *err)
{
	const int64_t n = hp->n_vocab;
	memset(v, 0, sizeof *v);
	v->tok = calloc((size_t)n, sizeof *v->tok);
	v->type = calloc((size_t)n, sizeof *v->type);
	v->merges = calloc(1024, sizeof *v->merges);
	TERN_RETURN_IF(!v->tok || !v->type || !v->merges, err, TERN_ENOMEM, "synth: out of memory");
	const struct {
		int32_t id;
		const char *text;
	} specials[3] = {
	    {hp->bos_id, "<|begin_of_text|>"}, {hp->eos_id, "<|end_of_text|>"}, {hp->eot_id, "<|eot_id|>"}};
	int n_special = 0;
	for (int i = 0; i < 3; i++) {
		if (specials[i].id < 0)
			continue;
		TERN_RETURN_IF(specials[i].id >= n || v->tok[specials[i].id], err, TERN_EINVAL,
			       "synth: special token id %d invalid for a vocabulary of %" PRId64, specials[i].id, n);
		v->tok[specials[i].id] = strdup(specials[i].text);
		v->type[specials[i].id] = 3;
		n_special++;
	}
	TERN_RETURN_IF(n < 256 + n_special, err, TERN_EINVAL,
		       "synth: vocabulary of %" PRId64 " is too small for 256 byte tokens and %d specials", n,
		       n_special);
	int64_t next = 0;
#define NEXT_FREE()                                      \
	do {                                             \
		while (next < n && v->tok[next] != NULL) \
			next++;                          \
	} while (0)
	for (int b = 0; b < 256; b++) {
		char t[4];
		byte_token(b, t);
		NEXT_FREE();
		v->tok[next] = strdup(t);
		v->type[next] = 1;
	}
	/* Merges: build each word left to right from its byte tokens. */
	for (size_t wi = 0; wi < sizeof merge_words / sizeof merge_words[0]; wi++) {
		const char *word = merge_words[wi];
		char cur[128] = "", piece[4];
		for (const char *c = word; *c; c++) {
			byte_token((unsigned char)*c, piece);
			if (c == word) {
				snprintf(cur, sizeof cur, "%s", piece);
				continue;
			}
			char joined[128], merge[160];
			snprintf(joined, sizeof joined, "%s%s", cur, piece);
			snprintf(merge, sizeof merge, "%s %s", cur, piece);
			snprintf(cur, sizeof cur, "%s", joined);
			int known = 0;
			for (int64_t i = 0; i < v->n_merges && !known; i++)
				known = strcmp(v->merges[i], merge) == 0;
			if (known)
				continue;
			NEXT_FREE();
			if (next >= n || v->n_merges >= 1024 || (max_merges > 0 && v->n_merges >= max_merges))
				goto merges_done;
			v->tok[next] = strdup(joined);
			v->type[next] = 1;
			v->merges[v->n_merges++] = strdup(merge);
		}
	}
merges_done:;
	int64_t reserved = 0;
	for (int64_t i = 0; i < n; i++) {
		if (v->tok[i])
			continue;
		char t[64];
		snprintf(t, sizeof t, "<|reserved_special_token_%" PRId64 "|>", reserved++);
		v->tok[i] = strdup(t);
		v->type[i] = 3;
	}
#undef NEXT_FREE
	for (int64_t i = 0; i < n; i++)
		TERN_RETURN_IF(!v->tok[i], err, TERN_ENOMEM, "synth: out of memory");
	for (int64_t i = 0; i < v->n_merges; i++)
		TERN_RETURN_IF(!v->merges[i], err, TERN_ENOMEM, "synth: out of memory");
	return 0;
}

/* ---- writing ----------------------------------------------------------------- */

static int check_shape(const tern_hparams *hp, tern_err *err)
{
	TERN_FORWARD_IF_ERROR(tern_hparams_validate(hp, err));
	for (int p = 0; p < TERN_PROJ_COUNT; p++) {
		int m, k;
		tern_proj_shape(hp, (tern_proj)p, &m, &k);
		TERN_RETURN_IF(((int64_t)m * k) % 128 != 0, err, TERN_EINVAL,
			       "synth: %s projection %dx%d is not a whole number of I2_S blocks (128)",
			       tern_proj_name((tern_proj)p), m, k);
		TERN_RETURN_IF(tern_arch_find(hp->arch)->synth_proj_dtype == TERN_DTYPE_Q2_0 && k % 64 != 0, err,
			       TERN_EINVAL, "synth: %s projection %dx%d is not a whole number of Q2_0 blocks (64)",
			       tern_proj_name((tern_proj)p), m, k);
	}
	return 0;
}

/* Declares every KV and tensor of the synthetic model on w. */
static int declare(tern_gguf_writer *w, const tern_hparams *hp, uint64_t seed, const synth_vocab *v, tern_err *err)
{
	const char *a = hp->arch; /* the family's own keys: bitnet-b1.58.*, llama.* */
	char key[128];
	TERN_FORWARD_IF_ERROR(tern_gguf_writer_add_str(w, "general.architecture", a, err));
	TERN_FORWARD_IF_ERROR(tern_gguf_writer_add_str(w, "general.name", "tern-synth", err));
	TERN_FORWARD_IF_ERROR(tern_gguf_writer_add_u32(w, "general.file_type", 40, err));
	TERN_FORWARD_IF_ERROR(tern_gguf_writer_add_u64(w, "tern.synth.seed", seed, err));
#define KU(suffix, val)                                                                        \
	do {                                                                                   \
		snprintf(key, sizeof key, "%s.%s", a, suffix);                                 \
		TERN_FORWARD_IF_ERROR(tern_gguf_writer_add_u32(w, key, (uint32_t)(val), err)); \
	} while (0)
	KU("vocab_size", hp->n_vocab);
	KU("context_length", hp->n_ctx_train);
	KU("embedding_length", hp->n_embd);
	KU("block_count", hp->n_layer);
	KU("feed_forward_length", hp->n_ff);
	KU("rope.dimension_count", hp->head_dim);
	KU("attention.head_count", hp->n_head);
	KU("attention.head_count_kv", hp->n_head_kv);
#undef KU
	snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", a);
	TERN_FORWARD_IF_ERROR(tern_gguf_writer_add_f32(w, key, hp->norm_eps, err));
	snprintf(key, sizeof key, "%s.rope.freq_base", a);
	TERN_FORWARD_IF_ERROR(tern_gguf_writer_add_f32(w, key, hp->rope_theta, err));
	TERN_FORWARD_IF_ERROR(tern_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2", err));
	TERN_FORWARD_IF_ERROR(tern_gguf_writer_add_str(w, "tokenizer.ggml.pre", "llama-bpe", err));
	TERN_FORWARD_IF_ERROR(tern_gguf_writer_add_array(w, "tokenizer.ggml.tokens", TERN_GGUF_STRING,
							 (const char *const *)v->tok, (uint64_t)hp->n_vocab, err));
	TERN_FORWARD_IF_ERROR(tern_gguf_writer_add_array(w, "tokenizer.ggml.token_type", TERN_GGUF_I32, v->type,
							 (uint64_t)hp->n_vocab, err));
	TERN_FORWARD_IF_ERROR(tern_gguf_writer_add_array(w, "tokenizer.ggml.merges", TERN_GGUF_STRING,
							 (const char *const *)v->merges, (uint64_t)v->n_merges, err));
	if (hp->bos_id >= 0)
		TERN_FORWARD_IF_ERROR(
		    tern_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)hp->bos_id, err));
	if (hp->eos_id >= 0)
		TERN_FORWARD_IF_ERROR(
		    tern_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)hp->eos_id, err));
	TERN_FORWARD_IF_ERROR(tern_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", 1, err));

	const uint64_t d = (uint64_t)hp->n_embd;
	uint64_t ne[2] = {d, (uint64_t)hp->n_vocab};
	TERN_FORWARD_IF_ERROR(tern_gguf_writer_add_tensor(w, "token_embd.weight", 2, ne, TERN_DTYPE_F16, err));
	TERN_FORWARD_IF_ERROR(tern_gguf_writer_add_tensor(w, "output_norm.weight", 1, &d, TERN_DTYPE_F32, err));
	for (int l = 0; l < hp->n_layer; l++) {
		char name[96];
		for (int n = 0; n < TERN_NORM_OUTPUT; n++) {
			if (!tern_norm_present(hp, (tern_norm_kind)n))
				continue;
			const uint64_t len = (uint64_t)tern_norm_len(hp, (tern_norm_kind)n);
			tern_norm_gguf_name((tern_norm_kind)n, l, name, sizeof name);
			TERN_FORWARD_IF_ERROR(tern_gguf_writer_add_tensor(w, name, 1, &len, TERN_DTYPE_F32, err));
		}
		for (int p = 0; p < TERN_PROJ_COUNT; p++) {
			int m, k;
			tern_proj_shape(hp, (tern_proj)p, &m, &k);
			const uint64_t pne[2] = {(uint64_t)k, (uint64_t)m};
			tern_proj_gguf_name((tern_proj)p, l, name, sizeof name);
			TERN_FORWARD_IF_ERROR(tern_gguf_writer_add_tensor(
			    w, name, 2, pne, (tern_dtype)tern_arch_find(hp->arch)->synth_proj_dtype, err));
		}
	}
	return 0;
}

typedef struct {
	tern_gguf_writer *w;
	const tern_synth_opts *o;
	uint64_t done, total, last_report;
} stream;

static int emit(stream *s, const void *p, size_t n, tern_err *err)
{
	TERN_FORWARD_IF_ERROR(tern_gguf_writer_write(s->w, p, n, err));
	s->done += n;
	if (s->o->progress && (s->done - s->last_report >= (UINT64_C(64) << 20) || s->done == s->total)) {
		s->last_report = s->done;
		s->o->progress(s->o->progress_ud, s->done, s->total);
	}
	return 0;
}

static int write_norm(stream *s, uint64_t seed, int layer, tern_norm_kind n, int64_t len, float *buf, tern_err *err)
{
	for (int64_t i = 0; i < len; i++)
		buf[i] = tern_synth_norm(seed, layer, n, i);
	return emit(s, buf, (size_t)len * sizeof(float), err);
}

/* GGUF rows [row0, row0 + nrows) of q/k in the converter's interleaved order
 * (tern_arch.gguf_qk_interleaved): GGUF row h*hd + 2i + j holds the
 * generator's (HF order) row h*hd + j*hd/2 + i. */
static void permuted_rows(uint64_t seed, const tern_hparams *hp, int layer, tern_proj p, int64_t row0, int64_t nrows,
			  int8_t *w)
{
	int m, k;
	tern_proj_shape(hp, p, &m, &k);
	const int64_t hd = hp->head_dim, half = hd / 2;
	for (int64_t r = row0; r < row0 + nrows; r++) {
		const int64_t h = r / hd, i = (r % hd) / 2, j = r % 2;
		tern_synth_ternary_rows(seed, hp, layer, p, h * hd + j * half + i, 1, w + (r - row0) * k);
	}
}

static uint64_t gcd64(uint64_t a, uint64_t b)
{
	while (b) {
		const uint64_t t = a % b;
		a = b;
		b = t;
	}
	return a;
}

/* Projection p of layer l as ggml Q2_0 (Ternary-Bonsai's own form): the
 * same ternary rows as the I2_S form, every 64-group's f16 d the tensor's
 * tern_synth_scale, in chunks of whole rows through tw (CHUNK_ELEMS int8)
 * and out (CHUNK_ELEMS / 4 bytes or more). */
static int write_q2_0(stream *s, uint64_t seed, const tern_hparams *hp, int l, tern_proj p, int8_t *tw, uint8_t *out,
		      tern_err *err)
{
	int m, k;
	tern_proj_shape(hp, p, &m, &k);
	const uint16_t d = tern_f32_to_f16(tern_synth_scale(seed, hp, l, p));
	/* 18 bytes per 64 weights must fit the CHUNK_ELEMS / 4 bytes of out */
	int64_t rows = (int64_t)(CHUNK_ELEMS / 4 / 18 * 64) / k;
	if (rows < 1)
		rows = 1;
	int rc = 0;
	for (int64_t r0 = 0; rc == 0 && r0 < m; r0 += rows) {
		const int64_t nr = m - r0 < rows ? m - r0 : rows;
		tern_synth_ternary_rows(seed, hp, l, p, r0, nr, tw);
		const int64_t nb = nr * (k / 64);
		for (int64_t b = 0; b < nb; b++) {
			uint8_t *blk = out + b * 18;
			const int8_t *w = tw + b * 64;
			blk[0] = (uint8_t)(d & 0xff);
			blk[1] = (uint8_t)(d >> 8);
			for (int j = 0; j < 16; j++)
				blk[2 + j] = (uint8_t)((w[4 * j] + 1) | (w[4 * j + 1] + 1) << 2 | (w[4 * j + 2] + 1) << 4 |
						       (w[4 * j + 3] + 1) << 6);
		}
		rc = emit(s, out, (size_t)nb * 18, err);
	}
	return rc;
}

static int write_all(stream *s, const tern_hparams *hp, uint64_t seed, tern_err *err)
{
	const int64_t d = hp->n_embd;
	const int64_t maxk = hp->n_ff > d ? hp->n_ff : d;
	/* Row chunks hold whole I2_S blocks: rows a multiple of 128/gcd(k,128). */
	int8_t *tw = malloc(CHUNK_ELEMS + (size_t)maxk * 128);
	uint8_t *packed = malloc((CHUNK_ELEMS + (size_t)maxk * 128) / 4 + 32);
	uint16_t *erow = malloc((size_t)d * 2 * 64);
	float *fbuf = malloc((size_t)maxk * sizeof(float));
	int rc = 0;
	if (!tw || !packed || !erow || !fbuf) {
		rc = TERN_ERR(err, TERN_ENOMEM, "synth: out of memory");
		goto out;
	}
	const int qk_interleaved = tern_arch_find(hp->arch)->gguf_qk_interleaved;
	const int q2_0 = tern_arch_find(hp->arch)->synth_proj_dtype == TERN_DTYPE_Q2_0;
	const uint64_t ebase = tensor_base(seed, tid_of(-1, 32));
	const double sigma = embd_sigma(hp);
	for (int64_t t = 0; rc == 0 && t < hp->n_vocab; t += 64) {
		const int64_t nr = hp->n_vocab - t < 64 ? hp->n_vocab - t : 64;
		for (int64_t r = 0; r < nr; r++)
			for (int64_t i = 0; i < d; i++)
				erow[r * d + i] = embd_value(hash_at(ebase, (uint64_t)((t + r) * d + i)), sigma);
		rc = emit(s, erow, (size_t)(nr * d) * 2, err);
	}
	if (rc == 0)
		rc = write_norm(s, seed, -1, TERN_NORM_OUTPUT, d, fbuf, err);
	for (int l = 0; rc == 0 && l < hp->n_layer; l++) {
		for (int n = 0; rc == 0 && n < TERN_NORM_OUTPUT; n++)
			if (tern_norm_present(hp, (tern_norm_kind)n))
				rc = write_norm(s, seed, l, (tern_norm_kind)n, tern_norm_len(hp, (tern_norm_kind)n), fbuf,
						err);
		for (int p = 0; rc == 0 && p < TERN_PROJ_COUNT; p++) {
			int m, k;
			tern_proj_shape(hp, (tern_proj)p, &m, &k);
			if (q2_0) {
				rc = write_q2_0(s, seed, hp, l, (tern_proj)p, tw, packed, err);
				continue;
			}
			const int permuted = qk_interleaved && (p == TERN_PROJ_Q || p == TERN_PROJ_K);
			const uint64_t unit_rows = 128 / gcd64((uint64_t)k, 128);
			uint64_t rows = CHUNK_ELEMS / ((uint64_t)k * unit_rows) * unit_rows;
			if (rows == 0)
				rows = unit_rows;
			for (int64_t r0 = 0; rc == 0 && r0 < m; r0 += (int64_t)rows) {
				const int64_t nr = m - r0 < (int64_t)rows ? m - r0 : (int64_t)rows;
				const uint64_t ne = (uint64_t)nr * (uint64_t)k;
				if (permuted)
					permuted_rows(seed, hp, l, (tern_proj)p, r0, nr, tw);
				else
					tern_synth_ternary_rows(seed, hp, l, (tern_proj)p, r0, nr, tw);
				/* Encode with block indices relative to this chunk. */
				tern_i2s_encode(packed, 0, tw, ne);
				rc = emit(s, packed, (size_t)(ne / 4), err);
			}
			if (rc == 0) {
				uint8_t tail[32] = {0};
				const float sc = tern_synth_scale(seed, hp, l, (tern_proj)p);
				memcpy(tail, &sc, sizeof sc);
				rc = emit(s, tail, sizeof tail, err);
			}
		}
	}
out:
	free(tw);
	free(packed);
	free(erow);
	free(fbuf);
	return rc;
}

static int synth_run(const char *path, const tern_hparams *hp, uint64_t seed, const tern_synth_opts *opts,
		     uint64_t *total, tern_err *err)
{
	tern_synth_opts dflt = {3, 0, NULL, NULL};
	if (!opts)
		opts = &dflt;
	TERN_FORWARD_IF_ERROR(check_shape(hp, err));
	synth_vocab v;
	int rc = build_vocab(hp, opts->n_merges, &v, err);
	tern_gguf_writer *w = NULL;
	if (rc == 0)
		rc = tern_gguf_writer_open(&w, path, opts->gguf_version ? opts->gguf_version : 3, 0, err);
	if (rc == 0)
		rc = declare(w, hp, seed, &v, err);
	if (rc == 0)
		rc = tern_gguf_writer_write_header(w, err);
	if (rc == 0 && total)
		*total = tern_gguf_writer_total_bytes(w);
	if (rc == 0 && path) {
		stream s = {w, opts, 0, tern_gguf_writer_total_bytes(w), 0};
		rc = write_all(&s, hp, seed, err);
		if (rc == 0)
			rc = tern_gguf_writer_finish(w, err);
		if (rc == 0 && opts->progress)
			opts->progress(opts->progress_ud, s.total, s.total);
	}
	tern_gguf_writer_free(w);
	free_vocab(&v, hp->n_vocab);
	return rc;
}

int tern_synth_write(const char *path, const tern_hparams *hp, uint64_t seed, const tern_synth_opts *opts,
		     tern_err *err)
{
	TERN_RETURN_IF(!path, err, TERN_EINVAL, "synth: no output path");
	return synth_run(path, hp, seed, opts, NULL, err);
}

uint64_t tern_synth_file_bytes(const tern_hparams *hp, const tern_synth_opts *opts)
{
	uint64_t total = 0;
	if (synth_run(NULL, hp, 0, opts, &total, NULL) < 0)
		return 0;
	return total;
}

int tern_synth_override(tern_hparams *hp, const char *spec, tern_err *err)
{
	const char *p = spec;
	while (p && *p) {
		const char *end = strchr(p, ',');
		const size_t n = end ? (size_t)(end - p) : strlen(p);
		char item[128];
		TERN_RETURN_IF(n >= sizeof item, err, TERN_EINVAL, "override '%.*s' too long", (int)n, p);
		memcpy(item, p, n);
		item[n] = 0;
		char *eq = strchr(item, '=');
		TERN_RETURN_IF(!eq || eq == item || !eq[1], err, TERN_EINVAL, "override '%s' is not key=value", item);
		*eq = 0;
		const char *key = item, *val = eq + 1;
		char *vend;
		const double x = strtod(val, &vend);
		TERN_RETURN_IF(*vend != 0 || !isfinite(x), err, TERN_EINVAL, "override %s: '%s' is not a number", key,
			       val);
		const int iv = x >= -1 && x <= 1e9 && x == (double)(int)x ? (int)x : INT32_MIN;
		/* The integer keys and their fields ("layers" is n_layer too). */
		int *const fields[] = {&hp->n_embd,    &hp->n_layer, &hp->n_layer, &hp->n_head,
				       &hp->n_head_kv, &hp->n_ff,    &hp->n_vocab, &hp->n_ctx_train,
				       &hp->bos_id,    &hp->eos_id,  &hp->eot_id};
		static const char *const names[] = {"n_embd",  "n_layer", "layers", "n_head", "n_head_kv", "n_ff",
						    "n_vocab", "n_ctx",   "bos",    "eos",    "eot"};
		int *ip = NULL;
		for (size_t i = 0; i < sizeof names / sizeof names[0] && !ip; i++)
			if (!strcmp(key, names[i]))
				ip = fields[i];
		if (ip) {
			TERN_RETURN_IF(iv == INT32_MIN, err, TERN_EINVAL, "override %s: '%s' is not an integer", key,
				       val);
			*ip = iv;
		} else if (!strcmp(key, "rope_theta")) {
			hp->rope_theta = (float)x;
		} else if (!strcmp(key, "norm_eps")) {
			hp->norm_eps = (float)x;
		} else {
			return TERN_ERR(
			    err, TERN_EINVAL,
			    "unknown override '%s' (known: n_embd n_layer n_head n_head_kv n_ff n_vocab n_ctx "
			    "rope_theta norm_eps bos eos eot)",
			    key);
		}
		p = end ? end + 1 : NULL;
	}
	hp->head_dim = hp->n_head > 0 ? hp->n_embd / hp->n_head : 0;
	return tern_hparams_validate(hp, err);
}
