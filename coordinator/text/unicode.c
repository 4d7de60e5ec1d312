/* unicode.c: strict UTF-8, code point classes over the generated range
 * tables, the GPT-2 byte map, and the LLaMA-3 pre-tokenizer. The regex is
 * matched by hand, alternative by alternative, because the pattern is fixed and
 * a regex engine with full Unicode classes is a large dependency; the test in
 * tests/tokenizer/ runs the original pattern through Python's `regex` and
 * compares splits. */
#include "tern-unicode.h"

#include <stdlib.h>

/* Classes of U+0000..U+00FF, filled from the ranges on first use: most text
 * in prompts is ASCII, and a binary search per character would dominate. */
static unsigned char latin1_cls[256];
static int latin1_ready;

static int class_search(uint32_t cp)
{
	unsigned lo = 0, hi = tern_unicode_n_ranges;
	while (lo < hi) {
		const unsigned mid = lo + (hi - lo) / 2;
		if (cp < tern_unicode_ranges[mid].lo)
			hi = mid;
		else if (cp > tern_unicode_ranges[mid].hi)
			lo = mid + 1;
		else
			return (int)tern_unicode_ranges[mid].cls;
	}
	return TERN_UCLS_OTHER;
}

int tern_unicode_class(uint32_t cp)
{
	if (cp < 256) {
		/* Idempotent fill: concurrent first calls write identical values. */
		if (!__atomic_load_n(&latin1_ready, __ATOMIC_ACQUIRE)) {
			for (uint32_t c = 0; c < 256; c++)
				latin1_cls[c] = (unsigned char)class_search(c);
			__atomic_store_n(&latin1_ready, 1, __ATOMIC_RELEASE);
		}
		return latin1_cls[cp];
	}
	return class_search(cp);
}

int tern_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
	const unsigned char b0 = s[0];
	if (b0 < 0x80) {
		*cp = b0;
		return 1;
	}
	int len;
	uint32_t c;
	unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
	if (b0 >= 0xC2 && b0 <= 0xDF) {
		len = 2;
		c = b0 & 0x1F;
	} else if (b0 >= 0xE0 && b0 <= 0xEF) {
		len = 3;
		c = b0 & 0x0F;
		if (b0 == 0xE0)
			lo = 0xA0; /* overlong */
		else if (b0 == 0xED)
			hi = 0x9F; /* surrogates */
	} else if (b0 >= 0xF0 && b0 <= 0xF4) {
		len = 4;
		c = b0 & 0x07;
		if (b0 == 0xF0)
			lo = 0x90; /* overlong */
		else if (b0 == 0xF4)
			hi = 0x8F; /* > U+10FFFF */
	} else {
		return -1;
	}
	for (int i = 1; i < len; i++) {
		if ((size_t)i >= n)
			return 0;
		const unsigned char b = s[i];
		if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))
			return -1;
		c = (c << 6) | (b & 0x3F);
	}
	*cp = c;
	return len;
}

int tern_utf8_encode(uint32_t cp, char *out)
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xC0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp >= 0xD800 && cp <= 0xDFFF)
		return 0;
	if (cp < 0x10000) {
		out[0] = (char)(0xE0 | (cp >> 12));
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		out[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	if (cp <= 0x10FFFF) {
		out[0] = (char)(0xF0 | (cp >> 18));
		out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
		out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
		out[3] = (char)(0x80 | (cp & 0x3F));
		return 4;
	}
	return 0;
}

static int byte_is_printable(unsigned b)
{
	return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

uint32_t tern_unicode_byte_to_cp(unsigned char b)
{
	if (byte_is_printable(b))
		return b;
	/* The non-printable bytes take U+0100.. in increasing byte order. */
	uint32_t k = 0;
	for (unsigned x = 0; x < b; x++)
		k += !byte_is_printable(x);
	return 0x100 + k;
}

int tern_unicode_cp_to_byte(uint32_t cp)
{
	if (cp < 256)
		return byte_is_printable(cp) ? (int)cp : -1;
	if (cp >= 0x100 + 68)
		return -1;
	uint32_t k = cp - 0x100;
	for (unsigned x = 0; x < 256; x++) {
		if (!byte_is_printable(x)) {
			if (k == 0)
				return (int)x;
			k--;
		}
	}
	return -1;
}

/* One character of the input as the matcher sees it. */
typedef struct uchar {
	uint32_t cp;  /* code point; UINT32_MAX for an invalid byte */
	uint32_t cls; /* enum tern_ucls */
	size_t off;   /* byte offset of its first byte */
} uchar;

static int push_span(tern_span **spans, size_t *n_spans, size_t *cap, size_t off, size_t len)
{
	if (*n_spans == *cap) {
		const size_t nc = *cap ? *cap * 2 : 64;
		tern_span *p = realloc(*spans, nc * sizeof *p);
		if (!p)
			return -1;
		*spans = p;
		*cap = nc;
	}
	(*spans)[*n_spans].off = off;
	(*spans)[*n_spans].len = len;
	(*n_spans)++;
	return 0;
}

static int lower_ascii(uint32_t c)
{
	return (c >= 'A' && c <= 'Z') ? (int)(c + 32) : (int)c;
}

/* Length in characters of the contraction alternative at u[i], 0 if none.
 * (?i:...) folds case; under Unicode simple case folding U+017F LATIN SMALL
 * LETTER LONG S also matches 's', which the original pattern therefore accepts. */
static size_t match_contraction(const uchar *u, size_t i, size_t n)
{
	if (u[i].cp != '\'' || i + 1 >= n)
		return 0;
	const uint32_t c1 = u[i + 1].cp;
	const int l1 = lower_ascii(c1);
	if (l1 == 's' || c1 == 0x17F || l1 == 't' || l1 == 'm' || l1 == 'd')
		return 2;
	if (i + 2 >= n)
		return 0;
	const int l2 = lower_ascii(u[i + 2].cp);
	if ((l1 == 'r' && l2 == 'e') || (l1 == 'v' && l2 == 'e') || (l1 == 'l' && l2 == 'l'))
		return 3;
	return 0;
}

static int is_crlf(const uchar *c)
{
	return c->cp == '\r' || c->cp == '\n';
}

/* Length in characters of the regex match starting at u[i] (always >= 1):
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N}{1,D}
 *   | ?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
 * tried left to right, each with the backtracking the regex engine would do;
 * D = max_digits (3 for LLaMA-3, 1 for Qwen2's \p{N}). */
static size_t match_at(const uchar *u, size_t i, size_t n, size_t max_digits)
{
	size_t j, m = match_contraction(u, i, n);
	if (m)
		return m;
	const uint32_t c = u[i].cls;

	/* [^\r\n\p{L}\p{N}]?\p{L}+ */
	if (c == TERN_UCLS_LETTER ||
	    (c != TERN_UCLS_NUMBER && !is_crlf(&u[i]) && i + 1 < n && u[i + 1].cls == TERN_UCLS_LETTER)) {
		j = (c == TERN_UCLS_LETTER) ? i + 1 : i + 2;
		while (j < n && u[j].cls == TERN_UCLS_LETTER)
			j++;
		return j - i;
	}
	/* \p{N}{1,D} */
	if (c == TERN_UCLS_NUMBER) {
		j = i + 1;
		while (j < n && j < i + max_digits && u[j].cls == TERN_UCLS_NUMBER)
			j++;
		return j - i;
	}
	/* ' ?[^\s\p{L}\p{N}]+[\r\n]*': "other" is exactly [^\s\p{L}\p{N}] */
	j = i;
	if (u[i].cp == ' ' && i + 1 < n && u[i + 1].cls == TERN_UCLS_OTHER)
		j = i + 1;
	if (u[j].cls == TERN_UCLS_OTHER) {
		while (j < n && u[j].cls == TERN_UCLS_OTHER)
			j++;
		while (j < n && is_crlf(&u[j]))
			j++;
		return j - i;
	}
	/* Only whitespace is left at u[i]. */
	size_t e = i;
	while (e < n && u[e].cls == TERN_UCLS_SPACE)
		e++;
	/* \s*[\r\n]+: greedy \s* backs off to the last newline of the run. */
	for (size_t k = e; k > i; k--)
		if (is_crlf(&u[k - 1]))
			return k - i;
	/* \s+(?!\S): the whole run at the end of input, else all but its last
	 * character (which is then followed by whitespace, not \S). */
	if (e == n || e - i >= 2)
		return (e == n) ? e - i : e - i - 1;
	return e - i; /* \s+ */
}

static int split_bpe(const char *s, size_t n, size_t max_digits, tern_span **spans, size_t *n_spans, size_t *cap);

int tern_unicode_split_llama3(const char *s, size_t n, tern_span **spans, size_t *n_spans, size_t *cap)
{
	return split_bpe(s, n, 3, spans, n_spans, cap);
}

int tern_unicode_split_qwen2(const char *s, size_t n, tern_span **spans, size_t *n_spans, size_t *cap)
{
	return split_bpe(s, n, 1, spans, n_spans, cap);
}

static int split_bpe(const char *s, size_t n, size_t max_digits, tern_span **spans, size_t *n_spans, size_t *cap)
{
	if (n == 0)
		return 0;
	uchar *u = malloc(n * sizeof *u);
	if (!u)
		return -1;
	const unsigned char *b = (const unsigned char *)s;
	size_t nu = 0;
	for (size_t p = 0; p < n;) {
		uint32_t cp;
		int len = tern_utf8_decode(b + p, n - p, &cp);
		if (len <= 0) {
			u[nu].cp = UINT32_MAX;
			u[nu].cls = TERN_UCLS_OTHER;
			len = 1;
		} else {
			u[nu].cp = cp;
			u[nu].cls = (uint32_t)tern_unicode_class(cp);
		}
		u[nu].off = p;
		nu++;
		p += (size_t)len;
	}
	int rc = 0;
	for (size_t i = 0; i < nu;) {
		const size_t m = match_at(u, i, nu, max_digits);
		const size_t end = (i + m < nu) ? u[i + m].off : n;
		if (push_span(spans, n_spans, cap, u[i].off, end - u[i].off)) {
			rc = -1;
			break;
		}
		i += m;
	}
	free(u);
	return rc;
}
