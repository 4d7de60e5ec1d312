/* fuzz_frame.c: libFuzzer target for the pipeline frame codec
 * (proto/tern-frame.h): every message a rank receives goes through
 * tern_frame_unpack before anything else looks at it. An accepted frame is
 * packed again and must unpack to the same header and payload. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tern-frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Tern__V1__Frame *h = NULL;
	const uint8_t *payload = NULL;
	size_t pl = 0;
	tern_err e;
	if (tern_frame_unpack(data, size, &h, &payload, &pl, &e) != 0)
		return 0;
	if (payload < data || payload + pl != data + size)
		abort();
	const size_t n = tern_frame_size(h, pl);
	uint8_t *buf = malloc(n ? n : 1);
	/* Fields this version does not know are kept by protobuf-c and packed
	 * again as they came, including non-canonical tags it accepts on input
	 * but not after re-encoding: the round trip is checked for known fields. */
	if (buf && h->base.n_unknown_fields == 0) {
		long w = tern_frame_pack(h, payload, pl, buf, n, &e);
		Tern__V1__Frame *h2 = NULL;
		const uint8_t *p2;
		size_t pl2;
		if (w < 0 || tern_frame_unpack(buf, (size_t)w, &h2, &p2, &pl2, &e) != 0)
			abort();
		if (pl2 != pl || (pl && memcmp(p2, payload, pl) != 0) || h2->kind != h->kind ||
		    h2->n_seq_ids != h->n_seq_ids || h2->step != h->step)
			abort();
		tern__v1__frame__free_unpacked(h2, NULL);
	}
	free(buf);
	tern__v1__frame__free_unpacked(h, NULL);
	return 0;
}
