/* api-util.c: helpers around the client API messages (see tern-api.h). */
#include "tern-api.h"

#include "tern.pb-c.h"

const char *tern_api_finish_reason_name(int reason)
{
	switch (reason) {
	case TERN__V1__FINISH_REASON__FINISH_REASON_STOP: return "stop";
	case TERN__V1__FINISH_REASON__FINISH_REASON_LENGTH: return "length";
	case TERN__V1__FINISH_REASON__FINISH_REASON_CANCELLED: return "cancelled";
	case TERN__V1__FINISH_REASON__FINISH_REASON_ERROR: return "error";
	default: return "none";
	}
}

void tern_api_json_str(FILE *f, const char *s, size_t n)
{
	fputc('"', f);
	for (size_t i = 0; i < n; i++) {
		const unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c == '\n')
			fputs("\\n", f);
		else if (c == '\t')
			fputs("\\t", f);
		else if (c == '\r')
			fputs("\\r", f);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}
