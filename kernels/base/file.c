/* file.c: reading a whole file and mapping one read-only (see tern-base.h),
 * so every reader of model files, plans, keys and prompts shares one set of
 * size checks and one wording of its errors. */
#include "tern-base.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int tern_read_file(const char *path, size_t max, char **bufp, size_t *lenp, tern_err *err)
{
	*bufp = NULL;
	*lenp = 0;
	TERN_RETURN_IF(max >= SIZE_MAX / 2, err, TERN_EINVAL, "%s: read limit too large", path);
	const int fd = open(path, O_RDONLY | O_CLOEXEC);
	TERN_RETURN_IF(fd < 0, err, TERN_EIO, "%s: cannot open: %s", path, strerror(errno));
	struct stat st;
	int rc = 0;
	if (fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
		close(fd);
		return TERN_ERR(err, TERN_EIO, "%s: not a readable file", path);
	}
	/* A regular file's size is a hint (it may change under us); pipes grow
	 * the buffer as they go. One byte over max tells "too large". */
	size_t cap = S_ISREG(st.st_mode) && (uint64_t)st.st_size < max ? (size_t)st.st_size + 1 : 65536;
	if (cap > max + 1)
		cap = max + 1;
	size_t len = 0;
	char *buf = malloc(cap + 1);
	if (!buf) {
		rc = TERN_ERR(err, TERN_ENOMEM, "%s: out of memory reading it", path);
		goto fail;
	}
	for (;;) {
		if (len == cap) {
			if (cap > max) {
				rc = TERN_ERR(err, TERN_ERANGE, "%s: larger than %zu bytes", path, max);
				goto fail;
			}
			size_t ncap = cap * 2 > max + 1 ? max + 1 : cap * 2;
			char *nb = realloc(buf, ncap + 1);
			if (!nb) {
				rc = TERN_ERR(err, TERN_ENOMEM, "%s: out of memory reading it", path);
				goto fail;
			}
			buf = nb;
			cap = ncap;
		}
		const ssize_t r = read(fd, buf + len, cap - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = TERN_ERR(err, TERN_EIO, "%s: read error: %s", path, strerror(errno));
			goto fail;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	if (len > max) {
		rc = TERN_ERR(err, TERN_ERANGE, "%s: larger than %zu bytes", path, max);
		goto fail;
	}
	close(fd);
	buf[len] = '\0';
	*bufp = buf;
	*lenp = len;
	return 0;
fail:
	free(buf);
	close(fd);
	return rc;
}

int tern_map_file(const char *path, tern_file_map *m, tern_err *err)
{
	static const uint8_t empty[1];
	memset(m, 0, sizeof *m);
	const int fd = open(path, O_RDONLY | O_CLOEXEC);
	TERN_RETURN_IF(fd < 0, err, TERN_EIO, "%s: cannot open: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return TERN_ERR(err, TERN_EIO, "%s: not a regular file", path);
	}
	if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX) {
		close(fd);
		return TERN_ERR(err, TERN_ERANGE, "%s: %llu bytes do not fit this address space", path,
				(unsigned long long)st.st_size);
	}
	const size_t size = (size_t)st.st_size;
	void *p = NULL;
	if (size > 0) {
		p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (p == MAP_FAILED) {
			const int e = errno;
			close(fd);
			return TERN_ERR(err, TERN_EIO, "%s: cannot map %zu bytes: %s", path, size, strerror(e));
		}
	}
	close(fd);
	m->data = p ? p : empty;
	m->size = size;
	m->mapped = p != NULL;
	return 0;
}

void tern_unmap_file(tern_file_map *m)
{
	if (!m)
		return;
	if (m->mapped)
		munmap((void *)m->data, m->size);
	memset(m, 0, sizeof *m);
}

void tern_path_expand_host(const char *path, char *out, size_t out_len)
{
	char host[256] = "";
	gethostname(host, sizeof host - 1);
	size_t o = 0;
	for (const char *p = path; *p && o + 1 < out_len; p++) {
		if (p[0] == '%' && p[1] == 'h') {
			const size_t hl = strlen(host);
			const size_t n = hl < out_len - 1 - o ? hl : out_len - 1 - o;
			memcpy(out + o, host, n);
			o += n;
			p++;
		} else {
			out[o++] = *p;
		}
	}
	out[o] = '\0';
}

char *tern_read_first_line(const char *path, tern_err *err)
{
	char *buf;
	size_t len;
	if (tern_read_file(path, 1 << 16, &buf, &len, err) < 0)
		return NULL;
	buf[strcspn(buf, "\r\n")] = '\0';
	if (!buf[0]) {
		TERN_ERR(err, TERN_EINVAL, "%s: the first line is empty", path);
		free(buf);
		return NULL;
	}
	return buf;
}
