/* test_proto.c: the pipeline frame codec (proto/tern-frame.h). */
#include <stdlib.h>
#include <string.h>

#include "tern-frame.h"
#include "tern-test.h"

static long pack_act(uint8_t *buf, size_t cap, int rows, int n_embd, const float *x)
{
	uint64_t ids[16];
	uint32_t pos[16];
	for (int i = 0; i < rows; i++) {
		ids[i] = 100 + (uint64_t)i;
		pos[i] = (uint32_t)(i * 3);
	}
	Tern__V1__Frame f = TERN__V1__FRAME__INIT;
	f.kind = TERN__V1__FRAME_KIND__FRAME_KIND_ACTIVATIONS;
	f.step = 77;
	f.n_embd = (uint32_t)n_embd;
	f.n_seq_ids = (size_t)rows;
	f.seq_ids = ids;
	f.n_positions = (size_t)rows;
	f.positions = pos;
	return tern_frame_pack(&f, x, (size_t)rows * (size_t)n_embd * 4, buf, cap, NULL);
}

static void test_roundtrip(void)
{
	enum { ROWS = 5, D = 64 };
	float x[ROWS * D];
	for (int i = 0; i < ROWS * D; i++)
		x[i] = (float)i * 0.25f - 3.0f;
	uint8_t buf[4096];
	long n = pack_act(buf, sizeof buf, ROWS, D, x);
	TT_REQUIRE(n > 0);
	Tern__V1__Frame *h;
	const uint8_t *pl;
	size_t pn;
	tern_err e;
	TT_REQUIRE(tern_frame_unpack(buf, (size_t)n, &h, &pl, &pn, &e) == 0);
	TT_EQ_INT(h->kind, TERN__V1__FRAME_KIND__FRAME_KIND_ACTIVATIONS);
	TT_EQ_INT(h->step, 77);
	TT_EQ_INT(h->n_seq_ids, ROWS);
	TT_EQ_INT(h->seq_ids[4], 104);
	TT_EQ_INT(h->positions[4], 12);
	TT_EQ_INT(pn, sizeof x);
	TT_CHECK(memcmp(pl, x, sizeof x) == 0);
	tern__v1__frame__free_unpacked(h, NULL);
}

static void test_rejects_damage(void)
{
	enum { ROWS = 2, D = 8 };
	Tern__V1__Frame *h;
	const uint8_t *pl;
	size_t pn;
	tern_err e;
	float x[ROWS * D] = {0};
	uint8_t buf[1024];
	/* Too small an output buffer. */
	TT_EQ_INT(pack_act(buf, 20, ROWS, D, x), TERN_ERANGE);
	const long n = pack_act(buf, sizeof buf, ROWS, D, x);
	TT_REQUIRE(n > 0);
	/* Every truncation is rejected (payload length no longer matches). */
	for (long cut = 0; cut < n; cut++) {
		int rc = tern_frame_unpack(buf, (size_t)cut, &h, &pl, &pn, &e);
		TT_CHECKF(rc == TERN_EFORMAT, "cut at %ld gave %d", cut, rc);
		TT_CHECK(h == NULL);
	}
	/* Wrong magic. */
	buf[0] ^= 1;
	TT_EQ_INT(tern_frame_unpack(buf, (size_t)n, &h, &pl, &pn, &e), TERN_EFORMAT);
	TT_CHECK(strstr(e.msg, "magic") != NULL);
	buf[0] ^= 1;
	/* Header length beyond the message. */
	buf[4] = 0xff;
	buf[5] = 0xff;
	TT_EQ_INT(tern_frame_unpack(buf, (size_t)n, &h, &pl, &pn, &e), TERN_EFORMAT);
}

static void test_garbage_never_crashes(void)
{
	uint8_t buf[256];
	uint32_t s = 99;
	int accepted = 0;
	for (int it = 0; it < 20000; it++) {
		size_t len = (size_t)(s % sizeof buf);
		for (size_t i = 0; i < len; i++) {
			s = s * 1103515245u + 12345u;
			buf[i] = (uint8_t)(s >> 16);
		}
		if (len >= 8) { /* valid prefix, random header */
			buf[0] = 0x54, buf[1] = 0x52, buf[2] = 0x4e, buf[3] = 0x46;
			buf[4] = (uint8_t)(len - 8), buf[5] = buf[6] = buf[7] = 0;
		}
		Tern__V1__Frame *h;
		const uint8_t *pl;
		size_t pn;
		if (tern_frame_unpack(buf, len, &h, &pl, &pn, NULL) == 0) {
			accepted++;
			TT_CHECK(pl + pn == buf + len);
			tern__v1__frame__free_unpacked(h, NULL);
		}
	}
	fprintf(stderr, "  %d of 20000 random frames parsed\n", accepted);
}

TT_MAIN(TT_CASE(test_roundtrip), TT_CASE(test_rejects_damage), TT_CASE(test_garbage_never_crashes))
