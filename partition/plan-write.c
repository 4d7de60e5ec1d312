/* plan-write.c: cutting a model into a plan directory (tern-plan.h): plans
 * the layer groups, packs each stage's projections into the kernel layout
 * with the scales of its own groups, writes one shard per stage plus the
 * coordinator's, then the manifest (last, so a directory with a manifest is
 * complete). */
#include "tern-plan.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#define XXH_STATIC_LINKING_ONLY /* XXH64_state_t on the stack */
#include <xxhash.h>

#include "plan-internal.h"
#include "tern-float.h"
#include "tern-gguf.h"
#include "tern-progress.h"
#include "tern-shard.h"
#include "tern-source.h"

#define COORD_SHARD "coord.shard"

typedef struct {
	char name[32];
	uint64_t size, xxh64;
} file_rec;

static int write_stage(tern_source *src, const tern_plan_opts *o, int group_rows, const tern_plan_stage *st,
		       const char *path, int zlevel, tern_progress *pr, file_rec *rec, tern_err *err)
{
	const tern_hparams *hp = tern_source_hparams(src);
	const int nl = st->last_layer - st->first_layer + 1;
	tern_shard_writer *w;
	TERN_FORWARD_IF_ERROR(tern_shard_writer_open(&w, path, st->index, st->first_layer, st->last_layer, o->packing,
						     nl * tern_shard_layer_tensors(hp), zlevel, err));
	tern_shard_writer_set_progress(w, pr);
	size_t wmax = 0;
	int mmax = hp->n_ff > hp->n_embd ? hp->n_ff : hp->n_embd;
	for (int p = 0; p < TERN_PROJ_COUNT; p++) {
		int m, k;
		tern_proj_shape(hp, (tern_proj)p, &m, &k);
		if ((size_t)m * (size_t)k > wmax)
			wmax = (size_t)m * (size_t)k;
	}
	int8_t *wbuf = malloc(wmax);
	float *scales = malloc(sizeof(float) * (size_t)mmax);
	int rc = 0;
	if (!wbuf || !scales) {
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
		goto fail;
	}
	for (int l = st->first_layer; l <= st->last_layer; l++) {
		for (int p = 0; p < TERN_PROJ_COUNT; p++) {
			int m, k, gr = 0;
			tern_proj_shape(hp, (tern_proj)p, &m, &k);
			if (tern_source_group_scaled(src)) {
				const uint8_t *blocks;
				size_t bytes;
				if ((rc = tern_source_gq(src, l, (tern_proj)p, &blocks, &bytes, err)) < 0 ||
				    (rc = tern_shard_write_gq(w, (tern_shard_role)p, l, m, k, blocks, err)) < 0)
					goto fail;
				continue;
			}
			if ((rc = tern_source_ternary(src, l, (tern_proj)p, group_rows, wbuf, scales, &gr, err)) < 0)
				goto fail;
			tern_matrix mat;
			memset(&mat, 0, sizeof mat);
			if ((rc = tern_matrix_pack(&mat, o->packing, wbuf, m, k, scales, gr, err)) < 0)
				goto fail;
			rc = tern_shard_write_matrix(w, (tern_shard_role)p, l, &mat, err);
			tern_matrix_free(&mat);
			if (rc < 0)
				goto fail;
		}
		for (int n = 0; n < TERN_LAYER_NORMS; n++) {
			if (!tern_shard_norm_present(hp, (tern_norm_kind)n))
				continue;
			const int len = tern_norm_len(hp, (tern_norm_kind)n);
			if ((rc = tern_source_norm(src, l, (tern_norm_kind)n, scales, err)) < 0 ||
			    (rc = tern_shard_write_dense(w, tern_shard_norm_role((tern_norm_kind)n), l, TERN_DTYPE_F32,
							 len, 1, scales, err)) < 0)
				goto fail;
		}
	}
	free(wbuf);
	free(scales);
	return tern_shard_writer_close(w, &rec->size, &rec->xxh64, err);
fail:
	free(wbuf);
	free(scales);
	tern_shard_writer_abort(w);
	return rc;
}

/* The packed quantized head of the dense matrix v (tern_qh_pack_rows, the
 * layout the coordinator's head reads as it is), as role HEAD_PACKED. */
static int write_packed_head(tern_shard_writer *w, const tern_dense_view *v, int lm_head, int n_embd, tern_err *err)
{
	const tern_qh_type t = (tern_qh_type)tern_plan_head_qh(lm_head);
	const int dt = v->type == TERN_DTYPE_F32 ? TERN_DOT_F32 : v->type == TERN_DTYPE_F16 ? TERN_DOT_F16 : TERN_DOT_BF16;
	const int groups = (int)((v->rows + TERN_QH_GROUP - 1) / TERN_QH_GROUP);
	const size_t gb = tern_qh_group_bytes(t, n_embd);
	TERN_RETURN_IF(gb > INT32_MAX, err, TERN_ERANGE, "LM head rows too wide to pack (%d)", n_embd);
	uint8_t *q = tern_aligned_alloc(tern_qh_bytes(t, v->rows, n_embd), TERN_ALIGN);
	float *scratch = malloc((size_t)TERN_QH_GROUP * (size_t)n_embd * sizeof(float));
	int rc = 0;
	if (!q || !scratch)
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory for the %s LM head", tern_qh_name(t));
	if (rc == 0) {
		tern_qh_pack_rows(t, v->data, (tern_dot_type)dt, v->row_bytes, v->rows, n_embd, 0, groups, scratch, q);
		rc = tern_shard_write_dense(w, TERN_ROLE_HEAD_PACKED, -1, TERN_DTYPE_U8, groups, (int)gb, q, err);
	}
	tern_aligned_free(q);
	free(scratch);
	return rc;
}

static int write_coord(tern_source *src, const tern_plan_opts *o, const char *path, int zlevel, tern_progress *pr,
		       file_rec *rec, tern_err *err)
{
	const tern_hparams *hp = tern_source_hparams(src);
	const int packed = tern_plan_head_qh(o->lm_head) >= 0;
	tern_shard_writer *w;
	TERN_FORWARD_IF_ERROR(tern_shard_writer_open(&w, path, 0, -1, -1, o->packing, 4, zlevel, err));
	tern_shard_writer_set_progress(w, pr);
	float *norm = malloc(sizeof(float) * (size_t)hp->n_embd);
	int rc = 0;
	if (!norm) {
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
		goto fail;
	}
	for (int d = TERN_DENSE_TOKEN_EMBD; d <= TERN_DENSE_OUTPUT; d++) {
		if (d == TERN_DENSE_OUTPUT && hp->tied_embeddings)
			break;
		tern_dense_view v;
		if ((rc = tern_source_dense(src, (tern_dense_kind)d, &v, err)) < 0)
			goto fail;
		if (tern_plan_embd_elem_bytes(v.type) == 0 || v.rows != hp->n_vocab || v.cols != hp->n_embd) {
			rc = TERN_ERR(err, TERN_EUNSUP, "%s: %s stored as %s %lld x %lld, not F32/F16/BF16 %d x %d",
				      tern_source_path(src), tern_dense_gguf((tern_dense_kind)d), tern_dtype_name(v.type),
				      (long long)v.rows, (long long)v.cols, hp->n_vocab, hp->n_embd);
			goto fail;
		}
		/* the head matrix: the embeddings when tied, the output matrix when not */
		const int is_head = d == TERN_DENSE_OUTPUT || hp->tied_embeddings;
		if (is_head && o->lm_head_f16 && v.type != TERN_DTYPE_F16) {
			rc = TERN_ERR(err, TERN_EINVAL, "--lm-head f16: %s stores %s as %s (use --lm-head file)",
				      tern_source_path(src), tern_dense_gguf((tern_dense_kind)d), tern_dtype_name(v.type));
			goto fail;
		}
		if (is_head && packed && (rc = write_packed_head(w, &v, o->lm_head, hp->n_embd, err)) < 0)
			goto fail;
		/* the token lookup always reads token_embd; an untied output matrix
		 * as stored only when no packed head replaces it */
		if (d == TERN_DENSE_OUTPUT && packed)
			break;
		if ((rc =
			 tern_shard_write_dense(w, d == TERN_DENSE_TOKEN_EMBD ? TERN_ROLE_TOKEN_EMBD : TERN_ROLE_OUTPUT,
						-1, v.type, (int)v.rows, (int)v.cols, v.data, err)) < 0)
			goto fail;
	}
	if ((rc = tern_source_norm(src, 0, TERN_NORM_OUTPUT, norm, err)) < 0 ||
	    (rc = tern_shard_write_dense(w, TERN_ROLE_OUTPUT_NORM, -1, TERN_DTYPE_F32, hp->n_embd, 1, norm, err)) < 0)
		goto fail;
	free(norm);
	return tern_shard_writer_close(w, &rec->size, &rec->xxh64, err);
fail:
	free(norm);
	tern_shard_writer_abort(w);
	return rc;
}

/* The manifest borrows every string and array from the source and the
 * layout; only the message structs themselves are allocated here. */
static int write_manifest(const char *dir, tern_source *src, const tern_plan_model *pm, const tern_plan_opts *o,
			  int group_rows, const tern_cluster *c, const tern_plan_layout *lay, const file_rec *recs,
			  int n_recs, tern_err *err)
{
	const tern_hparams *hp = &pm->hp;
	const int S = lay->n_stages;
	Tern__V1__Plan plan;
	tern__v1__plan__init(&plan);
	Tern__V1__Tokenizer tok;
	tern__v1__tokenizer__init(&tok);
	Tern__V1__Coordinator co;
	tern__v1__coordinator__init(&co);
	Tern__V1__Stage *stages = calloc((size_t)S, sizeof *stages);
	Tern__V1__Stage **stage_ptrs = calloc((size_t)S, sizeof *stage_ptrs);
	Tern__V1__FileRef *files = calloc((size_t)n_recs, sizeof *files);
	Tern__V1__FileRef **file_ptrs = calloc((size_t)n_recs, sizeof *file_ptrs);
	Tern__V1__HParams h;
	tern_plan_pb_hparams(&h, hp);
	char **merges = NULL;
	uint8_t *buf = NULL;
	char *tmp = tern_plan_path(dir, TERN_PLAN_MANIFEST ".tmp"), *final = tern_plan_path(dir, TERN_PLAN_MANIFEST);
	char plan_id[17], tool[64];
	int rc = 0;
	if (!stages || !stage_ptrs || !files || !file_ptrs || !tmp || !final) {
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
		goto out;
	}
	/* plan id: the layout and every file's checksum */
	XXH64_state_t id;
	XXH64_reset(&id, 0);
	for (int s = 0; s < S; s++) {
		const int32_t r[3] = {lay->stages[s].first_layer, lay->stages[s].last_layer, c->domains[s].numa};
		XXH64_update(&id, r, sizeof r);
	}
	for (int i = 0; i < n_recs; i++) {
		XXH64_update(&id, recs[i].name, strlen(recs[i].name));
		XXH64_update(&id, &recs[i].xxh64, sizeof recs[i].xxh64);
		tern__v1__file_ref__init(&files[i]);
		files[i].name = (char *)recs[i].name;
		files[i].size = recs[i].size;
		files[i].xxh64 = recs[i].xxh64;
		file_ptrs[i] = &files[i];
	}
	snprintf(plan_id, sizeof plan_id, "%016llx", (unsigned long long)XXH64_digest(&id));
	snprintf(tool, sizeof tool, "tern-partition 0.1");
	for (int s = 0; s < S; s++) {
		const tern_plan_stage *ls = &lay->stages[s];
		const tern_cluster_domain *dm = &c->domains[ls->domain];
		Tern__V1__Stage *st = &stages[s];
		tern__v1__stage__init(st);
		st->index = (uint32_t)ls->index;
		st->host = (char *)c->hosts[dm->host].name;
		st->address = (char *)c->hosts[dm->host].address;
		st->numa = dm->numa;
		st->first_layer = (uint32_t)ls->first_layer;
		st->last_layer = (uint32_t)ls->last_layer;
		st->weight_bytes = ls->weight_bytes;
		st->kv_bytes = ls->kv_bytes;
		st->work_bytes = ls->work_bytes;
		st->token_bytes = ls->token_bytes;
		st->token_share = ls->token_share;
		st->memory_bytes = dm->mem_bytes;
		st->cores = (uint32_t)dm->cores;
		st->shard = (char *)recs[s].name;
		stage_ptrs[s] = st;
	}
	const tern_cluster_domain *cd = &c->domains[lay->coord_domain];
	co.host = (char *)c->hosts[cd->host].name;
	co.address = (char *)c->hosts[cd->host].address;
	co.numa = cd->numa;
	co.weight_bytes = lay->coord_weight_bytes;
	co.work_bytes = lay->coord_work_bytes;
	co.token_bytes = lay->coord_token_bytes;
	co.token_share = lay->coord_share;
	co.shard = (char *)recs[S].name;
	co.embd_type = tern_dtype_ggml(pm->embd_type);
	co.stage_domain = (uint32_t)lay->coord_stage;
	co.lm_head = (Tern__V1__LmHead)o->lm_head;

	const tern_vocab *v = NULL;
	tern_err verr;
	if (tern_source_vocab(src, &v, &verr) == 0 && v->n_tokens > 0) {
		tok.model = (char *)v->model;
		tok.pre = (char *)v->pre;
		tok.n_tokens = (size_t)v->n_tokens;
		tok.tokens = (char **)v->tokens;
		if (v->token_type) {
			tok.n_token_types = (size_t)v->n_tokens;
			tok.token_types = (int32_t *)v->token_type;
		}
		if (v->scores) {
			tok.n_scores = (size_t)v->n_tokens;
			tok.scores = (float *)v->scores;
		}
		if (v->merges && v->n_merges > 0) {
			tok.n_merges = (size_t)v->n_merges;
			tok.merges = (char **)v->merges;
		}
		tok.bos_id = v->bos_id;
		tok.eos_id = v->eos_id;
		tok.eot_id = v->eot_id;
		tok.pad_id = v->pad_id;
		tok.unk_id = v->unk_id;
		tok.add_bos = v->add_bos != 0;
		tok.add_eos = v->add_eos != 0;
		const struct tern_gguf *g = tern_source_gguf(src);
		const char *tmpl = NULL;
		uint64_t tlen = 0;
		if (g && tern_gguf_get_str(g, "tokenizer.chat_template", &tmpl, &tlen, NULL) == 0 && tmpl)
			tok.chat_template = (char *)tmpl;
		plan.tokenizer = &tok;
	} else {
		TERN_LOGW("partition", "%s: no tokenizer (%s); the plan carries none", tern_source_path(src),
			  v ? "empty" : verr.msg);
	}
	plan.format_version = TERN_PLAN_FORMAT_VERSION;
	plan.plan_id = plan_id;
	plan.hparams = &h;
	plan.packing = (Tern__V1__Packing)(o->packing + 1);
	plan.group_rows = (uint32_t)group_rows;
	plan.n_seqs = (uint32_t)o->n_seqs;
	plan.n_ctx = (uint32_t)o->n_ctx;
	plan.kv_type = (char *)tern_dtype_name(o->kv_type);
	plan.n_stages = (size_t)S;
	plan.stages = stage_ptrs;
	plan.coordinator = &co;
	plan.n_files = (size_t)n_recs;
	plan.files = file_ptrs;
	/* the model's base name ("dir/" of an HF checkpoint keeps its path) */
	const char *base = strrchr(tern_source_path(src), '/');
	plan.source = (char *)(base && base[1] ? base + 1 : tern_source_path(src));
	plan.tool = tool;

	const size_t len = tern__v1__plan__get_packed_size(&plan);
	buf = malloc(len ? len : 1);
	if (!buf) {
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
		goto out;
	}
	tern__v1__plan__pack(&plan, buf);
	FILE *f = fopen(tmp, "wb");
	if (!f) {
		rc = TERN_ERR(err, TERN_EIO, "%s: cannot create: %s", tmp, strerror(errno));
		goto out;
	}
	const int ok = fwrite(buf, 1, len, f) == len;
	if (fclose(f) != 0 || !ok || rename(tmp, final) != 0) {
		remove(tmp);
		rc = TERN_ERR(err, TERN_EIO, "%s: write failed: %s", final, strerror(errno));
	}
out:
	free(stages);
	free(stage_ptrs);
	free(files);
	free(file_ptrs);
	free(merges);
	free(buf);
	free(tmp);
	free(final);
	return rc;
}

int tern_plan_write(const char *model_path, const tern_plan_opts *o, const tern_cluster *c, const char *dir,
		    int zlevel, int show_progress, FILE *table, tern_err *err)
{
	tern_source *src = NULL;
	TERN_FORWARD_IF_ERROR(tern_source_open(&src, model_path, err));
	tern_plan_model pm;
	memset(&pm, 0, sizeof pm);
	pm.hp = *tern_source_hparams(src);
	tern_plan_layout lay;
	memset(&lay, 0, sizeof lay);
	file_rec *recs = NULL;
	char *path = NULL;
	int rc = 0;
	tern_dense_view ev;
	if ((rc = tern_source_dense(src, TERN_DENSE_TOKEN_EMBD, &ev, err)) < 0)
		goto out;
	pm.embd_type = ev.type;
	if (o->lm_head != TERN_PLAN_HEAD_STORED && tern_plan_head_qh(o->lm_head) < 0) {
		rc = TERN_ERR(err, TERN_EINVAL, "unknown LM head format %d", o->lm_head);
		goto out;
	}
	pm.lm_head = o->lm_head;
	const tern_vocab *v;
	tern_err verr;
	if (tern_source_vocab(src, &v, &verr) == 0) {
		uint64_t tb = (uint64_t)v->n_tokens * 32 + (uint64_t)v->n_merges * 16;
		for (int64_t i = 0; i < v->n_tokens; i++)
			tb += v->token_len[i];
		for (int64_t i = 0; v->merge_len && i < v->n_merges; i++)
			tb += v->merge_len[i];
		pm.tokenizer_bytes = tb;
	}
	/* pre-quantized weights keep their own per-tensor scale */
	const int group_rows = tern_source_prequantized(src) ? 0 : o->group_rows;
	if (o->group_rows > 0 && !group_rows)
		TERN_LOGW("partition", "%s: weights are already ternary with one scale per tensor; --group-rows ignored",
			  model_path);
	tern_plan_opts eo = *o;
	eo.group_rows = group_rows;
	if ((rc = tern_plan_compute(&pm, &eo, c, &lay, NULL, err)) < 0)
		goto out;
	if (table)
		tern_plan_print_table(table, &pm, &eo, c, &lay);
	if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
		rc = TERN_ERR(err, TERN_EIO, "%s: cannot create directory: %s", dir, strerror(errno));
		goto out;
	}
	/* an old manifest must not describe shards this run overwrites */
	if (!(path = tern_plan_path(dir, TERN_PLAN_MANIFEST))) {
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
		goto out;
	}
	if (remove(path) != 0 && errno != ENOENT) {
		rc = TERN_ERR(err, TERN_EIO, "%s: cannot remove the old manifest: %s", path, strerror(errno));
		goto out;
	}
	const int S = lay.n_stages;
	recs = calloc((size_t)S + 1, sizeof *recs);
	if (!recs) {
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
		goto out;
	}
	uint64_t total = lay.coord_weight_bytes;
	for (int s = 0; s < S; s++)
		total += lay.stages[s].weight_bytes;
	tern_progress pr;
	tern_progress_start(&pr, "partition", total, show_progress);
	for (int s = 0; s <= S && rc == 0; s++) {
		if (s < S)
			snprintf(recs[s].name, sizeof recs[s].name, "stage-%03d.shard", s + 1);
		else
			snprintf(recs[s].name, sizeof recs[s].name, COORD_SHARD);
		free(path);
		if (!(path = tern_plan_path(dir, recs[s].name))) {
			rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
			break;
		}
		if (s < S)
			rc = write_stage(src, &eo, group_rows, &lay.stages[s], path, zlevel, &pr, &recs[s], err);
		else
			rc = write_coord(src, &eo, path, zlevel, &pr, &recs[s], err);
	}
	tern_progress_finish(&pr);
	if (rc == 0)
		rc = write_manifest(dir, src, &pm, &eo, group_rows, c, &lay, recs, S + 1, err);
out:
	free(path);
	free(recs);
	tern_plan_layout_free(&lay);
	tern_source_close(src);
	return rc;
}
