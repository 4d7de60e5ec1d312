/* test_gguf.c: partition/'s GGUF reader and writer, the I2_S layout, the
 * synthetic model generator and the model source over GGUF files: round
 * trips bit for bit, every metadata type, GGUF v2 and v3, and damaged files
 * (each must give a one-line error naming the file, never a crash). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tern-gguf.h"
#include "tern-half.h"
#include "tern-source.h"
#include "tern-synth.h"
#include "tern-test.h"
#include "test-util.h"

/* A one-line message that names the file. */
static int names_file(const tern_err *e, const char *path)
{
	return strncmp(e->msg, path, strlen(path)) == 0 && strchr(e->msg, '\n') == NULL;
}

/* ---- I2_S by hand --------------------------------------------------------- */

static void test_i2s_hand_built(void)
{
	/* m = 2 rows, k = 128: 256 elements = 2 blocks of 128 = 64 bytes + 32 tail. */
	uint8_t data[64 + 32];
	memset(data, 0x55, 64); /* code 1 everywhere: all zeros */
	/* Block 0, byte 0: elements 0 (bits 7-6), 32 (5-4), 64 (3-2), 96 (1-0). */
	data[0] = (uint8_t)((2 << 6) | (1 << 4) | (0 << 2) | 2); /* +1, 0, -1, +1 */
	/* Block 1 (row 1), byte 5: elements 128+5, 128+37, 128+69, 128+101. */
	data[32 + 5] = (uint8_t)((0 << 6) | (2 << 4) | (2 << 2) | 0); /* -1, +1, +1, -1 */
	const float scale = 0.3125f;
	memset(data + 64, 0, 32);
	memcpy(data + 64, &scale, 4); /* scale at byte m*k/4 */
	int8_t w[256];
	tern_err e = {0};
	TT_REQUIRE(tern_i2s_decode_rows(data, 2, 128, 0, 2, w, "hand", &e) == 0);
	int8_t want[256];
	memset(want, 0, sizeof want);
	want[0] = 1;
	want[32] = 0;
	want[64] = -1;
	want[96] = 1;
	want[128 + 5] = -1;
	want[128 + 37] = 1;
	want[128 + 69] = 1;
	want[128 + 101] = -1;
	TT_CHECK(memcmp(w, want, sizeof w) == 0);
	TT_CHECK(tern_i2s_scale(data, 2, 128) == scale);
	/* Row range decode: row 1 alone. */
	int8_t r1[128];
	TT_REQUIRE(tern_i2s_decode_rows(data, 2, 128, 1, 1, r1, "hand", &e) == 0);
	TT_CHECK(memcmp(r1, want + 128, 128) == 0);
	/* Encode is the exact inverse. */
	uint8_t back[64];
	tern_i2s_encode(back, 0, want, 256);
	TT_CHECK(memcmp(back, data, 64) == 0);
	/* Code 3 is rejected. */
	data[7] = 0xFF;
	TT_CHECK(tern_i2s_decode_rows(data, 2, 128, 0, 2, w, "hand", &e) == TERN_EFORMAT);
	TT_CHECK(strstr(e.msg, "code 3") != NULL);
	/* k not a multiple of 128 but m*k is (the 3B down projection): flattened order. */
	uint8_t d2[3 * 64 / 4];
	int8_t v2[192], u2[192];
	for (int i = 0; i < 192; i++)
		v2[i] = (int8_t)((i * 7 % 3) - 1);
	/* m = 3, k = 64 -> 192 elements: not a multiple of 128 -> decode refuses. */
	TT_CHECK(tern_i2s_decode_rows(d2, 3, 64, 0, 3, u2, "odd", &e) == TERN_EINVAL);
	uint8_t d3[256 / 4];
	int8_t v3[256], u3[256];
	for (int i = 0; i < 256; i++)
		v3[i] = (int8_t)((i * 5 % 3) - 1);
	tern_i2s_encode(d3, 0, v3, 256);
	TT_CHECK(tern_i2s_decode_rows(d3, 4, 64, 0, 4, u3, "k64", &e) == 0 && memcmp(u3, v3, 256) == 0);
	(void)v2;
}

/* GGUF code of a tern_dtype */
#define GGML(t) tern_dtype_ggml(TERN_DTYPE_##t)

static void test_nbytes(void)
{
	const uint64_t ne[2] = {2560, 640};
	TT_EQ_INT(tern_ggml_nbytes(GGML(I2_S), 2, ne), 2560 * 640 / 4 + 32);
	TT_EQ_INT(tern_ggml_nbytes(GGML(TL1), 2, ne), 2560 * 640 / 4 + 32);
	TT_EQ_INT(tern_ggml_nbytes(GGML(F16), 2, ne), 2560 * 640 * 2);
	TT_EQ_INT(tern_ggml_nbytes(GGML(BF16), 2, ne), 2560 * 640 * 2);
	TT_EQ_INT(tern_ggml_nbytes(GGML(F32), 1, ne), 2560 * 4);
	TT_EQ_INT(tern_ggml_nbytes(GGML(I8), 2, ne), 2560 * 640);
	TT_EQ_INT(tern_ggml_nbytes(8 /* q8_0 */, 2, ne), 2560 / 32 * 34 * 640);
	/* TL2 per MODEL-FORMATS 2.2: ((k-256)*m/3*5/8 + 256*m/2*4/8) rounded up to 32, + 32. */
	const uint64_t t2[2] = {3200, 8640};
	uint64_t want = (3200 - 256) * 8640ull / 3 * 5 / 8 + 256 * 8640ull / 2 * 4 / 8;
	want = (want + 31) / 32 * 32 + 32;
	TT_EQ_INT(tern_ggml_nbytes(GGML(TL2), 2, t2), want);
	TT_EQ_INT(tern_ggml_nbytes(99, 2, ne), 0);
	TT_EQ_INT(tern_ggml_nbytes(4, 2, ne), 0); /* removed ggml id */
	const uint64_t huge[4] = {1ull << 40, 1ull << 40, 1ull << 40, 1};
	TT_EQ_INT(tern_ggml_nbytes(GGML(F32), 3, huge), 0);
	TT_CHECK(strcmp(tern_ggml_type_name(GGML(I2_S)), "i2_s") == 0);
}

/* ---- writer / reader, every metadata type ----------------------------------- */

/* A small GGUF with one KV of every type, arrays of every type and three
 * tensors (F32 norm, F16 matrix, I2_S matrix). */
static int write_small(const char *path, uint32_t version, uint32_t alignment, tern_err *e)
{
	tern_gguf_writer *w;
	int rc = tern_gguf_writer_open(&w, path, version, alignment, e);
	if (rc < 0)
		return rc;
	const uint8_t u8 = 200;
	const int8_t i8 = -100;
	const uint16_t u16 = 60000;
	const int16_t i16 = -30000;
	const uint32_t u32 = 4000000000u;
	const int32_t i32 = -2000000000;
	const float f32 = 1.5f;
	const uint8_t b = 1;
	const char *str = "hello gguf";
	const uint64_t u64 = 0xFEDCBA9876543210ull;
	const int64_t i64 = -1234567890123ll;
	const double f64 = 2.718281828459045;
	rc = rc ? rc : tern_gguf_writer_add_str(w, "general.architecture", "bitnet-b1.58", e);
	rc = rc ? rc : tern_gguf_writer_add_scalar(w, "t.u8", TERN_GGUF_U8, &u8, e);
	rc = rc ? rc : tern_gguf_writer_add_scalar(w, "t.i8", TERN_GGUF_I8, &i8, e);
	rc = rc ? rc : tern_gguf_writer_add_scalar(w, "t.u16", TERN_GGUF_U16, &u16, e);
	rc = rc ? rc : tern_gguf_writer_add_scalar(w, "t.i16", TERN_GGUF_I16, &i16, e);
	rc = rc ? rc : tern_gguf_writer_add_scalar(w, "t.u32", TERN_GGUF_U32, &u32, e);
	rc = rc ? rc : tern_gguf_writer_add_scalar(w, "t.i32", TERN_GGUF_I32, &i32, e);
	rc = rc ? rc : tern_gguf_writer_add_scalar(w, "t.f32", TERN_GGUF_F32, &f32, e);
	rc = rc ? rc : tern_gguf_writer_add_scalar(w, "t.bool", TERN_GGUF_BOOL, &b, e);
	rc = rc ? rc : tern_gguf_writer_add_scalar(w, "t.str", TERN_GGUF_STRING, &str, e);
	rc = rc ? rc : tern_gguf_writer_add_scalar(w, "t.u64", TERN_GGUF_U64, &u64, e);
	rc = rc ? rc : tern_gguf_writer_add_scalar(w, "t.i64", TERN_GGUF_I64, &i64, e);
	rc = rc ? rc : tern_gguf_writer_add_scalar(w, "t.f64", TERN_GGUF_F64, &f64, e);
	const uint8_t au8[3] = {1, 2, 255};
	const int8_t ai8[3] = {-1, 0, 127};
	const uint16_t au16[2] = {1, 65535};
	const int16_t ai16[2] = {-32768, 5};
	const uint32_t au32[2] = {7, 4294967295u};
	const int32_t ai32[3] = {1, -1, 3};
	const float af32[2] = {0.25f, -8.0f};
	const uint8_t abool[3] = {1, 0, 1};
	const char *astr[3] = {"a", "", "ccc"};
	const uint64_t au64[1] = {1ull << 63};
	const int64_t ai64[2] = {-5, 5};
	const double af64[1] = {-0.5};
	rc = rc ? rc : tern_gguf_writer_add_array(w, "a.u8", TERN_GGUF_U8, au8, 3, e);
	rc = rc ? rc : tern_gguf_writer_add_array(w, "a.i8", TERN_GGUF_I8, ai8, 3, e);
	rc = rc ? rc : tern_gguf_writer_add_array(w, "a.u16", TERN_GGUF_U16, au16, 2, e);
	rc = rc ? rc : tern_gguf_writer_add_array(w, "a.i16", TERN_GGUF_I16, ai16, 2, e);
	rc = rc ? rc : tern_gguf_writer_add_array(w, "a.u32", TERN_GGUF_U32, au32, 2, e);
	rc = rc ? rc : tern_gguf_writer_add_array(w, "a.i32", TERN_GGUF_I32, ai32, 3, e);
	rc = rc ? rc : tern_gguf_writer_add_array(w, "a.f32", TERN_GGUF_F32, af32, 2, e);
	rc = rc ? rc : tern_gguf_writer_add_array(w, "a.bool", TERN_GGUF_BOOL, abool, 3, e);
	rc = rc ? rc : tern_gguf_writer_add_array(w, "a.str", TERN_GGUF_STRING, astr, 3, e);
	rc = rc ? rc : tern_gguf_writer_add_array(w, "a.u64", TERN_GGUF_U64, au64, 1, e);
	rc = rc ? rc : tern_gguf_writer_add_array(w, "a.i64", TERN_GGUF_I64, ai64, 2, e);
	rc = rc ? rc : tern_gguf_writer_add_array(w, "a.f64", TERN_GGUF_F64, af64, 1, e);
	rc = rc ? rc : tern_gguf_writer_add_array(w, "a.empty", TERN_GGUF_I32, NULL, 0, e);
	const uint64_t ne_norm[1] = {8}, ne_mat[2] = {4, 3}, ne_i2s[2] = {128, 2};
	rc = rc ? rc : tern_gguf_writer_add_tensor(w, "norm", 1, ne_norm, TERN_DTYPE_F32, e);
	rc = rc ? rc : tern_gguf_writer_add_tensor(w, "mat", 2, ne_mat, TERN_DTYPE_F16, e);
	rc = rc ? rc : tern_gguf_writer_add_tensor(w, "tern", 2, ne_i2s, TERN_DTYPE_I2_S, e);
	rc = rc ? rc : tern_gguf_writer_write_header(w, e);
	float norm[8];
	for (int i = 0; i < 8; i++)
		norm[i] = (float)i * 0.5f;
	uint16_t mat[12];
	for (int i = 0; i < 12; i++)
		mat[i] = tern_f32_to_f16((float)(i - 6));
	uint8_t i2s[64 + 32] = {0};
	int8_t tw[256];
	for (int i = 0; i < 256; i++)
		tw[i] = (int8_t)(i % 3 - 1);
	tern_i2s_encode(i2s, 0, tw, 256);
	const float sc = 0.75f;
	memcpy(i2s + 64, &sc, 4);
	rc = rc ? rc : tern_gguf_writer_write(w, norm, 16, e); /* in two chunks */
	rc = rc ? rc : tern_gguf_writer_write(w, norm + 4, 16, e);
	rc = rc ? rc : tern_gguf_writer_write(w, mat, sizeof mat, e);
	rc = rc ? rc : tern_gguf_writer_write(w, i2s, sizeof i2s, e);
	rc = rc ? rc : tern_gguf_writer_finish(w, e);
	tern_gguf_writer_free(w);
	return rc;
}

static void check_small(const char *path, uint32_t version, uint32_t alignment)
{
	tern_err e = {0};
	tern_gguf *g;
	TT_REQUIRE(tern_gguf_open(&g, path, &e) == 0);
	TT_EQ_INT(tern_gguf_version(g), version);
	TT_EQ_INT(tern_gguf_alignment(g), alignment);
	TT_EQ_INT(tern_gguf_data_offset(g) % alignment, 0);
	uint32_t u32;
	int32_t i32;
	uint64_t u64;
	int64_t i64;
	float f;
	double d;
	int bl;
	TT_CHECK(tern_gguf_get_u32(g, "t.u8", &u32, &e) == 0 && u32 == 200);
	TT_CHECK(tern_gguf_get_i32(g, "t.i8", &i32, &e) == 0 && i32 == -100);
	TT_CHECK(tern_gguf_get_u32(g, "t.u16", &u32, &e) == 0 && u32 == 60000);
	TT_CHECK(tern_gguf_get_i32(g, "t.i16", &i32, &e) == 0 && i32 == -30000);
	TT_CHECK(tern_gguf_get_u32(g, "t.u32", &u32, &e) == 0 && u32 == 4000000000u);
	TT_CHECK(tern_gguf_get_i32(g, "t.i32", &i32, &e) == 0 && i32 == -2000000000);
	TT_CHECK(tern_gguf_get_f32(g, "t.f32", &f, &e) == 0 && f == 1.5f);
	TT_CHECK(tern_gguf_get_bool(g, "t.bool", &bl, &e) == 0 && bl == 1);
	TT_CHECK(tern_gguf_get_u64(g, "t.u64", &u64, &e) == 0 && u64 == 0xFEDCBA9876543210ull);
	TT_CHECK(tern_gguf_get_i64(g, "t.i64", &i64, &e) == 0 && i64 == -1234567890123ll);
	TT_CHECK(tern_gguf_get_f64(g, "t.f64", &d, &e) == 0 && d == 2.718281828459045);
	const char *s;
	uint64_t sl;
	TT_CHECK(tern_gguf_get_str(g, "t.str", &s, &sl, &e) == 0 && sl == 10 && memcmp(s, "hello gguf", 10) == 0);
	/* Conversions that do not fit are errors, naming file and key. */
	TT_CHECK(tern_gguf_get_u32(g, "t.i8", &u32, &e) == TERN_EFORMAT && names_file(&e, path) &&
		 strstr(e.msg, "t.i8"));
	TT_CHECK(tern_gguf_get_i32(g, "t.u32", &i32, &e) == TERN_EFORMAT);
	TT_CHECK(tern_gguf_get_i64(g, "t.u64", &i64, &e) == TERN_EFORMAT);
	TT_CHECK(tern_gguf_get_str(g, "t.u8", &s, &sl, &e) == TERN_EFORMAT && strstr(e.msg, "expected string"));
	TT_CHECK(tern_gguf_get_bool(g, "t.u8", &bl, &e) == TERN_EFORMAT);
	TT_CHECK(tern_gguf_get_u32(g, "no.such.key", &u32, &e) == TERN_EFORMAT && strstr(e.msg, "missing"));
	TT_CHECK(tern_gguf_find_key(g, "no.such.key") == -1);
	TT_CHECK(tern_gguf_kv_type(g, tern_gguf_find_key(g, "t.f64")) == TERN_GGUF_F64);
	TT_CHECK(tern_gguf_kv_key(g, 9999) == NULL);
	/* Arrays. */
	uint32_t et;
	uint64_t n;
	const struct {
		const char *key;
		uint32_t type;
		uint64_t n;
	} arrs[] = {{"a.u8", TERN_GGUF_U8, 3},    {"a.i8", TERN_GGUF_I8, 3},     {"a.u16", TERN_GGUF_U16, 2},
		    {"a.i16", TERN_GGUF_I16, 2},  {"a.u32", TERN_GGUF_U32, 2},   {"a.i32", TERN_GGUF_I32, 3},
		    {"a.f32", TERN_GGUF_F32, 2},  {"a.bool", TERN_GGUF_BOOL, 3}, {"a.str", TERN_GGUF_STRING, 3},
		    {"a.u64", TERN_GGUF_U64, 1},  {"a.i64", TERN_GGUF_I64, 2},   {"a.f64", TERN_GGUF_F64, 1},
		    {"a.empty", TERN_GGUF_I32, 0}};
	for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++)
		TT_CHECKF(tern_gguf_get_arr(g, arrs[i].key, &et, &n, &e) == 0 && et == arrs[i].type && n == arrs[i].n,
			  "%s", arrs[i].key);
	int64_t v;
	TT_CHECK(tern_gguf_arr_i64(g, tern_gguf_find_key(g, "a.u8"), 2, &v, &e) == 0 && v == 255);
	TT_CHECK(tern_gguf_arr_i64(g, tern_gguf_find_key(g, "a.i8"), 0, &v, &e) == 0 && v == -1);
	TT_CHECK(tern_gguf_arr_i64(g, tern_gguf_find_key(g, "a.u16"), 1, &v, &e) == 0 && v == 65535);
	TT_CHECK(tern_gguf_arr_i64(g, tern_gguf_find_key(g, "a.i16"), 0, &v, &e) == 0 && v == -32768);
	TT_CHECK(tern_gguf_arr_i64(g, tern_gguf_find_key(g, "a.u32"), 1, &v, &e) == 0 && v == 4294967295ll);
	TT_CHECK(tern_gguf_arr_i64(g, tern_gguf_find_key(g, "a.i32"), 1, &v, &e) == 0 && v == -1);
	TT_CHECK(tern_gguf_arr_i64(g, tern_gguf_find_key(g, "a.i64"), 0, &v, &e) == 0 && v == -5);
	TT_CHECK(tern_gguf_arr_i64(g, tern_gguf_find_key(g, "a.u64"), 0, &v, &e) == TERN_EFORMAT); /* 2^63 */
	TT_CHECK(tern_gguf_arr_f64(g, tern_gguf_find_key(g, "a.f32"), 1, &d, &e) == 0 && d == -8.0);
	TT_CHECK(tern_gguf_arr_f64(g, tern_gguf_find_key(g, "a.f64"), 0, &d, &e) == 0 && d == -0.5);
	TT_CHECK(tern_gguf_arr_f64(g, tern_gguf_find_key(g, "a.str"), 0, &d, &e) == TERN_EFORMAT);
	TT_CHECK(tern_gguf_arr_str(g, tern_gguf_find_key(g, "a.str"), 2, &s, &sl, &e) == 0 && sl == 3 &&
		 memcmp(s, "ccc", 3) == 0);
	TT_CHECK(tern_gguf_arr_str(g, tern_gguf_find_key(g, "a.str"), 1, &s, &sl, &e) == 0 && sl == 0);
	TT_CHECK(tern_gguf_arr_str(g, tern_gguf_find_key(g, "a.str"), 3, &s, &sl, &e) == TERN_EINVAL);
	TT_CHECK(tern_gguf_arr_i64(g, tern_gguf_find_key(g, "t.u8"), 0, &v, &e) == TERN_EINVAL);
	size_t es;
	const uint8_t *bools = tern_gguf_arr_data(g, tern_gguf_find_key(g, "a.bool"), &es);
	TT_CHECK(bools && es == 1 && bools[0] == 1 && bools[1] == 0 && bools[2] == 1);
	TT_CHECK(tern_gguf_arr_data(g, tern_gguf_find_key(g, "a.str"), &es) == NULL);
	/* Tensors. */
	TT_REQUIRE(tern_gguf_n_tensors(g) == 3);
	const tern_gguf_tensor *tn = tern_gguf_find_tensor(g, "norm"), *tm = tern_gguf_find_tensor(g, "mat"),
			       *ti = tern_gguf_find_tensor(g, "tern");
	TT_REQUIRE(tn && tm && ti && !tern_gguf_find_tensor(g, "nope"));
	TT_CHECK(tn->dtype == TERN_DTYPE_F32 && tn->n_dims == 1 && tn->ne[0] == 8 && tn->nbytes == 32);
	TT_CHECK(tm->dtype == TERN_DTYPE_F16 && tm->ne[0] == 4 && tm->ne[1] == 3 && tm->nbytes == 24);
	TT_CHECK(ti->dtype == TERN_DTYPE_I2_S && ti->nbytes == 64 + 32);
	for (int i = 0; i < 3; i++)
		TT_CHECK(tern_gguf_tensor_at(g, i)->offset % alignment == 0);
	const void *dp;
	uint64_t nb;
	TT_REQUIRE(tern_gguf_tensor_data(g, tn, &dp, &nb, &e) == 0);
	float nv[8];
	memcpy(nv, dp, sizeof nv);
	TT_CHECK(nv[0] == 0.0f && nv[7] == 3.5f);
	TT_REQUIRE(tern_gguf_tensor_data(g, tm, &dp, &nb, &e) == 0);
	uint16_t h;
	memcpy(&h, (const uint8_t *)dp + 2 * 11, 2);
	TT_CHECK(tern_f16_to_f32(h) == 5.0f);
	int8_t tw[256];
	TT_REQUIRE(tern_gguf_tensor_data(g, ti, &dp, &nb, &e) == 0);
	TT_CHECK(tern_i2s_decode_rows(dp, 2, 128, 0, 2, tw, "t", &e) == 0);
	int ok = 1;
	for (int i = 0; i < 256; i++)
		ok &= tw[i] == i % 3 - 1;
	TT_CHECK(ok);
	TT_CHECK(tern_i2s_scale(dp, 2, 128) == 0.75f);
	tern_gguf_close(g);
}

static void test_roundtrip_v2_v3_alignment(void)
{
	char path[512];
	tern_err e = {0};
	tt_tmp_path(path, sizeof path, "small3.gguf");
	TT_REQUIRE(write_small(path, 3, 0, &e) == 0);
	check_small(path, 3, 32);
	tt_tmp_path(path, sizeof path, "small2.gguf");
	TT_REQUIRE(write_small(path, 2, 0, &e) == 0);
	check_small(path, 2, 32);
	tt_tmp_path(path, sizeof path, "small64.gguf");
	TT_REQUIRE(write_small(path, 3, 64, &e) == 0);
	check_small(path, 3, 64);
	/* The .tmp file is gone after finish. */
	char tmp[600];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	TT_CHECK(access(tmp, F_OK) != 0);
	/* Writer misuse. */
	tern_gguf_writer *w;
	TT_REQUIRE(tern_gguf_writer_open(&w, path, 3, 0, &e) == 0);
	TT_CHECK(tern_gguf_writer_add_u32(w, "k", 1, &e) == 0);
	TT_CHECK(tern_gguf_writer_add_u32(w, "k", 2, &e) == TERN_EINVAL);
	const uint64_t ne[1] = {4};
	TT_CHECK(tern_gguf_writer_add_tensor(w, "t", 1, ne, TERN_DTYPE_F32, &e) == 0);
	const uint64_t bad[2] = {5, 1};
	TT_CHECK(tern_gguf_writer_add_tensor(w, "i2", 2, bad, TERN_DTYPE_I2_S, &e) == TERN_EINVAL);
	TT_CHECK(tern_gguf_writer_write_header(w, &e) == 0);
	float x[8] = {0};
	TT_CHECK(tern_gguf_writer_write(w, x, 32, &e) == TERN_EINVAL); /* crosses the tensor end */
	TT_CHECK(tern_gguf_writer_write(w, x, 8, &e) == 0);
	TT_CHECK(tern_gguf_writer_finish(w, &e) == TERN_ESTATE); /* incomplete */
	tern_gguf_writer_free(w);
	TT_CHECK(access(tmp, F_OK) != 0);
	tern_gguf_writer_free(NULL);
	tern_gguf_close(NULL);
}

/* ---- damaged files ------------------------------------------------------------- */

static int open_bytes(const uint8_t *b, size_t n, const char *path, tern_err *e)
{
	if (tt_write_file(path, b, n) != 0)
		return 1;
	tern_gguf *g = NULL;
	const int rc = tern_gguf_open(&g, path, e);
	tern_gguf_close(g);
	return rc;
}

static size_t find_bytes(const uint8_t *hay, size_t n, const char *needle, size_t nl)
{
	for (size_t i = 0; i + nl <= n; i++)
		if (memcmp(hay + i, needle, nl) == 0)
			return i;
	return (size_t)-1;
}

/* v little-endian in the n bytes at p. */
static void put_le(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
#define put32(p, v) put_le(p, (uint32_t)(v), 4)
#define put64(p, v) put_le(p, v, 8)

static void test_damaged(void)
{
	char path[512], bad[512];
	tern_err e = {0};
	tt_tmp_path(path, sizeof path, "dmg.gguf");
	tt_tmp_path(bad, sizeof bad, "bad.gguf");
	TT_REQUIRE(write_small(path, 3, 0, &e) == 0);
	size_t n;
	uint8_t *orig = tt_read_file(path, &n);
	TT_REQUIRE(orig != NULL);
	uint8_t *b = malloc(n);
	TT_REQUIRE(b != NULL);

	/* Truncation at every length: an error naming the file, never a crash. */
	int all_fail = 1, all_named = 1;
	for (size_t len = 0; len < n; len++) {
		/* In memory (an exact-size copy, so ASan sees any over-read); the
		 * name given is what the message must carry. */
		uint8_t *cut = malloc(len ? len : 1);
		memcpy(cut, orig, len);
		tern_gguf *gc = NULL;
		const int rc = tern_gguf_open_mem(&gc, cut, len, bad, &e);
		tern_gguf_close(gc);
		free(cut);
		all_fail &= rc < 0;
		all_named &= names_file(&e, bad);
		if (rc >= 0)
			fprintf(stderr, "  truncation to %zu accepted\n", len);
	}
	TT_CHECK(all_fail);
	TT_CHECK(all_named);
	TT_CHECK(open_bytes(orig, n - 1, bad, &e) == TERN_ERANGE && strstr(e.msg, "past the end"));
	TT_CHECK(open_bytes(orig, 10, bad, &e) == TERN_ERANGE && strstr(e.msg, "truncated"));

	/* Wrong magic. */
	memcpy(b, orig, n);
	b[0] = 'X';
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_EFORMAT && strstr(e.msg, "wrong magic") && names_file(&e, bad));
	/* Unsupported versions (1, 4, big-endian 3). */
	memcpy(b, orig, n);
	put32(b + 4, 1);
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_EUNSUP && strstr(e.msg, "version 1"));
	put32(b + 4, 0x03000000);
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_EUNSUP && strstr(e.msg, "big-endian"));
	/* Huge tensor and KV counts: rejected before allocating. */
	memcpy(b, orig, n);
	put64(b + 8, 1ull << 60);
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_ERANGE && strstr(e.msg, "absurd tensor count"));
	memcpy(b, orig, n);
	put64(b + 16, UINT64_MAX);
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_ERANGE && strstr(e.msg, "absurd metadata count"));
	/* A huge key length (first KV's key length sits at byte 24). */
	memcpy(b, orig, n);
	put64(b + 24, 1ull << 62);
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_ERANGE && strstr(e.msg, "absurd"));
	/* A huge string length for general.architecture's value. */
	memcpy(b, orig, n);
	const size_t arch = find_bytes(orig, n, "general.architecture", 20);
	TT_REQUIRE(arch != (size_t)-1);
	put64(b + arch + 20 + 4, 1ull << 40);
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_ERANGE && strstr(e.msg, "truncated"));
	/* Unknown value type. */
	memcpy(b, orig, n);
	put32(b + arch + 20, 77);
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_EFORMAT && strstr(e.msg, "unknown value type"));
	/* Huge array count. */
	memcpy(b, orig, n);
	const size_t au32 = find_bytes(orig, n, "a.u32", 5);
	TT_REQUIRE(au32 != (size_t)-1);
	put64(b + au32 + 5 + 4 + 4, 1ull << 61);
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_ERANGE && strstr(e.msg, "a.u32"));
	const size_t astr = find_bytes(orig, n, "a.str", 5);
	memcpy(b, orig, n);
	put64(b + astr + 5 + 4 + 4, 1ull << 61);
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_ERANGE && strstr(e.msg, "absurd array length"));
	/* Nested array. */
	memcpy(b, orig, n);
	put32(b + au32 + 5 + 4, TERN_GGUF_ARRAY);
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_EFORMAT && strstr(e.msg, "nested"));
	/* Bad bool. */
	memcpy(b, orig, n);
	const size_t tb = find_bytes(orig, n, "t.bool", 6);
	b[tb + 6 + 4] = 7;
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_EFORMAT && strstr(e.msg, "bool"));
	/* Duplicate key: rename t.u16 to t.u32's spelling... same length: "t.u8x" vs; use t.i8 -> t.u8. */
	memcpy(b, orig, n);
	const size_t ti8 = find_bytes(orig, n, "t.i8", 4);
	b[ti8 + 2] = 'u';
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_EFORMAT && strstr(e.msg, "duplicate"));

	/* Tensor info fields: name "tern" (the I2_S tensor), then n_dims, ne[2], type, offset. */
	const size_t tt = find_bytes(orig, n, "tern", 4);
	TT_REQUIRE(tt != (size_t)-1);
	const size_t p_ndims = tt + 4, p_ne = p_ndims + 4, p_type = p_ne + 16, p_off = p_type + 4;
	memcpy(b, orig, n);
	put32(b + p_type, 99);
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_EUNSUP && strstr(e.msg, "unknown type 99") && strstr(e.msg, "tern"));
	memcpy(b, orig, n);
	put64(b + p_off, orig[p_off] + 1); /* misaligned */
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_ERANGE && strstr(e.msg, "alignment"));
	memcpy(b, orig, n);
	put64(b + p_off, 1ull << 40); /* out of range */
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_ERANGE && strstr(e.msg, "past the end"));
	memcpy(b, orig, n);
	put64(b + p_off, UINT64_MAX - 31); /* overflow when added */
	TT_CHECK(open_bytes(b, n, bad, &e) < 0);
	memcpy(b, orig, n);
	put64(b + p_ne + 8, 1000); /* tensor now extends past EOF */
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_ERANGE && strstr(e.msg, "past the end"));
	memcpy(b, orig, n);
	put64(b + p_ne, 0); /* zero dimension */
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_ERANGE && strstr(e.msg, "absurd dimension"));
	memcpy(b, orig, n);
	put64(b + p_ne, 1ull << 50);
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_ERANGE && strstr(e.msg, "absurd dimension"));
	memcpy(b, orig, n);
	put32(b + p_ndims, 9);
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_ERANGE && strstr(e.msg, "n_dims"));
	memcpy(b, orig, n);
	put64(b + p_ne, 129); /* I2_S with 258 elements: not a whole number of bytes */
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_ERANGE && strstr(e.msg, "impossible"));
	/* Duplicate tensor name: "mat" -> "tern"? lengths differ; rename "norm" -> "tern". */
	memcpy(b, orig, n);
	const size_t tn = find_bytes(orig, n, "norm", 4);
	memcpy(b + tn, "tern", 4);
	TT_CHECK(open_bytes(b, n, bad, &e) == TERN_EFORMAT && strstr(e.msg, "duplicate tensor"));
	/* TL2 is recognised, but its data is refused. */
	memcpy(b, orig, n);
	put32(b + p_type, GGML(TL1));
	TT_REQUIRE(tt_write_file(bad, b, n) == 0);
	tern_gguf *g;
	TT_REQUIRE(tern_gguf_open(&g, bad, &e) == 0);
	const void *dp;
	uint64_t nb;
	TT_CHECK(tern_gguf_tensor_data(g, tern_gguf_find_tensor(g, "tern"), &dp, &nb, &e) == TERN_EUNSUP &&
		 strstr(e.msg, "tl1"));
	tern_gguf_close(g);
	/* Memory open of the same damage classes, and an empty buffer. */
	TT_CHECK(tern_gguf_open_mem(&g, NULL, 0, "<empty>", &e) == TERN_EFORMAT && strstr(e.msg, "<empty>"));
	TT_CHECK(tern_gguf_open(&g, "/nonexistent/x.gguf", &e) == TERN_EIO && strstr(e.msg, "/nonexistent/x.gguf"));
	free(b);
	free(orig);
}

/* ---- architecture and hparams ------------------------------------------------- */

static int write_arch(const char *path, const char *arch, tern_err *e)
{
	tern_gguf_writer *w;
	TERN_FORWARD_IF_ERROR(tern_gguf_writer_open(&w, path, 3, 0, e));
	char k[128];
	int rc = tern_gguf_writer_add_str(w, "general.architecture", arch, e);
#define U(s, v)                                  \
	snprintf(k, sizeof k, "%s.%s", arch, s); \
	if (rc == 0)                             \
		rc = tern_gguf_writer_add_u32(w, k, v, e);
	U("embedding_length", 256)
	U("block_count", 2) U("attention.head_count", 4) U("feed_forward_length", 512) U("vocab_size", 300)
#undef U
	    rc = rc ? rc : tern_gguf_writer_write_header(w, e);
	rc = rc ? rc : tern_gguf_writer_finish(w, e);
	tern_gguf_writer_free(w);
	return rc;
}

static void test_arch(void)
{
	const char *ok[] = {"bitnet-b1.58", "bitnet-25", "bitnet", "bitnet-1.58", "llama", "qwen3"};
	char path[512];
	tern_err e = {0};
	tt_tmp_path(path, sizeof path, "arch.gguf");
	for (int i = 0; i < (int)(sizeof ok / sizeof ok[0]); i++) {
		TT_REQUIRE(write_arch(path, ok[i], &e) == 0);
		tern_gguf *g;
		TT_REQUIRE(tern_gguf_open(&g, path, &e) == 0);
		tern_hparams hp;
		TT_CHECKF(tern_gguf_hparams(g, &hp, &e) == 0, "%s: %s", ok[i], e.msg);
		TT_CHECK(strcmp(hp.arch, ok[i]) == 0 && hp.n_embd == 256 && hp.n_head_kv == 4 && hp.head_dim == 64 &&
			 hp.n_vocab == 300 && hp.n_ctx_train == 2048 && hp.norm_eps == 1e-5f && hp.tied_embeddings);
		tern_gguf_close(g);
	}
	TT_REQUIRE(write_arch(path, "qwen2", &e) == 0);
	tern_gguf *g;
	TT_REQUIRE(tern_gguf_open(&g, path, &e) == 0);
	tern_hparams hp;
	TT_CHECK(tern_gguf_hparams(g, &hp, &e) == TERN_EUNSUP && strstr(e.msg, "'qwen2'") && names_file(&e, path));
	tern_gguf_close(g);
	/* Missing required key. */
	tern_gguf_writer *w;
	TT_REQUIRE(tern_gguf_writer_open(&w, path, 3, 0, &e) == 0);
	TT_CHECK(tern_gguf_writer_add_str(w, "general.architecture", "bitnet-25", &e) == 0);
	TT_CHECK(tern_gguf_writer_write_header(w, &e) == 0 && tern_gguf_writer_finish(w, &e) == 0);
	tern_gguf_writer_free(w);
	TT_REQUIRE(tern_gguf_open(&g, path, &e) == 0);
	TT_CHECK(tern_gguf_hparams(g, &hp, &e) == TERN_EFORMAT && strstr(e.msg, "bitnet-25.embedding_length"));
	tern_gguf_close(g);
	/* Absurd dimensions are caught by validation, with the file named. */
	TT_REQUIRE(tern_gguf_writer_open(&w, path, 3, 0, &e) == 0);
	int rc = tern_gguf_writer_add_str(w, "general.architecture", "bitnet", &e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "bitnet.embedding_length", 256, &e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "bitnet.block_count", 100000, &e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "bitnet.attention.head_count", 4, &e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "bitnet.feed_forward_length", 512, &e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "bitnet.vocab_size", 300, &e);
	rc = rc ? rc : tern_gguf_writer_write_header(w, &e);
	rc = rc ? rc : tern_gguf_writer_finish(w, &e);
	tern_gguf_writer_free(w);
	TT_REQUIRE(rc == 0);
	TT_REQUIRE(tern_gguf_open(&g, path, &e) == 0);
	TT_CHECK(tern_gguf_hparams(g, &hp, &e) == TERN_ERANGE && strstr(e.msg, "layer count") && names_file(&e, path));
	tern_gguf_close(g);
}

/* A "bitnet" header (n_embd 256, 2 layers, 4 heads, ff 512, vocab 300) with
 * one more u32 key (ukey, when not NULL), one more string key (skey) and, when
 * tensor is not NULL, one f32[4] tensor of that name. */
static int write_meta(const char *path, const char *ukey, uint32_t uval, const char *skey, const char *sval,
		      const char *tensor, tern_err *e)
{
	tern_gguf_writer *w;
	TERN_FORWARD_IF_ERROR(tern_gguf_writer_open(&w, path, 3, 0, e));
	int rc = tern_gguf_writer_add_str(w, "general.architecture", "bitnet", e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "bitnet.embedding_length", 256, e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "bitnet.block_count", 2, e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "bitnet.attention.head_count", 4, e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "bitnet.feed_forward_length", 512, e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "bitnet.vocab_size", 300, e);
	if (ukey)
		rc = rc ? rc : tern_gguf_writer_add_u32(w, ukey, uval, e);
	if (skey)
		rc = rc ? rc : tern_gguf_writer_add_str(w, skey, sval, e);
	const uint64_t ne[1] = {4};
	if (tensor)
		rc = rc ? rc : tern_gguf_writer_add_tensor(w, tensor, 1, ne, TERN_DTYPE_F32, e);
	rc = rc ? rc : tern_gguf_writer_write_header(w, e);
	const float z[4] = {0};
	if (tensor)
		rc = rc ? rc : tern_gguf_writer_write(w, z, sizeof z, e);
	rc = rc ? rc : tern_gguf_writer_finish(w, e);
	tern_gguf_writer_free(w);
	return rc;
}

/* hparams of such a file: its return code, e.msg set on failure. */
static int meta_hparams(const char *path, tern_hparams *hp, tern_err *e)
{
	tern_gguf *g;
	TERN_FORWARD_IF_ERROR(tern_gguf_open(&g, path, e));
	const int rc = tern_gguf_hparams(g, hp, e);
	tern_gguf_close(g);
	return rc;
}

/* Metadata the engine relies on is checked against the tensors and the
 * vocabulary, with a one-line error naming the file and the key. */
static void test_metadata_checked(void)
{
	char path[512];
	tern_err e = {0};
	tern_hparams hp;
	tt_tmp_path(path, sizeof path, "meta.gguf");
	/* rope.dimension_count: the head size (64) loads; 0, 3 and 2^30 do not. */
	TT_REQUIRE(write_meta(path, "bitnet.rope.dimension_count", 64, NULL, NULL, NULL, &e) == 0);
	TT_CHECKF(meta_hparams(path, &hp, &e) == 0, "%s", e.msg);
	const uint32_t bad_rope[] = {0, 3, 1u << 30};
	for (int i = 0; i < 3; i++) {
		TT_REQUIRE(write_meta(path, "bitnet.rope.dimension_count", bad_rope[i], NULL, NULL, NULL, &e) == 0);
		TT_CHECKF(meta_hparams(path, &hp, &e) == TERN_EUNSUP && strstr(e.msg, "rope.dimension_count") &&
				  names_file(&e, path) && !strchr(e.msg, '\n'),
			  "rope %u: %s", bad_rope[i], e.msg);
	}
	/* block_count 2 with a tensor of layer 1 loads; one of layer 2 does not. */
	TT_REQUIRE(write_meta(path, NULL, 0, NULL, NULL, "blk.1.attn_norm.weight", &e) == 0);
	TT_CHECKF(meta_hparams(path, &hp, &e) == 0, "%s", e.msg);
	TT_REQUIRE(write_meta(path, NULL, 0, NULL, NULL, "blk.2.attn_norm.weight", &e) == 0);
	TT_CHECKF(meta_hparams(path, &hp, &e) == TERN_EFORMAT && strstr(e.msg, "block_count is 2") &&
			  strstr(e.msg, "blk.2.attn_norm.weight") && names_file(&e, path),
		  "%s", e.msg);
	/* Token ids: inside the vocabulary load; 300 and 0xFFFFFFFF are refused
	 * for BOS the same as for EOS and EOT. */
	const char *ids[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
			     "tokenizer.ggml.eot_token_id"};
	for (int i = 0; i < 3; i++) {
		TT_REQUIRE(write_meta(path, ids[i], 299, NULL, NULL, NULL, &e) == 0);
		TT_CHECKF(meta_hparams(path, &hp, &e) == 0, "%s", e.msg);
		const uint32_t bad_id[] = {300, 0xFFFFFFFFu};
		for (int j = 0; j < 2; j++) {
			TT_REQUIRE(write_meta(path, ids[i], bad_id[j], NULL, NULL, NULL, &e) == 0);
			TT_CHECKF(meta_hparams(path, &hp, &e) == TERN_ERANGE && strstr(e.msg, ids[i]) &&
					  strstr(e.msg, "outside the vocabulary") && names_file(&e, path),
				  "%s %u: %s", ids[i], bad_id[j], e.msg);
		}
	}
	TT_REQUIRE(write_meta(path, NULL, 0, NULL, NULL, NULL, &e) == 0);
	TT_CHECK(meta_hparams(path, &hp, &e) == 0 && hp.bos_id == -1 && hp.eos_id == -1);
	/* The tokenizer type: what coordinator/text runs, refused here so that
	 * tern-partition refuses what tern-run would. */
	TT_REQUIRE(write_meta(path, NULL, 0, "tokenizer.ggml.model", "gpt2", NULL, &e) == 0);
	TT_CHECKF(meta_hparams(path, &hp, &e) == 0, "%s", e.msg);
	TT_REQUIRE(write_meta(path, NULL, 0, "tokenizer.ggml.model", "nonsense", NULL, &e) == 0);
	TT_CHECKF(meta_hparams(path, &hp, &e) == TERN_EUNSUP && strstr(e.msg, "\"nonsense\" is not supported") &&
			  names_file(&e, path),
		  "%s", e.msg);
}

/* ---- synthetic model round trip ------------------------------------------------- */

static void check_synth_model(const char *path, const tern_hparams *hp, uint64_t seed)
{
	tern_err e = {0};
	tern_source *s;
	TT_REQUIRE(tern_source_open(&s, path, &e) == 0);
	const tern_hparams *h = tern_source_hparams(s);
	TT_CHECK(h->n_embd == hp->n_embd && h->n_layer == hp->n_layer && h->n_head == hp->n_head &&
		 h->n_head_kv == hp->n_head_kv && h->head_dim == hp->head_dim && h->n_ff == hp->n_ff &&
		 h->n_vocab == hp->n_vocab && h->n_ctx_train == hp->n_ctx_train && h->rope_theta == hp->rope_theta &&
		 h->norm_eps == hp->norm_eps && h->tied_embeddings == 1 && h->bos_id == hp->bos_id &&
		 h->eos_id == hp->eos_id && h->eot_id == hp->eot_id && strcmp(h->arch, hp->arch) == 0);
	TT_CHECK(tern_source_prequantized(s) == 1);
	TT_CHECK(strcmp(tern_source_weight_format(s), "gguf i2_s") == 0);
	const int maxk = hp->n_ff > hp->n_embd ? hp->n_ff : hp->n_embd;
	int8_t *w = malloc((size_t)maxk * (size_t)maxk), *want = malloc((size_t)maxk * (size_t)maxk);
	float *f = malloc((size_t)maxk * sizeof(float));
	TT_REQUIRE(w && want && f);
	long long n_zero = 0, n_total = 0;
	for (int l = 0; l < hp->n_layer; l++) {
		for (int p = 0; p < TERN_PROJ_COUNT; p++) {
			int m, k, gr = 0;
			float sc[4] = {0};
			tern_proj_shape(hp, (tern_proj)p, &m, &k);
			/* A per-row-group request still yields the file's one scale. */
			TT_REQUIRE(tern_source_ternary(s, l, (tern_proj)p, 64, w, sc, &gr, &e) == 0);
			tern_synth_ternary_rows(seed, hp, l, (tern_proj)p, 0, m, want);
			TT_CHECKF(memcmp(w, want, (size_t)m * (size_t)k) == 0, "layer %d %s", l,
				  tern_proj_name((tern_proj)p));
			TT_CHECK(gr == m && sc[0] == tern_synth_scale(seed, hp, l, (tern_proj)p));
			for (long long i = 0; i < (long long)m * k; i++)
				n_zero += w[i] == 0;
			n_total += (long long)m * k;
		}
		for (int n = 0; n < TERN_NORM_OUTPUT; n++) {
			const int len = tern_norm_len(hp, (tern_norm_kind)n);
			TT_REQUIRE(tern_source_norm(s, l, (tern_norm_kind)n, f, &e) == 0);
			int ok = 1;
			for (int i = 0; i < len; i++)
				ok &= tern_norm_present(hp, (tern_norm_kind)n)
					  ? f[i] == tern_synth_norm(seed, l, (tern_norm_kind)n, i) && f[i] >= 0.9f &&
						f[i] <= 1.1f
					  : f[i] == 1.0f; /* a norm the arch lacks reads as ones */
			TT_CHECK(ok);
		}
	}
	/* ~1/3 zeros. */
	TT_CHECKF(n_zero > n_total * 0.30 && n_zero < n_total * 0.37, "%lld of %lld zero", n_zero, n_total);
	TT_REQUIRE(tern_source_norm(s, 0, TERN_NORM_OUTPUT, f, &e) == 0);
	TT_CHECK(f[3] == tern_synth_norm(seed, -1, TERN_NORM_OUTPUT, 3));
	tern_dense_view v;
	TT_REQUIRE(tern_source_dense(s, TERN_DENSE_TOKEN_EMBD, &v, &e) == 0);
	TT_CHECK(v.type == TERN_DTYPE_F16 && v.rows == hp->n_vocab && v.cols == hp->n_embd &&
		 v.row_bytes == (size_t)hp->n_embd * 2);
	TT_CHECK(tern_source_dense(s, TERN_DENSE_OUTPUT, &v, &e) == TERN_EINVAL);
	TT_REQUIRE(tern_source_dense(s, TERN_DENSE_TOKEN_EMBD, &v, &e) == 0);
	double sum2 = 0;
	int ok = 1;
	for (int64_t t = 0; t < hp->n_vocab; t += hp->n_vocab / 7 + 1) {
		TT_REQUIRE(tern_dense_row_f32(&v, t, f, &e) == 0);
		for (int i = 0; i < hp->n_embd; i++) {
			uint16_t raw;
			memcpy(&raw, v.data + (size_t)t * v.row_bytes + 2 * (size_t)i, 2);
			ok &= raw == tern_synth_embd_f16(seed, hp, t, i) && f[i] == tern_f16_to_f32(raw);
			sum2 += (double)f[i] * f[i];
		}
	}
	TT_CHECK(ok);
	TT_CHECK(tern_dense_row_f32(&v, hp->n_vocab, f, &e) == TERN_EINVAL);
	TT_CHECK(sum2 > 0);
	/* Tokenizer: byte-level BPE with specials where the hparams say. */
	const tern_vocab *voc;
	TT_REQUIRE(tern_source_vocab(s, &voc, &e) == 0);
	TT_CHECK(strcmp(voc->model, "gpt2") == 0 && strcmp(voc->pre, "llama-bpe") == 0);
	TT_CHECK(voc->n_tokens == hp->n_vocab && voc->add_bos == 1 && voc->token_type != NULL);
	TT_CHECK(voc->bos_id == hp->bos_id && voc->eos_id == hp->eos_id && voc->eot_id == hp->eot_id);
	if (hp->bos_id >= 0)
		TT_CHECK(strcmp(voc->tokens[hp->bos_id], "<|begin_of_text|>") == 0 && voc->token_type[hp->bos_id] == 3);
	int n_bytes = 0, has_space = 0, has_a = 0;
	for (int64_t i = 0; i < voc->n_tokens; i++) {
		if (voc->token_type[i] == 1 && voc->token_len[i] <= 2)
			n_bytes++;
		has_space |= strcmp(voc->tokens[i], "\xC4\xA0") == 0; /* 'Ġ' */
		has_a |= strcmp(voc->tokens[i], "a") == 0;
	}
	TT_CHECK(n_bytes >= 256 && has_space && has_a);
	TT_CHECK(voc->n_merges > 20);
	/* Every merge "A B" joins two tokens of the vocabulary into a third. */
	int merges_ok = 1;
	for (int64_t mi = 0; mi < voc->n_merges; mi++) {
		const char *sp = strchr(voc->merges[mi], ' ');
		if (!sp) {
			merges_ok = 0;
			continue;
		}
		char a[128], bb[128], j[256];
		snprintf(a, sizeof a, "%.*s", (int)(sp - voc->merges[mi]), voc->merges[mi]);
		snprintf(bb, sizeof bb, "%s", sp + 1);
		snprintf(j, sizeof j, "%s%s", a, bb);
		int fa = 0, fb = 0, fj = 0;
		for (int64_t i = 0; i < voc->n_tokens; i++) {
			fa |= strcmp(voc->tokens[i], a) == 0;
			fb |= strcmp(voc->tokens[i], bb) == 0;
			fj |= strcmp(voc->tokens[i], j) == 0;
		}
		merges_ok &= fa && fb && fj;
	}
	TT_CHECK(merges_ok);
	free(w);
	free(want);
	free(f);
	tern_source_close(s);
}

static void progress_cb(void *ud, uint64_t done, uint64_t total)
{
	uint64_t *last = ud;
	if (done < last[0] || done > total)
		last[1] = 1; /* went backwards or past the total */
	last[0] = done;
	last[2] = total;
}

/* hp from a preset and overrides, and path the name of a fresh temporary
 * file: 0, or the first error. */
static int synth_setup(tern_hparams *hp, const char *preset, const char *over, char *path, size_t len,
		       const char *name, tern_err *e)
{
	TERN_FORWARD_IF_ERROR(tern_hparams_preset(preset, hp, e));
	TERN_FORWARD_IF_ERROR(tern_synth_override(hp, over, e));
	tt_tmp_path(path, len, name);
	return 0;
}

static void test_synth_roundtrip_small(void)
{
	tern_hparams hp;
	tern_err e = {0};
	char path[512];
	TT_REQUIRE(synth_setup(&hp, "125m", "n_layer=2,n_vocab=1000", path, sizeof path, "synth125.gguf", &e) == 0);
	uint64_t prog[3] = {0, 0, 0};
	tern_synth_opts o = {3, -1, progress_cb, prog};
	TT_REQUIRE(tern_synth_write(path, &hp, 42, &o, &e) == 0);
	size_t n;
	uint8_t *bytes = tt_read_file(path, &n);
	TT_REQUIRE(bytes);
	TT_CHECK(tern_synth_file_bytes(&hp, &o) == n);
	TT_CHECK(prog[1] == 0 && prog[0] == n && prog[2] == n);
	check_synth_model(path, &hp, 42);
	/* Deterministic: the same seed gives the same bytes, another seed differs. */
	char path2[512];
	tt_tmp_path(path2, sizeof path2, "synth125b.gguf");
	TT_REQUIRE(tern_synth_write(path2, &hp, 42, NULL, &e) == 0);
	size_t n2;
	uint8_t *b2 = tt_read_file(path2, &n2);
	TT_CHECK(b2 && n2 == n && memcmp(bytes, b2, n) == 0);
	free(b2);
	TT_REQUIRE(tern_synth_write(path2, &hp, 43, NULL, &e) == 0);
	b2 = tt_read_file(path2, &n2);
	TT_CHECK(b2 && n2 == n && memcmp(bytes, b2, n) != 0);
	free(b2);
	/* GGUF v2 output reads back the same. */
	tern_synth_opts o2 = {2, -1, NULL, NULL};
	TT_REQUIRE(tern_synth_write(path2, &hp, 42, &o2, &e) == 0);
	check_synth_model(path2, &hp, 42);

	/* A code-3 byte in a projection is reported, naming file and tensor. */
	tern_gguf *g;
	TT_REQUIRE(tern_gguf_open(&g, path, &e) == 0);
	const tern_gguf_tensor *t = tern_gguf_find_tensor(g, "blk.1.ffn_up.weight");
	TT_REQUIRE(t != NULL);
	const size_t pos = (size_t)tern_gguf_data_offset(g) + (size_t)t->offset + 100;
	tern_gguf_close(g);
	bytes[pos] = 0xFF;
	char bad[512];
	tt_tmp_path(bad, sizeof bad, "synth-bad.gguf");
	TT_REQUIRE(tt_write_file(bad, bytes, n) == 0);
	tern_source *s;
	TT_REQUIRE(tern_source_open(&s, bad, &e) == 0);
	int m, k, gr;
	tern_proj_shape(&hp, TERN_PROJ_UP, &m, &k);
	int8_t *w = malloc((size_t)m * (size_t)k);
	float sc;
	TT_CHECK(tern_source_ternary(s, 1, TERN_PROJ_UP, 0, w, &sc, &gr, &e) == TERN_EFORMAT &&
		 strstr(e.msg, "blk.1.ffn_up.weight") && names_file(&e, bad));
	TT_CHECK(tern_source_ternary(s, 2, TERN_PROJ_UP, 0, w, &sc, &gr, &e) == TERN_EINVAL);
	free(w);
	tern_source_close(s);
	/* A missing tensor is named at open. */
	TT_REQUIRE(tt_write_file(bad, bytes, n) == 0);
	tern_gguf *g2;
	TT_REQUIRE(tern_gguf_open(&g2, path, &e) == 0);
	tern_gguf_close(g2);
	const size_t at = find_bytes(bytes, n, "blk.0.attn_v.weight", 19);
	TT_REQUIRE(at != (size_t)-1);
	bytes[at + 11] = 'x'; /* blk.0.attn_x.weight */
	TT_REQUIRE(tt_write_file(bad, bytes, n) == 0);
	TT_CHECK(tern_source_open(&s, bad, &e) == TERN_EFORMAT && strstr(e.msg, "blk.0.attn_v.weight") &&
		 names_file(&e, bad));
	free(bytes);
	tern_source_close(NULL);
}

/* The Llama-style presets in their own GGUF form (issue 17): llama.* keys, no
 * sub-norm tensors, q/k rows stored in the converter's interleaved order;
 * tern_source reads back the generator's (HF order) matrices. */
static void test_synth_llama(void)
{
	static const char *const presets[] = {"llama3-8b", "falcon3-10b"};
	for (int pi = 0; pi < 2; pi++) {
		tern_hparams hp;
		tern_err e = {0};
		char path[512];
		TT_REQUIRE(synth_setup(&hp, presets[pi],
				       "n_embd=256,n_head=4,n_head_kv=2,n_ff=512,n_layer=2,n_vocab=1000,bos=997,eos=998,"
				       "eot=999",
				       path, sizeof path, "synth-llama.gguf", &e) == 0);
		TT_CHECK(strcmp(hp.arch, "llama") == 0);
		TT_REQUIRE(tern_synth_write(path, &hp, 9, NULL, &e) == 0);
		check_synth_model(path, &hp, 9);
		tern_gguf *g;
		TT_REQUIRE(tern_gguf_open(&g, path, &e) == 0);
		TT_CHECK(tern_gguf_find_key(g, "llama.block_count") >= 0 &&
			 tern_gguf_find_key(g, "bitnet-b1.58.block_count") < 0);
		TT_CHECK(!tern_gguf_find_tensor(g, "blk.0.attn_sub_norm.weight") &&
			 !tern_gguf_find_tensor(g, "blk.1.ffn_sub_norm.weight") &&
			 tern_gguf_find_tensor(g, "blk.1.ffn_norm.weight"));
		/* the stored q rows: GGUF row h*hd + 2i + j is the generator's h*hd + j*hd/2 + i */
		const tern_gguf_tensor *t = tern_gguf_find_tensor(g, "blk.1.attn_q.weight");
		TT_REQUIRE(t && t->dtype == TERN_DTYPE_I2_S);
		int8_t *raw = malloc(256 * 256), *gen = malloc(256 * 256);
		TT_REQUIRE(raw && gen);
		TT_REQUIRE(tern_i2s_decode_rows(t->data, 256, 256, 0, 256, raw, "q", &e) == 0);
		tern_synth_ternary_rows(9, &hp, 1, TERN_PROJ_Q, 0, 256, gen);
		int bad = 0, moved = 0;
		for (int r = 0; r < 256; r++) {
			const int h = r / 64, i = (r % 64) / 2, j = r % 2, hf = h * 64 + j * 32 + i;
			bad += memcmp(raw + r * 256, gen + hf * 256, 256) != 0;
			moved += hf != r && memcmp(raw + r * 256, gen + r * 256, 256) != 0;
		}
		TT_CHECK(bad == 0 && moved > 200);
		free(raw);
		free(gen);
		tern_gguf_close(g);
	}
}

static void test_synth_2b4t_widths(void)
{
	/* Real 2B4T widths (GQA 20/5, n_ff 6912), one layer, small vocabulary
	 * with the Llama-3 special ids. */
	tern_hparams hp;
	tern_err e = {0};
	char path[512];
	TT_REQUIRE(synth_setup(&hp, "2b4t", "layers=1,n_vocab=512,bos=400,eos=401,eot=409", path, sizeof path,
			       "synth2b.gguf", &e) == 0);
	TT_REQUIRE(tern_synth_write(path, &hp, 7, NULL, &e) == 0);
	tern_gguf *g;
	TT_REQUIRE(tern_gguf_open(&g, path, &e) == 0);
	/* The layout bitnet.cpp writes (MODEL-FORMATS 2.4). */
	const tern_gguf_tensor *t = tern_gguf_find_tensor(g, "blk.0.attn_k.weight");
	TT_CHECK(t && t->dtype == TERN_DTYPE_I2_S && t->ne[0] == 2560 && t->ne[1] == 640 &&
		 t->nbytes == 2560 * 640 / 4 + 32);
	t = tern_gguf_find_tensor(g, "blk.0.ffn_down.weight");
	TT_CHECK(t && t->dtype == TERN_DTYPE_I2_S && t->ne[0] == 6912 && t->ne[1] == 2560);
	t = tern_gguf_find_tensor(g, "token_embd.weight");
	TT_CHECK(t && t->dtype == TERN_DTYPE_F16 && t->ne[0] == 2560 && t->ne[1] == 512);
	t = tern_gguf_find_tensor(g, "blk.0.ffn_sub_norm.weight");
	TT_CHECK(t && t->dtype == TERN_DTYPE_F32 && t->ne[0] == 6912);
	TT_CHECK(tern_gguf_find_tensor(g, "output.weight") == NULL);
	TT_CHECK(tern_gguf_n_tensors(g) == 2 + 11);
	uint32_t u;
	TT_CHECK(tern_gguf_get_u32(g, "bitnet-b1.58.rope.dimension_count", &u, &e) == 0 && u == 128);
	TT_CHECK(tern_gguf_get_u32(g, "bitnet-b1.58.attention.head_count_kv", &u, &e) == 0 && u == 5);
	float fv;
	TT_CHECK(tern_gguf_get_f32(g, "bitnet-b1.58.rope.freq_base", &fv, &e) == 0 && fv == 500000.0f);
	tern_gguf_close(g);
	check_synth_model(path, &hp, 7);
	/* Scales are ~ 1/sqrt(k). */
	const float sq = tern_synth_scale(7, &hp, 0, TERN_PROJ_Q), sd = tern_synth_scale(7, &hp, 0, TERN_PROJ_DOWN);
	TT_CHECK(sq > 0.7f / sqrtf(2560) && sq < 1.3f / sqrtf(2560));
	TT_CHECK(sd > 0.7f / sqrtf(6912) && sd < 1.3f / sqrtf(6912));
}

static void test_synth_bad_shapes(void)
{
	tern_hparams hp;
	tern_err e = {0};
	TT_REQUIRE(tern_hparams_preset("125m", &hp, &e) == 0);
	TT_CHECK(tern_synth_override(&hp, "n_embd=770", &e) < 0); /* heads do not divide */
	TT_REQUIRE(tern_hparams_preset("125m", &hp, &e) == 0);
	TT_CHECK(tern_synth_override(&hp, "n_bogus=3", &e) == TERN_EINVAL && strstr(e.msg, "n_bogus"));
	TT_CHECK(tern_synth_override(&hp, "n_layer=abc", &e) == TERN_EINVAL);
	char path[512];
	TT_REQUIRE(synth_setup(&hp, "125m", "n_vocab=100", path, sizeof path, "never.gguf", &e) == 0);
	TT_CHECK(tern_synth_write(path, &hp, 1, NULL, &e) == TERN_EINVAL && strstr(e.msg, "too small"));
	TT_CHECK(access(path, F_OK) != 0);
	/* Big presets: size known without writing (the 70B file is ~17 GB of I2_S). */
	TT_REQUIRE(tern_hparams_preset("70b", &hp, &e) == 0);
	const uint64_t b70 = tern_synth_file_bytes(&hp, NULL);
	const uint64_t i2s = tern_hparams_layer_params(&hp) / 4 * (uint64_t)hp.n_layer;
	TT_CHECK(b70 > i2s && b70 < i2s + (uint64_t)hp.n_vocab * hp.n_embd * 2 + (64u << 20));
}

/* A GGUF with full-precision linear weights (F32, F16 and BF16 mixed) and an
 * untied F16 output matrix: the source quantizes with per-group absmean,
 * which must equal tern_absmean_quantize on the same values as f32. */
static void test_gguf_float_weights(void)
{
	tern_hparams hp;
	tern_err e = {0};
	char path[512];
	TT_REQUIRE(synth_setup(&hp, "125m", "n_embd=128,n_head=2,n_head_kv=1,n_ff=256,n_vocab=40,n_layer=1", path,
			       sizeof path, "float.gguf", &e) == 0);
	tern_gguf_writer *w;
	TT_REQUIRE(tern_gguf_writer_open(&w, path, 3, 0, &e) == 0);
	int rc = tern_gguf_writer_add_str(w, "general.architecture", "bitnet-25", &e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "bitnet-25.embedding_length", 128, &e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "bitnet-25.block_count", 1, &e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "bitnet-25.attention.head_count", 2, &e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "bitnet-25.attention.head_count_kv", 1, &e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "bitnet-25.feed_forward_length", 256, &e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "bitnet-25.vocab_size", 40, &e);
	TT_REQUIRE(rc == 0);
	const tern_dtype ptype[7] = {TERN_DTYPE_F32, TERN_DTYPE_F16, TERN_DTYPE_BF16, TERN_DTYPE_F32,
				     TERN_DTYPE_F16, TERN_DTYPE_F32, TERN_DTYPE_BF16};
	const uint64_t ne_e[2] = {128, 40};
	TT_REQUIRE(tern_gguf_writer_add_tensor(w, "token_embd.weight", 2, ne_e, TERN_DTYPE_F32, &e) == 0);
	TT_REQUIRE(tern_gguf_writer_add_tensor(w, "output.weight", 2, ne_e, TERN_DTYPE_F16, &e) == 0);
	const uint64_t d = 128, ff = 256;
	TT_REQUIRE(tern_gguf_writer_add_tensor(w, "output_norm.weight", 1, &d, TERN_DTYPE_F32, &e) == 0);
	char name[96];
	for (int n = 0; n < 4; n++) {
		tern_norm_gguf_name((tern_norm_kind)n, 0, name, sizeof name);
		TT_REQUIRE(tern_gguf_writer_add_tensor(w, name, 1, n == 3 ? &ff : &d, TERN_DTYPE_F32, &e) == 0);
	}
	for (int p = 0; p < 7; p++) {
		int m, k;
		tern_proj_shape(&hp, (tern_proj)p, &m, &k);
		const uint64_t ne[2] = {(uint64_t)k, (uint64_t)m};
		tern_proj_gguf_name((tern_proj)p, 0, name, sizeof name);
		TT_REQUIRE(tern_gguf_writer_add_tensor(w, name, 2, ne, ptype[p], &e) == 0);
	}
	TT_REQUIRE(tern_gguf_writer_write_header(w, &e) == 0);
	/* Values: a fixed pseudo-random pattern; the f32 truth is what the file
	 * holds after rounding to its type. */
	float *truth[7];
	uint32_t st = 99;
	float buf[256 * 128];
	for (int i = 0; i < 128 * 40; i++)
		buf[i] = (float)i / 1000.0f;
	TT_REQUIRE(tern_gguf_writer_write(w, buf, 128 * 40 * 4, &e) == 0);
	uint16_t hb[256 * 128];
	for (int i = 0; i < 128 * 40; i++)
		hb[i] = tern_f32_to_f16(-(float)i / 1000.0f);
	TT_REQUIRE(tern_gguf_writer_write(w, hb, 128 * 40 * 2, &e) == 0);
	for (int i = 0; i < 256; i++)
		buf[i] = 1.0f + (float)i / 256.0f;
	TT_REQUIRE(tern_gguf_writer_write(w, buf, 128 * 4, &e) == 0);
	for (int n = 0; n < 4; n++)
		TT_REQUIRE(tern_gguf_writer_write(w, buf, (n == 3 ? 256 : 128) * 4, &e) == 0);
	for (int p = 0; p < 7; p++) {
		int m, k;
		tern_proj_shape(&hp, (tern_proj)p, &m, &k);
		truth[p] = malloc((size_t)m * k * sizeof(float));
		for (int i = 0; i < m * k; i++) {
			st = st * 1103515245u + 12345u;
			const float v = ((float)((st >> 8) & 0xFFFF) / 65536.0f - 0.5f) * (p == 3 ? 0.001f : 3.0f);
			if (ptype[p] == TERN_DTYPE_F32) {
				truth[p][i] = buf[i] = v;
			} else if (ptype[p] == TERN_DTYPE_F16) {
				hb[i] = tern_f32_to_f16(v);
				truth[p][i] = tern_f16_to_f32(hb[i]);
			} else {
				hb[i] = tern_f32_to_bf16(v);
				truth[p][i] = tern_bf16_to_f32(hb[i]);
			}
		}
		if (ptype[p] == TERN_DTYPE_F32)
			TT_REQUIRE(tern_gguf_writer_write(w, buf, (size_t)m * k * 4, &e) == 0);
		else
			TT_REQUIRE(tern_gguf_writer_write(w, hb, (size_t)m * k * 2, &e) == 0);
	}
	TT_REQUIRE(tern_gguf_writer_finish(w, &e) == 0);
	tern_gguf_writer_free(w);

	tern_source *s;
	TT_REQUIRE(tern_source_open(&s, path, &e) == 0);
	TT_CHECK(tern_source_prequantized(s) == 0 && tern_source_hparams(s)->tied_embeddings == 0);
	TT_CHECK(strcmp(tern_source_hparams(s)->arch, "bitnet-25") == 0);
	int8_t *got = malloc(256 * 128), *want = malloc(256 * 128);
	for (int gi = 0; gi < 2; gi++) {
		const int group = gi ? 32 : 0;
		for (int p = 0; p < 7; p++) {
			int m, k, gr;
			float sc[16], wsc[16];
			tern_proj_shape(&hp, (tern_proj)p, &m, &k);
			TT_REQUIRE(tern_source_ternary(s, 0, (tern_proj)p, group, got, sc, &gr, &e) == 0);
			TT_REQUIRE(tern_absmean_quantize(truth[p], m, k, group, want, wsc, &e) == 0);
			TT_CHECK(gr == (group ? group : m));
			TT_CHECKF(memcmp(got, want, (size_t)m * k) == 0, "proj %d group %d", p, group);
			int ok = 1, nz = 0;
			for (int g = 0; g < m / gr; g++)
				ok &= sc[g] == wsc[g];
			for (int i = 0; i < m * k; i++)
				nz += got[i] != 0;
			TT_CHECKF(ok && nz > m * k / 4, "proj %d group %d: scales or all-zero", p, group);
		}
	}
	tern_dense_view v;
	float row[128];
	TT_REQUIRE(tern_source_dense(s, TERN_DENSE_OUTPUT, &v, &e) == 0);
	TT_CHECK(v.type == TERN_DTYPE_F16 && tern_dense_row_f32(&v, 2, row, &e) == 0 &&
		 row[5] == tern_f16_to_f32(tern_f32_to_f16(-(float)(2 * 128 + 5) / 1000.0f)));
	TT_REQUIRE(tern_source_dense(s, TERN_DENSE_TOKEN_EMBD, &v, &e) == 0);
	TT_CHECK(v.type == TERN_DTYPE_F32 && tern_dense_row_f32(&v, 3, row, &e) == 0 &&
		 row[7] == (float)(3 * 128 + 7) / 1000.0f);
	/* No tokenizer in this file: a clear error. */
	const tern_vocab *voc;
	TT_CHECK(tern_source_vocab(s, &voc, &e) == TERN_EFORMAT && strstr(e.msg, "tokenizer.ggml.model"));
	tern_source_close(s);
	for (int p = 0; p < 7; p++)
		free(truth[p]);
	free(got);
	free(want);
}

/* A llama GGUF with float projections (issue 17): q full precision and k
 * holding ternary / weight_scale (one magnitude), both stored with the
 * converter's q/k row permutation. tern_source gives HF row order: q equal to
 * absmean over the HF rows (head-aligned groups too; a group that straddles
 * heads is refused), k exactly its signs and magnitude whatever group is
 * asked; the absent sub-norms read as ones. */
static void test_gguf_llama_float(void)
{
	tern_hparams hp;
	tern_err e = {0};
	char path[512];
	TT_REQUIRE(synth_setup(&hp, "llama3-8b", "n_embd=128,n_head=2,n_head_kv=1,n_ff=256,n_vocab=40,n_layer=1,bos=1,"
			       "eos=2,eot=3",
			       path, sizeof path, "llama-float.gguf", &e) == 0);
	tern_gguf_writer *w;
	TT_REQUIRE(tern_gguf_writer_open(&w, path, 3, 0, &e) == 0);
	int rc = tern_gguf_writer_add_str(w, "general.architecture", "llama", &e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "llama.embedding_length", 128, &e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "llama.block_count", 1, &e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "llama.attention.head_count", 2, &e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "llama.attention.head_count_kv", 1, &e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "llama.feed_forward_length", 256, &e);
	rc = rc ? rc : tern_gguf_writer_add_u32(w, "llama.vocab_size", 40, &e);
	TT_REQUIRE(rc == 0);
	const uint64_t ne_e[2] = {128, 40}, d = 128;
	TT_REQUIRE(tern_gguf_writer_add_tensor(w, "token_embd.weight", 2, ne_e, TERN_DTYPE_F32, &e) == 0);
	TT_REQUIRE(tern_gguf_writer_add_tensor(w, "output_norm.weight", 1, &d, TERN_DTYPE_F32, &e) == 0);
	TT_REQUIRE(tern_gguf_writer_add_tensor(w, "blk.0.attn_norm.weight", 1, &d, TERN_DTYPE_F32, &e) == 0);
	TT_REQUIRE(tern_gguf_writer_add_tensor(w, "blk.0.ffn_norm.weight", 1, &d, TERN_DTYPE_F32, &e) == 0);
	char name[96];
	for (int p = 0; p < 7; p++) {
		int m, k;
		tern_proj_shape(&hp, (tern_proj)p, &m, &k);
		const uint64_t ne[2] = {(uint64_t)k, (uint64_t)m};
		tern_proj_gguf_name((tern_proj)p, 0, name, sizeof name);
		TT_REQUIRE(tern_gguf_writer_add_tensor(w, name, 2, ne, p == TERN_PROJ_K ? TERN_DTYPE_F16 : TERN_DTYPE_F32,
						       &e) == 0);
	}
	TT_REQUIRE(tern_gguf_writer_write_header(w, &e) == 0);
	static float buf[256 * 128], truth_q[128 * 128];
	static int8_t signs_k[64 * 128];
	static uint16_t hb[64 * 128];
	for (int i = 0; i < 128 * 40; i++)
		buf[i] = (float)(i % 7) / 10.0f;
	TT_REQUIRE(tern_gguf_writer_write(w, buf, 128 * 40 * 4, &e) == 0);
	for (int i = 0; i < 128; i++)
		buf[i] = 1.0f;
	for (int n = 0; n < 3; n++)
		TT_REQUIRE(tern_gguf_writer_write(w, buf, 128 * 4, &e) == 0);
	uint32_t st = 7;
	for (int p = 0; p < 7; p++) {
		int m, k;
		tern_proj_shape(&hp, (tern_proj)p, &m, &k);
		for (int i = 0; i < m * k; i++) {
			st = st * 1103515245u + 12345u;
			const float v = (float)((st >> 8) & 0xFFFF) / 65536.0f - 0.5f;
			if (p == TERN_PROJ_Q)
				truth_q[i] = v;
			else if (p == TERN_PROJ_K)
				signs_k[i] = (int8_t)(v < -0.15f ? -1 : v > 0.15f ? 1 : 0);
			else
				buf[i] = v;
		}
		if (p == TERN_PROJ_Q || p == TERN_PROJ_K) {
			/* stored row h*64 + 2i + j holds HF row h*64 + j*32 + i */
			for (int r = 0; r < m; r++) {
				const int hf = r / 64 * 64 + r % 2 * 32 + r % 64 / 2;
				for (int c = 0; c < k; c++) {
					if (p == TERN_PROJ_Q)
						buf[r * k + c] = truth_q[hf * k + c];
					else
						hb[r * k + c] = tern_f32_to_f16((float)signs_k[hf * k + c] * 0.0625f);
				}
			}
		}
		if (p == TERN_PROJ_K)
			TT_REQUIRE(tern_gguf_writer_write(w, hb, (size_t)m * k * 2, &e) == 0);
		else
			TT_REQUIRE(tern_gguf_writer_write(w, buf, (size_t)m * k * 4, &e) == 0);
	}
	TT_REQUIRE(tern_gguf_writer_finish(w, &e) == 0);
	tern_gguf_writer_free(w);

	tern_source *s;
	TT_REQUIRE(tern_source_open(&s, path, &e) == 0);
	TT_CHECK(strcmp(tern_source_hparams(s)->arch, "llama") == 0);
	static int8_t got[128 * 128], want[128 * 128];
	float sc[8], wsc[8];
	int gr;
	for (int gi = 0; gi < 2; gi++) {
		const int group = gi ? 64 : 0;
		TT_REQUIRE(tern_source_ternary(s, 0, TERN_PROJ_Q, group, got, sc, &gr, &e) == 0);
		TT_REQUIRE(tern_absmean_quantize(truth_q, 128, 128, group, want, wsc, &e) == 0);
		TT_CHECKF(gr == (group ? 64 : 128) && memcmp(got, want, sizeof got) == 0 && sc[0] == wsc[0] &&
			      (!group || sc[1] == wsc[1]),
			  "q group %d", group);
	}
	TT_CHECK(tern_source_ternary(s, 0, TERN_PROJ_Q, 32, got, sc, &gr, &e) == TERN_EUNSUP &&
		 strstr(e.msg, "multiple of the head size") && strstr(e.msg, "blk.0.attn_q.weight"));
	TT_REQUIRE(tern_source_ternary(s, 0, TERN_PROJ_K, 32, got, sc, &gr, &e) == 0);
	TT_CHECK(gr == 64 && sc[0] == 0.0625f && memcmp(got, signs_k, 64 * 128) == 0);
	float f[256];
	TT_REQUIRE(tern_source_norm(s, 0, TERN_NORM_FFN_SUB, f, &e) == 0);
	TT_CHECK(f[0] == 1.0f && f[255] == 1.0f);
	tern_source_close(s);
}

static void test_f16_conversions(void)
{
	/* Exhaustive: every finite f16 survives f16 -> f32 -> f16. */
	int ok = 1;
	for (uint32_t h = 0; h < 65536; h++) {
		const float f = tern_f16_to_f32((uint16_t)h);
		if (isnan(f))
			continue;
		ok &= tern_f32_to_f16(f) == h;
	}
	TT_CHECK(ok);
	TT_CHECK(tern_f16_to_f32(0x3C00) == 1.0f && tern_f16_to_f32(0xC000) == -2.0f);
	TT_CHECK(tern_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
	TT_CHECK(tern_f32_to_f16(65520.0f) == 0x7C00 && tern_f32_to_f16(65519.0f) == 0x7BFF);
	/* Ties to even: 1 + 2^-11 is halfway between 1 and 1+2^-10. */
	TT_CHECK(tern_f32_to_f16(1.0f + ldexpf(1.0f, -11)) == 0x3C00);
	TT_CHECK(tern_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)) == 0x3C02);
	TT_CHECK(tern_f32_to_f16(ldexpf(1.0f, -25)) == 0 && tern_f32_to_f16(ldexpf(1.5f, -25)) == 1);
	TT_CHECK(tern_bf16_to_f32(0x3F80) == 1.0f && tern_f32_to_bf16(1.0f) == 0x3F80);
	TT_CHECK(tern_f32_to_bf16(1.0f + ldexpf(1.0f, -8)) == 0x3F80); /* tie -> even */
	TT_CHECK(tern_f32_to_bf16(1.0f + 3 * ldexpf(1.0f, -8)) == 0x3F82);
}

TT_MAIN(TT_CASE(test_i2s_hand_built), TT_CASE(test_nbytes), TT_CASE(test_f16_conversions),
	TT_CASE(test_roundtrip_v2_v3_alignment), TT_CASE(test_damaged), TT_CASE(test_arch), TT_CASE(test_metadata_checked),
	TT_CASE(test_synth_roundtrip_small), TT_CASE(test_synth_llama), TT_CASE(test_synth_2b4t_widths),
	TT_CASE(test_synth_bad_shapes), TT_CASE(test_gguf_float_weights), TT_CASE(test_gguf_llama_float))
