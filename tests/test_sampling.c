/* test_sampling.c: coordinator/sampling.c: parameter validation, greedy,
 * top-k/top-p/min-p filtering, repetition penalties, seeded reproducibility
 * independent of interleaving, the temperature distribution against softmax
 * (chi-square bound at a fixed seed), and stop strings split across chunks. */
#include "tern-sampling.h"
#include "tern-test.h"

#include <math.h>
#include <time.h>

/* Process CPU time: the printed costs stay meaningful on a shared, loaded machine. */
static double cpu_s(void)
{
	return (double)clock() / CLOCKS_PER_SEC;
}

static tern_sampling_params plain(float temp, uint64_t seed)
{
	tern_sampling_params p;
	tern_sampling_params_default(&p);
	p.temperature = temp;
	p.top_k = 0;
	p.top_p = 1.0f;
	p.min_p = 0.0f;
	p.seed = seed;
	return p;
}

static uint64_t lcg = 7;
static float frand(void)
{
	lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
	return (float)((lcg >> 40) & 0xffffff) / 16777216.0f;
}

static void test_validation(void)
{
	tern_sampling_params p;
	tern_err err;
	tern_sampling_params_default(&p);
	TT_EQ_INT(tern_sampling_params_validate(&p, &err), 0);
#define BAD(field, value, word)                                                  \
	do {                                                                     \
		tern_sampling_params q = p;                                      \
		q.field = value;                                                 \
		TT_EQ_INT(tern_sampling_params_validate(&q, &err), TERN_EINVAL); \
		TT_CHECK(strstr(err.msg, word) != NULL);                         \
		tern_sampler *s_ = NULL;                                         \
		TT_EQ_INT(tern_sampler_create(&q, 10, &s_, &err), TERN_EINVAL);  \
		TT_CHECK(s_ == NULL);                                            \
	} while (0)
	BAD(temperature, -0.5f, "temperature");
	BAD(temperature, NAN, "temperature");
	BAD(top_k, -1, "top_k");
	BAD(top_p, 0.0f, "top_p");
	BAD(top_p, 1.5f, "top_p");
	BAD(min_p, -0.1f, "min_p");
	BAD(min_p, 2.0f, "min_p");
	BAD(repeat_penalty, 0.0f, "repeat_penalty");
	BAD(repeat_last_n, -2, "repeat_last_n");
	BAD(frequency_penalty, INFINITY, "frequency_penalty");
#undef BAD
	tern_sampler *s = NULL;
	TT_EQ_INT(tern_sampler_create(&p, 0, &s, &err), TERN_EINVAL);
	/* The random seed is drawn and reported, so the run can be repeated. */
	TT_REQUIRE(tern_sampler_create(&p, 10, &s, &err) == 0);
	TT_CHECK(tern_sampler_seed(s) != TERN_SEED_RANDOM);
	tern_sampler_free(s);
	tern_sampler_free(NULL);
}

static void test_greedy(void)
{
	tern_sampling_params p = plain(0.0f, 1);
	tern_sampler *s;
	TT_REQUIRE(tern_sampler_create(&p, 10, &s, NULL) == 0);
	float l[10] = {0, 1, 2, 5, 1, NAN, 0, 5, -INFINITY, 4.99f};
	int32_t tok;
	TT_REQUIRE(tern_sampler_sample(s, l, &tok, NULL) == 0);
	TT_EQ_INT(tok, 3); /* a tie between 3 and 7 goes to the lower id */
	float m[10];
	for (int i = 0; i < 10; i++)
		m[i] = -INFINITY;
	m[9] = NAN;
	TT_REQUIRE(tern_sampler_sample(s, m, &tok, NULL) == 0);
	TT_CHECK(tok >= 0 && tok < 10);
	tern_err err;
	TT_EQ_INT(tern_sampler_sample(s, NULL, &tok, &err), TERN_EINVAL);
	tern_sampler_free(s);
	/* All -inf at temperature > 0: still a valid id, no NaN arithmetic;
	 * +inf wins, with top-p (both paths) too. */
	p = plain(1.0f, 1);
	TT_REQUIRE(tern_sampler_create(&p, 10, &s, NULL) == 0);
	TT_REQUIRE(tern_sampler_sample(s, m, &tok, NULL) == 0);
	TT_CHECK(tok >= 0 && tok < 10);
	m[4] = INFINITY;
	TT_REQUIRE(tern_sampler_sample(s, m, &tok, NULL) == 0);
	TT_EQ_INT(tok, 4);
	tern_sampler_free(s);
	p.top_p = 0.5f;
	TT_REQUIRE(tern_sampler_create(&p, 10, &s, NULL) == 0);
	TT_REQUIRE(tern_sampler_sample(s, m, &tok, NULL) == 0);
	TT_EQ_INT(tok, 4);
	tern_sampler_free(s);
	enum { BIG = 3000 };
	static float mb[BIG];
	for (int i = 0; i < BIG; i++)
		mb[i] = i % 2 ? -INFINITY : NAN;
	mb[1234] = INFINITY;
	TT_REQUIRE(tern_sampler_create(&p, BIG, &s, NULL) == 0);
	TT_REQUIRE(tern_sampler_sample(s, mb, &tok, NULL) == 0);
	TT_EQ_INT(tok, 1234);
	mb[1234] = -INFINITY;
	TT_REQUIRE(tern_sampler_sample(s, mb, &tok, NULL) == 0);
	TT_CHECK(tok >= 0 && tok < BIG);
	tern_sampler_free(s);
}

static void test_topk1_is_greedy(void)
{
	enum { V = 1000 };
	static float l[V];
	tern_sampling_params p = plain(1.5f, 99);
	p.top_k = 1;
	tern_sampler *s;
	TT_REQUIRE(tern_sampler_create(&p, V, &s, NULL) == 0);
	int bad = 0;
	for (int it = 0; it < 200; it++) {
		int32_t arg = 0, tok;
		for (int i = 0; i < V; i++) {
			l[i] = (float)(int)(frand() * 50); /* many ties */
			if (l[i] > l[arg])
				arg = i;
		}
		TT_REQUIRE(tern_sampler_sample(s, l, &tok, NULL) == 0);
		bad += tok != arg;
	}
	TT_EQ_INT(bad, 0);
	tern_sampler_free(s);
}

static void draw_many(tern_sampler *s, const float *l, int32_t *out, int n)
{
	for (int i = 0; i < n; i++)
		if (tern_sampler_sample(s, l, &out[i], NULL))
			out[i] = -1;
}

static void test_seed_reproduces(void)
{
	enum { V = 5000, N = 300 };
	static float l[V];
	for (int i = 0; i < V; i++)
		l[i] = frand() * 8;
	tern_sampling_params p;
	tern_sampling_params_default(&p); /* top-k, top-p, min-p, temperature all on */
	p.top_k = 0;
	p.min_p = 0.0f;
	p.seed = 12345;
	p.repeat_penalty = 1.1f;
	static int32_t a[N], b[N], c[N], d[N];
	tern_sampler *s1, *s2, *s3;
	TT_REQUIRE(tern_sampler_create(&p, V, &s1, NULL) == 0);
	TT_REQUIRE(tern_sampler_create(&p, V, &s2, NULL) == 0);
	draw_many(s1, l, a, N);
	/* s2 interleaved with another sequence (s3, other seed, other logits):
	 * its tokens must not change. */
	p.seed = 777;
	TT_REQUIRE(tern_sampler_create(&p, V, &s3, NULL) == 0);
	static float l3[V];
	for (int i = 0; i < V; i++)
		l3[i] = frand() * 8;
	for (int i = 0; i < N; i++) {
		int32_t t;
		TT_REQUIRE(tern_sampler_sample(s3, l3, &t, NULL) == 0);
		TT_REQUIRE(tern_sampler_sample(s2, l, &b[i], NULL) == 0);
	}
	TT_CHECK(!memcmp(a, b, sizeof a));
	/* reset restarts the stream. */
	tern_sampler_reset(s1);
	draw_many(s1, l, c, N);
	TT_CHECK(!memcmp(a, c, sizeof a));
	/* Another seed gives another sequence. */
	tern_sampler_reset(s3);
	draw_many(s3, l, d, N);
	TT_CHECK(memcmp(a, d, sizeof a) != 0);
	int distinct = 0;
	for (int i = 1; i < N; i++)
		distinct += a[i] != a[0];
	TT_CHECK(distinct > 0);
	tern_sampler_free(s1);
	tern_sampler_free(s2);
	tern_sampler_free(s3);
}

/* A resumed sequence: a sampler told the first k tokens (tern_sampler_skip)
 * picks what one that sampled them picks next, greedy and at a temperature
 * with penalties, over logits that change every step (one of them all -inf,
 * where the draw is still made). */
static void test_skip_resumes(void)
{
	enum { V = 300, N = 40 };
	static float l[N][V];
	for (int t = 0; t < N; t++)
		for (int i = 0; i < V; i++)
			l[t][i] = t == 7 ? -INFINITY : frand() * 6;
	for (int greedy = 0; greedy < 2; greedy++) {
		tern_sampling_params p = plain(greedy ? 0.0f : 0.8f, 99);
		p.repeat_penalty = 1.2f;
		p.presence_penalty = 0.4f;
		p.frequency_penalty = 0.2f;
		p.top_p = 0.9f;
		int32_t full[N];
		tern_sampler *s;
		TT_REQUIRE(tern_sampler_create(&p, V, &s, NULL) == 0);
		for (int t = 0; t < N; t++)
			TT_REQUIRE(tern_sampler_sample(s, l[t], &full[t], NULL) == 0);
		tern_sampler_free(s);
		for (int k = 1; k < N; k += 6) {
			TT_REQUIRE(tern_sampler_create(&p, V, &s, NULL) == 0);
			for (int t = 0; t < k; t++)
				tern_sampler_skip(s, full[t]);
			int same = 1;
			for (int t = k; t < N; t++) {
				int32_t got;
				TT_REQUIRE(tern_sampler_sample(s, l[t], &got, NULL) == 0);
				same &= got == full[t];
			}
			TT_CHECK(same);
			tern_sampler_free(s);
		}
	}
}

/* In cnt[0..V), how often each id came out of n draws by a new sampler with
 * p over the V logits l: 0, or -1 when the sampler or a draw failed. */
static int draw_counts(const tern_sampling_params *p, const float *l, int V, int n, int *cnt)
{
	tern_sampler *s;
	if (tern_sampler_create(p, V, &s, NULL))
		return -1;
	memset(cnt, 0, (size_t)V * sizeof *cnt);
	int rc = 0;
	for (int i = 0; i < n && rc == 0; i++) {
		int32_t t;
		if ((rc = tern_sampler_sample(s, l, &t, NULL)) == 0)
			cnt[t]++;
	}
	tern_sampler_free(s);
	return rc ? -1 : 0;
}

/* Pearson chi-square of draw counts against softmax(l / T). */
static double chi_square(const float *l, int V, float T, int N, uint64_t seed)
{
	const tern_sampling_params p = plain(T, seed);
	int cnt[16];
	if (draw_counts(&p, l, V, N, cnt))
		return 1e9;
	double mx = -1e30, z = 0, chi = 0;
	for (int i = 0; i < V; i++)
		mx = l[i] > mx ? l[i] : mx;
	for (int i = 0; i < V; i++)
		z += exp((l[i] - mx) / T);
	for (int i = 0; i < V; i++) {
		const double e = N * exp((l[i] - mx) / T) / z;
		if (e > 0)
			chi += (cnt[i] - e) * (cnt[i] - e) / e;
	}
	return chi;
}

static void test_temperature_distribution(void)
{
	const float l[6] = {1.0f, 2.0f, 0.5f, -1.0f, 1.5f, 0.0f};
	/* 5 degrees of freedom: P(chi2 > 20.5) = 0.001. A fixed seed makes this
	 * deterministic; the bound says the draw follows softmax(l / T). */
	const double c07 = chi_square(l, 6, 0.7f, 20000, 2024);
	const double c15 = chi_square(l, 6, 1.5f, 20000, 2025);
	printf("chi-square (df 5): T=0.7 %.2f, T=1.5 %.2f\n", c07, c15);
	TT_CHECK(c07 < 20.5);
	TT_CHECK(c15 < 20.5);
	/* A wrong temperature is caught: draws at T=0.7 against softmax at T=1.5. */
	const tern_sampling_params p = plain(0.7f, 5);
	int cnt[6];
	TT_REQUIRE(draw_counts(&p, l, 6, 20000, cnt) == 0);
	double z = 0, chi = 0;
	for (int i = 0; i < 6; i++)
		z += exp(l[i] / 1.5);
	for (int i = 0; i < 6; i++) {
		const double e = 20000 * exp(l[i] / 1.5) / z;
		chi += (cnt[i] - e) * (cnt[i] - e) / e;
	}
	TT_CHECK(chi > 100);
}

static void test_top_p_min_p(void)
{
	/* p = 0.5, 0.3, 0.15, 0.05 */
	const float l[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
	tern_sampling_params p = plain(1.0f, 3);
	p.top_p = 0.75f; /* 0.5 < 0.75 <= 0.8: keeps ids 0 and 1 */
	int cnt[4];
	TT_REQUIRE(draw_counts(&p, l, 4, 4000, cnt) == 0);
	TT_CHECK(cnt[0] > 0 && cnt[1] > 0 && cnt[2] == 0 && cnt[3] == 0);
	/* Renormalised over the kept two: 0.5/0.8 = 0.625 (binomial sd ~0.0077). */
	TT_CHECK(fabs(cnt[0] / 4000.0 - 0.625) < 0.04);
	/* The same after top-k (candidates already ranked). */
	p.top_k = 3;
	TT_REQUIRE(draw_counts(&p, l, 4, 2000, cnt) == 0);
	TT_CHECK(cnt[0] > 0 && cnt[1] > 0 && cnt[2] == 0 && cnt[3] == 0);
	p.top_k = 0;
	p.top_p = 1.0f;
	p.min_p = 0.2f; /* keeps p >= 0.1: ids 0..2 */
	TT_REQUIRE(draw_counts(&p, l, 4, 4000, cnt) == 0);
	TT_CHECK(cnt[0] > 0 && cnt[1] > 0 && cnt[2] > 0 && cnt[3] == 0);

	/* A large vocabulary takes the histogram path of top-p: every draw must
	 * lie in the nucleus computed here by a plain full sort. */
	enum { V = 20000 };
	static float big[V];
	static int32_t order[V];
	for (int i = 0; i < V; i++) {
		big[i] = frand() * 6;
		order[i] = i;
	}
	for (int gap = V / 2; gap > 0; gap /= 2)
		for (int i = gap; i < V; i++)
			for (int j = i; j >= gap; j -= gap) {
				const int32_t a = order[j - gap], b = order[j];
				if (big[a] < big[b] || (big[a] == big[b] && a > b)) {
					order[j - gap] = b;
					order[j] = a;
				} else {
					break;
				}
			}
	double mx = big[order[0]], z = 0;
	for (int i = 0; i < V; i++)
		z += exp(big[i] - mx);
	static unsigned char in_nucleus[V];
	double cum = 0;
	int kept = 0;
	for (int i = 0; i < V; i++) {
		cum += exp(big[order[i]] - mx);
		in_nucleus[order[i]] = 1;
		kept++;
		if (cum >= 0.9 * z)
			break;
	}
	p = plain(1.0f, 11);
	p.top_p = 0.9f;
	tern_sampler *s;
	TT_REQUIRE(tern_sampler_create(&p, V, &s, NULL) == 0);
	int bad = 0;
	for (int i = 0; i < 300; i++) {
		int32_t t;
		TT_REQUIRE(tern_sampler_sample(s, big, &t, NULL) == 0);
		bad += !in_nucleus[t];
	}
	tern_sampler_free(s);
	printf("top-p 0.9 nucleus of %d / %d tokens\n", kept, V);
	TT_CHECK(kept > 1000);
	TT_EQ_INT(bad, 0);
}

/* The id a new sampler with p (6 logits l) draws after accepting hist[0..n);
 * -1 when it cannot be made or the draw fails. */
static int32_t sample_after(const tern_sampling_params *p, const int32_t *hist, int n, const float *l)
{
	tern_sampler *s;
	if (tern_sampler_create(p, 6, &s, NULL))
		return -1;
	for (int i = 0; i < n; i++)
		tern_sampler_accept(s, hist[i]);
	int32_t t;
	const int rc = tern_sampler_sample(s, l, &t, NULL);
	tern_sampler_free(s);
	return rc ? -1 : t;
}

static void test_repetition_penalty(void)
{
	tern_sampling_params p = plain(0.0f, 1);
	p.repeat_penalty = 1.5f;
	p.repeat_last_n = 2;
	tern_sampler *s;
	TT_REQUIRE(tern_sampler_create(&p, 6, &s, NULL) == 0);
	int32_t t;
	/* Positive logit divided: 2.0 / 1.5 = 1.33 < 1.9. */
	const float pos[6] = {2.0f, 1.9f, -1, -1, -1, -1};
	tern_sampler_accept(s, 0);
	TT_REQUIRE(tern_sampler_sample(s, pos, &t, NULL) == 0);
	TT_EQ_INT(t, 1);
	/* History is now {0, 1}. Negative logits multiplied: -1 * 1.5 < -1.2. */
	const float neg[6] = {-5, -5, -1.0f, -1.2f, -9, -9};
	tern_sampler_accept(s, 2);
	tern_sampler_accept(s, 2); /* counted once for the repeat penalty */
	TT_REQUIRE(tern_sampler_sample(s, neg, &t, NULL) == 0);
	TT_EQ_INT(t, 3);
	/* The window is 2 tokens: {2, 3} now, so 0 is no longer penalised. */
	TT_REQUIRE(tern_sampler_sample(s, pos, &t, NULL) == 0);
	TT_EQ_INT(t, 0);
	tern_sampler_free(s);
	/* Unpenalised tokens are untouched: with penalty 1 the argmax stays. */
	p.repeat_penalty = 1.0f;
	const int32_t once[] = {0}, twice[] = {0, 0};
	TT_EQ_INT(sample_after(&p, once, 1, pos), 0);
	/* Frequency and presence: 2.0 - 2 * 0.1 - 0.5 = 1.3 < 1.9 - 0 (unseen). */
	p.frequency_penalty = 0.1f;
	p.presence_penalty = 0.5f;
	p.repeat_last_n = 8;
	TT_EQ_INT(sample_after(&p, twice, 2, pos), 1);
	/* A small presence penalty leaves token 0 ahead: 2.0 - 0.05 = 1.95 > 1.9. */
	p.frequency_penalty = 0.0f;
	p.presence_penalty = 0.05f;
	TT_EQ_INT(sample_after(&p, once, 1, pos), 0);
}

/* Feeds chunks, collects what is emitted; returns the feed result of the last chunk. */
static int feed_all(tern_stopper *s, const char *const *chunks, int n, char *out)
{
	int rc = 0;
	out[0] = 0;
	for (int i = 0; i < n && rc == 0; i++) {
		const char *e;
		size_t el;
		rc = tern_stopper_feed(s, chunks[i], strlen(chunks[i]), &e, &el, NULL);
		strncat(out, e, el);
	}
	return rc;
}

static void test_stop_strings(void)
{
	const char *stops[] = {"</s>", "STOP", "aab"};
	tern_stopper *s;
	char out[256];
	const char *e;
	size_t el;
	TT_REQUIRE(tern_stopper_create(stops, 3, &s, NULL) == 0);
	const char *c1[] = {"Hello </", "s> tail"};
	TT_EQ_INT(feed_all(s, c1, 2, out), 1);
	TT_CHECK(!strcmp(out, "Hello "));
	TT_EQ_INT(tern_stopper_matched(s), 0);
	tern_err err;
	TT_EQ_INT(tern_stopper_feed(s, "x", 1, &e, &el, &err), TERN_ESTATE);
	tern_stopper_free(s);

	/* Held text that turns out not to be a stop string is released. */
	TT_REQUIRE(tern_stopper_create(stops, 3, &s, NULL) == 0);
	TT_EQ_INT(tern_stopper_feed(s, "xa", 2, &e, &el, NULL), 0);
	TT_CHECK(el == 1 && e[0] == 'x'); /* "a" may start "aab" */
	TT_EQ_INT(tern_stopper_feed(s, "c", 1, &e, &el, NULL), 0);
	TT_CHECK(el == 2 && !memcmp(e, "ac", 2));
	tern_stopper_free(s);

	TT_REQUIRE(tern_stopper_create(stops, 3, &s, NULL) == 0);
	const char *c2[] = {"xy", "S", "TO", "x", " and ST", "OP!"};
	TT_EQ_INT(feed_all(s, c2, 6, out), 1);
	TT_CHECK(!strcmp(out, "xySTOx and "));
	TT_EQ_INT(tern_stopper_matched(s), 1);
	tern_stopper_free(s);

	/* Overlapping prefix: "aaab" one byte at a time stops with "a" shown. */
	TT_REQUIRE(tern_stopper_create(stops, 3, &s, NULL) == 0);
	const char *c3[] = {"a", "a", "a", "b"};
	TT_EQ_INT(feed_all(s, c3, 4, out), 1);
	TT_CHECK(!strcmp(out, "a"));
	tern_stopper_free(s);

	/* No stop: flush gives back what was withheld. */
	TT_REQUIRE(tern_stopper_create(stops, 3, &s, NULL) == 0);
	const char *c4[] = {"the end </"};
	TT_EQ_INT(feed_all(s, c4, 1, out), 0);
	TT_CHECK(!strcmp(out, "the end "));
	tern_stopper_flush(s, &e, &el);
	TT_CHECK(el == 2 && !memcmp(e, "</", 2));
	tern_stopper_free(s);

	/* Two stops in one chunk: the earlier one wins. */
	TT_REQUIRE(tern_stopper_create(stops, 3, &s, NULL) == 0);
	const char *c5[] = {"1 STOP 2 </s>"};
	TT_EQ_INT(feed_all(s, c5, 1, out), 1);
	TT_CHECK(!strcmp(out, "1 "));
	TT_EQ_INT(tern_stopper_matched(s), 1);
	tern_stopper_free(s);

	const char *empty[] = {""};
	TT_EQ_INT(tern_stopper_create(empty, 1, &s, &err), TERN_EINVAL);
	TT_REQUIRE(tern_stopper_create(NULL, 0, &s, NULL) == 0);
	TT_EQ_INT(tern_stopper_feed(s, "abc", 3, &e, &el, NULL), 0);
	TT_CHECK(el == 3);
	tern_stopper_free(s);
	tern_stopper_free(NULL);
}

/* Not a timing assertion: prints the cost of one draw over a 2B4T-size vocabulary. */
static void test_speed_report(void)
{
	enum { V = 128256 };
	float *l = malloc(V * sizeof *l);
	TT_REQUIRE(l);
	for (int i = 0; i < V; i++)
		l[i] = frand() * 20 - 10;
	const char *names[] = {"greedy", "defaults (top-k 40)", "top-p 0.95 only", "temperature only"};
	for (int m = 0; m < 4; m++) {
		tern_sampling_params p;
		tern_sampling_params_default(&p);
		p.seed = 1;
		if (m == 0)
			p.temperature = 0;
		if (m >= 2) {
			p.top_k = 0;
			p.min_p = 0;
		}
		if (m == 3)
			p.top_p = 1;
		tern_sampler *s;
		TT_REQUIRE(tern_sampler_create(&p, V, &s, NULL) == 0);
		const double t0 = cpu_s();
		int32_t t = 0;
		for (int i = 0; i < 20; i++)
			TT_CHECK(tern_sampler_sample(s, l, &t, NULL) == 0 && t >= 0 && t < V);
		printf("sample over %d logits, %s: %.3f ms CPU\n", V, names[m], (cpu_s() - t0) / 20 * 1e3);
		tern_sampler_free(s);
	}
	free(l);
}

TT_MAIN(TT_CASE(test_validation), TT_CASE(test_greedy), TT_CASE(test_topk1_is_greedy), TT_CASE(test_seed_reproduces), TT_CASE(test_skip_resumes),
	TT_CASE(test_temperature_distribution), TT_CASE(test_top_p_min_p), TT_CASE(test_repetition_penalty),
	TT_CASE(test_stop_strings), TT_CASE(test_speed_report))
