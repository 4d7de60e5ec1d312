/* tern-json.h: the JSON that model files and batch requests carry
 * (safetensors headers, config.json, tokenizer.json, batch JSONL), parsed by
 * Debian's jansson (json.c; strict RFC 8259, duplicate keys refused) and
 * handed out as a read-only tree. Strings are unescaped (\uXXXX incl.
 * surrogate pairs -> UTF-8) and NUL-terminated, and also carry their length.
 * Depth is limited (64). Integers beyond int64 are refused by jansson. */
#ifndef TERN_JSON_H
#define TERN_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
	TERN_JSON_NULL,
	TERN_JSON_BOOL,
	TERN_JSON_NUMBER,
	TERN_JSON_STRING,
	TERN_JSON_ARRAY,
	TERN_JSON_OBJECT
} tern_json_type;

typedef struct tern_json tern_json;
struct tern_json {
	tern_json_type type;
	int boolean;     /* BOOL */
	double number;   /* NUMBER */
	int is_int;      /* NUMBER written without fraction/exponent and fits int64 */
	int64_t integer; /* NUMBER when is_int */
	const char *str; /* STRING value (NUL-terminated, may contain NULs: use len) */
	size_t len;      /* STRING length in bytes; ARRAY/OBJECT: number of children */
	const char *key; /* member name when the parent is an OBJECT, else NULL */
	size_t key_len;
	tern_json **items; /* (len) ARRAY elements / OBJECT members, in document order */
};

typedef struct tern_json_doc tern_json_doc;

/* Parses buf[0..len). `what` names the source in error messages
 * ("model.safetensors: JSON header: expected ':' at byte 17"). Trailing
 * whitespace is allowed; anything else after the value is an error.
 * TERN_EFORMAT for syntax errors, TERN_ERANGE for depth, TERN_ENOMEM. */
int tern_json_parse(tern_json_doc **out, const char *buf, size_t len, const char *what, tern_err *err);
/* Reads and parses a whole file. */
int tern_json_parse_file(tern_json_doc **out, const char *path, tern_err *err);
const tern_json *tern_json_root(const tern_json_doc *doc);
void tern_json_free(tern_json_doc *doc); /* NULL is a no-op */

/* Member `key` of an object (first match), or NULL (also when o is NULL or
 * not an object). */
const tern_json *tern_json_get(const tern_json *o, const char *key);
/* Convenience: member as integer / number / bool / string, with a default
 * when absent or of another type. */
int64_t tern_json_get_int(const tern_json *o, const char *key, int64_t dflt);
double tern_json_get_num(const tern_json *o, const char *key, double dflt);
int tern_json_get_bool(const tern_json *o, const char *key, int dflt);
const char *tern_json_get_str(const tern_json *o, const char *key, const char *dflt);

#ifdef __cplusplus
}
#endif
#endif /* TERN_JSON_H */
