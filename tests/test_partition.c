/* test_partition.c: partition/ — checksums (libxxhash must give the digests
 * the plan format was written with; more with the model readers). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "tern-model.h"
#include "tern-test.h"

static void test_xxh64_known_answers(void)
{
	/* Reference values from xxhsum -H1 (Debian's xxhash package). */
	TT_CHECK(XXH64(NULL, 0, 0) == 0xef46db3751d8e999ULL);
	TT_CHECK(XXH64("a", 1, 0) == 0xd24ec4f1a98c6e5bULL);
	TT_CHECK(XXH64("abc", 3, 0) == 0x44bc2cf5ad770999ULL);
	char x[1000];
	memset(x, 'x', sizeof x);
	TT_CHECK(XXH64(x, sizeof x, 0) == 0x4cb9a3b69cb700e1ULL);
	/* A different seed gives a different hash. */
	TT_CHECK(XXH64("abc", 3, 1) != XXH64("abc", 3, 0));
}

static void test_xxh64_streaming_equals_oneshot(void)
{
	enum { N = 4099 };
	uint8_t *buf = malloc(N);
	TT_REQUIRE(buf != NULL);
	uint32_t s = 12345;
	for (int i = 0; i < N; i++) {
		s = s * 1664525u + 1013904223u;
		buf[i] = (uint8_t)(s >> 24);
	}
	for (size_t len = 0; len <= N; len += (len < 100 ? 1 : 97)) {
		const uint64_t want = XXH64(buf, len, 7);
		/* Feed in uneven pieces that cross the 32-byte stripe boundary. */
		XXH64_state_t st;
		XXH64_reset(&st, 7);
		size_t off = 0, piece = 1;
		while (off < len) {
			size_t n = piece < len - off ? piece : len - off;
			XXH64_update(&st, buf + off, n);
			off += n;
			piece = piece * 3 % 71 + 1;
		}
		TT_CHECKF(XXH64_digest(&st) == want, "len %zu", len);
	}
	/* One flipped bit anywhere changes the hash. */
	const uint64_t h0 = XXH64(buf, N, 0);
	for (int i = 0; i < N; i += 511) {
		buf[i] ^= 0x10;
		TT_CHECK(XXH64(buf, N, 0) != h0);
		buf[i] ^= 0x10;
	}
	free(buf);
}

static void test_presets(void)
{
	tern_hparams hp;
	tern_err e;
	TT_REQUIRE(tern_hparams_preset("2b4t", &hp, &e) == 0);
	/* MODEL-FORMATS.md 1.1: the real 2B4T shape. */
	TT_EQ_INT(hp.n_embd, 2560);
	TT_EQ_INT(hp.n_layer, 30);
	TT_EQ_INT(hp.n_head_kv, 5);
	TT_EQ_INT(hp.head_dim, 128);
	TT_EQ_INT(hp.n_ff, 6912);
	TT_EQ_INT(hp.n_vocab, 128256);
	TT_EQ_INT(hp.bos_id, 128000);
	TT_EQ_INT(tern_hparams_validate(&hp, &e), 0);
	/* 30 x (2*2560^2 + 2*2560*640 + 3*2560*6912) + 128256*2560 */
	TT_CHECK(tern_hparams_total_params(&hp) == 30ull * 69468160ull + 328335360ull);
	TT_EQ_INT(tern_hparams_kv_bytes_per_token_layer(&hp, TERN_DTYPE_F32), 2 * 640 * 4);
	TT_EQ_INT(tern_hparams_kv_bytes_per_token_layer(&hp, TERN_DTYPE_F16), 2 * 640 * 2);
	TT_EQ_INT(tern_hparams_kv_bytes_per_token_layer(&hp, TERN_DTYPE_BF16), 2 * 640 * 2);
	TT_EQ_INT(tern_hparams_kv_bytes_per_token_layer(&hp, TERN_DTYPE_I8), 0);
	/* 30 layers x 4096 positions of f32 K and V: the 629 MB per slot of issue 16 */
	TT_CHECK(30 * 4096 * tern_hparams_kv_bytes_per_token_layer(&hp, TERN_DTYPE_F32) == 629145600ull);
	/* the paged pool counts whole blocks: 4097 positions take 129 blocks of 32 */
	TT_CHECK(tern_hparams_kv_pool_bytes_layer(&hp, TERN_DTYPE_F16, 3, 4096, 32) ==
		 3ull * 4096 * tern_hparams_kv_bytes_per_token_layer(&hp, TERN_DTYPE_F16));
	TT_CHECK(tern_hparams_kv_pool_bytes_layer(&hp, TERN_DTYPE_F16, 1, 4097, 32) ==
		 129ull * 32 * tern_hparams_kv_bytes_per_token_layer(&hp, TERN_DTYPE_F16));
	TT_EQ_INT(tern_hparams_kv_pool_bytes_layer(&hp, TERN_DTYPE_F16, 1, 0, 32), 0);
	{
		int kt = -1;
		TT_EQ_INT(tern_kv_type_parse("f16", "--kv-type", &kt, &e), 0);
		TT_EQ_INT(kt, TERN_DTYPE_F16);
		TT_EQ_INT(tern_kv_type_parse("bf16", "--kv-type", &kt, &e), 0);
		TT_EQ_INT(kt, TERN_DTYPE_BF16);
		TT_EQ_INT(tern_kv_type_parse("F16", "--kv-type", &kt, &e), TERN_EINVAL);
		TT_CHECK(strstr(e.msg, "bad value 'F16' for --kv-type: expected f32, f16 or bf16") != NULL);
		TT_EQ_INT(tern_kv_type_parse("i8", "--kv-type", &kt, &e), TERN_EINVAL);
		TT_EQ_INT(kt, TERN_DTYPE_BF16);
	}
	/* Every preset is valid, and the names say roughly how big they are. */
	const char *names[] = {"125m", "700m", "2b4t", "3b", "7b", "13b", "30b", "70b", "100b"};
	const double billions[] = {0.125, 0.7, 2.4, 3.3, 6.7, 13, 32, 69, 100};
	for (int i = 0; i < 9; i++) {
		TT_REQUIRE(tern_hparams_preset(names[i], &hp, &e) == 0);
		TT_CHECKF(tern_hparams_validate(&hp, &e) == 0, "%s: %s", names[i], e.msg);
		const double b = (double)tern_hparams_total_params(&hp) / 1e9;
		TT_CHECKF(b > billions[i] * 0.75 && b < billions[i] * 1.3, "%s has %.2fB parameters", names[i], b);
	}
	TT_EQ_INT(tern_hparams_preset("5b", &hp, &e), TERN_EINVAL);
	TT_CHECK(strstr(e.msg, "unknown model preset '5b'") != NULL);
	TT_REQUIRE(tern_hparams_preset("7b", &hp, &e) == 0);
	hp.n_head_kv = 3;
	TT_EQ_INT(tern_hparams_validate(&hp, &e), TERN_ERANGE);
	hp.n_head_kv = 8;
	hp.n_embd = 0;
	TT_EQ_INT(tern_hparams_validate(&hp, &e), TERN_ERANGE);
}

static void test_tensor_names_and_shapes(void)
{
	tern_hparams hp;
	tern_err e;
	TT_REQUIRE(tern_hparams_preset("2b4t", &hp, &e) == 0);
	char b[128];
/* NAME_IS(f, kind, layer, "name"): f writes that name into b */
#define NAME_IS(f, kind, layer, want) (f(kind, layer, b, sizeof b), strcmp(b, want) == 0)
	TT_CHECK(NAME_IS(tern_proj_gguf_name, TERN_PROJ_O, 7, "blk.7.attn_output.weight"));
	TT_CHECK(NAME_IS(tern_proj_hf_name, TERN_PROJ_GATE, 3, "model.layers.3.mlp.gate_proj.weight"));
	TT_CHECK(NAME_IS(tern_norm_gguf_name, TERN_NORM_FFN_SUB, 2, "blk.2.ffn_sub_norm.weight"));
	TT_CHECK(NAME_IS(tern_norm_hf_name, TERN_NORM_ATTN_SUB, 0, "model.layers.0.self_attn.attn_sub_norm.weight"));
	TT_CHECK(NAME_IS(tern_norm_gguf_name, TERN_NORM_OUTPUT, 5, "output_norm.weight"));
	TT_CHECK(NAME_IS(tern_norm_hf_name, TERN_NORM_OUTPUT, 5, "model.norm.weight"));
	TT_CHECK(NAME_IS(tern_norm_gguf_name, TERN_NORM_ATTN_Q, 1, "blk.1.attn_q_norm.weight"));
	TT_CHECK(NAME_IS(tern_norm_hf_name, TERN_NORM_ATTN_K, 4, "model.layers.4.self_attn.k_norm.weight"));
#undef NAME_IS
	TT_CHECK(strcmp(tern_dense_gguf_name(TERN_DENSE_OUTPUT), "output.weight") == 0);
	TT_CHECK(strcmp(tern_dense_hf_name(TERN_DENSE_TOKEN_EMBD), "model.embed_tokens.weight") == 0);
	TT_CHECK(strcmp(tern_proj_name(TERN_PROJ_DOWN), "down") == 0 && strcmp(tern_proj_gguf(TERN_PROJ_K), "attn_k") == 0);
	TT_CHECK(strcmp(tern_proj_name(TERN_PROJ_COUNT), "?") == 0 && strcmp(tern_norm_name(TERN_NORM_COUNT), "?") == 0);
	/* 2b4t (MODEL-FORMATS section 1): kv = 5 heads of 128, ff 6912. */
	int m, k;
	tern_proj_shape(&hp, TERN_PROJ_K, &m, &k);
	TT_CHECK(m == 640 && k == 2560);
	tern_proj_shape(&hp, TERN_PROJ_DOWN, &m, &k);
	TT_CHECK(m == 2560 && k == 6912);
	tern_proj_shape(&hp, TERN_PROJ_UP, &m, &k);
	TT_CHECK(m == 6912 && k == 2560);
	TT_EQ_INT(tern_norm_len(&hp, TERN_NORM_FFN_SUB), 6912);
	TT_EQ_INT(tern_norm_len(&hp, TERN_NORM_ATTN_SUB), 2560);
	/* QK-norm: only where the architecture row says so (Qwen3), head_dim wide */
	TT_CHECK(!tern_norm_present(&hp, TERN_NORM_ATTN_Q) && tern_norm_present(&hp, TERN_NORM_ATTN_SUB));
	tern_hparams qw;
	TT_REQUIRE(tern_hparams_preset("bonsai-8b", &qw, &e) == 0);
	TT_CHECK(strcmp(qw.arch, "qwen3") == 0 && qw.n_layer == 36 && qw.head_dim == 128 && qw.n_vocab == 151936 &&
		 qw.n_head_kv == 8 && qw.n_ff == 12288 && qw.bos_id == 151643 && qw.eos_id == 151645);
	TT_CHECK(tern_norm_present(&qw, TERN_NORM_ATTN_Q) && tern_norm_present(&qw, TERN_NORM_ATTN_K) &&
		 !tern_norm_present(&qw, TERN_NORM_FFN_SUB));
	TT_EQ_INT(tern_norm_len(&qw, TERN_NORM_ATTN_K), 128);
	const tern_arch *a = tern_arch_find("qwen3");
	TT_CHECK(a && a->qk_norm && !a->sub_norms && !a->gguf_qk_interleaved && a->ffn_act == TERN_FFN_SILU &&
		 a == tern_arch_find_hf("Qwen3ForCausalLM"));
}

static void test_dtype_file_codes(void)
{
	/* The codes the file formats fix: GGUF ggml_type ids, safetensors
	 * strings, shard index codes (plan format v1). */
	TT_EQ_INT(tern_dtype_ggml(TERN_DTYPE_F32), 0);
	TT_EQ_INT(tern_dtype_ggml(TERN_DTYPE_F16), 1);
	TT_EQ_INT(tern_dtype_ggml(TERN_DTYPE_BF16), 30);
	TT_EQ_INT(tern_dtype_ggml(TERN_DTYPE_I8), 24);
	TT_EQ_INT(tern_dtype_ggml(TERN_DTYPE_I2_S), 36);
	TT_EQ_INT(tern_dtype_ggml(TERN_DTYPE_TL1), 38);
	TT_EQ_INT(tern_dtype_ggml(TERN_DTYPE_TL2), 39);
	TT_CHECK(tern_dtype_ggml(TERN_DTYPE_TERNARY) == UINT32_MAX);
	TT_EQ_INT(tern_dtype_of_ggml(8), TERN_DTYPE_NONE); /* q8_0: not an element type of tern's */
	TT_EQ_INT(tern_dtype_shard(TERN_DTYPE_TERNARY), 0);
	TT_EQ_INT(tern_dtype_shard(TERN_DTYPE_F32), 1);
	TT_EQ_INT(tern_dtype_shard(TERN_DTYPE_F16), 2);
	TT_EQ_INT(tern_dtype_shard(TERN_DTYPE_BF16), 3);
	TT_EQ_INT(tern_dtype_shard(TERN_DTYPE_U8), 4); /* the packed LM head */
	TT_EQ_INT(tern_dtype_shard(TERN_DTYPE_Q2_0), 5); /* a group-scaled projection, blocks as stored */
	TT_EQ_INT(tern_dtype_ggml(TERN_DTYPE_Q2_0), 42);
	TT_EQ_INT(tern_dtype_of_shard(6), TERN_DTYPE_NONE);
	TT_EQ_INT(tern_dtype_of_safetensors("BF16"), TERN_DTYPE_BF16);
	TT_EQ_INT(tern_dtype_of_safetensors("F8_E5M2"), TERN_DTYPE_F8_E5M2);
	TT_EQ_INT(tern_dtype_of_safetensors("bf16"), TERN_DTYPE_NONE);
	TT_EQ_INT(tern_dtype_of_safetensors(NULL), TERN_DTYPE_NONE);
	TT_CHECK(tern_dtype_safetensors(TERN_DTYPE_I2_S) == NULL);
	TT_CHECK(strcmp(tern_dtype_name(TERN_DTYPE_I2_S), "i2_s") == 0 && strcmp(tern_dtype_name(-7), "unknown") == 0);
	TT_EQ_INT(tern_dtype_size(TERN_DTYPE_BF16), 2);
	TT_EQ_INT(tern_dtype_size(TERN_DTYPE_TERNARY), 0);
	/* Every mapping round-trips. */
	for (int d = 0; d < TERN_DTYPE_COUNT; d++) {
		if (tern_dtype_ggml(d) != UINT32_MAX)
			TT_CHECKF(tern_dtype_of_ggml(tern_dtype_ggml(d)) == d, "%s", tern_dtype_name(d));
		if (tern_dtype_shard(d) != UINT32_MAX)
			TT_CHECKF(tern_dtype_of_shard(tern_dtype_shard(d)) == d, "%s", tern_dtype_name(d));
		if (tern_dtype_safetensors(d))
			TT_CHECKF(tern_dtype_of_safetensors(tern_dtype_safetensors(d)) == d, "%s", tern_dtype_name(d));
	}
}

TT_MAIN(TT_CASE(test_xxh64_known_answers), TT_CASE(test_xxh64_streaming_equals_oneshot), TT_CASE(test_presets),
	TT_CASE(test_tensor_names_and_shapes), TT_CASE(test_dtype_file_codes))
