/* json.c: the strict JSON parser of tern-json.h. Recursive descent with a
 * depth limit; nodes and unescaped strings live in one arena freed at once.
 * Children are collected on a scratch stack and copied to the arena when a
 * container closes, so arrays of any length need no per-node reallocation. */
#include "tern-json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64
#define BLOCK_MIN (64 * 1024)

typedef struct block {
	struct block *next;
	size_t used, cap;
	_Alignas(16) unsigned char mem[];
} block;

struct tern_json_doc {
	block *blocks;
	tern_json *root;
};

typedef struct {
	const char *s;
	size_t len, pos;
	const char *what;
	tern_err *err;
	tern_json_doc *doc;
	tern_json **stack; /* scratch for children of open containers */
	size_t sp, scap;
} parser;

static void *arena_alloc(tern_json_doc *d, size_t n)
{
	n = (n + 15) & ~(size_t)15;
	block *b = d->blocks;
	if (!b || b->cap - b->used < n) {
		const size_t cap = n > BLOCK_MIN ? n : BLOCK_MIN;
		b = malloc(sizeof *b + cap);
		if (!b)
			return NULL;
		b->next = d->blocks;
		b->used = 0;
		b->cap = cap;
		d->blocks = b;
	}
	void *p = b->mem + b->used;
	b->used += n;
	return p;
}

#define PFAIL(code, ...) TERN_ERR(p->err, code, __VA_ARGS__)

static int syntax(parser *p, const char *what)
{
	return PFAIL(TERN_EFORMAT, "%s: %s at byte %zu", p->what, what, p->pos);
}

static void skip_ws(parser *p)
{
	while (p->pos < p->len) {
		const char c = p->s[p->pos];
		if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
			break;
		p->pos++;
	}
}

static int hex4(parser *p, uint32_t *v)
{
	if (p->len - p->pos < 4)
		return syntax(p, "truncated \\u escape");
	uint32_t x = 0;
	for (int i = 0; i < 4; i++) {
		const char c = p->s[p->pos++];
		x <<= 4;
		if (c >= '0' && c <= '9')
			x |= (uint32_t)(c - '0');
		else if (c >= 'a' && c <= 'f')
			x |= (uint32_t)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			x |= (uint32_t)(c - 'A' + 10);
		else
			return syntax(p, "bad \\u escape");
	}
	*v = x;
	return 0;
}

static size_t put_utf8(char *o, uint32_t cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xC0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xE0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		o[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	o[0] = (char)(0xF0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	o[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* Parses a string at p->pos (on the opening quote) into the arena. The
 * unescaped text is never longer than the raw text. */
static int parse_string(parser *p, const char **out, size_t *out_len)
{
	p->pos++; /* opening quote */
	size_t end = p->pos;
	int has_escape = 0;
	while (end < p->len && p->s[end] != '"') {
		if (p->s[end] == '\\') {
			has_escape = 1;
			end++;
		}
		end++;
	}
	if (end >= p->len)
		return syntax(p, "unterminated string");
	const size_t raw = end - p->pos;
	char *o = arena_alloc(p->doc, raw + 1);
	if (!o)
		return PFAIL(TERN_ENOMEM, "%s: out of memory", p->what);
	size_t n = 0;
	if (!has_escape) {
		for (size_t i = 0; i < raw; i++)
			if ((unsigned char)p->s[p->pos + i] < 0x20)
				return syntax(p, "control character in string");
		memcpy(o, p->s + p->pos, raw);
		n = raw;
		p->pos = end;
	} else {
		while (p->pos < end) {
			const unsigned char c = (unsigned char)p->s[p->pos];
			if (c < 0x20)
				return syntax(p, "control character in string");
			if (c != '\\') {
				o[n++] = (char)c;
				p->pos++;
				continue;
			}
			p->pos++;
			const char e = p->s[p->pos++];
			switch (e) {
			case '"': o[n++] = '"'; break;
			case '\\': o[n++] = '\\'; break;
			case '/': o[n++] = '/'; break;
			case 'b': o[n++] = '\b'; break;
			case 'f': o[n++] = '\f'; break;
			case 'n': o[n++] = '\n'; break;
			case 'r': o[n++] = '\r'; break;
			case 't': o[n++] = '\t'; break;
			case 'u': {
				uint32_t cp;
				if (p->pos > end || end - p->pos < 4)
					return syntax(p, "truncated \\u escape");
				TERN_FORWARD_IF_ERROR(hex4(p, &cp));
				if (cp >= 0xD800 && cp < 0xDC00) {
					uint32_t lo;
					if (end - p->pos < 6 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
						return syntax(p, "unpaired surrogate");
					p->pos += 2;
					TERN_FORWARD_IF_ERROR(hex4(p, &lo));
					if (lo < 0xDC00 || lo > 0xDFFF)
						return syntax(p, "bad low surrogate");
					cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
				} else if (cp >= 0xDC00 && cp < 0xE000) {
					return syntax(p, "unpaired surrogate");
				}
				/* A \u escape is 6 raw bytes, its UTF-8 at most 4 (12 -> 4 for pairs). */
				n += put_utf8(o + n, cp);
				break;
			}
			default: return syntax(p, "bad escape");
			}
		}
	}
	o[n] = 0;
	p->pos = end + 1;
	*out = o;
	*out_len = n;
	return 0;
}

static int parse_number(parser *p, tern_json *v)
{
	const size_t start = p->pos;
	int is_int = 1;
	if (p->pos < p->len && p->s[p->pos] == '-')
		p->pos++;
	if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9')
		return syntax(p, "bad number");
	if (p->s[p->pos] == '0')
		p->pos++;
	else
		while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
			p->pos++;
	if (p->pos < p->len && p->s[p->pos] == '.') {
		is_int = 0;
		p->pos++;
		if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9')
			return syntax(p, "bad fraction");
		while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
			p->pos++;
	}
	if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
		is_int = 0;
		p->pos++;
		if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-'))
			p->pos++;
		if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9')
			return syntax(p, "bad exponent");
		while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
			p->pos++;
	}
	/* strtod needs a NUL-terminated copy; numbers are short. */
	char buf[64];
	const size_t n = p->pos - start;
	if (n >= sizeof buf)
		return syntax(p, "number too long");
	memcpy(buf, p->s + start, n);
	buf[n] = 0;
	v->type = TERN_JSON_NUMBER;
	v->number = strtod(buf, NULL);
	if (is_int) {
		errno = 0;
		const long long ll = strtoll(buf, NULL, 10);
		if (errno == 0) {
			v->is_int = 1;
			v->integer = ll;
		}
	}
	return 0;
}

static int push(parser *p, tern_json *c)
{
	if (p->sp == p->scap) {
		const size_t cap = p->scap ? 2 * p->scap : 256;
		tern_json **s = realloc(p->stack, cap * sizeof *s);
		if (!s)
			return PFAIL(TERN_ENOMEM, "%s: out of memory", p->what);
		p->stack = s;
		p->scap = cap;
	}
	p->stack[p->sp++] = c;
	return 0;
}

static int literal(parser *p, const char *word)
{
	const size_t n = strlen(word);
	if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0)
		return syntax(p, "unexpected character");
	p->pos += n;
	return 0;
}

static int parse_value(parser *p, tern_json **out, int depth);

static int close_container(parser *p, tern_json *v, size_t base)
{
	v->len = p->sp - base;
	if (v->len) {
		v->items = arena_alloc(p->doc, v->len * sizeof *v->items);
		if (!v->items)
			return PFAIL(TERN_ENOMEM, "%s: out of memory", p->what);
		memcpy(v->items, p->stack + base, v->len * sizeof *v->items);
	}
	p->sp = base;
	return 0;
}

static int parse_value(parser *p, tern_json **out, int depth)
{
	if (depth > MAX_DEPTH)
		return PFAIL(TERN_ERANGE, "%s: JSON nested deeper than %d at byte %zu", p->what, MAX_DEPTH, p->pos);
	skip_ws(p);
	if (p->pos >= p->len)
		return syntax(p, "unexpected end of input");
	tern_json *v = arena_alloc(p->doc, sizeof *v);
	if (!v)
		return PFAIL(TERN_ENOMEM, "%s: out of memory", p->what);
	memset(v, 0, sizeof *v);
	*out = v;
	const char c = p->s[p->pos];
	if (c == '{') {
		v->type = TERN_JSON_OBJECT;
		p->pos++;
		const size_t base = p->sp;
		skip_ws(p);
		if (p->pos < p->len && p->s[p->pos] == '}') {
			p->pos++;
			return close_container(p, v, base);
		}
		for (;;) {
			skip_ws(p);
			if (p->pos >= p->len || p->s[p->pos] != '"')
				return syntax(p, "expected a member name");
			const char *key;
			size_t klen;
			TERN_FORWARD_IF_ERROR(parse_string(p, &key, &klen));
			skip_ws(p);
			if (p->pos >= p->len || p->s[p->pos] != ':')
				return syntax(p, "expected ':'");
			p->pos++;
			tern_json *m;
			TERN_FORWARD_IF_ERROR(parse_value(p, &m, depth + 1));
			m->key = key;
			m->key_len = klen;
			TERN_FORWARD_IF_ERROR(push(p, m));
			skip_ws(p);
			if (p->pos < p->len && p->s[p->pos] == ',') {
				p->pos++;
				continue;
			}
			if (p->pos < p->len && p->s[p->pos] == '}') {
				p->pos++;
				return close_container(p, v, base);
			}
			return syntax(p, "expected ',' or '}'");
		}
	}
	if (c == '[') {
		v->type = TERN_JSON_ARRAY;
		p->pos++;
		const size_t base = p->sp;
		skip_ws(p);
		if (p->pos < p->len && p->s[p->pos] == ']') {
			p->pos++;
			return close_container(p, v, base);
		}
		for (;;) {
			tern_json *e;
			TERN_FORWARD_IF_ERROR(parse_value(p, &e, depth + 1));
			TERN_FORWARD_IF_ERROR(push(p, e));
			skip_ws(p);
			if (p->pos < p->len && p->s[p->pos] == ',') {
				p->pos++;
				continue;
			}
			if (p->pos < p->len && p->s[p->pos] == ']') {
				p->pos++;
				return close_container(p, v, base);
			}
			return syntax(p, "expected ',' or ']'");
		}
	}
	if (c == '"') {
		v->type = TERN_JSON_STRING;
		return parse_string(p, &v->str, &v->len);
	}
	if (c == 't') {
		v->type = TERN_JSON_BOOL;
		v->boolean = 1;
		return literal(p, "true");
	}
	if (c == 'f') {
		v->type = TERN_JSON_BOOL;
		return literal(p, "false");
	}
	if (c == 'n') {
		v->type = TERN_JSON_NULL;
		return literal(p, "null");
	}
	return parse_number(p, v);
}

void tern_json_free(tern_json_doc *doc)
{
	if (!doc)
		return;
	for (block *b = doc->blocks; b;) {
		block *n = b->next;
		free(b);
		b = n;
	}
	free(doc);
}

int tern_json_parse(tern_json_doc **out, const char *buf, size_t len, const char *what, tern_err *err)
{
	*out = NULL;
	tern_json_doc *doc = calloc(1, sizeof *doc);
	TERN_RETURN_IF(!doc, err, TERN_ENOMEM, "%s: out of memory", what);
	parser pp = {buf ? buf : "", buf ? len : 0, 0, what, err, doc, NULL, 0, 0}, *p = &pp;
	int rc = parse_value(p, &doc->root, 0);
	if (rc == 0) {
		skip_ws(p);
		if (p->pos != p->len)
			rc = syntax(p, "trailing characters after the JSON value");
	}
	free(p->stack);
	if (rc < 0) {
		tern_json_free(doc);
		return rc;
	}
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
	return doc ? doc->root : NULL;
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
