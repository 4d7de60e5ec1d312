/* shard.c: the shard container (format in tern-shard.h): a streaming writer
 * that zstd-compresses each tensor straight to disk, and a bounds-checked
 * mmap reader plus the loaders the engine uses. */
#include "tern-shard.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY /* XXH64_state_t on the stack */
#include <xxhash.h>
#include <zstd.h>

#include "tern-gq.h"
#include "tern-progress.h"

/* Limits far above any real model, low enough that byte products of them
 * fit in 64 bits. */
#define MAX_TENSORS (1 << 20)
#define MAX_ROWS (1 << 23)
#define MAX_COLS (1 << 20)
#define CHUNK (1u << 20)

/* Roles are the model description's tensors in a fixed on-disk order: the
 * projections, the four layer norms, then the global tensors. */
const char *tern_shard_role_name(tern_shard_role r)
{
	if ((unsigned)r < TERN_SHARD_N_PROJ)
		return tern_proj_gguf((tern_proj)r);
	if (r >= TERN_ROLE_ATTN_NORM && r <= TERN_ROLE_FFN_SUB_NORM)
		return tern_norm_name((tern_norm_kind)(r - TERN_ROLE_ATTN_NORM));
	switch (r) {
	case TERN_ROLE_TOKEN_EMBD: return tern_dense_gguf(TERN_DENSE_TOKEN_EMBD);
	case TERN_ROLE_OUTPUT_NORM: return tern_norm_name(TERN_NORM_OUTPUT);
	case TERN_ROLE_OUTPUT: return tern_dense_gguf(TERN_DENSE_OUTPUT);
	case TERN_ROLE_HEAD_PACKED: return "output_packed";
	case TERN_ROLE_ATTN_Q_NORM: return tern_norm_name(TERN_NORM_ATTN_Q);
	case TERN_ROLE_ATTN_K_NORM: return tern_norm_name(TERN_NORM_ATTN_K);
	default: return "?";
	}
}

tern_shard_role tern_shard_norm_role(tern_norm_kind n)
{
	if (n == TERN_NORM_ATTN_Q)
		return TERN_ROLE_ATTN_Q_NORM;
	if (n == TERN_NORM_ATTN_K)
		return TERN_ROLE_ATTN_K_NORM;
	return (tern_shard_role)(TERN_ROLE_ATTN_NORM + (int)n);
}

int tern_shard_norm_present(const tern_hparams *hp, tern_norm_kind n)
{
	if (n == TERN_NORM_ATTN_Q || n == TERN_NORM_ATTN_K)
		return tern_norm_present(hp, n);
	return (unsigned)n < TERN_LAYER_NORMS;
}

int tern_shard_layer_tensors(const tern_hparams *hp)
{
	int n = TERN_SHARD_N_PROJ;
	for (int q = 0; q < TERN_LAYER_NORMS; q++)
		n += tern_shard_norm_present(hp, (tern_norm_kind)q);
	return n;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}
static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}
static uint32_t get32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}
static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint64_t align64(uint64_t v)
{
	return (v + 63) & ~(uint64_t)63;
}

/* ---- writer --------------------------------------------------------------- */

struct tern_shard_writer {
	char *path;
	FILE *f;
	int stage, first, last;
	tern_packing packing;
	int zlevel;
	int n, cap;
	tern_shard_tensor *t; /* (cap) */
	uint64_t data_offset; /* file offset of the data section */
	uint64_t pos;         /* current file offset */
	ZSTD_CCtx *cctx;
	uint8_t *zbuf;        /* compressor output, ZSTD_CStreamOutSize bytes */
	size_t zbuf_size;
	tern_progress *progress;
};

int tern_shard_writer_open(tern_shard_writer **out, const char *path, int stage, int first_layer, int last_layer,
			   tern_packing packing, int max_tensors, int zlevel, tern_err *err)
{
	*out = NULL;
	TERN_RETURN_IF(max_tensors < 1 || max_tensors > MAX_TENSORS, err, TERN_EINVAL, "%s: bad tensor count %d", path,
		       max_tensors);
	TERN_RETURN_IF(zlevel < 0 || zlevel > 19, err, TERN_EINVAL, "zstd level %d out of 0..19", zlevel);
	tern_shard_writer *w = calloc(1, sizeof *w);
	TERN_RETURN_IF(!w, err, TERN_ENOMEM, "out of memory");
	w->path = strdup(path);
	w->t = calloc((size_t)max_tensors, sizeof *w->t);
	w->zbuf_size = ZSTD_CStreamOutSize();
	w->zbuf = malloc(w->zbuf_size);
	w->cctx = ZSTD_createCCtx();
	if (!w->path || !w->t || !w->zbuf || !w->cctx) {
		tern_shard_writer_abort(w);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	}
	w->f = fopen(path, "w+b");
	if (!w->f) {
		const int e = errno;
		tern_shard_writer_abort(w);
		return TERN_ERR(err, TERN_EIO, "%s: cannot create: %s", path, strerror(e));
	}
	w->stage = stage;
	w->first = first_layer;
	w->last = last_layer;
	w->packing = packing;
	w->zlevel = zlevel;
	w->cap = max_tensors;
	w->data_offset = align64(TERN_SHARD_HEADER_BYTES + (uint64_t)max_tensors * TERN_SHARD_ENTRY_BYTES);
	w->pos = w->data_offset;
	if (fseeko(w->f, (off_t)w->data_offset, SEEK_SET) != 0) {
		tern_shard_writer_abort(w);
		return TERN_ERR(err, TERN_EIO, "%s: seek failed", path);
	}
	*out = w;
	return 0;
}

void tern_shard_writer_set_progress(tern_shard_writer *w, struct tern_progress *p)
{
	w->progress = p;
}

void tern_shard_writer_abort(tern_shard_writer *w)
{
	if (!w)
		return;
	if (w->f) {
		fclose(w->f);
		remove(w->path);
	}
	ZSTD_freeCCtx(w->cctx);
	free(w->zbuf);
	free(w->t);
	free(w->path);
	free(w);
}

static int wr(tern_shard_writer *w, const void *p, size_t n, tern_err *err)
{
	if (n && fwrite(p, 1, n, w->f) != n)
		return TERN_ERR(err, TERN_EIO, "%s: write failed: %s", w->path, strerror(errno));
	w->pos += n;
	return 0;
}

static int pad_to64(tern_shard_writer *w, tern_err *err)
{
	static const uint8_t zeros[64];
	return wr(w, zeros, (size_t)(align64(w->pos) - w->pos), err);
}

/* Appends payload (compressed if the writer compresses) and fills t's offsets. */
static int write_payload(tern_shard_writer *w, tern_shard_tensor *t, const void *data, size_t n, tern_err *err)
{
	t->raw_bytes = n;
	t->raw_xxh64 = XXH64(data, n, 0);
	t->data_offset = w->pos - w->data_offset;
	const uint64_t start = w->pos;
	/* small tensors (norms) are not worth a frame; the token embeddings are
	 * stored as they are so a reader can map them (tern_shard_map_tensor):
	 * the coordinator reads one row per token, and F16 values gain little
	 * from zstd (about 8%) */
	if (w->zlevel == 0 || n < 4096 || t->role == TERN_ROLE_TOKEN_EMBD) {
		t->compression = 0;
		TERN_FORWARD_IF_ERROR(wr(w, data, n, err));
		if (w->progress)
			tern_progress_add(w->progress, n);
	} else {
		t->compression = 1;
		ZSTD_CCtx_reset(w->cctx, ZSTD_reset_session_only);
		ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, w->zlevel);
		ZSTD_CCtx_setPledgedSrcSize(w->cctx, n);
		const uint8_t *src = data;
		size_t done = 0;
		for (;;) {
			const size_t take = n - done < CHUNK ? n - done : CHUNK;
			const ZSTD_EndDirective mode = done + take == n ? ZSTD_e_end : ZSTD_e_continue;
			ZSTD_inBuffer in = {src + done, take, 0};
			size_t rem;
			do {
				ZSTD_outBuffer o = {w->zbuf, w->zbuf_size, 0};
				rem = ZSTD_compressStream2(w->cctx, &o, &in, mode);
				TERN_RETURN_IF(ZSTD_isError(rem), err, TERN_EIO, "%s: zstd: %s", w->path,
					       ZSTD_getErrorName(rem));
				TERN_FORWARD_IF_ERROR(wr(w, w->zbuf, o.pos, err));
			} while (mode == ZSTD_e_end ? rem != 0 : in.pos < in.size);
			done += take;
			if (w->progress)
				tern_progress_add(w->progress, take);
			if (mode == ZSTD_e_end)
				break;
		}
		/* Packed ternary weights (TL2's 1.67 bits per weight, I2_S's 2) are
		 * close to their entropy already: when zstd saves under 1/32 the
		 * tensor is stored as it is instead, so a stage loads it at the rate
		 * of the page cache or the disk, not of the decompressor (~0.9 GB/s
		 * per core). The frame is overwritten and the file cut to the raw end. */
		if (w->pos - start > (uint64_t)n - (uint64_t)n / 32) {
			t->compression = 0;
			TERN_RETURN_IF(fflush(w->f) != 0 || fseeko(w->f, (off_t)start, SEEK_SET) != 0, err, TERN_EIO,
				       "%s: seek failed: %s", w->path, strerror(errno));
			w->pos = start;
			TERN_FORWARD_IF_ERROR(wr(w, data, n, err));
			TERN_RETURN_IF(fflush(w->f) != 0 || ftruncate(fileno(w->f), (off_t)w->pos) != 0, err, TERN_EIO,
				       "%s: cannot cut the file: %s", w->path, strerror(errno));
		}
	}
	t->stored_bytes = w->pos - start;
	return pad_to64(w, err);
}

static int check_dupe(tern_shard_writer *w, tern_shard_role role, int layer, tern_err *err)
{
	TERN_RETURN_IF(w->n >= w->cap, err, TERN_ERANGE, "%s: more than %d tensors", w->path, w->cap);
	for (int i = 0; i < w->n; i++)
		TERN_RETURN_IF(w->t[i].role == (int)role && w->t[i].layer == layer, err, TERN_EINVAL,
			       "%s: tensor %s of layer %d written twice", w->path, tern_shard_role_name(role), layer);
	return 0;
}

static void tensor_name(tern_shard_tensor *t)
{
	if (t->layer >= 0)
		snprintf(t->name, sizeof t->name, "blk.%d.%s.weight", t->layer, tern_shard_role_name(t->role));
	else
		snprintf(t->name, sizeof t->name, "%s.weight", tern_shard_role_name(t->role));
}

/* The writer's next index entry, cleared and filled with what every tensor
 * has; its scales (if any) start at the current position. */
static tern_shard_tensor *new_entry(tern_shard_writer *w, tern_shard_role role, tern_dtype dtype, int layer, int m,
				    int k)
{
	tern_shard_tensor *t = &w->t[w->n];
	memset(t, 0, sizeof *t);
	t->role = role;
	t->dtype = dtype;
	t->layer = layer;
	t->packing = w->packing;
	t->m = m;
	t->k = k;
	tensor_name(t);
	t->scales_offset = w->pos - w->data_offset;
	return t;
}

int tern_shard_write_matrix(tern_shard_writer *w, tern_shard_role role, int layer, const tern_matrix *mat,
			    tern_err *err)
{
	TERN_RETURN_IF((int)role < 0 || role >= TERN_SHARD_N_PROJ, err, TERN_EINVAL, "role %d is not a projection",
		       (int)role);
	TERN_FORWARD_IF_ERROR(check_dupe(w, role, layer, err));
	TERN_RETURN_IF(mat->packing != w->packing, err, TERN_EINVAL, "%s: matrix packed as %s in a %s shard", w->path,
		       tern_packing_name(mat->packing), tern_packing_name(w->packing));
	TERN_RETURN_IF(mat->data_bytes != tern_matrix_data_bytes(mat->packing, mat->m, mat->k) || mat->n_groups < 1,
		       err, TERN_EINVAL, "%s: inconsistent matrix %dx%d", w->path, mat->m, mat->k);
	tern_shard_tensor *t = new_entry(w, role, TERN_DTYPE_TERNARY, layer, mat->m, mat->k);
	t->k_pad = mat->k_pad;
	t->m_pad = mat->m_pad;
	t->group_rows = mat->group_rows;
	t->n_groups = mat->n_groups;
	TERN_FORWARD_IF_ERROR(wr(w, mat->scales, (size_t)mat->n_groups * sizeof(float), err));
	TERN_FORWARD_IF_ERROR(write_payload(w, t, mat->data, mat->data_bytes, err));
	w->n++;
	return 0;
}

int tern_shard_write_gq(tern_shard_writer *w, tern_shard_role role, int layer, int m, int k, const uint8_t *blocks,
			tern_err *err)
{
	TERN_RETURN_IF((int)role < 0 || role >= TERN_SHARD_N_PROJ, err, TERN_EINVAL, "role %d is not a projection",
		       (int)role);
	const size_t bytes = tern_gq_data_bytes(m, k);
	TERN_RETURN_IF(m < 1 || m > MAX_ROWS || k > MAX_COLS || bytes == 0 || !blocks, err, TERN_EINVAL,
		       "%s: bad Q2_0 matrix %dx%d", w->path, m, k);
	TERN_FORWARD_IF_ERROR(check_dupe(w, role, layer, err));
	tern_shard_tensor *t = new_entry(w, role, TERN_DTYPE_Q2_0, layer, m, k);
	TERN_FORWARD_IF_ERROR(write_payload(w, t, blocks, bytes, err));
	w->n++;
	return 0;
}

int tern_shard_write_dense(tern_shard_writer *w, tern_shard_role role, int layer, tern_dtype dtype, int m, int k,
			   const void *data, tern_err *err)
{
	TERN_RETURN_IF(role < TERN_ROLE_ATTN_NORM || role >= TERN_ROLE_COUNT, err, TERN_EINVAL,
		       "role %d is not a dense tensor", (int)role);
	const int dense = tern_dtype_shard(dtype) != UINT32_MAX && dtype != TERN_DTYPE_TERNARY &&
			  (role == TERN_ROLE_HEAD_PACKED) == (dtype == TERN_DTYPE_U8);
	TERN_RETURN_IF(!dense || m < 1 || k < 1 || m > MAX_ROWS || k > MAX_COLS, err, TERN_EINVAL,
		       "%s: bad dense tensor %s (%dx%d, dtype %s)", w->path, tern_shard_role_name(role), m, k,
		       tern_dtype_name(dtype));
	TERN_FORWARD_IF_ERROR(check_dupe(w, role, layer, err));
	tern_shard_tensor *t = new_entry(w, role, dtype, layer, m, k);
	TERN_FORWARD_IF_ERROR(write_payload(w, t, data, (size_t)m * (size_t)k * tern_dtype_size(dtype), err));
	w->n++;
	return 0;
}

static void encode_entry(uint8_t *e, const tern_shard_tensor *t)
{
	memset(e, 0, TERN_SHARD_ENTRY_BYTES);
	memcpy(e, t->name, strlen(t->name));
	put16(e + 48, (uint16_t)t->role);
	put16(e + 50, (uint16_t)tern_dtype_shard(t->dtype));
	put32(e + 52, (uint32_t)t->layer);
	put32(e + 56, (uint32_t)t->packing);
	put32(e + 60, (uint32_t)t->m);
	put32(e + 64, (uint32_t)t->k);
	put32(e + 68, (uint32_t)t->k_pad);
	put32(e + 72, (uint32_t)t->m_pad);
	put32(e + 76, (uint32_t)t->group_rows);
	put32(e + 80, (uint32_t)t->n_groups);
	put32(e + 84, (uint32_t)t->compression);
	put64(e + 88, t->scales_offset);
	put64(e + 96, t->data_offset);
	put64(e + 104, t->stored_bytes);
	put64(e + 112, t->raw_bytes);
	put64(e + 120, t->raw_xxh64);
}

int tern_shard_writer_close(tern_shard_writer *w, uint64_t *file_bytes, uint64_t *file_xxh64, tern_err *err)
{
	const size_t ibytes = (size_t)w->n * TERN_SHARD_ENTRY_BYTES;
	uint8_t *idx = calloc(ibytes ? ibytes : 1, 1);
	uint8_t *buf = malloc(CHUNK);
	int rc = 0;
	if (!idx || !buf) {
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
		goto fail;
	}
	for (int i = 0; i < w->n; i++)
		encode_entry(idx + (size_t)i * TERN_SHARD_ENTRY_BYTES, &w->t[i]);
	uint8_t h[TERN_SHARD_HEADER_BYTES] = {0};
	memcpy(h, TERN_SHARD_MAGIC, 8);
	put32(h + 8, TERN_SHARD_VERSION);
	put32(h + 12, (uint32_t)w->stage);
	put32(h + 16, (uint32_t)w->n);
	put32(h + 20, (uint32_t)w->first);
	put32(h + 24, (uint32_t)w->last);
	put32(h + 28, (uint32_t)w->packing);
	put64(h + 32, TERN_SHARD_HEADER_BYTES);
	put64(h + 40, w->data_offset);
	put64(h + 48, w->pos);
	put64(h + 56, XXH64(idx, ibytes, 0));
	const uint64_t end = w->pos;
	if (fseeko(w->f, 0, SEEK_SET) != 0) {
		rc = TERN_ERR(err, TERN_EIO, "%s: seek failed", w->path);
		goto fail;
	}
	w->pos = 0;
	if ((rc = wr(w, h, sizeof h, err)) < 0 || (rc = wr(w, idx, ibytes, err)) < 0)
		goto fail;
	/* hash the finished file as a reader will see it */
	if (fflush(w->f) != 0 || fseeko(w->f, 0, SEEK_SET) != 0) {
		rc = TERN_ERR(err, TERN_EIO, "%s: flush failed: %s", w->path, strerror(errno));
		goto fail;
	}
	XXH64_state_t hs;
	XXH64_reset(&hs, 0);
	uint64_t got = 0;
	size_t n;
	while ((n = fread(buf, 1, CHUNK, w->f)) > 0) {
		XXH64_update(&hs, buf, n);
		got += n;
	}
	if (got != end) {
		rc = TERN_ERR(err, TERN_EIO, "%s: read back %llu of %llu bytes", w->path, (unsigned long long)got,
			      (unsigned long long)end);
		goto fail;
	}
	if (fclose(w->f) != 0) {
		w->f = NULL;
		remove(w->path);
		rc = TERN_ERR(err, TERN_EIO, "%s: close failed: %s", w->path, strerror(errno));
		goto fail;
	}
	w->f = NULL;
	if (file_bytes)
		*file_bytes = end;
	if (file_xxh64)
		*file_xxh64 = XXH64_digest(&hs);
fail:
	free(idx);
	free(buf);
	tern_shard_writer_abort(w); /* frees; removes the file only if still open (failure) */
	return rc;
}

/* ---- reader --------------------------------------------------------------- */

struct tern_shard {
	char *name;
	const uint8_t *base; /* (len) the file's bytes: map.data, or the caller's buffer */
	size_t len;
	tern_file_map map;   /* tern_shard_open's mapping (zeroed for open_mem) */
	int verified;        /* the whole file matched the manifest's xxh64 */
	int stage, first, last;
	tern_packing packing;
	int n;
	tern_shard_tensor *t; /* (n) */
};

void tern_shard_close(tern_shard *sh)
{
	if (!sh)
		return;
	tern_unmap_file(&sh->map);
	free(sh->t);
	free(sh->name);
	free(sh);
}

static int parse(tern_shard *sh, tern_err *err)
{
	const char *nm = sh->name;
	const uint8_t *b = sh->base;
	TERN_RETURN_IF(sh->len < TERN_SHARD_HEADER_BYTES, err, TERN_EFORMAT, "%s: truncated (%zu bytes, no header)", nm,
		       sh->len);
	TERN_RETURN_IF(memcmp(b, TERN_SHARD_MAGIC, 8) != 0, err, TERN_EFORMAT, "%s: not a tern shard (wrong magic)", nm);
	TERN_RETURN_IF(get32(b + 8) != TERN_SHARD_VERSION, err, TERN_EUNSUP, "%s: shard version %u not supported", nm,
		       get32(b + 8));
	const uint32_t stage = get32(b + 12), n = get32(b + 16), packing = get32(b + 28);
	const int32_t first = (int32_t)get32(b + 20), last = (int32_t)get32(b + 24);
	const uint64_t ioff = get64(b + 32), doff = get64(b + 40), fbytes = get64(b + 48);
	TERN_RETURN_IF(fbytes != sh->len, err, TERN_EFORMAT, "%s: truncated or extended: %zu bytes, header says %llu",
		       nm, sh->len, (unsigned long long)fbytes);
	TERN_RETURN_IF(stage > 65536 || packing >= TERN_PACK_COUNT || n > MAX_TENSORS, err, TERN_EFORMAT,
		       "%s: bad header (stage %u, packing %u, %u tensors)", nm, stage, packing, n);
	TERN_RETURN_IF(stage == 0 ? (first != -1 || last != -1) : (first < 0 || last < first || last >= 1024), err,
		       TERN_EFORMAT, "%s: bad layer range %d..%d for stage %u", nm, first, last, stage);
	TERN_RETURN_IF(ioff != TERN_SHARD_HEADER_BYTES || doff < ioff + (uint64_t)n * TERN_SHARD_ENTRY_BYTES ||
			       doff > sh->len,
		       err, TERN_ERANGE, "%s: index/data offsets out of range", nm);
	const uint8_t *idx = b + ioff;
	TERN_RETURN_IF(XXH64(idx, (size_t)n * TERN_SHARD_ENTRY_BYTES, 0) != get64(b + 56), err,
		       TERN_ECHECKSUM, "%s: tensor index checksum mismatch (damaged file)", nm);
	sh->stage = (int)stage;
	sh->first = first;
	sh->last = last;
	sh->packing = (tern_packing)packing;
	sh->t = calloc(n ? n : 1, sizeof *sh->t);
	TERN_RETURN_IF(!sh->t, err, TERN_ENOMEM, "out of memory");
	const uint64_t dlen = sh->len - doff;
	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *e = idx + (size_t)i * TERN_SHARD_ENTRY_BYTES;
		tern_shard_tensor *t = &sh->t[i];
		TERN_RETURN_IF(memchr(e, 0, 48) == NULL, err, TERN_EFORMAT, "%s: tensor %u: unterminated name", nm, i);
		memcpy(t->name, e, 48);
		t->role = get16(e + 48);
		t->dtype = tern_dtype_of_shard(get16(e + 50));
		t->layer = (int32_t)get32(e + 52);
		const uint32_t pk = get32(e + 56), m = get32(e + 60), k = get32(e + 64), kp = get32(e + 68),
			       mp = get32(e + 72), gr = get32(e + 76), ng = get32(e + 80), comp = get32(e + 84);
		t->scales_offset = get64(e + 88);
		t->data_offset = get64(e + 96);
		t->stored_bytes = get64(e + 104);
		t->raw_bytes = get64(e + 112);
		t->raw_xxh64 = get64(e + 120);
		TERN_RETURN_IF(
		    t->role >= TERN_ROLE_COUNT || t->dtype == TERN_DTYPE_NONE || pk >= TERN_PACK_COUNT || comp > 1, err,
		    TERN_EFORMAT, "%s: tensor '%s': unknown role/type/packing/compression", nm, t->name);
		TERN_RETURN_IF(m < 1 || m > MAX_ROWS || k < 1 || k > MAX_COLS, err, TERN_ERANGE,
			       "%s: tensor '%s': absurd shape %ux%u", nm, t->name, m, k);
		const int proj = t->role < TERN_SHARD_N_PROJ;
		const int gq = t->dtype == TERN_DTYPE_Q2_0;
		TERN_RETURN_IF(proj != (t->dtype == TERN_DTYPE_TERNARY || gq) ||
				       (t->role == TERN_ROLE_HEAD_PACKED) != (t->dtype == TERN_DTYPE_U8),
			       err, TERN_EFORMAT, "%s: tensor '%s': role and type disagree", nm, t->name);
		const int global = t->role >= TERN_ROLE_TOKEN_EMBD && t->role != TERN_ROLE_ATTN_Q_NORM &&
				   t->role != TERN_ROLE_ATTN_K_NORM;
		TERN_RETURN_IF(global ? t->layer != -1 : (t->layer < first || t->layer > last || stage == 0), err,
			       TERN_EFORMAT, "%s: tensor '%s': layer %d outside the shard's range", nm, t->name, t->layer);
		t->packing = (tern_packing)pk;
		t->m = (int)m;
		t->k = (int)k;
		t->compression = (int)comp;
		uint64_t expect;
		if (gq) {
			/* group-scaled: the scales are inside the blocks, as stored */
			TERN_RETURN_IF(kp || mp || gr || ng || pk != packing, err, TERN_EFORMAT,
				       "%s: tensor '%s': a Q2_0 matrix with row scales or another packing", nm, t->name);
			expect = tern_gq_data_bytes((int)m, (int)k);
			TERN_RETURN_IF(expect == 0, err, TERN_EFORMAT, "%s: tensor '%s': Q2_0 with %u columns", nm,
				       t->name, k);
		} else if (proj) {
			TERN_RETURN_IF(pk != packing, err, TERN_EFORMAT, "%s: tensor '%s': packing differs from the shard's",
				       nm, t->name);
			TERN_RETURN_IF(gr < 1 || gr > m || ng != (m + gr - 1) / gr, err, TERN_EFORMAT,
				       "%s: tensor '%s': bad scale groups (%u rows, %u groups)", nm, t->name, gr, ng);
			TERN_RETURN_IF(kp != (uint32_t)tern_k_pad(t->packing, t->k) || mp < m || mp > m + 4096, err,
				       TERN_EFORMAT, "%s: tensor '%s': bad padding", nm, t->name);
			t->k_pad = (int)kp;
			t->m_pad = (int)mp;
			t->group_rows = (int)gr;
			t->n_groups = (int)ng;
			expect = tern_matrix_data_bytes(t->packing, t->m, t->k);
		} else {
			TERN_RETURN_IF(kp || mp || gr || ng, err, TERN_EFORMAT, "%s: tensor '%s': scales on a dense tensor",
				       nm, t->name);
			expect = (uint64_t)m * k * (uint64_t)tern_dtype_size(t->dtype);
		}
		TERN_RETURN_IF(t->raw_bytes != expect, err, TERN_EFORMAT,
			       "%s: tensor '%s': %llu data bytes, shape needs %llu", nm, t->name,
			       (unsigned long long)t->raw_bytes, (unsigned long long)expect);
		TERN_RETURN_IF(!comp && t->stored_bytes != t->raw_bytes, err, TERN_EFORMAT,
			       "%s: tensor '%s': stored size differs from raw size", nm, t->name);
		const uint64_t sb = (uint64_t)t->n_groups * 4;
		TERN_RETURN_IF(t->scales_offset > dlen || sb > dlen - t->scales_offset || t->data_offset > dlen ||
				       t->stored_bytes > dlen - t->data_offset,
			       err, TERN_ERANGE, "%s: tensor '%s': data out of the file's range (truncated?)", nm,
			       t->name);
		t->scales_offset += doff;
		t->data_offset += doff;
		for (uint32_t j = 0; j < i; j++)
			TERN_RETURN_IF(sh->t[j].role == t->role && sh->t[j].layer == t->layer, err, TERN_EFORMAT,
				       "%s: tensor '%s' appears twice", nm, t->name);
	}
	sh->n = (int)n;
	return 0;
}

int tern_shard_open_mem(tern_shard **out, const void *buf, size_t len, const char *name, tern_err *err)
{
	*out = NULL;
	tern_shard *sh = calloc(1, sizeof *sh);
	TERN_RETURN_IF(!sh, err, TERN_ENOMEM, "out of memory");
	sh->name = strdup(name ? name : "shard");
	sh->base = buf;
	sh->len = len;
	if (!sh->name) {
		tern_shard_close(sh);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	}
	const int rc = parse(sh, err);
	if (rc < 0) {
		tern_shard_close(sh);
		return rc;
	}
	*out = sh;
	return 0;
}

int tern_shard_open(tern_shard **out, const char *path, const uint64_t *expect_xxh64, tern_err *err)
{
	*out = NULL;
	tern_shard *sh = calloc(1, sizeof *sh);
	TERN_RETURN_IF(!sh, err, TERN_ENOMEM, "out of memory");
	int rc;
	if (!(sh->name = strdup(path))) {
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
		goto fail;
	}
	if ((rc = tern_map_file(path, &sh->map, err)) < 0)
		goto fail;
	sh->base = sh->map.data;
	sh->len = sh->map.size;
	/* One hash per byte on load: the whole file here when the manifest
	 * gives its digest (it covers header, index, scales and payloads), and
	 * then no per-tensor hash; without it, each tensor's own on read. */
	if (expect_xxh64) {
		/* every byte is read now (and copied out soon): map the file's pages
		 * in one call rather than one fault per 4 KiB page (advice: an old
		 * kernel without MADV_POPULATE_READ faults them in as before) */
#ifdef MADV_POPULATE_READ
		if (sh->len)
			(void)madvise((void *)(uintptr_t)sh->base, sh->len, MADV_POPULATE_READ);
#endif
		const uint64_t h = XXH64(sh->base, sh->len, 0);
		if (h != *expect_xxh64) {
			rc = TERN_ERR(err, TERN_ECHECKSUM,
				      "%s: checksum mismatch (xxh64 %016llx, plan says %016llx): file is damaged", path,
				      (unsigned long long)h, (unsigned long long)*expect_xxh64);
			goto fail;
		}
		sh->verified = 1;
	}
	if ((rc = parse(sh, err)) < 0)
		goto fail;
	*out = sh;
	return 0;
fail:
	tern_shard_close(sh);
	return rc;
}

int tern_shard_stage(const tern_shard *sh)
{
	return sh->stage;
}

void tern_shard_layers(const tern_shard *sh, int *first, int *last)
{
	*first = sh->first;
	*last = sh->last;
}

tern_packing tern_shard_packing(const tern_shard *sh)
{
	return sh->packing;
}

int tern_shard_n_tensors(const tern_shard *sh)
{
	return sh->n;
}

const tern_shard_tensor *tern_shard_tensor_at(const tern_shard *sh, int i)
{
	return i >= 0 && i < sh->n ? &sh->t[i] : NULL;
}

int tern_shard_find(const tern_shard *sh, tern_shard_role role, int layer)
{
	for (int i = 0; i < sh->n; i++)
		if (sh->t[i].role == (int)role && sh->t[i].layer == layer)
			return i;
	return -1;
}

int tern_shard_read_tensor(const tern_shard *sh, int i, void *dst, size_t dst_bytes, float *scales, tern_err *err)
{
	TERN_RETURN_IF(i < 0 || i >= sh->n, err, TERN_EINVAL, "%s: no tensor %d", sh->name, i);
	const tern_shard_tensor *t = &sh->t[i];
	TERN_RETURN_IF(dst_bytes < t->raw_bytes, err, TERN_EINVAL, "%s: tensor '%s': buffer too small", sh->name,
		       t->name);
	const uint8_t *src = sh->base + t->data_offset;
	if (t->compression) {
		const size_t r = ZSTD_decompress(dst, (size_t)t->raw_bytes, src, (size_t)t->stored_bytes);
		TERN_RETURN_IF(ZSTD_isError(r), err, TERN_EFORMAT, "%s: tensor '%s': damaged compressed data (%s)",
			       sh->name, t->name, ZSTD_getErrorName(r));
		TERN_RETURN_IF(r != t->raw_bytes, err, TERN_EFORMAT, "%s: tensor '%s': decompressed %zu of %llu bytes",
			       sh->name, t->name, r, (unsigned long long)t->raw_bytes);
	} else if (t->raw_bytes) {
		memcpy(dst, src, (size_t)t->raw_bytes);
	}
	TERN_RETURN_IF(!sh->verified && XXH64(dst, (size_t)t->raw_bytes, 0) != t->raw_xxh64, err,
		       TERN_ECHECKSUM, "%s: tensor '%s': checksum mismatch (damaged file)", sh->name, t->name);
	if (scales && t->n_groups)
		memcpy(scales, sh->base + t->scales_offset, (size_t)t->n_groups * sizeof(float));
	return 0;
}

int tern_shard_map_tensor(const tern_shard *sh, int i, const void **data, tern_err *err)
{
	*data = NULL;
	TERN_RETURN_IF(i < 0 || i >= sh->n, err, TERN_EINVAL, "%s: no tensor %d", sh->name, i);
	const tern_shard_tensor *t = &sh->t[i];
	TERN_RETURN_IF(t->compression, err, TERN_EUNSUP, "%s: tensor '%s' is compressed: read it, it cannot be mapped",
		       sh->name, t->name);
	const uint8_t *src = sh->base + t->data_offset;
	TERN_RETURN_IF(!sh->verified && XXH64(src, (size_t)t->raw_bytes, 0) != t->raw_xxh64, err, TERN_ECHECKSUM,
		       "%s: tensor '%s': checksum mismatch (damaged file)", sh->name, t->name);
	*data = src;
	return 0;
}

static void *a_alloc(const tern_shard_alloc *a, size_t n)
{
	if (a && a->alloc)
		return a->alloc(a->ctx, n, TERN_ALIGN);
	return tern_aligned_alloc(n, TERN_ALIGN);
}

static void a_free(const tern_shard_alloc *a, void *p, size_t n)
{
	if (!p)
		return;
	if (a && a->free)
		a->free(a->ctx, p, n);
	else
		tern_aligned_free(p);
}

void tern_shard_matrix_release(tern_matrix *m, const tern_shard_alloc *a)
{
	if (!m)
		return;
	a_free(a, m->data, m->data_bytes ? m->data_bytes : 1);
	a_free(a, m->scales, (size_t)(m->n_groups ? m->n_groups : 1) * sizeof(float));
	memset(m, 0, sizeof *m);
}

int tern_shard_load_matrix(const tern_shard *sh, int i, const tern_shard_alloc *a, tern_matrix *out, tern_err *err)
{
	memset(out, 0, sizeof *out);
	TERN_RETURN_IF(i < 0 || i >= sh->n, err, TERN_EINVAL, "%s: no tensor %d", sh->name, i);
	const tern_shard_tensor *t = &sh->t[i];
	TERN_RETURN_IF(t->dtype != TERN_DTYPE_TERNARY, err, TERN_EINVAL, "%s: tensor '%s' is not ternary", sh->name,
		       t->name);
	out->packing = t->packing;
	out->m = t->m;
	out->k = t->k;
	out->k_pad = t->k_pad;
	out->m_pad = t->m_pad;
	out->group_rows = t->group_rows;
	out->n_groups = t->n_groups;
	out->data_bytes = (size_t)t->raw_bytes;
	out->owns_data = 0;
	out->data = a_alloc(a, out->data_bytes ? out->data_bytes : 1);
	out->scales = a_alloc(a, (size_t)t->n_groups * sizeof(float));
	if (!out->data || !out->scales) {
		tern_shard_matrix_release(out, a);
		return TERN_ERR(err, TERN_ENOMEM, "%s: out of memory for tensor '%s' (%llu bytes)", sh->name, t->name,
				(unsigned long long)t->raw_bytes);
	}
	const int rc = tern_shard_read_tensor(sh, i, out->data, out->data_bytes, out->scales, err);
	if (rc < 0)
		tern_shard_matrix_release(out, a);
	return rc;
}

static int load_norm(const tern_shard *sh, int layer, tern_shard_role role, int len, const tern_shard_alloc *a,
		     float **out, tern_err *err)
{
	const int i = tern_shard_find(sh, role, layer);
	TERN_RETURN_IF(i < 0, err, TERN_EFORMAT, "%s: layer %d has no %s", sh->name, layer, tern_shard_role_name(role));
	const tern_shard_tensor *t = &sh->t[i];
	TERN_RETURN_IF(t->dtype != TERN_DTYPE_F32 || t->m != len || t->k != 1, err, TERN_EFORMAT,
		       "%s: tensor '%s': expected f32[%d]", sh->name, t->name, len);
	*out = a_alloc(a, (size_t)len * sizeof(float));
	TERN_RETURN_IF(!*out, err, TERN_ENOMEM, "out of memory");
	return tern_shard_read_tensor(sh, i, *out, (size_t)len * sizeof(float), NULL, err);
}

void tern_shard_layers_free(tern_shard_layer *layers, int n, const tern_shard_alloc *a)
{
	if (!layers)
		return;
	for (int l = 0; l < n; l++) {
		tern_shard_layer *y = &layers[l];
		for (int p = 0; p < TERN_SHARD_N_PROJ; p++)
			tern_shard_matrix_release(&y->proj[p], a);
		a_free(a, y->attn_norm, (size_t)y->n_embd * sizeof(float));
		a_free(a, y->attn_sub_norm, (size_t)y->n_embd * sizeof(float));
		a_free(a, y->ffn_norm, (size_t)y->n_embd * sizeof(float));
		a_free(a, y->ffn_sub_norm, (size_t)y->n_ff * sizeof(float));
	}
	free(layers);
}

static int load_layer(const tern_shard *sh, int layer, const tern_shard_alloc *a, tern_shard_layer *y, tern_err *err)
{
	y->layer = layer;
	for (int p = 0; p < TERN_SHARD_N_PROJ; p++) {
		const int i = tern_shard_find(sh, (tern_shard_role)p, layer);
		TERN_RETURN_IF(i < 0, err, TERN_EFORMAT, "%s: layer %d has no %s", sh->name, layer,
			       tern_shard_role_name((tern_shard_role)p));
		TERN_FORWARD_IF_ERROR(tern_shard_load_matrix(sh, i, a, &y->proj[p], err));
	}
	const tern_matrix *q = &y->proj[TERN_ROLE_Q], *k = &y->proj[TERN_ROLE_K], *v = &y->proj[TERN_ROLE_V];
	const tern_matrix *o = &y->proj[TERN_ROLE_O], *g = &y->proj[TERN_ROLE_GATE], *u = &y->proj[TERN_ROLE_UP];
	const tern_matrix *dn = &y->proj[TERN_ROLE_DOWN];
	const int d = q->k, ff = g->m;
	TERN_RETURN_IF(q->m != d || k->k != d || v->k != d || k->m != v->m || o->m != d || o->k != d || g->k != d ||
			       u->k != d || u->m != ff || dn->m != d || dn->k != ff,
		       err, TERN_EFORMAT, "%s: layer %d: projection shapes do not agree", sh->name, layer);
	y->n_embd = d;
	y->n_ff = ff;
	TERN_FORWARD_IF_ERROR(load_norm(sh, layer, TERN_ROLE_ATTN_NORM, d, a, &y->attn_norm, err));
	TERN_FORWARD_IF_ERROR(load_norm(sh, layer, TERN_ROLE_ATTN_SUB_NORM, d, a, &y->attn_sub_norm, err));
	TERN_FORWARD_IF_ERROR(load_norm(sh, layer, TERN_ROLE_FFN_NORM, d, a, &y->ffn_norm, err));
	TERN_FORWARD_IF_ERROR(load_norm(sh, layer, TERN_ROLE_FFN_SUB_NORM, ff, a, &y->ffn_sub_norm, err));
	return 0;
}

int tern_shard_load_layers(const tern_shard *sh, const tern_shard_alloc *a, tern_shard_layer **layers, int *n,
			   tern_err *err)
{
	*layers = NULL;
	*n = 0;
	TERN_RETURN_IF(sh->stage == 0, err, TERN_EINVAL, "%s: the coordinator's shard has no layers", sh->name);
	const int cnt = sh->last - sh->first + 1;
	tern_shard_layer *ys = calloc((size_t)cnt, sizeof *ys);
	TERN_RETURN_IF(!ys, err, TERN_ENOMEM, "out of memory");
	for (int l = 0; l < cnt; l++) {
		const int rc = load_layer(sh, sh->first + l, a, &ys[l], err);
		if (rc < 0) {
			tern_shard_layers_free(ys, l + 1, a);
			return rc;
		}
	}
	/* all layers of a stage have one shape */
	for (int l = 1; l < cnt; l++)
		if (ys[l].n_embd != ys[0].n_embd || ys[l].n_ff != ys[0].n_ff ||
		    ys[l].proj[TERN_ROLE_K].m != ys[0].proj[TERN_ROLE_K].m) {
			tern_shard_layers_free(ys, cnt, a);
			return TERN_ERR(err, TERN_EFORMAT, "%s: layer %d differs in shape from layer %d", sh->name,
					sh->first + l, sh->first);
		}
	*layers = ys;
	*n = cnt;
	return 0;
}
