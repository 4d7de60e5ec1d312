/* fuzz_safetensors.c: libFuzzer target for partition/'s safetensors reader
 * and, for inputs that start with '{', the HF config.json parser (and so the
 * JSON parser under both). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tern-safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	tern_err e;
	if (size > 0 && data[0] == '{') {
		tern_hparams hp;
		tern_hf_quant online;
		(void)tern_hf_config_parse((const char *)data, size, "<fuzz>", &hp, &online, &e);
		return 0;
	}
	tern_st *st;
	if (tern_st_open_mem(&st, data, size, "<fuzz>", &e) < 0)
		return 0;
	volatile float sink = 0;
	for (int64_t i = 0; i < tern_st_n_tensors(st); i++) {
		const tern_st_tensor *t = tern_st_tensor_at(st, i);
		if (tern_st_find(st, t->name) != t)
			abort();
		if (t->n_elem) {
			sink += tern_st_get_f32(t, 0) + tern_st_get_f32(t, t->n_elem - 1);
			if (t->nbytes)
				sink += t->data[0] + t->data[t->nbytes - 1];
		}
	}
	(void)sink;
	tern_st_close(st);
	return 0;
}
