/* test_tokenizer.c: the tokenizers, streaming decode and chat template
 * (coordinator/tokenizer.c, unicode.c, chat.c) on small vocabularies built
 * here: known answers derived by hand from the rules of MODEL-FORMATS 3,
 * round trips over arbitrary bytes, and error handling. The comparison with
 * Python's `regex` and an independent Python BPE is check_tokenizer.py
 * (ctest test_tokenizer_py). */
#include "test-bpe.h"
#include "tern-test.h"
#include "test-util.h"
#include "tern-sampling.h"
#include "tern-tokenizer.h"
#include "tern-unicode.h"

#include <stdint.h>
#include <time.h>

/* Process CPU time: the printed costs stay meaningful on a shared, loaded machine. */
static double cpu_s(void)
{
	return (double)clock() / CLOCKS_PER_SEC;
}

/* ---- a small byte-level BPE vocabulary ---------------------------------- */

enum { MAXTOK = 512 };
static char *btok[MAXTOK];
static int32_t btype[MAXTOK];
static uint32_t bn;

static int32_t add_tok(const char *s, int32_t type)
{
	btok[bn] = strdup(s);
	btype[bn] = type;
	return (int32_t)bn++;
}

static const char *bpe_merges[] = {"h e",   "l l", "he ll",   "hell o", "Ġ w", "o r",
				   "Ġw or", "l d", "Ġwor ld", "1 2",    "12 3"};

static tern_tokenizer *make_bpe(int add_bos)
{
	if (!bn) {
		add_tok("<|begin_of_text|>", TERN_TOKTYPE_CONTROL);
		for (int b = 0; b < 256; b++) {
			char buf[8] = {0};
			tern_utf8_encode(tern_unicode_byte_to_cp((unsigned char)b), buf);
			add_tok(buf, TERN_TOKTYPE_NORMAL);
		}
		const char *extra[] = {"he",   "ll", "hell",   "hello", "Ġw",  "or",
				       "Ġwor", "ld", "Ġworld", "12",    "123", "Ġhello"};
		for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++)
			add_tok(extra[i], TERN_TOKTYPE_NORMAL);
		add_tok("<|end_of_text|>", TERN_TOKTYPE_CONTROL);
		add_tok("<|eot_id|>", TERN_TOKTYPE_CONTROL);
		add_tok("<tool>", TERN_TOKTYPE_USER_DEFINED);
	}
	tern_tokenizer_desc d;
	tt_bpe_desc(&d, bn, btok, btype, sizeof bpe_merges / sizeof bpe_merges[0], bpe_merges);
	d.bos_id = 0;
	d.eos_id = (int32_t)bn - 3;
	d.add_bos = add_bos;
	return tt_tokenizer_create(&d);
}

static int32_t id_of(const tern_tokenizer *t, const char *s)
{
	return tern_tokenizer_find(t, s, strlen(s));
}

static int encode_eq(const tern_tokenizer *t, const char *text, unsigned flags, const int32_t *want, size_t n)
{
	tern_tokens v = {0};
	tern_err err;
	int ok = tern_tokenizer_encode(t, text, strlen(text), flags, &v, &err) == 0 && v.n == n;
	for (size_t i = 0; ok && i < n; i++)
		ok = v.ids[i] == want[i];
	if (!ok) {
		fprintf(stderr, "  encode(\"%s\") =", text);
		for (size_t i = 0; i < v.n; i++)
			fprintf(stderr, " %d", v.ids[i]);
		fprintf(stderr, "\n");
	}
	tern_tokens_free(&v);
	return ok;
}

static void test_byte_map(void)
{
	TT_EQ_INT(tern_unicode_byte_to_cp(' '), 0x120);
	TT_EQ_INT(tern_unicode_byte_to_cp('\n'), 0x10A);
	TT_EQ_INT(tern_unicode_byte_to_cp(0), 0x100);
	TT_EQ_INT(tern_unicode_byte_to_cp('A'), 'A');
	TT_EQ_INT(tern_unicode_byte_to_cp(0xAD), 0x143); /* the last of the 68 remapped bytes */
	int distinct = 1;
	for (int b = 0; b < 256; b++)
		distinct &= tern_unicode_cp_to_byte(tern_unicode_byte_to_cp((unsigned char)b)) == b;
	TT_CHECK(distinct);
	TT_EQ_INT(tern_unicode_cp_to_byte(0x144), -1);
	TT_EQ_INT(tern_unicode_cp_to_byte(0x20), -1);
}

static void test_utf8(void)
{
	uint32_t cp;
	TT_EQ_INT(tern_utf8_decode((const unsigned char *)"\xc3\xa9", 2, &cp), 2);
	TT_EQ_INT(cp, 0xE9);
	TT_EQ_INT(tern_utf8_decode((const unsigned char *)"\xf0\x9f\x98\x80", 4, &cp), 4);
	TT_EQ_INT(cp, 0x1F600);
	TT_EQ_INT(tern_utf8_decode((const unsigned char *)"\xf0\x9f", 2, &cp), 0);          /* incomplete */
	TT_EQ_INT(tern_utf8_decode((const unsigned char *)"\xc0\xaf", 2, &cp), -1);         /* overlong */
	TT_EQ_INT(tern_utf8_decode((const unsigned char *)"\xed\xa0\x80", 3, &cp), -1);     /* surrogate */
	TT_EQ_INT(tern_utf8_decode((const unsigned char *)"\xf4\x90\x80\x80", 4, &cp), -1); /* > U+10FFFF */
	TT_EQ_INT(tern_utf8_decode((const unsigned char *)"\x80", 1, &cp), -1);
	TT_EQ_INT(tern_unicode_class('a'), TERN_UCLS_LETTER);
	TT_EQ_INT(tern_unicode_class(0x4E2D), TERN_UCLS_LETTER); /* CJK */
	TT_EQ_INT(tern_unicode_class(0x0663), TERN_UCLS_NUMBER); /* ARABIC-INDIC DIGIT THREE */
	TT_EQ_INT(tern_unicode_class(0x3000), TERN_UCLS_SPACE);
	TT_EQ_INT(tern_unicode_class(0x1F600), TERN_UCLS_OTHER);
	TT_EQ_INT(tern_unicode_class(0x110000), TERN_UCLS_OTHER);
}

/* Splits text and compares with the pieces in want, separated by '|'. */
static int split_is(const char *text, const char *want)
{
	tern_span *sp = NULL;
	size_t ns = 0, cap = 0;
	char got[512] = {0};
	if (tern_unicode_split_llama3(text, strlen(text), &sp, &ns, &cap))
		return 0;
	for (size_t i = 0; i < ns; i++) {
		if (i)
			strcat(got, "|");
		strncat(got, text + sp[i].off, sp[i].len);
	}
	free(sp);
	if (strcmp(got, want))
		fprintf(stderr, "  split(\"%s\") = \"%s\", want \"%s\"\n", text, got, want);
	return !strcmp(got, want);
}

/* Expected splits worked out from the regex by hand (MODEL-FORMATS 3.1). */
static void test_pretokenizer_known(void)
{
	TT_CHECK(split_is("Hello world's 12345", "Hello| world|'s| |123|45"));
	{ /* Qwen2: the same pattern with one digit per piece */
		tern_span *sp = NULL;
		size_t ns = 0, cap = 0;
		const char *txt = "Hello world's 12345";
		TT_REQUIRE(tern_unicode_split_qwen2(txt, strlen(txt), &sp, &ns, &cap) == 0);
		TT_CHECK(ns == 9 && sp[3].len == 1 && sp[4].len == 1 && txt[sp[4].off] == '1' && sp[8].off == 18);
		free(sp);
	}
	TT_CHECK(split_is("I'M HERE, they'RE", "I|'M| HERE|,| they|'RE"));
	TT_CHECK(split_is("a  b", "a| | b"));         /* \s+(?!\S) leaves one space for " b" */
	TT_CHECK(split_is("a \n\n b", "a| \n\n| b")); /* \s*[\r\n]+ */
	TT_CHECK(split_is("x...!!\n\ny", "x|...!!\n\n|y"));
	TT_CHECK(split_is("end   ", "end|   ")); /* trailing whitespace: one piece */
	TT_CHECK(split_is("\tword", "\tword"));  /* any non-letter/digit/newline may lead a word */
	TT_CHECK(split_is("\nword", "\n|word"));
	TT_CHECK(split_is("caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87", "caf\xc3\xa9| \xe4\xb8\xad\xe6\x96\x87"));
	TT_CHECK(split_is("\xf0\x9f\x98\x80\xf0\x9f\x98\x80 hi", "\xf0\x9f\x98\x80\xf0\x9f\x98\x80| hi"));
	TT_CHECK(split_is("'\xc5\xbf", "'\xc5\xbf")); /* 's under (?i) also matches U+017F */
	/* Invalid bytes are single "other" characters: a punctuation run. */
	TT_CHECK(split_is("a\xff\xfe b", "a|\xff\xfe| b"));
	TT_CHECK(split_is("", ""));
}

static void test_bpe_known(void)
{
	tern_tokenizer *t = make_bpe(-1);
	TT_REQUIRE(t);
	const int32_t hello = id_of(t, "hello"), world = id_of(t, "Ġworld"), ghello = id_of(t, "Ġhello");
	const int32_t eot = id_of(t, "<|eot_id|>");
	TT_REQUIRE(hello > 0 && world > 0 && ghello > 0 && eot > 0);
	TT_EQ_INT(tern_tokenizer_eot(t), eot); /* found by its text */
	TT_CHECK(tern_tokenizer_is_eog(t, eot) && tern_tokenizer_is_eog(t, tern_tokenizer_eos(t)));
	TT_CHECK(!tern_tokenizer_is_eog(t, hello));
	/* Merges build "hello" and "Ġworld"; BOS from add_bos (default: on). */
	TT_CHECK(encode_eq(t, "hello world", TERN_ENCODE_ADD_SPECIAL, (int32_t[]){0, hello, world}, 3));
	TT_CHECK(encode_eq(t, "hello world", 0, (int32_t[]){hello, world}, 2));
	/* ignore_merges: no merge reaches "Ġhello", but the whole pre-token is a token. */
	TT_CHECK(encode_eq(t, " hello", 0, (int32_t[]){ghello}, 1));
	/* "123" by merges; digits go in groups of three: "1234" -> "123" "4". */
	TT_CHECK(encode_eq(t, "1234", 0, (int32_t[]){id_of(t, "123"), id_of(t, "4")}, 2));
	/* Multi-byte characters become their mapped bytes: é = C3 A9 -> "Ã" "©". */
	TT_CHECK(encode_eq(t, "\xc3\xa9", 0, (int32_t[]){id_of(t, "\xc3\x83"), id_of(t, "\xc2\xa9")}, 2));
	/* Special tokens only when parsing specials; USER_DEFINED always. */
	TT_CHECK(encode_eq(t, "hello<|eot_id|>", TERN_ENCODE_PARSE_SPECIAL, (int32_t[]){hello, eot}, 2));
	TT_CHECK(encode_eq(t, "<|begin_of_text|>hello", TERN_ENCODE_PARSE_SPECIAL | TERN_ENCODE_ADD_SPECIAL,
			   (int32_t[]){0, 0, hello}, 3));
	TT_CHECK(encode_eq(t, "hello<tool>", 0, (int32_t[]){hello, id_of(t, "<tool>")}, 2));
	tern_tokens v = {0};
	TT_CHECK(tern_tokenizer_encode(t, "hello<|eot_id|>", 15, 0, &v, NULL) == 0);
	TT_CHECK(v.n > 2);
	for (size_t i = 0; i < v.n; i++)
		TT_CHECK(v.ids[i] != eot);
	char *s;
	size_t sl;
	TT_REQUIRE(tern_tokenizer_decode(t, v.ids, v.n, 0, &s, &sl, NULL) == 0);
	TT_CHECK(sl == 15 && !strcmp(s, "hello<|eot_id|>"));
	free(s);
	tern_tokens_free(&v);
	/* Decode: CONTROL tokens are silent unless asked for. */
	const int32_t ids[] = {0, hello, world, eot};
	TT_REQUIRE(tern_tokenizer_decode(t, ids, 4, 0, &s, &sl, NULL) == 0);
	TT_CHECK(!strcmp(s, "hello world"));
	free(s);
	TT_REQUIRE(tern_tokenizer_decode(t, ids, 4, TERN_DECODE_SPECIAL, &s, &sl, NULL) == 0);
	TT_CHECK(!strcmp(s, "<|begin_of_text|>hello world<|eot_id|>"));
	free(s);
	tern_tokenizer_free(t);
	/* add_bos = 0 in the file: ADD_SPECIAL adds nothing. */
	t = make_bpe(0);
	TT_REQUIRE(t);
	TT_CHECK(encode_eq(t, "hello", TERN_ENCODE_ADD_SPECIAL, (int32_t[]){hello}, 1));
	tern_tokenizer_free(t);
}

static uint64_t rng_state = 42;
static uint32_t rnd(void)
{
	rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
	return (uint32_t)(rng_state >> 33);
}

/* A random string: raw bytes, or a mix of ASCII and multi-byte characters. */
static size_t random_text(char *buf, size_t max)
{
	const size_t n = rnd() % max;
	const int mode = (int)(rnd() % 3);
	static const char *pieces[] = {"a",
				       "Z",
				       " ",
				       "  ",
				       "\n",
				       "\r\n",
				       "\t",
				       "'s",
				       "'LL",
				       "7",
				       "42",
				       "!",
				       "...",
				       "\xc3\xa9",
				       "\xe4\xb8\xad",
				       "\xf0\x9f\x98\x80",
				       "\xc2\xa0",
				       "\xe3\x80\x80",
				       "hello",
				       " world",
				       "<|eot_id|>",
				       "<tool>",
				       "\xff",
				       "\xc3"};
	size_t k = 0;
	while (k < n) {
		if (mode == 0) {
			buf[k++] = (char)(rnd() & 0xff);
		} else {
			const char *p = pieces[rnd() % (sizeof pieces / sizeof pieces[0])];
			const size_t l = strlen(p);
			if (k + l > n)
				break;
			memcpy(buf + k, p, l);
			k += l;
		}
	}
	return k;
}

static int roundtrip(const tern_tokenizer *t, const char *s, size_t n, unsigned eflags, unsigned dflags)
{
	tern_tokens v = {0};
	char *out = NULL;
	size_t ol = 0;
	int ok = tern_tokenizer_encode(t, s, n, eflags, &v, NULL) == 0 &&
		 tern_tokenizer_decode(t, v.ids, v.n, dflags, &out, &ol, NULL) == 0 && ol == n && !memcmp(out, s, n);
	/* The same through the streaming decoder, one token at a time. */
	tern_detok *d = NULL;
	char acc[4096];
	size_t al = 0;
	if (ok && tern_detok_create(t, dflags & TERN_DECODE_SPECIAL, &d, NULL) == 0) {
		for (size_t i = 0; i < v.n && ok; i++) {
			const char *p;
			size_t pl;
			ok = tern_detok_push(d, v.ids[i], &p, &pl, NULL) == 0 && al + pl <= sizeof acc;
			if (ok) {
				memcpy(acc + al, p, pl);
				al += pl;
			}
		}
		const char *p;
		size_t pl;
		ok = ok && tern_detok_flush(d, &p, &pl, NULL) == 0 && al + pl <= sizeof acc;
		if (ok) {
			memcpy(acc + al, p, pl);
			al += pl;
			/* SPM's added leading space is not stripped by the stream. */
			const size_t skip = (dflags & TERN_DECODE_STRIP_SPACE) && al && acc[0] == ' ' ? 1 : 0;
			ok = al - skip == n && !memcmp(acc + skip, s, n);
		}
	}
	tern_detok_free(d);
	free(out);
	tern_tokens_free(&v);
	return ok;
}

static void test_bpe_roundtrip(void)
{
	tern_tokenizer *t = make_bpe(-1);
	TT_REQUIRE(t);
	char buf[1024];
	int bad = 0;
	for (int i = 0; i < 3000; i++) {
		const size_t n = random_text(buf, sizeof buf);
		const unsigned ef = (unsigned)(rnd() % 2) * TERN_ENCODE_PARSE_SPECIAL;
		if (!roundtrip(t, buf, n, ef, TERN_DECODE_SPECIAL))
			bad++;
	}
	TT_EQ_INT(bad, 0);
	/* A long single pre-token (a run of spaces/punctuation) and a long prompt. */
	const size_t big = 200000;
	char *s = malloc(big);
	TT_REQUIRE(s);
	memset(s, ' ', big);
	s[big - 1] = 'x';
	tern_tokens v = {0};
	TT_CHECK(tern_tokenizer_encode(t, s, big, 0, &v, NULL) == 0 && v.n > 0);
	tern_tokens_free(&v);
	for (size_t k = 0; k < big;) {
		const char *w = "hello world, 12345 caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87! ";
		const size_t l = strlen(w) < big - k ? strlen(w) : big - k;
		memcpy(s + k, w, l);
		k += l;
	}
	const double t0 = cpu_s();
	TT_CHECK(tern_tokenizer_encode(t, s, big, 0, &v, NULL) == 0);
	const double dt = cpu_s() - t0;
	printf("encode (CPU time): %zu bytes -> %zu tokens in %.1f ms (%.0f tokens/ms)\n", big, v.n, dt * 1e3,
	       (double)v.n / (dt * 1e3));
	char *out;
	size_t ol;
	TT_CHECK(tern_tokenizer_decode(t, v.ids, v.n, 0, &out, &ol, NULL) == 0 && ol == big && !memcmp(out, s, big));
	free(out);
	tern_tokens_free(&v);
	free(s);
	tern_tokenizer_free(t);
}

static void test_detok_stream(void)
{
	tern_tokenizer *t = make_bpe(-1);
	TT_REQUIRE(t);
	tern_detok *d;
	TT_REQUIRE(tern_detok_create(t, 0, &d, NULL) == 0);
	const char *p;
	size_t pl;
	/* "😀" = F0 9F 98 80: nothing until the fourth byte's token. */
	const unsigned char emoji[4] = {0xF0, 0x9F, 0x98, 0x80};
	for (int i = 0; i < 4; i++) {
		char c[4] = {0};
		tern_utf8_encode(tern_unicode_byte_to_cp(emoji[i]), c);
		TT_REQUIRE(tern_detok_push(d, id_of(t, c), &p, &pl, NULL) == 0);
		if (i < 3)
			TT_EQ_INT(pl, 0);
		else
			TT_CHECK(pl == 4 && !memcmp(p, emoji, 4));
	}
	/* E2 then 'a': E2 can no longer be completed, so both are passed on. */
	TT_REQUIRE(tern_detok_push(d, id_of(t, "\xc3\xa2"), &p, &pl, NULL) == 0);
	TT_EQ_INT(pl, 0);
	TT_REQUIRE(tern_detok_push(d, id_of(t, "a"), &p, &pl, NULL) == 0);
	TT_CHECK(pl == 2 && !memcmp(p,
				    "\xe2"
				    "a",
				    2));
	/* A held incomplete character comes out at flush. */
	TT_REQUIRE(tern_detok_push(d, id_of(t, "\xc3\x83"), &p, &pl, NULL) == 0);
	TT_EQ_INT(pl, 0);
	TT_REQUIRE(tern_detok_flush(d, &p, &pl, NULL) == 0);
	TT_CHECK(pl == 1 && (unsigned char)p[0] == 0xC3);
	tern_err err;
	TT_EQ_INT(tern_detok_push(d, 99999, &p, &pl, &err), TERN_EINVAL);
	tern_detok_free(d);
	/* The replacing variant turns the lone byte into U+FFFD. */
	TT_REQUIRE(tern_detok_create(t, TERN_DECODE_REPLACE_INVALID, &d, NULL) == 0);
	TT_REQUIRE(tern_detok_push(d, id_of(t, "\xc3\xbf"), &p, &pl, NULL) == 0); /* byte FF */
	TT_CHECK(pl == 3 && !memcmp(p, "\xef\xbf\xbd", 3));
	tern_detok_free(d);
	tern_detok_free(NULL);
	tern_tokenizer_free(t);
}

/* ---- SentencePiece-style vocabulary ------------------------------------ */

#define SP "\xe2\x96\x81"
static tern_tokenizer *make_spm(void)
{
	static char *tok[300];
	static float score[300];
	static int32_t type[300];
	static uint32_t n;
	if (!n) {
		tok[n] = strdup("<unk>"), type[n] = TERN_TOKTYPE_UNKNOWN, score[n++] = 0;
		tok[n] = strdup("<s>"), type[n] = TERN_TOKTYPE_CONTROL, score[n++] = 0;
		tok[n] = strdup("</s>"), type[n] = TERN_TOKTYPE_CONTROL, score[n++] = 0;
		for (int b = 0; b < 256; b++) {
			char buf[8];
			snprintf(buf, sizeof buf, "<0x%02X>", b);
			tok[n] = strdup(buf), type[n] = TERN_TOKTYPE_BYTE, score[n++] = 0;
		}
		static const struct {
			const char *s;
			float score;
		} words[] = {{SP, -10},      {"h", -10},    {"e", -10},       {"l", -10},   {"o", -10},
			     {"w", -10},     {"r", -10},    {"d", -10},       {SP "h", -1}, {"ll", -2},
			     {SP "he", -3},  {"llo", -4},   {SP "hello", -5}, {SP "w", -1}, {"or", -2},
			     {SP "wor", -3}, {"ld", -2.5f}, {SP "world", -6}};
		for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
			tok[n] = strdup(words[i].s), type[n] = TERN_TOKTYPE_NORMAL, score[n++] = words[i].score;
	}
	tern_tokenizer_desc d;
	tern_tokenizer_desc_init(&d);
	d.model = "llama";
	d.n_tokens = n;
	d.tokens = (const char *const *)tok;
	d.token_types = type;
	d.scores = score;
	d.bos_id = 1;
	d.eos_id = 2;
	return tt_tokenizer_create(&d);
}

static void test_spm(void)
{
	tern_tokenizer *t = make_spm();
	TT_REQUIRE(t);
	TT_EQ_INT(tern_tokenizer_kind_of(t), TERN_TOKENIZER_SPM);
	const int32_t hello = id_of(t, SP "hello"), world = id_of(t, SP "world");
	/* Leading space added, spaces become U+2581, merges by score. */
	TT_CHECK(encode_eq(t, "hello world", TERN_ENCODE_ADD_SPECIAL, (int32_t[]){1, hello, world}, 3));
	/* Byte fallback for what the vocabulary lacks: é = <0xC3><0xA9>, z = <0x7A>. */
	TT_CHECK(encode_eq(t, "h\xc3\xa9llo z", 0,
			   (int32_t[]){id_of(t, SP "h"), id_of(t, "<0xC3>"), id_of(t, "<0xA9>"), id_of(t, "llo"),
				       id_of(t, SP), id_of(t, "<0x7A>")},
			   6));
	/* A special token in the text; the text after it gets the space prefix again. */
	TT_CHECK(encode_eq(t, "hello</s>world", TERN_ENCODE_PARSE_SPECIAL, (int32_t[]){hello, 2, world}, 3));
	TT_CHECK(encode_eq(t, "", TERN_ENCODE_ADD_SPECIAL, (int32_t[]){1}, 1));
	char *s;
	size_t sl;
	const int32_t ids[] = {1, hello, world};
	TT_REQUIRE(tern_tokenizer_decode(t, ids, 3, TERN_DECODE_STRIP_SPACE, &s, &sl, NULL) == 0);
	TT_CHECK(!strcmp(s, "hello world"));
	free(s);
	TT_REQUIRE(tern_tokenizer_decode(t, ids, 3, 0, &s, &sl, NULL) == 0);
	TT_CHECK(!strcmp(s, " hello world"));
	free(s);
	/* Round trips over arbitrary bytes (byte fallback covers every byte),
	 * except text containing U+2581 itself, which decodes to a space. */
	char buf[512];
	int bad = 0, tried = 0;
	for (int i = 0; i < 2000; i++) {
		const size_t n = random_text(buf, sizeof buf);
		buf[n] = 0;
		if (memmem(buf, n, SP, 3))
			continue;
		tried++;
		bad += !roundtrip(t, buf, n, TERN_ENCODE_ADD_SPECIAL, TERN_DECODE_STRIP_SPACE);
	}
	TT_CHECK(tried > 1000);
	TT_EQ_INT(bad, 0);
	tern_tokenizer_free(t);
}

static void test_errors(void)
{
	const char *toks[] = {"a", "b", "ab"};
	const char *bad_merge[] = {"ab"};
	tern_tokenizer_desc d;
	tern_tokenizer *t = NULL;
	tern_err err;
	tern_tokenizer_desc_init(&d);
	d.model = "bert";
	d.n_tokens = 3;
	d.tokens = toks;
	TT_EQ_INT(tern_tokenizer_create(&d, &t, &err), TERN_EUNSUP);
	TT_CHECK(strstr(err.msg, "bert") != NULL);
	d.model = "gpt2";
	d.pre = "qwen35"; /* a llama.cpp pre-tokenizer tern does not run */
	TT_EQ_INT(tern_tokenizer_create(&d, &t, &err), TERN_EUNSUP);
	/* "ab" is a token no merge reaches: LLaMA-3 rules take the whole word
	 * (ignore_merges), Qwen2's apply the merges (none) and give a, b */
	d.pre = "qwen2";
	TT_REQUIRE(tern_tokenizer_create(&d, &t, &err) == 0);
	TT_CHECK(encode_eq(t, "ab", 0, (int32_t[]){0, 1}, 2));
	tern_tokenizer_free(t);
	t = NULL;
	d.pre = "llama3";
	TT_REQUIRE(tern_tokenizer_create(&d, &t, &err) == 0);
	TT_CHECK(encode_eq(t, "ab", 0, (int32_t[]){2}, 1));
	tern_tokenizer_free(t);
	t = NULL;
	d.bos_id = 3;
	TT_EQ_INT(tern_tokenizer_create(&d, &t, &err), TERN_EINVAL);
	TT_CHECK(strstr(err.msg, "BOS") != NULL);
	d.bos_id = -1;
	d.n_merges = 1;
	d.merges = bad_merge;
	TT_EQ_INT(tern_tokenizer_create(&d, &t, &err), TERN_EINVAL);
	TT_CHECK(strstr(err.msg, "merge 0") != NULL);
	d.n_merges = 0;
	d.model = "llama";
	TT_EQ_INT(tern_tokenizer_create(&d, &t, &err), TERN_EINVAL); /* no scores */
	d.model = "gpt2";
	const int32_t bad_type[] = {1, 9, 1};
	d.token_types = bad_type;
	TT_EQ_INT(tern_tokenizer_create(&d, &t, &err), TERN_EINVAL);
	d.token_types = NULL;
	d.n_tokens = 0;
	TT_EQ_INT(tern_tokenizer_create(&d, &t, &err), TERN_EINVAL);
	TT_CHECK(t == NULL);
	/* A vocabulary without the byte tokens and no <unk>: unencodable bytes are dropped, no crash. */
	d.n_tokens = 3;
	TT_REQUIRE(tern_tokenizer_create(&d, &t, &err) == 0);
	tern_tokens v = {0};
	TT_CHECK(tern_tokenizer_encode(t, "ab zz\xff", 6, TERN_ENCODE_ADD_SPECIAL, &v, &err) == 0);
	TT_CHECK(v.n == 1 && v.ids[0] == 2); /* "ab" is a whole token; the rest has none */
	int32_t bad_id = 7;
	char *s;
	size_t sl;
	TT_EQ_INT(tern_tokenizer_decode(t, &bad_id, 1, 0, &s, &sl, &err), TERN_EINVAL);
	TT_CHECK(tern_tokenizer_piece(t, -1, 0, &sl) == NULL);
	tern_tokens_free(&v);
	tern_tokenizer_free(t);
	tern_tokenizer_free(NULL);
}

static void test_chat_template(void)
{
	const tern_chat_msg one[] = {{"user", "Hey, are you conscious? Can you talk to me?"}};
	char *s;
	size_t n;
	TT_REQUIRE(tern_chat_render(TERN_CHAT_BITNET, one, 1, 1, &s, &n, NULL) == 0);
	TT_CHECK(!strcmp(s, "User: Hey, are you conscious? Can you talk to me?<|eot_id|>Assistant: "));
	TT_EQ_INT(n, strlen(s));
	char *h;
	TT_REQUIRE(tern_chat_render(TERN_CHAT_BITNET_HF, one, 1, 1, &h, &n, NULL) == 0);
	TT_CHECK(!strcmp(h, s)); /* identical for a single user turn (MODEL-FORMATS 1.6) */
	free(s);
	free(h);
	const tern_chat_msg conv[] = {
	    {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "Bye"}};
	TT_REQUIRE(tern_chat_render(TERN_CHAT_BITNET, conv, 4, 1, &s, &n, NULL) == 0);
	TT_CHECK(!strcmp(s, "System: Be brief.User: Hi<|eot_id|>Assistant: Hello.User: Bye<|eot_id|>Assistant: "));
	free(s);
	TT_REQUIRE(tern_chat_render(TERN_CHAT_BITNET_HF, conv, 4, 1, &s, &n, NULL) == 0);
	TT_CHECK(!strcmp(s, "System: Be brief.<|eot_id|>User: Hi<|eot_id|>Assistant: Hello.<|eot_id|>"
			    "User: Bye<|eot_id|>Assistant: "));
	free(s);
	TT_REQUIRE(tern_chat_render(TERN_CHAT_BITNET_HF, conv, 4, 0, &s, &n, NULL) == 0);
	TT_CHECK(n >= 10 && !strcmp(s + n - 10, "<|eot_id|>"));
	free(s);
	const tern_chat_msg bad[] = {{"tool", "x"}};
	tern_err err;
	TT_EQ_INT(tern_chat_render(TERN_CHAT_BITNET, bad, 1, 1, &s, &n, &err), TERN_EINVAL);
	TT_CHECK(strstr(err.msg, "tool") != NULL);
	/* Rendered then encoded with special parsing: <|eot_id|> is one token. */
	tern_tokenizer *t = make_bpe(-1);
	TT_REQUIRE(t);
	TT_REQUIRE(tern_chat_render(TERN_CHAT_BITNET, one, 1, 1, &s, &n, NULL) == 0);
	tern_tokens v = {0};
	TT_REQUIRE(tern_tokenizer_encode(t, s, n, TERN_ENCODE_ADD_SPECIAL | TERN_ENCODE_PARSE_SPECIAL, &v, NULL) == 0);
	int eots = 0;
	for (size_t i = 0; i < v.n; i++)
		eots += v.ids[i] == id_of(t, "<|eot_id|>");
	TT_CHECK(v.n > 2 && v.ids[0] == 0 && eots == 1);
	tern_tokens_free(&v);
	free(s);
	tern_tokenizer_free(t);
}

/* Generation's text path: tokens -> streaming decode -> stop strings, with
 * the stop string and a multi-byte character split across tokens. */
static void test_stream_with_stop(void)
{
	tern_tokenizer *t = make_bpe(-1);
	TT_REQUIRE(t);
	const char *text = "hello w\xc3\xb6rld</s>more";
	tern_tokens v = {0};
	TT_REQUIRE(tern_tokenizer_encode(t, text, strlen(text), 0, &v, NULL) == 0);
	TT_CHECK(v.n > 8); /* "</s>" and "ö" are several tokens each */
	const char *stops[] = {"</s>"};
	tern_stopper *st;
	tern_detok *d;
	TT_REQUIRE(tern_stopper_create(stops, 1, &st, NULL) == 0);
	TT_REQUIRE(tern_detok_create(t, 0, &d, NULL) == 0);
	char shown[128] = {0};
	int stopped = 0;
	size_t used = 0;
	for (size_t i = 0; i < v.n && !stopped; i++, used++) {
		const char *p, *e;
		size_t pl, el;
		TT_REQUIRE(tern_detok_push(d, v.ids[i], &p, &pl, NULL) == 0);
		stopped = tern_stopper_feed(st, p, pl, &e, &el, NULL);
		TT_CHECK(stopped >= 0);
		strncat(shown, e, el);
		/* Never a partial "</s>" or half of "ö" on screen. */
		TT_CHECK(!strstr(shown, "<") && (strlen(shown) <= 7 || !strncmp(shown + 7, "\xc3\xb6", 2)));
	}
	TT_CHECK(stopped == 1);
	TT_CHECK(!strcmp(shown, "hello w\xc3\xb6rld"));
	TT_CHECK(used < v.n); /* stopped before "more" */
	tern_detok_free(d);
	tern_stopper_free(st);
	tern_tokens_free(&v);
	tern_tokenizer_free(t);
}

/* A vocabulary of LLaMA-3 size: 256 byte tokens plus tokens made by merging
 * two earlier ones (each merge's rank is its result's order), about 128k
 * merges. Checks create and encode at that scale and prints their cost. */
static uint64_t fnv(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
	return h;
}

static void test_large_vocab(void)
{
	enum { NV = 128256, HS = 1 << 19 };
	char **tok = calloc(NV, sizeof *tok), **mer = calloc(NV, sizeof *mer);
	int32_t *set = malloc(HS * sizeof *set);
	TT_REQUIRE(tok && mer && set);
	memset(set, 0xff, HS * sizeof *set);
	uint32_t n = 0, nm = 0;
	for (int b = 0; b < 256; b++) {
		char buf[8] = {0};
		tern_utf8_encode(tern_unicode_byte_to_cp((unsigned char)b), buf);
		tok[n] = strdup(buf);
		size_t h = fnv(buf, strlen(buf)) & (HS - 1);
		while (set[h] >= 0)
			h = (h + 1) & (HS - 1);
		set[h] = (int32_t)n++;
	}
	/* Merged tokens are words: letters with an optional leading 'Ġ' (space),
	 * so that they survive pre-tokenization of the text below. */
	int32_t *pool = malloc(NV * sizeof *pool);
	TT_REQUIRE(pool);
	uint32_t np = 0;
	/* Token id b < 256 is byte b's character here. */
	for (int c = 'A'; c <= 'z'; c++)
		if (c <= 'Z' || c >= 'a')
			pool[np++] = c;
	const uint32_t space = ' ';
	pool[np++] = (int32_t)space;
	while (n < NV) {
		const uint32_t a = (uint32_t)pool[rnd() % np], b = (uint32_t)pool[rnd() % np];
		if (b == space || !strncmp(tok[b], "\xc4\xa0", 2))
			continue; /* 'Ġ' only at the start */
		const size_t la = strlen(tok[a]), lb = strlen(tok[b]);
		if (la + lb > 24)
			continue;
		char buf[64];
		memcpy(buf, tok[a], la);
		memcpy(buf + la, tok[b], lb + 1);
		size_t h = fnv(buf, la + lb) & (HS - 1);
		int dup = 0;
		for (; set[h] >= 0; h = (h + 1) & (HS - 1))
			if (!strcmp(tok[set[h]], buf))
				dup = 1;
		if (dup)
			continue;
		set[h] = (int32_t)n;
		pool[np++] = (int32_t)n;
		tok[n++] = strdup(buf);
		char m[64];
		snprintf(m, sizeof m, "%s %s", tok[a], tok[b]);
		mer[nm++] = strdup(m);
	}
	tern_tokenizer_desc d;
	tt_bpe_desc(&d, n, tok, NULL, nm, (const char *const *)mer);
	tern_tokenizer *t = NULL;
	double t0 = cpu_s();
	TT_REQUIRE(tern_tokenizer_create(&d, &t, NULL) == 0);
	const double t_create = cpu_s() - t0;
	const size_t big = 100000;
	char *text = malloc(big);
	TT_REQUIRE(text);
	/* Text made of the vocabulary's own tokens, so merges apply. */
	for (size_t k = 0; k < big;) {
		size_t pl;
		const char *p = tern_tokenizer_piece(t, (int32_t)(256 + rnd() % (n - 256)), 0, &pl);
		for (size_t i = 0; i < pl && k < big; i++)
			text[k++] = p[i];
	}
	tern_tokens v = {0};
	t0 = cpu_s();
	TT_CHECK(tern_tokenizer_encode(t, text, big, 0, &v, NULL) == 0);
	const double t_enc = cpu_s() - t0;
	printf(
	    "large vocab (CPU time): %u tokens, %u merges, create %.0f ms; encode %zu bytes -> %zu tokens in %.1f ms\n",
	    n, nm, t_create * 1e3, big, v.n, t_enc * 1e3);
	TT_CHECK(v.n < big / 3); /* merges did their work */
	char *out;
	size_t ol;
	TT_CHECK(tern_tokenizer_decode(t, v.ids, v.n, 0, &out, &ol, NULL) == 0 && ol == big && !memcmp(out, text, big));
	free(out);
	tern_tokens_free(&v);
	tern_tokenizer_free(t);
	free(text);
	tt_free_strings(tok, n);
	tt_free_strings(mer, nm);
	free(set);
	free(pool);
}

TT_MAIN(TT_CASE(test_byte_map), TT_CASE(test_utf8), TT_CASE(test_pretokenizer_known), TT_CASE(test_bpe_known),
	TT_CASE(test_bpe_roundtrip), TT_CASE(test_detok_stream), TT_CASE(test_spm), TT_CASE(test_errors),
	TT_CASE(test_chat_template), TT_CASE(test_stream_with_stop), TT_CASE(test_large_vocab))
