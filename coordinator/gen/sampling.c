/* sampling.c: per-sequence token sampling and stop strings (tern-sampling.h).
 * Candidate order is always defined (ids ascending, or logit descending with
 * ties by ascending id) and every sum runs over that order in double, so a
 * result never depends on thread count, batch, or compiler reassociation (the
 * file is compiled without fp-contraction). */
#include "tern-sampling.h"

#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { NBUCKET = 4096 };

typedef struct cand {
	float logit;
	int32_t id;
} cand;

struct tern_sampler {
	tern_sampling_params p;
	int32_t n_vocab;
	uint64_t seed;
	uint64_t rng[4]; /* xoshiro256** state */
	int32_t *hist;   /* (repeat_last_n) ring of recent tokens */
	size_t hist_n, hist_pos;
	int32_t *hist_sorted; /* (repeat_last_n) scratch for counting */
	cand *c;              /* (n_vocab) candidates */
	cand *sel;            /* (n_vocab) top-m selection scratch */
	uint16_t *bk;         /* (n_vocab) histogram bucket of each candidate, top-p */
	double bw[NBUCKET];   /* mass per bucket, top-p */
};

void tern_sampling_params_default(tern_sampling_params *p)
{
	p->temperature = 0.8f;
	p->top_k = 40;
	p->top_p = 0.95f;
	p->min_p = 0.05f;
	p->repeat_penalty = 1.0f;
	p->repeat_last_n = 64;
	p->frequency_penalty = 0.0f;
	p->presence_penalty = 0.0f;
	p->seed = TERN_SEED_RANDOM;
}

int tern_sampling_params_validate(const tern_sampling_params *p, tern_err *err)
{
	TERN_RETURN_IF(!p, err, TERN_EINVAL, "sampling: no parameters");
	TERN_RETURN_IF(!isfinite(p->temperature) || p->temperature < 0, err, TERN_EINVAL,
		       "sampling: temperature %g invalid: must be >= 0 (0 = greedy)", (double)p->temperature);
	TERN_RETURN_IF(p->top_k < 0, err, TERN_EINVAL, "sampling: top_k %d invalid: must be >= 0 (0 = off)",
		       (int)p->top_k);
	TERN_RETURN_IF(!(p->top_p > 0 && p->top_p <= 1), err, TERN_EINVAL,
		       "sampling: top_p %g invalid: must be in (0, 1] (1 = off)", (double)p->top_p);
	TERN_RETURN_IF(!(p->min_p >= 0 && p->min_p <= 1), err, TERN_EINVAL,
		       "sampling: min_p %g invalid: must be in [0, 1] (0 = off)", (double)p->min_p);
	TERN_RETURN_IF(!isfinite(p->repeat_penalty) || p->repeat_penalty <= 0, err, TERN_EINVAL,
		       "sampling: repeat_penalty %g invalid: must be > 0 (1 = off)", (double)p->repeat_penalty);
	TERN_RETURN_IF(p->repeat_last_n < 0 || p->repeat_last_n > (1 << 20), err, TERN_EINVAL,
		       "sampling: repeat_last_n %d invalid: must be in [0, 1048576]", (int)p->repeat_last_n);
	TERN_RETURN_IF(!isfinite(p->frequency_penalty) || !isfinite(p->presence_penalty), err, TERN_EINVAL,
		       "sampling: frequency_penalty %g / presence_penalty %g must be finite",
		       (double)p->frequency_penalty, (double)p->presence_penalty);
	return 0;
}

/* ---- PRNG --------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(uint64_t *s)
{
	const uint64_t r = rotl(s[1] * 5, 7) * 9;
	const uint64_t t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t *s)
{
	return (double)(rng_next(s) >> 11) * 0x1.0p-53;
}

static void rng_seed(tern_sampler *s)
{
	uint64_t x = s->seed;
	for (int i = 0; i < 4; i++)
		s->rng[i] = splitmix64(&x);
}

static uint64_t random_seed(void)
{
	uint64_t v = 0;
	const int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (read(fd, &v, sizeof v) != (ssize_t)sizeof v)
			v = 0;
		close(fd);
	}
	if (!v)
		v = tern_now_ns() ^ ((uint64_t)getpid() << 32);
	if (v == TERN_SEED_RANDOM)
		v--;
	return v;
}

/* ---- sampler ------------------------------------------------------------ */

int tern_sampler_create(const tern_sampling_params *p, int32_t n_vocab, tern_sampler **out, tern_err *err)
{
	*out = NULL;
	TERN_FORWARD_IF_ERROR(tern_sampling_params_validate(p, err));
	TERN_RETURN_IF(n_vocab < 1, err, TERN_EINVAL, "sampling: n_vocab %d must be >= 1", (int)n_vocab);
	tern_sampler *s = calloc(1, sizeof *s);
	if (!s)
		return TERN_ERR(err, TERN_ENOMEM, "sampling: no memory");
	s->p = *p;
	s->n_vocab = n_vocab;
	s->seed = p->seed == TERN_SEED_RANDOM ? random_seed() : p->seed;
	s->c = malloc((size_t)n_vocab * sizeof *s->c);
	s->sel = malloc((size_t)n_vocab * sizeof *s->sel);
	s->bk = malloc((size_t)n_vocab * sizeof *s->bk);
	if (p->repeat_last_n > 0) {
		s->hist = malloc((size_t)p->repeat_last_n * sizeof *s->hist);
		s->hist_sorted = malloc((size_t)p->repeat_last_n * sizeof *s->hist_sorted);
	}
	if (!s->c || !s->sel || !s->bk || (p->repeat_last_n > 0 && (!s->hist || !s->hist_sorted))) {
		tern_sampler_free(s);
		return TERN_ERR(err, TERN_ENOMEM, "sampling: no memory for %d candidates", (int)n_vocab);
	}
	rng_seed(s);
	*out = s;
	return 0;
}

void tern_sampler_free(tern_sampler *s)
{
	if (!s)
		return;
	free(s->hist);
	free(s->hist_sorted);
	free(s->c);
	free(s->sel);
	free(s->bk);
	free(s);
}

uint64_t tern_sampler_seed(const tern_sampler *s)
{
	return s->seed;
}

void tern_sampler_accept(tern_sampler *s, int32_t token)
{
	if (!s->hist || token < 0 || token >= s->n_vocab)
		return;
	const size_t cap = (size_t)s->p.repeat_last_n;
	s->hist[s->hist_pos] = token;
	s->hist_pos = (s->hist_pos + 1) % cap;
	if (s->hist_n < cap)
		s->hist_n++;
}

void tern_sampler_skip(tern_sampler *s, int32_t token)
{
	if (s->p.temperature != 0.0f)
		(void)rng_uniform(s->rng);
	tern_sampler_accept(s, token);
}

void tern_sampler_reset(tern_sampler *s)
{
	s->hist_n = s->hist_pos = 0;
	rng_seed(s);
}

static int cmp_i32(const void *a, const void *b)
{
	const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	return (x > y) - (x < y);
}

/* Whether a ranks before b: higher logit, then lower id. */
static int better(const cand *a, const cand *b)
{
	return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cmp_cand(const void *a, const void *b)
{
	return better(a, b) ? -1 : better(b, a) ? 1 : 0;
}

/* Writes the best m of c[0..n) to sel[0..m), in rank order: a heap of the
 * m best so far (worst at the root), O(n log m). */
static void select_top(const cand *c, size_t n, cand *sel, size_t m)
{
	size_t h = 0;
	for (size_t i = 0; i < n; i++) {
		cand x = c[i];
		size_t k;
		if (h < m) {
			k = h++;
			while (k > 0 && better(&sel[(k - 1) / 2], &x)) {
				sel[k] = sel[(k - 1) / 2];
				k = (k - 1) / 2;
			}
			sel[k] = x;
			continue;
		}
		if (!better(&x, &sel[0]))
			continue;
		k = 0;
		for (;;) {
			size_t ch = 2 * k + 1;
			if (ch >= h)
				break;
			if (ch + 1 < h && better(&sel[ch], &sel[ch + 1]))
				ch++;
			if (!better(&x, &sel[ch]))
				break;
			sel[k] = sel[ch];
			k = ch;
		}
		sel[k] = x;
	}
	qsort(sel, h, sizeof *sel, cmp_cand);
}

/* Repetition, frequency and presence penalties over the recent history;
 * each distinct token is penalised once, by its count. */
static void apply_penalties(tern_sampler *s)
{
	const tern_sampling_params *p = &s->p;
	if (!s->hist_n || (p->repeat_penalty == 1.0f && p->frequency_penalty == 0.0f && p->presence_penalty == 0.0f))
		return;
	memcpy(s->hist_sorted, s->hist, s->hist_n * sizeof *s->hist);
	qsort(s->hist_sorted, s->hist_n, sizeof *s->hist_sorted, cmp_i32);
	for (size_t i = 0; i < s->hist_n;) {
		size_t j = i + 1;
		while (j < s->hist_n && s->hist_sorted[j] == s->hist_sorted[i])
			j++;
		cand *c = &s->c[s->hist_sorted[i]]; /* candidates are still in id order here */
		if (c->logit <= 0)
			c->logit *= p->repeat_penalty;
		else
			c->logit /= p->repeat_penalty;
		c->logit -= (float)(j - i) * p->frequency_penalty + p->presence_penalty;
		i = j;
	}
}

/* Top-p over candidates in rank order: the shortest prefix whose softmax
 * mass (at temperature 1: llama.cpp applies temperature last) reaches top_p. */
static size_t top_p_sorted(const cand *c, size_t n, float top_p)
{
	const float mx = c[0].logit;
	if (mx == -INFINITY)
		return n;
	double sum = 0;
	for (size_t i = 0; i < n; i++)
		sum += exp((double)c[i].logit - mx);
	const double target = (double)top_p * sum;
	double cum = 0;
	for (size_t i = 0; i < n; i++) {
		cum += exp((double)c[i].logit - mx);
		if (cum >= target)
			return i + 1;
	}
	return n;
}

/* The same set without sorting the whole vocabulary: a histogram of the
 * logits finds the bucket where the cumulative mass (from the top) crosses
 * top_p; only that bucket is sorted. The kept candidates stay in id order. */
static size_t top_p_buckets(tern_sampler *s, size_t n, float top_p)
{
	cand *c = s->c;
	float mx = -INFINITY, mn = INFINITY;
	for (size_t i = 0; i < n; i++) {
		mx = c[i].logit > mx ? c[i].logit : mx;
		if (c[i].logit > -INFINITY && c[i].logit < mn)
			mn = c[i].logit;
	}
	if (mx == -INFINITY || mx == mn)
		return n;
	const double scale = (NBUCKET - 1) / ((double)mx - mn);
	memset(s->bw, 0, sizeof s->bw);
	double sum = 0;
	for (size_t i = 0; i < n; i++) {
		const double w = exp((double)c[i].logit - mx);
		sum += w;
		const double pos = c[i].logit > -INFINITY ? ((double)c[i].logit - mn) * scale : 0;
		s->bk[i] = (uint16_t)(pos < NBUCKET - 1 ? pos : NBUCKET - 1);
		s->bw[s->bk[i]] += w;
	}
	const double target = (double)top_p * sum;
	double cum = 0;
	int b = NBUCKET - 1;
	for (; b >= 0; b--) {
		if (cum + s->bw[b] >= target)
			break;
		cum += s->bw[b];
	}
	if (b < 0)
		return n;
	/* Rank the boundary bucket and find the last candidate that is kept. */
	size_t m = 0;
	for (size_t i = 0; i < n; i++)
		if (s->bk[i] == b)
			s->sel[m++] = c[i];
	qsort(s->sel, m, sizeof *s->sel, cmp_cand);
	size_t last = m - 1;
	for (size_t k = 0; k < m; k++) {
		cum += exp((double)s->sel[k].logit - mx);
		if (cum >= target) {
			last = k;
			break;
		}
	}
	const cand edge = s->sel[last];
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (s->bk[i] > b || (s->bk[i] == b && !better(&edge, &c[i])))
			c[k++] = c[i];
	return k;
}

int tern_sampler_sample(tern_sampler *s, const float *logits, int32_t *token, tern_err *err)
{
	TERN_RETURN_IF(!logits || !token, err, TERN_EINVAL, "sampling: NULL logits or token");
	const tern_sampling_params *p = &s->p;
	size_t n = (size_t)s->n_vocab;
	for (size_t i = 0; i < n; i++) {
		/* NaN can never win; +inf is clamped so softmax stays finite. */
		const float l = logits[i];
		s->c[i].logit = isnan(l) ? -INFINITY : l > FLT_MAX ? FLT_MAX : l;
		s->c[i].id = (int32_t)i;
	}
	apply_penalties(s);

	if (p->temperature == 0.0f) {
		size_t best = 0;
		for (size_t i = 1; i < n; i++)
			if (s->c[i].logit > s->c[best].logit)
				best = i;
		*token = s->c[best].id;
		tern_sampler_accept(s, *token);
		return 0;
	}

	cand *c = s->c;
	int sorted = 0;
	if (p->top_k > 0 && (size_t)p->top_k < n) {
		select_top(c, n, s->sel, (size_t)p->top_k);
		memcpy(c, s->sel, (size_t)p->top_k * sizeof *c);
		n = (size_t)p->top_k;
		sorted = 1;
	}
	if (p->top_p < 1.0f && n > 1) {
		if (!sorted && n <= 1024) {
			select_top(c, n, s->sel, n);
			memcpy(c, s->sel, n * sizeof *c);
			sorted = 1;
		}
		n = sorted ? top_p_sorted(c, n, p->top_p) : top_p_buckets(s, n, p->top_p);
	}
	if (p->min_p > 0.0f && n > 1) {
		float mx = -INFINITY;
		for (size_t i = 0; i < n; i++)
			mx = c[i].logit > mx ? c[i].logit : mx;
		const float thr = mx + logf(p->min_p);
		size_t k = 0;
		for (size_t i = 0; i < n; i++)
			if (c[i].logit >= thr)
				c[k++] = c[i];
		n = k;
	}

	/* Temperature, softmax and the draw, all in candidate order. */
	const double inv_t = 1.0 / (double)p->temperature;
	double mx = -INFINITY;
	size_t best = 0;
	for (size_t i = 0; i < n; i++) {
		const double l = (double)c[i].logit * inv_t;
		if (l > mx) {
			mx = l;
			best = i;
		}
	}
	/* Exactly one draw per sampled token, whatever the logits: a resumed
	 * sequence (tern_sampler_skip) then continues with the same numbers. */
	const double u01 = rng_uniform(s->rng);
	if (mx == -INFINITY) {
		*token = c[0].id; /* every logit was -inf or NaN: nothing to weigh */
		tern_sampler_accept(s, *token);
		return 0;
	}
	double sum = 0;
	for (size_t i = 0; i < n; i++)
		sum += exp((double)c[i].logit * inv_t - mx);
	const double u = u01 * sum;
	double cum = 0;
	size_t pick = best;
	for (size_t i = 0; i < n; i++) {
		const double w = exp((double)c[i].logit * inv_t - mx);
		cum += w;
		if (u < cum && w > 0) {
			pick = i;
			break;
		}
	}
	*token = c[pick].id;
	tern_sampler_accept(s, *token);
	return 0;
}

/* ---- stop strings ------------------------------------------------------- */

struct tern_stopper {
	char **stop; /* (n) */
	size_t *len; /* (n) */
	size_t n;
	char *buf; /* withheld text followed by the new text */
	size_t buf_n, buf_cap;
	char *emit; /* what the last call handed out */
	size_t emit_cap;
	int matched; /* index of the stop string found, -1 while running */
};

int tern_stopper_create(const char *const *stops, size_t n, tern_stopper **out, tern_err *err)
{
	*out = NULL;
	TERN_RETURN_IF(n && !stops, err, TERN_EINVAL, "stop strings: NULL list");
	for (size_t i = 0; i < n; i++)
		TERN_RETURN_IF(!stops[i] || !stops[i][0], err, TERN_EINVAL, "stop strings: string %zu is empty", i);
	tern_stopper *s = calloc(1, sizeof *s);
	if (!s)
		return TERN_ERR(err, TERN_ENOMEM, "stop strings: no memory");
	s->matched = -1;
	s->n = n;
	s->stop = calloc(n ? n : 1, sizeof *s->stop);
	s->len = calloc(n ? n : 1, sizeof *s->len);
	if (!s->stop || !s->len)
		goto nomem;
	for (size_t i = 0; i < n; i++) {
		s->len[i] = strlen(stops[i]);
		s->stop[i] = malloc(s->len[i] + 1);
		if (!s->stop[i])
			goto nomem;
		memcpy(s->stop[i], stops[i], s->len[i] + 1);
	}
	*out = s;
	return 0;
nomem:
	tern_stopper_free(s);
	return TERN_ERR(err, TERN_ENOMEM, "stop strings: no memory");
}

void tern_stopper_free(tern_stopper *s)
{
	if (!s)
		return;
	for (size_t i = 0; s->stop && i < s->n; i++)
		free(s->stop[i]);
	free(s->stop);
	free(s->len);
	free(s->buf);
	free(s->emit);
	free(s);
}

int tern_stopper_matched(const tern_stopper *s)
{
	return s->matched;
}

static int grow(char **p, size_t *cap, size_t need)
{
	if (need <= *cap)
		return 0;
	size_t nc = *cap ? *cap : 64;
	while (nc < need)
		nc *= 2;
	char *q = realloc(*p, nc);
	if (!q)
		return -1;
	*p = q;
	*cap = nc;
	return 0;
}

static int set_emit(tern_stopper *s, size_t n, const char **emit, size_t *emit_len)
{
	if (grow(&s->emit, &s->emit_cap, n + 1))
		return -1;
	memcpy(s->emit, s->buf, n);
	s->emit[n] = '\0';
	*emit = s->emit;
	*emit_len = n;
	return 0;
}

int tern_stopper_feed(tern_stopper *s, const char *text, size_t len, const char **emit, size_t *emit_len, tern_err *err)
{
	*emit = "";
	*emit_len = 0;
	TERN_RETURN_IF(s->matched >= 0, err, TERN_ESTATE, "stop strings: fed after a stop string matched");
	if (grow(&s->buf, &s->buf_cap, s->buf_n + len + 1))
		return TERN_ERR(err, TERN_ENOMEM, "stop strings: no memory");
	if (len)
		memcpy(s->buf + s->buf_n, text, len);
	s->buf_n += len;

	/* The earliest occurrence wins; at equal positions, the first listed. */
	size_t best = SIZE_MAX;
	for (size_t i = 0; i < s->n; i++) {
		const char *h = s->buf_n >= s->len[i] ? memmem(s->buf, s->buf_n, s->stop[i], s->len[i]) : NULL;
		if (h && (size_t)(h - s->buf) < best) {
			best = (size_t)(h - s->buf);
			s->matched = (int)i;
		}
	}
	if (s->matched >= 0) {
		if (set_emit(s, best, emit, emit_len))
			return TERN_ERR(err, TERN_ENOMEM, "stop strings: no memory");
		s->buf_n = 0;
		return 1;
	}
	/* Hold back the longest tail that is a proper prefix of a stop string. */
	size_t hold = 0;
	for (size_t i = 0; i < s->n; i++) {
		size_t k = s->len[i] - 1 < s->buf_n ? s->len[i] - 1 : s->buf_n;
		for (; k > hold; k--)
			if (!memcmp(s->buf + s->buf_n - k, s->stop[i], k))
				break;
		if (k > hold)
			hold = k;
	}
	const size_t out_n = s->buf_n - hold;
	if (set_emit(s, out_n, emit, emit_len))
		return TERN_ERR(err, TERN_ENOMEM, "stop strings: no memory");
	memmove(s->buf, s->buf + out_n, hold);
	s->buf_n = hold;
	return 0;
}

void tern_stopper_flush(tern_stopper *s, const char **emit, size_t *emit_len)
{
	*emit = "";
	*emit_len = 0;
	if (s->buf_n && set_emit(s, s->buf_n, emit, emit_len) == 0)
		s->buf_n = 0;
}
