/* tl-drive.h: the loop nest shared by the x86 TL1/TL2 kernels (plain C, no
 * ISA flags). A tile function computes int32 sums of one 64-row tile for a
 * block of tokens over steps [s0, s1) (a step = 64 index bytes = two groups),
 * prefetching pf bytes ahead of what it reads (0: none); this driver orders
 * the calls.
 *
 * GEMV (n == 1) streams each tile over all of K once, prefetching far ahead
 * in the same (linear) stream. GEMM goes over K in slices sized so the
 * activation tables of every token for the slice (n * 64 bytes per step) stay
 * within TL_LUT_BUDGET of L2 while all tiles pass (unsliced, the tables of 32
 * tokens at K = 6912, 2.3 MiB, were re-read from L3 for every tile); the first
 * token block of a slice prefetches the same slice of the next tile. Partial
 * sums are added into dot. */
#ifndef TERN_TL_DRIVE_H
#define TERN_TL_DRIVE_H

#include "kern-internal.h"

#include <stddef.h>
#include <string.h>
#include <xmmintrin.h>

#define TL_LUT_BUDGET (512 * 1024)
#define TL_MAX_TOKENS 8
#ifndef TL_GEMV_PREFETCH
#define TL_GEMV_PREFETCH 16384 /* see TERN_PREFETCH in gemm-avx512.c */
#endif

typedef void (*tl_run_fn)(const uint8_t *tile, int s0, int s1, const tern_act *a, int j0, int nt, ptrdiff_t pf,
			  int32_t acc[][TERN_TL_ROWS]);

/* The LUT rows of tokens j0 .. j0+nt-1. */
static inline void tl_luts(const tern_act *a, int j0, int nt, const uint8_t **lut)
{
	for (int t = 0; t < nt; t++)
		lut[t] = (const uint8_t *)a->lut + (size_t)(j0 + t) * a->lut_row_bytes;
}

/* Prefetches pf bytes ahead of a step (pf = 0: nothing). A TL2 step spans
 * 80 bytes: two prefetches 40 apart touch every line. always_inline: GCC
 * counts a function of prefetches alone as const and drops its calls as dead
 * code when it does not inline them early (measured: no prefetch left in the
 * tile loops, TL2 GEMV 10-20% slower). */
static inline __attribute__((always_inline)) void tl_prefetch_step(const uint8_t *step, ptrdiff_t pf, int tl2)
{
	if (pf) {
		_mm_prefetch((const char *)(step + pf), _MM_HINT_T0);
		if (tl2)
			_mm_prefetch((const char *)(step + pf + 40), _MM_HINT_T0);
	}
}

/* Defines name, a tl_run_fn for packing tl2 (0: TL1, 1: TL2) that calls
 * tile_fn(tile, s0, s1, a, j0, NT, pf, tl2, acc) with the token count NT as
 * a constant (max_nt or max_nt / 2, the counts tl_drive hands out), so each
 * count gets its own unrolled body; one token goes to one_fn (same
 * arguments, NT = 1: tile_fn again, or a GEMV tile). */
#define TL_RUN_FN(name, tile_fn, one_fn, max_nt, tl2)                                                           \
	static void name(const uint8_t *tile, int s0, int s1, const tern_act *a, int j0, int nt, ptrdiff_t pf,  \
			 int32_t acc[][TERN_TL_ROWS])                                                           \
	{                                                                                                       \
		if (nt == (max_nt))                                                                             \
			tile_fn(tile, s0, s1, a, j0, (max_nt), pf, (tl2), acc);                                 \
		else if (nt == (max_nt) / 2)                                                                    \
			tile_fn(tile, s0, s1, a, j0, (max_nt) / 2, pf, (tl2), acc);                             \
		else                                                                                            \
			one_fn(tile, s0, s1, a, j0, 1, pf, (tl2), acc);                                         \
	}

/* Defines the entry points tern_kern_tl1_<isa> and tern_kern_tl2_<isa>
 * (kern-internal.h) as fn(w, a, dot, ldd, row0, row1, tl2). */
#define TL_ENTRY_POINTS(isa, fn)                                                                                  \
	void tern_kern_tl1_##isa(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1) \
	{                                                                                                         \
		fn(w, a, dot, ldd, row0, row1, 0);                                                                \
	}                                                                                                         \
	void tern_kern_tl2_##isa(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1) \
	{                                                                                                         \
		fn(w, a, dot, ldd, row0, row1, 1);                                                                \
	}

/* TL1 (tl2 = 0: steps are quads) or TL2 (pairs) with tiles run by run, for
 * at most max_nt tokens at a time. */
static void tl_drive(const tern_matrix *w, const tern_act *a, int32_t *dot, int ldd, int row0, int row1, int tl2,
		     int max_nt, tl_run_fn run)
{
	const int steps = w->k_pad / (tl2 ? 6 : 4);
	const size_t step_bytes = tl2 ? TERN_TL2_PAIR_BYTES : TERN_TL1_QUAD_BYTES;
	int32_t acc[TL_MAX_TOKENS][TERN_TL_ROWS];
	const size_t tile_bytes = (size_t)steps * step_bytes;
	/* Slices are whole 32-step int16 blocks. */
	int super = a->n == 1 ? steps : TL_LUT_BUDGET / (a->n * 2 * TERN_LUT_GROUP_BYTES) / 32 * 32;
	if (super < 32)
		super = 32;
	for (int s0 = 0; s0 < steps; s0 += super) {
		const int s1 = steps - s0 < super ? steps : s0 + super;
		for (int r = row0; r < row1; r += TERN_TL_ROWS) {
			const uint8_t *tile = w->data + (size_t)(r / TERN_TL_ROWS) * tile_bytes;
			const int rows = row1 - r < TERN_TL_ROWS ? row1 - r : TERN_TL_ROWS;
			for (int j = 0; j < a->n;) {
				const int nt = a->n - j >= max_nt ? max_nt : a->n - j >= max_nt / 2 ? max_nt / 2 : 1;
				memset(acc, 0, (size_t)nt * sizeof acc[0]);
				const ptrdiff_t pf = a->n == 1 ? TL_GEMV_PREFETCH : j == 0 ? (ptrdiff_t)tile_bytes : 0;
				run(tile, s0, s1, a, j, nt, pf, acc);
				for (int t = 0; t < nt; t++) {
					int32_t *d = dot + (size_t)(j + t) * (size_t)ldd + (size_t)(r - row0);
					if (s0 == 0)
						memcpy(d, acc[t], (size_t)rows * sizeof(int32_t));
					else
						for (int i = 0; i < rows; i++)
							d[i] += acc[t][i];
				}
				j += nt;
			}
		}
	}
}

#endif /* TERN_TL_DRIVE_H */
