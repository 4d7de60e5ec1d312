/* qhead.c: the quantized LM head's formats (tern-float.h, "quantized LM
 * head"): packing weight rows into the interleaved group layout, unpacking
 * a row back, and the activation quantizer. Scalar and ISA independent: the
 * weights are packed once at load, the activations once per row per call.
 * Compiled with -ffp-contract=off -fno-fast-math (x * scale is rounded on
 * its own before rint, on every architecture). */
#include <math.h>
#include <string.h>

#include "tern-float.h"
#include "tern-half.h"

const char *tern_qh_name(tern_qh_type t)
{
	switch (t) {
	case TERN_QH_Q8: return "q8";
	case TERN_QH_Q4: return "q4";
	default: return "?";
	}
}

int tern_qh_parse(const char *s)
{
	if (!strcmp(s, "q8"))
		return TERN_QH_Q8;
	if (!strcmp(s, "q4"))
		return TERN_QH_Q4;
	return -1;
}

/* Byte offset in a tile of row k's element e (< 32), and for Q4 whether it
 * is the high nibble. */
static size_t tile_offset(tern_qh_type t, int k, int e, int *high)
{
	*high = 0;
	if (t == TERN_QH_Q4 && e >= 16) {
		*high = 1;
		e -= 16;
	}
	return ((size_t)(e / 4) * TERN_QH_GROUP + (size_t)k) * 4 + (size_t)(e % 4);
}

void tern_qh_pack_group(tern_qh_type t, const float *w, size_t ldw, int nr, int n, void *out)
{
	const int nb = tern_qh_blocks(n);
	uint8_t *g = out;
	memset(g, 0, tern_qh_group_bytes(t, n));
	/* Q4's padding rows and elements must hold the code of q = 0 (8) */
	if (t == TERN_QH_Q4)
		for (int b = 0; b < nb; b++)
			memset(g + (size_t)b * tern_qh_quant_bytes(t), 0x88, tern_qh_quant_bytes(t));
	for (int k = 0; k < nr; k++) {
		const float *row = w + (size_t)k * ldw;
		for (int b = 0; b < nb; b++) {
			uint8_t *tile = g + (size_t)b * tern_qh_quant_bytes(t);
			const int i0 = b * TERN_QH_BLOCK, m = n - i0 < TERN_QH_BLOCK ? n - i0 : TERN_QH_BLOCK;
			float big = 0.0f; /* the element of largest magnitude, the first on ties */
			for (int e = 0; e < m; e++)
				if (fabsf(row[i0 + e]) > fabsf(big))
					big = row[i0 + e];
			const uint16_t h = tern_f32_to_f16(t == TERN_QH_Q4 ? big / -8.0f : fabsf(big) / 127.0f);
			const float d = tern_f16_to_f32(h), id = d != 0.0f ? 1.0f / d : 0.0f;
			const float lo = t == TERN_QH_Q4 ? -8.0f : -127.0f, hi = t == TERN_QH_Q4 ? 7.0f : 127.0f;
			memcpy(g + (tern_qh_scales(t, g, n, b) - g) + 2 * (size_t)k, &h, 2);
			for (int e = 0; e < m; e++) {
				float q = rintf(row[i0 + e] * id);
				q = q < lo ? lo : q > hi ? hi : q;
				int high;
				const size_t o = tile_offset(t, k, e, &high);
				if (t == TERN_QH_Q8) {
					tile[o] = (uint8_t)(int8_t)q;
				} else {
					const uint8_t c = (uint8_t)((int)q + 8);
					tile[o] = high ? (uint8_t)((tile[o] & 0x0F) | (c << 4)) : (uint8_t)((tile[o] & 0xF0) | c);
				}
			}
		}
	}
}

void tern_qh_pack_rows(tern_qh_type t, const void *w, tern_dot_type wt, size_t row_bytes, int64_t rows, int n, int g0,
		       int g1, float *scratch, void *out)
{
	const size_t gb = tern_qh_group_bytes(t, n);
	for (int g = g0; g < g1; g++) {
		const int64_t r0 = (int64_t)g * TERN_QH_GROUP;
		const int nr = rows - r0 < TERN_QH_GROUP ? (int)(rows - r0) : TERN_QH_GROUP;
		for (int k = 0; k < nr; k++) {
			const uint8_t *row = (const uint8_t *)w + (size_t)(r0 + k) * row_bytes;
			for (int i = 0; i < n; i++)
				scratch[(size_t)k * n + i] = tern_dot_elem(row, wt, i);
		}
		tern_qh_pack_group(t, scratch, (size_t)n, nr, n, (uint8_t *)out + (size_t)g * gb);
	}
}

void tern_qh_unpack_row(tern_qh_type t, const void *group, int k, int n, int8_t *q, float *dw)
{
	const int nb = tern_qh_blocks(n);
	const uint8_t *g = group;
	for (int b = 0; b < nb; b++) {
		const uint8_t *tile = tern_qh_quants(t, g, b);
		uint16_t h;
		memcpy(&h, tern_qh_scales(t, g, n, b) + 2 * (size_t)k, 2);
		dw[b] = tern_f16_to_f32(h);
		for (int e = 0; e < TERN_QH_BLOCK; e++) {
			int high;
			const uint8_t c = tile[tile_offset(t, k, e, &high)];
			q[b * TERN_QH_BLOCK + e] =
			    t == TERN_QH_Q8 ? (int8_t)c : (int8_t)((high ? c >> 4 : c & 0x0F) - 8);
		}
	}
}

void tern_qx_quantize(const float *x, int n, int8_t *q, float *dx, int32_t *sum)
{
	const int nb = tern_qh_blocks(n);
	for (int b = 0; b < nb; b++) {
		const int i0 = b * TERN_QH_BLOCK, m = n - i0 < TERN_QH_BLOCK ? n - i0 : TERN_QH_BLOCK;
		float amax = 0.0f;
		for (int e = 0; e < m; e++) {
			const float a = fabsf(x[i0 + e]);
			amax = a > amax ? a : amax;
		}
		const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
		int32_t s = 0;
		for (int e = 0; e < TERN_QH_BLOCK; e++) {
			float v = e < m ? rintf(x[i0 + e] * id) : 0.0f;
			v = v != v ? 0.0f : v < -127.0f ? -127.0f : v > 127.0f ? 127.0f : v;
			q[i0 + e] = (int8_t)v;
			s += (int32_t)v;
		}
		dx[b] = amax / 127.0f;
		sum[b] = s;
	}
}
