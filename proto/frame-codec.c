/* frame-codec.c: pack/unpack of pipeline frames (see tern-frame.h). */
#include "tern-frame.h"

#include <string.h>

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

size_t tern_frame_size(const Tern__V1__Frame *h, size_t payload_bytes)
{
	return TERN_FRAME_PREFIX + tern__v1__frame__get_packed_size(h) + payload_bytes;
}

long tern_frame_pack(const Tern__V1__Frame *h, const void *payload, size_t payload_bytes, uint8_t *out,
		     size_t cap, tern_err *err)
{
	const size_t hl = tern__v1__frame__get_packed_size(h);
	TERN_RETURN_IF(hl > TERN_FRAME_MAX_HEADER, err, TERN_ERANGE, "frame header of %zu bytes exceeds %u", hl,
		       TERN_FRAME_MAX_HEADER);
	const size_t total = TERN_FRAME_PREFIX + hl + payload_bytes;
	TERN_RETURN_IF(total > cap, err, TERN_ERANGE, "frame of %zu bytes does not fit buffer of %zu", total, cap);
	put32(out, TERN_FRAME_MAGIC);
	put32(out + 4, (uint32_t)hl);
	tern__v1__frame__pack(h, out + TERN_FRAME_PREFIX);
	if (payload_bytes)
		memcpy(out + TERN_FRAME_PREFIX + hl, payload, payload_bytes);
	return (long)total;
}

int tern_frame_unpack(const uint8_t *buf, size_t len, Tern__V1__Frame **out, const uint8_t **payload,
		      size_t *payload_bytes, tern_err *err)
{
	*out = NULL;
	TERN_RETURN_IF(len < TERN_FRAME_PREFIX, err, TERN_EFORMAT, "frame of %zu bytes is shorter than its prefix",
		       len);
	TERN_RETURN_IF(get32(buf) != TERN_FRAME_MAGIC, err, TERN_EFORMAT, "frame has wrong magic 0x%08x",
		       get32(buf));
	const uint32_t hl = get32(buf + 4);
	TERN_RETURN_IF(hl > TERN_FRAME_MAX_HEADER || hl > len - TERN_FRAME_PREFIX, err, TERN_EFORMAT,
		       "frame header length %u exceeds message of %zu bytes", hl, len);
	Tern__V1__Frame *h = tern__v1__frame__unpack(NULL, hl, buf + TERN_FRAME_PREFIX);
	TERN_RETURN_IF(!h, err, TERN_EFORMAT, "frame header is not a valid tern.v1.Frame");
	const size_t pl = len - TERN_FRAME_PREFIX - hl;
	if (h->kind == TERN__V1__FRAME_KIND__FRAME_KIND_ACTIVATIONS) {
		const uint64_t rows = h->n_seq_ids;
		int bad = 0;
		if (h->n_positions != h->n_seq_ids)
			bad = TERN_ERR(err, TERN_EFORMAT, "frame has %zu positions for %zu sequences", h->n_positions,
				       h->n_seq_ids);
		else if (h->n_embd == 0 || rows == 0)
			bad = TERN_ERR(err, TERN_EFORMAT, "activation frame with %u-wide rows and %llu rows",
				       h->n_embd, (unsigned long long)rows);
		else if (rows * h->n_embd * 4u != pl)
			bad = TERN_ERR(err, TERN_EFORMAT, "activation payload of %zu bytes, header says %llu rows x %u",
				       pl, (unsigned long long)rows, h->n_embd);
		if (bad) {
			tern__v1__frame__free_unpacked(h, NULL);
			return bad;
		}
	}
	*out = h;
	*payload = buf + TERN_FRAME_PREFIX + hl;
	*payload_bytes = pl;
	return 0;
}
