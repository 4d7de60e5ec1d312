/* fuzz_plan.c: libFuzzer target for the plan readers of partition/: the
 * manifest decoder, the shard header/index reader (and every tensor read
 * and layer load it allows), and the hosts-file parser. The first byte picks
 * the reader (0 manifest, 1 shard, 2 hosts file, 3 shard with its header
 * checksum fixed up), the rest is its input, so one corpus covers all. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "plan.pb-c.h"
#include "tern-plan.h"
#include "tern-shard.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* Even inputs are taken as they are; odd ones get the header's file length
 * and index checksum recomputed, so mutations reach the index checks behind
 * them instead of all failing on the checksum. */
static void fuzz_shard(const uint8_t *data, size_t size, int fix)
{
	tern_shard *sh;
	tern_err e;
	uint8_t *copy = NULL;
	if (fix && size >= TERN_SHARD_HEADER_BYTES) {
		copy = malloc(size);
		if (!copy)
			return;
		memcpy(copy, data, size);
		const uint32_t n = (uint32_t)copy[16] | (uint32_t)copy[17] << 8 | (uint32_t)copy[18] << 16 |
				   (uint32_t)copy[19] << 24;
		put64(copy + 48, size);
		if (n <= (size - TERN_SHARD_HEADER_BYTES) / TERN_SHARD_ENTRY_BYTES)
			put64(copy + 56, XXH64(copy + TERN_SHARD_HEADER_BYTES,
							 (size_t)n * TERN_SHARD_ENTRY_BYTES, 0));
		data = copy;
	}
	/* the reader must not need the caller's buffer to be aligned */
	if (tern_shard_open_mem(&sh, data, size, "<fuzz>", &e) < 0) {
		free(copy);
		return;
	}
	uint64_t total = 0;
	for (int i = 0; i < tern_shard_n_tensors(sh); i++) {
		const tern_shard_tensor *t = tern_shard_tensor_at(sh, i);
		total += t->raw_bytes;
		if (t->raw_bytes > (1u << 22))
			continue;
		void *buf = malloc(t->raw_bytes ? (size_t)t->raw_bytes : 1);
		float *sc = malloc(sizeof(float) * (size_t)(t->n_groups ? t->n_groups : 1));
		if (buf && sc)
			(void)tern_shard_read_tensor(sh, i, buf, (size_t)t->raw_bytes, sc, &e);
		free(buf);
		free(sc);
	}
	if (total <= (1u << 24) && tern_shard_stage(sh) > 0) {
		tern_shard_layer *ys;
		int n;
		if (tern_shard_load_layers(sh, NULL, &ys, &n, &e) == 0)
			tern_shard_layers_free(ys, n, NULL);
	}
	tern_shard_close(sh);
	free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	const uint8_t which = data[0] % 4;
	data++;
	size--;
	tern_err e;
	if (which == 0) {
		tern_plan_manifest *p;
		if (tern_plan_manifest_decode(&p, data, size, "<fuzz>", &e) == 0) {
			tern_hparams hp;
			volatile size_t sink = p->n_stages + p->n_files;
			(void)sink;
			(void)tern_plan_manifest_hparams(p, &hp, &e);
			tern_plan_manifest_free(p);
		}
	} else if (which == 1 || which == 3) {
		fuzz_shard(data, size, which == 3);
	} else {
		tern_cluster c;
		if (tern_cluster_parse_yaml(&c, (const char *)data, size, "<fuzz>", &e) == 0)
			tern_cluster_free(&c);
	}
	return 0;
}
