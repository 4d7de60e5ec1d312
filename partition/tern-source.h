/* tern-source.h: one uniform view of a ternary model (BitNet b1.58 or a
 * Llama-style family, tern_arch), whatever file it came from. The shard writer and the engine consume only this.
 *
 * Inputs (tern_source_open decides by what the path is):
 *  - a GGUF file: bitnet.cpp's I2_S layout (MODEL-FORMATS 2.4), ggml Q2_0
 *    (group-scaled, tern_source_gq) or linear
 *    weights in F32/F16/BF16 (other types, TL1/TL2 included, are refused at
 *    open with the tensor named);
 *  - a Hugging Face checkpoint directory (config.json + *.safetensors,
 *    optionally tokenizer.json / tokenizer_config.json): the packed one (U8
 *    [out/4, in] + weight_scale, MODEL-FORMATS 4.2) or bf16/f16/f32 master
 *    weights (4.3).
 *
 * Every linear weight comes out as the exact ternary int8 matrix (m = out
 * rows, k = in, row-major, values in {-1,0,+1}) plus weight scales per group
 * of rows, W ~= ternary * scale[row / group_rows]:
 *  - pre-quantized sources (I2_S, HF packed) have one scale per tensor,
 *    the file's: the effective group_rows is m whatever was asked;
 *  - full-precision sources are quantized here with BitNet's absmean rule
 *    applied PER GROUP of group_rows rows (group_rows >= m: per tensor, which
 *    is exactly MODEL-FORMATS 1.3):
 *        mean  = (float)(sum over the group of |W| in double / count)
 *        scale = max(mean, 1e-5f);  s = 1.0f / scale
 *        Wt    = clamp(rintf(W * s), -1, 1)       (round half to even)
 * A float tensor whose every element is 0 or +-a (a converter's ternary /
 * weight_scale) comes out exactly as its signs and the one scale a.
 * HF packed scales: the file's weight_scale, or 1 / weight_scale where
 * transformers' BitLinear divides (tern_hf_quant.scale_divides).
 * q/k rows: HF and bitnet.cpp's bitnet-arch GGUFs share the half-split (NEOX)
 * order (MODEL-FORMATS 1.4); the converter's llama-arch GGUF permutes them for
 * interleaved RoPE (tern_arch.gguf_qk_interleaved) and they are permuted back
 * here, so every source gives HF order. Norms the architecture lacks (the
 * sub-norms of llama) read as ones (tern_norm_present).
 *
 * Threads: after open, the weight/norm/dense accessors only read the
 * mapping and may be called concurrently (e.g. one thread per tensor);
 * tern_source_vocab loads lazily on first call, so call it once before
 * sharing the source. */
#ifndef TERN_SOURCE_H
#define TERN_SOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"
#include "tern-model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { TERN_SOURCE_GGUF = 0, TERN_SOURCE_HF } tern_source_kind;

typedef struct tern_source tern_source;

/* Opens a GGUF file or an HF checkpoint directory, reads the
 * hyper-parameters and checks that every tensor the model needs is present
 * with the right shape and a supported type (errors name the file and the
 * tensor). The tokenizer is loaded lazily (tern_source_vocab). */
int tern_source_open(tern_source **out, const char *path, tern_err *err);
void tern_source_close(tern_source *s); /* NULL is a no-op */

const tern_hparams *tern_source_hparams(const tern_source *s);
tern_source_kind tern_source_kind_of(const tern_source *s);
const char *tern_source_path(const tern_source *s);
/* 1 if projection weights are stored ternary (I2_S / HF packed): scales
 * are the file's, one per tensor. 0 if they are quantized from full precision. */
int tern_source_prequantized(const tern_source *s);
/* 1 if every projection is stored group-scaled (GGUF Q2_0, kernels/tern-gq.h:
 * an f16 scale per 64 weights of a row): read them with tern_source_gq, as
 * stored; tern_source_ternary refuses them. Prequantized is then 1 too. */
int tern_source_group_scaled(const tern_source *s);
/* The Q2_0 blocks of projection p of layer (rows in the file's order, no
 * permutation: a source with permuted q/k rows and Q2_0 is refused at open):
 * *data into the mapping (unaligned; valid until close), *bytes =
 * tern_gq_data_bytes(m, k). TERN_EINVAL if it is not Q2_0. */
int tern_source_gq(const tern_source *s, int layer, tern_proj p, const uint8_t **data, size_t *bytes, tern_err *err);
/* Short description of the weight storage, e.g. "gguf i2_s", "hf packed",
 * "hf bf16", "gguf f16" (for logs and manifests). */
const char *tern_source_weight_format(const tern_source *s);

/* The ternary matrix of projection p of layer `layer`:
 *   w:      caller buffer of m*k int8 (tern_proj_shape), filled row-major;
 *   scales: caller buffer of at least ceil(m / group_rows) floats (use
 *           group_rows <= 0 or >= m for one scale per tensor);
 *   *group_rows_out: the effective rows per scale (m for pre-quantized
 *           sources and for per-tensor requests), so the number of scales
 *           written is ceil(m / *group_rows_out).
 * Errors: TERN_EINVAL (layer/proj out of range), TERN_EFORMAT (a stored code
 * outside {-1,0,1}, non-finite weights or scale), each naming file + tensor. */
int tern_source_ternary(const tern_source *s, int layer, tern_proj p, int group_rows, int8_t *w, float *scales,
			int *group_rows_out, tern_err *err);

/* A norm weight vector as f32 into out (tern_norm_len floats). */
int tern_source_norm(const tern_source *s, int layer, tern_norm_kind n, float *out, tern_err *err);

/* A dense (non-ternary) matrix, as stored: no copy. */
typedef struct tern_dense_view {
	tern_dtype type;     /* of the storage: F32, F16 or BF16 */
	int64_t rows;        /* n_vocab */
	int64_t cols;        /* n_embd */
	size_t row_bytes;    /* cols * element size */
	const uint8_t *data; /* (rows, cols) in the mapping, possibly unaligned */
} tern_dense_view;
/* TERN_EINVAL if kind is OUTPUT and the model is tied (check hparams). */
int tern_source_dense(const tern_source *s, tern_dense_kind kind, tern_dense_view *out, tern_err *err);
/* Row `row` of a dense view converted to f32 (cols floats); TERN_EINVAL if
 * row is out of range. */
int tern_dense_row_f32(const tern_dense_view *v, int64_t row, float *out, tern_err *err);

/* Tokenizer metadata (GGUF tokenizer.ggml.*, or the HF tokenizer.json). All
 * arrays are owned by the source; strings are NUL-terminated copies and also
 * have lengths (a token may contain a NUL byte in principle). */
typedef struct tern_vocab {
	char model[16]; /* "gpt2" (byte-level BPE) or "llama" (SentencePiece) */
	char pre[32];   /* pre-tokenizer name, e.g. "llama-bpe"; "default" if absent */
	int64_t n_tokens;
	const char **tokens;       /* (n_tokens) token text, byte-level-encoded for gpt2 */
	const uint32_t *token_len; /* (n_tokens) */
	const int32_t *token_type; /* (n_tokens) 1 NORMAL, 2 UNKNOWN, 3 CONTROL, 4 USER_DEFINED, 5 UNUSED, 6 BYTE; NULL
				      if absent */
	const float *scores;       /* (n_tokens) or NULL if absent */
	int64_t n_merges;
	const char **merges;                            /* (n_merges) "A B", rank = index; NULL if none */
	const uint32_t *merge_len;                      /* (n_merges) */
	int32_t bos_id, eos_id, eot_id, unk_id, pad_id; /* -1 when absent */
	int add_bos, add_eos;                           /* booleans */
} tern_vocab;
/* Loads the tokenizer (first call) and returns it; TERN_EFORMAT if the
 * source has none or it is malformed (ids out of range, counts mismatch). */
int tern_source_vocab(tern_source *s, const tern_vocab **out, tern_err *err);

/* The underlying GGUF (NULL for HF sources), for callers that want raw KVs. */
struct tern_gguf;
const struct tern_gguf *tern_source_gguf(const tern_source *s);

/* The absmean ternary rule above, on f32 rows: quantizes an m x k row-major
 * matrix in groups of group_rows rows (<= 0 means m). scales gets
 * ceil(m/group_rows) values. Exposed for tests and other converters. */
int tern_absmean_quantize(const float *x, int64_t m, int64_t k, int64_t group_rows, int8_t *w, float *scales,
			  tern_err *err);

#ifdef __cplusplus
}
#endif
#endif /* TERN_SOURCE_H */
