/* safetensors.c: the safetensors reader and HF config.json parser of
 * tern-safetensors.h. The header is parsed by tern-json; each entry's
 * dtype, shape and data_offsets are checked against the buffer (and the
 * extent against shape * dtype size) before any tensor is exposed. */
#include "tern-safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf-internal.h"
#include "tern-half.h"
#include "tern-json.h"
#include "tern-source.h"

/* Header length limit (the reference implementation uses 100 MB). */
#define MAX_HEADER (UINT64_C(100) << 20)

struct tern_st {
	const uint8_t *base;
	uint64_t size;
	tern_file_map map; /* tern_st_open's mapping (zeroed for open_mem) */
	char *path;
	int64_t n;
	tern_st_tensor *t; /* (n) */
	tern_hash index;
};

static const char *st_name_of(const void *ctx, int64_t i)
{
	return ((const tern_st *)ctx)->t[i].name;
}

static int st_parse(tern_st *st, tern_err *err)
{
	const char *path = st->path;
	TERN_RETURN_IF(st->size < 8, err, TERN_ERANGE, "%s: truncated: %" PRIu64 " bytes, no header length", path,
		       st->size);
	uint64_t hlen = 0;
	for (int i = 7; i >= 0; i--)
		hlen = (hlen << 8) | st->base[i];
	TERN_RETURN_IF(hlen > MAX_HEADER, err, TERN_ERANGE, "%s: absurd header length %" PRIu64, path, hlen);
	TERN_RETURN_IF(hlen > st->size - 8, err, TERN_ERANGE,
		       "%s: truncated: header of %" PRIu64 " bytes but file has %" PRIu64, path, hlen, st->size);
	const uint64_t buf_off = 8 + hlen, buf_size = st->size - buf_off;
	char what[600];
	snprintf(what, sizeof what, "%s: JSON header", path);
	tern_json_doc *doc;
	TERN_FORWARD_IF_ERROR(tern_json_parse(&doc, (const char *)st->base + 8, (size_t)hlen, what, err));
	const tern_json *root = tern_json_root(doc);
	int rc = 0;
	if (root->type != TERN_JSON_OBJECT) {
		rc = TERN_ERR(err, TERN_EFORMAT, "%s: header is not a JSON object", path);
		goto out;
	}
	st->t = calloc(root->len ? root->len : 1, sizeof *st->t);
	if (!st->t || tern_hash_init(&st->index, root->len) < 0) {
		rc = TERN_ERR(err, TERN_ENOMEM, "%s: out of memory", path);
		goto out;
	}
	for (size_t i = 0; i < root->len; i++) {
		const tern_json *e = root->items[i];
		if (strcmp(e->key, "__metadata__") == 0 && strlen(e->key) == e->key_len)
			continue;
		tern_st_tensor *t = &st->t[st->n];
		if (strlen(e->key) != e->key_len) {
			rc = TERN_ERR(err, TERN_EFORMAT, "%s: tensor name contains a NUL byte", path);
			goto out;
		}
		char *name = strdup(e->key);
		if (!name) {
			rc = TERN_ERR(err, TERN_ENOMEM, "%s: out of memory", path);
			goto out;
		}
		t->name = name;
		st->n++;
		if (e->type != TERN_JSON_OBJECT) {
			rc = TERN_ERR(err, TERN_EFORMAT, "%s: entry '%s' is not an object", path, name);
			goto out;
		}
		const char *dt = tern_json_get_str(e, "dtype", NULL);
		const tern_json *shape = tern_json_get(e, "shape"), *offs = tern_json_get(e, "data_offsets");
		if (!dt || !shape || shape->type != TERN_JSON_ARRAY || !offs || offs->type != TERN_JSON_ARRAY ||
		    offs->len != 2) {
			rc = TERN_ERR(err, TERN_EFORMAT, "%s: tensor '%s' lacks dtype, shape or data_offsets[2]", path,
				      name);
			goto out;
		}
		t->dtype = tern_dtype_of_safetensors(dt);
		if (t->dtype == TERN_DTYPE_NONE) {
			rc = TERN_ERR(err, TERN_EUNSUP, "%s: tensor '%s' has unknown dtype '%s'", path, name, dt);
			goto out;
		}
		if (shape->len > TERN_ST_MAX_DIMS) {
			rc = TERN_ERR(err, TERN_ERANGE, "%s: tensor '%s' has %zu dimensions", path, name, shape->len);
			goto out;
		}
		t->n_dims = (int)shape->len;
		uint64_t n = 1;
		for (size_t d = 0; d < shape->len; d++) {
			const tern_json *x = shape->items[d];
			if (x->type != TERN_JSON_NUMBER || !x->is_int || x->integer < 0 ||
			    (uint64_t)x->integer > (UINT64_C(1) << 48) ||
			    (x->integer != 0 && n > UINT64_MAX / (uint64_t)x->integer)) {
				rc = TERN_ERR(err, TERN_ERANGE, "%s: tensor '%s' has an absurd dimension", path, name);
				goto out;
			}
			t->shape[d] = (uint64_t)x->integer;
			n *= t->shape[d];
		}
		t->n_elem = n;
		const size_t es = tern_dtype_size(t->dtype);
		if (n > UINT64_MAX / es) {
			rc = TERN_ERR(err, TERN_ERANGE, "%s: tensor '%s' has an absurd size", path, name);
			goto out;
		}
		t->nbytes = n * es;
		const tern_json *b = offs->items[0], *en = offs->items[1];
		if (b->type != TERN_JSON_NUMBER || !b->is_int || b->integer < 0 || en->type != TERN_JSON_NUMBER ||
		    !en->is_int || en->integer < b->integer) {
			rc = TERN_ERR(err, TERN_EFORMAT, "%s: tensor '%s' has bad data_offsets", path, name);
			goto out;
		}
		if ((uint64_t)en->integer > buf_size) {
			rc = TERN_ERR(err, TERN_ERANGE,
				      "%s: tensor '%s' data_offsets [%" PRId64 ", %" PRId64
				      ") out of range: the buffer has %" PRIu64 " bytes (file truncated?)",
				      path, name, b->integer, en->integer, buf_size);
			goto out;
		}
		if ((uint64_t)(en->integer - b->integer) != t->nbytes) {
			rc = TERN_ERR(err, TERN_EFORMAT,
				      "%s: tensor '%s': data_offsets span %" PRId64
				      " bytes but shape x %s needs %" PRIu64,
				      path, name, en->integer - b->integer, dt, t->nbytes);
			goto out;
		}
		t->data = st->base + buf_off + (uint64_t)b->integer;
		if (tern_hash_insert(&st->index, name, st->n - 1, st_name_of, st) < 0) {
			rc = TERN_ERR(err, TERN_EFORMAT, "%s: duplicate tensor name '%s'", path, name);
			goto out;
		}
	}
out:
	tern_json_free(doc);
	return rc;
}

static int st_new(tern_st **out, const char *name, tern_err *err)
{
	tern_st *st = calloc(1, sizeof *st);
	TERN_RETURN_IF(!st, err, TERN_ENOMEM, "%s: out of memory", name);
	st->path = strdup(name);
	if (!st->path) {
		free(st);
		return TERN_ERR(err, TERN_ENOMEM, "%s: out of memory", name);
	}
	*out = st;
	return 0;
}

int tern_st_open_mem(tern_st **out, const void *buf, size_t len, const char *name, tern_err *err)
{
	*out = NULL;
	tern_st *st = NULL;
	TERN_FORWARD_IF_ERROR(st_new(&st, name ? name : "<memory>", err));
	static const uint8_t empty[1];
	st->base = buf ? buf : empty;
	st->size = buf ? len : 0;
	const int rc = st_parse(st, err);
	if (rc < 0) {
		tern_st_close(st);
		return rc;
	}
	*out = st;
	return 0;
}

int tern_st_open(tern_st **out, const char *path, tern_err *err)
{
	*out = NULL;
	tern_file_map map;
	TERN_FORWARD_IF_ERROR(tern_map_file(path, &map, err));
	tern_st *st = NULL;
	int rc = st_new(&st, path, err);
	if (rc < 0) {
		tern_unmap_file(&map);
		return rc;
	}
	st->map = map;
	st->base = map.data;
	st->size = map.size;
	rc = st_parse(st, err);
	if (rc < 0) {
		tern_st_close(st);
		return rc;
	}
	*out = st;
	return 0;
}

void tern_st_close(tern_st *st)
{
	if (!st)
		return;
	for (int64_t i = 0; i < st->n; i++)
		free((char *)st->t[i].name);
	free(st->t);
	tern_hash_free(&st->index);
	tern_unmap_file(&st->map);
	free(st->path);
	free(st);
}

const char *tern_st_path(const tern_st *st)
{
	return st->path;
}

int64_t tern_st_n_tensors(const tern_st *st)
{
	return st->n;
}

const tern_st_tensor *tern_st_tensor_at(const tern_st *st, int64_t i)
{
	return i >= 0 && i < st->n ? &st->t[i] : NULL;
}

const tern_st_tensor *tern_st_find(const tern_st *st, const char *name)
{
	const int64_t i = tern_hash_find(&st->index, name, st_name_of, st);
	return i < 0 ? NULL : &st->t[i];
}

float tern_st_get_f32(const tern_st_tensor *t, uint64_t i)
{
	if (i >= t->n_elem)
		return 0.0f;
	const uint8_t *p = t->data + i * tern_dtype_size(t->dtype);
	switch (t->dtype) {
	case TERN_DTYPE_F32: {
		float f;
		memcpy(&f, p, 4);
		return f;
	}
	case TERN_DTYPE_F16: return tern_f16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
	case TERN_DTYPE_BF16: return tern_bf16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
	case TERN_DTYPE_F64: {
		double d;
		memcpy(&d, p, 8);
		return (float)d;
	}
	default: return 0.0f;
	}
}

/* ---- config.json ----------------------------------------------------------- */

static int cfg_int(const tern_json *root, const char *key, int64_t dflt, int *out, const char *what, tern_err *err)
{
	const tern_json *v = tern_json_get(root, key);
	if (!v || v->type == TERN_JSON_NULL) {
		TERN_RETURN_IF(dflt < -1, err, TERN_EFORMAT, "%s: missing '%s'", what, key);
		*out = (int)dflt;
		return 0;
	}
	TERN_RETURN_IF(v->type != TERN_JSON_NUMBER || !v->is_int || v->integer < -1 || v->integer > INT32_MAX, err,
		       TERN_EFORMAT, "%s: '%s' is not a sane integer", what, key);
	*out = (int)v->integer;
	return 0;
}

/* The tern_arch row of a config: "architectures"[0], else bitnet-b1.58; the
 * checks of tern-safetensors.h that are about the graph. */
static int cfg_arch(const tern_json *r, const char *what, const tern_arch **out, tern_err *err)
{
	const tern_json *classes = tern_json_get(r, "architectures");
	const char *cls = NULL;
	if (classes && classes->type == TERN_JSON_ARRAY && classes->len > 0 &&
	    classes->items[0]->type == TERN_JSON_STRING)
		cls = classes->items[0]->str;
	const tern_arch *a = cls ? tern_arch_find_hf(cls) : tern_arch_find("bitnet-b1.58");
	TERN_RETURN_IF(!a, err, TERN_EUNSUP,
		       "%s: architectures \"%.64s\" is not supported (BitNetForCausalLM, LlamaForCausalLM)", what, cls);
	/* Qwen3's ternary checkpoints (Ternary-Bonsai) are group-scaled, which the
	 * projections of a tern_source do not carry yet: read from the GGUF only */
	TERN_RETURN_IF(a->qk_norm, err, TERN_EUNSUP, "%s: %s checkpoints are not read yet (only its GGUF)", what,
		       a->hf_class);
	const char *act = tern_json_get_str(r, "hidden_act", a->hf_act);
	TERN_RETURN_IF(strcmp(act, a->hf_act) != 0, err, TERN_EUNSUP,
		       "%s: hidden_act \"%.32s\" is not supported for %s (%s)", what, act, a->hf_class, a->hf_act);
	const tern_json *rs = tern_json_get(r, "rope_scaling");
	TERN_RETURN_IF(rs && rs->type != TERN_JSON_NULL, err, TERN_EUNSUP,
		       "%s: rope_scaling is not supported (tern runs plain RoPE)", what);
	TERN_RETURN_IF(tern_json_get_bool(r, "attention_bias", 0) || tern_json_get_bool(r, "mlp_bias", 0), err,
		       TERN_EUNSUP, "%s: bias terms (attention_bias / mlp_bias) are not supported", what);
	const tern_json *q = tern_json_get(r, "quantization_config");
	/* a Llama checkpoint is ternary only through the bitnet quantizer;
	 * BitNet's graph is ternary whatever the config says */
	TERN_RETURN_IF(!a->sub_norms && strcmp(tern_json_get_str(q, "quant_method", ""), "bitnet") != 0, err,
		       TERN_EUNSUP,
		       "%s: %s without quantization_config.quant_method \"bitnet\" is not a ternary checkpoint", what,
		       a->hf_class);
	*out = a;
	return 0;
}

int tern_hf_config_parse(const char *json, size_t len, const char *what, tern_hparams *hp, tern_hf_quant *quant,
			 tern_err *err)
{
	memset(hp, 0, sizeof *hp);
	tern_json_doc *doc;
	TERN_FORWARD_IF_ERROR(tern_json_parse(&doc, json, len, what, err));
	const tern_json *r = tern_json_root(doc);
	int rc = 0;
	if (r->type != TERN_JSON_OBJECT) {
		rc = TERN_ERR(err, TERN_EFORMAT, "%s: not a JSON object", what);
		goto out;
	}
	/* -2 marks a required key. */
	if ((rc = cfg_int(r, "hidden_size", -2, &hp->n_embd, what, err)) < 0 ||
	    (rc = cfg_int(r, "num_hidden_layers", -2, &hp->n_layer, what, err)) < 0 ||
	    (rc = cfg_int(r, "num_attention_heads", -2, &hp->n_head, what, err)) < 0 ||
	    (rc = cfg_int(r, "intermediate_size", -2, &hp->n_ff, what, err)) < 0 ||
	    (rc = cfg_int(r, "vocab_size", -2, &hp->n_vocab, what, err)) < 0 ||
	    (rc = cfg_int(r, "num_key_value_heads", hp->n_head, &hp->n_head_kv, what, err)) < 0 ||
	    (rc = cfg_int(r, "max_position_embeddings", 2048, &hp->n_ctx_train, what, err)) < 0 ||
	    (rc = cfg_int(r, "bos_token_id", -1, &hp->bos_id, what, err)) < 0)
		goto out;
	const tern_json *eos = tern_json_get(r, "eos_token_id");
	hp->eos_id = -1;
	if (eos && eos->type == TERN_JSON_ARRAY && eos->len > 0)
		eos = eos->items[0];
	if (eos && eos->type == TERN_JSON_NUMBER && eos->is_int && eos->integer >= 0 && eos->integer <= INT32_MAX)
		hp->eos_id = (int32_t)eos->integer;
	hp->eot_id = -1;
	hp->rope_theta = (float)tern_json_get_num(r, "rope_theta", 10000.0);
	hp->norm_eps = (float)tern_json_get_num(r, "rms_norm_eps", 1e-5);
	hp->tied_embeddings = tern_json_get_bool(r, "tie_word_embeddings", 0);
	hp->head_dim = hp->n_head > 0 ? hp->n_embd / hp->n_head : 0;
	if (tern_json_get(r, "head_dim") && tern_json_get_int(r, "head_dim", 0) != hp->head_dim) {
		rc = TERN_ERR(err, TERN_EUNSUP, "%s: head_dim %" PRId64 " != hidden_size / num_attention_heads", what,
			      tern_json_get_int(r, "head_dim", 0));
		goto out;
	}
	const tern_arch *a = NULL;
	if ((rc = cfg_arch(r, what, &a, err)) < 0)
		goto out;
	snprintf(hp->arch, sizeof hp->arch, "%s", a->name);
	if (quant) {
		const tern_json *q = tern_json_get(r, "quantization_config");
		const char *mode = tern_json_get_str(q, "quantization_mode", "online");
		quant->online = q == NULL || strcmp(mode, "online") == 0;
		quant->scale_divides = q != NULL && strcmp(tern_json_get_str(q, "linear_class", ""), "autobitlinear") != 0;
	}
	rc = tern_hparams_validate(hp, err);
	if (rc < 0) {
		char msg[sizeof err->msg];
		snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
		rc = TERN_ERR(err, rc, "%s: %s", what, msg);
	}
out:
	tern_json_free(doc);
	return rc;
}

int tern_hf_config_read(const char *dir, tern_hparams *hp, tern_hf_quant *q, tern_err *err)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/config.json", dir);
	char *buf;
	size_t n;
	TERN_FORWARD_IF_ERROR(tern_read_file(path, 1 << 20, &buf, &n, err));
	const int rc = tern_hf_config_parse(buf, n, path, hp, q, err);
	free(buf);
	return rc;
}
