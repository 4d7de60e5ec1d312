/* plan-manifest.c: reading and checking a plan directory (tern-plan.h):
 * the manifest decoder with its consistency rules, and `verify`, which
 * checks every file's size and xxh64 and every shard's index against the
 * manifest, naming the first damaged file. */
#include "tern-plan.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#define XXH_STATIC_LINKING_ONLY /* XXH64_state_t on the stack */
#include <xxhash.h>

#include "plan-internal.h"
#include "tern-float.h"
#include "tern-progress.h"
#include "tern-shard.h"

void tern_plan_manifest_free(tern_plan_manifest *p)
{
	if (p)
		tern__v1__plan__free_unpacked(p, NULL);
}

static int safe_name(const char *s)
{
	if (!s || !*s || strlen(s) > 255 || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
		return 0;
	return strchr(s, '/') == NULL;
}

static int file_index(const Tern__V1__Plan *p, const char *name)
{
	for (size_t i = 0; i < p->n_files; i++)
		if (strcmp(p->files[i]->name, name) == 0)
			return (int)i;
	return -1;
}

int tern_plan_head_qh(int lm_head)
{
	switch (lm_head) {
	case TERN_PLAN_HEAD_Q8: return TERN_QH_Q8;
	case TERN_PLAN_HEAD_Q4: return TERN_QH_Q4;
	default: return -1;
	}
}

uint64_t tern_plan_head_packed_bytes(int lm_head, int n_vocab, int n_embd)
{
	const int qh = tern_plan_head_qh(lm_head);
	return qh >= 0 && n_vocab > 0 && n_embd > 0 ? tern_qh_bytes((tern_qh_type)qh, n_vocab, n_embd) : 0;
}

int tern_plan_packed_head(const tern_plan_manifest *p, const tern_shard *sh, const char *path, int *index, int *qh,
			  tern_err *err)
{
	*index = *qh = -1;
	const int lm = p->coordinator ? (int)p->coordinator->lm_head : TERN_PLAN_HEAD_STORED;
	const int i = tern_shard_find(sh, TERN_ROLE_HEAD_PACKED, -1);
	if (lm == TERN_PLAN_HEAD_STORED) {
		TERN_RETURN_IF(i >= 0, err, TERN_EFORMAT, "%s: a packed LM head the manifest does not name", path);
		return 0;
	}
	const int t = tern_plan_head_qh(lm);
	TERN_RETURN_IF(t < 0, err, TERN_EFORMAT, "%s: unknown LM head format %d", path, lm);
	TERN_RETURN_IF(i < 0, err, TERN_EFORMAT, "%s: the manifest names a %s LM head the shard lacks", path,
		       tern_qh_name((tern_qh_type)t));
	const tern_shard_tensor *st = tern_shard_tensor_at(sh, i);
	const int V = (int)p->hparams->n_vocab, d = (int)p->hparams->n_embd;
	const uint64_t groups = ((uint64_t)V + TERN_QH_GROUP - 1) / TERN_QH_GROUP;
	TERN_RETURN_IF(st->dtype != TERN_DTYPE_U8 || (uint64_t)st->m != groups ||
			       (uint64_t)st->k != tern_qh_group_bytes((tern_qh_type)t, d) ||
			       st->raw_bytes != tern_plan_head_packed_bytes(lm, V, d),
		       err, TERN_EFORMAT, "%s: %s LM head of %llu bytes (%d x %d), %d x %d needs %llu", path,
		       tern_qh_name((tern_qh_type)t), (unsigned long long)st->raw_bytes, st->m, st->k, V, d,
		       (unsigned long long)tern_plan_head_packed_bytes(lm, V, d));
	*index = i;
	*qh = t;
	return 0;
}

static int validate(const Tern__V1__Plan *p, const char *nm, tern_err *err)
{
	TERN_RETURN_IF(p->format_version != TERN_PLAN_FORMAT_VERSION, err, TERN_EUNSUP,
		       "%s: plan format version %u not supported (this build reads %d)", nm, p->format_version,
		       TERN_PLAN_FORMAT_VERSION);
	TERN_RETURN_IF(!p->hparams, err, TERN_EFORMAT, "%s: no model hyper-parameters", nm);
	tern_hparams hp;
	tern_err e2;
	TERN_RETURN_IF(tern_plan_manifest_hparams(p, &hp, &e2) < 0, err, TERN_EFORMAT, "%s: %s", nm, e2.msg);
	TERN_RETURN_IF(p->packing < TERN__V1__PACKING__PACKING_I2_S || p->packing > TERN__V1__PACKING__PACKING_TL2, err,
		       TERN_EFORMAT, "%s: unknown packing %d", nm, (int)p->packing);
	TERN_RETURN_IF(p->n_stages < 1 || p->n_stages > (size_t)hp.n_layer, err, TERN_EFORMAT,
		       "%s: %zu stages for %d layers", nm, p->n_stages, hp.n_layer);
	TERN_RETURN_IF(p->n_files > 65536, err, TERN_EFORMAT, "%s: %zu files", nm, p->n_files);
	for (size_t i = 0; i < p->n_files; i++) {
		TERN_RETURN_IF(!safe_name(p->files[i]->name), err, TERN_EFORMAT, "%s: bad file name '%s'", nm,
			       p->files[i]->name);
		TERN_RETURN_IF(file_index(p, p->files[i]->name) != (int)i, err, TERN_EFORMAT, "%s: file '%s' listed twice",
			       nm, p->files[i]->name);
	}
	uint32_t next = 0;
	for (size_t s = 0; s < p->n_stages; s++) {
		const Tern__V1__Stage *st = p->stages[s];
		TERN_RETURN_IF(st->index != s + 1, err, TERN_EFORMAT, "%s: stage %zu has index %u", nm, s + 1, st->index);
		TERN_RETURN_IF(st->first_layer != next || st->last_layer < st->first_layer ||
				       st->last_layer >= (uint32_t)hp.n_layer,
			       err, TERN_EFORMAT, "%s: stage %u layers %u-%u do not continue from layer %u", nm, st->index,
			       st->first_layer, st->last_layer, next);
		next = st->last_layer + 1;
		TERN_RETURN_IF(file_index(p, st->shard) < 0, err, TERN_EFORMAT, "%s: shard '%s' of stage %u not in files",
			       nm, st->shard, st->index);
	}
	TERN_RETURN_IF(next != (uint32_t)hp.n_layer, err, TERN_EFORMAT, "%s: stages cover layers 0-%u of %d", nm,
		       next - 1, hp.n_layer);
	TERN_RETURN_IF(!p->coordinator || file_index(p, p->coordinator->shard) < 0, err, TERN_EFORMAT,
		       "%s: the coordinator's shard is missing", nm);
	TERN_RETURN_IF(p->coordinator->lm_head != TERN_PLAN_HEAD_STORED && tern_plan_head_qh(p->coordinator->lm_head) < 0,
		       err, TERN_EFORMAT, "%s: unknown LM head format %d", nm, (int)p->coordinator->lm_head);
	const Tern__V1__Tokenizer *t = p->tokenizer;
	if (t && t->n_tokens) {
		const int64_t n = (int64_t)t->n_tokens;
		TERN_RETURN_IF((t->n_token_types && t->n_token_types != t->n_tokens) ||
				       (t->n_scores && t->n_scores != t->n_tokens),
			       err, TERN_EFORMAT, "%s: tokenizer arrays differ in length", nm);
		const int32_t ids[] = {t->bos_id, t->eos_id, t->eot_id, t->pad_id, t->unk_id};
		for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
			TERN_RETURN_IF(ids[i] < -1 || ids[i] >= n, err, TERN_EFORMAT,
				       "%s: special token id %d out of range", nm, ids[i]);
	}
	return 0;
}

int tern_plan_manifest_hparams(const tern_plan_manifest *p, tern_hparams *hp, tern_err *err)
{
	memset(hp, 0, sizeof *hp);
	const Tern__V1__HParams *h = p->hparams;
	TERN_RETURN_IF(!h, err, TERN_EFORMAT, "no hyper-parameters");
	TERN_RETURN_IF(!h->arch || strlen(h->arch) >= sizeof hp->arch, err, TERN_EFORMAT, "bad architecture name");
#define TOO_BIG(f) || h->f > 1u << 30
	TERN_RETURN_IF(0 TERN_PLAN_HPARAMS_U32(TOO_BIG), err, TERN_ERANGE, "absurd hyper-parameters");
#undef TOO_BIG
	snprintf(hp->arch, sizeof hp->arch, "%s", h->arch);
#define FROM_U32(f) hp->f = (int)h->f;
#define FROM_SAME(f) hp->f = h->f;
	TERN_PLAN_HPARAMS_U32(FROM_U32)
	TERN_PLAN_HPARAMS_SAME(FROM_SAME)
#undef FROM_U32
#undef FROM_SAME
	hp->tied_embeddings = h->tied_embeddings;
	return tern_hparams_validate(hp, err);
}

void tern_plan_pb_hparams(Tern__V1__HParams *h, const tern_hparams *hp)
{
	tern__v1__hparams__init(h);
	h->arch = (char *)hp->arch;
#define TO_U32(f) h->f = (uint32_t)hp->f;
#define TO_SAME(f) h->f = hp->f;
	TERN_PLAN_HPARAMS_U32(TO_U32)
	TERN_PLAN_HPARAMS_SAME(TO_SAME)
#undef TO_U32
#undef TO_SAME
	h->tied_embeddings = hp->tied_embeddings != 0;
}

int tern_plan_manifest_decode(tern_plan_manifest **out, const uint8_t *buf, size_t len, const char *name,
			      tern_err *err)
{
	*out = NULL;
	const char *nm = name ? name : TERN_PLAN_MANIFEST;
	TERN_RETURN_IF(len > TERN_PLAN_MANIFEST_MAX, err, TERN_ERANGE, "%s: manifest larger than %u bytes", nm,
		       TERN_PLAN_MANIFEST_MAX);
	Tern__V1__Plan *p = tern__v1__plan__unpack(NULL, len, buf);
	TERN_RETURN_IF(!p, err, TERN_EFORMAT, "%s: not a plan manifest (protobuf decoding failed)", nm);
	const int rc = validate(p, nm, err);
	if (rc < 0) {
		tern__v1__plan__free_unpacked(p, NULL);
		return rc;
	}
	*out = p;
	return 0;
}

char *tern_plan_path(const char *dir, const char *name)
{
	const size_t n = strlen(dir) + strlen(name) + 2;
	char *s = malloc(n);
	if (s)
		snprintf(s, n, "%s/%s", dir, name);
	return s;
}

int tern_plan_manifest_read(tern_plan_manifest **out, const char *dir, tern_err *err)
{
	*out = NULL;
	char *path = tern_plan_path(dir, TERN_PLAN_MANIFEST);
	TERN_RETURN_IF(!path, err, TERN_ENOMEM, "out of memory");
	char *buf;
	size_t len;
	int rc = tern_read_file(path, TERN_PLAN_MANIFEST_MAX, &buf, &len, err);
	if (rc == 0) {
		rc = tern_plan_manifest_decode(out, (const uint8_t *)buf, len, path, err);
		free(buf);
	}
	free(path);
	return rc;
}

/* Hashes a file in chunks, feeding the progress bar. */
static int hash_file(const char *path, uint64_t expect_size, uint64_t *h, tern_progress *pr, tern_err *err)
{
	FILE *f = fopen(path, "rb");
	TERN_RETURN_IF(!f, err, TERN_EIO, "%s: cannot open: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fileno(f), &st) != 0) {
		fclose(f);
		return TERN_ERR(err, TERN_EIO, "%s: cannot stat", path);
	}
	if ((uint64_t)st.st_size != expect_size) {
		fclose(f);
		return TERN_ERR(err, TERN_EFORMAT, "%s: damaged: %llu bytes, the plan says %llu (%s)", path,
				(unsigned long long)st.st_size, (unsigned long long)expect_size,
				(uint64_t)st.st_size < expect_size ? "truncated" : "extended");
	}
	const size_t chunk = 4u << 20;
	uint8_t *buf = malloc(chunk);
	if (!buf) {
		fclose(f);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	}
	XXH64_state_t s;
	XXH64_reset(&s, 0);
	size_t n;
	while ((n = fread(buf, 1, chunk, f)) > 0) {
		XXH64_update(&s, buf, n);
		tern_progress_add(pr, n);
	}
	const int bad = ferror(f);
	fclose(f);
	free(buf);
	TERN_RETURN_IF(bad, err, TERN_EIO, "%s: read error", path);
	*h = XXH64_digest(&s);
	return 0;
}

/* A shard's header and index against its place in the plan. */
static int check_shard(const char *path, const Tern__V1__Plan *p, const Tern__V1__Stage *st, tern_err *err)
{
	tern_shard *sh;
	TERN_FORWARD_IF_ERROR(tern_shard_open(&sh, path, NULL, err));
	int rc = 0, first, last;
	tern_shard_layers(sh, &first, &last);
	const int want_stage = st ? (int)st->index : 0;
	if (tern_shard_stage(sh) != want_stage || (st && (first != (int)st->first_layer || last != (int)st->last_layer))) {
		rc = TERN_ERR(err, TERN_EFORMAT, "%s: shard is for stage %d layers %d-%d, the plan says stage %d", path,
			      tern_shard_stage(sh), first, last, want_stage);
	} else if (st && (int)tern_shard_packing(sh) != (int)p->packing - 1) {
		rc = TERN_ERR(err, TERN_EFORMAT, "%s: shard packed as %s, the plan says otherwise", path,
			      tern_packing_name(tern_shard_packing(sh)));
	} else if (st) {
		tern_hparams hp;
		rc = tern_plan_manifest_hparams(p, &hp, err);
		for (int l = first; l <= last && rc == 0; l++)
			for (int r = 0; r < TERN_SHARD_N_PROJ + TERN_LAYER_NORMS && rc == 0; r++) {
				const tern_shard_role role = r < TERN_SHARD_N_PROJ
								 ? (tern_shard_role)r
								 : tern_shard_norm_role((tern_norm_kind)(r - TERN_SHARD_N_PROJ));
				if (r >= TERN_SHARD_N_PROJ &&
				    !tern_shard_norm_present(&hp, (tern_norm_kind)(r - TERN_SHARD_N_PROJ)))
					continue;
				if (tern_shard_find(sh, role, l) < 0)
					rc = TERN_ERR(err, TERN_EFORMAT, "%s: layer %d has no %s", path, l,
						      tern_shard_role_name(role));
			}
		if (rc == 0 && tern_shard_n_tensors(sh) != (last - first + 1) * tern_shard_layer_tensors(&hp))
			rc = TERN_ERR(err, TERN_EFORMAT, "%s: unexpected extra tensors", path);
	} else {
		int qi = -1, qt;
		if (tern_shard_find(sh, TERN_ROLE_TOKEN_EMBD, -1) < 0 || tern_shard_find(sh, TERN_ROLE_OUTPUT_NORM, -1) < 0)
			rc = TERN_ERR(err, TERN_EFORMAT, "%s: coordinator shard lacks embeddings or output norm", path);
		else
			rc = tern_plan_packed_head(p, sh, path, &qi, &qt, err);
		/* an untied model's head as stored, unless the packed head replaces it */
		if (rc == 0 && !p->hparams->tied_embeddings && qi < 0 && tern_shard_find(sh, TERN_ROLE_OUTPUT, -1) < 0)
			rc = TERN_ERR(err, TERN_EFORMAT, "%s: coordinator shard lacks the (untied) output head", path);
	}
	tern_shard_close(sh);
	return rc;
}

int tern_plan_verify(const char *dir, int show_progress, tern_err *err)
{
	tern_plan_manifest *p;
	TERN_FORWARD_IF_ERROR(tern_plan_manifest_read(&p, dir, err));
	uint64_t total = 0;
	for (size_t i = 0; i < p->n_files; i++)
		total += p->files[i]->size;
	tern_progress pr;
	tern_progress_start(&pr, "verify", total, show_progress);
	int rc = 0;
	for (size_t i = 0; i < p->n_files && rc == 0; i++) {
		const Tern__V1__FileRef *fr = p->files[i];
		char *path = tern_plan_path(dir, fr->name);
		if (!path) {
			rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
			break;
		}
		uint64_t h = 0;
		rc = hash_file(path, fr->size, &h, &pr, err);
		if (rc == 0 && h != fr->xxh64)
			rc = TERN_ERR(err, TERN_ECHECKSUM,
				      "%s: damaged: checksum mismatch (xxh64 %016llx, the plan says %016llx)", path,
				      (unsigned long long)h, (unsigned long long)fr->xxh64);
		if (rc == 0) {
			const Tern__V1__Stage *st = NULL;
			int is_shard = strcmp(fr->name, p->coordinator->shard) == 0;
			for (size_t s = 0; s < p->n_stages; s++)
				if (strcmp(p->stages[s]->shard, fr->name) == 0) {
					st = p->stages[s];
					is_shard = 1;
				}
			if (is_shard)
				rc = check_shard(path, p, st, err);
		}
		free(path);
	}
	tern_progress_finish(&pr);
	tern_plan_manifest_free(p);
	return rc;
}
