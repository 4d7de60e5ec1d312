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

json_t *tern_api_json_text(const char *s, size_t n)
{
	json_t *j = json_stringn(s ? s : "", s ? n : 0);
	return j ? j : json_stringn_nocheck(s ? s : "", s ? n : 0);
}

int tern_api_json_line(FILE *f, json_t *obj)
{
	if (!obj)
		return -1;
	const int rc = json_dumpf(obj, f, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(obj);
	return rc == 0 && fputc('\n', f) != EOF ? 0 : -1;
}
