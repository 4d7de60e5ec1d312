/* gguf.c: the GGUF reader (see tern-gguf.h). The header is parsed once at
 * open with a cursor that checks every read against the file size; counts
 * are compared with the bytes left before anything is allocated for them.
 * After open, accessors only index arrays that open validated. */
#include "tern-gguf.h"

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

/* Limits far above anything real, so hostile values fail early. */
#define MAX_KEY_LEN 65535u
#define MAX_NAME_LEN 65535u
#define MAX_DIM (UINT64_C(1) << 40)
#define MAX_ALIGNMENT (UINT32_C(1) << 24)
/* Real files have ~30 KVs and ~300-2000 tensors; the caps keep the index
 * memory of a hostile file small whatever its size. */
#define MAX_KV (UINT64_C(1) << 16)
#define MAX_TENSORS (UINT64_C(1) << 20)

typedef struct {
	char *key;
	uint32_t type;
	uint64_t off;       /* file offset of the value (after the type) */
	uint32_t arr_type;  /* ARRAY: element type */
	uint64_t arr_n;     /* ARRAY: count */
	uint64_t arr_data;  /* ARRAY: file offset of the first element */
	uint64_t *str_offs; /* STRING ARRAY: (arr_n) file offsets of each gguf_str */
} kv_entry;

struct tern_gguf {
	const uint8_t *base;
	uint64_t size;
	tern_file_map map; /* tern_gguf_open's mapping (zeroed for open_mem) */
	char *path;
	uint32_t version;
	uint32_t alignment;
	uint64_t data_off;
	int64_t n_kv;
	kv_entry *kvs; /* (n_kv) */
	int64_t n_tensors;
	tern_gguf_tensor *tensors; /* (n_tensors) */
	tern_hash kv_index;        /* key -> kv index */
	tern_hash tensor_index;    /* name -> tensor index */
};

/* ---- type tables ---------------------------------------------------------- */

typedef struct {
	const char *name;
	uint32_t blck; /* elements per block; 0 = unknown id */
	uint32_t size; /* bytes per block */
} type_info;

/* ggml's own table (ids, names, block sizes): every id a GGUF file may use,
 * so that files holding types tern does not read still open and name them.
 * tern_dtype_of_ggml() says which of them tern uses. */
#define GGML_NTYPES 43
static const type_info ggml_types[GGML_NTYPES] = {
    [0] = {"f32", 1, 4},         [1] = {"f16", 1, 2},         [2] = {"q4_0", 32, 18},      [3] = {"q4_1", 32, 20},
    [6] = {"q5_0", 32, 22},      [7] = {"q5_1", 32, 24},      [8] = {"q8_0", 32, 34},      [9] = {"q8_1", 32, 36},
    [10] = {"q2_k", 256, 84},    [11] = {"q3_k", 256, 110},   [12] = {"q4_k", 256, 144},   [13] = {"q5_k", 256, 176},
    [14] = {"q6_k", 256, 210},   [15] = {"q8_k", 256, 292},   [16] = {"iq2_xxs", 256, 66}, [17] = {"iq2_xs", 256, 74},
    [18] = {"iq3_xxs", 256, 98}, [19] = {"iq1_s", 256, 50},   [20] = {"iq4_nl", 32, 18},   [21] = {"iq3_s", 256, 110},
    [22] = {"iq2_s", 256, 82},   [23] = {"iq4_xs", 256, 136}, [24] = {"i8", 1, 1},         [25] = {"i16", 1, 2},
    [26] = {"i32", 1, 4},        [27] = {"i64", 1, 8},        [28] = {"f64", 1, 8},        [29] = {"iq1_m", 256, 56},
    [30] = {"bf16", 1, 2},       [31] = {"q4_0_4_4", 32, 18}, [32] = {"q4_0_4_8", 32, 18}, [33] = {"q4_0_8_8", 32, 18},
    [34] = {"tq1_0", 256, 54},   [35] = {"tq2_0", 256, 66},   [36] = {"i2_s", 1, 1},       [37] = {"i8_s", 1, 1},
    [38] = {"tl1", 1, 1},        [39] = {"tl2", 1, 1},
    /* ggml (PrismML's Ternary-Bonsai files): an f16 scale per 64 ternary weights (kernels/tern-gq.h) */
    [42] = {"q2_0", 64, 18},
};

const char *tern_ggml_type_name(uint32_t type)
{
	if (type < GGML_NTYPES && ggml_types[type].name)
		return ggml_types[type].name;
	return "unknown";
}

static const char *const vtype_names[TERN_GGUF_NTYPES] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
							  "bool", "string", "array", "u64", "i64", "f64"};

const char *tern_gguf_vtype_name(uint32_t vtype)
{
	return vtype < TERN_GGUF_NTYPES ? vtype_names[vtype] : "unknown";
}

static int mul_ok(uint64_t a, uint64_t b, uint64_t *r)
{
	if (a != 0 && b > UINT64_MAX / a)
		return 0;
	*r = a * b;
	return 1;
}

uint64_t tern_ggml_nbytes(uint32_t type, uint32_t n_dims, const uint64_t *ne)
{
	if (type >= GGML_NTYPES || ggml_types[type].blck == 0 || n_dims < 1 || n_dims > TERN_GGUF_MAX_DIMS)
		return 0;
	const int dt = tern_dtype_of_ggml(type);
	uint64_t n = 1;
	for (uint32_t i = 0; i < n_dims; i++) {
		if (ne[i] == 0 || ne[i] > MAX_DIM || !mul_ok(n, ne[i], &n))
			return 0;
	}
	if (dt == TERN_DTYPE_I2_S || dt == TERN_DTYPE_TL1) {
		/* ggml_nbytes special case: 2 bits per weight + a 32-byte tail. */
		if (n_dims > 2 || n % 4 != 0)
			return 0;
		return n / 4 + 32;
	}
	if (dt == TERN_DTYPE_TL2) {
		if (n_dims > 2 || ne[0] < 256)
			return 0;
		const uint64_t ne1 = n_dims > 1 ? ne[1] : 1;
		uint64_t a, b;
		if (!mul_ok(ne[0] - 256, ne1, &a) || !mul_ok(256, ne1, &b))
			return 0;
		uint64_t bytes = a / 3 * 5 / 8 + b / 2 * 4 / 8;
		bytes = (bytes + 31) / 32 * 32;
		return bytes + 32;
	}
	const type_info *ti = &ggml_types[type];
	if (ne[0] % ti->blck != 0)
		return 0;
	uint64_t r;
	if (!mul_ok(n / ti->blck, ti->size, &r))
		return 0;
	return r;
}

static uint64_t vtype_size(uint32_t t)
{
	switch (t) {
	case TERN_GGUF_U8:
	case TERN_GGUF_I8:
	case TERN_GGUF_BOOL: return 1;
	case TERN_GGUF_U16:
	case TERN_GGUF_I16: return 2;
	case TERN_GGUF_U32:
	case TERN_GGUF_I32:
	case TERN_GGUF_F32: return 4;
	case TERN_GGUF_U64:
	case TERN_GGUF_I64:
	case TERN_GGUF_F64: return 8;
	default: return 0;
	}
}

/* ---- little-endian loads (unaligned-safe) ---------------------------------- */

static uint16_t ld16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}
static uint32_t ld32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t ld64(const uint8_t *p)
{
	return (uint64_t)ld32(p) | ((uint64_t)ld32(p + 4) << 32);
}

/* ---- hash index (FNV-1a, open addressing) ---------------------------------- */

static uint64_t fnv1a(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= (uint8_t)s[i];
		h *= 1099511628211ULL;
	}
	return h;
}

int tern_hash_init(tern_hash *h, uint64_t n)
{
	uint64_t cap = 16;
	while (cap < 2 * n + 1)
		cap <<= 1;
	h->slots = malloc(cap * sizeof *h->slots);
	if (!h->slots)
		return TERN_ENOMEM;
	for (uint64_t i = 0; i < cap; i++)
		h->slots[i] = -1;
	h->cap = cap;
	return 0;
}

void tern_hash_free(tern_hash *h)
{
	free(h->slots);
	h->slots = NULL;
	h->cap = 0;
}

int64_t tern_hash_find(const tern_hash *h, const char *key, const char *(*name_of)(const void *, int64_t),
		       const void *ctx)
{
	if (!h->slots)
		return -1;
	const uint64_t mask = h->cap - 1;
	for (uint64_t i = fnv1a(key, strlen(key)) & mask;; i = (i + 1) & mask) {
		const int64_t v = h->slots[i];
		if (v < 0)
			return -1;
		if (strcmp(name_of(ctx, v), key) == 0)
			return v;
	}
}

int tern_hash_insert(tern_hash *h, const char *key, int64_t idx, const char *(*name_of)(const void *, int64_t),
		     const void *ctx)
{
	const uint64_t mask = h->cap - 1;
	for (uint64_t i = fnv1a(key, strlen(key)) & mask;; i = (i + 1) & mask) {
		const int64_t v = h->slots[i];
		if (v < 0) {
			h->slots[i] = idx;
			return 0;
		}
		if (strcmp(name_of(ctx, v), key) == 0)
			return -1;
	}
}

static const char *kv_name_of(const void *ctx, int64_t i)
{
	return ((const tern_gguf *)ctx)->kvs[i].key;
}
static const char *tensor_name_of(const void *ctx, int64_t i)
{
	return ((const tern_gguf *)ctx)->tensors[i].name;
}

/* ---- parsing cursor ------------------------------------------------------- */

typedef struct {
	const uint8_t *base;
	uint64_t size;
	uint64_t pos;
	const char *path;
	tern_err *err;
} cursor;

#define FAIL(code, ...) TERN_ERR(c->err, code, __VA_ARGS__)

static int need(cursor *c, uint64_t n, const char *what)
{
	if (n > c->size - c->pos)
		return FAIL(TERN_ERANGE,
			    "%s: truncated: %s at byte %" PRIu64 " needs %" PRIu64 " bytes, file has %" PRIu64, c->path,
			    what, c->pos, n, c->size);
	return 0;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what)
{
	TERN_FORWARD_IF_ERROR(need(c, 4, what));
	*v = ld32(c->base + c->pos);
	c->pos += 4;
	return 0;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what)
{
	TERN_FORWARD_IF_ERROR(need(c, 8, what));
	*v = ld64(c->base + c->pos);
	c->pos += 8;
	return 0;
}

/* A gguf_str: validates and returns its file offset and length. */
static int rd_str(cursor *c, uint64_t *off, uint64_t *len, uint64_t max_len, const char *what)
{
	TERN_FORWARD_IF_ERROR(rd_u64(c, len, what));
	if (*len > max_len)
		return FAIL(TERN_ERANGE, "%s: absurd %s length %" PRIu64 " at byte %" PRIu64, c->path, what, *len,
			    c->pos - 8);
	TERN_FORWARD_IF_ERROR(need(c, *len, what));
	*off = c->pos;
	c->pos += *len;
	return 0;
}

static char *dup_n(const uint8_t *p, uint64_t n)
{
	char *s = malloc(n + 1);
	if (s) {
		memcpy(s, p, n);
		s[n] = 0;
	}
	return s;
}

static int parse_kv(cursor *c, tern_gguf *g, int64_t idx)
{
	kv_entry *kv = &g->kvs[idx];
	uint64_t koff = 0, klen = 0;
	TERN_FORWARD_IF_ERROR(rd_str(c, &koff, &klen, MAX_KEY_LEN, "metadata key"));
	kv->key = dup_n(c->base + koff, klen);
	if (!kv->key)
		return FAIL(TERN_ENOMEM, "%s: out of memory", c->path);
	TERN_FORWARD_IF_ERROR(rd_u32(c, &kv->type, "metadata value type"));
	kv->off = c->pos;
	if (kv->type >= TERN_GGUF_NTYPES)
		return FAIL(TERN_EFORMAT, "%s: key '%s' has unknown value type %u", c->path, kv->key, kv->type);
	if (kv->type == TERN_GGUF_STRING) {
		uint64_t o = 0, l = 0;
		return rd_str(c, &o, &l, UINT64_MAX, "string value");
	}
	if (kv->type != TERN_GGUF_ARRAY) {
		const uint64_t n = vtype_size(kv->type);
		TERN_FORWARD_IF_ERROR(need(c, n, "metadata value"));
		if (kv->type == TERN_GGUF_BOOL && c->base[c->pos] > 1)
			return FAIL(TERN_EFORMAT, "%s: key '%s' has bool value %u", c->path, kv->key, c->base[c->pos]);
		c->pos += n;
		return 0;
	}
	TERN_FORWARD_IF_ERROR(rd_u32(c, &kv->arr_type, "array element type"));
	TERN_FORWARD_IF_ERROR(rd_u64(c, &kv->arr_n, "array length"));
	if (kv->arr_type == TERN_GGUF_ARRAY)
		return FAIL(TERN_EFORMAT, "%s: key '%s' is a nested array (not allowed)", c->path, kv->key);
	if (kv->arr_type >= TERN_GGUF_NTYPES)
		return FAIL(TERN_EFORMAT, "%s: key '%s' has unknown array element type %u", c->path, kv->key,
			    kv->arr_type);
	kv->arr_data = c->pos;
	const uint64_t left = c->size - c->pos;
	if (kv->arr_type == TERN_GGUF_STRING) {
		/* Every element needs at least its 8-byte length: bound the count
		 * by the bytes left before allocating the offset table. */
		if (kv->arr_n > left / 8)
			return FAIL(TERN_ERANGE,
				    "%s: absurd array length %" PRIu64 " for key '%s' (%" PRIu64 " bytes left)",
				    c->path, kv->arr_n, kv->key, left);
		kv->str_offs = malloc((kv->arr_n ? kv->arr_n : 1) * sizeof *kv->str_offs);
		if (!kv->str_offs)
			return FAIL(TERN_ENOMEM, "%s: out of memory for array '%s'", c->path, kv->key);
		for (uint64_t i = 0; i < kv->arr_n; i++) {
			uint64_t o = 0, l = 0;
			kv->str_offs[i] = c->pos;
			TERN_FORWARD_IF_ERROR(rd_str(c, &o, &l, UINT64_MAX, "array string"));
		}
		return 0;
	}
	const uint64_t es = vtype_size(kv->arr_type);
	if (kv->arr_n > left / es)
		return FAIL(TERN_ERANGE,
			    "%s: truncated: array '%s' of %" PRIu64 " %s needs more than the %" PRIu64 " bytes left",
			    c->path, kv->key, kv->arr_n, tern_gguf_vtype_name(kv->arr_type), left);
	if (kv->arr_type == TERN_GGUF_BOOL) {
		for (uint64_t i = 0; i < kv->arr_n; i++)
			if (c->base[c->pos + i] > 1)
				return FAIL(TERN_EFORMAT, "%s: key '%s' element %" PRIu64 " has bool value %u", c->path,
					    kv->key, i, c->base[c->pos + i]);
	}
	c->pos += kv->arr_n * es;
	return 0;
}

static int parse_tensor_info(cursor *c, tern_gguf *g, int64_t idx)
{
	tern_gguf_tensor *t = &g->tensors[idx];
	uint64_t noff = 0, nlen = 0;
	TERN_FORWARD_IF_ERROR(rd_str(c, &noff, &nlen, MAX_NAME_LEN, "tensor name"));
	char *name = dup_n(c->base + noff, nlen);
	if (!name)
		return FAIL(TERN_ENOMEM, "%s: out of memory", c->path);
	t->name = name;
	TERN_FORWARD_IF_ERROR(rd_u32(c, &t->n_dims, "tensor n_dims"));
	if (t->n_dims < 1 || t->n_dims > TERN_GGUF_MAX_DIMS)
		return FAIL(TERN_ERANGE, "%s: tensor '%s' has absurd n_dims %u", c->path, name, t->n_dims);
	for (int d = 0; d < TERN_GGUF_MAX_DIMS; d++)
		t->ne[d] = 1;
	for (uint32_t d = 0; d < t->n_dims; d++) {
		TERN_FORWARD_IF_ERROR(rd_u64(c, &t->ne[d], "tensor dimension"));
		if (t->ne[d] == 0 || t->ne[d] > MAX_DIM)
			return FAIL(TERN_ERANGE, "%s: tensor '%s' has absurd dimension ne[%u] = %" PRIu64, c->path,
				    name, d, t->ne[d]);
	}
	TERN_FORWARD_IF_ERROR(rd_u32(c, &t->type, "tensor type"));
	TERN_FORWARD_IF_ERROR(rd_u64(c, &t->offset, "tensor offset"));
	if (t->type >= GGML_NTYPES || ggml_types[t->type].blck == 0)
		return FAIL(TERN_EUNSUP, "%s: tensor '%s' has unknown type %u", c->path, name, t->type);
	t->dtype = tern_dtype_of_ggml(t->type);
	t->nbytes = tern_ggml_nbytes(t->type, t->n_dims, t->ne);
	if (t->nbytes == 0)
		return FAIL(TERN_ERANGE,
			    "%s: tensor '%s': shape [%" PRIu64 ", %" PRIu64 ", %" PRIu64 ", %" PRIu64
			    "] impossible for type %s (size overflow or not a whole number of blocks)",
			    c->path, name, t->ne[0], t->ne[1], t->ne[2], t->ne[3], tern_ggml_type_name(t->type));
	return 0;
}

static int gguf_parse(tern_gguf *g, tern_err *err)
{
	cursor cur = {g->base, g->size, 0, g->path, err}, *c = &cur;
	if (g->size < 4 || memcmp(g->base, "GGUF", 4) != 0) {
		if (g->size >= 4 && memcmp(g->base, "FUGG", 4) == 0)
			return FAIL(TERN_EUNSUP, "%s: big-endian GGUF is not supported", g->path);
		return FAIL(TERN_EFORMAT, "%s: wrong magic: not a GGUF file", g->path);
	}
	c->pos = 4;
	TERN_FORWARD_IF_ERROR(rd_u32(c, &g->version, "version"));
	if (g->version == 0x03000000 || g->version == 0x02000000)
		return FAIL(TERN_EUNSUP, "%s: big-endian GGUF is not supported", g->path);
	if (g->version != 2 && g->version != 3)
		return FAIL(TERN_EUNSUP, "%s: unsupported GGUF version %u (need 2 or 3)", g->path, g->version);
	uint64_t n_tensors, n_kv;
	TERN_FORWARD_IF_ERROR(rd_u64(c, &n_tensors, "tensor count"));
	TERN_FORWARD_IF_ERROR(rd_u64(c, &n_kv, "metadata count"));
	const uint64_t left = g->size - c->pos;
	/* Minimum encoded sizes: a KV is >= 8+4+1 bytes, a tensor info >= 8+4+8+4+8. */
	if (n_kv > left / 13 || n_kv > MAX_KV)
		return FAIL(TERN_ERANGE, "%s: absurd metadata count %" PRIu64 " for a file of %" PRIu64 " bytes",
			    g->path, n_kv, g->size);
	if (n_tensors > left / 32 || n_tensors > MAX_TENSORS)
		return FAIL(TERN_ERANGE, "%s: absurd tensor count %" PRIu64 " for a file of %" PRIu64 " bytes", g->path,
			    n_tensors, g->size);
	g->kvs = calloc(n_kv ? n_kv : 1, sizeof *g->kvs);
	g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *g->tensors);
	if (!g->kvs || !g->tensors || tern_hash_init(&g->kv_index, n_kv) || tern_hash_init(&g->tensor_index, n_tensors))
		return FAIL(TERN_ENOMEM, "%s: out of memory", g->path);
	g->alignment = TERN_GGUF_DEFAULT_ALIGNMENT;
	for (uint64_t i = 0; i < n_kv; i++) {
		g->n_kv = (int64_t)i + 1; /* so close() frees the partial entry */
		TERN_FORWARD_IF_ERROR(parse_kv(c, g, (int64_t)i));
		kv_entry *kv = &g->kvs[i];
		if (tern_hash_insert(&g->kv_index, kv->key, (int64_t)i, kv_name_of, g) != 0)
			return FAIL(TERN_EFORMAT, "%s: duplicate metadata key '%s'", g->path, kv->key);
		if (strcmp(kv->key, "general.alignment") == 0) {
			if (kv->type != TERN_GGUF_U32)
				return FAIL(TERN_EFORMAT, "%s: general.alignment has type %s, expected u32", g->path,
					    tern_gguf_vtype_name(kv->type));
			const uint32_t a = ld32(g->base + kv->off);
			if (a == 0 || (a & (a - 1)) != 0 || a > MAX_ALIGNMENT)
				return FAIL(TERN_ERANGE, "%s: bad general.alignment %u (need a power of two <= %u)",
					    g->path, a, MAX_ALIGNMENT);
			g->alignment = a;
		}
	}
	for (uint64_t i = 0; i < n_tensors; i++) {
		g->n_tensors = (int64_t)i + 1;
		TERN_FORWARD_IF_ERROR(parse_tensor_info(c, g, (int64_t)i));
		if (tern_hash_insert(&g->tensor_index, g->tensors[i].name, (int64_t)i, tensor_name_of, g) != 0)
			return FAIL(TERN_EFORMAT, "%s: duplicate tensor name '%s'", g->path, g->tensors[i].name);
	}
	const uint64_t a = g->alignment;
	g->data_off = (c->pos + a - 1) / a * a;
	if (n_tensors > 0 && g->data_off > g->size)
		return FAIL(TERN_ERANGE, "%s: truncated: data section would start at byte %" PRIu64 " of %" PRIu64,
			    g->path, g->data_off, g->size);
	const uint64_t data_size = g->data_off <= g->size ? g->size - g->data_off : 0;
	for (uint64_t i = 0; i < n_tensors; i++) {
		tern_gguf_tensor *t = &g->tensors[i];
		if (t->offset % a != 0)
			return FAIL(TERN_ERANGE,
				    "%s: tensor '%s' offset %" PRIu64 " is not a multiple of the alignment %u", g->path,
				    t->name, t->offset, g->alignment);
		if (t->offset > data_size || t->nbytes > data_size - t->offset)
			return FAIL(TERN_ERANGE,
				    "%s: tensor '%s' (%s, %" PRIu64 " bytes at data offset %" PRIu64
				    ") extends past the end of the file (data section has %" PRIu64 " bytes)",
				    g->path, t->name, tern_ggml_type_name(t->type), t->nbytes, t->offset, data_size);
		t->data = g->base + g->data_off + t->offset;
	}
	return 0;
}

static int gguf_new(tern_gguf **out, const char *name, tern_err *err)
{
	*out = NULL;
	tern_gguf *g = calloc(1, sizeof *g);
	if (!g)
		return TERN_ERR(err, TERN_ENOMEM, "%s: out of memory", name);
	g->path = strdup(name);
	if (!g->path) {
		free(g);
		return TERN_ERR(err, TERN_ENOMEM, "%s: out of memory", name);
	}
	*out = g;
	return 0;
}

int tern_gguf_open_mem(tern_gguf **out, const void *buf, size_t len, const char *name, tern_err *err)
{
	tern_gguf *g = NULL;
	TERN_FORWARD_IF_ERROR(gguf_new(&g, name ? name : "<memory>", err));
	static const uint8_t empty[1];
	g->base = buf ? buf : empty;
	g->size = buf ? len : 0;
	const int rc = gguf_parse(g, err);
	if (rc < 0) {
		tern_gguf_close(g);
		return rc;
	}
	*out = g;
	return 0;
}

int tern_gguf_open(tern_gguf **out, const char *path, tern_err *err)
{
	*out = NULL;
	tern_file_map map;
	TERN_FORWARD_IF_ERROR(tern_map_file(path, &map, err));
	tern_gguf *g = NULL;
	int rc = gguf_new(&g, path, err);
	if (rc < 0) {
		tern_unmap_file(&map);
		return rc;
	}
	g->map = map;
	g->base = map.data;
	g->size = map.size;
	rc = gguf_parse(g, err);
	if (rc < 0) {
		tern_gguf_close(g);
		return rc;
	}
	*out = g;
	return 0;
}

void tern_gguf_close(tern_gguf *g)
{
	if (!g)
		return;
	for (int64_t i = 0; i < g->n_kv; i++) {
		free(g->kvs[i].key);
		free(g->kvs[i].str_offs);
	}
	for (int64_t i = 0; i < g->n_tensors; i++)
		free((char *)g->tensors[i].name);
	free(g->kvs);
	free(g->tensors);
	tern_hash_free(&g->kv_index);
	tern_hash_free(&g->tensor_index);
	tern_unmap_file(&g->map);
	free(g->path);
	free(g);
}

const char *tern_gguf_path(const tern_gguf *g)
{
	return g->path;
}
uint32_t tern_gguf_version(const tern_gguf *g)
{
	return g->version;
}
uint32_t tern_gguf_alignment(const tern_gguf *g)
{
	return g->alignment;
}
uint64_t tern_gguf_data_offset(const tern_gguf *g)
{
	return g->data_off;
}
uint64_t tern_gguf_file_size(const tern_gguf *g)
{
	return g->size;
}

/* ---- metadata access ------------------------------------------------------- */

int64_t tern_gguf_n_kv(const tern_gguf *g)
{
	return g->n_kv;
}

int64_t tern_gguf_find_key(const tern_gguf *g, const char *key)
{
	return tern_hash_find(&g->kv_index, key, kv_name_of, g);
}

const char *tern_gguf_kv_key(const tern_gguf *g, int64_t i)
{
	return i >= 0 && i < g->n_kv ? g->kvs[i].key : NULL;
}

uint32_t tern_gguf_kv_type(const tern_gguf *g, int64_t i)
{
	return i >= 0 && i < g->n_kv ? g->kvs[i].type : TERN_GGUF_NTYPES;
}

static int is_int_type(uint32_t t)
{
	return t <= TERN_GGUF_I32 || t == TERN_GGUF_U64 || t == TERN_GGUF_I64;
}

/* Loads an integer value of type t at p: as i64 (*neg: value < 0) with u64
 * magnitude for unsigned 64-bit. */
static void load_int(const uint8_t *p, uint32_t t, int64_t *sv, uint64_t *uv, int *is_unsigned)
{
	*is_unsigned = 0;
	switch (t) {
	case TERN_GGUF_U8: *sv = p[0]; break;
	case TERN_GGUF_I8: *sv = (int8_t)p[0]; break;
	case TERN_GGUF_U16: *sv = ld16(p); break;
	case TERN_GGUF_I16: *sv = (int16_t)ld16(p); break;
	case TERN_GGUF_U32: *sv = ld32(p); break;
	case TERN_GGUF_I32: *sv = (int32_t)ld32(p); break;
	case TERN_GGUF_I64: *sv = (int64_t)ld64(p); break;
	default: /* U64 */
		*uv = ld64(p);
		*is_unsigned = 1;
		*sv = 0;
		return;
	}
	*uv = (uint64_t)*sv;
}

static double load_num(const uint8_t *p, uint32_t t)
{
	if (t == TERN_GGUF_F32) {
		float f;
		uint32_t u = ld32(p);
		memcpy(&f, &u, 4);
		return f;
	}
	if (t == TERN_GGUF_F64) {
		double d;
		uint64_t u = ld64(p);
		memcpy(&d, &u, 8);
		return d;
	}
	int64_t sv;
	uint64_t uv;
	int uns;
	load_int(p, t, &sv, &uv, &uns);
	return uns ? (double)uv : (double)sv;
}

static const kv_entry *get_kv(const tern_gguf *g, const char *key, tern_err *err)
{
	const int64_t i = tern_gguf_find_key(g, key);
	if (i < 0) {
		TERN_ERR(err, TERN_EFORMAT, "%s: missing metadata key '%s'", g->path, key);
		return NULL;
	}
	return &g->kvs[i];
}

#define TYPE_BIT(t) (1u << (t))
#define INT_TYPES                                                                                                      \
	(TYPE_BIT(TERN_GGUF_U8) | TYPE_BIT(TERN_GGUF_I8) | TYPE_BIT(TERN_GGUF_U16) | TYPE_BIT(TERN_GGUF_I16) |         \
	 TYPE_BIT(TERN_GGUF_U32) | TYPE_BIT(TERN_GGUF_I32) | TYPE_BIT(TERN_GGUF_U64) | TYPE_BIT(TERN_GGUF_I64))

/* The KV of key when its type is one of types (TYPE_BIT mask); otherwise NULL
 * with "key 'K' has type T, expected <expected>" (or the missing key) in err. */
static const kv_entry *get_kv_typed(const tern_gguf *g, const char *key, uint32_t types, const char *expected,
				    tern_err *err)
{
	const kv_entry *kv = get_kv(g, key, err);
	if (kv && !(kv->type < 32 && (types & TYPE_BIT(kv->type)))) {
		TERN_ERR(err, TERN_EFORMAT, "%s: key '%s' has type %s, expected %s", g->path, key,
			 tern_gguf_vtype_name(kv->type), expected);
		return NULL;
	}
	return kv;
}

/* Integer in [lo, hi] (hi as u64 for the unsigned range) from a scalar KV. */
static int get_int_range(const tern_gguf *g, const char *key, int64_t lo, uint64_t hi, int64_t *sv_out,
			 uint64_t *uv_out, tern_err *err)
{
	const kv_entry *kv = get_kv_typed(g, key, INT_TYPES, "an integer", err);
	if (!kv)
		return TERN_EFORMAT;
	int64_t sv;
	uint64_t uv;
	int uns;
	load_int(g->base + kv->off, kv->type, &sv, &uv, &uns);
	if (uns ? uv > hi : (sv < lo || (sv >= 0 && (uint64_t)sv > hi)))
		return TERN_ERR(err, TERN_EFORMAT, "%s: key '%s' value out of range", g->path, key);
	*sv_out = uns ? (int64_t)uv : sv;
	*uv_out = uv;
	return 0;
}

/* tern_gguf_get_u32, _i32, _u64 and _i64: one body, the range and the
 * signed or unsigned reading being what differs. */
#define GGUF_GET_INT(suffix, T, lo, hi, value)                                                                         \
	int tern_gguf_get_##suffix(const tern_gguf *g, const char *key, T *v, tern_err *err)                          \
	{                                                                                                              \
		int64_t s;                                                                                             \
		uint64_t u;                                                                                            \
		TERN_FORWARD_IF_ERROR(get_int_range(g, key, lo, hi, &s, &u, err));                                     \
		*v = (T)(value);                                                                                       \
		return 0;                                                                                              \
	}
GGUF_GET_INT(u32, uint32_t, 0, UINT32_MAX, u)
GGUF_GET_INT(i32, int32_t, INT32_MIN, INT32_MAX, s)
GGUF_GET_INT(u64, uint64_t, 0, UINT64_MAX, u)
GGUF_GET_INT(i64, int64_t, INT64_MIN, INT64_MAX, s)
#undef GGUF_GET_INT

int tern_gguf_get_f64(const tern_gguf *g, const char *key, double *v, tern_err *err)
{
	const kv_entry *kv =
	    get_kv_typed(g, key, INT_TYPES | TYPE_BIT(TERN_GGUF_F32) | TYPE_BIT(TERN_GGUF_F64), "a number", err);
	if (!kv)
		return TERN_EFORMAT;
	*v = load_num(g->base + kv->off, kv->type);
	return 0;
}

int tern_gguf_get_f32(const tern_gguf *g, const char *key, float *v, tern_err *err)
{
	double d = 0;
	TERN_FORWARD_IF_ERROR(tern_gguf_get_f64(g, key, &d, err));
	*v = (float)d;
	return 0;
}

int tern_gguf_get_bool(const tern_gguf *g, const char *key, int *v, tern_err *err)
{
	const kv_entry *kv = get_kv_typed(g, key, TYPE_BIT(TERN_GGUF_BOOL), "bool", err);
	if (!kv)
		return TERN_EFORMAT;
	*v = g->base[kv->off] != 0;
	return 0;
}

int tern_gguf_get_str(const tern_gguf *g, const char *key, const char **s, uint64_t *len, tern_err *err)
{
	const kv_entry *kv = get_kv_typed(g, key, TYPE_BIT(TERN_GGUF_STRING), "string", err);
	if (!kv)
		return TERN_EFORMAT;
	*len = ld64(g->base + kv->off);
	*s = (const char *)g->base + kv->off + 8;
	return 0;
}

int tern_gguf_get_arr(const tern_gguf *g, const char *key, uint32_t *elem_type, uint64_t *count, tern_err *err)
{
	const kv_entry *kv = get_kv_typed(g, key, TYPE_BIT(TERN_GGUF_ARRAY), "an array", err);
	if (!kv)
		return TERN_EFORMAT;
	*elem_type = kv->arr_type;
	*count = kv->arr_n;
	return 0;
}

static const kv_entry *arr_kv(const tern_gguf *g, int64_t kvi, uint64_t i, tern_err *err)
{
	if (kvi < 0 || kvi >= g->n_kv || g->kvs[kvi].type != TERN_GGUF_ARRAY) {
		TERN_ERR(err, TERN_EINVAL, "%s: metadata %" PRId64 " is not an array", g->path, kvi);
		return NULL;
	}
	if (i >= g->kvs[kvi].arr_n) {
		TERN_ERR(err, TERN_EINVAL, "%s: index %" PRIu64 " out of range for array '%s' of %" PRIu64, g->path, i,
			 g->kvs[kvi].key, g->kvs[kvi].arr_n);
		return NULL;
	}
	return &g->kvs[kvi];
}

int tern_gguf_arr_str(const tern_gguf *g, int64_t kvi, uint64_t i, const char **s, uint64_t *len, tern_err *err)
{
	const kv_entry *kv = arr_kv(g, kvi, i, err);
	if (!kv)
		return TERN_EINVAL;
	if (kv->arr_type != TERN_GGUF_STRING)
		return TERN_ERR(err, TERN_EFORMAT, "%s: array '%s' holds %s, not strings", g->path, kv->key,
				tern_gguf_vtype_name(kv->arr_type));
	const uint64_t off = kv->str_offs[i];
	*len = ld64(g->base + off);
	*s = (const char *)g->base + off + 8;
	return 0;
}

int tern_gguf_arr_i64(const tern_gguf *g, int64_t kvi, uint64_t i, int64_t *v, tern_err *err)
{
	const kv_entry *kv = arr_kv(g, kvi, i, err);
	if (!kv)
		return TERN_EINVAL;
	if (!is_int_type(kv->arr_type))
		return TERN_ERR(err, TERN_EFORMAT, "%s: array '%s' holds %s, not integers", g->path, kv->key,
				tern_gguf_vtype_name(kv->arr_type));
	int64_t sv;
	uint64_t uv;
	int uns;
	load_int(g->base + kv->arr_data + i * vtype_size(kv->arr_type), kv->arr_type, &sv, &uv, &uns);
	if (uns && uv > (uint64_t)INT64_MAX)
		return TERN_ERR(err, TERN_EFORMAT, "%s: array '%s' element %" PRIu64 " out of range", g->path, kv->key,
				i);
	*v = uns ? (int64_t)uv : sv;
	return 0;
}

int tern_gguf_arr_f64(const tern_gguf *g, int64_t kvi, uint64_t i, double *v, tern_err *err)
{
	const kv_entry *kv = arr_kv(g, kvi, i, err);
	if (!kv)
		return TERN_EINVAL;
	if (kv->arr_type == TERN_GGUF_STRING || kv->arr_type == TERN_GGUF_BOOL)
		return TERN_ERR(err, TERN_EFORMAT, "%s: array '%s' holds %s, not numbers", g->path, kv->key,
				tern_gguf_vtype_name(kv->arr_type));
	*v = load_num(g->base + kv->arr_data + i * vtype_size(kv->arr_type), kv->arr_type);
	return 0;
}

const void *tern_gguf_arr_data(const tern_gguf *g, int64_t kvi, size_t *elem_size)
{
	if (kvi < 0 || kvi >= g->n_kv || g->kvs[kvi].type != TERN_GGUF_ARRAY ||
	    g->kvs[kvi].arr_type == TERN_GGUF_STRING)
		return NULL;
	*elem_size = (size_t)vtype_size(g->kvs[kvi].arr_type);
	return g->base + g->kvs[kvi].arr_data;
}

/* ---- tensors --------------------------------------------------------------- */

int64_t tern_gguf_n_tensors(const tern_gguf *g)
{
	return g->n_tensors;
}

const tern_gguf_tensor *tern_gguf_tensor_at(const tern_gguf *g, int64_t i)
{
	return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const tern_gguf_tensor *tern_gguf_find_tensor(const tern_gguf *g, const char *name)
{
	const int64_t i = tern_hash_find(&g->tensor_index, name, tensor_name_of, g);
	return i < 0 ? NULL : &g->tensors[i];
}

int tern_gguf_tensor_data(const tern_gguf *g, const tern_gguf_tensor *t, const void **data, uint64_t *nbytes,
			  tern_err *err)
{
	switch (t->dtype) {
	case TERN_DTYPE_F32:
	case TERN_DTYPE_F16:
	case TERN_DTYPE_BF16:
	case TERN_DTYPE_I8:
	case TERN_DTYPE_I2_S:
	case TERN_DTYPE_Q2_0:
		*data = t->data;
		*nbytes = t->nbytes;
		return 0;
	default:
		return TERN_ERR(err, TERN_EUNSUP, "%s: tensor '%s' has type %s, which tern cannot read", g->path,
				t->name, tern_ggml_type_name(t->type));
	}
}

/* ---- I2_S ------------------------------------------------------------------ */

int tern_i2s_decode_rows(const uint8_t *data, int64_t m, int64_t k, int64_t row0, int64_t nrows, int8_t *w,
			 const char *what, tern_err *err)
{
	if (row0 < 0 || nrows < 0 || row0 + nrows > m || (m * k) % 128 != 0)
		return TERN_ERR(err, TERN_EINVAL,
				"%s: bad I2_S row range %" PRId64 "+%" PRId64 " of %" PRId64 "x%" PRId64, what, row0,
				nrows, m, k);
	const uint64_t i0 = (uint64_t)row0 * (uint64_t)k, n = (uint64_t)nrows * (uint64_t)k;
	int bad = 0;
	if (i0 % 128 == 0 && n % 128 == 0) {
		/* Whole blocks: each byte holds elements pos, 32+pos, 64+pos, 96+pos. */
		for (uint64_t b = 0; b < n / 128; b++) {
			const uint8_t *src = data + (i0 / 128 + b) * 32;
			int8_t *dst = w + b * 128;
			for (int pos = 0; pos < 32; pos++) {
				const unsigned byte = src[pos];
				bad |= ((byte & (byte >> 1)) & 0x55) != 0; /* some 2-bit field == 3 */
				dst[pos] = (int8_t)((int)(byte >> 6) - 1);
				dst[32 + pos] = (int8_t)((int)((byte >> 4) & 3) - 1);
				dst[64 + pos] = (int8_t)((int)((byte >> 2) & 3) - 1);
				dst[96 + pos] = (int8_t)((int)(byte & 3) - 1);
			}
		}
		if (bad)
			return TERN_ERR(err, TERN_EFORMAT, "%s: invalid I2_S code 3 (not a ternary value)", what);
		return 0;
	}
	for (uint64_t e = 0; e < n; e++) {
		const uint64_t i = i0 + e, j = i % 128;
		const uint8_t byte = data[(i / 128) * 32 + (j % 32)];
		const int code = (byte >> (6 - 2 * (j / 32))) & 3;
		bad |= code == 3;
		w[e] = (int8_t)(code - 1);
	}
	if (bad)
		return TERN_ERR(err, TERN_EFORMAT, "%s: invalid I2_S code 3 (not a ternary value)", what);
	return 0;
}

void tern_i2s_encode(uint8_t *data, uint64_t i0, const int8_t *w, uint64_t n)
{
	for (uint64_t b = 0; b < n / 128; b++) {
		uint8_t *dst = data + (i0 / 128 + b) * 32;
		const int8_t *src = w + b * 128;
		for (int pos = 0; pos < 32; pos++) {
			uint8_t byte = 0;
			for (int grp = 0; grp < 4; grp++) {
				const int v = src[grp * 32 + pos];
				const int code = v == -1 ? 0 : v == 1 ? 2 : 1;
				byte |= (uint8_t)(code << (6 - 2 * grp));
			}
			dst[pos] = byte;
		}
	}
}

float tern_i2s_scale(const uint8_t *data, int64_t m, int64_t k)
{
	float f;
	const uint32_t u = ld32(data + (uint64_t)m * (uint64_t)k / 4);
	memcpy(&f, &u, 4);
	return f;
}

/* ---- hyper-parameters ----------------------------------------------------- */

int tern_gguf_arch_supported(const char *arch)
{
	return tern_arch_find(arch) != NULL;
}

static int arch_int(const tern_gguf *g, const char *arch, const char *suffix, int dflt, int *out, tern_err *err)
{
	char key[128];
	snprintf(key, sizeof key, "%s.%s", arch, suffix);
	if (tern_gguf_find_key(g, key) < 0) {
		if (dflt < 0)
			return TERN_ERR(err, TERN_EFORMAT, "%s: missing metadata key '%s'", g->path, key);
		*out = dflt;
		return 0;
	}
	uint32_t v;
	TERN_FORWARD_IF_ERROR(tern_gguf_get_u32(g, key, &v, err));
	if (v > INT32_MAX)
		return TERN_ERR(err, TERN_ERANGE, "%s: absurd value %u for '%s'", g->path, v, key);
	*out = (int)v;
	return 0;
}

static int arch_float(const tern_gguf *g, const char *arch, const char *suffix, float dflt, float *out, tern_err *err)
{
	char key[128];
	snprintf(key, sizeof key, "%s.%s", arch, suffix);
	if (tern_gguf_find_key(g, key) < 0) {
		*out = dflt;
		return 0;
	}
	return tern_gguf_get_f32(g, key, out, err);
}

/* An optional token id: -1 when the key is absent; present, it must be a
 * u32 inside the vocabulary (0xFFFFFFFF is not "none": no tool writes it so). */
static int opt_token_id(const tern_gguf *g, const char *key, int n_vocab, int32_t *out, tern_err *err)
{
	*out = -1;
	if (tern_gguf_find_key(g, key) < 0)
		return 0;
	uint32_t v;
	TERN_FORWARD_IF_ERROR(tern_gguf_get_u32(g, key, &v, err));
	TERN_RETURN_IF(n_vocab > 0 && v >= (uint32_t)n_vocab, err, TERN_ERANGE,
		       "%s: %s %u is outside the vocabulary of %d tokens", g->path, key, v, n_vocab);
	*out = (int32_t)v;
	return 0;
}

/* Layer index of a tensor named "blk.N....", or -1. */
static long blk_index(const char *name)
{
	if (strncmp(name, "blk.", 4) != 0)
		return -1;
	char *end;
	const long n = strtol(name + 4, &end, 10);
	return end != name + 4 && *end == '.' && n >= 0 ? n : -1;
}

int tern_gguf_hparams(const tern_gguf *g, tern_hparams *hp, tern_err *err)
{
	memset(hp, 0, sizeof *hp);
	const char *arch = NULL;
	uint64_t alen = 0;
	TERN_FORWARD_IF_ERROR(tern_gguf_get_str(g, "general.architecture", &arch, &alen, err));
	char a[32];
	if (alen >= sizeof a)
		return TERN_ERR(err, TERN_EUNSUP, "%s: unsupported architecture (name of %" PRIu64 " bytes)", g->path,
				alen);
	memcpy(a, arch, alen);
	a[alen] = 0;
	if (strlen(a) != alen || !tern_gguf_arch_supported(a))
		return TERN_ERR(err, TERN_EUNSUP, "%s: unsupported architecture '%s' (tern reads %s)", g->path, a,
				tern_arch_names());
	snprintf(hp->arch, sizeof hp->arch, "%s", a);
	TERN_FORWARD_IF_ERROR(arch_int(g, a, "embedding_length", -1, &hp->n_embd, err));
	TERN_FORWARD_IF_ERROR(arch_int(g, a, "block_count", -1, &hp->n_layer, err));
	TERN_FORWARD_IF_ERROR(arch_int(g, a, "attention.head_count", -1, &hp->n_head, err));
	TERN_FORWARD_IF_ERROR(arch_int(g, a, "attention.head_count_kv", hp->n_head, &hp->n_head_kv, err));
	TERN_FORWARD_IF_ERROR(arch_int(g, a, "feed_forward_length", -1, &hp->n_ff, err));
	TERN_FORWARD_IF_ERROR(arch_int(g, a, "context_length", 2048, &hp->n_ctx_train, err));
	TERN_FORWARD_IF_ERROR(arch_float(g, a, "rope.freq_base", 10000.0f, &hp->rope_theta, err));
	TERN_FORWARD_IF_ERROR(arch_float(g, a, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->norm_eps, err));
	hp->head_dim = hp->n_head > 0 ? hp->n_embd / hp->n_head : 0;
	int n_vocab = 0;
	TERN_FORWARD_IF_ERROR(arch_int(g, a, "vocab_size", 0, &n_vocab, err));
	if (n_vocab == 0) {
		uint32_t et;
		uint64_t cnt;
		const tern_gguf_tensor *te = tern_gguf_find_tensor(g, tern_dense_gguf_name(TERN_DENSE_TOKEN_EMBD));
		if (tern_gguf_find_key(g, "tokenizer.ggml.tokens") >= 0 &&
		    tern_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &cnt, NULL) == 0 && cnt <= INT32_MAX)
			n_vocab = (int)cnt;
		else if (te && te->n_dims == 2 && te->ne[1] <= INT32_MAX)
			n_vocab = (int)te->ne[1];
	}
	hp->n_vocab = n_vocab;
	hp->tied_embeddings = tern_gguf_find_tensor(g, tern_dense_gguf_name(TERN_DENSE_OUTPUT)) == NULL;
	TERN_FORWARD_IF_ERROR(opt_token_id(g, "tokenizer.ggml.bos_token_id", n_vocab, &hp->bos_id, err));
	TERN_FORWARD_IF_ERROR(opt_token_id(g, "tokenizer.ggml.eos_token_id", n_vocab, &hp->eos_id, err));
	TERN_FORWARD_IF_ERROR(opt_token_id(g, "tokenizer.ggml.eot_token_id", n_vocab, &hp->eot_id, err));
	/* The keys the engine relies on, against the tensors: RoPE turns the
	 * whole head (no partial rotary), and block_count covers every layer
	 * present (fewer would silently drop layers). */
	int rope_dim = hp->head_dim;
	TERN_FORWARD_IF_ERROR(arch_int(g, a, "rope.dimension_count", hp->head_dim, &rope_dim, err));
	TERN_RETURN_IF(rope_dim != hp->head_dim, err, TERN_EUNSUP,
		       "%s: %s.rope.dimension_count is %d, but tern rotates the whole head of %d (partial RoPE is "
		       "not supported)",
		       g->path, a, rope_dim, hp->head_dim);
	/* Qwen3 GGUFs name the head width (attention.key_length, from config
	 * head_dim); the engine's heads are n_embd / n_head wide. */
	int key_len = hp->head_dim, val_len = hp->head_dim;
	TERN_FORWARD_IF_ERROR(arch_int(g, a, "attention.key_length", hp->head_dim, &key_len, err));
	TERN_FORWARD_IF_ERROR(arch_int(g, a, "attention.value_length", hp->head_dim, &val_len, err));
	TERN_RETURN_IF(key_len != hp->head_dim || val_len != hp->head_dim, err, TERN_EUNSUP,
		       "%s: heads of %d / %d (%s.attention.key_length / value_length), but tern runs heads of "
		       "n_embd / n_head = %d",
		       g->path, key_len, val_len, a, hp->head_dim);
	/* RoPE scaling (linear, or llama3's rope_freqs factors) changes the
	 * angles the engine's table holds: refused rather than run unscaled. */
	char rkey[64];
	snprintf(rkey, sizeof rkey, "%s.rope.scaling.type", a);
	if (tern_gguf_find_key(g, rkey) >= 0) {
		const char *st;
		uint64_t sl;
		TERN_FORWARD_IF_ERROR(tern_gguf_get_str(g, rkey, &st, &sl, err));
		TERN_RETURN_IF(!(sl == 4 && memcmp(st, "none", 4) == 0), err, TERN_EUNSUP,
			       "%s: %s '%.*s' is not supported (tern runs plain RoPE)", g->path, rkey,
			       (int)(sl < 32 ? sl : 32), st);
	}
	TERN_RETURN_IF(tern_gguf_find_tensor(g, "rope_freqs.weight") != NULL, err, TERN_EUNSUP,
		       "%s: tensor 'rope_freqs.weight' (llama3 RoPE scaling) is not supported (tern runs plain RoPE)",
		       g->path);
	for (int64_t i = 0; i < g->n_tensors; i++) {
		const long l = blk_index(g->tensors[i].name);
		TERN_RETURN_IF(l >= hp->n_layer, err, TERN_EFORMAT,
			       "%s: %s.block_count is %d, but tensor '%s' is of layer %ld", g->path, a, hp->n_layer,
			       g->tensors[i].name, l);
	}
	if (tern_gguf_find_key(g, "tokenizer.ggml.model") >= 0) {
		const char *tm, *tp = NULL;
		uint64_t tml, tpl = 0;
		TERN_FORWARD_IF_ERROR(tern_gguf_get_str(g, "tokenizer.ggml.model", &tm, &tml, err));
		if (tern_gguf_find_key(g, "tokenizer.ggml.pre") >= 0)
			TERN_FORWARD_IF_ERROR(tern_gguf_get_str(g, "tokenizer.ggml.pre", &tp, &tpl, err));
		char model[32], pre[64];
		snprintf(model, sizeof model, "%.*s", (int)(tml < 31 ? tml : 31), tm);
		snprintf(pre, sizeof pre, "%.*s", (int)(tpl < 63 ? tpl : 63), tp ? tp : "");
		if (tern_tokenizer_type(model, pre, err) < 0) {
			char msg[sizeof err->msg];
			snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
			return TERN_ERR(err, TERN_EUNSUP, "%s: %s", g->path, msg);
		}
	}
	if (hp->eot_id < 0) {
		const int64_t kv = tern_gguf_find_key(g, "tokenizer.ggml.tokens");
		uint64_t n = kv >= 0 && g->kvs[kv].type == TERN_GGUF_ARRAY ? g->kvs[kv].arr_n : 0;
		/* The eot token sits among the specials near the end; scan from the back. */
		for (uint64_t i = n; i-- > 0;) {
			const char *s;
			uint64_t l;
			if (tern_gguf_arr_str(g, kv, i, &s, &l, NULL) < 0)
				break;
			if (l == 10 && memcmp(s, "<|eot_id|>", 10) == 0) {
				hp->eot_id = i <= INT32_MAX ? (int32_t)i : -1;
				break;
			}
		}
	}
	const int rc = tern_hparams_validate(hp, err);
	if (rc < 0) {
		/* Prefix the file name to the validator's message. */
		char msg[sizeof err->msg];
		snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
		return TERN_ERR(err, rc, "%s: %s", g->path, msg);
	}
	return 0;
}
