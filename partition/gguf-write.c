/* gguf-write.c: the streaming GGUF writer (see tern-gguf.h). KVs are
 * serialised into one growing buffer as they are declared; tensor infos are
 * kept as a list. write_header emits both, after which tensor bytes are
 * streamed straight to a buffered FILE, so memory stays at the header size. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tern-gguf.h"

typedef struct {
	char *name;
	uint32_t n_dims;
	uint64_t ne[TERN_GGUF_MAX_DIMS];
	uint32_t type;
	uint64_t nbytes;
	uint64_t offset;
} winfo;

struct tern_gguf_writer {
	char *path;
	char *tmp_path;
	FILE *f;
	uint32_t version;
	uint32_t alignment;
	uint8_t *kv; /* serialised KVs */
	size_t kv_len, kv_cap;
	uint64_t n_kv;
	char **keys; /* (n_kv) for duplicate checks */
	winfo *t;    /* (n_t) */
	int64_t n_t, cap_t;
	uint64_t data_size; /* sum of padded tensor sizes */
	int header_done;
	int finished;
	int failed;        /* a write error happened: finish refuses */
	int64_t cur;       /* tensor being streamed */
	uint64_t cur_done; /* bytes of it written */
	uint64_t total;    /* whole file size */
};

static int kv_reserve(tern_gguf_writer *w, size_t n)
{
	if (w->kv_len + n <= w->kv_cap)
		return 0;
	size_t cap = w->kv_cap ? w->kv_cap : 4096;
	while (cap < w->kv_len + n)
		cap *= 2;
	uint8_t *p = realloc(w->kv, cap);
	if (!p)
		return TERN_ENOMEM;
	w->kv = p;
	w->kv_cap = cap;
	return 0;
}

static void put(tern_gguf_writer *w, const void *p, size_t n)
{
	memcpy(w->kv + w->kv_len, p, n);
	w->kv_len += n;
}

static void put_u32(tern_gguf_writer *w, uint32_t v)
{
	uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
	put(w, b, 4);
}

static void put_u64(tern_gguf_writer *w, uint64_t v)
{
	put_u32(w, (uint32_t)v);
	put_u32(w, (uint32_t)(v >> 32));
}

static size_t scalar_size(uint32_t t)
{
	static const size_t sz[TERN_GGUF_NTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
	return t < TERN_GGUF_NTYPES ? sz[t] : 0;
}

/* Writes a scalar of type t from the C value at v (little-endian host assumed
 * for the numeric types; tern targets x86-64 and aarch64 little-endian). */
static void put_scalar(tern_gguf_writer *w, uint32_t t, const void *v)
{
	put(w, v, scalar_size(t));
}

static int start_kv(tern_gguf_writer *w, const char *key, uint32_t type, size_t extra, tern_err *err)
{
	TERN_RETURN_IF(w->header_done, err, TERN_ESTATE, "%s: KV '%s' added after the header was written", w->path,
		       key);
	for (uint64_t i = 0; i < w->n_kv; i++)
		TERN_RETURN_IF(strcmp(w->keys[i], key) == 0, err, TERN_EINVAL, "%s: duplicate key '%s'", w->path, key);
	char **keys = realloc(w->keys, (w->n_kv + 1) * sizeof *keys);
	TERN_RETURN_IF(!keys, err, TERN_ENOMEM, "%s: out of memory", w->path);
	w->keys = keys;
	keys[w->n_kv] = strdup(key);
	TERN_RETURN_IF(!keys[w->n_kv], err, TERN_ENOMEM, "%s: out of memory", w->path);
	const size_t klen = strlen(key);
	TERN_RETURN_IF(kv_reserve(w, 8 + klen + 4 + extra) < 0, err, TERN_ENOMEM, "%s: out of memory", w->path);
	w->n_kv++;
	put_u64(w, klen);
	put(w, key, klen);
	put_u32(w, type);
	return 0;
}

int tern_gguf_writer_add_scalar(tern_gguf_writer *w, const char *key, uint32_t vtype, const void *v, tern_err *err)
{
	if (vtype == TERN_GGUF_STRING) {
		const char *s = *(const char *const *)v;
		const size_t n = strlen(s);
		TERN_FORWARD_IF_ERROR(start_kv(w, key, vtype, 8 + n, err));
		put_u64(w, n);
		put(w, s, n);
		return 0;
	}
	TERN_RETURN_IF(scalar_size(vtype) == 0, err, TERN_EINVAL, "%s: key '%s': bad scalar type %u", w->path, key,
		       vtype);
	if (vtype == TERN_GGUF_BOOL) {
		const uint8_t b = *(const uint8_t *)v != 0;
		TERN_FORWARD_IF_ERROR(start_kv(w, key, vtype, 1, err));
		put(w, &b, 1);
		return 0;
	}
	TERN_FORWARD_IF_ERROR(start_kv(w, key, vtype, scalar_size(vtype), err));
	put_scalar(w, vtype, v);
	return 0;
}

int tern_gguf_writer_add_u32(tern_gguf_writer *w, const char *key, uint32_t v, tern_err *err)
{
	return tern_gguf_writer_add_scalar(w, key, TERN_GGUF_U32, &v, err);
}
int tern_gguf_writer_add_i32(tern_gguf_writer *w, const char *key, int32_t v, tern_err *err)
{
	return tern_gguf_writer_add_scalar(w, key, TERN_GGUF_I32, &v, err);
}
int tern_gguf_writer_add_u64(tern_gguf_writer *w, const char *key, uint64_t v, tern_err *err)
{
	return tern_gguf_writer_add_scalar(w, key, TERN_GGUF_U64, &v, err);
}
int tern_gguf_writer_add_f32(tern_gguf_writer *w, const char *key, float v, tern_err *err)
{
	return tern_gguf_writer_add_scalar(w, key, TERN_GGUF_F32, &v, err);
}
int tern_gguf_writer_add_bool(tern_gguf_writer *w, const char *key, int v, tern_err *err)
{
	const uint8_t b = v != 0;
	return tern_gguf_writer_add_scalar(w, key, TERN_GGUF_BOOL, &b, err);
}
int tern_gguf_writer_add_str(tern_gguf_writer *w, const char *key, const char *s, tern_err *err)
{
	return tern_gguf_writer_add_scalar(w, key, TERN_GGUF_STRING, &s, err);
}

int tern_gguf_writer_add_str_array(tern_gguf_writer *w, const char *key, const char *const *strs, const uint64_t *lens,
				   uint64_t n, tern_err *err)
{
	size_t bytes = 4 + 8;
	for (uint64_t i = 0; i < n; i++)
		bytes += 8 + (size_t)(lens ? lens[i] : strlen(strs[i]));
	TERN_FORWARD_IF_ERROR(start_kv(w, key, TERN_GGUF_ARRAY, bytes, err));
	put_u32(w, TERN_GGUF_STRING);
	put_u64(w, n);
	for (uint64_t i = 0; i < n; i++) {
		const size_t l = (size_t)(lens ? lens[i] : strlen(strs[i]));
		put_u64(w, l);
		put(w, strs[i], l);
	}
	return 0;
}

int tern_gguf_writer_add_array(tern_gguf_writer *w, const char *key, uint32_t elem_type, const void *elems, uint64_t n,
			       tern_err *err)
{
	if (elem_type == TERN_GGUF_STRING)
		return tern_gguf_writer_add_str_array(w, key, elems, NULL, n, err);
	const size_t es = scalar_size(elem_type);
	TERN_RETURN_IF(es == 0, err, TERN_EINVAL, "%s: key '%s': bad array element type %u", w->path, key, elem_type);
	TERN_FORWARD_IF_ERROR(start_kv(w, key, TERN_GGUF_ARRAY, 12 + es * n, err));
	put_u32(w, elem_type);
	put_u64(w, n);
	if (n)
		put(w, elems, es * n);
	return 0;
}

int tern_gguf_writer_open(tern_gguf_writer **out, const char *path, uint32_t version, uint32_t alignment, tern_err *err)
{
	*out = NULL;
	if (alignment == 0)
		alignment = TERN_GGUF_DEFAULT_ALIGNMENT;
	const char *name = path ? path : "<dry run>";
	TERN_RETURN_IF(version != 2 && version != 3, err, TERN_EINVAL, "%s: cannot write GGUF version %u", name,
		       version);
	TERN_RETURN_IF((alignment & (alignment - 1)) != 0, err, TERN_EINVAL, "%s: alignment %u not a power of two",
		       name, alignment);
	tern_gguf_writer *w = calloc(1, sizeof *w);
	TERN_RETURN_IF(!w, err, TERN_ENOMEM, "%s: out of memory", name);
	w->version = version;
	w->alignment = alignment;
	w->path = strdup(name);
	w->tmp_path = path ? malloc(strlen(path) + 5) : NULL;
	if (!w->path || (path && !w->tmp_path)) {
		tern_gguf_writer_free(w);
		return TERN_ERR(err, TERN_ENOMEM, "%s: out of memory", name);
	}
	if (path) {
		sprintf(w->tmp_path, "%s.tmp", path);
		w->f = fopen(w->tmp_path, "wb");
		if (!w->f) {
			const int e = errno;
			tern_gguf_writer_free(w);
			return TERN_ERR(err, TERN_EIO, "%s: cannot create %s.tmp: %s", path, path, strerror(e));
		}
		setvbuf(w->f, NULL, _IOFBF, 1 << 20);
	}
	if (alignment != TERN_GGUF_DEFAULT_ALIGNMENT) {
		const int rc = tern_gguf_writer_add_u32(w, "general.alignment", alignment, err);
		if (rc < 0) {
			tern_gguf_writer_free(w);
			return rc;
		}
	}
	*out = w;
	return 0;
}

int tern_gguf_writer_add_tensor(tern_gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne,
				tern_dtype dtype, tern_err *err)
{
	TERN_RETURN_IF(w->header_done, err, TERN_ESTATE, "%s: tensor '%s' added after the header was written", w->path,
		       name);
	const uint32_t type = tern_dtype_ggml(dtype);
	TERN_RETURN_IF(type == UINT32_MAX, err, TERN_EINVAL, "%s: tensor '%s': type %s has no GGUF code", w->path, name,
		       tern_dtype_name(dtype));
	const uint64_t nbytes = tern_ggml_nbytes(type, n_dims, ne);
	TERN_RETURN_IF(nbytes == 0, err, TERN_EINVAL, "%s: tensor '%s': type %s cannot have this shape", w->path, name,
		       tern_ggml_type_name(type));
	if (w->n_t == w->cap_t) {
		const int64_t cap = w->cap_t ? 2 * w->cap_t : 64;
		winfo *t = realloc(w->t, (size_t)cap * sizeof *t);
		TERN_RETURN_IF(!t, err, TERN_ENOMEM, "%s: out of memory", w->path);
		w->t = t;
		w->cap_t = cap;
	}
	winfo *t = &w->t[w->n_t];
	memset(t, 0, sizeof *t);
	t->name = strdup(name);
	TERN_RETURN_IF(!t->name, err, TERN_ENOMEM, "%s: out of memory", w->path);
	t->n_dims = n_dims;
	for (uint32_t d = 0; d < n_dims; d++)
		t->ne[d] = ne[d];
	t->type = type;
	t->nbytes = nbytes;
	t->offset = w->data_size;
	w->data_size += (nbytes + w->alignment - 1) / w->alignment * w->alignment;
	w->n_t++;
	return 0;
}

static int wr(tern_gguf_writer *w, const void *p, size_t n, tern_err *err)
{
	if (!w->f)
		return 0; /* dry run */
	if (n && fwrite(p, 1, n, w->f) != n) {
		w->failed = 1;
		return TERN_ERR(err, TERN_EIO, "%s: write failed: %s", w->path, strerror(errno));
	}
	return 0;
}

static int wr_zeros(tern_gguf_writer *w, uint64_t n, tern_err *err)
{
	static const uint8_t zeros[256];
	while (n) {
		const size_t c = n < sizeof zeros ? (size_t)n : sizeof zeros;
		TERN_FORWARD_IF_ERROR(wr(w, zeros, c, err));
		n -= c;
	}
	return 0;
}

int tern_gguf_writer_write_header(tern_gguf_writer *w, tern_err *err)
{
	TERN_RETURN_IF(w->header_done, err, TERN_ESTATE, "%s: header written twice", w->path);
	/* Reuse the KV buffer machinery for the fixed header and tensor infos. */
	uint8_t hdr[24];
	memcpy(hdr, "GGUF", 4);
	const uint32_t v = w->version;
	const uint64_t nt = (uint64_t)w->n_t, nkv = w->n_kv;
	for (int i = 0; i < 4; i++)
		hdr[4 + i] = (uint8_t)(v >> (8 * i));
	for (int i = 0; i < 8; i++) {
		hdr[8 + i] = (uint8_t)(nt >> (8 * i));
		hdr[16 + i] = (uint8_t)(nkv >> (8 * i));
	}
	TERN_FORWARD_IF_ERROR(wr(w, hdr, sizeof hdr, err));
	TERN_FORWARD_IF_ERROR(wr(w, w->kv, w->kv_len, err));
	uint64_t pos = sizeof hdr + w->kv_len;
	for (int64_t i = 0; i < w->n_t; i++) {
		const winfo *t = &w->t[i];
		const size_t nlen = strlen(t->name);
		uint8_t b[8];
		for (int j = 0; j < 8; j++)
			b[j] = (uint8_t)((uint64_t)nlen >> (8 * j));
		TERN_FORWARD_IF_ERROR(wr(w, b, 8, err));
		TERN_FORWARD_IF_ERROR(wr(w, t->name, nlen, err));
		TERN_FORWARD_IF_ERROR(wr(w, &t->n_dims, 4, err));
		TERN_FORWARD_IF_ERROR(wr(w, t->ne, 8 * t->n_dims, err));
		TERN_FORWARD_IF_ERROR(wr(w, &t->type, 4, err));
		TERN_FORWARD_IF_ERROR(wr(w, &t->offset, 8, err));
		pos += 8 + nlen + 4 + 8 * t->n_dims + 4 + 8;
	}
	const uint64_t a = w->alignment, data_start = (pos + a - 1) / a * a;
	TERN_FORWARD_IF_ERROR(wr_zeros(w, data_start - pos, err));
	w->total = data_start + w->data_size;
	w->header_done = 1;
	w->cur = 0;
	w->cur_done = 0;
	return 0;
}

int tern_gguf_writer_write(tern_gguf_writer *w, const void *p, size_t n, tern_err *err)
{
	TERN_RETURN_IF(!w->header_done, err, TERN_ESTATE, "%s: tensor data before the header", w->path);
	if (n == 0)
		return 0;
	TERN_RETURN_IF(w->cur >= w->n_t, err, TERN_EINVAL, "%s: more tensor data than declared", w->path);
	const winfo *t = &w->t[w->cur];
	TERN_RETURN_IF(n > t->nbytes - w->cur_done, err, TERN_EINVAL,
		       "%s: write of %zu bytes crosses the end of tensor '%s' (%" PRIu64 " left)", w->path, n, t->name,
		       t->nbytes - w->cur_done);
	TERN_FORWARD_IF_ERROR(wr(w, p, n, err));
	w->cur_done += n;
	if (w->cur_done == t->nbytes) {
		const uint64_t a = w->alignment;
		TERN_FORWARD_IF_ERROR(wr_zeros(w, (t->nbytes + a - 1) / a * a - t->nbytes, err));
		w->cur++;
		w->cur_done = 0;
	}
	return 0;
}

int64_t tern_gguf_writer_cur_tensor(const tern_gguf_writer *w, uint64_t *remaining)
{
	if (remaining)
		*remaining = w->cur < w->n_t ? w->t[w->cur].nbytes - w->cur_done : 0;
	return w->cur;
}

uint64_t tern_gguf_writer_total_bytes(const tern_gguf_writer *w)
{
	return w->total;
}

int tern_gguf_writer_finish(tern_gguf_writer *w, tern_err *err)
{
	TERN_RETURN_IF(!w->header_done, err, TERN_ESTATE, "%s: header was never written", w->path);
	TERN_RETURN_IF(w->failed, err, TERN_EIO, "%s: an earlier write failed", w->path);
	TERN_RETURN_IF(!w->tmp_path, err, TERN_ESTATE, "%s: nothing to finish", w->path);
	TERN_RETURN_IF(w->cur < w->n_t, err, TERN_ESTATE,
		       "%s: tensor '%s' incomplete (%" PRIu64 " of %" PRIu64 " bytes)", w->path, w->t[w->cur].name,
		       w->cur_done, w->t[w->cur].nbytes);
	if (fflush(w->f) != 0 || fsync(fileno(w->f)) != 0) {
		w->failed = 1;
		return TERN_ERR(err, TERN_EIO, "%s: flush failed: %s", w->path, strerror(errno));
	}
	const int rc = fclose(w->f);
	w->f = NULL;
	if (rc != 0) {
		w->failed = 1;
		return TERN_ERR(err, TERN_EIO, "%s: close failed: %s", w->path, strerror(errno));
	}
	if (rename(w->tmp_path, w->path) != 0) {
		w->failed = 1;
		return TERN_ERR(err, TERN_EIO, "%s: rename from %s failed: %s", w->path, w->tmp_path, strerror(errno));
	}
	w->finished = 1;
	return 0;
}

void tern_gguf_writer_free(tern_gguf_writer *w)
{
	if (!w)
		return;
	if (w->f)
		fclose(w->f);
	if (!w->finished && w->tmp_path)
		unlink(w->tmp_path);
	for (uint64_t i = 0; i < w->n_kv; i++)
		free(w->keys[i]);
	for (int64_t i = 0; i < w->n_t; i++)
		free(w->t[i].name);
	free(w->keys);
	free(w->t);
	free(w->kv);
	free(w->path);
	free(w->tmp_path);
	free(w);
}
