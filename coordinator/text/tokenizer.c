/* tokenizer.c: creating a tokenizer, its lookups, the special-token
 * partition and encode; the BPE (LLaMA-3, "gpt2") and SPM ("llama")
 * algorithms are bpe.c and spm.c, decoding detok.c. See tern-tokenizer.h for the
 * contract; MODEL-FORMATS 3 for the rules. Lookups use open-addressing hash
 * tables built once at create: token text -> id, and (left id, right id) ->
 * (merge rank, result id), so BPE runs on integer ids with a heap of candidate
 * pairs, O(n log n) per pre-token whatever its length. */
#include "tokenizer-internal.h"

/* ---- small helpers ------------------------------------------------------ */

static uint64_t hash_bytes(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ull;
	}
	return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
	x ^= x >> 33; /* murmur3 finaliser */
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	return x ^ (x >> 33);
}

static size_t pow2_at_least(size_t n)
{
	size_t p = 16;
	while (p < n)
		p *= 2;
	return p;
}

int sbuf_put(sbuf *b, const void *s, size_t n)
{
	if (vec_reserve(&b->p, &b->cap, b->n + n + 1, 1, 64))
		return -1;
	if (n)
		memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = '\0';
	return 0;
}

int tokens_push(tern_tokens *v, int32_t id)
{
	if (vec_reserve(&v->ids, &v->cap, v->n + 1, sizeof *v->ids, 64))
		return -1;
	v->ids[v->n++] = id;
	return 0;
}

int tokens_emit(const tern_tokenizer *t, tern_tokens *out, int32_t id)
{
	if (id < 0) {
		if (t->unk < 0)
			return 0; /* nothing can represent it; dropped, as the vocabulary allows no better */
		id = t->unk;
	}
	return tokens_push(out, id);
}

void tern_tokens_free(tern_tokens *v)
{
	if (!v)
		return;
	free(v->ids);
	v->ids = NULL;
	v->n = v->cap = 0;
}

void tern_tokenizer_desc_init(tern_tokenizer_desc *d)
{
	memset(d, 0, sizeof *d);
	d->bos_id = d->eos_id = d->eot_id = d->unk_id = -1;
	d->add_bos = -1;
	d->add_space_prefix = -1;
}

int32_t tern_tokenizer_find(const tern_tokenizer *t, const char *s, size_t n)
{
	for (size_t i = hash_bytes(s, n) & t->vmask;; i = (i + 1) & t->vmask) {
		const int32_t id = t->vhash[i];
		if (id < 0)
			return -1;
		if (t->text_len[id] == n && memcmp(t->text + t->text_off[id], s, n) == 0)
			return id;
	}
}

/* (rank, result) of merging left+right, or 0 when there is no such merge. */
int merge_find(const tern_tokenizer *t, int32_t left, int32_t right, uint32_t *rank, int32_t *res)
{
	if (!t->mkey || left < 0 || right < 0)
		return 0;
	const uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
	for (size_t i = hash_u64(key) & t->mmask;; i = (i + 1) & t->mmask) {
		if (t->mkey[i] == UINT64_MAX)
			return 0;
		if (t->mkey[i] == key) {
			*rank = t->mrank[i];
			*res = t->mres[i];
			return 1;
		}
	}
}

/* ---- create ------------------------------------------------------------- */

static int is_special_type(int32_t ty)
{
	return ty == TERN_TOKTYPE_CONTROL || ty == TERN_TOKTYPE_USER_DEFINED || ty == TERN_TOKTYPE_UNKNOWN;
}

static int cmp_u64(const void *a, const void *b)
{
	const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

/* Parses "<0xNN>" (SPM byte token); returns the byte or -1. */
static int parse_byte_token(const char *s, size_t n)
{
	if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
		return -1;
	int v = 0;
	for (int i = 3; i < 5; i++) {
		const char c = s[i];
		int d;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else
			return -1;
		v = v * 16 + d;
	}
	return v;
}

/* The decoded bytes of token id, appended to *b. */
static int build_piece(const tern_tokenizer *t, int32_t id, sbuf *b)
{
	const char *s = t->text + t->text_off[id];
	const size_t n = t->text_len[id];
	const int32_t ty = t->type[id];
	if (ty == TERN_TOKTYPE_CONTROL || ty == TERN_TOKTYPE_UNUSED)
		return 0;
	if (t->kind == TERN_TOKENIZER_SPM) {
		if (ty == TERN_TOKTYPE_BYTE) {
			const int v = parse_byte_token(s, n);
			if (v >= 0) {
				const char c = (char)v;
				return sbuf_put(b, &c, 1);
			}
			return sbuf_put(b, s, n);
		}
		if (ty == TERN_TOKTYPE_UNKNOWN)
			return sbuf_put(b, "\xe2\x96\x85", 3); /* llama.cpp renders <unk> as U+2585 */
		for (size_t i = 0; i < n;) {
			if (i + 3 <= n && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
				if (sbuf_put(b, " ", 1))
					return -1;
				i += 3;
			} else {
				if (sbuf_put(b, s + i, 1))
					return -1;
				i++;
			}
		}
		return 0;
	}
	if (ty == TERN_TOKTYPE_USER_DEFINED || ty == TERN_TOKTYPE_UNKNOWN)
		return sbuf_put(b, s, n);
	/* Byte-level: every character maps back to one byte. A character outside
	 * the map (not produced by the GPT-2 converter) is kept as its UTF-8. */
	const unsigned char *u = (const unsigned char *)s;
	for (size_t i = 0; i < n;) {
		uint32_t cp;
		int len = tern_utf8_decode(u + i, n - i, &cp);
		if (len <= 0) {
			if (sbuf_put(b, s + i, 1))
				return -1;
			i++;
			continue;
		}
		const int byte = tern_unicode_cp_to_byte(cp);
		if (byte >= 0) {
			const char c = (char)byte;
			if (sbuf_put(b, &c, 1))
				return -1;
		} else if (sbuf_put(b, s + i, (size_t)len)) {
			return -1;
		}
		i += (size_t)len;
	}
	return 0;
}

static int check_id(int32_t id, int32_t n, const char *what, tern_err *err)
{
	TERN_RETURN_IF(id < -1 || id >= n, err, TERN_EINVAL, "tokenizer: %s id %d out of range [0, %d)", what, id, n);
	return 0;
}

static int build_merges(tern_tokenizer *t, const tern_tokenizer_desc *d, tern_err *err)
{
	if (d->n_merges == 0)
		return 0;
	TERN_RETURN_IF(!d->merges, err, TERN_EINVAL, "tokenizer: %u merges but no merge array", d->n_merges);
	t->mmask = pow2_at_least((size_t)d->n_merges * 2) - 1;
	t->mkey = malloc((t->mmask + 1) * sizeof *t->mkey);
	t->mrank = malloc((t->mmask + 1) * sizeof *t->mrank);
	t->mres = malloc((t->mmask + 1) * sizeof *t->mres);
	TERN_RETURN_IF(!t->mkey || !t->mrank || !t->mres, err, TERN_ENOMEM, "tokenizer: no memory for merges");
	memset(t->mkey, 0xff, (t->mmask + 1) * sizeof *t->mkey);
	sbuf cat = {0};
	uint32_t dropped = 0;
	for (uint32_t r = 0; r < d->n_merges; r++) {
		const char *m = d->merges[r];
		TERN_RETURN_IF(!m, err, TERN_EINVAL, "tokenizer: merge %u is NULL", r);
		const size_t n = d->merge_lens ? d->merge_lens[r] : strlen(m);
		/* The separator is the first space after the first byte, so a left
		 * part may itself start with a space (llama.cpp does the same). */
		const char *sp = n > 1 ? memchr(m + 1, ' ', n - 1) : NULL;
		if (!sp) {
			free(cat.p);
			return TERN_ERR(err, TERN_EINVAL, "tokenizer: merge %u (\"%.*s\") has no space", r,
					(int)(n > 60 ? 60 : n), m);
		}
		const size_t la = (size_t)(sp - m), lb = n - la - 1;
		const int32_t a = tern_tokenizer_find(t, m, la), b = tern_tokenizer_find(t, sp + 1, lb);
		cat.n = 0;
		if (sbuf_put(&cat, m, la) || sbuf_put(&cat, sp + 1, lb)) {
			free(cat.p);
			return TERN_ERR(err, TERN_ENOMEM, "tokenizer: no memory");
		}
		const int32_t ab = tern_tokenizer_find(t, cat.p, cat.n);
		if (a < 0 || b < 0 || ab < 0) {
			dropped++;
			continue;
		}
		const uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
		size_t i = hash_u64(key) & t->mmask;
		while (t->mkey[i] != UINT64_MAX && t->mkey[i] != key)
			i = (i + 1) & t->mmask;
		if (t->mkey[i] == key)
			continue; /* a duplicate: the first (lowest) rank wins */
		t->mkey[i] = key;
		t->mrank[i] = r;
		t->mres[i] = ab;
	}
	free(cat.p);
	if (dropped)
		TERN_LOGW(TAG, "%u of %u merges refer to tokens not in the vocabulary; ignored", dropped, d->n_merges);
	return 0;
}

int tern_tokenizer_create(const tern_tokenizer_desc *d, tern_tokenizer **out, tern_err *err)
{
	*out = NULL;
	TERN_RETURN_IF(!d || !d->model, err, TERN_EINVAL, "tokenizer: no tokenizer.ggml.model");
	TERN_RETURN_IF(d->n_tokens == 0 || !d->tokens, err, TERN_EINVAL, "tokenizer: empty vocabulary");
	TERN_RETURN_IF(d->n_tokens > INT32_MAX / 2, err, TERN_ERANGE, "tokenizer: absurd vocabulary size %u",
		       d->n_tokens);
	tern_tokenizer_kind kind;
	int ignore_merges = 0, pre_qwen2 = 0;
	const int type = tern_tokenizer_type(d->model, d->pre, err);
	if (type < 0) {
		char msg[sizeof err->msg];
		snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
		return TERN_ERR(err, type, "tokenizer: %s", msg);
	}
	if (type == 3) {
		/* Qwen2 (llama.cpp LLAMA_VOCAB_PRE_TYPE_QWEN2): its split, merges always applied */
		kind = TERN_TOKENIZER_BPE;
		pre_qwen2 = 1;
	} else if (type == 1) {
		kind = TERN_TOKENIZER_BPE;
		/* LLaMA-3 rules: merges are applied by rank over whole words. Some
		 * BitNet converters omitted the pre key for this very vocabulary
		 * (MODEL-FORMATS 2.5); those rules are the only ones we have. */
		if (!d->pre || !*d->pre || !strcmp(d->pre, "default"))
			TERN_LOGW(TAG, "tokenizer.ggml.pre is %s; using the LLaMA-3 pre-tokenizer",
				  d->pre && *d->pre ? "\"default\"" : "missing");
		ignore_merges = 1;
	} else {
		kind = TERN_TOKENIZER_SPM;
		TERN_RETURN_IF(!d->scores, err, TERN_EINVAL, "tokenizer: model \"llama\" needs tokenizer.ggml.scores");
	}
	const int32_t nv = (int32_t)d->n_tokens;
	TERN_FORWARD_IF_ERROR(check_id(d->bos_id, nv, "BOS", err));
	TERN_FORWARD_IF_ERROR(check_id(d->eos_id, nv, "EOS", err));
	TERN_FORWARD_IF_ERROR(check_id(d->eot_id, nv, "EOT", err));
	TERN_FORWARD_IF_ERROR(check_id(d->unk_id, nv, "UNK", err));

	int rc = TERN_ENOMEM;
	sbuf pieces = {0};
	tern_tokenizer *t = calloc(1, sizeof *t);
	if (!t)
		return TERN_ERR(err, TERN_ENOMEM, "tokenizer: no memory");
	t->kind = kind;
	t->ignore_merges = ignore_merges;
	t->pre_qwen2 = pre_qwen2;
	t->n_vocab = nv;
	t->bos = d->bos_id;
	t->eos = d->eos_id;
	t->eot = d->eot_id;
	t->unk = d->unk_id;
	t->add_bos = d->add_bos >= 0 ? d->add_bos : (t->bos >= 0);
	t->add_space_prefix = kind == TERN_TOKENIZER_SPM && d->add_space_prefix != 0;
	t->text_off = malloc((size_t)nv * sizeof *t->text_off);
	t->text_len = malloc((size_t)nv * sizeof *t->text_len);
	t->type = malloc((size_t)nv * sizeof *t->type);
	t->piece_off = malloc((size_t)nv * sizeof *t->piece_off);
	t->piece_len = malloc((size_t)nv * sizeof *t->piece_len);
	if (!t->text_off || !t->text_len || !t->type || !t->piece_off || !t->piece_len)
		goto nomem;
	size_t total = 0;
	for (int32_t i = 0; i < nv; i++) {
		if (!d->tokens[i]) {
			rc = TERN_ERR(err, TERN_EINVAL, "tokenizer: token %d is NULL", i);
			goto fail;
		}
		const size_t n = d->token_lens ? d->token_lens[i] : strlen(d->tokens[i]);
		if (n > UINT32_MAX / 2) {
			rc = TERN_ERR(err, TERN_ERANGE, "tokenizer: token %d is %zu bytes long", i, n);
			goto fail;
		}
		t->text_off[i] = total;
		t->text_len[i] = (uint32_t)n;
		total += n + 1;
	}
	t->text = malloc(total);
	if (!t->text)
		goto nomem;
	for (int32_t i = 0; i < nv; i++) {
		memcpy(t->text + t->text_off[i], d->tokens[i], t->text_len[i]);
		t->text[t->text_off[i] + t->text_len[i]] = '\0';
		int32_t ty = d->token_types ? d->token_types[i] : TERN_TOKTYPE_NORMAL;
		if (ty < TERN_TOKTYPE_UNDEFINED || ty > TERN_TOKTYPE_BYTE) {
			rc = TERN_ERR(err, TERN_EINVAL, "tokenizer: token %d has unknown type %d", i, ty);
			goto fail;
		}
		if (!d->token_types) {
			/* Without types, infer what the ids and the <0xNN> spelling say. */
			if (i == t->bos || i == t->eos || i == t->eot)
				ty = TERN_TOKTYPE_CONTROL;
			else if (i == t->unk)
				ty = TERN_TOKTYPE_UNKNOWN;
			else if (kind == TERN_TOKENIZER_SPM &&
				 parse_byte_token(t->text + t->text_off[i], t->text_len[i]) >= 0)
				ty = TERN_TOKTYPE_BYTE;
		}
		t->type[i] = ty;
	}
	if (kind == TERN_TOKENIZER_SPM) {
		t->score = malloc((size_t)nv * sizeof *t->score);
		if (!t->score)
			goto nomem;
		memcpy(t->score, d->scores, (size_t)nv * sizeof *t->score);
	}

	t->vmask = pow2_at_least((size_t)nv * 2) - 1;
	t->vhash = malloc((t->vmask + 1) * sizeof *t->vhash);
	if (!t->vhash)
		goto nomem;
	memset(t->vhash, 0xff, (t->vmask + 1) * sizeof *t->vhash);
	for (int32_t id = 0; id < nv; id++) {
		const char *s = t->text + t->text_off[id];
		size_t i = hash_bytes(s, t->text_len[id]) & t->vmask;
		int dup = 0;
		for (; t->vhash[i] >= 0; i = (i + 1) & t->vmask) {
			const int32_t o = t->vhash[i];
			if (t->text_len[o] == t->text_len[id] &&
			    !memcmp(t->text + t->text_off[o], s, t->text_len[id])) {
				dup = 1; /* the first id with a given text wins */
				break;
			}
		}
		if (!dup)
			t->vhash[i] = id;
	}
	if (t->eot < 0 && kind == TERN_TOKENIZER_BPE)
		t->eot = tern_tokenizer_find(t, "<|eot_id|>", 10);
	if (t->unk < 0 && kind == TERN_TOKENIZER_SPM)
		t->unk = tern_tokenizer_find(t, "<unk>", 5);

	for (int b = 0; b < 256; b++) {
		char buf[8];
		int n;
		if (kind == TERN_TOKENIZER_BPE) {
			n = tern_utf8_encode(tern_unicode_byte_to_cp((unsigned char)b), buf);
			t->byte_tok[b] = tern_tokenizer_find(t, buf, (size_t)n);
			memcpy(t->bmap[b], buf, (size_t)n); /* mapped code points are < U+0144: 1-2 bytes */
			t->bmap_len[b] = (unsigned char)n;
		} else {
			static const char hex[] = "0123456789ABCDEF";
			memcpy(buf, "<0x", 3);
			buf[3] = hex[b >> 4];
			buf[4] = hex[b & 15];
			buf[5] = '>';
			t->byte_tok[b] = tern_tokenizer_find(t, buf, 6);
			if (t->byte_tok[b] < 0) {
				buf[0] = (char)b;
				t->byte_tok[b] = tern_tokenizer_find(t, buf, 1);
			}
		}
	}
	if (kind == TERN_TOKENIZER_BPE) {
		rc = build_merges(t, d, err);
		if (rc < 0)
			goto fail;
	}

	size_t ns = 0;
	for (int32_t i = 0; i < nv; i++)
		ns += is_special_type(t->type[i]) && t->text_len[i] > 0;
	if (ns) {
		/* Longest text first, then lowest id: key = (~len, id). */
		uint64_t *keys = malloc(ns * sizeof *keys);
		t->special = malloc(ns * sizeof *t->special);
		if (!keys || !t->special) {
			free(keys);
			goto nomem;
		}
		for (int32_t i = 0; i < nv; i++)
			if (is_special_type(t->type[i]) && t->text_len[i] > 0)
				keys[t->n_special++] = (uint64_t)(UINT32_MAX - t->text_len[i]) << 32 | (uint32_t)i;
		qsort(keys, ns, sizeof *keys, cmp_u64);
		for (size_t k = 0; k < ns; k++)
			t->special[k] = (int32_t)(uint32_t)keys[k];
		free(keys);
	}

	for (int32_t i = 0; i < nv; i++) {
		t->piece_off[i] = pieces.n;
		if (build_piece(t, i, &pieces))
			goto nomem;
		t->piece_len[i] = (uint32_t)(pieces.n - t->piece_off[i]);
	}
	if (sbuf_put(&pieces, "", 0))
		goto nomem;
	t->piece = pieces.p;
	*out = t;
	return 0;
nomem:
	rc = TERN_ERR(err, TERN_ENOMEM, "tokenizer: no memory for a %d-token vocabulary", nv);
fail:
	free(pieces.p);
	tern_tokenizer_free(t);
	return rc;
}

void tern_tokenizer_free(tern_tokenizer *t)
{
	if (!t)
		return;
	free(t->text);
	free(t->text_off);
	free(t->text_len);
	free(t->type);
	free(t->score);
	free(t->piece);
	free(t->piece_off);
	free(t->piece_len);
	free(t->vhash);
	free(t->mkey);
	free(t->mrank);
	free(t->mres);
	free(t->special);
	free(t);
}

tern_tokenizer_kind tern_tokenizer_kind_of(const tern_tokenizer *t)
{
	return t->kind;
}

int32_t tern_tokenizer_n_vocab(const tern_tokenizer *t)
{
	return t->n_vocab;
}

int32_t tern_tokenizer_bos(const tern_tokenizer *t)
{
	return t->bos;
}

int32_t tern_tokenizer_eos(const tern_tokenizer *t)
{
	return t->eos;
}

int32_t tern_tokenizer_eot(const tern_tokenizer *t)
{
	return t->eot;
}

int tern_tokenizer_is_eog(const tern_tokenizer *t, int32_t id)
{
	return id >= 0 && (id == t->eos || id == t->eot);
}

const char *tern_tokenizer_token_text(const tern_tokenizer *t, int32_t id, size_t *len)
{
	if (id < 0 || id >= t->n_vocab)
		return NULL;
	if (len)
		*len = t->text_len[id];
	return t->text + t->text_off[id];
}

/* ---- special-token partition ------------------------------------------- */

/* A stretch of the input: raw text, or one token matched as a unit. */
typedef struct frag {
	size_t off, len;
	int32_t token; /* -1 for raw text */
} frag;

typedef struct fragv {
	frag *p;
	size_t n, cap;
} fragv;

static int fragv_push(fragv *v, size_t off, size_t len, int32_t token)
{
	if (vec_reserve(&v->p, &v->cap, v->n + 1, sizeof *v->p, 16))
		return -1;
	v->p[v->n].off = off;
	v->p[v->n].len = len;
	v->p[v->n].token = token;
	v->n++;
	return 0;
}

/* llama.cpp's order: each special token, longest first, claims its
 * non-overlapping occurrences (left to right) in the still-raw stretches. */
static int partition(const tern_tokenizer *t, const char *text, size_t len, int parse_special, fragv *cur)
{
	fragv next = {0};
	cur->n = 0;
	if (len && fragv_push(cur, 0, len, -1))
		return -1;
	for (size_t k = 0; k < t->n_special; k++) {
		const int32_t id = t->special[k];
		if (!parse_special && t->type[id] != TERN_TOKTYPE_USER_DEFINED)
			continue;
		const char *s = t->text + t->text_off[id];
		const size_t sl = t->text_len[id];
		next.n = 0;
		int changed = 0;
		for (size_t f = 0; f < cur->n; f++) {
			const frag fr = cur->p[f];
			if (fr.token >= 0 || fr.len < sl) {
				if (fragv_push(&next, fr.off, fr.len, fr.token))
					goto nomem;
				continue;
			}
			size_t pos = fr.off;
			const size_t end = fr.off + fr.len;
			while (pos < end) {
				const char *hit = memmem(text + pos, end - pos, s, sl);
				if (!hit)
					break;
				const size_t h = (size_t)(hit - text);
				changed = 1;
				if ((h > pos && fragv_push(&next, pos, h - pos, -1)) || fragv_push(&next, h, sl, id))
					goto nomem;
				pos = h + sl;
			}
			if (pos < end && fragv_push(&next, pos, end - pos, -1))
				goto nomem;
		}
		if (changed) {
			const fragv tmp = *cur;
			*cur = next;
			next = tmp;
		}
	}
	free(next.p);
	return 0;
nomem:
	free(next.p);
	return -1;
}

/* ---- encode ------------------------------------------------------------- */

int tern_tokenizer_encode(const tern_tokenizer *t, const char *text, size_t len, unsigned flags, tern_tokens *out,
			  tern_err *err)
{
	TERN_RETURN_IF(!text && len, err, TERN_EINVAL, "tokenizer: NULL text");
	fragv fr = {0};
	scratch s = {0};
	int rc = 0;
	const int add_bos = (flags & TERN_ENCODE_ADD_SPECIAL) && t->add_bos && t->bos >= 0;
	if (add_bos && tokens_push(out, t->bos))
		goto nomem;
	if (partition(t, text, len, (flags & TERN_ENCODE_PARSE_SPECIAL) != 0, &fr))
		goto nomem;
	int prev_special = 1; /* SPM: the first stretch of text gets the space prefix */
	for (size_t f = 0; f < fr.n; f++) {
		if (fr.p[f].token >= 0) {
			if (tokens_push(out, fr.p[f].token))
				goto nomem;
			prev_special = 1;
			continue;
		}
		if (t->kind == TERN_TOKENIZER_BPE)
			rc = bpe_raw(t, &s, text + fr.p[f].off, fr.p[f].len, out);
		else
			rc = spm_raw(t, text + fr.p[f].off, fr.p[f].len, t->add_space_prefix && prev_special, out);
		if (rc)
			goto nomem;
		prev_special = 0;
	}
	/* As llama.cpp does: a chat template or prompt that already starts with
	 * BOS text, parsed as special, gives two BOS tokens. Allowed, but likely
	 * a mistake. */
	if (add_bos && fr.n && fr.p[0].token == t->bos)
		TERN_LOGW(TAG, "the prompt starts with BOS and BOS is added as well: two BOS tokens");
	goto done;
nomem:
	rc = TERN_ERR(err, TERN_ENOMEM, "tokenizer: no memory to encode %zu bytes", len);
done:
	free(fr.p);
	free(s.sym);
	free(s.heap.p);
	free(s.mapped.p);
	return rc;
}
