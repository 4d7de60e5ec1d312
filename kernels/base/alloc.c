/* alloc.c: aligned allocation (see tern-base.h). */
#include "tern-base.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

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

void *tern_huge_alloc(size_t size)
{
	if (size == 0)
		return NULL;
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
#ifdef MADV_HUGEPAGE
	/* advice only: where THP is off the region stays in 4 KiB pages */
	madvise(p, size, MADV_HUGEPAGE);
#endif
	return p;
}

void tern_huge_free(void *p, size_t size)
{
	if (p)
		munmap(p, size);
}
