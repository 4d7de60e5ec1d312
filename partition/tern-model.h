/* tern-model.h: the one description of a BitNet b1.58 model that
 * partition/, node/ and coordinator/ share: hyper-parameters, named shape
 * presets, the per-token byte counts the planner balances on, the
 * projections and norms of a layer with their shapes and their GGUF and
 * Hugging Face tensor names, and the element types (tern_dtype) with the
 * codes each file format gives them (GGUF ggml_type ids, safetensors dtype
 * strings, shard dtype codes), mapped in one table (model.c). */
#ifndef TERN_MODEL_H
#define TERN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"

typedef struct tern_hparams {
	char arch[32];        /* a name of the architecture table (tern_arch_find): "bitnet-b1.58", "llama", ... */
	int n_embd;           /* hidden size */
	int n_layer;
	int n_head;
	int n_head_kv;        /* GQA: query head h uses KV head h / (n_head / n_head_kv) */
	int head_dim;         /* n_embd / n_head */
	int n_ff;             /* FFN inner size */
	int n_vocab;
	int n_ctx_train;      /* context length the model was trained for */
	float rope_theta;
	float norm_eps;       /* RMSNorm epsilon (every norm) */
	int tied_embeddings;  /* lm_head = token embedding matrix */
	int32_t bos_id, eos_id, eot_id; /* -1 when absent */
} tern_hparams;

/* ---- architectures ---------------------------------------------------------
 *
 * What differs between the model families tern runs, as data: one row per
 * architecture name (GGUF general.architecture, the arch field of a plan),
 * read by the model readers, the engine and the synthetic writer. Nothing
 * outside this table asks which architecture a model is. */

typedef enum {
	TERN_FFN_RELU2 = 0, /* BitNet b1.58: relu(gate)^2 * up */
	TERN_FFN_SILU,      /* Llama (SwiGLU): silu(gate) * up, silu(x) = x / (1 + exp(-x)) */
} tern_ffn_act;

typedef struct tern_arch {
	const char *name;         /* general.architecture */
	tern_ffn_act ffn_act;     /* the activation of the gated FFN */
	int sub_norms;            /* attn_sub_norm before o, ffn_sub_norm before down (else neither) */
	int gguf_qk_interleaved;  /* GGUF q/k rows permuted for llama.cpp's interleaved RoPE by the
				   * converter (row h*hd + 2i + j holds HF row h*hd + j*hd/2 + i);
				   * tern_source undoes it, the engine always runs RoPE NEOX */
	int qk_norm;              /* RMSNorm over each head's q and k (head_dim weights each,
				   * attn_q_norm / attn_k_norm) after the projections, before RoPE (Qwen3) */
	int bias;                 /* bias terms on the projections: 0 in every architecture tern reads */
	const char *hf_class;     /* config.json "architectures" entry of the HF checkpoint */
	const char *hf_act;       /* config.json "hidden_act" */
	int synth_proj_dtype;     /* the projections' type in the family's own GGUF, as tern-partition synth
				   * writes it: TERN_DTYPE_I2_S (bitnet.cpp) or TERN_DTYPE_Q2_0 (Ternary-Bonsai) */
} tern_arch;

/* The row of an architecture name; NULL if tern does not run it. */
const tern_arch *tern_arch_find(const char *name);
/* The row of a config.json "architectures" class; NULL if unknown. */
const tern_arch *tern_arch_find_hf(const char *hf_class);
/* Comma-separated names, for error messages. */
const char *tern_arch_names(void);

/* Named shapes (MODEL-FORMATS.md section 1 for 2b4t): BitNet b1.58 "125m",
 * "700m", "2b4t", "3b", "7b", "13b", "30b", "70b", "100b"; arch "llama"
 * (published config shapes) "llama3-8b", "falcon3-10b"; arch "qwen3" "bonsai-8b".
 * Returns TERN_EINVAL for an unknown name. */
int tern_hparams_preset(const char *name, tern_hparams *hp, tern_err *err);
/* Space-separated list of preset names, for help texts. */
const char *tern_hparams_preset_names(void);

/* Checks that the numbers are a consistent, sane model (a known arch name,
 * positive, heads divide n_embd, n_head_kv divides n_head, sizes below
 * absurd limits). */
int tern_hparams_validate(const tern_hparams *hp, tern_err *err);

/* The tokenizers tern runs (coordinator/text), the one list every tool
 * checks against: tokenizer.ggml.model "gpt2" (byte-level BPE) with the
 * pre-tokenizer "llama3", "llama-v3", "llama-bpe" or "falcon3" (missing or
 * "default": the same LLaMA-3 rules), or "llama" (SentencePiece; pre ignored). pre may
 * be NULL. Returns 1 for gpt2 with the LLaMA-3 rules, 3 for gpt2 with pre
 * "qwen2" (Qwen2's rules: one digit per piece, merges always applied), 2 for
 * llama; otherwise TERN_EUNSUP with
 * 'tokenizer.ggml.model "X" is not supported (gpt2, llama)' or
 * 'pre-tokenizer "X" is not supported (only llama3 / llama-v3 / llama-bpe / falcon3 / qwen2)'. */
int tern_tokenizer_type(const char *model, const char *pre, tern_err *err);

/* Parameter counts. */
uint64_t tern_hparams_layer_params(const tern_hparams *hp);   /* ternary weights of one layer */
uint64_t tern_hparams_total_params(const tern_hparams *hp);   /* all layers + embeddings (+ head if untied) */

/* KV cache bytes per token per layer: K and V of n_head_kv x head_dim
 * elements of kv_type (a tern_kv_type_ok type); 0 for any other type. */
uint64_t tern_hparams_kv_bytes_per_token_layer(const tern_hparams *hp, int kv_type);
/* Positions per block of the engine's paged KV pool when nothing else is said
 * (node/README.md, "The KV cache"). */
#define TERN_KV_BLOCK_DEFAULT 32
/* KV bytes per layer of a pool that holds n_seqs sequences of n_ctx positions
 * each in blocks of `block` positions: n_seqs x ceil(n_ctx / block) blocks. */
uint64_t tern_hparams_kv_pool_bytes_layer(const tern_hparams *hp, int kv_type, int n_seqs, int n_ctx, int block);

/* ---- the tensors of a layer ------------------------------------------------ */

typedef enum {
	TERN_PROJ_Q = 0, /* attn_q      / self_attn.q_proj : m = n_embd,          k = n_embd */
	TERN_PROJ_K,     /* attn_k      / self_attn.k_proj : m = n_head_kv*hd,    k = n_embd */
	TERN_PROJ_V,     /* attn_v      / self_attn.v_proj : m = n_head_kv*hd,    k = n_embd */
	TERN_PROJ_O,     /* attn_output / self_attn.o_proj : m = n_embd,          k = n_embd */
	TERN_PROJ_GATE,  /* ffn_gate    / mlp.gate_proj    : m = n_ff,            k = n_embd */
	TERN_PROJ_UP,    /* ffn_up      / mlp.up_proj      : m = n_ff,            k = n_embd */
	TERN_PROJ_DOWN,  /* ffn_down    / mlp.down_proj    : m = n_embd,          k = n_ff */
	TERN_PROJ_COUNT
} tern_proj;

typedef enum {
	TERN_NORM_ATTN = 0, /* attn_norm     / input_layernorm          (n_embd) */
	TERN_NORM_ATTN_SUB, /* attn_sub_norm / self_attn.attn_sub_norm  (n_embd) */
	TERN_NORM_FFN,      /* ffn_norm      / post_attention_layernorm (n_embd) */
	TERN_NORM_FFN_SUB,  /* ffn_sub_norm  / mlp.ffn_sub_norm         (n_ff) */
	TERN_NORM_ATTN_Q,   /* attn_q_norm   / self_attn.q_norm         (head_dim), every head of q */
	TERN_NORM_ATTN_K,   /* attn_k_norm   / self_attn.k_norm         (head_dim), every head of k */
	TERN_NORM_OUTPUT,   /* output_norm   / model.norm               (n_embd), layer ignored */
	TERN_NORM_COUNT
} tern_norm_kind;
#define TERN_LAYER_NORMS 6 /* a layer holds TERN_NORM_ATTN .. TERN_NORM_ATTN_K */

typedef enum {
	TERN_DENSE_TOKEN_EMBD = 0, /* token_embd / model.embed_tokens: (n_vocab, n_embd) */
	TERN_DENSE_OUTPUT,         /* output / lm_head (n_vocab, n_embd); absent when tied */
	TERN_DENSE_COUNT
} tern_dense_kind;

/* Short names "q","k","v","o","gate","up","down"; "?" out of range. */
const char *tern_proj_name(tern_proj p);
/* GGUF stems "attn_q", ..., "ffn_down" / "attn_norm", ..., "output_norm" /
 * "token_embd", "output". */
const char *tern_proj_gguf(tern_proj p);
const char *tern_norm_name(tern_norm_kind n);
const char *tern_dense_gguf(tern_dense_kind d);
/* Full tensor names of layer `layer` into buf:
 *   GGUF "blk.3.attn_q.weight", "output_norm.weight";
 *   HF   "model.layers.3.self_attn.q_proj.weight", "model.norm.weight". */
void tern_proj_gguf_name(tern_proj p, int layer, char *buf, size_t len);
void tern_norm_gguf_name(tern_norm_kind n, int layer, char *buf, size_t len);
void tern_proj_hf_name(tern_proj p, int layer, char *buf, size_t len);
void tern_norm_hf_name(tern_norm_kind n, int layer, char *buf, size_t len);
/* Dense tensors: "token_embd.weight", "output.weight" / "model.embed_tokens.weight",
 * "lm_head.weight"; "?" out of range. */
const char *tern_dense_gguf_name(tern_dense_kind d);
const char *tern_dense_hf_name(tern_dense_kind d);
/* 1 if layer norm n exists in hp's architecture (the sub-norms only where
 * tern_arch.sub_norms, the q/k norms only where tern_arch.qk_norm;
 * TERN_NORM_OUTPUT always). A norm that does not exist is not read from a
 * file; the shards carry an absent sub-norm as ones, an absent q/k norm not at
 * all, and the engine never applies either. */
int tern_norm_present(const tern_hparams *hp, tern_norm_kind n);
/* Output rows (m) and inputs (k) of a projection; width of a norm vector. */
void tern_proj_shape(const tern_hparams *hp, tern_proj p, int *m, int *k);
int tern_norm_len(const tern_hparams *hp, tern_norm_kind n);

/* ---- element types ---------------------------------------------------------- */

typedef enum {
	TERN_DTYPE_NONE = -1, /* a file code tern does not name (e.g. GGUF q4_0) */
	TERN_DTYPE_F32 = 0,
	TERN_DTYPE_F16,
	TERN_DTYPE_BF16,
	TERN_DTYPE_F64,
	TERN_DTYPE_I8,
	TERN_DTYPE_U8, /* also HF packed ternary: 4 codes per byte (MODEL-FORMATS 4.2) */
	TERN_DTYPE_I16,
	TERN_DTYPE_U16,
	TERN_DTYPE_I32,
	TERN_DTYPE_U32,
	TERN_DTYPE_I64,
	TERN_DTYPE_U64,
	TERN_DTYPE_BOOL,
	TERN_DTYPE_F8_E4M3,
	TERN_DTYPE_F8_E5M2,
	TERN_DTYPE_I2_S,    /* bitnet.cpp: 2-bit codes in 128/32 blocks + 32-byte tail (float scale first) */
	TERN_DTYPE_TL1,     /* bitnet.cpp LUT packings: size known, data not readable */
	TERN_DTYPE_TL2,
	TERN_DTYPE_TERNARY, /* a plan shard's packed ternary matrix (tern_packing says which) */
	TERN_DTYPE_Q2_0,    /* ggml Q2_0 (type 42): 18-byte blocks, an f16 scale per 64 weights (kernels/tern-gq.h);
			       a GGUF's and a plan shard's group-scaled projection, stored as is */
	TERN_DTYPE_COUNT
} tern_dtype;

/* "f32", "f16", "bf16", "i2_s", "ternary", ...; "unknown" out of range. */
const char *tern_dtype_name(int dt);
/* Bytes per element; 0 for the packed types and out of range. */
size_t tern_dtype_size(int dt);

/* File codes. Each returns TERN_DTYPE_NONE (or the "none" code) when the
 * other side has no counterpart. */
int tern_dtype_of_ggml(uint32_t ggml_type);        /* GGUF ggml_type id -> tern_dtype */
uint32_t tern_dtype_ggml(int dt);                  /* tern_dtype -> ggml_type id; UINT32_MAX if none */
int tern_dtype_of_safetensors(const char *name);   /* "BF16" -> TERN_DTYPE_BF16 */
const char *tern_dtype_safetensors(int dt);        /* TERN_DTYPE_BF16 -> "BF16"; NULL if none */
int tern_dtype_of_shard(uint32_t code);            /* shard index dtype code -> tern_dtype */
uint32_t tern_dtype_shard(int dt);                 /* tern_dtype -> shard code; UINT32_MAX if none */

/* ---- KV cache element type ---------------------------------------------------
 * The KV cache stores K and V in one of TERN_DTYPE_F32, F16 (the default) or
 * BF16, a tern_dtype, named "f32", "f16", "bf16" as tern_dtype_name says. */
#define TERN_KV_TYPE_DEFAULT TERN_DTYPE_F16
/* 1 if dt is a KV cache type (F32, F16, BF16). */
int tern_kv_type_ok(int dt);
/* The one parser of --kv-type (every CLI): "f32", "f16" or "bf16" into *out;
 * anything else TERN_EINVAL "bad value 'X' for OPT: expected f32, f16 or bf16"
 * (opt: the flag's name as the user typed it, e.g. "--kv-type"). */
int tern_kv_type_parse(const char *s, const char *opt, int *out, tern_err *err);

#endif /* TERN_MODEL_H */
