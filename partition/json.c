/* json.c: tern-json.h over Debian's jansson. jansson parses (RFC 8259,
 * duplicate keys refused, NUL allowed in strings); this file only bounds the
 * nesting depth before it runs, and lends the result to the callers as the
 * read-only tern_json tree they walk (one array of nodes, strings and keys
 * pointing into jansson's own values, freed with the document). */
#include "tern-json.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64

struct tern_json_doc {
	json_t *j;        /* the parsed document, owner of every string */
	tern_json *nodes; /* (n_nodes) */
	tern_json **kids; /* (n_kids) the items arrays, back to back */
	size_t n_nodes, n_kids;
};

/* Containers nested deeper than MAX_DEPTH anywhere in buf (strings
 * skipped): refused before parsing, as a hostile document could otherwise
 * nest up to jansson's own limit. */
static int too_deep(const char *s, size_t n)
{
	int depth = 0, in_str = 0;
	for (size_t i = 0; i < n; i++) {
		const char c = s[i];
		if (in_str) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_str = 0;
		} else if (c == '"') {
			in_str = 1;
		} else if (c == '[' || c == '{') {
			if (++depth > MAX_DEPTH)
				return 1;
		} else if (c == ']' || c == '}') {
			depth--;
		}
	}
	return 0;
}

static void count(json_t *v, size_t *nodes, size_t *kids)
{
	(*nodes)++;
	if (json_is_array(v)) {
		*kids += json_array_size(v);
		for (size_t i = 0; i < json_array_size(v); i++)
			count(json_array_get(v, i), nodes, kids);
	} else if (json_is_object(v)) {
		const char *k;
		json_t *m;
		*kids += json_object_size(v);
		json_object_foreach (v, k, m)
			count(m, nodes, kids);
	}
}

/* Fills node *n from v, taking nodes and kid slots from the doc's arrays. */
static tern_json *convert(tern_json_doc *d, json_t *v, size_t *next_node, size_t *next_kid)
{
	tern_json *n = &d->nodes[(*next_node)++];
	memset(n, 0, sizeof *n);
	switch (json_typeof(v)) {
	case JSON_NULL: n->type = TERN_JSON_NULL; break;
	case JSON_TRUE:
	case JSON_FALSE:
		n->type = TERN_JSON_BOOL;
		n->boolean = json_is_true(v);
		break;
	case JSON_INTEGER:
		n->type = TERN_JSON_NUMBER;
		n->is_int = 1;
		n->integer = (int64_t)json_integer_value(v);
		n->number = (double)n->integer;
		break;
	case JSON_REAL:
		n->type = TERN_JSON_NUMBER;
		n->number = json_real_value(v);
		break;
	case JSON_STRING:
		n->type = TERN_JSON_STRING;
		n->str = json_string_value(v);
		n->len = json_string_length(v);
		break;
	case JSON_ARRAY:
		n->type = TERN_JSON_ARRAY;
		n->len = json_array_size(v);
		n->items = &d->kids[*next_kid];
		*next_kid += n->len;
		for (size_t i = 0; i < n->len; i++)
			n->items[i] = convert(d, json_array_get(v, i), next_node, next_kid);
		break;
	case JSON_OBJECT: {
		n->type = TERN_JSON_OBJECT;
		n->len = json_object_size(v);
		n->items = &d->kids[*next_kid];
		*next_kid += n->len;
		const char *k;
		json_t *m;
		size_t i = 0;
		json_object_foreach (v, k, m) {
			tern_json *c = convert(d, m, next_node, next_kid);
			c->key = k;
			c->key_len = strlen(k);
			n->items[i++] = c;
		}
		break;
	}
	}
	return n;
}

void tern_json_free(tern_json_doc *doc)
{
	if (!doc)
		return;
	json_decref(doc->j);
	free(doc->nodes);
	free(doc->kids);
	free(doc);
}

int tern_json_parse(tern_json_doc **out, const char *buf, size_t len, const char *what, tern_err *err)
{
	*out = NULL;
	buf = buf ? buf : "";
	TERN_RETURN_IF(too_deep(buf, len), err, TERN_ERANGE, "%s: JSON nested deeper than %d levels", what,
		       MAX_DEPTH);
	json_error_t je;
	json_t *j = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
	TERN_RETURN_IF(!j, err, TERN_EFORMAT, "%s: bad JSON at line %d column %d: %s", what, je.line, je.column,
		       je.text);
	tern_json_doc *doc = calloc(1, sizeof *doc);
	if (doc) {
		doc->j = j;
		count(j, &doc->n_nodes, &doc->n_kids);
		doc->nodes = malloc(doc->n_nodes * sizeof *doc->nodes);
		doc->kids = malloc((doc->n_kids ? doc->n_kids : 1) * sizeof *doc->kids);
	}
	if (!doc || !doc->nodes || !doc->kids) {
		if (doc)
			tern_json_free(doc);
		else
			json_decref(j);
		return TERN_ERR(err, TERN_ENOMEM, "%s: out of memory", what);
	}
	size_t nn = 0, nk = 0;
	convert(doc, j, &nn, &nk);
	*out = doc;
	return 0;
}

int tern_json_parse_file(tern_json_doc **out, const char *path, tern_err *err)
{
	*out = NULL;
	char *buf;
	size_t len;
	TERN_FORWARD_IF_ERROR(tern_read_file(path, (size_t)1 << 31, &buf, &len, err));
	const int rc = tern_json_parse(out, buf, len, path, err);
	free(buf);
	return rc;
}

const tern_json *tern_json_root(const tern_json_doc *doc)
{
	return doc && doc->n_nodes ? &doc->nodes[0] : NULL;
}

const tern_json *tern_json_get(const tern_json *o, const char *key)
{
	if (!o || o->type != TERN_JSON_OBJECT)
		return NULL;
	const size_t kl = strlen(key);
	for (size_t i = 0; i < o->len; i++)
		if (o->items[i]->key_len == kl && memcmp(o->items[i]->key, key, kl) == 0)
			return o->items[i];
	return NULL;
}

int64_t tern_json_get_int(const tern_json *o, const char *key, int64_t dflt)
{
	const tern_json *v = tern_json_get(o, key);
	return v && v->type == TERN_JSON_NUMBER && v->is_int ? v->integer : dflt;
}

double tern_json_get_num(const tern_json *o, const char *key, double dflt)
{
	const tern_json *v = tern_json_get(o, key);
	return v && v->type == TERN_JSON_NUMBER ? v->number : dflt;
}

int tern_json_get_bool(const tern_json *o, const char *key, int dflt)
{
	const tern_json *v = tern_json_get(o, key);
	return v && v->type == TERN_JSON_BOOL ? v->boolean : dflt;
}

const char *tern_json_get_str(const tern_json *o, const char *key, const char *dflt)
{
	const tern_json *v = tern_json_get(o, key);
	return v && v->type == TERN_JSON_STRING ? v->str : dflt;
}
