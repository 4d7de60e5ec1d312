/* tok-tool.c: a command-line window on the C tokenizer for
 * check_tokenizer.py, which compares it with Python references. All strings
 * travel as hex so any byte survives the pipe.
 *   tok-tool ranges          print the Unicode class table: "lo hi cls" per line
 *   tok-tool split           stdin: hex lines; stdout: the pre-token splits,
 *                            hex pieces separated by spaces
 *   tok-tool bpe VOCABFILE   stdin: "F hex" lines (F = encode flags);
 *                            stdout: comma-separated ids, then the decoded text
 *                            as hex, separated by a space
 *   tok-tool spm VOCABFILE   the same for a SentencePiece-style vocabulary
 *                            (decoded with TERN_DECODE_STRIP_SPACE)
 * VOCABFILE: "n_tokens n_merges" then n_tokens lines "type hex" (bpe) or
 * "type score hex" (spm) and n_merges lines "hex" (of "A B").
 * bpe: token 0 is BOS; spm: 0 <unk>, 1 BOS, 2 EOS. */
#include "tern-tokenizer.h"
#include "tern-unicode.h"
#include "test-util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *unhex(const char *h, size_t *n)
{
	const size_t hl = strcspn(h, "\r\n ");
	char *out = malloc(hl / 2 + 1);
	if (!out)
		exit(2);
	for (size_t i = 0; i + 1 < hl; i += 2) {
		unsigned v;
		if (sscanf(h + i, "%2x", &v) != 1)
			exit(2);
		out[i / 2] = (char)v;
	}
	*n = hl / 2;
	out[*n] = '\0';
	return out;
}

static void puthex(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		printf("%02x", (unsigned char)s[i]);
}

static int do_split(int qwen2)
{
	static char line[1 << 20];
	while (fgets(line, sizeof line, stdin)) {
		size_t n;
		char *s = unhex(line, &n);
		tern_span *sp = NULL;
		size_t ns = 0, cap = 0;
		if ((qwen2 ? tern_unicode_split_qwen2 : tern_unicode_split_llama3)(s, n, &sp, &ns, &cap))
			return 2;
		for (size_t i = 0; i < ns; i++) {
			if (i)
				putchar(' ');
			puthex(s + sp[i].off, sp[i].len);
		}
		putchar('\n');
		free(sp);
		free(s);
	}
	return 0;
}

static int do_vocab(const char *path, int spm)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return 2;
	static char line[1 << 16];
	unsigned nt, nm;
	if (!fgets(line, sizeof line, f) || sscanf(line, "%u %u", &nt, &nm) != 2)
		return 2;
	char **tok = calloc(nt, sizeof *tok), **mer = calloc(nm ? nm : 1, sizeof *mer);
	size_t *tl = calloc(nt, sizeof *tl), *ml = calloc(nm ? nm : 1, sizeof *ml);
	int32_t *ty = calloc(nt, sizeof *ty);
	float *sc = calloc(nt, sizeof *sc);
	if (!tok || !mer || !tl || !ml || !ty || !sc)
		return 2;
	for (unsigned i = 0; i < nt; i++) {
		int t, off;
		if (!fgets(line, sizeof line, f))
			return 2;
		if (spm ? sscanf(line, "%d %f %n", &t, &sc[i], &off) != 2 : sscanf(line, "%d %n", &t, &off) != 1)
			return 2;
		ty[i] = t;
		tok[i] = unhex(line + off, &tl[i]);
	}
	for (unsigned i = 0; i < nm; i++) {
		if (!fgets(line, sizeof line, f))
			return 2;
		mer[i] = unhex(line, &ml[i]);
	}
	fclose(f);
	tern_tokenizer_desc d;
	tern_tokenizer_desc_init(&d);
	d.model = spm ? "llama" : "gpt2";
	d.pre = spm ? NULL : "llama-bpe";
	d.scores = spm ? sc : NULL;
	d.n_tokens = nt;
	d.tokens = (const char *const *)tok;
	d.token_lens = tl;
	d.token_types = ty;
	d.n_merges = nm;
	d.merges = (const char *const *)mer;
	d.merge_lens = ml;
	d.bos_id = spm ? 1 : 0;
	d.eos_id = spm ? 2 : -1;
	tern_tokenizer *t;
	tern_err err;
	if (tern_tokenizer_create(&d, &t, &err)) {
		fprintf(stderr, "tok-tool: %s\n", err.msg);
		return 2;
	}
	static char in[1 << 20];
	while (fgets(in, sizeof in, stdin)) {
		unsigned flags;
		int off;
		if (sscanf(in, "%u %n", &flags, &off) != 1)
			return 2;
		size_t n;
		char *s = unhex(in + off, &n);
		tern_tokens v = {0};
		if (tern_tokenizer_encode(t, s, n, flags, &v, &err))
			return 2;
		for (size_t i = 0; i < v.n; i++)
			printf(i ? ",%d" : "%d", v.ids[i]);
		char *dec;
		size_t dl;
		const unsigned dflags = TERN_DECODE_SPECIAL | (spm ? TERN_DECODE_STRIP_SPACE : 0);
		if (tern_tokenizer_decode(t, v.ids, v.n, dflags, &dec, &dl, &err))
			return 2;
		putchar(' ');
		puthex(dec, dl);
		putchar('\n');
		free(dec);
		tern_tokens_free(&v);
		free(s);
	}
	tern_tokenizer_free(t);
	tt_free_strings(tok, nt);
	tt_free_strings(mer, nm);
	free(tl);
	free(ml);
	free(ty);
	free(sc);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "ranges")) {
		printf("%s\n", tern_unicode_version);
		for (unsigned i = 0; i < tern_unicode_n_ranges; i++)
			printf("%x %x %u\n", tern_unicode_ranges[i].lo, tern_unicode_ranges[i].hi,
			       tern_unicode_ranges[i].cls);
		return 0;
	}
	if (argc >= 2 && !strcmp(argv[1], "split"))
		return do_split(0);
	if (argc >= 2 && !strcmp(argv[1], "split-qwen2"))
		return do_split(1);
	if (argc >= 3 && (!strcmp(argv[1], "bpe") || !strcmp(argv[1], "spm")))
		return do_vocab(argv[2], !strcmp(argv[1], "spm"));
	fprintf(stderr, "usage: tok-tool ranges | split | split-qwen2 | bpe VOCABFILE | spm VOCABFILE\n");
	return 2;
}
