/* fuzz_gguf.c: libFuzzer target for partition/'s GGUF reader. A successful
 * open must make every accessor safe: walk all KVs, array elements,
 * tensors, their data, the hyper-parameters and I2_S decoding. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tern-gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	tern_gguf *g;
	tern_err e;
	if (tern_gguf_open_mem(&g, data, size, "<fuzz>", &e) < 0)
		return 0;
	volatile uint64_t sink = 0;
	for (int64_t i = 0; i < tern_gguf_n_kv(g); i++) {
		const char *key = tern_gguf_kv_key(g, i);
		const uint32_t t = tern_gguf_kv_type(g, i);
		uint32_t u32;
		double d;
		const char *s;
		uint64_t len, n;
		int b;
		if (tern_gguf_get_u32(g, key, &u32, NULL) == 0)
			sink += u32;
		if (tern_gguf_get_f64(g, key, &d, NULL) == 0)
			sink += (uint64_t)(d == d);
		if (tern_gguf_get_bool(g, key, &b, NULL) == 0)
			sink += (uint64_t)b;
		if (tern_gguf_get_str(g, key, &s, &len, NULL) == 0 && len)
			sink += (uint8_t)s[len - 1];
		if (t == TERN_GGUF_ARRAY && tern_gguf_get_arr(g, key, &u32, &n, NULL) == 0) {
			for (uint64_t j = 0; j < n && j < 4096; j++) {
				int64_t v;
				if (tern_gguf_arr_str(g, i, j, &s, &len, NULL) == 0 && len)
					sink += (uint8_t)s[0] + (uint8_t)s[len - 1];
				if (tern_gguf_arr_i64(g, i, j, &v, NULL) == 0)
					sink += (uint64_t)v;
				if (tern_gguf_arr_f64(g, i, j, &d, NULL) == 0)
					sink += (uint64_t)(d == d);
			}
			size_t es;
			const uint8_t *p = tern_gguf_arr_data(g, i, &es);
			if (p && n)
				sink += p[n * es - 1];
		}
	}
	for (int64_t i = 0; i < tern_gguf_n_tensors(g); i++) {
		const tern_gguf_tensor *t = tern_gguf_tensor_at(g, i);
		const void *p;
		uint64_t nb;
		if (tern_gguf_find_tensor(g, t->name) != t)
			abort();
		if (tern_gguf_tensor_data(g, t, &p, &nb, NULL) == 0 && nb)
			sink += ((const uint8_t *)p)[0] + ((const uint8_t *)p)[nb - 1];
		/* Decode a few rows of small I2_S matrices. */
		if (t->dtype == TERN_DTYPE_I2_S && t->n_dims == 2 && (t->ne[0] * t->ne[1]) % 128 == 0 &&
		    t->ne[0] <= 4096) {
			int8_t w[4 * 4096];
			const int64_t rows = t->ne[1] < 4 ? (int64_t)t->ne[1] : 4;
			if (tern_i2s_decode_rows(t->data, (int64_t)t->ne[1], (int64_t)t->ne[0], 0, rows, w, "fuzz",
						 NULL) == 0)
				sink += (uint64_t)w[0];
			sink += tern_i2s_scale(t->data, (int64_t)t->ne[1], (int64_t)t->ne[0]) > 0.0f;
		}
	}
	tern_hparams hp;
	if (tern_gguf_hparams(g, &hp, &e) == 0)
		sink += (uint64_t)hp.n_embd;
	(void)sink;
	tern_gguf_close(g);
	return 0;
}
