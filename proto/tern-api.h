/* tern-api.h: small helpers around the client API messages (tern.proto)
 * that every program printing them needs the same way: the tern client's
 * --json output and the coordinator's batch-mode results. */
#ifndef TERN_API_H
#define TERN_API_H

#include <stddef.h>
#include <stdio.h>

/* "stop", "length", "cancelled", "error", or "none" for a FinishReason value. */
const char *tern_api_finish_reason_name(int reason);

/* Writes s[0..n) to f as a JSON string literal: quotes, backslash, control
 * characters escaped (\n \r \t \uXXXX); other bytes as they are (the texts
 * are UTF-8). */
void tern_api_json_str(FILE *f, const char *s, size_t n);

#endif /* TERN_API_H */
