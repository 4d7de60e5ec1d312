/* tern-api.h: small helpers around the client API messages (tern.proto)
 * that every program printing them needs the same way: the tern client's
 * --json output and the coordinator's batch-mode results. */
#ifndef TERN_API_H
#define TERN_API_H

#include <stddef.h>
#include <stdio.h>

/* "stop", "length", "cancelled", "error", or "none" for a FinishReason value. */
const char *tern_api_finish_reason_name(int reason);

#include <jansson.h>

/* A jansson string of s[0..n) (UTF-8; bytes that are not are kept as they
 * are, never dropped); NULL only when out of memory. */
json_t *tern_api_json_text(const char *s, size_t n);
/* Writes obj to f as one compact line of JSON and releases it (the
 * reference is stolen, NULL included). 0, or -1 when out of memory or f
 * fails. */
int tern_api_json_line(FILE *f, json_t *obj);

#endif /* TERN_API_H */
