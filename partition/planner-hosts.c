/* planner-hosts.c: the cluster description (tern-plan.h): building it by
 * hand or from N equal domains, and reading the hosts file (YAML, the subset
 * documented in tern-plan.h). libyaml parses; its events build a tiny tree
 * (maps, lists, scalars, each with its line), refusing anchors, aliases,
 * tags, block strings and flow lists, and then the hosts are read out of the
 * tree, so every error can name its line. */
#include "tern-plan.h"

#include <yaml.h>

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

/* ---- YAML (libyaml events) -> tree -------------------------------------- */

enum { N_SCALAR, N_MAP, N_LIST };

typedef struct {
	int type;
	int line;
	char *key; /* entry of a map: its key (NULL otherwise), owned */
	int key_line;
	char *text;  /* scalar value, owned */
	int child;   /* first child (map entry / list item), -1 none */
	int next;    /* next sibling, -1 none */
	int last;    /* last child, for appending */
	int n_child;
} ynode;

/* A valid file nests five deep (top map, hosts, host, domains, domain) and
 * no map has more than four keys; the caps keep hostile input cheap (the
 * duplicate-key check is quadratic in a map's size). */
#define MAX_DEPTH 16
#define MAX_MAP_KEYS 64

typedef struct {
	const char *fname;
	tern_err *err;
	const char *text;
	size_t len;
	ynode *nodes;
	int n_nodes, cap_nodes;
	int stack[MAX_DEPTH]; /* open maps and lists, innermost last */
	int depth;
	char *key; /* key read in the innermost map, waiting for its value */
	int key_line;
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
	p->nodes[parent].n_child++;
}

/* libyaml's error as one "FILE:LINE: ..." line, in the words the old hand
 * parser used for the mistakes people make (tabs, unclosed quotes and flow
 * maps, indentation). */
static int syntax_error(yparser *p, const yaml_parser_t *y)
{
	if (y->error == YAML_MEMORY_ERROR)
		return TERN_ERR(p->err, TERN_ENOMEM, "out of memory");
	const char *problem = y->problem ? y->problem : "syntax error";
	if (y->error == YAML_READER_ERROR) {
		int line = 1;
		for (size_t i = 0; i < y->problem_offset && i < p->len; i++)
			line += p->text[i] == '\n';
		return YERR(p, line, "%s", problem);
	}
	const int line = (int)y->problem_mark.line + 1, cline = (int)y->context_mark.line + 1;
	const char *context = y->context ? y->context : "";
	if (y->problem_mark.index < p->len && p->text[y->problem_mark.index] == '\t')
		return YERR(p, line, "tab in indentation (use spaces)");
	if (strcmp(context, "while scanning a quoted scalar") == 0 && strstr(problem, "end of stream"))
		return YERR(p, cline, "unterminated quoted string");
	if (strcmp(context, "while parsing a flow mapping") == 0)
		return YERR(p, cline, "unterminated flow map: %s", problem);
	if (strstr(problem, "mapping values are not allowed"))
		return YERR(p, line, "bad indentation, or ': ' in an unquoted value (%s)", problem);
	if (strstr(context, "while parsing a block"))
		return YERR(p, line, "bad indentation (%s)", problem);
	if (*context)
		return YERR(p, line, "%s (%s from line %d)", problem, context, cline);
	return YERR(p, line, "%s", problem);
}

static int valid_key(const char *k)
{
	for (; *k; k++)
		if (!isalnum((unsigned char)*k) && *k != '_' && *k != '-')
			return 0;
	return 1;
}

/* A scalar, map or list starts: it is the key of the innermost map, or a
 * value to hang below it (under the waiting key) or below the innermost list. */
static int on_node(yparser *p, const yaml_event_t *ev)
{
	const int line = (int)ev->start_mark.line + 1;
	const char *anchor = NULL, *tag = NULL;
	int type = N_SCALAR;
	if (ev->type == YAML_ALIAS_EVENT)
		return YERR(p, line, "unsupported YAML feature: alias '*%s' (anchors and aliases are refused)",
			    (const char *)ev->data.alias.anchor);
	if (ev->type == YAML_SCALAR_EVENT) {
		anchor = (const char *)ev->data.scalar.anchor;
		tag = (const char *)ev->data.scalar.tag;
		if (ev->data.scalar.style == YAML_LITERAL_SCALAR_STYLE ||
		    ev->data.scalar.style == YAML_FOLDED_SCALAR_STYLE)
			return YERR(p, line, "unsupported YAML feature: block string ('|' or '>')");
	} else if (ev->type == YAML_SEQUENCE_START_EVENT) {
		anchor = (const char *)ev->data.sequence_start.anchor;
		tag = (const char *)ev->data.sequence_start.tag;
		type = N_LIST;
		if (ev->data.sequence_start.style == YAML_FLOW_SEQUENCE_STYLE)
			return YERR(p, line, "unsupported YAML feature: flow list '[...]' (use '- ' items)");
	} else {
		anchor = (const char *)ev->data.mapping_start.anchor;
		tag = (const char *)ev->data.mapping_start.tag;
		type = N_MAP;
	}
	if (anchor)
		return YERR(p, line, "unsupported YAML feature: anchor '&%s' (anchors and aliases are refused)",
			    anchor);
	if (tag)
		return YERR(p, line, "unsupported YAML feature: tag '%s'", tag);
	const int parent = p->depth ? p->stack[p->depth - 1] : -1;

	if (parent >= 0 && p->nodes[parent].type == N_MAP && !p->key) {
		if (type != N_SCALAR)
			return YERR(p, line, "expected 'key: value' (a key must be a plain word)");
		const char *k = (const char *)ev->data.scalar.value;
		if (strlen(k) != ev->data.scalar.length || !*k || !valid_key(k))
			return YERR(p, line, "bad key '%s'", k);
		if (p->nodes[parent].n_child >= MAX_MAP_KEYS)
			return YERR(p, line, "more than %d keys in one map", MAX_MAP_KEYS);
		for (int c = p->nodes[parent].child; c >= 0; c = p->nodes[c].next)
			if (strcmp(p->nodes[c].key, k) == 0)
				return YERR(p, line, "duplicate key '%s'", k);
		p->key = strdup(k);
		p->key_line = line;
		return p->key ? 0 : TERN_ERR(p->err, TERN_ENOMEM, "out of memory");
	}

	const int val_line = p->key ? p->key_line : line;
	if (type == N_SCALAR) {
		if (strlen((const char *)ev->data.scalar.value) != ev->data.scalar.length)
			return YERR(p, line, "NUL character in a string");
		/* an empty document, or "key:" / "- " with nothing after it */
		if (!ev->data.scalar.length && ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
			return parent < 0 ? 0 : YERR(p, val_line, "missing value");
	}
	if (type != N_SCALAR && p->depth == MAX_DEPTH)
		return YERR(p, line, "nested deeper than %d levels", MAX_DEPTH);
	const int n = new_node(p, type, line);
	if (n < 0)
		return n;
	if (type == N_SCALAR) {
		p->nodes[n].text = strdup((const char *)ev->data.scalar.value);
		if (!p->nodes[n].text)
			return TERN_ERR(p->err, TERN_ENOMEM, "out of memory");
	}
	if (parent >= 0) {
		p->nodes[n].key = p->key;
		p->nodes[n].key_line = p->key_line;
		p->key = NULL;
		append_child(p, parent, n);
	}
	if (type != N_SCALAR)
		p->stack[p->depth++] = n;
	return 0;
}

/* Reads one YAML document into p->nodes (node 0 is the root). Returns 1 if
 * the stream holds no document or an empty one. */
static int read_tree(yparser *p, yaml_parser_t *y)
{
	int docs = 0, rc = 0;
	for (;;) {
		yaml_event_t ev;
		if (!yaml_parser_parse(y, &ev))
			return syntax_error(p, y);
		const int line = (int)ev.start_mark.line + 1;
		switch (ev.type) {
		case YAML_DOCUMENT_START_EVENT:
			if (docs++)
				rc = YERR(p, line, "more than one YAML document");
			break;
		case YAML_SCALAR_EVENT:
		case YAML_ALIAS_EVENT:
		case YAML_SEQUENCE_START_EVENT:
		case YAML_MAPPING_START_EVENT: rc = on_node(p, &ev); break;
		case YAML_SEQUENCE_END_EVENT:
		case YAML_MAPPING_END_EVENT: p->depth--; break;
		default: break;
		}
		const int end = ev.type == YAML_STREAM_END_EVENT;
		yaml_event_delete(&ev);
		if (rc < 0)
			return rc;
		if (end)
			return p->n_nodes ? 0 : 1;
	}
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
	yparser p = {.fname = fname ? fname : "hosts", .err = err, .text = text, .len = len};
	TERN_RETURN_IF(len > HOSTS_FILE_MAX, err, TERN_ERANGE, "%s: hosts file larger than %u bytes", p.fname,
		       HOSTS_FILE_MAX);
	TERN_RETURN_IF(memchr(text, 0, len), err, TERN_EFORMAT, "%s: binary data in a hosts file", p.fname);
	yaml_parser_t y;
	TERN_RETURN_IF(!yaml_parser_initialize(&y), err, TERN_ENOMEM, "out of memory");
	yaml_parser_set_input_string(&y, (const unsigned char *)text, len);
	yaml_parser_set_encoding(&y, YAML_UTF8_ENCODING);
	int rc = read_tree(&p, &y);
	if (rc == 1)
		rc = TERN_ERR(err, TERN_EFORMAT, "%s: empty hosts file", p.fname);
	if (rc == 0)
		rc = build_cluster(&p, 0, c);
	yaml_parser_delete(&y);
	for (int i = 0; i < p.n_nodes; i++) {
		free(p.nodes[i].key);
		free(p.nodes[i].text);
	}
	free(p.nodes);
	free(p.key);
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
