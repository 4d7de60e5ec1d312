/* planner-hosts.c: the cluster description (tern-plan.h): building it by
 * hand or from N equal domains, and parsing the hosts file, a small YAML
 * subset documented in tern-plan.h. The parser first builds a tiny tree
 * (maps, lists, scalars, each with its line) from indentation, then reads
 * the hosts out of it, so every error can name its line. */
#include "tern-plan.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HOSTS_FILE_MAX (1u << 20)
#define MAX_HOSTS 4096
#define MAX_DOMAINS 65536

void tern_cluster_free(tern_cluster *c)
{
	if (!c)
		return;
	free(c->hosts);
	free(c->domains);
	memset(c, 0, sizeof *c);
}

static int valid_name(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && *s != '.' && *s != '-' && *s != '_')
			return 0;
	return 1;
}

int tern_cluster_add_host(tern_cluster *c, const char *name, const char *address, tern_err *err)
{
	TERN_RETURN_IF(c->n_hosts >= MAX_HOSTS, err, TERN_ERANGE, "more than %d hosts", MAX_HOSTS);
	TERN_RETURN_IF(!name || strlen(name) >= sizeof c->hosts[0].name || !valid_name(name), err, TERN_EINVAL,
		       "bad host name '%s' (letters, digits, '.', '-', '_', under 64 characters)", name ? name : "");
	TERN_RETURN_IF(address && strlen(address) >= sizeof c->hosts[0].address, err, TERN_EINVAL,
		       "host address too long for host '%s'", name);
	for (int i = 0; i < c->n_hosts; i++)
		TERN_RETURN_IF(strcmp(c->hosts[i].name, name) == 0, err, TERN_EINVAL, "host '%s' listed twice", name);
	tern_cluster_host *h = realloc(c->hosts, sizeof *h * (size_t)(c->n_hosts + 1));
	TERN_RETURN_IF(!h, err, TERN_ENOMEM, "out of memory");
	c->hosts = h;
	tern_cluster_host *n = &h[c->n_hosts];
	memset(n, 0, sizeof *n);
	snprintf(n->name, sizeof n->name, "%s", name);
	snprintf(n->address, sizeof n->address, "%s", address && *address ? address : name);
	return c->n_hosts++;
}

int tern_cluster_add_domain(tern_cluster *c, int host, int numa, uint64_t mem_bytes, int cores, tern_err *err)
{
	TERN_RETURN_IF(host < 0 || host >= c->n_hosts, err, TERN_EINVAL, "domain of unknown host %d", host);
	TERN_RETURN_IF(c->n_domains >= MAX_DOMAINS, err, TERN_ERANGE, "more than %d NUMA domains", MAX_DOMAINS);
	TERN_RETURN_IF(numa < 0 || numa > 65535, err, TERN_EINVAL, "bad NUMA domain %d on host %s", numa,
		       c->hosts[host].name);
	TERN_RETURN_IF(mem_bytes == 0, err, TERN_EINVAL, "NUMA domain %d of host %s has no memory", numa,
		       c->hosts[host].name);
	TERN_RETURN_IF(cores < 1, err, TERN_EINVAL, "NUMA domain %d of host %s has no cores", numa,
		       c->hosts[host].name);
	for (int i = 0; i < c->n_domains; i++)
		TERN_RETURN_IF(c->domains[i].host == host && c->domains[i].numa == numa, err, TERN_EINVAL,
			       "NUMA domain %d of host %s listed twice", numa, c->hosts[host].name);
	tern_cluster_domain *d = realloc(c->domains, sizeof *d * (size_t)(c->n_domains + 1));
	TERN_RETURN_IF(!d, err, TERN_ENOMEM, "out of memory");
	c->domains = d;
	d[c->n_domains] = (tern_cluster_domain){.host = host, .numa = numa, .mem_bytes = mem_bytes, .cores = cores};
	return c->n_domains++;
}

int tern_cluster_uniform(tern_cluster *c, const char *host, int n, uint64_t mem_total, int cores_total, tern_err *err)
{
	memset(c, 0, sizeof *c);
	TERN_RETURN_IF(n < 1 || n > 4096, err, TERN_EINVAL, "bad stage count %d", n);
	int rc = tern_cluster_add_host(c, host, NULL, err);
	for (int i = 0; rc >= 0 && i < n; i++) {
		const int cores = cores_total / n > 0 ? cores_total / n : 1;
		rc = tern_cluster_add_domain(c, 0, i, mem_total / (uint64_t)n, cores, err);
	}
	if (rc < 0) {
		tern_cluster_free(c);
		return rc;
	}
	return 0;
}

/* ---- YAML subset: lines -> tree ---------------------------------------- */

enum { N_SCALAR, N_MAP, N_LIST };

typedef struct {
	int type;
	int line;
	char *key;   /* entry of a map: its key (NULL otherwise) */
	int key_line;
	char *text;  /* scalar value */
	int child;   /* first child (map entry / list item), -1 none */
	int next;    /* next sibling, -1 none */
	int last;    /* last child, for appending */
} ynode;

typedef struct {
	int line;
	int indent;
	char *s; /* content after the indentation, comment stripped, trailing space trimmed */
} yline;

typedef struct {
	const char *fname;
	tern_err *err;
	yline *lines;
	int n_lines, pos;
	ynode *nodes;
	int n_nodes, cap_nodes;
} yparser;

#define YERR(p, ln, ...) yerr((p), (ln), __VA_ARGS__)

__attribute__((format(printf, 3, 4))) static int yerr(yparser *p, int line, const char *fmt, ...)
{
	char msg[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	return TERN_ERR(p->err, TERN_EFORMAT, "%s:%d: %s", p->fname, line, msg);
}

static int new_node(yparser *p, int type, int line)
{
	if (p->n_nodes == p->cap_nodes) {
		const int cap = p->cap_nodes ? p->cap_nodes * 2 : 64;
		ynode *n = realloc(p->nodes, sizeof *n * (size_t)cap);
		if (!n)
			return TERN_ERR(p->err, TERN_ENOMEM, "out of memory");
		p->nodes = n;
		p->cap_nodes = cap;
	}
	p->nodes[p->n_nodes] = (ynode){.type = type, .line = line, .child = -1, .next = -1, .last = -1};
	return p->n_nodes++;
}

static void append_child(yparser *p, int parent, int child)
{
	if (p->nodes[parent].last < 0)
		p->nodes[parent].child = child;
	else
		p->nodes[p->nodes[parent].last].next = child;
	p->nodes[parent].last = child;
}

static char *trim(char *s)
{
	while (*s == ' ')
		s++;
	size_t n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\r'))
		s[--n] = 0;
	return s;
}

/* Unquotes a scalar in place. */
static int scalar(yparser *p, int line, char *s, char **out)
{
	s = trim(s);
	const size_t n = strlen(s);
	if (n && (s[0] == '"' || s[0] == '\'')) {
		if (n < 2 || s[n - 1] != s[0])
			return YERR(p, line, "unterminated quoted string");
		s[n - 1] = 0;
		s++;
		if (strchr(s, '\\'))
			return YERR(p, line, "escape sequences in strings are not supported");
	} else if (n && strchr("&*!|>[%@`", s[0])) {
		return YERR(p, line, "unsupported YAML feature '%c' (anchors, tags, block strings, flow lists)", s[0]);
	}
	*out = s;
	return 0;
}

/* Splits "key: value" (value may be empty); key must be a plain word. */
static int split_key(yparser *p, int line, char *s, char **key, char **val)
{
	char *colon = strstr(s, ": ");
	if (!colon) {
		const size_t n = strlen(s);
		if (n && s[n - 1] == ':')
			colon = s + n - 1;
	}
	if (!colon || colon == s)
		return YERR(p, line, "expected 'key: value'");
	*colon = 0;
	*key = trim(s);
	*val = trim(colon + 1);
	for (const char *k = *key; *k; k++)
		if (!isalnum((unsigned char)*k) && *k != '_' && *k != '-')
			return YERR(p, line, "bad key '%s'", *key);
	return 0;
}

/* "{a: 1, b: 2}" on one line. */
static int flow_map(yparser *p, int line, char *s)
{
	const size_t n = strlen(s);
	if (n < 2 || s[n - 1] != '}')
		return YERR(p, line, "unterminated flow map (must close on the same line)");
	s[n - 1] = 0;
	const int map = new_node(p, N_MAP, line);
	if (map < 0)
		return map;
	char *item = s + 1;
	while (*trim(item)) {
		char *comma = strchr(item, ',');
		if (comma)
			*comma = 0;
		char *k, *v;
		TERN_FORWARD_IF_ERROR(split_key(p, line, item, &k, &v));
		if (!*v || *v == '{')
			return YERR(p, line, "flow map value of '%s' must be a plain scalar", k);
		const int e = new_node(p, N_SCALAR, line);
		if (e < 0)
			return e;
		p->nodes[e].key = k;
		p->nodes[e].key_line = line;
		TERN_FORWARD_IF_ERROR(scalar(p, line, v, &p->nodes[e].text));
		append_child(p, map, e);
		if (!comma)
			break;
		item = comma + 1;
	}
	return map;
}

static int parse_block(yparser *p, int indent);

/* The value after "key:" or "- ": inline scalar / flow map, or a nested block. */
static int parse_value(yparser *p, int line, char *v, int parent_indent, int allow_same_indent_list)
{
	if (*v == '{')
		return flow_map(p, line, v);
	if (*v) {
		const int n = new_node(p, N_SCALAR, line);
		if (n < 0)
			return n;
		TERN_FORWARD_IF_ERROR(scalar(p, line, v, &p->nodes[n].text));
		return n;
	}
	if (p->pos < p->n_lines) {
		const yline *nx = &p->lines[p->pos];
		if (nx->indent > parent_indent ||
		    (allow_same_indent_list && nx->indent == parent_indent && nx->s[0] == '-' &&
		     (nx->s[1] == ' ' || nx->s[1] == 0)))
			return parse_block(p, nx->indent);
	}
	return YERR(p, line, "missing value");
}

static int is_item(const yline *l)
{
	return l->s[0] == '-' && (l->s[1] == ' ' || l->s[1] == 0);
}

static int parse_block(yparser *p, int indent)
{
	yline *first = &p->lines[p->pos];
	if (is_item(first)) {
		const int list = new_node(p, N_LIST, first->line);
		if (list < 0)
			return list;
		while (p->pos < p->n_lines && p->lines[p->pos].indent == indent && is_item(&p->lines[p->pos])) {
			yline *l = &p->lines[p->pos];
			char *rest = l->s + 1;
			int extra = 1;
			while (*rest == ' ') {
				rest++;
				extra++;
			}
			int item;
			if (!*rest) {
				p->pos++;
				item = parse_value(p, l->line, rest, indent, 0);
			} else if (*rest == '{' || (!strstr(rest, ": ") && rest[strlen(rest) - 1] != ':')) {
				p->pos++;
				item = parse_value(p, l->line, rest, indent, 0);
			} else {
				/* "- key: value": the rest is the first line of a map at indent+extra */
				l->indent = indent + extra;
				l->s = rest;
				item = parse_block(p, l->indent);
			}
			if (item < 0)
				return item;
			append_child(p, list, item);
		}
		if (p->pos < p->n_lines && p->lines[p->pos].indent > indent)
			return YERR(p, p->lines[p->pos].line, "bad indentation");
		return list;
	}
	const int map = new_node(p, N_MAP, first->line);
	if (map < 0)
		return map;
	while (p->pos < p->n_lines && p->lines[p->pos].indent == indent && !is_item(&p->lines[p->pos])) {
		yline *l = &p->lines[p->pos++];
		char *k, *v;
		TERN_FORWARD_IF_ERROR(split_key(p, l->line, l->s, &k, &v));
		for (int c = p->nodes[map].child; c >= 0; c = p->nodes[c].next)
			if (strcmp(p->nodes[c].key, k) == 0)
				return YERR(p, l->line, "duplicate key '%s'", k);
		const int val = parse_value(p, l->line, v, indent, 1);
		if (val < 0)
			return val;
		p->nodes[val].key = k;
		p->nodes[val].key_line = l->line;
		append_child(p, map, val);
	}
	if (p->pos < p->n_lines && p->lines[p->pos].indent > indent)
		return YERR(p, p->lines[p->pos].line, "bad indentation");
	return map;
}

/* ---- tree -> cluster ------------------------------------------------------ */

static int parse_u64(yparser *p, const ynode *n, const char *what, uint64_t max, uint64_t *out)
{
	if (n->type != N_SCALAR)
		return YERR(p, n->line, "%s must be a number", what);
	const char *s = n->text;
	if (!isdigit((unsigned char)*s))
		return YERR(p, n->line, "%s: '%s' is not a number", what, s);
	errno = 0;
	char *end;
	const unsigned long long v = strtoull(s, &end, 10);
	if (errno)
		return YERR(p, n->line, "%s: '%s' out of range", what, s);
	*out = v;
	return (int)(end - s);
}

static int parse_mem(yparser *p, const ynode *n, uint64_t *out)
{
	uint64_t v;
	const int used = parse_u64(p, n, "memory", UINT64_MAX, &v);
	if (used < 0)
		return used;
	const char *u = n->text + used;
	while (*u == ' ')
		u++;
	static const struct {
		const char *s;
		uint64_t mul;
	} units[] = {{"", 1},
		     {"B", 1},
		     {"K", 1ull << 10},
		     {"KiB", 1ull << 10},
		     {"M", 1ull << 20},
		     {"MiB", 1ull << 20},
		     {"G", 1ull << 30},
		     {"GiB", 1ull << 30},
		     {"T", 1ull << 40},
		     {"TiB", 1ull << 40},
		     {"KB", 1000ull},
		     {"MB", 1000000ull},
		     {"GB", 1000000000ull},
		     {"TB", 1000000000000ull}};
	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
		if (strcmp(u, units[i].s) == 0) {
			if (v > (UINT64_MAX >> 1) / units[i].mul)
				return YERR(p, n->line, "memory '%s' out of range", n->text);
			*out = v * units[i].mul;
			if (!*out)
				return YERR(p, n->line, "memory must be above zero");
			return 0;
		}
	return YERR(p, n->line, "memory '%s': unknown unit (use K, M, G, T, KiB.., KB..)", n->text);
}

static int parse_int(yparser *p, const ynode *n, const char *what, int lo, int hi, int *out)
{
	uint64_t v;
	const int used = parse_u64(p, n, what, (uint64_t)hi, &v);
	if (used < 0)
		return used;
	if (n->text[used] || v < (uint64_t)lo || v > (uint64_t)hi)
		return YERR(p, n->line, "%s must be an integer in [%d, %d], not '%s'", what, lo, hi, n->text);
	*out = (int)v;
	return 0;
}

static const ynode *get(yparser *p, const ynode *map, const char *key)
{
	for (int c = map->child; c >= 0; c = p->nodes[c].next)
		if (strcmp(p->nodes[c].key, key) == 0)
			return &p->nodes[c];
	return NULL;
}

static int check_keys(yparser *p, const ynode *map, const char *const *allowed)
{
	for (int c = map->child; c >= 0; c = p->nodes[c].next) {
		int ok = 0;
		for (const char *const *a = allowed; *a; a++)
			ok |= strcmp(*a, p->nodes[c].key) == 0;
		if (!ok)
			return YERR(p, p->nodes[c].key_line, "unknown key '%s'", p->nodes[c].key);
	}
	return 0;
}

static int build_cluster(yparser *p, int root, tern_cluster *c)
{
	static const char *const top_keys[] = {"hosts", NULL};
	static const char *const host_keys[] = {"name", "address", "coordinator", "domains", NULL};
	static const char *const dom_keys[] = {"numa", "memory", "cores", NULL};
	const ynode *r = &p->nodes[root];
	if (r->type != N_MAP)
		return YERR(p, r->line, "expected 'hosts:' at the top level");
	TERN_FORWARD_IF_ERROR(check_keys(p, r, top_keys));
	const ynode *hosts = get(p, r, "hosts");
	if (!hosts)
		return YERR(p, r->line, "missing 'hosts:'");
	if (hosts->type != N_LIST || hosts->child < 0)
		return YERR(p, hosts->key_line, "'hosts' must be a non-empty list");
	int coord_host = -1, coord_line = 0;
	for (int hi = hosts->child; hi >= 0; hi = p->nodes[hi].next) {
		const ynode *h = &p->nodes[hi];
		if (h->type != N_MAP)
			return YERR(p, h->line, "a host must be a map with name and domains");
		TERN_FORWARD_IF_ERROR(check_keys(p, h, host_keys));
		const ynode *name = get(p, h, "name"), *addr = get(p, h, "address"), *co = get(p, h, "coordinator");
		const ynode *doms = get(p, h, "domains");
		if (!name || name->type != N_SCALAR)
			return YERR(p, h->line, "host without a 'name'");
		if (addr && addr->type != N_SCALAR)
			return YERR(p, addr->line, "'address' must be a string");
		tern_err e2;
		const int host = tern_cluster_add_host(c, name->text, addr ? addr->text : NULL, &e2);
		if (host < 0)
			return YERR(p, name->line, "%s", e2.msg);
		if (co) {
			if (co->type != N_SCALAR || (strcmp(co->text, "true") && strcmp(co->text, "false")))
				return YERR(p, co->line, "'coordinator' must be true or false");
			if (strcmp(co->text, "true") == 0) {
				if (coord_host >= 0)
					return YERR(p, co->line, "coordinator already on the host of line %d", coord_line);
				coord_host = host;
				coord_line = co->line;
			}
		}
		if (!doms)
			return YERR(p, h->line, "host '%s' has no 'domains'", name->text);
		if (doms->type != N_LIST || doms->child < 0)
			return YERR(p, doms->key_line, "'domains' must be a non-empty list");
		int pos = 0;
		for (int di = doms->child; di >= 0; di = p->nodes[di].next, pos++) {
			const ynode *d = &p->nodes[di];
			if (d->type != N_MAP)
				return YERR(p, d->line, "a domain must be a map with memory and cores");
			TERN_FORWARD_IF_ERROR(check_keys(p, d, dom_keys));
			const ynode *numa = get(p, d, "numa"), *mem = get(p, d, "memory"), *cores = get(p, d, "cores");
			int nv = pos, cv = 0;
			uint64_t mv = 0;
			if (numa)
				TERN_FORWARD_IF_ERROR(parse_int(p, numa, "numa", 0, 65535, &nv));
			if (!mem)
				return YERR(p, d->line, "domain without 'memory'");
			TERN_FORWARD_IF_ERROR(parse_mem(p, mem, &mv));
			if (!cores)
				return YERR(p, d->line, "domain without 'cores'");
			TERN_FORWARD_IF_ERROR(parse_int(p, cores, "cores", 1, 1 << 20, &cv));
			const int dn = tern_cluster_add_domain(c, host, nv, mv, cv, &e2);
			if (dn < 0)
				return YERR(p, d->line, "%s", e2.msg);
			c->domains[dn].line = d->line;
			if (host == coord_host && pos == 0)
				c->coord_domain = dn;
		}
	}
	return 0;
}

int tern_cluster_parse_yaml(tern_cluster *c, const char *text, size_t len, const char *fname, tern_err *err)
{
	memset(c, 0, sizeof *c);
	yparser p = {.fname = fname ? fname : "hosts", .err = err};
	TERN_RETURN_IF(len > HOSTS_FILE_MAX, err, TERN_ERANGE, "%s: hosts file larger than %u bytes", p.fname,
		       HOSTS_FILE_MAX);
	char *buf = malloc(len + 1);
	int rc = 0;
	size_t max_lines = 1;
	for (size_t i = 0; i < len; i++)
		max_lines += text[i] == '\n';
	p.lines = malloc(sizeof *p.lines * max_lines);
	if (!buf || !p.lines) {
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
		goto out;
	}
	memcpy(buf, text, len);
	buf[len] = 0;
	if (memchr(text, 0, len)) {
		rc = TERN_ERR(err, TERN_EFORMAT, "%s: binary data in a hosts file", p.fname);
		goto out;
	}
	int ln = 0;
	for (char *s = buf; s; ln++) {
		char *nl = strchr(s, '\n');
		if (nl)
			*nl = 0;
		char *t = s;
		int ind = 0;
		while (*t == ' ') {
			t++;
			ind++;
		}
		if (*t == '\t') {
			rc = YERR(&p, ln + 1, "tab in indentation (use spaces)");
			goto out;
		}
		/* strip a comment: '#' at the start or after a space, outside quotes */
		char q = 0;
		for (char *k = t; *k; k++) {
			if (q) {
				if (*k == q)
					q = 0;
			} else if (*k == '"' || *k == '\'') {
				q = *k;
			} else if (*k == '#' && (k == t || k[-1] == ' ')) {
				*k = 0;
				break;
			}
		}
		t = trim(t);
		if (*t && strcmp(t, "---") != 0)
			p.lines[p.n_lines++] = (yline){.line = ln + 1, .indent = ind, .s = t};
		s = nl ? nl + 1 : NULL;
	}
	if (p.n_lines == 0) {
		rc = TERN_ERR(err, TERN_EFORMAT, "%s: empty hosts file", p.fname);
		goto out;
	}
	if (p.lines[0].indent != 0) {
		rc = YERR(&p, p.lines[0].line, "bad indentation");
		goto out;
	}
	const int root = parse_block(&p, 0);
	if (root < 0) {
		rc = root;
		goto out;
	}
	if (p.pos < p.n_lines) {
		rc = YERR(&p, p.lines[p.pos].line, "unexpected content");
		goto out;
	}
	rc = build_cluster(&p, root, c);
out:
	free(buf);
	free(p.lines);
	free(p.nodes);
	if (rc < 0)
		tern_cluster_free(c);
	return rc < 0 ? rc : 0;
}

int tern_cluster_load_yaml(tern_cluster *c, const char *path, tern_err *err)
{
	memset(c, 0, sizeof *c);
	char *buf;
	size_t n;
	int rc = tern_read_file(path, HOSTS_FILE_MAX, &buf, &n, err);
	if (rc == 0)
		rc = tern_cluster_parse_yaml(c, buf, n, path, err);
	free(buf);
	return rc;
}
