/* tern-gguf.h: GGUF files (v2 and v3, little-endian), the container of
 * llama.cpp / bitnet.cpp models (MODEL-FORMATS.md section 2).
 *
 * Reader: maps the file read-only and validates the whole header at open:
 * every count, string length, array length, tensor dimension, offset,
 * alignment and tensor extent is checked against the file size BEFORE it is
 * used, so absurd counts are rejected without allocating. After a successful
 * open every accessor is bounds-safe. Errors are one line naming the file and
 * the problem ("model.gguf: truncated: tensor info 3 ends at byte 912 of 800").
 *
 * Writer: streaming. All KVs and tensor infos (shapes and types, hence sizes)
 * are declared first; then the header is written and tensor data is streamed
 * in declaration order, padded to the alignment automatically, so a 70B file
 * needs memory for its header only. The file is written as PATH.tmp and
 * renamed to PATH by tern_gguf_writer_finish.
 *
 * Depends on tern-base (errors) and tern-model (hyper-parameters) only. */
#ifndef TERN_GGUF_H
#define TERN_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"
#include "tern-model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- metadata value types (gguf_type) ---------------------------------- */
typedef enum {
	TERN_GGUF_U8 = 0,
	TERN_GGUF_I8 = 1,
	TERN_GGUF_U16 = 2,
	TERN_GGUF_I16 = 3,
	TERN_GGUF_U32 = 4,
	TERN_GGUF_I32 = 5,
	TERN_GGUF_F32 = 6,
	TERN_GGUF_BOOL = 7,   /* 1 byte, 0 or 1 */
	TERN_GGUF_STRING = 8, /* u64 length + bytes, no NUL */
	TERN_GGUF_ARRAY = 9,  /* u32 elem type + u64 count + elements; nested arrays rejected */
	TERN_GGUF_U64 = 10,
	TERN_GGUF_I64 = 11,
	TERN_GGUF_F64 = 12,
	TERN_GGUF_NTYPES
} tern_gguf_vtype;

#define TERN_GGUF_DEFAULT_ALIGNMENT 32
#define TERN_GGUF_MAX_DIMS 4

/* Name of a ggml type ("f32", "i2_s", "q4_0", ...) or "type<N>" into a
 * static per-id string for ids without a name; never NULL. */
const char *tern_ggml_type_name(uint32_t type);
/* Name of a metadata value type ("u32", "string", "array", ...); never NULL. */
const char *tern_gguf_vtype_name(uint32_t vtype);

/* Bytes of a tensor of `type` with dims ne[0..n_dims) (ne[0] innermost), per
 * ggml_nbytes incl. the bitnet.cpp special cases: I2_S and TL1 = ne0*ne1/4 + 32,
 * TL2 per MODEL-FORMATS 2.2; standard block-quantized types by their block
 * size. Returns 0 for an unknown type or a shape the type cannot have (e.g.
 * I2_S with ne0*ne1 not a multiple of 4, or 3-D I2_S). Overflow -> 0. */
uint64_t tern_ggml_nbytes(uint32_t type, uint32_t n_dims, const uint64_t *ne);

/* ======================================================================= */
/* Reader                                                                   */
/* ======================================================================= */

typedef struct tern_gguf tern_gguf;

typedef struct tern_gguf_tensor {
	const char *name;                /* NUL-terminated copy, owned by the tern_gguf */
	uint32_t n_dims;                 /* 1..4 */
	uint64_t ne[TERN_GGUF_MAX_DIMS]; /* ne[0] innermost (= columns, HF [out,in] -> {in,out}); unused dims = 1 */
	uint32_t type;                   /* ggml_type id as stored (any id tern_ggml_nbytes knows) */
	tern_dtype dtype;                /* tern_dtype_of_ggml(type); TERN_DTYPE_NONE for e.g. q4_0 */
	uint64_t offset;                 /* relative to the data section; a multiple of the alignment */
	uint64_t nbytes;                 /* tern_ggml_nbytes; checked: data_offset+offset+nbytes <= file size */
	const uint8_t *data;             /* into the mapping (aligned to the file's alignment, not 64) */
} tern_gguf_tensor;

/* Maps and validates `path`. On success *out owns the mapping; close with
 * tern_gguf_close. Errors: TERN_EIO (open/map), TERN_EFORMAT (magic, version,
 * bad value type, bad bool, nested array, duplicate key or tensor name),
 * TERN_ERANGE (truncated, absurd count/length/dimension, offset out of range,
 * misaligned offset, bad alignment), TERN_EUNSUP (big-endian/unknown version,
 * unknown tensor type). Architecture is NOT checked here (tern_gguf_hparams). */
int tern_gguf_open(tern_gguf **out, const char *path, tern_err *err);

/* The same over a caller buffer (not copied; must outlive the tern_gguf).
 * `name` is used in error messages (e.g. "<fuzz>"). Used by fuzzers/tests. */
int tern_gguf_open_mem(tern_gguf **out, const void *buf, size_t len, const char *name, tern_err *err);

void tern_gguf_close(tern_gguf *g); /* NULL is a no-op */

const char *tern_gguf_path(const tern_gguf *g);     /* path or name given at open */
uint32_t tern_gguf_version(const tern_gguf *g);     /* 2 or 3 */
uint32_t tern_gguf_alignment(const tern_gguf *g);   /* general.alignment or 32 */
uint64_t tern_gguf_data_offset(const tern_gguf *g); /* start of the data section in the file */
uint64_t tern_gguf_file_size(const tern_gguf *g);

/* ---- metadata ----------------------------------------------------------
 * KVs are addressed by index 0..n_kv-1 (file order). */
int64_t tern_gguf_n_kv(const tern_gguf *g);
/* Index of `key`, or -1 if absent. */
int64_t tern_gguf_find_key(const tern_gguf *g, const char *key);
const char *tern_gguf_kv_key(const tern_gguf *g, int64_t i); /* NUL-terminated; NULL if i out of range */
uint32_t tern_gguf_kv_type(const tern_gguf *g, int64_t i);   /* tern_gguf_vtype; NTYPES if out of range */

/* Typed getters by key. Return 0, or TERN_EFORMAT with a message naming the
 * file and key when the key is missing or its type does not convert: integer
 * getters accept any integer type whose value fits (range-checked), f32/f64
 * accept F32/F64 (and integers), bool accepts BOOL. */
int tern_gguf_get_u32(const tern_gguf *g, const char *key, uint32_t *v, tern_err *err);
int tern_gguf_get_i32(const tern_gguf *g, const char *key, int32_t *v, tern_err *err);
int tern_gguf_get_u64(const tern_gguf *g, const char *key, uint64_t *v, tern_err *err);
int tern_gguf_get_i64(const tern_gguf *g, const char *key, int64_t *v, tern_err *err);
int tern_gguf_get_f32(const tern_gguf *g, const char *key, float *v, tern_err *err);
int tern_gguf_get_f64(const tern_gguf *g, const char *key, double *v, tern_err *err);
int tern_gguf_get_bool(const tern_gguf *g, const char *key, int *v, tern_err *err);
/* String value: *s points into the mapping (NOT NUL-terminated), *len bytes. */
int tern_gguf_get_str(const tern_gguf *g, const char *key, const char **s, uint64_t *len, tern_err *err);

/* Arrays: element type and count of array KV `key` (TERN_EFORMAT if missing
 * or not an array). */
int tern_gguf_get_arr(const tern_gguf *g, const char *key, uint32_t *elem_type, uint64_t *count, tern_err *err);
/* Element access by KV index (from tern_gguf_find_key) and element index.
 * All return 0 or a negative code (index out of range, wrong element type);
 * err may be NULL for speed in loops. Numeric getters convert like the scalar
 * getters (i64 accepts any integer element type, f64 any numeric type). */
int tern_gguf_arr_str(const tern_gguf *g, int64_t kv, uint64_t i, const char **s, uint64_t *len, tern_err *err);
int tern_gguf_arr_i64(const tern_gguf *g, int64_t kv, uint64_t i, int64_t *v, tern_err *err);
int tern_gguf_arr_f64(const tern_gguf *g, int64_t kv, uint64_t i, double *v, tern_err *err);
/* Raw view of a numeric array: pointer into the mapping (possibly unaligned:
 * read with memcpy) and element size in bytes. NULL for string arrays. */
const void *tern_gguf_arr_data(const tern_gguf *g, int64_t kv, size_t *elem_size);

/* ---- tensors ------------------------------------------------------------ */
int64_t tern_gguf_n_tensors(const tern_gguf *g);
const tern_gguf_tensor *tern_gguf_tensor_at(const tern_gguf *g, int64_t i);          /* NULL if out of range */
const tern_gguf_tensor *tern_gguf_find_tensor(const tern_gguf *g, const char *name); /* NULL if absent */

/* Data of a tensor for the supported element types F32, F16, BF16, I8 and
 * I2_S: *data (into the mapping) and *nbytes. TERN_EUNSUP names the tensor
 * and type for anything else (TL1/TL2 included). */
int tern_gguf_tensor_data(const tern_gguf *g, const tern_gguf_tensor *t, const void **data, uint64_t *nbytes,
			  tern_err *err);

/* ---- BitNet hyper-parameters --------------------------------------------
 * Fills *hp from general.architecture (accepted: "bitnet-b1.58", "bitnet-25",
 * "bitnet", "bitnet-1.58"; anything else TERN_EUNSUP) and the <arch>.* keys:
 * embedding_length, block_count, attention.head_count, attention.head_count_kv
 * (default head_count), feed_forward_length, context_length, rope.freq_base
 * (default 10000), attention.layer_norm_rms_epsilon (default 1e-5), vocab_size
 * (else the tokens array length, else token_embd's ne[1]); tied = no
 * output.weight tensor; bos/eos from tokenizer.ggml.{bos,eos}_token_id, eot
 * from tokenizer.ggml.eot_token_id or the token "<|eot_id|>" (-1 if none).
 * Then tern_hparams_validate. Errors name the file and the key. */
int tern_gguf_hparams(const tern_gguf *g, tern_hparams *hp, tern_err *err);
/* 1 if `arch` is one of the accepted architecture names. */
int tern_gguf_arch_supported(const char *arch);

/* ---- I2_S ----------------------------------------------------------------
 * The bitnet.cpp x86 layout (MODEL-FORMATS 2.3), the file format on every
 * platform: for flattened element i (row-major, i = row*k + col), block
 * b = i/128, j = i%128, grp = j/32, pos = j%32: code in byte b*32+pos at bit
 * shift 6-2*grp; code c -> weight c-1 (code 3 invalid). The float scale is
 * stored at byte offset m*k/4, followed by 28 bytes of padding. */

/* Decodes rows [row0, row0+nrows) of an m x k I2_S tensor (m*k % 128 == 0)
 * into w (nrows*k int8). Returns TERN_EFORMAT on a code 3 (err names `what`). */
int tern_i2s_decode_rows(const uint8_t *data, int64_t m, int64_t k, int64_t row0, int64_t nrows, int8_t *w,
			 const char *what, tern_err *err);
/* Encodes elements [i0, i0+n) of a flattened ternary tensor into `data`
 * (the packed m*k/4 bytes; i0 and n multiples of 128). Bits of the touched
 * bytes are overwritten. Values outside {-1,0,1} are encoded as 0. */
void tern_i2s_encode(uint8_t *data, uint64_t i0, const int8_t *w, uint64_t n);
/* The tensor's scale (read from offset m*k/4, unaligned-safe). */
float tern_i2s_scale(const uint8_t *data, int64_t m, int64_t k);

/* ======================================================================= */
/* Writer                                                                   */
/* ======================================================================= */

typedef struct tern_gguf_writer tern_gguf_writer;

/* Starts a file at `path` (written as path.tmp until finish). version 2 or 3;
 * alignment 0 means 32 (any other value must be a power of two; it is also
 * written as general.alignment when != 32). path NULL is a dry run: nothing
 * is written, but write_header computes tern_gguf_writer_total_bytes. */
int tern_gguf_writer_open(tern_gguf_writer **out, const char *path, uint32_t version, uint32_t alignment,
			  tern_err *err);

/* Declaring KVs (before write_header). Keys must be unique. */
int tern_gguf_writer_add_u32(tern_gguf_writer *w, const char *key, uint32_t v, tern_err *err);
int tern_gguf_writer_add_i32(tern_gguf_writer *w, const char *key, int32_t v, tern_err *err);
int tern_gguf_writer_add_u64(tern_gguf_writer *w, const char *key, uint64_t v, tern_err *err);
int tern_gguf_writer_add_f32(tern_gguf_writer *w, const char *key, float v, tern_err *err);
int tern_gguf_writer_add_bool(tern_gguf_writer *w, const char *key, int v, tern_err *err);
int tern_gguf_writer_add_str(tern_gguf_writer *w, const char *key, const char *s, tern_err *err);
/* Any scalar type: `v` points to a value of that C type (uint8_t for U8/BOOL,
 * ..., double for F64, `const char *` for STRING). */
int tern_gguf_writer_add_scalar(tern_gguf_writer *w, const char *key, uint32_t vtype, const void *v, tern_err *err);
/* Array of n elements of elem_type: `elems` is a packed C array of that type,
 * or `const char *const *` (NUL-terminated strings) for STRING. */
int tern_gguf_writer_add_array(tern_gguf_writer *w, const char *key, uint32_t elem_type, const void *elems, uint64_t n,
			       tern_err *err);
/* String array with explicit lengths (strings may contain NUL bytes). */
int tern_gguf_writer_add_str_array(tern_gguf_writer *w, const char *key, const char *const *strs, const uint64_t *lens,
				   uint64_t n, tern_err *err);

/* Declares a tensor of element type dtype (one with a GGUF code,
 * tern_dtype_ggml) before write_header; its data size is
 * tern_ggml_nbytes(tern_dtype_ggml(dtype), n_dims, ne) (TERN_EINVAL if 0 or
 * no code). Offsets are assigned in declaration order, each padded to the
 * alignment. */
int tern_gguf_writer_add_tensor(tern_gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne,
				tern_dtype dtype, tern_err *err);

/* Writes magic, counts, KVs, tensor infos and the padding to the data start. */
int tern_gguf_writer_write_header(tern_gguf_writer *w, tern_err *err);

/* Streams tensor data: the bytes of tensor 0, then tensor 1, ... in any
 * chunking; a chunk may not cross into the next tensor (TERN_EINVAL). When a
 * tensor's bytes are complete the alignment padding is written. */
int tern_gguf_writer_write(tern_gguf_writer *w, const void *p, size_t n, tern_err *err);

/* Index of the tensor the next write goes to (== number of tensors when done)
 * and how many of its bytes are still expected. */
int64_t tern_gguf_writer_cur_tensor(const tern_gguf_writer *w, uint64_t *remaining);
/* Total bytes the file will have (valid after write_header). */
uint64_t tern_gguf_writer_total_bytes(const tern_gguf_writer *w);

/* Checks every tensor was written completely, flushes, fsyncs, renames
 * path.tmp -> path. The writer still must be freed. */
int tern_gguf_writer_finish(tern_gguf_writer *w, tern_err *err);
/* Frees; if finish did not succeed, removes path.tmp. NULL is a no-op. */
void tern_gguf_writer_free(tern_gguf_writer *w);

#ifdef __cplusplus
}
#endif
#endif /* TERN_GGUF_H */
