/* parse.c: numbers from command lines (see tern-base.h): one strict parser
 * with a range check and a one-line error, for every CLI's options. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern-base.h"

#define BAD(kind, ...)                                                                                          \
	TERN_ERR(err, TERN_EINVAL, "bad value '%.64s'%s%s: expected " kind, s ? s : "", what ? " for " : "",        \
		 what ? what : "", __VA_ARGS__)

/* s starts like a number of the given form: no space, no empty string. */
static int starts_ok(const char *s, int allow_sign)
{
	if (!s || !*s)
		return 0;
	if (allow_sign && (*s == '-' || *s == '+'))
		s++;
	return isdigit((unsigned char)*s) || *s == '.';
}

int tern_parse_int64(const char *s, int64_t lo, int64_t hi, const char *what, int64_t *out, tern_err *err)
{
	char *end = NULL;
	errno = 0;
	const long long v = starts_ok(s, 1) ? strtoll(s, &end, 10) : 0;
	if (!end || end == s || *end || errno || v < lo || v > hi)
		return BAD("an integer in [%" PRId64 ", %" PRId64 "]", lo, hi);
	*out = (int64_t)v;
	return 0;
}

int tern_parse_int(const char *s, int lo, int hi, const char *what, int *out, tern_err *err)
{
	int64_t v = 0;
	TERN_FORWARD_IF_ERROR(tern_parse_int64(s, lo, hi, what, &v, err));
	*out = (int)v;
	return 0;
}

int tern_parse_uint64(const char *s, const char *what, uint64_t *out, tern_err *err)
{
	char *end = NULL;
	errno = 0;
	const int hex = s && s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
	const unsigned long long v =
		starts_ok(s, 0) && (!hex || isxdigit((unsigned char)s[2])) ? strtoull(s, &end, hex ? 16 : 10) : 0;
	if (!end || end == s || *end || errno)
		return BAD("an unsigned 64-bit integer%s", "");
	*out = (uint64_t)v;
	return 0;
}

int tern_parse_double(const char *s, double lo, double hi, const char *what, double *out, tern_err *err)
{
	char *end = NULL;
	errno = 0;
	const int hex = s && strchr(s, 'x') != NULL; /* no hex floats */
	const double v = starts_ok(s, 1) && !hex ? strtod(s, &end) : 0;
	if (!end || end == s || *end || errno == ERANGE || !isfinite(v) || !(v >= lo && v <= hi))
		return BAD("a number in [%g, %g]", lo, hi);
	*out = v;
	return 0;
}

int tern_parse_float(const char *s, float lo, float hi, const char *what, float *out, tern_err *err)
{
	double v = 0;
	TERN_FORWARD_IF_ERROR(tern_parse_double(s, lo, hi, what, &v, err));
	*out = (float)v;
	return 0;
}

int tern_parse_size(const char *s, uint64_t lo, uint64_t hi, const char *what, uint64_t *out, tern_err *err)
{
	static const struct {
		const char *suffix;
		int shift;
	} units[] = {{"", 0},	  {"B", 0},  {"K", 10},	 {"KiB", 10}, {"M", 20},
		     {"MiB", 20}, {"G", 30}, {"GiB", 30}, {"T", 40},   {"TiB", 40}};
	char *end = NULL;
	errno = 0;
	const unsigned long long v = starts_ok(s, 0) && *s != '.' ? strtoull(s, &end, 10) : 0;
	int shift = -1;
	for (size_t i = 0; end && end != s && !errno && shift < 0 && i < sizeof units / sizeof units[0]; i++)
		if (!strcmp(end, units[i].suffix))
			shift = units[i].shift;
	if (shift < 0 || v > (UINT64_MAX >> shift) || (v << shift) < lo || (v << shift) > hi)
		return BAD("a size (bytes, or with K/M/G/T[iB]) in [%" PRIu64 ", %" PRIu64 "] bytes", lo, hi);
	*out = (uint64_t)v << shift;
	return 0;
}

int tern_opt_fail(const char *prog, int c, char *const *argv)
{
	/* An unknown long option leaves optopt 0 and is argv[optind - 1]; a
	 * long option missing its value is argv[optind - 1] too; a short one
	 * is optopt. */
	const char *word = optind > 0 ? argv[optind - 1] : NULL;
	char shortopt[3] = {'-', (char)optopt, 0};
	const char *opt = shortopt;
	if (word && ((c == '?' && optopt == 0) || (c == ':' && !strncmp(word, "--", 2))))
		opt = word;
	if (c == ':')
		fprintf(stderr, "%s: option '%s' needs a value\n", prog, opt);
	else
		fprintf(stderr, "%s: unknown option '%s'\n", prog, opt);
	fprintf(stderr, "%s: see %s --help\n", prog, prog);
	return 2;
}

int tern_opt_bad(const char *prog, const char *msg)
{
	fprintf(stderr, "%s: %s\n%s: see %s --help\n", prog, msg, prog, prog);
	return 2;
}

int tern_split_host_port(const char *addr, char *host, size_t host_cap, char *port, size_t port_cap)
{
	const char *colon = strrchr(addr, ':');
	if (!colon || !colon[1] || strlen(colon + 1) >= port_cap)
		return -1;
	const char *h = addr;
	size_t hn = (size_t)(colon - addr);
	if (hn >= 2 && h[0] == '[' && h[hn - 1] == ']') {
		h++;
		hn -= 2;
	}
	if (hn >= host_cap)
		return -1;
	memcpy(host, h, hn);
	host[hn] = '\0';
	memcpy(port, colon + 1, strlen(colon + 1) + 1);
	return 0;
}
