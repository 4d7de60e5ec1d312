/* tern-frame.h: the wire form of one pipeline message between ranks.
 *
 *   u32 magic "TRNF" (little-endian 0x464e5254) | u32 header_len |
 *   header (a packed tern.v1.Frame, header_len bytes) | payload (raw bytes)
 *
 * The payload of an ACTIVATIONS frame is len(seq_ids) rows of n_embd
 * little-endian f32. Unpacking checks every length against the buffer and the
 * header's own counts, so a damaged or hostile message is an error, never an
 * out-of-bounds read. */
#ifndef TERN_FRAME_H
#define TERN_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "frame.pb-c.h"
#include "tern-base.h"

#define TERN_FRAME_MAGIC 0x464e5254u
#define TERN_FRAME_PREFIX 8u
/* Largest header accepted (seq ids and positions of a big micro-batch fit easily). */
#define TERN_FRAME_MAX_HEADER (1u << 20)

/* Bytes needed to pack header h with payload_bytes of payload. */
size_t tern_frame_size(const Tern__V1__Frame *h, size_t payload_bytes);

/* Packs into out (capacity cap). Returns the number of bytes written, or a
 * negative TERN_E* code (TERN_ERANGE when cap is too small). */
long tern_frame_pack(const Tern__V1__Frame *h, const void *payload, size_t payload_bytes, uint8_t *out,
		     size_t cap, tern_err *err);

/* Parses buf[0..len). On success *h is a newly unpacked header (free with
 * tern__v1__frame__free_unpacked(*h, NULL)), *payload points into buf and
 * *payload_bytes is its length. For ACTIVATIONS frames the payload length
 * must equal rows * n_embd * 4 and positions must match seq_ids. */
int tern_frame_unpack(const uint8_t *buf, size_t len, Tern__V1__Frame **h, const uint8_t **payload,
		      size_t *payload_bytes, tern_err *err);

#endif /* TERN_FRAME_H */
