/* pack.c: the three weight packings (I2_S, TL1, TL2) of a ternary int8
 * matrix, their exact inverse, and the one element accessor through which the
 * reference kernels read packed data. The byte layouts are specified in
 * kernels/LAYOUTS.md; every ISA's kernels read these same bytes. */
#include "kern-internal.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Largest dimension accepted: keeps every size computation far from overflow
 * (m_pad * k_pad / 4 and the row offsets fit in size_t / int64 with room). */
#define TERN_DIM_MAX (1 << 24)

int tern_row_tile(tern_packing p)
{
	return p == TERN_PACK_I2S ? 1 : TERN_TL_ROWS;
}

static int round_up(int x, int to)
{
	return (x + to - 1) / to * to;
}

int tern_k_pad(tern_packing p, int k)
{
	switch (p) {
	case TERN_PACK_I2S: return round_up(k, 128);
	case TERN_PACK_TL1: return round_up(k, 4);
	case TERN_PACK_TL2: return round_up(k, 6);
	default: return 0;
	}
}

static int m_pad_of(tern_packing p, int m)
{
	return round_up(m, tern_row_tile(p));
}

size_t tern_matrix_data_bytes(tern_packing p, int m, int k)
{
	if (m <= 0 || k <= 0 || m > TERN_DIM_MAX || k > TERN_DIM_MAX || (unsigned)p >= TERN_PACK_COUNT)
		return 0;
	const size_t mp = (size_t)m_pad_of(p, m), kp = (size_t)tern_k_pad(p, k);
	if (p == TERN_PACK_TL2)
		return mp / TERN_TL_ROWS * (kp / 6) * TERN_TL2_PAIR_BYTES;
	return mp * kp / 4;
}

int tern_lut_groups(tern_packing p, int k_pad)
{
	return p == TERN_PACK_TL1 ? k_pad / 2 : p == TERN_PACK_TL2 ? k_pad / 3 : 0;
}

/* ---- element addressing (LAYOUTS.md) ------------------------------------ */

static size_t i2s_byte(const tern_matrix *w, int i, int k, int *shift)
{
	const int j = k % 128;
	*shift = 6 - 2 * (j / 32);
	return (size_t)i * (size_t)(w->k_pad / 4) + (size_t)(k / 128) * 32 + (size_t)(j % 32);
}

static size_t tl1_byte(const tern_matrix *w, int i, int k, int *high)
{
	const size_t quads = (size_t)(w->k_pad / 4);
	*high = (k % 4) >= 2;
	return ((size_t)(i / TERN_TL_ROWS) * quads + (size_t)(k / 4)) * TERN_TL1_QUAD_BYTES +
	       (size_t)(i % TERN_TL_ROWS);
}

/* Offsets of the index byte and of the 8-byte sign record of group g, row i. */
static void tl2_addr(const tern_matrix *w, int i, int g, size_t *idx, size_t *sgn, int *bit)
{
	const size_t pairs = (size_t)(w->k_pad / 6);
	const size_t p = (size_t)(g / 2), b = p / TERN_TL2_BLOCK_PAIRS, pp = p % TERN_TL2_BLOCK_PAIRS;
	const size_t np = pairs - b * TERN_TL2_BLOCK_PAIRS < TERN_TL2_BLOCK_PAIRS ? pairs - b * TERN_TL2_BLOCK_PAIRS
										  : TERN_TL2_BLOCK_PAIRS;
	const size_t base =
	    (size_t)(i / TERN_TL_ROWS) * pairs * TERN_TL2_PAIR_BYTES + b * TERN_TL2_BLOCK_PAIRS * TERN_TL2_PAIR_BYTES;
	const int r = i % TERN_TL_ROWS, chunk = r / 16, within = r % 16;
	*idx = base + pp * 64 + (size_t)r;
	*sgn = base + np * 64 + pp * 16 + (size_t)(g % 2) * 8;
	/* A holds the first 8 rows of each 16-row chunk, B (bits 32..63) the last 8. */
	*bit = (within < 8 ? 0 : 32) + chunk * 8 + within % 8;
}

static int tl2_group_v(const tern_matrix *w, int i, int g)
{
	size_t idx, sgn;
	int bit;
	tl2_addr(w, i, g, &idx, &sgn, &bit);
	const int mag = (w->data[idx] >> (g % 2 ? 4 : 0)) & 15;
	const int s = (w->data[sgn + (size_t)(bit / 8)] >> (bit % 8)) & 1;
	return s ? -mag : mag;
}

/* Balanced-ternary digit d (0 = w0, 1 = w1, 2 = w2) of v = 9*w0 + 3*w1 + w2. */
static int tl2_digit(int v, int d)
{
	const int w0 = (v + 13) / 9 - 1; /* v + 13 = 9*(w0+1) + 3*(w1+1) + (w2+1) */
	const int rest = (v + 13) % 9;
	const int w1 = rest / 3 - 1, w2 = rest % 3 - 1;
	return d == 0 ? w0 : d == 1 ? w1 : w2;
}

int tern_weight_at(const tern_matrix *w, int i, int k)
{
	switch (w->packing) {
	case TERN_PACK_I2S: {
		int shift;
		const size_t b = i2s_byte(w, i, k, &shift);
		return ((w->data[b] >> shift) & 3) - 1;
	}
	case TERN_PACK_TL1: {
		int high;
		const size_t b = tl1_byte(w, i, k, &high);
		const int idx = (w->data[b] >> (high ? 4 : 0)) & 15;
		return k % 2 == 0 ? idx / 3 - 1 : idx % 3 - 1;
	}
	case TERN_PACK_TL2: return tl2_digit(tl2_group_v(w, i, k / 3), k % 3);
	default: return 0;
	}
}

/* ---- pack / unpack ------------------------------------------------------ */

static int check_dims(tern_packing p, int m, int k, tern_err *err)
{
	TERN_RETURN_IF((unsigned)p >= TERN_PACK_COUNT, err, TERN_EINVAL, "unknown packing %d", (int)p);
	TERN_RETURN_IF(m <= 0 || k <= 0, err, TERN_EINVAL, "matrix shape %d x %d: both must be >= 1", m, k);
	TERN_RETURN_IF(m > TERN_DIM_MAX || k > TERN_DIM_MAX, err, TERN_ERANGE,
		       "matrix shape %d x %d: too large (max %d)", m, k, TERN_DIM_MAX);
	return 0;
}

static void tl2_set(tern_matrix *w, int i, int g, int v)
{
	size_t idx, sgn;
	int bit;
	tl2_addr(w, i, g, &idx, &sgn, &bit);
	const int mag = v < 0 ? -v : v;
	w->data[idx] |= (uint8_t)(mag << (g % 2 ? 4 : 0));
	if (v < 0)
		w->data[sgn + (size_t)(bit / 8)] |= (uint8_t)(1u << (bit % 8));
}

int tern_matrix_pack(tern_matrix *out, tern_packing p, const int8_t *w, int m, int k, const float *scales,
		     int group_rows, tern_err *err)
{
	TERN_RETURN_IF(!out || !w || !scales, err, TERN_EINVAL, "tern_matrix_pack: NULL argument");
	memset(out, 0, sizeof *out);
	TERN_FORWARD_IF_ERROR(check_dims(p, m, k, err));
	TERN_RETURN_IF(group_rows < 1, err, TERN_EINVAL, "tern_matrix_pack: group_rows %d must be >= 1", group_rows);
	for (size_t i = 0; i < (size_t)m * (size_t)k; i++)
		TERN_RETURN_IF(w[i] < -1 || w[i] > 1, err, TERN_EINVAL,
			       "tern_matrix_pack: weight [%zu][%zu] = %d is not ternary", i / (size_t)k, i % (size_t)k,
			       (int)w[i]);

	tern_matrix mat = {.packing = p,
			   .m = m,
			   .k = k,
			   .k_pad = tern_k_pad(p, k),
			   .m_pad = m_pad_of(p, m),
			   .group_rows = group_rows,
			   .n_groups = (m + group_rows - 1) / group_rows,
			   .owns_data = 1};
	mat.data_bytes = tern_matrix_data_bytes(p, m, k);
	mat.data = tern_aligned_calloc(mat.data_bytes, TERN_ALIGN);
	mat.scales = malloc((size_t)mat.n_groups * sizeof(float));
	if (!mat.data || !mat.scales) {
		tern_aligned_free(mat.data);
		free(mat.scales);
		return TERN_ERR(err, TERN_ENOMEM, "tern_matrix_pack: %zu bytes for a %d x %d matrix", mat.data_bytes, m,
				k);
	}
	memcpy(mat.scales, scales, (size_t)mat.n_groups * sizeof(float));

	if (p == TERN_PACK_I2S) {
		/* Padding columns need code 1 (weight 0): start from all-ones codes. */
		memset(mat.data, 0x55, mat.data_bytes);
		for (int i = 0; i < m; i++)
			for (int kk = 0; kk < k; kk++) {
				int shift;
				const size_t b = i2s_byte(&mat, i, kk, &shift);
				mat.data[b] = (uint8_t)((mat.data[b] & ~(3u << shift)) |
							(unsigned)(w[(size_t)i * k + kk] + 1) << shift);
			}
	} else if (p == TERN_PACK_TL1) {
		/* Index 4 is the pair (0, 0): padding rows and columns get it. */
		memset(mat.data, 0x44, mat.data_bytes);
		for (int i = 0; i < m; i++)
			for (int g = 0; g < (k + 1) / 2; g++) {
				const int8_t *row = w + (size_t)i * k;
				const int w0 = row[2 * g], w1 = 2 * g + 1 < k ? row[2 * g + 1] : 0;
				int high;
				const size_t b = tl1_byte(&mat, i, 2 * g, &high);
				const int sh = high ? 4 : 0;
				mat.data[b] =
				    (uint8_t)((mat.data[b] & ~(15u << sh)) | (unsigned)(3 * w0 + w1 + 4) << sh);
			}
	} else {
		/* Zero bytes are |v| = 0, sign 0: the all-zero triple. */
		for (int i = 0; i < m; i++)
			for (int g = 0; g < (k + 2) / 3; g++) {
				const int8_t *row = w + (size_t)i * k;
				const int w0 = row[3 * g], w1 = 3 * g + 1 < k ? row[3 * g + 1] : 0,
					  w2 = 3 * g + 2 < k ? row[3 * g + 2] : 0;
				tl2_set(&mat, i, g, 9 * w0 + 3 * w1 + w2);
			}
	}
	*out = mat;
	return 0;
}

int tern_matrix_unpack(const tern_matrix *mat, int8_t *w, tern_err *err)
{
	TERN_RETURN_IF(!mat || !w || !mat->data, err, TERN_EINVAL, "tern_matrix_unpack: NULL argument");
	for (int i = 0; i < mat->m; i++)
		for (int k = 0; k < mat->k; k++) {
			const int v = tern_weight_at(mat, i, k);
			TERN_RETURN_IF(v < -1 || v > 1, err, TERN_EFORMAT,
				       "tern_matrix_unpack: invalid code at [%d][%d]", i, k);
			w[(size_t)i * mat->k + k] = (int8_t)v;
		}
	return 0;
}

int tern_matrix_wrap_i2s(tern_matrix *out, const uint8_t *data, int m, int k, float scale, tern_err *err)
{
	TERN_RETURN_IF(!out || !data, err, TERN_EINVAL, "tern_matrix_wrap_i2s: NULL argument");
	memset(out, 0, sizeof *out);
	TERN_FORWARD_IF_ERROR(check_dims(TERN_PACK_I2S, m, k, err));
	TERN_RETURN_IF(k % 128 != 0, err, TERN_EINVAL, "tern_matrix_wrap_i2s: K = %d is not a multiple of 128", k);
	float *s = malloc(sizeof(float));
	TERN_RETURN_IF(!s, err, TERN_ENOMEM, "tern_matrix_wrap_i2s: scale");
	*s = scale;
	*out = (tern_matrix){.packing = TERN_PACK_I2S,
			     .m = m,
			     .k = k,
			     .k_pad = k,
			     .m_pad = m,
			     .group_rows = m,
			     .n_groups = 1,
			     .scales = s,
			     .data = (uint8_t *)(uintptr_t)data,
			     .data_bytes = (size_t)m * (size_t)k / 4,
			     .owns_data = 0,
			     .owns_scales = 1};
	return 0;
}

void tern_matrix_free(tern_matrix *mat)
{
	if (!mat)
		return;
	if (mat->owns_data)
		tern_aligned_free(mat->data);
	if (mat->owns_data || mat->owns_scales)
		free(mat->scales);
	memset(mat, 0, sizeof *mat);
}
