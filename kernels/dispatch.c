/* dispatch.c: names of packings and ISAs, which ISAs this build and CPU can
 * run, the default choice (cpuid, TERN_KERNEL, tern_kernel_force_isa), and the
 * public product entry points: argument checks, the per-ISA kernel table and
 * the one scalar int32 -> float step shared by every ISA (so floats match
 * bit for bit wherever the integers do). */
#include "kern-internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static const char *const pack_names[TERN_PACK_COUNT] = {"i2_s", "tl1", "tl2"};
static const char *const isa_names[TERN_ISA_COUNT] = {"ref", "avx2", "avx512", "neon"};

const char *tern_packing_name(tern_packing p)
{
	return (unsigned)p < TERN_PACK_COUNT ? pack_names[p] : "?";
}

const char *tern_isa_name(tern_isa isa)
{
	if (isa == TERN_ISA_AUTO)
		return "auto";
	return (unsigned)isa < TERN_ISA_COUNT ? isa_names[isa] : "?";
}

int tern_packing_parse(const char *s)
{
	if (!s)
		return -2;
	for (int i = 0; i < TERN_PACK_COUNT; i++)
		if (!strcmp(s, pack_names[i]))
			return i;
	if (!strcmp(s, "i2s"))
		return TERN_PACK_I2S;
	return -2;
}

int tern_isa_parse(const char *s)
{
	if (!s)
		return -2;
	if (!strcmp(s, "auto"))
		return TERN_ISA_AUTO;
	for (int i = 0; i < TERN_ISA_COUNT; i++)
		if (!strcmp(s, isa_names[i]))
			return i;
	return -2;
}

/* Kernel table: NULL where this build has no such kernel. */
static const tern_kern_fn kernels[TERN_ISA_COUNT][TERN_PACK_COUNT] = {
    [TERN_ISA_REF] = {tern_kern_i2s_ref, tern_kern_tl1_ref, tern_kern_tl2_ref},
#if defined(TERN_KERNELS_X86)
    [TERN_ISA_AVX2] = {tern_kern_i2s_avx2, tern_kern_tl1_avx2, tern_kern_tl2_avx2},
    [TERN_ISA_AVX512] = {tern_kern_i2s_avx512, tern_kern_tl1_avx512, tern_kern_tl2_avx512},
#endif
#if defined(TERN_KERNELS_NEON)
    [TERN_ISA_NEON] = {tern_kern_i2s_neon, tern_kern_tl1_neon, tern_kern_tl2_neon},
#endif
};

int tern_isa_available(tern_isa isa)
{
	if ((unsigned)isa >= TERN_ISA_COUNT || !kernels[isa][0])
		return 0;
	const tern_cpu *c = tern_cpu_get();
	switch (isa) {
	case TERN_ISA_REF: return 1;
	case TERN_ISA_AVX2: return c->avx2 && c->fma && c->f16c; /* every AVX2 CPU has both */
	case TERN_ISA_AVX512: return c->avx512f && c->avx512bw && c->avx512vl;
	case TERN_ISA_NEON: return c->neon;
	default: return 0;
	}
}

static tern_isa isa_env_default = TERN_ISA_REF;
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;
static int isa_forced = -1; /* accessed with __atomic builtins */

static void isa_init(void)
{
	static const tern_isa best[] = {TERN_ISA_AVX512, TERN_ISA_AVX2, TERN_ISA_NEON};
	isa_env_default = TERN_ISA_REF;
	for (size_t i = 0; i < sizeof best / sizeof best[0]; i++)
		if (tern_isa_available(best[i])) {
			isa_env_default = best[i];
			break;
		}
#if defined(TERN_KERNELS_X86)
	tern_kern_avx512_vnni = tern_cpu_get()->avx512vnni;
	tern_kern_avx512_vbmi = tern_cpu_get()->avx512vbmi;
	tern_kern_avx2_dot = tern_cpu_get()->avxvnni ? TERN_AVX2_DOT_VNNI : TERN_AVX2_DOT_MADDUBS;
	if (tern_cpu_get()->avxvnni) {
		tern_kern_avx2_gemm_min[TERN_PACK_I2S] = TERN_GEMM_AVXVNNI_MIN_I2S;
		tern_kern_avx2_gemm_min[TERN_PACK_TL1] = TERN_GEMM_AVXVNNI_MIN_TL1;
		tern_kern_avx2_gemm_min[TERN_PACK_TL2] = TERN_GEMM_AVXVNNI_MIN_TL2;
	}
#endif
	const char *env = getenv("TERN_KERNEL");
	if (env && *env) {
		const int v = tern_isa_parse(env);
		if (v == TERN_ISA_AUTO)
			return;
		if (v < 0 || !tern_isa_available((tern_isa)v))
			TERN_LOGW("kernels", "TERN_KERNEL=%s: not an ISA this build and CPU can run; using %s", env,
				  tern_isa_name(isa_env_default));
		else
			isa_env_default = (tern_isa)v;
	}
}

tern_isa tern_isa_default(void)
{
	pthread_once(&isa_once, isa_init);
	const int f = __atomic_load_n(&isa_forced, __ATOMIC_RELAXED);
	return f >= 0 ? (tern_isa)f : isa_env_default;
}

int tern_kernel_force_isa(tern_isa isa)
{
	pthread_once(&isa_once, isa_init);
	if (isa == TERN_ISA_AUTO) {
		__atomic_store_n(&isa_forced, -1, __ATOMIC_RELAXED);
		return 0;
	}
	if (!tern_isa_available(isa))
		return TERN_EUNSUP;
	__atomic_store_n(&isa_forced, (int)isa, __ATOMIC_RELAXED);
	return 0;
}

static int check_product(const tern_matrix *w, const tern_act *a, const void *out, int ld, int row0, int row1,
			 tern_isa *isa, tern_err *err)
{
	pthread_once(&isa_once, isa_init); /* kernel variant flags (VNNI, VBMI) */
	TERN_RETURN_IF(!w || !a || !w->data, err, TERN_EINVAL, "tern_gemm: NULL matrix or activations");
	TERN_RETURN_IF((unsigned)w->packing >= TERN_PACK_COUNT, err, TERN_EINVAL, "tern_gemm: unknown packing %d",
		       (int)w->packing);
	TERN_RETURN_IF(w->packing != a->packing, err, TERN_EINVAL,
		       "tern_gemm: matrix packing %s but activations prepared for %s", tern_packing_name(w->packing),
		       tern_packing_name(a->packing));
	TERN_RETURN_IF(w->k != a->k || w->k_pad != a->k_pad || w->k_pad != tern_k_pad(w->packing, w->k), err,
		       TERN_EINVAL, "tern_gemm: matrix K %d (padded %d) but activations K %d (padded %d)", w->k,
		       w->k_pad, a->k, a->k_pad);
	TERN_RETURN_IF(w->m < 1 || w->m_pad < w->m || w->m_pad % tern_row_tile(w->packing) != 0, err, TERN_EINVAL,
		       "tern_gemm: bad matrix rows %d (padded %d)", w->m, w->m_pad);
	TERN_RETURN_IF(w->data_bytes < tern_matrix_data_bytes(w->packing, w->m_pad, w->k), err, TERN_EINVAL,
		       "tern_gemm: matrix data of %zu bytes is too small", w->data_bytes);
	TERN_RETURN_IF(row0 < 0 || row1 > w->m || row0 > row1 || row0 % tern_row_tile(w->packing) != 0, err,
		       TERN_EINVAL, "tern_gemm: row range [%d, %d) of %d rows (tile %d)", row0, row1, w->m,
		       tern_row_tile(w->packing));
	TERN_RETURN_IF(a->n < 0 || (a->n > 0 && (!out || !a->q)) || (a->n > 1 && ld < row1), err, TERN_EINVAL,
		       "tern_gemm: bad output (n=%d, leading dimension %d for rows up to %d)", a->n, ld, row1);
	TERN_RETURN_IF(w->packing != TERN_PACK_I2S && a->n > 0 && !a->lut, err, TERN_EINVAL,
		       "tern_gemm: activations have no %s tables", tern_packing_name(w->packing));
	if (*isa == TERN_ISA_AUTO)
		*isa = tern_isa_default();
	TERN_RETURN_IF(!tern_isa_available(*isa), err, TERN_EUNSUP, "tern_gemm: ISA %s not available here",
		       tern_isa_name(*isa));
	return 0;
}

int tern_gemm_i32(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1, tern_isa isa,
		  tern_err *err)
{
	TERN_FORWARD_IF_ERROR(check_product(w, a, dot, ldd, row0, row1, &isa, err));
	if (a->n == 0 || row0 == row1)
		return 0;
	/* The public dot is indexed by absolute row; kernels by row - row0. */
	kernels[isa][w->packing](w, a, dot + row0, ldd, row0, row1);
	return 0;
}

int tern_gemm_f32(const tern_matrix *w, const tern_act *a, float *y, int ldy, int row0, int row1, tern_isa isa,
		  tern_err *err)
{
	TERN_FORWARD_IF_ERROR(check_product(w, a, y, ldy, row0, row1, &isa, err));
	TERN_RETURN_IF(!w->scales || w->group_rows < 1 || (long long)w->n_groups * w->group_rows < w->m, err,
		       TERN_EINVAL, "tern_gemm_f32: matrix has no scales");
	if (a->n == 0 || row0 == row1)
		return 0;
	const int rows = row1 - row0;
	/* Rows in chunks (a multiple of the tile) so the int32 scratch stays
	 * small: on the stack where it fits, which is every call with fewer
	 * than 16384 / tile tokens (no allocation per product). */
	const int tile = tern_row_tile(w->packing);
	int chunk = 16384 / (a->n > 0 ? a->n : 1);
	chunk = chunk < tile ? tile : chunk / tile * tile;
	if (chunk > rows)
		chunk = rows;
	_Alignas(64) int32_t stack_tmp[16384];
	const size_t need = (size_t)chunk * (size_t)a->n;
	int32_t *tmp = need <= sizeof stack_tmp / sizeof stack_tmp[0]
			   ? stack_tmp
			   : tern_aligned_alloc(need * sizeof(int32_t), TERN_ALIGN);
	TERN_RETURN_IF(!tmp, err, TERN_ENOMEM, "tern_gemm_f32: scratch for %d x %d", a->n, chunk);
	for (int r0 = row0; r0 < row1; r0 += chunk) {
		const int r1 = row1 - r0 < chunk ? row1 : r0 + chunk;
		kernels[isa][w->packing](w, a, tmp, chunk, r0, r1);
		/* One expression per output, dot / act scale * weight scale; the
		 * rows of one scale group run as one loop (no division by
		 * group_rows per output, which cost ~8% of a batched step). */
		for (int j = 0; j < a->n; j++) {
			const float as = a->scale[j];
			const int32_t *t = tmp + (size_t)j * (size_t)chunk;
			float *yj = y + (size_t)j * (size_t)ldy;
			for (int i = r0; i < r1;) {
				const int g = i / w->group_rows;
				const long long g_end = (long long)(g + 1) * w->group_rows;
				const int end = g_end < r1 ? (int)g_end : r1;
				const float ws = w->scales[g];
				for (; i < end; i++)
					yj[i] = (float)t[i - r0] / as * ws;
			}
		}
	}
	if (tmp != stack_tmp)
		tern_aligned_free(tmp);
	return 0;
}
