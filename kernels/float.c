/* float.c: dispatch of the float kernels (tern-float.h) through the same ISA
 * choice as the ternary products (dispatch.c: cpuid, TERN_KERNEL,
 * tern_kernel_force_isa). */
#include "kern-float.h"

static const tern_float_kernels *const tables[TERN_ISA_COUNT] = {
    [TERN_ISA_REF] = &tern_float_ref,
#if defined(TERN_KERNELS_X86)
    [TERN_ISA_AVX2] = &tern_float_avx2,
    [TERN_ISA_AVX512] = &tern_float_avx512,
#endif
#if defined(TERN_KERNELS_NEON)
    [TERN_ISA_NEON] = &tern_float_neon,
#endif
};

const tern_float_kernels *tern_float_kernels_get(tern_isa isa)
{
	/* tern_isa_default also sets the kernel variant flags (VNNI) once */
	const tern_isa def = tern_isa_default();
	if (isa == TERN_ISA_AUTO)
		isa = def;
	if ((unsigned)isa >= TERN_ISA_COUNT || !tern_isa_available(isa))
		return NULL;
	return tables[isa];
}
