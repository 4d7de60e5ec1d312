/* model.c: hyper-parameters, presets, counts, tensor names and shapes, and
 * the element types with their file codes (see tern-model.h). */
#include "tern-model.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ---- architectures ----------------------------------------------------------- */

/* The BitNet b1.58 graph (MODEL-FORMATS 1.2) under every name bitnet.cpp and
 * its forks give it ("bitnet" only with the b1.58 tensor set: the readers
 * find the sub-norms or fail naming them), and the Llama graph bitnet.cpp's
 * converter writes for LlamaForCausalLM ternary checkpoints
 * (HF1BitLLM/Llama3-8B-1.58, tiiuae/Falcon3-*-1.58bit): SwiGLU, no sub-norms,
 * q/k permuted in the GGUF (partition/README.md, issue 17). */
static const tern_arch archs[] = {
    {"bitnet-b1.58", TERN_FFN_RELU2, 1, 0, 0, 0, "BitNetForCausalLM", "relu2", TERN_DTYPE_I2_S},
    {"bitnet-25", TERN_FFN_RELU2, 1, 0, 0, 0, "BitNetForCausalLM", "relu2", TERN_DTYPE_I2_S},
    {"bitnet", TERN_FFN_RELU2, 1, 0, 0, 0, "BitNetForCausalLM", "relu2", TERN_DTYPE_I2_S},
    {"bitnet-1.58", TERN_FFN_RELU2, 1, 0, 0, 0, "BitNetForCausalLM", "relu2", TERN_DTYPE_I2_S},
    {"llama", TERN_FFN_SILU, 0, 1, 0, 0, "LlamaForCausalLM", "silu", TERN_DTYPE_I2_S},
    /* Qwen3 (transformers models/qwen3/modeling_qwen3.py): the Llama graph plus
     * an RMSNorm over each head's q and k before RoPE (rotate_half: NEOX, which
     * llama.cpp's converter keeps, no q/k permutation); PrismML Ternary-Bonsai */
    {"qwen3", TERN_FFN_SILU, 0, 0, 1, 0, "Qwen3ForCausalLM", "silu", TERN_DTYPE_Q2_0},
};
#define N_ARCHS (sizeof archs / sizeof archs[0])

const tern_arch *tern_arch_find(const char *name)
{
	for (size_t i = 0; name && i < N_ARCHS; i++)
		if (strcmp(archs[i].name, name) == 0)
			return &archs[i];
	return NULL;
}

const tern_arch *tern_arch_find_hf(const char *hf_class)
{
	for (size_t i = 0; hf_class && i < N_ARCHS; i++)
		if (strcmp(archs[i].hf_class, hf_class) == 0)
			return &archs[i];
	return NULL;
}

const char *tern_arch_names(void)
{
	return "bitnet-b1.58, bitnet-25, bitnet, bitnet-1.58, llama, qwen3";
}

int tern_norm_present(const tern_hparams *hp, tern_norm_kind n)
{
	const tern_arch *a = tern_arch_find(hp->arch);
	if (n == TERN_NORM_ATTN_SUB || n == TERN_NORM_FFN_SUB)
		return a && a->sub_norms;
	if (n == TERN_NORM_ATTN_Q || n == TERN_NORM_ATTN_K)
		return a && a->qk_norm;
	return (unsigned)n < TERN_NORM_COUNT;
}

/* ---- presets -------------------------------------------------------------------- */

typedef struct {
	const char *name;
	int n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
	float theta;
	const char *arch; /* NULL: bitnet-b1.58 */
	float eps;        /* 0: 1e-5 */
	int32_t bos, eos, eot; /* 0, 0, 0: from the vocabulary size (below) */
} preset;

/* 700m and 3b are 1bitLLM's bitnet_b1_58-large / -3B; 2b4t is
 * microsoft/bitnet-b1.58-2B-4T; 7b..70b follow the Llama-2 shapes BitNet
 * b1.58 was scaled on; 100b widens the 70b shape to ~100B parameters
 * (116 layers of 8192 x 28672, Llama-3 vocabulary). */
static const preset presets[] = {
	{"125m", 768, 12, 12, 12, 2048, 32000, 2048, 10000.0f, NULL, 0.0f, 0, 0, 0},
	{"700m", 1536, 24, 16, 16, 4096, 32002, 2048, 10000.0f, NULL, 0.0f, 0, 0, 0},
	{"2b4t", 2560, 30, 20, 5, 6912, 128256, 4096, 500000.0f, NULL, 0.0f, 0, 0, 0},
	{"3b", 3200, 26, 32, 32, 8640, 32002, 2048, 10000.0f, NULL, 0.0f, 0, 0, 0},
	{"7b", 4096, 32, 32, 32, 11008, 32000, 4096, 10000.0f, NULL, 0.0f, 0, 0, 0},
	{"13b", 5120, 40, 40, 40, 13824, 32000, 4096, 10000.0f, NULL, 0.0f, 0, 0, 0},
	{"30b", 6656, 60, 52, 52, 17920, 32000, 4096, 10000.0f, NULL, 0.0f, 0, 0, 0},
	{"70b", 8192, 80, 64, 8, 28672, 32000, 4096, 10000.0f, NULL, 0.0f, 0, 0, 0},
	{"100b", 8192, 116, 64, 8, 28672, 128256, 4096, 500000.0f, NULL, 0.0f, 0, 0, 0},
	/* HF1BitLLM/Llama3-8B-1.58-100B-tokens: Llama-3-8B-Instruct's shape */
	{"llama3-8b", 4096, 32, 32, 8, 14336, 128256, 8192, 500000.0f, "llama", 0.0f, 0, 0, 0},
	/* tiiuae/Falcon3-10B-Instruct-1.58bit (model card: 40 blocks, 12 query and 4 KV heads of
	 * 256, rope theta 1000042, 32K context, 131K vocabulary, SwiGLU; eps as Falcon3's configs) */
	{"falcon3-10b", 3072, 40, 12, 4, 23040, 131072, 32768, 1000042.0f, "llama", 1e-6f, 0, 0, 0},
	/* PrismML Ternary-Bonsai-8B: Qwen3-8B's published config (36 layers of 4096, 32 query and 8 KV
	 * heads of 128, FFN 12288, 151,936 vocabulary, rope theta 1e6, eps 1e-6, 40960 context,
	 * bos <|endoftext|> 151643, eos <|im_end|> 151645); that Bonsai keeps it exactly is UNCONFIRMED */
	{"bonsai-8b", 4096, 36, 32, 8, 12288, 151936, 40960, 1000000.0f, "qwen3", 1e-6f, 151643, 151645, -1},
};

const char *tern_hparams_preset_names(void)
{
	return "125m 700m 2b4t 3b 7b 13b 30b 70b 100b llama3-8b falcon3-10b bonsai-8b";
}

int tern_hparams_preset(const char *name, tern_hparams *hp, tern_err *err)
{
	for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
		const preset *p = &presets[i];
		if (strcmp(p->name, name) != 0)
			continue;
		memset(hp, 0, sizeof *hp);
		snprintf(hp->arch, sizeof hp->arch, "%s", p->arch ? p->arch : "bitnet-b1.58");
		hp->n_embd = p->n_embd;
		hp->n_layer = p->n_layer;
		hp->n_head = p->n_head;
		hp->n_head_kv = p->n_head_kv;
		hp->head_dim = p->n_embd / p->n_head;
		hp->n_ff = p->n_ff;
		hp->n_vocab = p->n_vocab;
		hp->n_ctx_train = p->n_ctx;
		hp->rope_theta = p->theta;
		hp->norm_eps = p->eps > 0.0f ? p->eps : 1e-5f;
		hp->tied_embeddings = 1;
		if (p->bos || p->eos) {
			hp->bos_id = p->bos;
			hp->eos_id = p->eos;
			hp->eot_id = p->eot;
		} else if (p->n_vocab == 128256) {
			hp->bos_id = 128000;
			hp->eos_id = 128001;
			hp->eot_id = 128009;
		} else {
			hp->bos_id = 1;
			hp->eos_id = 2;
			hp->eot_id = -1;
		}
		return 0;
	}
	return TERN_ERR(err, TERN_EINVAL, "unknown model preset '%s' (known: %s)", name, tern_hparams_preset_names());
}

int tern_hparams_validate(const tern_hparams *hp, tern_err *err)
{
	/* Limits far above any real model, low enough that products of them
	 * cannot overflow 64-bit byte counts. */
	TERN_RETURN_IF(!tern_arch_find(hp->arch), err, TERN_EUNSUP, "unsupported architecture '%.31s' (tern runs %s)",
		       hp->arch, tern_arch_names());
	TERN_RETURN_IF(hp->n_embd <= 0 || hp->n_embd > 65536, err, TERN_ERANGE, "absurd n_embd %d", hp->n_embd);
	TERN_RETURN_IF(hp->n_layer <= 0 || hp->n_layer > 1024, err, TERN_ERANGE, "absurd layer count %d",
		       hp->n_layer);
	TERN_RETURN_IF(hp->n_head <= 0 || hp->n_head > 1024 || hp->n_embd % hp->n_head != 0, err, TERN_ERANGE,
		       "head count %d does not divide n_embd %d", hp->n_head, hp->n_embd);
	TERN_RETURN_IF(hp->n_head_kv <= 0 || hp->n_head % hp->n_head_kv != 0, err, TERN_ERANGE,
		       "KV head count %d does not divide head count %d", hp->n_head_kv, hp->n_head);
	TERN_RETURN_IF(hp->head_dim != hp->n_embd / hp->n_head || hp->head_dim % 2 != 0, err, TERN_ERANGE,
		       "head_dim %d inconsistent with n_embd %d / n_head %d (and must be even for RoPE)",
		       hp->head_dim, hp->n_embd, hp->n_head);
	TERN_RETURN_IF(hp->n_ff <= 0 || hp->n_ff > 262144, err, TERN_ERANGE, "absurd n_ff %d", hp->n_ff);
	TERN_RETURN_IF(hp->n_vocab <= 0 || hp->n_vocab > 4000000, err, TERN_ERANGE, "absurd vocabulary size %d",
		       hp->n_vocab);
	TERN_RETURN_IF(hp->n_ctx_train <= 0 || hp->n_ctx_train > (1 << 22), err, TERN_ERANGE,
		       "absurd context length %d", hp->n_ctx_train);
	TERN_RETURN_IF(!(hp->norm_eps > 0.0f && hp->norm_eps < 1.0f), err, TERN_ERANGE, "absurd norm epsilon %g",
		       (double)hp->norm_eps);
	TERN_RETURN_IF(!(hp->rope_theta > 0.0f), err, TERN_ERANGE, "absurd rope theta %g", (double)hp->rope_theta);
	return 0;
}

uint64_t tern_hparams_layer_params(const tern_hparams *hp)
{
	const uint64_t d = (uint64_t)hp->n_embd, kv = (uint64_t)hp->n_head_kv * (uint64_t)hp->head_dim;
	const uint64_t ff = (uint64_t)hp->n_ff;
	return 2 * d * d + 2 * d * kv + 3 * d * ff;
}

uint64_t tern_hparams_total_params(const tern_hparams *hp)
{
	const uint64_t emb = (uint64_t)hp->n_vocab * (uint64_t)hp->n_embd;
	return tern_hparams_layer_params(hp) * (uint64_t)hp->n_layer + emb * (hp->tied_embeddings ? 1 : 2);
}

uint64_t tern_hparams_kv_bytes_per_token_layer(const tern_hparams *hp, int kv_type)
{
	if (!tern_kv_type_ok(kv_type))
		return 0;
	return 2ull * (uint64_t)hp->n_head_kv * (uint64_t)hp->head_dim * (uint64_t)tern_dtype_size(kv_type);
}

uint64_t tern_hparams_kv_pool_bytes_layer(const tern_hparams *hp, int kv_type, int n_seqs, int n_ctx, int block)
{
	if (n_seqs <= 0 || n_ctx <= 0 || block <= 0)
		return 0;
	const uint64_t blocks = (uint64_t)n_seqs * (((uint64_t)n_ctx + (uint64_t)block - 1) / (uint64_t)block);
	return tern_hparams_kv_bytes_per_token_layer(hp, kv_type) * blocks * (uint64_t)block;
}

/* ---- the tensors of a layer ------------------------------------------------ */

static const char *const proj_names[TERN_PROJ_COUNT] = {"q", "k", "v", "o", "gate", "up", "down"};
static const char *const proj_gguf[TERN_PROJ_COUNT] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
						       "ffn_gate", "ffn_up", "ffn_down"};
static const char *const proj_hf[TERN_PROJ_COUNT] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
						     "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
						     "mlp.down_proj"};
static const char *const norm_gguf[TERN_NORM_COUNT] = {"attn_norm",   "attn_sub_norm", "ffn_norm",   "ffn_sub_norm",
						       "attn_q_norm", "attn_k_norm",   "output_norm"};
static const char *const norm_hf[TERN_NORM_COUNT] = {"input_layernorm",  "self_attn.attn_sub_norm",
						     "post_attention_layernorm", "mlp.ffn_sub_norm",
						     "self_attn.q_norm", "self_attn.k_norm", "norm"};

const char *tern_proj_name(tern_proj p)
{
	return (unsigned)p < TERN_PROJ_COUNT ? proj_names[p] : "?";
}

const char *tern_proj_gguf(tern_proj p)
{
	return (unsigned)p < TERN_PROJ_COUNT ? proj_gguf[p] : "?";
}

const char *tern_norm_name(tern_norm_kind n)
{
	return (unsigned)n < TERN_NORM_COUNT ? norm_gguf[n] : "?";
}

void tern_proj_gguf_name(tern_proj p, int layer, char *buf, size_t len)
{
	snprintf(buf, len, "blk.%d.%s.weight", layer, tern_proj_gguf(p));
}

void tern_norm_gguf_name(tern_norm_kind n, int layer, char *buf, size_t len)
{
	if (n == TERN_NORM_OUTPUT)
		snprintf(buf, len, "output_norm.weight");
	else
		snprintf(buf, len, "blk.%d.%s.weight", layer, tern_norm_name(n));
}

void tern_proj_hf_name(tern_proj p, int layer, char *buf, size_t len)
{
	snprintf(buf, len, "model.layers.%d.%s.weight", layer, (unsigned)p < TERN_PROJ_COUNT ? proj_hf[p] : "?");
}

void tern_norm_hf_name(tern_norm_kind n, int layer, char *buf, size_t len)
{
	if (n == TERN_NORM_OUTPUT)
		snprintf(buf, len, "model.norm.weight");
	else
		snprintf(buf, len, "model.layers.%d.%s.weight", layer, (unsigned)n < TERN_NORM_COUNT ? norm_hf[n] : "?");
}

const char *tern_dense_gguf(tern_dense_kind d)
{
	static const char *const names[TERN_DENSE_COUNT] = {"token_embd", "output"};
	return (unsigned)d < TERN_DENSE_COUNT ? names[d] : "?";
}

const char *tern_dense_gguf_name(tern_dense_kind d)
{
	static const char *const names[TERN_DENSE_COUNT] = {"token_embd.weight", "output.weight"};
	return (unsigned)d < TERN_DENSE_COUNT ? names[d] : "?";
}

const char *tern_dense_hf_name(tern_dense_kind d)
{
	static const char *const names[TERN_DENSE_COUNT] = {"model.embed_tokens.weight", "lm_head.weight"};
	return (unsigned)d < TERN_DENSE_COUNT ? names[d] : "?";
}

void tern_proj_shape(const tern_hparams *hp, tern_proj p, int *m, int *k)
{
	const int kv = hp->n_head_kv * hp->head_dim;
	switch (p) {
	case TERN_PROJ_K:
	case TERN_PROJ_V: *m = kv, *k = hp->n_embd; break;
	case TERN_PROJ_GATE:
	case TERN_PROJ_UP: *m = hp->n_ff, *k = hp->n_embd; break;
	case TERN_PROJ_DOWN: *m = hp->n_embd, *k = hp->n_ff; break;
	default: *m = hp->n_embd, *k = hp->n_embd; break;
	}
}

int tern_norm_len(const tern_hparams *hp, tern_norm_kind n)
{
	if (n == TERN_NORM_ATTN_Q || n == TERN_NORM_ATTN_K)
		return hp->head_dim;
	return n == TERN_NORM_FFN_SUB ? hp->n_ff : hp->n_embd;
}

/* ---- element types and their file codes ------------------------------------- */

#define NO_CODE UINT32_MAX

/* One row per tern_dtype: what each file format calls it. The GGUF column is
 * ggml_type; the shard column is the dtype field of a shard index entry
 * (tern-shard.h), fixed by the plan format. */
static const struct {
	const char *name;
	size_t size;
	uint32_t ggml;
	const char *safetensors;
	uint32_t shard;
} dtypes[TERN_DTYPE_COUNT] = {
    [TERN_DTYPE_F32] = {"f32", 4, 0, "F32", 1},
    [TERN_DTYPE_F16] = {"f16", 2, 1, "F16", 2},
    [TERN_DTYPE_BF16] = {"bf16", 2, 30, "BF16", 3},
    [TERN_DTYPE_F64] = {"f64", 8, 28, "F64", NO_CODE},
    [TERN_DTYPE_I8] = {"i8", 1, 24, "I8", NO_CODE},
    [TERN_DTYPE_U8] = {"u8", 1, NO_CODE, "U8", 4},
    [TERN_DTYPE_I16] = {"i16", 2, 25, "I16", NO_CODE},
    [TERN_DTYPE_U16] = {"u16", 2, NO_CODE, "U16", NO_CODE},
    [TERN_DTYPE_I32] = {"i32", 4, 26, "I32", NO_CODE},
    [TERN_DTYPE_U32] = {"u32", 4, NO_CODE, "U32", NO_CODE},
    [TERN_DTYPE_I64] = {"i64", 8, 27, "I64", NO_CODE},
    [TERN_DTYPE_U64] = {"u64", 8, NO_CODE, "U64", NO_CODE},
    [TERN_DTYPE_BOOL] = {"bool", 1, NO_CODE, "BOOL", NO_CODE},
    [TERN_DTYPE_F8_E4M3] = {"f8_e4m3", 1, NO_CODE, "F8_E4M3", NO_CODE},
    [TERN_DTYPE_F8_E5M2] = {"f8_e5m2", 1, NO_CODE, "F8_E5M2", NO_CODE},
    [TERN_DTYPE_I2_S] = {"i2_s", 0, 36, NULL, NO_CODE},
    [TERN_DTYPE_TL1] = {"tl1", 0, 38, NULL, NO_CODE},
    [TERN_DTYPE_TL2] = {"tl2", 0, 39, NULL, NO_CODE},
    [TERN_DTYPE_TERNARY] = {"ternary", 0, NO_CODE, NULL, 0},
    [TERN_DTYPE_Q2_0] = {"q2_0", 0, 42, NULL, 5},
};

static int dtype_ok(int dt)
{
	return dt >= 0 && dt < TERN_DTYPE_COUNT;
}

const char *tern_dtype_name(int dt)
{
	return dtype_ok(dt) ? dtypes[dt].name : "unknown";
}

size_t tern_dtype_size(int dt)
{
	return dtype_ok(dt) ? dtypes[dt].size : 0;
}

/* The dtype whose code in the shard column (shard != 0) or the GGUF column is code. */
static int dtype_of_code(int shard, uint32_t code)
{
	for (int d = 0; code != NO_CODE && d < TERN_DTYPE_COUNT; d++)
		if ((shard ? dtypes[d].shard : dtypes[d].ggml) == code)
			return d;
	return TERN_DTYPE_NONE;
}

int tern_dtype_of_ggml(uint32_t ggml_type)
{
	return dtype_of_code(0, ggml_type);
}

uint32_t tern_dtype_ggml(int dt)
{
	return dtype_ok(dt) ? dtypes[dt].ggml : NO_CODE;
}

int tern_dtype_of_safetensors(const char *name)
{
	for (int d = 0; name && d < TERN_DTYPE_COUNT; d++)
		if (dtypes[d].safetensors && strcmp(dtypes[d].safetensors, name) == 0)
			return d;
	return TERN_DTYPE_NONE;
}

const char *tern_dtype_safetensors(int dt)
{
	return dtype_ok(dt) ? dtypes[dt].safetensors : NULL;
}

int tern_dtype_of_shard(uint32_t code)
{
	return dtype_of_code(1, code);
}

uint32_t tern_dtype_shard(int dt)
{
	return dtype_ok(dt) ? dtypes[dt].shard : NO_CODE;
}

int tern_tokenizer_type(const char *model, const char *pre, tern_err *err)
{
	TERN_RETURN_IF(!model, err, TERN_EINVAL, "no tokenizer.ggml.model");
	if (!strcmp(model, "llama"))
		return 2;
	TERN_RETURN_IF(strcmp(model, "gpt2") != 0, err, TERN_EUNSUP,
		       "tokenizer.ggml.model \"%s\" is not supported (gpt2, llama)", model);
	/* Qwen2's rules (LLAMA_VOCAB_PRE_TYPE_QWEN2; Qwen3 GGUFs say "qwen2") */
	if (pre && !strcmp(pre, "qwen2"))
		return 3;
	/* llama.cpp runs "falcon3" with the LLaMA-3 rules (LLAMA_VOCAB_PRE_TYPE_LLAMA3) */
	TERN_RETURN_IF(pre && *pre && strcmp(pre, "default") && strcmp(pre, "llama3") && strcmp(pre, "llama-v3") &&
			       strcmp(pre, "llama-bpe") && strcmp(pre, "falcon3"),
		       err, TERN_EUNSUP,
		       "pre-tokenizer \"%s\" is not supported (only llama3 / llama-v3 / llama-bpe / falcon3 / qwen2)", pre);
	return 1;
}

/* ---- KV cache element type -------------------------------------------------- */

int tern_kv_type_ok(int dt)
{
	return dt == TERN_DTYPE_F32 || dt == TERN_DTYPE_F16 || dt == TERN_DTYPE_BF16;
}

int tern_kv_type_parse(const char *s, const char *opt, int *out, tern_err *err)
{
	static const int types[] = {TERN_DTYPE_F32, TERN_DTYPE_F16, TERN_DTYPE_BF16};
	for (size_t i = 0; s && i < sizeof types / sizeof types[0]; i++) {
		if (strcmp(s, tern_dtype_name(types[i])) == 0) {
			*out = types[i];
			return 0;
		}
	}
	return TERN_ERR(err, TERN_EINVAL, "bad value '%s' for %s: expected f32, f16 or bf16", s ? s : "", opt);
}
