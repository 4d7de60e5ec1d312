/* test_step.c: the per-token generation step (coordinator/gen/tern-step.h):
 * text of characters split across tokens, stop strings straddling them, the
 * flush at EOS and at the length limit, and its order (withheld text first,
 * then the detokenizer's held bytes, which are stop-checked too). */
#include <stdlib.h>
#include <string.h>

#include "tern-step.h"
#include "test-bpe.h"
#include "tern-test.h"
#include "tern-unicode.h"

/* Byte-level vocabulary: id b is byte b, EOS is 256, BOS 257. */
enum { EOS = 256 };

static tern_tokenizer *make_tok(void)
{
	static char *tok[258];
	static int32_t type[258];
	if (!tok[0]) {
		for (int b = 0; b < 256; b++) {
			char buf[8] = {0};
			tern_utf8_encode(tern_unicode_byte_to_cp((unsigned char)b), buf);
			tok[b] = strdup(buf);
			type[b] = TERN_TOKTYPE_NORMAL;
		}
		tok[256] = strdup("<|end_of_text|>"), type[256] = TERN_TOKTYPE_CONTROL;
		tok[257] = strdup("<|begin_of_text|>"), type[257] = TERN_TOKTYPE_CONTROL;
	}
	tern_tokenizer_desc d;
	tt_bpe_desc(&d, 258, tok, type, 0, NULL);
	d.bos_id = 257;
	d.eos_id = EOS;
	return tt_tokenizer_create(&d);
}

/* Runs ids through a step; all shown text (tokens' and tail) goes to out.
 * Returns the finish reason; *n_calls gets the tokens taken. */
static tern_finish run(const tern_tokenizer *t, unsigned flags, const char *const *stops, size_t n_stops, int max,
		       const int32_t *ids, int n, char *out, size_t cap, int *n_calls)
{
	const tern_step_config c = {t, flags, stops, n_stops, max, 0};
	tern_step *s = NULL;
	tern_err err;
	out[0] = '\0';
	if (tern_step_create(&c, &s, &err) < 0)
		return (tern_finish)-1;
	tern_step_out so = {0};
	int i = 0;
	size_t used = 0;
	for (; i < n && so.finish == TERN_FINISH_NONE; i++) {
		if (tern_step_token(s, ids[i], &so, &err) < 0)
			break;
		if (strlen(so.text) != so.len || strlen(so.tail) != so.tail_len || used + so.len + so.tail_len >= cap)
			break;
		memcpy(out + used, so.text, so.len);
		used += so.len;
		memcpy(out + used, so.tail, so.tail_len);
		used += so.tail_len;
		out[used] = '\0';
	}
	*n_calls = i;
	tern_step_free(s);
	return so.finish;
}

static void test_length_cuts_a_character(void)
{
	tern_tokenizer *t = make_tok();
	TT_REQUIRE(t);
	char out[64];
	int n;
	/* "a" then the first byte of "é" (C3 A9), limit 2: the byte is not dropped. */
	const int32_t ids[] = {'a', 0xC3, 0xA9};
	TT_EQ_INT(run(t, 0, NULL, 0, 2, ids, 3, out, sizeof out, &n), TERN_FINISH_LENGTH);
	TT_EQ_INT(n, 2);
	TT_CHECK(!strcmp(out, "a\xc3"));
	TT_EQ_INT(run(t, TERN_DECODE_REPLACE_INVALID, NULL, 0, 2, ids, 3, out, sizeof out, &n), TERN_FINISH_LENGTH);
	TT_CHECK(!strcmp(out, "a\xef\xbf\xbd"));
	/* Limit 3: the character comes out whole on its last byte. */
	TT_EQ_INT(run(t, 0, NULL, 0, 3, ids, 3, out, sizeof out, &n), TERN_FINISH_LENGTH);
	TT_CHECK(!strcmp(out, "a\xc3\xa9"));
	tern_tokenizer_free(t);
}

static void test_stop_straddles_a_character(void)
{
	tern_tokenizer *t = make_tok();
	TT_REQUIRE(t);
	char out[64];
	int n;
	const char *stops[] = {"a\xc3\xa9"}; /* "aé" */
	const int32_t ids[] = {'x', 'a', 0xC3, 0xA9, 'y'};
	/* The stop completes on the character's last byte: nothing of it shows. */
	TT_EQ_INT(run(t, 0, stops, 1, 16, ids, 5, out, sizeof out, &n), TERN_FINISH_STOP);
	TT_EQ_INT(n, 4);
	TT_CHECK(!strcmp(out, "x"));
	/* Cut after the first byte: the withheld "a" comes before the held byte. */
	TT_EQ_INT(run(t, 0, stops, 1, 3, ids, 5, out, sizeof out, &n), TERN_FINISH_LENGTH);
	TT_CHECKF(!strcmp(out, "xa\xc3"), "got '%s'", out);
	TT_EQ_INT(run(t, TERN_DECODE_REPLACE_INVALID, stops, 1, 3, ids, 5, out, sizeof out, &n), TERN_FINISH_LENGTH);
	TT_CHECKF(!strcmp(out, "xa\xef\xbf\xbd"), "got '%s'", out);
	tern_tokenizer_free(t);
}

static void test_flushed_bytes_are_stop_checked(void)
{
	tern_tokenizer *t = make_tok();
	TT_REQUIRE(t);
	char out[64];
	int n;
	/* The held byte becomes U+FFFD at the end and completes the stop string. */
	const char *stops[] = {"a\xef\xbf\xbd"};
	const int32_t ids[] = {'x', 'a', 0xC3, EOS};
	TT_EQ_INT(run(t, TERN_DECODE_REPLACE_INVALID, stops, 1, 16, ids, 4, out, sizeof out, &n), TERN_FINISH_STOP);
	TT_EQ_INT(n, 4);
	TT_CHECK(!strcmp(out, "x"));
	tern_tokenizer_free(t);
}

static void test_eos(void)
{
	tern_tokenizer *t = make_tok();
	TT_REQUIRE(t);
	char out[64];
	int n;
	/* EOS releases what the stop matcher withheld and is not counted. */
	const char *stops[] = {"ab"};
	const int32_t ids[] = {'x', 'a', EOS, 'y'};
	const tern_step_config c = {t, 0, stops, 1, 16, 0};
	tern_step *s = NULL;
	tern_err err;
	TT_REQUIRE(tern_step_create(&c, &s, &err) == 0);
	tern_step_out so;
	TT_EQ_INT(tern_step_token(s, 'x', &so, &err), 0);
	TT_CHECK(so.finish == TERN_FINISH_NONE && so.len == 1 && so.tail_len == 0);
	TT_EQ_INT(tern_step_token(s, 'a', &so, &err), 0);
	TT_CHECK(so.finish == TERN_FINISH_NONE && so.len == 0);
	TT_EQ_INT(tern_step_token(s, EOS, &so, &err), 0);
	TT_EQ_INT(so.finish, TERN_FINISH_EOS);
	TT_CHECK(so.len == 0 && !strcmp(so.tail, "a"));
	TT_EQ_INT(tern_step_n_gen(s), 2);
	TT_EQ_INT(tern_step_token(s, 'y', &so, &err), TERN_ESTATE);
	TT_EQ_INT(tern_step_end(s, TERN_FINISH_LENGTH, &so, &err), TERN_ESTATE);
	tern_step_free(s);
	/* With ignore_eos it is an ordinary token (a control token shows as nothing). */
	const tern_step_config ci = {t, 0, NULL, 0, 3, 1};
	TT_REQUIRE(tern_step_create(&ci, &s, &err) == 0);
	for (int i = 0; i < 3; i++)
		TT_EQ_INT(tern_step_token(s, ids[i], &so, &err), 0);
	TT_EQ_INT(so.finish, TERN_FINISH_LENGTH);
	TT_EQ_INT(tern_step_n_gen(s), 3);
	tern_step_free(s);
	(void)out;
	(void)n;
	tern_tokenizer_free(t);
}

static void test_end_prompt_and_no_tokenizer(void)
{
	tern_tokenizer *t = make_tok();
	TT_REQUIRE(t);
	tern_err err;
	tern_step *s = NULL;
	const tern_step_config c = {t, 0, NULL, 0, 8, 0};
	TT_REQUIRE(tern_step_create(&c, &s, &err) == 0);
	/* A character split between the prompt and the first generated token. */
	const char *text;
	size_t len;
	TT_EQ_INT(tern_step_prompt(s, 0xC3, &text, &len, &err), 0);
	TT_EQ_INT(len, 0);
	tern_step_out so;
	TT_EQ_INT(tern_step_token(s, 0xA9, &so, &err), 0);
	TT_CHECK(!strcmp(so.text, "\xc3\xa9"));
	/* An id the tokenizer does not know shows as nothing. */
	TT_EQ_INT(tern_step_token(s, 5000, &so, &err), 0);
	TT_CHECK(so.len == 0 && so.finish == TERN_FINISH_NONE);
	/* An end the caller decides flushes too. */
	TT_EQ_INT(tern_step_token(s, 0xE2, &so, &err), 0);
	TT_EQ_INT(tern_step_end(s, TERN_FINISH_LENGTH, &so, &err), 0);
	TT_CHECK(so.finish == TERN_FINISH_LENGTH && !strcmp(so.tail, "\xe2"));
	tern_step_free(s);
	/* Without a tokenizer: ids only, the limit still ends it; EOS is not known. */
	const tern_step_config cn = {NULL, 0, NULL, 0, 2, 0};
	TT_REQUIRE(tern_step_create(&cn, &s, &err) == 0);
	TT_EQ_INT(tern_step_token(s, EOS, &so, &err), 0);
	TT_CHECK(so.finish == TERN_FINISH_NONE && so.len == 0);
	TT_EQ_INT(tern_step_token(s, 7, &so, &err), 0);
	TT_EQ_INT(so.finish, TERN_FINISH_LENGTH);
	tern_step_free(s);
	const tern_step_config bad = {t, 0, NULL, 0, -1, 0};
	TT_EQ_INT(tern_step_create(&bad, &s, &err), TERN_EINVAL);
	TT_CHECK(s == NULL);
	tern_step_free(NULL);
	tern_tokenizer_free(t);
}

TT_MAIN(TT_CASE(test_length_cuts_a_character), TT_CASE(test_stop_straddles_a_character),
	TT_CASE(test_flushed_bytes_are_stop_checked), TT_CASE(test_eos), TT_CASE(test_end_prompt_and_no_tokenizer))
