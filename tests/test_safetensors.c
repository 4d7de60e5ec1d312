/* test_safetensors.c: partition/'s JSON parser, safetensors reader, HF
 * config.json parsing, and the model source over HF checkpoint directories
 * written here: the packed layout (U8 [out/4, in], block split over rows,
 * plus weight_scale) and bf16 master weights quantized with per-group
 * absmean, both checked against straightforward computations. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tern-half.h"
#include "tern-json.h"
#include "tern-safetensors.h"
#include "tern-source.h"
#include "tern-test.h"
#include "test-util.h"

static int names_file(const tern_err *e, const char *path)
{
	return strncmp(e->msg, path, strlen(path)) == 0 && strchr(e->msg, '\n') == NULL;
}

static uint64_t rng_state = 0x1234567;
static uint32_t rnd(void)
{
	rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
	return (uint32_t)(rng_state >> 33);
}


/* ---- a minimal safetensors writer for the tests ------------------------------- */

typedef struct {
	const char *name;
	const char *dtype;
	int n_dims;
	uint64_t shape[2];
	const void *data;
	size_t nbytes;
} st_entry;

static int st_write(const char *path, const st_entry *e, int n)
{
	size_t cap = 4096 + (size_t)n * 256;
	char *hdr = malloc(cap);
	if (!hdr)
		return -1;
	size_t len = (size_t)snprintf(hdr, cap, "{\"__metadata__\":{\"format\":\"pt\"}");
	uint64_t off = 0;
	for (int i = 0; i < n; i++) {
		len += (size_t)snprintf(hdr + len, cap - len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", e[i].name,
					e[i].dtype);
		for (int d = 0; d < e[i].n_dims; d++)
			len += (size_t)snprintf(hdr + len, cap - len, "%s%llu", d ? "," : "",
						(unsigned long long)e[i].shape[d]);
		len += (size_t)snprintf(hdr + len, cap - len, "],\"data_offsets\":[%llu,%llu]}",
					(unsigned long long)off, (unsigned long long)(off + e[i].nbytes));
		off += e[i].nbytes;
	}
	len += (size_t)snprintf(hdr + len, cap - len, "}");
	/* Pad with spaces to 8 bytes, as the reference writer does. */
	while (len % 8)
		hdr[len++] = ' ';
	FILE *f = fopen(path, "wb");
	if (!f) {
		free(hdr);
		return -1;
	}
	uint8_t l8[8];
	for (int i = 0; i < 8; i++)
		l8[i] = (uint8_t)((uint64_t)len >> (8 * i));
	int ok = fwrite(l8, 1, 8, f) == 8 && fwrite(hdr, 1, len, f) == len;
	for (int i = 0; i < n; i++)
		ok &= fwrite(e[i].data, 1, e[i].nbytes, f) == e[i].nbytes;
	fclose(f);
	free(hdr);
	return ok ? 0 : -1;
}

/* ---- JSON ------------------------------------------------------------------------ */

static void test_json(void)
{
	tern_err e = {0};
	tern_json_doc *d;
	const char *txt = " {\"a\": [1, -2.5e1, true, false, null, \"x\\u00e9\\ud83d\\ude00\\n\\\"\"],"
			  " \"b\": {\"c\": 12345678901234}, \"e\": [], \"f\": {}} ";
	TT_REQUIRE(tern_json_parse(&d, txt, strlen(txt), "t", &e) == 0);
	const tern_json *r = tern_json_root(d), *a = tern_json_get(r, "a");
	TT_REQUIRE(a && a->type == TERN_JSON_ARRAY && a->len == 6);
	TT_CHECK(a->items[0]->is_int && a->items[0]->integer == 1);
	TT_CHECK(!a->items[1]->is_int && a->items[1]->number == -25.0);
	TT_CHECK(a->items[2]->type == TERN_JSON_BOOL && a->items[2]->boolean == 1);
	TT_CHECK(a->items[3]->type == TERN_JSON_BOOL && a->items[3]->boolean == 0);
	TT_CHECK(a->items[4]->type == TERN_JSON_NULL);
	TT_CHECK(a->items[5]->len == 1 + 2 + 4 + 2 &&
		 memcmp(a->items[5]->str, "x\xC3\xA9\xF0\x9F\x98\x80\n\"", 9) == 0);
	TT_CHECK(tern_json_get_int(tern_json_get(r, "b"), "c", 0) == 12345678901234LL);
	TT_CHECK(tern_json_get(r, "e")->len == 0 && tern_json_get(r, "f")->type == TERN_JSON_OBJECT);
	TT_CHECK(tern_json_get(r, "zz") == NULL && tern_json_get_int(r, "zz", 7) == 7);
	TT_CHECK(strcmp(tern_json_get_str(r, "a", "dflt"), "dflt") == 0);
	tern_json_free(d);
	const char *bad[] = {"",     "{",     "{\"a\" 1}", "[1,]",       "[1 2]",   "\"abc",       "tru",
			     "01",   "1.",    "-",         "{\"a\":1}x", "\"\\x\"", "\"\\ud800\"", "\"a\x01\"",
			     "[1e]", "{1:2}", "\"\\u12\""};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		const int rc = tern_json_parse(&d, bad[i], strlen(bad[i]), "bad.json", &e);
		TT_CHECKF(rc == TERN_EFORMAT && names_file(&e, "bad.json"), "input %zu '%s': rc %d", i, bad[i], rc);
	}
	/* Depth limit instead of stack exhaustion. */
	char deep[2001];
	memset(deep, '[', 2000);
	deep[2000] = 0;
	TT_CHECK(tern_json_parse(&d, deep, 2000, "deep", &e) == TERN_ERANGE && strstr(e.msg, "deeper"));
	/* 60 levels are fine. */
	char ok[121];
	memset(ok, '[', 60);
	memset(ok + 60, ']', 60);
	TT_CHECK(tern_json_parse(&d, ok, 120, "ok", &e) == 0);
	tern_json_free(d);
	tern_json_free(NULL);
}

/* ---- config.json ------------------------------------------------------------------- */

static const char *config_2b4t =
    "{\n  \"architectures\": [\"BitNetForCausalLM\"],\n  \"attention_bias\": false,\n"
    "  \"bos_token_id\": 128000,\n  \"eos_token_id\": 128001,\n  \"hidden_act\": \"relu2\",\n"
    "  \"hidden_size\": 2560,\n  \"initializer_range\": 0.02,\n  \"intermediate_size\": 6912,\n"
    "  \"max_position_embeddings\": 4096,\n  \"model_type\": \"bitnet\",\n  \"num_attention_heads\": 20,\n"
    "  \"num_hidden_layers\": 30,\n  \"num_key_value_heads\": 5,\n  \"rms_norm_eps\": 1e-05,\n"
    "  \"rope_theta\": 500000.0,\n  \"tie_word_embeddings\": true,\n  \"torch_dtype\": \"bfloat16\",\n"
    "  \"vocab_size\": 128256,\n  \"quantization_config\": {\"quant_method\": \"bitnet\", \"linear_class\": "
    "\"autobitlinear\", \"quantization_mode\": \"offline\"}\n}\n";

static void test_config(void)
{
	tern_hparams hp;
	tern_err e = {0};
	tern_hf_quant online = {-1, -1};
	TT_REQUIRE(tern_hf_config_parse(config_2b4t, strlen(config_2b4t), "config.json", &hp, &online, &e) == 0);
	TT_CHECK(hp.n_embd == 2560 && hp.n_layer == 30 && hp.n_head == 20 && hp.n_head_kv == 5 && hp.head_dim == 128 &&
		 hp.n_ff == 6912 && hp.n_vocab == 128256 && hp.n_ctx_train == 4096 && hp.rope_theta == 500000.0f &&
		 hp.norm_eps == 1e-5f && hp.tied_embeddings == 1 && hp.bos_id == 128000 && hp.eos_id == 128001);
	TT_CHECK(online.online == 0 && online.scale_divides == 0 && strcmp(hp.arch, "bitnet-b1.58") == 0);
	/* Online (bf16) config, eos as a list, defaults. */
	const char *c2 = "{\"hidden_size\":256,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
			 "\"intermediate_size\":512,\"vocab_size\":300,\"eos_token_id\":[7,8]}";
	TT_REQUIRE(tern_hf_config_parse(c2, strlen(c2), "c2", &hp, &online, &e) == 0);
	TT_CHECK(online.online == 1 && online.scale_divides == 0 && hp.eos_id == 7 && hp.bos_id == -1 &&
		 hp.n_head_kv == 4 && hp.n_ctx_train == 2048 &&
		 hp.rope_theta == 10000.0f && hp.tied_embeddings == 0);
	const char *c3 = "{\"hidden_size\":256,\"num_hidden_layers\":2,\"num_attention_heads\":4}";
	TT_CHECK(tern_hf_config_parse(c3, strlen(c3), "c3.json", &hp, &online, &e) == TERN_EFORMAT &&
		 strstr(e.msg, "intermediate_size") && names_file(&e, "c3.json"));
	const char *c4 = "{\"hidden_size\":256,\"num_hidden_layers\":2,\"num_attention_heads\":3,"
			 "\"intermediate_size\":512,\"vocab_size\":300}";
	TT_CHECK(tern_hf_config_parse(c4, strlen(c4), "c4.json", &hp, &online, &e) == TERN_ERANGE &&
		 names_file(&e, "c4.json"));
	const char *c5 = "{\"hidden_size\":\"256\"}";
	TT_CHECK(tern_hf_config_parse(c5, strlen(c5), "c5.json", &hp, &online, &e) == TERN_EFORMAT);
	/* Llama ternary (HF1BitLLM / Falcon3-1.58bit style): BitLinear divides by weight_scale. */
	const char *l1 = "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"hidden_act\":\"silu\","
			 "\"hidden_size\":256,\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
			 "\"intermediate_size\":512,\"vocab_size\":300,\"rope_scaling\":null,"
			 "\"quantization_config\":{\"quant_method\":\"bitnet\",\"modules_to_not_convert\":null}}";
	TT_REQUIRE(tern_hf_config_parse(l1, strlen(l1), "l1", &hp, &online, &e) == 0);
	TT_CHECK(strcmp(hp.arch, "llama") == 0 && online.scale_divides == 1 && hp.n_head_kv == 2);
	static const char *const refused[][2] = {
	    {"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":256,\"num_hidden_layers\":2,"
	     "\"num_attention_heads\":4,\"intermediate_size\":512,\"vocab_size\":300}",
	     "not a ternary checkpoint"},
	    {"{\"architectures\":[\"Qwen3ForCausalLM\"],\"hidden_size\":256,\"num_hidden_layers\":2,"
	     "\"num_attention_heads\":4,\"intermediate_size\":512,\"vocab_size\":300}",
	     "Qwen3ForCausalLM"},
	    {"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_act\":\"gelu\",\"hidden_size\":256,"
	     "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"intermediate_size\":512,\"vocab_size\":300,"
	     "\"quantization_config\":{\"quant_method\":\"bitnet\"}}",
	     "hidden_act"},
	    {"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":256,\"num_hidden_layers\":2,"
	     "\"num_attention_heads\":4,\"intermediate_size\":512,\"vocab_size\":300,\"rope_scaling\":"
	     "{\"rope_type\":\"llama3\",\"factor\":8.0},\"quantization_config\":{\"quant_method\":\"bitnet\"}}",
	     "rope_scaling"},
	    {"{\"architectures\":[\"LlamaForCausalLM\"],\"attention_bias\":true,\"hidden_size\":256,"
	     "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"intermediate_size\":512,\"vocab_size\":300,"
	     "\"quantization_config\":{\"quant_method\":\"bitnet\"}}",
	     "bias"},
	};
	for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
		TT_CHECKF(tern_hf_config_parse(refused[i][0], strlen(refused[i][0]), "r.json", &hp, &online, &e) ==
				      TERN_EUNSUP &&
			      strstr(e.msg, refused[i][1]) && names_file(&e, "r.json"),
			  "case %zu: %s", i, e.msg);
	TT_CHECK(tern_hf_config_read("/nonexistent", &hp, &online, &e) == TERN_EIO &&
		 strstr(e.msg, "/nonexistent/config.json"));
}

/* ---- safetensors container --------------------------------------------------------- */

static void test_safetensors_basic_and_damaged(void)
{
	char path[512], bad[512];
	tt_tmp_path(path, sizeof path, "basic.safetensors");
	tt_tmp_path(bad, sizeof bad, "bad.safetensors");
	const float f32[4] = {1.0f, -2.0f, 0.5f, 3.25f};
	const uint16_t bf[3] = {0x3F80, 0xC000, 0x3E80}; /* 1, -2, 0.25 */
	const uint16_t f16[2] = {0x3C00, 0xB800};        /* 1, -0.5 */
	const uint8_t u8[6] = {1, 2, 3, 4, 5, 6};
	const st_entry ents[] = {{"a.f32", "F32", 2, {2, 2}, f32, sizeof f32},
				 {"b.bf16", "BF16", 1, {3, 0}, bf, sizeof bf},
				 {"c.f16", "F16", 1, {2, 0}, f16, sizeof f16},
				 {"d.u8", "U8", 2, {3, 2}, u8, sizeof u8},
				 {"e.scalar", "F32", 0, {0, 0}, f32, 4}};
	TT_REQUIRE(st_write(path, ents, 5) == 0);
	tern_err e = {0};
	tern_st *st;
	TT_REQUIRE(tern_st_open(&st, path, &e) == 0);
	TT_CHECK(tern_st_n_tensors(st) == 5);
	const tern_st_tensor *t = tern_st_find(st, "a.f32");
	TT_REQUIRE(t);
	TT_CHECK(t->dtype == TERN_DTYPE_F32 && t->n_dims == 2 && t->shape[0] == 2 && t->n_elem == 4 && t->nbytes == 16);
	TT_CHECK(tern_st_get_f32(t, 3) == 3.25f && tern_st_get_f32(t, 4) == 0.0f);
	t = tern_st_find(st, "b.bf16");
	TT_CHECK(t && tern_st_get_f32(t, 1) == -2.0f && tern_st_get_f32(t, 2) == 0.25f);
	t = tern_st_find(st, "c.f16");
	TT_CHECK(t && tern_st_get_f32(t, 1) == -0.5f);
	t = tern_st_find(st, "d.u8");
	TT_CHECK(t && t->dtype == TERN_DTYPE_U8 && t->data[5] == 6 && tern_st_get_f32(t, 0) == 0.0f);
	t = tern_st_find(st, "e.scalar");
	TT_CHECK(t && t->n_dims == 0 && t->n_elem == 1 && tern_st_get_f32(t, 0) == 1.0f);
	TT_CHECK(tern_st_find(st, "__metadata__") == NULL && tern_st_find(st, "zz") == NULL);
	tern_st_close(st);
	tern_st_close(NULL);

	/* Truncation at every length. */
	size_t n;
	uint8_t *buf = tt_read_file(path, &n);
	TT_REQUIRE(buf && n <= 4096);
	int all = 1;
	for (size_t len = 0; len < n; len++) {
		uint8_t *cut = malloc(len ? len : 1);
		memcpy(cut, buf, len);
		const int rc = tern_st_open_mem(&st, cut, len, bad, &e);
		all &= rc < 0 && names_file(&e, bad);
		if (rc == 0)
			tern_st_close(st);
		free(cut);
	}
	TT_CHECK(all);
	TT_REQUIRE(tt_write_file(bad, buf, 4) == 0);
	TT_CHECK(tern_st_open(&st, bad, &e) == TERN_ERANGE && strstr(e.msg, "truncated"));
	TT_REQUIRE(tt_write_file(bad, buf, n - 1) == 0);
	TT_CHECK(tern_st_open(&st, bad, &e) == TERN_ERANGE && strstr(e.msg, "out of range"));

	/* Header length past EOF and absurd. */
	uint8_t b2[4096];
	memcpy(b2, buf, n);
	b2[0] = 0xFF;
	b2[1] = 0xFF;
	TT_REQUIRE(tt_write_file(bad, b2, n) == 0);
	TT_CHECK(tern_st_open(&st, bad, &e) == TERN_ERANGE && strstr(e.msg, "truncated"));
	memset(b2, 0xFF, 8);
	TT_REQUIRE(tt_write_file(bad, b2, n) == 0);
	TT_CHECK(tern_st_open(&st, bad, &e) == TERN_ERANGE && strstr(e.msg, "absurd header length"));

	/* Hand-written headers. */
	const struct {
		const char *hdr;
		int code;
		const char *what;
	} cases[] = {
	    {"[1,2]", TERN_EFORMAT, "not a JSON object"},
	    {"{\"x\":{\"dtype\":\"F32\",\"shape\":[2]", TERN_EFORMAT, "JSON header"},
	    {"{\"x\":{\"shape\":[2],\"data_offsets\":[0,8]}}", TERN_EFORMAT, "lacks dtype"},
	    {"{\"x\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", TERN_EUNSUP, "unknown dtype"},
	    {"{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,800]}}", TERN_ERANGE, "out of range"},
	    {"{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", TERN_EFORMAT, "needs 12"},
	    {"{\"x\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", TERN_ERANGE, "absurd dimension"},
	    {"{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,8]}}",
	     TERN_ERANGE, "absurd"},
	    {"{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", TERN_EFORMAT, "bad data_offsets"},
	    {"{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", TERN_EFORMAT, "data_offsets"},
	    {"{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
	     "\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
	     TERN_EFORMAT, "duplicate"},
	    {"{\"x\":7}", TERN_EFORMAT, "not an object"},
	    {"{\"x\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", TERN_ERANGE,
	     "dimensions"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const size_t hl = strlen(cases[i].hdr);
		uint8_t fb[1024];
		memset(fb, 0, sizeof fb);
		for (int j = 0; j < 8; j++)
			fb[j] = (uint8_t)((uint64_t)hl >> (8 * j));
		memcpy(fb + 8, cases[i].hdr, hl);
		TT_REQUIRE(tt_write_file(bad, fb, 8 + hl + 16) == 0); /* 16 data bytes */
		const int rc = tern_st_open(&st, bad, &e);
		TT_CHECKF(rc == cases[i].code && strstr(e.msg, cases[i].what) && names_file(&e, bad), "case %zu: %d %s",
			  i, rc, e.msg);
		if (rc == 0)
			tern_st_close(st);
	}
	free(buf);
	TT_CHECK(tern_st_open(&st, "/nonexistent.safetensors", &e) == TERN_EIO);
}

/* ---- HF checkpoints ------------------------------------------------------------------ */

enum { D = 256, NH = 4, NKV = 2, HD = 64, FF = 512, NV = 300, NL = 2 };

static const char *proj_hf_names[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
				       "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
static const char *norm_hf_names[4] = {"input_layernorm", "self_attn.attn_sub_norm", "post_attention_layernorm",
				       "mlp.ffn_sub_norm"};

static void shape_of(int p, int *m, int *k)
{
	const int mm[7] = {D, NKV * HD, NKV * HD, D, FF, FF, D}, kk[7] = {D, D, D, D, D, D, FF};
	*m = mm[p];
	*k = kk[p];
}

typedef struct {
	int8_t *tern[NL][7];   /* packed source: the ternary truth */
	uint16_t *bf[NL][7];   /* bf16 source: master weights */
	uint16_t scale[NL][7]; /* packed: weight_scale (bf16) */
	uint16_t *norm[NL][4];
	uint16_t *fnorm;
	uint16_t *embd;
} hf_model;

static void model_free(hf_model *md)
{
	for (int l = 0; l < NL; l++) {
		for (int p = 0; p < 7; p++) {
			free(md->tern[l][p]);
			free(md->bf[l][p]);
		}
		for (int n = 0; n < 4; n++)
			free(md->norm[l][n]);
	}
	free(md->fnorm);
	free(md->embd);
}

static uint16_t rand_bf16(double sigma)
{
	/* A value with few mantissa bits so bf16 holds it exactly. */
	const double u = ((double)(rnd() % 2001) - 1000.0) / 1000.0 * sigma * 2;
	return tern_f32_to_bf16((float)((double)(int)(u * 64) / 64.0));
}

static void write_common(const char *dir, const char *mode)
{
	char p[600], cfg[1024];
	snprintf(p, sizeof p, "%s/config.json", dir);
	const int n = snprintf(cfg, sizeof cfg,
			       "{\"architectures\":[\"BitNetForCausalLM\"],\"hidden_size\":%d,\"num_hidden_layers\":%d,"
			       "\"num_attention_heads\":%d,\"num_key_value_heads\":%d,\"intermediate_size\":%d,"
			       "\"vocab_size\":%d,\"bos_token_id\":290,\"eos_token_id\":291,\"rope_theta\":500000.0,"
			       "\"rms_norm_eps\":1e-05,\"tie_word_embeddings\":true,\"max_position_embeddings\":4096,"
			       "\"quantization_config\":{\"quant_method\":\"bitnet\",\"linear_class\":\"autobitlinear\","
			       "\"quantization_mode\":\"%s\"}}",
			       D, NL, NH, NKV, FF, NV, mode);
	tt_write_file(p, cfg, (size_t)n);
	/* tokenizer.json: 260 plain tokens, two specials, both merge spellings. */
	char *tj = malloc(65536);
	size_t len = (size_t)snprintf(tj, 65536,
				      "{\"version\":\"1.0\",\"added_tokens\":["
				      "{\"id\":290,\"content\":\"<|begin_of_text|>\",\"special\":true},"
				      "{\"id\":291,\"content\":\"<|eot_id|>\",\"special\":true}],"
				      "\"model\":{\"type\":\"BPE\",\"vocab\":{");
	for (int i = 0; i < 260; i++)
		len += (size_t)snprintf(tj + len, 65536 - len, "%s\"t%d\":%d", i ? "," : "", i, i);
	len += (size_t)snprintf(tj + len, 65536 - len, "},\"merges\":[\"t 0\",[\"t\",\"1\"]]}}");
	snprintf(p, sizeof p, "%s/tokenizer.json", dir);
	tt_write_file(p, tj, len);
	free(tj);
	snprintf(p, sizeof p, "%s/tokenizer_config.json", dir);
	const char *tc = "{\"add_bos_token\": false}";
	tt_write_file(p, tc, strlen(tc));
}

/* Writes the checkpoint: layer 0 tensors + embeddings in one file, layer 1 +
 * final norm in a second (a sharded checkpoint). */
static int write_hf(const char *dir, hf_model *md, int packed)
{
	mkdir(dir, 0755);
	write_common(dir, packed ? "offline" : "online");
	st_entry e[2][64];
	int ne[2] = {0, 0};
	char names[2][64][96];
	uint8_t *packs[NL][7] = {{0}};
	for (int l = 0; l < NL; l++) {
		const int fi = l;
		for (int p = 0; p < 7; p++) {
			int m, k;
			shape_of(p, &m, &k);
			st_entry *x = &e[fi][ne[fi]];
			snprintf(names[fi][ne[fi]], 96, "model.layers.%d.%s.weight", l, proj_hf_names[p]);
			x->name = names[fi][ne[fi]++];
			x->n_dims = 2;
			if (packed) {
				/* HF pack_weights: row r = i*P + p' goes to packed row p', bits 2i. */
				const int P = m / 4;
				uint8_t *pk = calloc((size_t)P * (size_t)k, 1);
				for (int i = 0; i < 4; i++)
					for (int pr = 0; pr < P; pr++)
						for (int c = 0; c < k; c++)
							pk[(size_t)pr * k + c] |=
							    (uint8_t)((md->tern[l][p][(size_t)(i * P + pr) * k + c] + 1)
								      << (2 * i));
				packs[l][p] = pk;
				x->dtype = "U8";
				x->shape[0] = (uint64_t)P;
				x->shape[1] = (uint64_t)k;
				x->data = pk;
				x->nbytes = (size_t)P * (size_t)k;
				st_entry *s = &e[fi][ne[fi]];
				snprintf(names[fi][ne[fi]], 96, "model.layers.%d.%s.weight_scale", l, proj_hf_names[p]);
				s->name = names[fi][ne[fi]++];
				s->dtype = "BF16";
				s->n_dims = 1;
				s->shape[0] = 1;
				s->data = &md->scale[l][p];
				s->nbytes = 2;
			} else {
				x->dtype = "BF16";
				x->shape[0] = (uint64_t)m;
				x->shape[1] = (uint64_t)k;
				x->data = md->bf[l][p];
				x->nbytes = (size_t)m * (size_t)k * 2;
			}
		}
		for (int n = 0; n < 4; n++) {
			st_entry *x = &e[fi][ne[fi]];
			snprintf(names[fi][ne[fi]], 96, "model.layers.%d.%s.weight", l, norm_hf_names[n]);
			x->name = names[fi][ne[fi]++];
			x->dtype = "BF16";
			x->n_dims = 1;
			x->shape[0] = (uint64_t)(n == 3 ? FF : D);
			x->data = md->norm[l][n];
			x->nbytes = (size_t)x->shape[0] * 2;
		}
	}
	e[0][ne[0]++] = (st_entry){"model.embed_tokens.weight", "BF16", 2, {NV, D}, md->embd, (size_t)NV * D * 2};
	e[1][ne[1]++] = (st_entry){"model.norm.weight", "BF16", 1, {D, 0}, md->fnorm, (size_t)D * 2};
	char p1[600], p2[600];
	snprintf(p1, sizeof p1, "%s/model-00001-of-00002.safetensors", dir);
	snprintf(p2, sizeof p2, "%s/model-00002-of-00002.safetensors", dir);
	const int rc = st_write(p1, e[0], ne[0]) | st_write(p2, e[1], ne[1]);
	for (int l = 0; l < NL; l++)
		for (int p = 0; p < 7; p++)
			free(packs[l][p]);
	return rc;
}

static void make_model(hf_model *md)
{
	memset(md, 0, sizeof *md);
	for (int l = 0; l < NL; l++) {
		for (int p = 0; p < 7; p++) {
			int m, k;
			shape_of(p, &m, &k);
			md->tern[l][p] = malloc((size_t)m * k);
			md->bf[l][p] = malloc((size_t)m * k * 2);
			for (int i = 0; i < m * k; i++) {
				md->tern[l][p][i] = (int8_t)((int)(rnd() % 3) - 1);
				md->bf[l][p][i] = rand_bf16(p == 2 ? 0.02 : 1.0); /* one small-magnitude tensor */
			}
			md->scale[l][p] = tern_f32_to_bf16(1.5f + 0.25f * (float)l + 0.125f * (float)p);
		}
		for (int n = 0; n < 4; n++) {
			const int len = n == 3 ? FF : D;
			md->norm[l][n] = malloc((size_t)len * 2);
			for (int i = 0; i < len; i++)
				md->norm[l][n][i] = rand_bf16(1.0);
		}
	}
	md->fnorm = malloc(D * 2);
	for (int i = 0; i < D; i++)
		md->fnorm[i] = rand_bf16(1.0);
	md->embd = malloc((size_t)NV * D * 2);
	for (int i = 0; i < NV * D; i++)
		md->embd[i] = rand_bf16(0.1);
}

static void check_common(tern_source *s, const hf_model *md)
{
	const tern_hparams *hp = tern_source_hparams(s);
	TT_CHECK(hp->n_embd == D && hp->n_layer == NL && hp->n_head == NH && hp->n_head_kv == NKV &&
		 hp->head_dim == HD && hp->n_ff == FF && hp->n_vocab == NV && hp->bos_id == 290 && hp->eos_id == 291 &&
		 hp->tied_embeddings);
	TT_CHECK(tern_source_kind_of(s) == TERN_SOURCE_HF);
	tern_err e = {0};
	float f[FF];
	int ok = 1;
	for (int l = 0; l < NL; l++)
		for (int n = 0; n < 4; n++) {
			TT_REQUIRE(tern_source_norm(s, l, (tern_norm_kind)n, f, &e) == 0);
			for (int i = 0; i < (n == 3 ? FF : D); i++)
				ok &= f[i] == tern_bf16_to_f32(md->norm[l][n][i]);
		}
	TT_REQUIRE(tern_source_norm(s, 0, TERN_NORM_OUTPUT, f, &e) == 0);
	for (int i = 0; i < D; i++)
		ok &= f[i] == tern_bf16_to_f32(md->fnorm[i]);
	TT_CHECK(ok);
	tern_dense_view v;
	TT_REQUIRE(tern_source_dense(s, TERN_DENSE_TOKEN_EMBD, &v, &e) == 0);
	TT_CHECK(v.type == TERN_DTYPE_BF16 && v.rows == NV && v.cols == D);
	TT_REQUIRE(tern_dense_row_f32(&v, 123, f, &e) == 0);
	ok = 1;
	for (int i = 0; i < D; i++)
		ok &= f[i] == tern_bf16_to_f32(md->embd[123 * D + i]);
	TT_CHECK(ok);
	const tern_vocab *voc;
	TT_REQUIRE(tern_source_vocab(s, &voc, &e) == 0);
	TT_CHECK(voc->n_tokens == NV && strcmp(voc->tokens[17], "t17") == 0 && voc->token_type[17] == 1);
	TT_CHECK(strcmp(voc->tokens[290], "<|begin_of_text|>") == 0 && voc->token_type[290] == 3);
	TT_CHECK(voc->token_type[270] == 5); /* a gap in the ids: placeholder */
	TT_CHECK(voc->n_merges == 2 && strcmp(voc->merges[0], "t 0") == 0 && strcmp(voc->merges[1], "t 1") == 0);
	TT_CHECK(voc->bos_id == 290 && voc->eos_id == 291 && voc->eot_id == 291 && voc->add_bos == 0);
	TT_CHECK(strcmp(voc->model, "gpt2") == 0 && strcmp(voc->pre, "llama-bpe") == 0);
}

/* Makes md, writes it packed or in bf16 as the checkpoint dir ("hf-packed"
 * or "hf-bf16" in the temporary directory) and opens it: the source, with the
 * weight format and check_common checked; NULL when writing or opening failed. */
static tern_source *write_and_open(hf_model *md, char *dir, size_t len, int packed, tern_err *e)
{
	make_model(md);
	tt_tmp_path(dir, len, packed ? "hf-packed" : "hf-bf16");
	tern_source *s = NULL;
	if (write_hf(dir, md, packed) != 0 || tern_source_open(&s, dir, e) != 0) {
		fprintf(stderr, "  %s: cannot write or open: %s\n", dir, e->msg);
		return NULL;
	}
	TT_CHECK(tern_source_prequantized(s) == packed &&
		 strcmp(tern_source_weight_format(s), packed ? "hf packed" : "hf bf16") == 0);
	check_common(s, md);
	return s;
}

static void test_hf_packed(void)
{
	hf_model md;
	char dir[512];
	tern_err e = {0};
	tern_source *s = write_and_open(&md, dir, sizeof dir, 1, &e);
	TT_REQUIRE(s);
	int8_t *w = malloc((size_t)FF * D);
	for (int l = 0; l < NL; l++)
		for (int p = 0; p < 7; p++) {
			int m, k, gr = 0;
			float sc[64];
			shape_of(p, &m, &k);
			TT_REQUIRE(tern_source_ternary(s, l, (tern_proj)p, 32, w, sc, &gr, &e) == 0);
			TT_CHECKF(memcmp(w, md.tern[l][p], (size_t)m * k) == 0, "layer %d proj %d", l, p);
			TT_CHECK(gr == m && sc[0] == tern_bf16_to_f32(md.scale[l][p]));
		}
	tern_source_close(s);
	/* Code 3 in a packed byte is an error naming the tensor. */
	char p1[600];
	snprintf(p1, sizeof p1, "%s/model-00001-of-00002.safetensors", dir);
	FILE *f = fopen(p1, "r+b");
	TT_REQUIRE(f);
	uint8_t l8[8];
	TT_REQUIRE(fread(l8, 1, 8, f) == 8);
	uint64_t hl = 0;
	for (int i = 7; i >= 0; i--)
		hl = hl << 8 | l8[i];
	fseek(f, (long)(8 + hl), SEEK_SET); /* first tensor: layer 0 q_proj */
	fputc(0xFF, f);
	fclose(f);
	TT_REQUIRE(tern_source_open(&s, dir, &e) == 0);
	int gr;
	float sc;
	TT_CHECK(tern_source_ternary(s, 0, TERN_PROJ_Q, 0, w, &sc, &gr, &e) == TERN_EFORMAT &&
		 strstr(e.msg, "q_proj") && strstr(e.msg, "code 3"));
	tern_source_close(s);
	/* A missing shard: the tensors in it are named. */
	char p2[600];
	snprintf(p2, sizeof p2, "%s/model-00002-of-00002.safetensors", dir);
	TT_REQUIRE(unlink(p2) == 0);
	TT_CHECK(tern_source_open(&s, dir, &e) == TERN_EFORMAT && strstr(e.msg, "model.layers.1.") &&
		 strstr(e.msg, "missing"));
	free(w);
	model_free(&md);
}

/* The spec's absmean rule, written out plainly for the check. */
static void expect_absmean(const uint16_t *bf, int m, int k, int group_rows, int8_t *w, float *scales)
{
	for (int g0 = 0, gi = 0; g0 < m; g0 += group_rows, gi++) {
		const int g1 = g0 + group_rows < m ? g0 + group_rows : m;
		double sum = 0;
		for (int r = g0; r < g1; r++)
			for (int c = 0; c < k; c++)
				sum += fabs((double)tern_bf16_to_f32(bf[(size_t)r * k + c]));
		float mean = (float)(sum / ((double)(g1 - g0) * k));
		if (mean < 1e-5f)
			mean = 1e-5f;
		const float inv = 1.0f / mean;
		for (int r = g0; r < g1; r++)
			for (int c = 0; c < k; c++) {
				float q = nearbyintf(tern_bf16_to_f32(bf[(size_t)r * k + c]) * inv);
				w[(size_t)r * k + c] = (int8_t)(q > 1 ? 1 : q < -1 ? -1 : q);
			}
		scales[gi] = mean;
	}
}

static void test_hf_bf16(void)
{
	tern_err e = {0};
	hf_model md;
	char dir[512];
	tern_source *s = write_and_open(&md, dir, sizeof dir, 0, &e);
	TT_REQUIRE(s);
	int8_t *w = malloc((size_t)FF * D), *want = malloc((size_t)FF * D);
	const int groups[3] = {0, 64, 100}; /* per tensor, even blocks, ragged last block */
	long long n_nonzero = 0;
	for (int gi = 0; gi < 3; gi++)
		for (int l = 0; l < NL; l++)
			for (int p = 0; p < 7; p++) {
				int m, k, gr = -1;
				float sc[64], wsc[64];
				shape_of(p, &m, &k);
				TT_REQUIRE(tern_source_ternary(s, l, (tern_proj)p, groups[gi], w, sc, &gr, &e) == 0);
				const int eff = groups[gi] ? groups[gi] : m;
				TT_CHECK(gr == eff);
				expect_absmean(md.bf[l][p], m, k, eff, want, wsc);
				TT_CHECKF(memcmp(w, want, (size_t)m * k) == 0, "group %d layer %d proj %d", eff, l, p);
				int ok = 1;
				for (int g = 0; g < (m + eff - 1) / eff; g++)
					ok &= sc[g] == wsc[g];
				TT_CHECKF(ok, "scales group %d layer %d proj %d", eff, l, p);
				for (int i = 0; i < m * k; i++)
					n_nonzero += w[i] != 0;
			}
	TT_CHECK(n_nonzero > 0);
	free(w);
	free(want);
	tern_source_close(s);
	model_free(&md);
}

static void test_absmean_by_hand(void)
{
	const float x[8] = {0.5f, -1.5f, 0.0f, 2.0f, 0.1f, -0.1f, 0.3f, 0.02f};
	int8_t w[8];
	float sc[2];
	tern_err e = {0};
	/* Per tensor: mean 0.565 -> x/0.565 rounds to 1 -1 0 1 / 0 0 1 0. */
	TT_REQUIRE(tern_absmean_quantize(x, 2, 4, 0, w, sc, &e) == 0);
	const int8_t w1[8] = {1, -1, 0, 1, 0, 0, 1, 0};
	TT_CHECK(memcmp(w, w1, 8) == 0);
	TT_CHECK(fabsf(sc[0] - 0.565f) < 1e-6f);
	/* Per row: row 0 mean 1.0 -> 0.5 rounds half to even (0), -1.5 -> -2 -> clamp -1;
	 * row 1 mean 0.13 -> 0.769 -> 1, -0.769 -> -1, 2.3 -> 1, 0.154 -> 0. */
	TT_REQUIRE(tern_absmean_quantize(x, 2, 4, 1, w, sc, &e) == 0);
	const int8_t w2[8] = {0, -1, 0, 1, 1, -1, 1, 0};
	TT_CHECK(memcmp(w, w2, 8) == 0);
	TT_CHECK(sc[0] == 1.0f && fabsf(sc[1] - 0.13f) < 1e-6f);
	/* All zeros: the 1e-5 floor, all ternary zero. */
	const float z[4] = {0};
	TT_REQUIRE(tern_absmean_quantize(z, 1, 4, 0, w, sc, &e) == 0);
	TT_CHECK(sc[0] == 1e-5f && w[0] == 0 && w[3] == 0);
	/* Non-finite input is an error. */
	const float bad[4] = {1.0f, INFINITY, 0, 0};
	TT_CHECK(tern_absmean_quantize(bad, 1, 4, 0, w, sc, &e) == TERN_EFORMAT && strstr(e.msg, "non-finite"));
}

static void test_hf_errors(void)
{
	char dir[512];
	tern_err e = {0};
	tern_source *s;
	tt_tmp_path(dir, sizeof dir, "hf-empty");
	mkdir(dir, 0755);
	TT_CHECK(tern_source_open(&s, dir, &e) == TERN_EIO && strstr(e.msg, "config.json"));
	write_common(dir, "online");
	TT_CHECK(tern_source_open(&s, dir, &e) == TERN_EFORMAT && strstr(e.msg, "no .safetensors"));
	/* A wrong shape is named. */
	uint16_t small[4] = {0};
	const st_entry ent = {"model.layers.0.self_attn.q_proj.weight", "BF16", 2, {2, 2}, small, sizeof small};
	char p[600];
	snprintf(p, sizeof p, "%s/model.safetensors", dir);
	TT_REQUIRE(st_write(p, &ent, 1) == 0);
	TT_CHECK(tern_source_open(&s, dir, &e) == TERN_EFORMAT && strstr(e.msg, "q_proj") && strstr(e.msg, "shape"));
	TT_CHECK(tern_source_open(&s, "/nonexistent-model", &e) == TERN_EIO);
}

TT_MAIN(TT_CASE(test_json), TT_CASE(test_config), TT_CASE(test_safetensors_basic_and_damaged),
	TT_CASE(test_absmean_by_hand), TT_CASE(test_hf_packed), TT_CASE(test_hf_bf16), TT_CASE(test_hf_errors))
