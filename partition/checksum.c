/* checksum.c: XXH64 (see tern-checksum.h). */
#include "tern-checksum.h"

#include <string.h>

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL

static inline uint64_t rotl(uint64_t x, int r)
{
	return (x << r) | (x >> (64 - r));
}

/* Reads little-endian whatever the host order, without alignment demands. */
static inline uint64_t rd64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static inline uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t round64(uint64_t acc, uint64_t in)
{
	acc += in * P2;
	acc = rotl(acc, 31);
	return acc * P1;
}

static inline uint64_t merge64(uint64_t h, uint64_t v)
{
	h ^= round64(0, v);
	return h * P1 + P4;
}

static uint64_t finish(uint64_t h, const uint8_t *p, size_t len)
{
	while (len >= 8) {
		h ^= round64(0, rd64(p));
		h = rotl(h, 27) * P1 + P4;
		p += 8;
		len -= 8;
	}
	if (len >= 4) {
		h ^= (uint64_t)rd32(p) * P1;
		h = rotl(h, 23) * P2 + P3;
		p += 4;
		len -= 4;
	}
	while (len > 0) {
		h ^= (uint64_t)(*p) * P5;
		h = rotl(h, 11) * P1;
		p++;
		len--;
	}
	h ^= h >> 33;
	h *= P2;
	h ^= h >> 29;
	h *= P3;
	h ^= h >> 32;
	return h;
}

static uint64_t converge(const uint64_t v[4])
{
	uint64_t h = rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18);
	for (int i = 0; i < 4; i++)
		h = merge64(h, v[i]);
	return h;
}

static void stripe(uint64_t v[4], const uint8_t *p)
{
	v[0] = round64(v[0], rd64(p));
	v[1] = round64(v[1], rd64(p + 8));
	v[2] = round64(v[2], rd64(p + 16));
	v[3] = round64(v[3], rd64(p + 24));
}

void tern_xxh64_init(tern_xxh64 *s, uint64_t seed)
{
	memset(s, 0, sizeof *s);
	s->seed = seed;
	s->v[0] = seed + P1 + P2;
	s->v[1] = seed + P2;
	s->v[2] = seed;
	s->v[3] = seed - P1;
}

void tern_xxh64_update(tern_xxh64 *s, const void *data, size_t len)
{
	const uint8_t *p = data;
	s->total_len += len;
	if (s->buf_len) {
		size_t take = 32 - s->buf_len;
		if (take > len)
			take = len;
		memcpy(s->buf + s->buf_len, p, take);
		s->buf_len += (uint32_t)take;
		p += take;
		len -= take;
		if (s->buf_len < 32)
			return;
		stripe(s->v, s->buf);
		s->buf_len = 0;
	}
	while (len >= 32) {
		stripe(s->v, p);
		p += 32;
		len -= 32;
	}
	if (len) {
		memcpy(s->buf, p, len);
		s->buf_len = (uint32_t)len;
	}
}

uint64_t tern_xxh64_digest(const tern_xxh64 *s)
{
	uint64_t h = s->total_len >= 32 ? converge(s->v) : s->seed + P5;
	h += s->total_len;
	return finish(h, s->buf, s->buf_len);
}

uint64_t tern_xxh64_hash(const void *p, size_t len, uint64_t seed)
{
	tern_xxh64 s;
	tern_xxh64_init(&s, seed);
	if (len)
		tern_xxh64_update(&s, p, len);
	return tern_xxh64_digest(&s);
}
