/* source.c: the uniform model source of tern-source.h over GGUF files and
 * HF safetensors checkpoints. Open resolves and shape-checks every tensor the
 * model needs into small references (format, pointer, shape); the accessors
 * then decode straight from the mapping: I2_S and HF packed bytes unpack to
 * ternary, full-precision weights are quantized with the per-group absmean
 * rule in two passes (sum, then round) so no f32 copy of a matrix is made. */
#include "tern-source.h"
#include "tern-gq.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tern-gguf.h"
#include "tern-half.h"
#include "tern-json.h"
#include "tern-safetensors.h"

/* A weight or norm as the file stores it: F32, F16 or BF16; I2_S (GGUF);
 * U8 for HF packed ternary (4 codes per byte, MODEL-FORMATS 4.2). */
typedef struct {
	tern_dtype dtype;
	const uint8_t *data;
	int64_t m, k; /* logical shape (norms: m = 1, k = n) */
	float scale;  /* I2S / PACKED: the file's per-tensor scale */
	char name[96];
} tref;

struct tern_source {
	char *path;
	tern_source_kind kind;
	tern_hparams hp;
	tern_gguf *g;
	tern_st **st; /* (n_st) HF shards */
	int n_st;
	int prequant;
	int group_scaled;   /* every projection is GGUF Q2_0 (tern_source_gq) */
	int qk_interleaved; /* GGUF q/k rows in llama.cpp's interleaved order (tern_arch), undone on read */
	int scale_divides;  /* HF packed: W = ternary / weight_scale (tern_hf_quant) */
	char fmt_desc[32];
	tref *w;    /* (n_layer, TERN_PROJ_COUNT) */
	tref *norm; /* (n_layer * TERN_LAYER_NORMS + 1): per layer ATTN..ATTN_K, then OUTPUT */
	tern_dense_view dense[2];
	int has_output;
	/* tokenizer (lazy) */
	int vocab_loaded;
	tern_vocab vocab;
	char *vocab_arena;
	void *vocab_arrays[6];
};

/* ---- element access ---------------------------------------------------------- */

static float ld_f32(tern_dtype dt, const uint8_t *d, uint64_t i)
{
	switch (dt) {
	case TERN_DTYPE_F32: {
		float f;
		memcpy(&f, d + 4 * i, 4);
		return f;
	}
	case TERN_DTYPE_F16: return tern_f16_to_f32((uint16_t)(d[2 * i] | (d[2 * i + 1] << 8)));
	default: return tern_bf16_to_f32((uint16_t)(d[2 * i] | (d[2 * i + 1] << 8)));
	}
}

/* A float tensor that is already ternary: every element 0 or +-a for one a
 * (bitnet.cpp's converter writes ternary / weight_scale to F16/F32 GGUFs, and
 * llama-quantize's I2_S keeps a = max|W|). Then W = sign * a exactly, which
 * absmean would turn into the scale frac_nonzero * a. Returns 1 with w and
 * *a filled, 0 (w untouched) for anything else, an all-zero tensor included. */
static int single_magnitude(tern_dtype dt, const uint8_t *d, int64_t m, int64_t k, int8_t *w, float *a)
{
	const uint64_t n = (uint64_t)(m * k);
	float mag = 0.0f;
	for (uint64_t i = 0; i < n; i++) {
		const float v = fabsf(ld_f32(dt, d, i));
		if (v == 0.0f)
			continue;
		if (mag == 0.0f)
			mag = v;
		else if (v != mag)
			return 0;
	}
	if (!(mag > 0.0f) || !isfinite(mag))
		return 0;
	for (uint64_t i = 0; i < n; i++) {
		const float v = ld_f32(dt, d, i);
		w[i] = (int8_t)(v > 0.0f ? 1 : v < 0.0f ? -1 : 0);
	}
	*a = mag;
	return 1;
}

/* Per-group absmean over a full-precision m x k matrix in any float format. */
static int absmean_quantize(tern_dtype dt, const uint8_t *d, int64_t m, int64_t k, int64_t group_rows, int8_t *w,
			    float *scales, const char *what, tern_err *err)
{
	if (group_rows <= 0 || group_rows > m)
		group_rows = m;
	const int64_t n_groups = (m + group_rows - 1) / group_rows;
	for (int64_t gi = 0; gi < n_groups; gi++) {
		const int64_t r0 = gi * group_rows, r1 = r0 + group_rows < m ? r0 + group_rows : m;
		double sum = 0.0;
		for (uint64_t i = (uint64_t)(r0 * k); i < (uint64_t)(r1 * k); i++)
			sum += fabs((double)ld_f32(dt, d, i));
		if (!isfinite(sum))
			return TERN_ERR(err, TERN_EFORMAT, "%s: non-finite weights in rows %" PRId64 "..%" PRId64, what,
					r0, r1 - 1);
		const float mean = (float)(sum / (double)((r1 - r0) * k));
		const float scale = mean > 1e-5f ? mean : 1e-5f;
		const float s = 1.0f / scale;
		for (uint64_t i = (uint64_t)(r0 * k); i < (uint64_t)(r1 * k); i++) {
			float q = rintf(ld_f32(dt, d, i) * s);
			q = q > 1.0f ? 1.0f : q < -1.0f ? -1.0f : q;
			w[i] = (int8_t)q;
		}
		scales[gi] = scale;
	}
	return (int)group_rows;
}

int tern_absmean_quantize(const float *x, int64_t m, int64_t k, int64_t group_rows, int8_t *w, float *scales,
			  tern_err *err)
{
	TERN_RETURN_IF(m <= 0 || k <= 0, err, TERN_EINVAL, "absmean: bad shape %" PRId64 "x%" PRId64, m, k);
	const int rc =
	    absmean_quantize(TERN_DTYPE_F32, (const uint8_t *)x, m, k, group_rows, w, scales, "absmean", err);
	return rc < 0 ? rc : 0;
}

/* ---- opening ------------------------------------------------------------------ */

static int is_float(int dt)
{
	return dt == TERN_DTYPE_F32 || dt == TERN_DTYPE_F16 || dt == TERN_DTYPE_BF16;
}

/* The weight format named in tern_source_format(): "f32", ..., "i2_s", "packed". */
static const char *weight_format(tern_dtype dt)
{
	return dt == TERN_DTYPE_U8 ? "packed" : tern_dtype_name(dt);
}

/* Resolves a GGUF tensor of logical shape rows x cols (ne = {cols, rows}; a
 * 1-D tensor when rows == 0). */
static int gguf_ref(tern_source *s, const char *name, int64_t rows, int64_t cols, int allow_i2s, tref *r, tern_err *err)
{
	const tern_gguf_tensor *t = tern_gguf_find_tensor(s->g, name);
	TERN_RETURN_IF(!t, err, TERN_EFORMAT, "%s: missing tensor '%s'", s->path, name);
	const int two_d = rows > 0;
	if (two_d ? (t->n_dims != 2 || t->ne[0] != (uint64_t)cols || t->ne[1] != (uint64_t)rows)
		  : (t->n_dims != 1 || t->ne[0] != (uint64_t)cols))
		return TERN_ERR(err, TERN_EFORMAT,
				"%s: tensor '%s' has shape [%" PRIu64 ", %" PRIu64 "], expected [%" PRId64 ", %" PRId64
				"]",
				s->path, name, t->ne[0], t->n_dims > 1 ? t->ne[1] : 1, cols, two_d ? rows : 1);
	const tern_dtype dt = t->dtype;
	if (!is_float(dt) && !((dt == TERN_DTYPE_I2_S || dt == TERN_DTYPE_Q2_0) && allow_i2s))
		return TERN_ERR(err, TERN_EUNSUP, "%s: tensor '%s' has type %s, which tern cannot use here", s->path,
				name, tern_ggml_type_name(t->type));
	r->dtype = dt;
	r->data = t->data;
	r->m = two_d ? rows : 1;
	r->k = cols;
	snprintf(r->name, sizeof r->name, "%s", name);
	if (dt == TERN_DTYPE_I2_S) {
		TERN_RETURN_IF((rows * cols) % 128 != 0, err, TERN_EUNSUP,
			       "%s: I2_S tensor '%s' has %" PRId64 " elements, not a multiple of 128", s->path, name,
			       rows * cols);
		r->scale = tern_i2s_scale(t->data, rows, cols);
		TERN_RETURN_IF(!isfinite(r->scale), err, TERN_EFORMAT, "%s: tensor '%s' has a non-finite scale",
			       s->path, name);
	}
	return 0;
}

/* What differs between the formats when the model's tensors are resolved:
 * the lookup and check, the tensor names, the pre-quantized weight type. */
typedef struct {
	int (*ref)(tern_source *s, const char *name, int64_t rows, int64_t cols, int allow_prequant, tref *r,
		   tern_err *err);
	void (*proj_name)(tern_proj p, int layer, char *buf, size_t len);
	void (*norm_name)(tern_norm_kind n, int layer, char *buf, size_t len);
	const char *(*dense_name)(tern_dense_kind d);
	tern_dtype prequant;	    /* TERN_DTYPE_I2_S or TERN_DTYPE_U8 */
	const char *prequant_word; /* "I2_S" or "packed", for the mixed-weights error */
	const char *format;	    /* "gguf" or "hf", the start of fmt_desc */
} tensor_names;

/* Resolves every projection, norm and dense tensor of s->hp into s->w,
 * s->norm and s->dense; the output head only when the embeddings are not tied. */
static int resolve_tensors(tern_source *s, const tensor_names *f, tern_err *err)
{
	const tern_hparams *hp = &s->hp;
	char name[128];
	int n_prequant = 0, n_gq = 0;
	tern_dtype wdt = TERN_DTYPE_NONE;
	for (int l = 0; l < hp->n_layer; l++) {
		for (int p = 0; p < TERN_PROJ_COUNT; p++) {
			int m, k;
			tern_proj_shape(hp, (tern_proj)p, &m, &k);
			f->proj_name((tern_proj)p, l, name, sizeof name);
			tref *r = &s->w[l * TERN_PROJ_COUNT + p];
			TERN_FORWARD_IF_ERROR(f->ref(s, name, m, k, 1, r, err));
			n_prequant += r->dtype == f->prequant;
			n_gq += r->dtype == TERN_DTYPE_Q2_0;
			wdt = r->dtype;
		}
		for (int n = 0; n < TERN_NORM_OUTPUT; n++) {
			if (!tern_norm_present(hp, (tern_norm_kind)n))
				continue;
			f->norm_name((tern_norm_kind)n, l, name, sizeof name);
			TERN_FORWARD_IF_ERROR(f->ref(s, name, 0, tern_norm_len(hp, (tern_norm_kind)n), 0,
						     &s->norm[l * TERN_LAYER_NORMS + n], err));
		}
	}
	f->norm_name(TERN_NORM_OUTPUT, 0, name, sizeof name);
	TERN_FORWARD_IF_ERROR(f->ref(s, name, 0, hp->n_embd, 0, &s->norm[hp->n_layer * TERN_LAYER_NORMS], err));
	const int n_w = hp->n_layer * TERN_PROJ_COUNT;
	TERN_RETURN_IF(n_prequant != 0 && n_prequant != n_w, err, TERN_EUNSUP,
		       "%s: mixes %s and full-precision projection weights", s->path, f->prequant_word);
	TERN_RETURN_IF(n_gq != 0 && n_gq != n_w, err, TERN_EUNSUP,
		       "%s: mixes Q2_0 and other projection weights", s->path);
	/* Q2_0 rows are read as stored (tern_source_gq): a q/k row permutation
	 * cannot be undone on them (no such file is known: qwen3 does not permute) */
	TERN_RETURN_IF(n_gq != 0 && s->qk_interleaved, err, TERN_EUNSUP,
		       "%s: Q2_0 projections in an architecture ('%s') whose GGUF permutes q/k rows", s->path,
		       hp->arch);
	s->group_scaled = n_gq == n_w;
	s->prequant = n_prequant == n_w || s->group_scaled;
	snprintf(s->fmt_desc, sizeof s->fmt_desc, "%s %s", f->format, weight_format(wdt));
	s->has_output = !hp->tied_embeddings;
	for (int i = 0; i < 1 + s->has_output; i++) {
		tref r;
		TERN_FORWARD_IF_ERROR(f->ref(s, f->dense_name((tern_dense_kind)i), hp->n_vocab, hp->n_embd, 0, &r, err));
		tern_dense_view *v = &s->dense[i];
		v->type = r.dtype;
		v->rows = hp->n_vocab;
		v->cols = hp->n_embd;
		v->row_bytes = (size_t)hp->n_embd * tern_dtype_size(r.dtype);
		v->data = r.data;
	}
	return 0;
}

static const tensor_names gguf_names = {gguf_ref, tern_proj_gguf_name, tern_norm_gguf_name, tern_dense_gguf_name,
					  TERN_DTYPE_I2_S, "I2_S", "gguf"};

static int open_gguf(tern_source *s, tern_err *err)
{
	TERN_FORWARD_IF_ERROR(tern_gguf_open(&s->g, s->path, err));
	TERN_FORWARD_IF_ERROR(tern_gguf_hparams(s->g, &s->hp, err));
	s->qk_interleaved = tern_arch_find(s->hp.arch)->gguf_qk_interleaved;
	return resolve_tensors(s, &gguf_names, err);
}

static const tern_st_tensor *hf_find(const tern_source *s, const char *name)
{
	for (int i = 0; i < s->n_st; i++) {
		const tern_st_tensor *t = tern_st_find(s->st[i], name);
		if (t)
			return t;
	}
	return NULL;
}

/* Resolves an HF tensor of logical shape rows x cols (1-D when rows == 0);
 * U8 weights are packed [rows/4, cols] with a weight_scale next to them. */
static int hf_ref(tern_source *s, const char *name, int64_t rows, int64_t cols, int allow_packed, tref *r,
		  tern_err *err)
{
	const tern_st_tensor *t = hf_find(s, name);
	TERN_RETURN_IF(!t, err, TERN_EFORMAT, "%s: missing tensor '%s'", s->path, name);
	const int packed = t->dtype == TERN_DTYPE_U8;
	TERN_RETURN_IF(!is_float(t->dtype) && !(packed && allow_packed), err, TERN_EUNSUP,
		       "%s: tensor '%s' has dtype %s, which tern cannot use here", s->path, name,
		       tern_dtype_safetensors(t->dtype));
	const int64_t want0 = packed ? rows / 4 : rows;
	const int two_d = rows > 0;
	if (two_d ? (t->n_dims != 2 || t->shape[0] != (uint64_t)want0 || t->shape[1] != (uint64_t)cols ||
		     (packed && rows % 4 != 0))
		  : (t->n_dims != 1 || t->shape[0] != (uint64_t)cols))
		return TERN_ERR(err, TERN_EFORMAT,
				"%s: tensor '%s' (%s) has shape [%" PRIu64 ", %" PRIu64 "], expected [%" PRId64
				", %" PRId64 "]",
				s->path, name, tern_dtype_safetensors(t->dtype), t->shape[0],
				t->n_dims > 1 ? t->shape[1] : 0, two_d ? want0 : cols, two_d ? cols : 0);
	r->dtype = t->dtype;
	r->data = t->data;
	r->m = two_d ? rows : 1;
	r->k = cols;
	snprintf(r->name, sizeof r->name, "%s", name);
	if (packed) {
		char sname[128];
		const size_t nl = strlen(name);
		/* "<module>.weight" -> "<module>.weight_scale" */
		snprintf(sname, sizeof sname, "%.*s.weight_scale", (int)(nl > 7 ? nl - 7 : nl), name);
		const tern_st_tensor *st = hf_find(s, sname);
		TERN_RETURN_IF(!st, err, TERN_EFORMAT, "%s: packed weight '%s' has no '%s'", s->path, name, sname);
		TERN_RETURN_IF(st->n_elem != 1 || !is_float(st->dtype), err, TERN_EFORMAT, "%s: '%s' must be one float",
			       s->path, sname);
		r->scale = tern_st_get_f32(st, 0);
		if (s->scale_divides)
			r->scale = 1.0f / r->scale;
		TERN_RETURN_IF(!isfinite(r->scale), err, TERN_EFORMAT, "%s: '%s' is not finite%s", s->path, sname,
			       s->scale_divides ? " or is zero (W = ternary / weight_scale)" : "");
	}
	return 0;
}

static const tensor_names hf_names = {hf_ref, tern_proj_hf_name, tern_norm_hf_name, tern_dense_hf_name,
					TERN_DTYPE_U8, "packed", "hf"};

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int open_hf(tern_source *s, tern_err *err)
{
	tern_hf_quant q;
	TERN_FORWARD_IF_ERROR(tern_hf_config_read(s->path, &s->hp, &q, err));
	s->scale_divides = q.scale_divides;
	DIR *d = opendir(s->path);
	TERN_RETURN_IF(!d, err, TERN_EIO, "%s: cannot list: %s", s->path, strerror(errno));
	char *names[256];
	int n = 0;
	struct dirent *e;
	int rc = 0;
	while ((e = readdir(d)) != NULL) {
		const size_t l = strlen(e->d_name);
		if (l > 12 && strcmp(e->d_name + l - 12, ".safetensors") == 0) {
			if (n == 256) {
				rc = TERN_ERR(err, TERN_ERANGE, "%s: more than 256 safetensors files", s->path);
				break;
			}
			names[n] = strdup(e->d_name);
			if (!names[n]) {
				rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
				break;
			}
			n++;
		}
	}
	closedir(d);
	if (rc == 0 && n == 0)
		rc = TERN_ERR(err, TERN_EFORMAT, "%s: no .safetensors files in the directory", s->path);
	if (rc == 0) {
		qsort(names, (size_t)n, sizeof names[0], cmp_str);
		s->st = calloc((size_t)n, sizeof *s->st);
		if (!s->st)
			rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
	}
	for (int i = 0; rc == 0 && i < n; i++) {
		char p[4096];
		snprintf(p, sizeof p, "%s/%s", s->path, names[i]);
		rc = tern_st_open(&s->st[i], p, err);
		if (rc == 0)
			s->n_st++;
	}
	for (int i = 0; i < n; i++)
		free(names[i]);
	TERN_FORWARD_IF_ERROR(rc);

	/* A checkpoint without lm_head is tied whatever config.json says. */
	s->hp.tied_embeddings = hf_find(s, tern_dense_hf_name(TERN_DENSE_OUTPUT)) == NULL;
	return resolve_tensors(s, &hf_names, err);
}

int tern_source_open(tern_source **out, const char *path, tern_err *err)
{
	*out = NULL;
	struct stat sb;
	TERN_RETURN_IF(stat(path, &sb) != 0, err, TERN_EIO, "%s: %s", path, strerror(errno));
	tern_source *s = calloc(1, sizeof *s);
	TERN_RETURN_IF(!s, err, TERN_ENOMEM, "%s: out of memory", path);
	s->path = strdup(path);
	int rc = s->path ? 0 : TERN_ERR(err, TERN_ENOMEM, "%s: out of memory", path);
	if (rc == 0) {
		s->kind = S_ISDIR(sb.st_mode) ? TERN_SOURCE_HF : TERN_SOURCE_GGUF;
		/* hparams first (bounded by tern_hparams_validate), then the refs. */
		if (s->kind == TERN_SOURCE_GGUF) {
			rc = tern_gguf_open(&s->g, path, err);
			if (rc == 0)
				rc = tern_gguf_hparams(s->g, &s->hp, err);
			tern_gguf_close(s->g);
			s->g = NULL;
		} else {
			rc = tern_hf_config_read(path, &s->hp, NULL, err);
		}
	}
	if (rc == 0) {
		s->w = calloc((size_t)s->hp.n_layer * TERN_PROJ_COUNT, sizeof *s->w);
		s->norm = calloc((size_t)s->hp.n_layer * TERN_LAYER_NORMS + 1, sizeof *s->norm);
		if (!s->w || !s->norm)
			rc = TERN_ERR(err, TERN_ENOMEM, "%s: out of memory", path);
	}
	if (rc == 0)
		rc = s->kind == TERN_SOURCE_GGUF ? open_gguf(s, err) : open_hf(s, err);
	if (rc < 0) {
		tern_source_close(s);
		return rc;
	}
	*out = s;
	return 0;
}

static void free_vocab(tern_source *s)
{
	free(s->vocab_arena);
	for (int i = 0; i < 6; i++)
		free(s->vocab_arrays[i]);
	s->vocab_arena = NULL;
	memset(s->vocab_arrays, 0, sizeof s->vocab_arrays);
	s->vocab_loaded = 0;
}

void tern_source_close(tern_source *s)
{
	if (!s)
		return;
	tern_gguf_close(s->g);
	for (int i = 0; i < s->n_st; i++)
		tern_st_close(s->st[i]);
	free(s->st);
	free(s->w);
	free(s->norm);
	free_vocab(s);
	free(s->path);
	free(s);
}

const tern_hparams *tern_source_hparams(const tern_source *s)
{
	return &s->hp;
}
tern_source_kind tern_source_kind_of(const tern_source *s)
{
	return s->kind;
}
const char *tern_source_path(const tern_source *s)
{
	return s->path;
}
int tern_source_group_scaled(const tern_source *s)
{
	return s->group_scaled;
}

int tern_source_gq(const tern_source *s, int layer, tern_proj p, const uint8_t **data, size_t *bytes, tern_err *err)
{
	TERN_RETURN_IF(layer < 0 || layer >= s->hp.n_layer || (unsigned)p >= TERN_PROJ_COUNT, err, TERN_EINVAL,
		       "%s: no projection %d of layer %d", s->path, (int)p, layer);
	const tref *r = &s->w[layer * TERN_PROJ_COUNT + p];
	TERN_RETURN_IF(r->dtype != TERN_DTYPE_Q2_0, err, TERN_EINVAL, "%s: tensor '%s' is %s, not q2_0", s->path,
		       r->name, tern_dtype_name(r->dtype));
	*data = r->data;
	*bytes = tern_gq_data_bytes((int)r->m, (int)r->k);
	return 0;
}

int tern_source_prequantized(const tern_source *s)
{
	return s->prequant;
}
const char *tern_source_weight_format(const tern_source *s)
{
	return s->fmt_desc;
}
const struct tern_gguf *tern_source_gguf(const tern_source *s)
{
	return s->g;
}

/* ---- weights ---------------------------------------------------------------- */

static int unpack_hf(const tref *r, int8_t *w, const char *path, tern_err *err)
{
	const int64_t P = r->m / 4, k = r->k;
	int bad = 0;
	for (int i = 0; i < 4; i++) {
		for (int64_t p = 0; p < P; p++) {
			const uint8_t *src = r->data + (uint64_t)(p * k);
			int8_t *dst = w + (uint64_t)((i * P + p) * k);
			for (int64_t c = 0; c < k; c++) {
				const int code = (src[c] >> (2 * i)) & 3;
				bad |= code == 3;
				dst[c] = (int8_t)(code - 1);
			}
		}
	}
	if (bad)
		return TERN_ERR(err, TERN_EFORMAT, "%s: tensor '%s' holds the invalid 2-bit code 3", path, r->name);
	return 0;
}

/* Rows of q/k from llama.cpp's interleaved order back to HF's half split,
 * head by head: HF row h*hd + j*hd/2 + i is GGUF row h*hd + 2i + j. */
static int unpermute_qk(int8_t *w, int64_t m, int64_t k, int hd, const char *what, tern_err *err)
{
	int8_t *tmp = malloc((size_t)hd * (size_t)k);
	TERN_RETURN_IF(!tmp, err, TERN_ENOMEM, "%s: out of memory", what);
	const int half = hd / 2;
	for (int64_t h = 0; h < m / hd; h++) {
		int8_t *head = w + (uint64_t)(h * hd * k);
		memcpy(tmp, head, (size_t)hd * (size_t)k);
		for (int i = 0; i < half; i++)
			for (int j = 0; j < 2; j++)
				memcpy(head + (uint64_t)((j * half + i) * k), tmp + (uint64_t)((2 * i + j) * k), (size_t)k);
	}
	free(tmp);
	return 0;
}

static int ternary_as_stored(const tern_source *s, const tref *r, int group_rows, int8_t *w, float *scales,
			     int *group_rows_out, const char *what, tern_err *err);

int tern_source_ternary(const tern_source *s, int layer, tern_proj p, int group_rows, int8_t *w, float *scales,
			int *group_rows_out, tern_err *err)
{
	TERN_RETURN_IF(layer < 0 || layer >= s->hp.n_layer || (unsigned)p >= TERN_PROJ_COUNT, err, TERN_EINVAL,
		       "%s: no projection %d of layer %d", s->path, (int)p, layer);
	const tref *r = &s->w[layer * TERN_PROJ_COUNT + p];
	char what[700];
	snprintf(what, sizeof what, "%s: tensor '%s'", s->path, r->name);
	TERN_RETURN_IF(r->dtype == TERN_DTYPE_Q2_0, err, TERN_EUNSUP,
		       "%s is group-scaled Q2_0 (an f16 scale per 64 weights), not one ternary matrix", what);
	const int hd = s->hp.head_dim;
	const int permuted = s->qk_interleaved && (p == TERN_PROJ_Q || p == TERN_PROJ_K);
	TERN_FORWARD_IF_ERROR(ternary_as_stored(s, r, group_rows, w, scales, group_rows_out, what, err));
	if (!permuted)
		return 0;
	/* groups of rows must not straddle heads, or un-permuting would move a
	 * row away from the scale it was quantized with */
	TERN_RETURN_IF(*group_rows_out < r->m && *group_rows_out % hd != 0, err, TERN_EUNSUP,
		       "%s: %d rows per scale is not a multiple of the head size %d (q/k rows are permuted per head)",
		       what, *group_rows_out, hd);
	return unpermute_qk(w, r->m, r->k, hd, what, err);
}

/* The ternary matrix in the file's row order. */
static int ternary_as_stored(const tern_source *s, const tref *r, int group_rows, int8_t *w, float *scales,
			     int *group_rows_out, const char *what, tern_err *err)
{
	if (r->dtype == TERN_DTYPE_I2_S || r->dtype == TERN_DTYPE_U8) {
		if (r->dtype == TERN_DTYPE_I2_S)
			TERN_FORWARD_IF_ERROR(tern_i2s_decode_rows(r->data, r->m, r->k, 0, r->m, w, what, err));
		else
			TERN_FORWARD_IF_ERROR(unpack_hf(r, w, s->path, err));
		scales[0] = r->scale;
		*group_rows_out = (int)r->m;
		return 0;
	}
	if (single_magnitude(r->dtype, r->data, r->m, r->k, w, &scales[0])) {
		*group_rows_out = (int)r->m;
		return 0;
	}
	const int rc = absmean_quantize(r->dtype, r->data, r->m, r->k, group_rows, w, scales, what, err);
	TERN_FORWARD_IF_ERROR(rc);
	*group_rows_out = rc;
	return 0;
}

int tern_source_norm(const tern_source *s, int layer, tern_norm_kind n, float *out, tern_err *err)
{
	TERN_RETURN_IF((unsigned)n >= TERN_NORM_COUNT ||
			   (n != TERN_NORM_OUTPUT && (layer < 0 || layer >= s->hp.n_layer)),
		       err, TERN_EINVAL, "%s: no norm %d of layer %d", s->path, (int)n, layer);
	if (!tern_norm_present(&s->hp, n)) {
		for (int i = 0; i < tern_norm_len(&s->hp, n); i++)
			out[i] = 1.0f;
		return 0;
	}
	const tref *r = n == TERN_NORM_OUTPUT ? &s->norm[s->hp.n_layer * TERN_LAYER_NORMS]
						: &s->norm[layer * TERN_LAYER_NORMS + n];
	for (int64_t i = 0; i < r->k; i++)
		out[i] = ld_f32(r->dtype, r->data, (uint64_t)i);
	return 0;
}

int tern_source_dense(const tern_source *s, tern_dense_kind kind, tern_dense_view *out, tern_err *err)
{
	TERN_RETURN_IF(kind != TERN_DENSE_TOKEN_EMBD && !(kind == TERN_DENSE_OUTPUT && s->has_output), err, TERN_EINVAL,
		       "%s: no %s matrix (tied embeddings)", s->path, kind == TERN_DENSE_OUTPUT ? "output" : "such");
	*out = s->dense[kind];
	return 0;
}

int tern_dense_row_f32(const tern_dense_view *v, int64_t row, float *out, tern_err *err)
{
	TERN_RETURN_IF(row < 0 || row >= v->rows, err, TERN_EINVAL,
		       "dense row %" PRId64 " out of range (%" PRId64 " rows)", row, v->rows);
	const uint8_t *d = v->data + (uint64_t)row * v->row_bytes;
	for (int64_t i = 0; i < v->cols; i++)
		out[i] = ld_f32(v->type, d, (uint64_t)i);
	return 0;
}

/* ---- tokenizer ----------------------------------------------------------------- */

/* Copies n strings into one arena of NUL-terminated strings. */
typedef struct {
	char *buf;
	size_t len, cap;
} arena;

static int arena_put(arena *a, const char *s, size_t n, size_t *off)
{
	if (a->cap - a->len < n + 1) {
		size_t cap = a->cap ? a->cap : 1 << 16;
		while (cap - a->len < n + 1)
			cap *= 2;
		char *b = realloc(a->buf, cap);
		if (!b)
			return TERN_ENOMEM;
		a->buf = b;
		a->cap = cap;
	}
	memcpy(a->buf + a->len, s, n);
	a->buf[a->len + n] = 0;
	*off = a->len;
	a->len += n + 1;
	return 0;
}

/* The final vocab arrays: offsets into the arena are turned into pointers
 * once the arena stops moving. */
typedef struct {
	arena ar;
	size_t *tok_off, *merge_off;
	uint32_t *tok_len, *merge_len;
	int32_t *types;
	float *scores;
	int64_t n_tok, n_merge;
} vbuild;

static void vbuild_free(vbuild *b)
{
	free(b->ar.buf);
	free(b->tok_off);
	free(b->merge_off);
	free(b->tok_len);
	free(b->merge_len);
	free(b->types);
	free(b->scores);
}

static int vbuild_finish(tern_source *s, vbuild *b, tern_err *err)
{
	const char **toks = malloc((size_t)(b->n_tok ? b->n_tok : 1) * sizeof *toks);
	const char **merges = malloc((size_t)(b->n_merge ? b->n_merge : 1) * sizeof *merges);
	if (!toks || !merges) {
		free(toks);
		free(merges);
		return TERN_ERR(err, TERN_ENOMEM, "%s: out of memory for the vocabulary", s->path);
	}
	for (int64_t i = 0; i < b->n_tok; i++)
		toks[i] = b->ar.buf + b->tok_off[i];
	for (int64_t i = 0; i < b->n_merge; i++)
		merges[i] = b->ar.buf + b->merge_off[i];
	free(b->tok_off);
	free(b->merge_off);
	b->tok_off = b->merge_off = NULL;
	s->vocab_arena = b->ar.buf;
	s->vocab_arrays[0] = toks;
	s->vocab_arrays[1] = merges;
	s->vocab_arrays[2] = b->tok_len;
	s->vocab_arrays[3] = b->merge_len;
	s->vocab_arrays[4] = b->types;
	s->vocab_arrays[5] = b->scores;
	tern_vocab *v = &s->vocab;
	v->n_tokens = b->n_tok;
	v->tokens = toks;
	v->token_len = b->tok_len;
	v->token_type = b->types;
	v->scores = b->scores;
	v->n_merges = b->n_merge;
	v->merges = b->n_merge ? merges : NULL;
	v->merge_len = b->merge_len;
	memset(b, 0, sizeof *b);
	return 0;
}

static int32_t find_token(const vbuild *b, const char *text)
{
	const size_t n = strlen(text);
	for (int64_t i = b->n_tok; i-- > 0;)
		if (b->tok_len[i] == n && memcmp(b->ar.buf + b->tok_off[i], text, n) == 0)
			return (int32_t)i;
	return -1;
}

static int check_id(const tern_source *s, int32_t id, int64_t n, const char *what, tern_err *err)
{
	TERN_RETURN_IF(id >= n, err, TERN_EFORMAT, "%s: %s id %d out of range (vocabulary of %" PRId64 ")", s->path,
		       what, id, n);
	return 0;
}

static int gguf_opt_id(const tern_gguf *g, const char *key)
{
	uint32_t v;
	if (tern_gguf_find_key(g, key) < 0 || tern_gguf_get_u32(g, key, &v, NULL) < 0 || v > INT32_MAX)
		return -1;
	return (int)v;
}

/* The optional per-token GGUF array KEY (n entries) read into a new array:
 * *ints (token types) when ints is given, else *floats (scores); an absent
 * key leaves it NULL. The new array is the caller's even on an error. */
static int vocab_numbers(const tern_source *s, const tern_gguf *g, const char *key, uint64_t n, int32_t **ints,
			 float **floats, tern_err *err)
{
	const int64_t k = tern_gguf_find_key(g, key);
	if (k < 0)
		return 0;
	uint32_t et;
	uint64_t len;
	TERN_FORWARD_IF_ERROR(tern_gguf_get_arr(g, key, &et, &len, err));
	TERN_RETURN_IF(len != n, err, TERN_EFORMAT, "%s: %s has %" PRIu64 " entries, tokens %" PRIu64, s->path, key,
		       len, n);
	if (ints)
		*ints = malloc(n * sizeof **ints);
	else
		*floats = malloc(n * sizeof **floats);
	TERN_RETURN_IF(ints ? !*ints : !*floats, err, TERN_ENOMEM, "%s: out of memory", s->path);
	for (uint64_t i = 0; i < n; i++) {
		if (ints) {
			int64_t t;
			TERN_FORWARD_IF_ERROR(tern_gguf_arr_i64(g, k, i, &t, err));
			(*ints)[i] = (int32_t)t;
		} else {
			double d;
			TERN_FORWARD_IF_ERROR(tern_gguf_arr_f64(g, k, i, &d, err));
			(*floats)[i] = (float)d;
		}
	}
	return 0;
}

static int load_vocab_gguf(tern_source *s, vbuild *b, tern_err *err)
{
	tern_gguf *g;
	TERN_FORWARD_IF_ERROR(tern_gguf_open(&g, s->path, err));
	tern_vocab *v = &s->vocab;
	int rc = 0;
	const char *str;
	uint64_t len;
	uint32_t et;
	uint64_t n;
	rc = tern_gguf_get_str(g, "tokenizer.ggml.model", &str, &len, err);
	if (rc < 0)
		goto out;
	snprintf(v->model, sizeof v->model, "%.*s", (int)(len < 15 ? len : 15), str);
	snprintf(v->pre, sizeof v->pre, "default");
	if (tern_gguf_find_key(g, "tokenizer.ggml.pre") >= 0 &&
	    tern_gguf_get_str(g, "tokenizer.ggml.pre", &str, &len, NULL) == 0)
		snprintf(v->pre, sizeof v->pre, "%.*s", (int)(len < 31 ? len : 31), str);
	rc = tern_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n, err);
	if (rc == 0 && (et != TERN_GGUF_STRING || n == 0 || n > INT32_MAX))
		rc = TERN_ERR(err, TERN_EFORMAT, "%s: tokenizer.ggml.tokens is not a non-empty string array", s->path);
	if (rc < 0)
		goto out;
	b->n_tok = (int64_t)n;
	b->tok_off = malloc(n * sizeof *b->tok_off);
	b->tok_len = malloc(n * sizeof *b->tok_len);
	if (!b->tok_off || !b->tok_len) {
		rc = TERN_ERR(err, TERN_ENOMEM, "%s: out of memory", s->path);
		goto out;
	}
	const int64_t kt = tern_gguf_find_key(g, "tokenizer.ggml.tokens");
	for (uint64_t i = 0; i < n; i++) {
		tern_gguf_arr_str(g, kt, i, &str, &len, NULL);
		if (len > UINT32_MAX || arena_put(&b->ar, str, (size_t)len, &b->tok_off[i]) < 0) {
			rc = TERN_ERR(err, TERN_ENOMEM, "%s: out of memory", s->path);
			goto out;
		}
		b->tok_len[i] = (uint32_t)len;
	}
	if ((rc = vocab_numbers(s, g, "tokenizer.ggml.token_type", n, &b->types, NULL, err)) < 0 ||
	    (rc = vocab_numbers(s, g, "tokenizer.ggml.scores", n, NULL, &b->scores, err)) < 0)
		goto out;
	const int64_t km = tern_gguf_find_key(g, "tokenizer.ggml.merges");
	if (km >= 0) {
		rc = tern_gguf_get_arr(g, "tokenizer.ggml.merges", &et, &len, err);
		if (rc == 0 && et != TERN_GGUF_STRING)
			rc = TERN_ERR(err, TERN_EFORMAT, "%s: tokenizer.ggml.merges is not a string array", s->path);
		if (rc < 0)
			goto out;
		b->n_merge = (int64_t)len;
		b->merge_off = malloc((len ? len : 1) * sizeof *b->merge_off);
		b->merge_len = malloc((len ? len : 1) * sizeof *b->merge_len);
		if (!b->merge_off || !b->merge_len) {
			rc = TERN_ERR(err, TERN_ENOMEM, "%s: out of memory", s->path);
			goto out;
		}
		for (uint64_t i = 0; i < (uint64_t)b->n_merge; i++) {
			uint64_t l;
			tern_gguf_arr_str(g, km, i, &str, &l, NULL);
			if (l > UINT32_MAX || arena_put(&b->ar, str, (size_t)l, &b->merge_off[i]) < 0) {
				rc = TERN_ERR(err, TERN_ENOMEM, "%s: out of memory", s->path);
				goto out;
			}
			b->merge_len[i] = (uint32_t)l;
		}
	}
	v->bos_id = gguf_opt_id(g, "tokenizer.ggml.bos_token_id");
	v->eos_id = gguf_opt_id(g, "tokenizer.ggml.eos_token_id");
	v->unk_id = gguf_opt_id(g, "tokenizer.ggml.unknown_token_id");
	v->pad_id = gguf_opt_id(g, "tokenizer.ggml.padding_token_id");
	v->eot_id = gguf_opt_id(g, "tokenizer.ggml.eot_token_id");
	if (v->eot_id < 0)
		v->eot_id = find_token(b, "<|eot_id|>");
	int ab = strcmp(v->model, "llama") == 0 || strcmp(v->pre, "llama-bpe") == 0 || strcmp(v->pre, "llama3") == 0;
	if (tern_gguf_find_key(g, "tokenizer.ggml.add_bos_token") >= 0)
		tern_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &ab, NULL);
	v->add_bos = ab;
	int ae = 0;
	if (tern_gguf_find_key(g, "tokenizer.ggml.add_eos_token") >= 0)
		tern_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &ae, NULL);
	v->add_eos = ae;
out:
	tern_gguf_close(g);
	return rc;
}

static int load_vocab_hf(tern_source *s, vbuild *b, tern_err *err)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/tokenizer.json", s->path);
	tern_json_doc *doc;
	TERN_FORWARD_IF_ERROR(tern_json_parse_file(&doc, path, err));
	tern_vocab *v = &s->vocab;
	const tern_json *r = tern_json_root(doc), *model = tern_json_get(r, "model");
	const tern_json *vocab = tern_json_get(model, "vocab"), *merges = tern_json_get(model, "merges");
	const tern_json *added = tern_json_get(r, "added_tokens");
	int rc = 0;
	if (!vocab || vocab->type != TERN_JSON_OBJECT) {
		rc = TERN_ERR(err, TERN_EFORMAT, "%s: no model.vocab object", path);
		goto out;
	}
	/* Ids may leave gaps; the vocabulary spans max(config vocab, max id + 1). */
	int64_t n = s->hp.n_vocab;
	for (size_t i = 0; i < vocab->len; i++) {
		const tern_json *id = vocab->items[i];
		if (id->type != TERN_JSON_NUMBER || !id->is_int || id->integer < 0 || id->integer >= 4000000) {
			rc = TERN_ERR(err, TERN_EFORMAT, "%s: bad id for token %zu", path, i);
			goto out;
		}
		if (id->integer + 1 > n)
			n = id->integer + 1;
	}
	for (size_t i = 0; added && added->type == TERN_JSON_ARRAY && i < added->len; i++) {
		const int64_t id = tern_json_get_int(added->items[i], "id", -1);
		if (id < 0 || id >= 4000000 || !tern_json_get_str(added->items[i], "content", NULL)) {
			rc = TERN_ERR(err, TERN_EFORMAT, "%s: bad added_tokens entry %zu", path, i);
			goto out;
		}
		if (id + 1 > n)
			n = id + 1;
	}
	b->n_tok = n;
	b->tok_off = calloc((size_t)n, sizeof *b->tok_off);
	b->tok_len = calloc((size_t)n, sizeof *b->tok_len);
	b->types = calloc((size_t)n, sizeof *b->types);
	uint8_t *seen = calloc((size_t)n, 1);
	if (!b->tok_off || !b->tok_len || !b->types || !seen) {
		free(seen);
		rc = TERN_ERR(err, TERN_ENOMEM, "%s: out of memory", path);
		goto out;
	}
	for (size_t i = 0; rc == 0 && i < vocab->len; i++) {
		const tern_json *id = vocab->items[i];
		rc = arena_put(&b->ar, id->key, id->key_len, &b->tok_off[id->integer]);
		b->tok_len[id->integer] = (uint32_t)id->key_len;
		b->types[id->integer] = 1;
		seen[id->integer] = 1;
	}
	for (size_t i = 0; rc == 0 && added && added->type == TERN_JSON_ARRAY && i < added->len; i++) {
		const tern_json *a = added->items[i], *c = tern_json_get(a, "content");
		const int64_t id = tern_json_get_int(a, "id", -1);
		rc = arena_put(&b->ar, c->str, c->len, &b->tok_off[id]);
		b->tok_len[id] = (uint32_t)c->len;
		b->types[id] = tern_json_get_bool(a, "special", 0) ? 3 : 4;
		seen[id] = 1;
	}
	for (int64_t i = 0; rc == 0 && i < n; i++) {
		if (seen[i])
			continue;
		char ph[48];
		const int l = snprintf(ph, sizeof ph, "<|tern_unused_%" PRId64 "|>", i);
		rc = arena_put(&b->ar, ph, (size_t)l, &b->tok_off[i]);
		b->tok_len[i] = (uint32_t)l;
		b->types[i] = 5;
	}
	free(seen);
	if (rc < 0) {
		rc = TERN_ERR(err, TERN_ENOMEM, "%s: out of memory", path);
		goto out;
	}
	if (merges && merges->type == TERN_JSON_ARRAY) {
		b->n_merge = (int64_t)merges->len;
		b->merge_off = malloc((merges->len ? merges->len : 1) * sizeof *b->merge_off);
		b->merge_len = malloc((merges->len ? merges->len : 1) * sizeof *b->merge_len);
		if (!b->merge_off || !b->merge_len) {
			rc = TERN_ERR(err, TERN_ENOMEM, "%s: out of memory", path);
			goto out;
		}
		for (size_t i = 0; i < merges->len; i++) {
			const tern_json *mg = merges->items[i];
			char tmp[1024];
			const char *txt;
			size_t tl;
			/* Newer tokenizers write a merge as ["A", "B"], older ones as "A B". */
			if (mg->type == TERN_JSON_STRING) {
				txt = mg->str;
				tl = mg->len;
			} else if (mg->type == TERN_JSON_ARRAY && mg->len == 2 &&
				   mg->items[0]->type == TERN_JSON_STRING && mg->items[1]->type == TERN_JSON_STRING &&
				   mg->items[0]->len + mg->items[1]->len + 2 <= sizeof tmp) {
				tl = (size_t)snprintf(tmp, sizeof tmp, "%s %s", mg->items[0]->str, mg->items[1]->str);
				txt = tmp;
			} else {
				rc = TERN_ERR(err, TERN_EFORMAT, "%s: bad merge %zu", path, i);
				goto out;
			}
			if (arena_put(&b->ar, txt, tl, &b->merge_off[i]) < 0) {
				rc = TERN_ERR(err, TERN_ENOMEM, "%s: out of memory", path);
				goto out;
			}
			b->merge_len[i] = (uint32_t)tl;
		}
	}
	snprintf(v->model, sizeof v->model, "%s", tern_json_get_bool(model, "byte_fallback", 0) ? "llama" : "gpt2");
	snprintf(v->pre, sizeof v->pre, "%s", find_token(b, "<|begin_of_text|>") >= 0 ? "llama-bpe" : "default");
	v->bos_id = s->hp.bos_id;
	v->eos_id = s->hp.eos_id;
	v->eot_id = find_token(b, "<|eot_id|>");
	v->unk_id = -1;
	v->pad_id = -1;
	v->add_bos = 1;
	v->add_eos = 0;
	/* tokenizer_config.json may override add_bos/add_eos; it is optional. */
	snprintf(path, sizeof path, "%s/tokenizer_config.json", s->path);
	tern_json_doc *tc;
	struct stat sb;
	if (stat(path, &sb) == 0 && tern_json_parse_file(&tc, path, NULL) == 0) {
		v->add_bos = tern_json_get_bool(tern_json_root(tc), "add_bos_token", v->add_bos);
		v->add_eos = tern_json_get_bool(tern_json_root(tc), "add_eos_token", v->add_eos);
		tern_json_free(tc);
	}
out:
	tern_json_free(doc);
	return rc;
}

int tern_source_vocab(tern_source *s, const tern_vocab **out, tern_err *err)
{
	if (!s->vocab_loaded) {
		vbuild b;
		memset(&b, 0, sizeof b);
		memset(&s->vocab, 0, sizeof s->vocab);
		int rc = s->kind == TERN_SOURCE_GGUF ? load_vocab_gguf(s, &b, err) : load_vocab_hf(s, &b, err);
		const tern_vocab *v = &s->vocab;
		if (rc == 0)
			rc = check_id(s, v->bos_id, b.n_tok, "bos", err);
		if (rc == 0)
			rc = check_id(s, v->eos_id, b.n_tok, "eos", err);
		if (rc == 0)
			rc = check_id(s, v->eot_id, b.n_tok, "eot", err);
		if (rc == 0)
			rc = check_id(s, v->unk_id, b.n_tok, "unk", err);
		if (rc == 0)
			rc = check_id(s, v->pad_id, b.n_tok, "pad", err);
		if (rc == 0)
			rc = vbuild_finish(s, &b, err);
		vbuild_free(&b);
		if (rc < 0) {
			free_vocab(s);
			return rc;
		}
		s->vocab_loaded = 1;
	}
	*out = &s->vocab;
	return 0;
}
