/* alloc.c: aligned allocation (see tern-base.h). */
#include "tern-base.h"

#include <stdlib.h>
#include <string.h>

void *tern_aligned_alloc(size_t size, size_t align)
{
	if (size == 0 || align < sizeof(void *) || (align & (align - 1)) != 0)
		return NULL;
	void *p = NULL;
	if (posix_memalign(&p, align, size) != 0)
		return NULL;
	return p;
}

void *tern_aligned_calloc(size_t size, size_t align)
{
	void *p = tern_aligned_alloc(size, align);
	if (p)
		memset(p, 0, size);
	return p;
}

void tern_aligned_free(void *p)
{
	free(p);
}
