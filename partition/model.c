/* model.c: hyper-parameters, presets and counts (see tern-model.h). */
#include "tern-model.h"

#include <stdio.h>
#include <string.h>

typedef struct {
	const char *name;
	int n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
	float theta;
} preset;

/* 700m and 3b are 1bitLLM's bitnet_b1_58-large / -3B; 2b4t is
 * microsoft/bitnet-b1.58-2B-4T; 7b..70b follow the Llama-2 shapes BitNet
 * b1.58 was scaled on; 100b widens the 70b shape to ~100B parameters
 * (116 layers of 8192 x 28672, Llama-3 vocabulary). */
static const preset presets[] = {
	{"125m", 768, 12, 12, 12, 2048, 32000, 2048, 10000.0f},
	{"700m", 1536, 24, 16, 16, 4096, 32002, 2048, 10000.0f},
	{"2b4t", 2560, 30, 20, 5, 6912, 128256, 4096, 500000.0f},
	{"3b", 3200, 26, 32, 32, 8640, 32002, 2048, 10000.0f},
	{"7b", 4096, 32, 32, 32, 11008, 32000, 4096, 10000.0f},
	{"13b", 5120, 40, 40, 40, 13824, 32000, 4096, 10000.0f},
	{"30b", 6656, 60, 52, 52, 17920, 32000, 4096, 10000.0f},
	{"70b", 8192, 80, 64, 8, 28672, 32000, 4096, 10000.0f},
	{"100b", 8192, 116, 64, 8, 28672, 128256, 4096, 500000.0f},
};

const char *tern_hparams_preset_names(void)
{
	return "125m 700m 2b4t 3b 7b 13b 30b 70b 100b";
}

int tern_hparams_preset(const char *name, tern_hparams *hp, tern_err *err)
{
	for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
		const preset *p = &presets[i];
		if (strcmp(p->name, name) != 0)
			continue;
		memset(hp, 0, sizeof *hp);
		snprintf(hp->arch, sizeof hp->arch, "bitnet-b1.58");
		hp->n_embd = p->n_embd;
		hp->n_layer = p->n_layer;
		hp->n_head = p->n_head;
		hp->n_head_kv = p->n_head_kv;
		hp->head_dim = p->n_embd / p->n_head;
		hp->n_ff = p->n_ff;
		hp->n_vocab = p->n_vocab;
		hp->n_ctx_train = p->n_ctx;
		hp->rope_theta = p->theta;
		hp->norm_eps = 1e-5f;
		hp->tied_embeddings = 1;
		if (p->n_vocab == 128256) {
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

uint64_t tern_hparams_kv_bytes_per_token_layer(const tern_hparams *hp)
{
	return 2ull * (uint64_t)hp->n_head_kv * (uint64_t)hp->head_dim * sizeof(float);
}
