/* tern-safetensors.h: safetensors files (MODEL-FORMATS.md 4.1) and the
 * config.json of a Hugging Face checkpoint directory (4.2, 4.3).
 *
 * A safetensors file is `u64 N | N bytes of JSON header | byte buffer`. The
 * reader maps the file, parses the header with tern-json, and checks every
 * tensor's dtype, shape (product * dtype size == data_offsets extent, no
 * overflow) and data_offsets against the buffer before use. `__metadata__` is
 * ignored. Data may be unaligned: read it with memcpy. */
#ifndef TERN_SAFETENSORS_H
#define TERN_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"
#include "tern-model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TERN_ST_MAX_DIMS 8

typedef struct tern_st_tensor {
	const char *name;                 /* NUL-terminated, owned by the tern_st */
	tern_dtype dtype;                 /* one with a safetensors name (tern_dtype_safetensors) */
	int n_dims;                       /* 0..8 (0 = scalar) */
	uint64_t shape[TERN_ST_MAX_DIMS]; /* outermost first (HF [out, in]) */
	uint64_t n_elem;
	uint64_t nbytes;
	const uint8_t *data; /* into the mapping, possibly unaligned */
} tern_st_tensor;

typedef struct tern_st tern_st;

/* Maps and validates one .safetensors file. Errors (one line naming the file):
 * TERN_EIO, TERN_ERANGE (truncated, header length or data_offsets out of
 * range, absurd shape), TERN_EFORMAT (bad JSON, missing field, extent !=
 * shape*dtype size, duplicate name), TERN_EUNSUP (unknown dtype). */
int tern_st_open(tern_st **out, const char *path, tern_err *err);
/* Over a caller buffer (not copied, must outlive the tern_st). */
int tern_st_open_mem(tern_st **out, const void *buf, size_t len, const char *name, tern_err *err);
void tern_st_close(tern_st *st); /* NULL is a no-op */

const char *tern_st_path(const tern_st *st);
int64_t tern_st_n_tensors(const tern_st *st);
const tern_st_tensor *tern_st_tensor_at(const tern_st *st, int64_t i);   /* header order; NULL if out of range */
const tern_st_tensor *tern_st_find(const tern_st *st, const char *name); /* NULL if absent */

/* Element i of a float tensor (F32, F16, BF16, F64) as f32; 0 for other dtypes. */
float tern_st_get_f32(const tern_st_tensor *t, uint64_t i);

/* Reads <dir>/config.json of a BitNet HF checkpoint into *hp: hidden_size,
 * num_hidden_layers, num_attention_heads, num_key_value_heads (default
 * heads), intermediate_size, vocab_size, max_position_embeddings (default
 * 2048), rope_theta (default 10000), rms_norm_eps (default 1e-5),
 * tie_word_embeddings (default 0), bos/eos_token_id (eos may be a list: the
 * first); head_dim = hidden/heads. The arch comes from "architectures"[0]
 * (the tern_arch row of that class: BitNetForCausalLM -> "bitnet-b1.58",
 * LlamaForCausalLM -> "llama"; absent: "bitnet-b1.58"); "hidden_act", when
 * present, must be the row's. Refused (TERN_EUNSUP, one line): another class,
 * rope_scaling, attention_bias / mlp_bias true, and a Llama checkpoint
 * without quantization_config.quant_method "bitnet" (not ternary).
 * q (if non-NULL): online = 1 when quantization_config.quantization_mode is
 * "online" or absent; scale_divides = 1 when a quantization_config is present
 * whose linear_class is not "autobitlinear": transformers then runs BitLinear,
 * y = y_int / (input_scale * weight_scale), so W = ternary / weight_scale
 * (AutoBitLinear, 2B4T's class, multiplies). Validated with
 * tern_hparams_validate. */
typedef struct tern_hf_quant {
	int online;
	int scale_divides;
} tern_hf_quant;
int tern_hf_config_read(const char *dir, tern_hparams *hp, tern_hf_quant *q, tern_err *err);
/* The same from a JSON text (tests, fuzzing); `what` names it in errors. */
int tern_hf_config_parse(const char *json, size_t len, const char *what, tern_hparams *hp, tern_hf_quant *q,
			 tern_err *err);

#ifdef __cplusplus
}
#endif
#endif /* TERN_SAFETENSORS_H */
