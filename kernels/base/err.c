/* err.c: error codes with context (see tern-base.h). */
#include "tern-base.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *tern_strerror(int code)
{
	switch (code) {
	case TERN_OK: return "OK";
	case TERN_EINVAL: return "EINVAL";
	case TERN_ENOMEM: return "ENOMEM";
	case TERN_EIO: return "EIO";
	case TERN_EFORMAT: return "EFORMAT";
	case TERN_ERANGE: return "ERANGE";
	case TERN_ECHECKSUM: return "ECHECKSUM";
	case TERN_EUNSUP: return "EUNSUP";
	case TERN_ESTATE: return "ESTATE";
	case TERN_ECOMM: return "ECOMM";
	case TERN_ETIMEOUT: return "ETIMEOUT";
	case TERN_EFULL: return "EFULL";
	default: return "EUNKNOWN";
	}
}

int tern_err_set(tern_err *err, int code, const char *file, int line, const char *fmt, ...)
{
	if (!err)
		return code;
	err->code = code;
	err->file = file;
	err->line = line;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof err->msg, fmt, ap);
	va_end(ap);
	/* Messages are one line by contract: fold any newline a caller let in. */
	for (char *p = err->msg; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	return code;
}

void tern_err_clear(tern_err *err)
{
	if (!err)
		return;
	err->code = TERN_OK;
	err->file = NULL;
	err->line = 0;
	err->msg[0] = '\0';
}
