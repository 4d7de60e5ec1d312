/* log.c: levelled logging to stderr (see tern-base.h). One fprintf per line
 * so lines from several threads or ranks do not interleave mid-line. */
#include "tern-base.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static atomic_int log_level = -1; /* -1: not yet read from TERN_LOG */

int tern_log_parse_level(const char *s)
{
	if (!s)
		return -1;
	if (!strcmp(s, "error"))
		return TERN_LOG_ERROR;
	if (!strcmp(s, "warn"))
		return TERN_LOG_WARN;
	if (!strcmp(s, "info"))
		return TERN_LOG_INFO;
	if (!strcmp(s, "debug"))
		return TERN_LOG_DEBUG;
	return -1;
}

void tern_log_set_level(tern_log_level level)
{
	atomic_store(&log_level, (int)level);
}

tern_log_level tern_log_get_level(void)
{
	int l = atomic_load(&log_level);
	if (l < 0) {
		l = tern_log_parse_level(getenv("TERN_LOG"));
		if (l < 0)
			l = TERN_LOG_INFO;
		atomic_store(&log_level, l);
	}
	return (tern_log_level)l;
}

void tern_log(tern_log_level level, const char *tag, const char *fmt, ...)
{
	static const char *const names[] = {"error", "warn", "info", "debug"};
	if ((int)level > (int)tern_log_get_level())
		return;
	char line[1024];
	int n = snprintf(line, sizeof line, "tern %s %s: ", names[level], tag ? tag : "-");
	if (n < 0)
		return;
	if ((size_t)n < sizeof line) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
		va_end(ap);
	}
	fprintf(stderr, "%s\n", line);
}
