/* model-src.c: the coordinator's model — tokenizer, head, stage ranges —
 * from a model file or a plan directory (see tern-coord.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "plan.pb-c.h"
#include "tern-coord.h"
#include "tern-float.h"
#include "tern-plan.h"
#include "tern-shard.h"

int tern_coord_tokenizer_from_source(tern_source *src, tern_tokenizer **out, tern_err *err)
{
	const tern_vocab *v;
	TERN_FORWARD_IF_ERROR(tern_source_vocab(src, &v, err));
	tern_tokenizer_desc d;
	tern_tokenizer_desc_init(&d);
	size_t *tl = malloc(((size_t)v->n_tokens + 1) * sizeof *tl);
	size_t *ml = malloc(((size_t)v->n_merges + 1) * sizeof *ml);
	int rc;
	if (!tl || !ml) {
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
		goto done;
	}
	for (int64_t i = 0; i < v->n_tokens; i++)
		tl[i] = v->token_len[i];
	for (int64_t i = 0; i < v->n_merges; i++)
		ml[i] = v->merge_len[i];
	d.model = v->model;
	d.pre = v->pre;
	d.n_tokens = (uint32_t)v->n_tokens;
	d.tokens = v->tokens;
	d.token_lens = tl;
	d.token_types = v->token_type;
	d.scores = v->scores;
	d.n_merges = (uint32_t)v->n_merges;
	d.merges = v->merges;
	d.merge_lens = v->merges ? ml : NULL;
	d.bos_id = v->bos_id;
	d.eos_id = v->eos_id;
	d.eot_id = v->eot_id;
	d.unk_id = v->unk_id;
	d.add_bos = v->add_bos;
	rc = tern_tokenizer_create(&d, out, err);
done:
	free(tl);
	free(ml);
	return rc;
}

/* ---- the coordinator's model: a file or a plan ----------------------------- */

static int tokenizer_from_plan(const Tern__V1__Plan *pm, const char *dir, tern_tokenizer **out, tern_err *err)
{
	const Tern__V1__Tokenizer *t = pm->tokenizer;
	TERN_RETURN_IF(!t || t->n_tokens == 0, err, TERN_EFORMAT, "%s: the plan carries no tokenizer", dir);
	TERN_RETURN_IF(t->n_token_types && t->n_token_types != t->n_tokens, err, TERN_EFORMAT,
		       "%s: %zu token types for %zu tokens", dir, t->n_token_types, t->n_tokens);
	TERN_RETURN_IF(t->n_scores && t->n_scores != t->n_tokens, err, TERN_EFORMAT, "%s: %zu scores for %zu tokens",
		       dir, t->n_scores, t->n_tokens);
	tern_tokenizer_desc d;
	tern_tokenizer_desc_init(&d);
	d.model = t->model;
	d.pre = t->pre && t->pre[0] ? t->pre : NULL;
	d.n_tokens = (uint32_t)t->n_tokens;
	d.tokens = (const char *const *)t->tokens;
	d.token_types = t->n_token_types ? t->token_types : NULL;
	d.scores = t->n_scores ? t->scores : NULL;
	d.n_merges = (uint32_t)t->n_merges;
	d.merges = (const char *const *)t->merges;
	d.bos_id = t->bos_id;
	d.eos_id = t->eos_id;
	d.eot_id = t->eot_id;
	d.unk_id = t->unk_id;
	d.add_bos = t->add_bos;
	return tern_tokenizer_create(&d, out, err);
}

/* The dense (n_vocab, n_embd) matrix of role r (F32/F16/BF16), its shape
 * checked against the model before any copy: in place in the shard's mapping
 * when it is stored raw and *mapped is non-NULL (set to 1 then), else read
 * into an owned aligned buffer. */
static int plan_matrix(const tern_coord_model *m, const tern_shard *sh, const char *path, tern_shard_role r,
		       void **out, tern_dtype *dtype, int *mapped, tern_err *err)
{
	const int i = tern_shard_find(sh, r, -1);
	const tern_shard_tensor *t = i >= 0 ? tern_shard_tensor_at(sh, i) : NULL;
	TERN_RETURN_IF(!t, err, TERN_EFORMAT, "%s: no %s", path, tern_shard_role_name(r));
	TERN_RETURN_IF(t->m != m->hp.n_vocab || t->k != m->hp.n_embd, err, TERN_EFORMAT,
		       "%s: %s is %d x %d, the model needs %d x %d", path, tern_shard_role_name(r), t->m, t->k,
		       m->hp.n_vocab, m->hp.n_embd);
	TERN_RETURN_IF(t->dtype != TERN_DTYPE_F32 && t->dtype != TERN_DTYPE_F16 && t->dtype != TERN_DTYPE_BF16, err,
		       TERN_EUNSUP, "%s: %s dtype %s", path, tern_shard_role_name(r), tern_dtype_name(t->dtype));
	if (mapped && !t->compression) {
		const void *p;
		TERN_FORWARD_IF_ERROR(tern_shard_map_tensor(sh, i, &p, err));
		*out = (void *)(uintptr_t)p; /* read-only: the head and the lookup only read it */
		*dtype = t->dtype;
		*mapped = 1;
		return 0;
	}
	void *buf = tern_aligned_alloc(t->raw_bytes ? t->raw_bytes : 1, TERN_ALIGN);
	TERN_RETURN_IF(!buf, err, TERN_ENOMEM, "out of memory for %s", tern_shard_role_name(r));
	const int rc = tern_shard_read_tensor(sh, i, buf, t->raw_bytes, NULL, err);
	if (rc < 0) {
		tern_aligned_free(buf);
		return rc;
	}
	*out = buf;
	*dtype = t->dtype;
	return 0;
}

static int head_from_plan(tern_coord_model *m, tern_err *err)
{
	const Tern__V1__Plan *pm = m->plan;
	const Tern__V1__FileRef *fr = NULL;
	TERN_RETURN_IF(!pm->coordinator || !pm->coordinator->shard, err, TERN_EFORMAT,
		       "%s: the plan has no coordinator shard", m->path);
	for (size_t i = 0; i < pm->n_files; i++)
		if (!strcmp(pm->files[i]->name, pm->coordinator->shard))
			fr = pm->files[i];
	TERN_RETURN_IF(!fr, err, TERN_EFORMAT, "%s: coordinator shard %s is not among the plan's files", m->path,
		       pm->coordinator->shard);
	char path[4200];
	TERN_RETURN_IF((size_t)snprintf(path, sizeof path, "%s/%s", m->path, fr->name) >= sizeof path, err,
		       TERN_EINVAL, "%s: path too long", m->path);
	tern_shard *sh = NULL;
	TERN_FORWARD_IF_ERROR(tern_shard_open(&sh, path, &fr->xxh64, err));
	float *norm = NULL;
	tern_dtype et = TERN_DTYPE_NONE, ot = TERN_DTYPE_NONE;
	const int in = tern_shard_find(sh, TERN_ROLE_OUTPUT_NORM, -1);
	const tern_shard_tensor *tn = in >= 0 ? tern_shard_tensor_at(sh, in) : NULL;
	int qi = -1, qt = -1, mapped = 0;
	/* the packed head's format and size are checked before any copy */
	int rc = tern_plan_packed_head(pm, sh, path, &qi, &qt, err);
	if (rc == 0)
		rc = plan_matrix(m, sh, path, TERN_ROLE_TOKEN_EMBD, &m->emb, &et, &mapped, err);
	/* an untied model's logits read its own output matrix, which a plan with
	 * a packed head does not store */
	if (rc == 0 && !m->hp.tied_embeddings && qi < 0)
		rc = plan_matrix(m, sh, path, TERN_ROLE_OUTPUT, &m->out_w, &ot, NULL, err);
	if (rc == 0 && qi >= 0) {
		const tern_shard_tensor *tq = tern_shard_tensor_at(sh, qi);
		if (!(m->qhead = tern_aligned_alloc(tq->raw_bytes, TERN_ALIGN)))
			rc = TERN_ERR(err, TERN_ENOMEM, "out of memory for the packed LM head");
		else
			rc = tern_shard_read_tensor(sh, qi, m->qhead, tq->raw_bytes, NULL, err);
	}
	if (rc == 0 && (!tn || tn->dtype != TERN_DTYPE_F32 || (int64_t)tn->m * tn->k != m->hp.n_embd))
		rc = TERN_ERR(err, TERN_EFORMAT, "%s: no output_norm of %d f32", path, m->hp.n_embd);
	if (rc == 0 && !(norm = malloc((size_t)m->hp.n_embd * sizeof *norm)))
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
	if (rc == 0)
		rc = tern_shard_read_tensor(sh, in, norm, (size_t)m->hp.n_embd * sizeof *norm, NULL, err);
	if (rc == 0) {
		tern_head_config cfg = {m->hp.n_vocab, m->hp.n_embd,   et,           m->emb, 0,
					norm,          m->hp.norm_eps, TERN_ISA_AUTO, TERN_HEAD_FILE, NULL, TERN_DTYPE_NONE, NULL, 0, 0};
		cfg.head = m->out_w;
		cfg.head_dtype = ot;
		if (qi >= 0) {
			/* the shard's bytes as they are: no quantizing at load */
			cfg.qformat = qt == TERN_QH_Q4 ? TERN_HEAD_Q4 : TERN_HEAD_Q8;
			cfg.qhead = m->qhead;
			cfg.packed_only = !m->hp.tied_embeddings;
		}
		rc = tern_head_create(&cfg, &m->head, err);
	}
	free(norm);
	if (mapped)
		m->coord_shard = sh; /* the mapping holds the embeddings */
	else
		tern_shard_close(sh);
	return rc;
}

int tern_coord_model_open(const char *path, tern_coord_model **out, tern_err *err)
{
	*out = NULL;
	tern_coord_model *m = calloc(1, sizeof *m);
	TERN_RETURN_IF(!m, err, TERN_ENOMEM, "out of memory");
	tern_path_expand_host(path, m->path, sizeof m->path);
	char manifest[4200];
	snprintf(manifest, sizeof manifest, "%s/%s", m->path, TERN_PLAN_MANIFEST);
	struct stat st;
	int rc;
	m->from_plan = stat(manifest, &st) == 0;
	if (m->from_plan) {
		rc = tern_plan_manifest_read(&m->plan, m->path, err);
		if (rc == 0)
			rc = tern_plan_manifest_hparams(m->plan, &m->hp, err);
		if (rc == 0) {
			m->plan_stages = (int)m->plan->n_stages;
			rc = tokenizer_from_plan(m->plan, m->path, &m->tok, err);
		}
		if (rc == 0)
			rc = head_from_plan(m, err);
	} else {
		rc = tern_source_open(&m->src, m->path, err);
		if (rc == 0) {
			m->hp = *tern_source_hparams(m->src);
			rc = tern_coord_tokenizer_from_source(m->src, &m->tok, err);
		}
		if (rc == 0)
			rc = tern_head_from_source(m->src, TERN_ISA_AUTO, &m->head, err);
	}
	if (rc < 0) {
		tern_coord_model_close(m);
		return rc;
	}
	*out = m;
	return 0;
}

void tern_coord_model_close(tern_coord_model *m)
{
	if (!m)
		return;
	tern_head_free(m->head);
	tern_tokenizer_free(m->tok);
	if (!m->coord_shard)
		tern_aligned_free(m->emb);
	tern_shard_close(m->coord_shard);
	tern_aligned_free(m->out_w);
	tern_aligned_free(m->qhead);
	tern_plan_manifest_free(m->plan);
	tern_source_close(m->src);
	free(m);
}

int tern_coord_model_layers(const tern_coord_model *m, int packing, tern_pool *pool, tern_layers *out,
			    tern_err *err)
{
	if (m->from_plan)
		return tern_layers_from_plan(out, m->plan, m->path, 0, m->hp.n_layer, TERN_LAYERS_PACKING_AS_STORED, err);
	TERN_RETURN_IF(packing < 0 || packing >= TERN_PACK_COUNT, err, TERN_EINVAL, "unknown packing %d", packing);
	return tern_layers_from_source_mt(out, m->src, 0, m->hp.n_layer, (tern_packing)packing, 0, pool, err);
}

int tern_coord_model_stage_range(const tern_coord_model *m, int s, int n_stages, int *first, int *count,
				 tern_err *err)
{
	if (m->from_plan) {
		TERN_RETURN_IF(n_stages != m->plan_stages, err, TERN_EINVAL,
			       "the plan has %d stages but mpirun started %d tern-node ranks", m->plan_stages,
			       n_stages);
		const Tern__V1__Stage *st = m->plan->stages[s - 1];
		*first = (int)st->first_layer;
		*count = (int)(st->last_layer - st->first_layer + 1);
		return 0;
	}
	TERN_RETURN_IF(n_stages > m->hp.n_layer, err, TERN_EINVAL, "%d stages for a model of %d layers", n_stages,
		       m->hp.n_layer);
	/* Equal layer counts: every layer of a model costs the same. */
	*first = (s - 1) * m->hp.n_layer / n_stages;
	*count = s * m->hp.n_layer / n_stages - *first;
	return 0;
}
