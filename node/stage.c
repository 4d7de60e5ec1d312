/* stage.c: a pipeline stage's load and frame loop (see tern-stage.h). */
#include "tern-stage.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern-link.h"
#include "plan.pb-c.h"
#include "tern-plan.h"
#include "tern-shard.h"
#include "tern-source.h"

/* ---- loading -------------------------------------------------------------- */

/* Layers of this stage from a plan directory: the manifest says which shard
 * and its xxh64; the shard holds the weights already packed, with their own
 * quantization groups. The matrices and norms are moved into `out` (loaded
 * with the default aligned allocator, so tern_layers_free releases them). */
static int load_from_plan(const char *dir, int stage, tern_layers *out, tern_err *err)
{
	tern_plan_manifest *pm = NULL;
	tern_shard *sh = NULL;
	tern_shard_layer *sl = NULL;
	int n = 0, rc;
	TERN_FORWARD_IF_ERROR(tern_plan_manifest_read(&pm, dir, err));
	const Tern__V1__Stage *st = NULL;
	for (size_t i = 0; i < pm->n_stages; i++)
		if (pm->stages[i]->index == (uint32_t)stage)
			st = pm->stages[i];
	const Tern__V1__FileRef *fr = NULL;
	for (size_t i = 0; st && i < pm->n_files; i++)
		if (!strcmp(pm->files[i]->name, st->shard))
			fr = pm->files[i];
	char path[4096];
	if (!st || !fr) {
		rc = TERN_ERR(err, TERN_EFORMAT, "%s: the plan has no shard for stage %d", dir, stage);
		goto done;
	}
	if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, fr->name) >= sizeof path) {
		rc = TERN_ERR(err, TERN_EINVAL, "%s: path too long", dir);
		goto done;
	}
	rc = tern_plan_manifest_hparams(pm, &out->hp, err);
	if (rc == 0)
		rc = tern_shard_open(&sh, path, &fr->xxh64, err);
	if (rc == 0)
		rc = tern_shard_load_layers(sh, NULL, &sl, &n, err);
	if (rc < 0)
		goto done;
	out->l = calloc((size_t)n, sizeof *out->l);
	if (!out->l) {
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
		goto done;
	}
	out->first = (int)st->first_layer;
	out->n = n;
	out->packing = tern_shard_packing(sh);
	for (int i = 0; i < n; i++) {
		for (int p = 0; p < TERN_PROJ_COUNT; p++) {
			out->l[i].proj[p] = sl[i].proj[p];
			out->l[i].proj[p].owns_data = 1;
			memset(&sl[i].proj[p], 0, sizeof sl[i].proj[p]);
		}
		out->l[i].norm[TERN_NORM_ATTN] = sl[i].attn_norm;
		out->l[i].norm[TERN_NORM_ATTN_SUB] = sl[i].attn_sub_norm;
		out->l[i].norm[TERN_NORM_FFN] = sl[i].ffn_norm;
		out->l[i].norm[TERN_NORM_FFN_SUB] = sl[i].ffn_sub_norm;
		sl[i].attn_norm = sl[i].attn_sub_norm = sl[i].ffn_norm = sl[i].ffn_sub_norm = NULL;
	}
done:
	if (sl)
		tern_shard_layers_free(sl, n, NULL);
	tern_shard_close(sh);
	tern_plan_manifest_free(pm);
	if (rc < 0)
		tern_layers_free(out);
	return rc;
}

int tern_stage_load(const Tern__V1__Frame *hello, tern_layers *out, tern_err *err)
{
	memset(out, 0, sizeof *out);
	if (hello->plan_dir && hello->plan_dir[0]) {
		char dir[4096];
		tern_link_expand_host(hello->plan_dir, dir, sizeof dir);
		return load_from_plan(dir, (int)hello->stage, out, err);
	}
	TERN_RETURN_IF(!hello->model_path || !hello->model_path[0], err, TERN_EINVAL,
		       "HELLO names no model to load");
	char path[4096];
	tern_link_expand_host(hello->model_path, path, sizeof path);
	tern_source *src = NULL;
	TERN_FORWARD_IF_ERROR(tern_source_open(&src, path, err));
	const tern_hparams *hp = tern_source_hparams(src);
	int rc = 0;
	if (hello->n_layers == 0 || hello->first_layer + hello->n_layers > (uint32_t)hp->n_layer) {
		rc = TERN_ERR(err, TERN_EINVAL, "%s: layers %u..%u asked for, the model has %d", path,
			      hello->first_layer, hello->first_layer + hello->n_layers - 1, hp->n_layer);
	} else if (hello->packing >= TERN_PACK_COUNT) {
		rc = TERN_ERR(err, TERN_EINVAL, "unknown packing %u", hello->packing);
	} else {
		rc = tern_layers_from_source(out, src, (int)hello->first_layer, (int)hello->n_layers,
					     (tern_packing)hello->packing, 0, err);
	}
	tern_source_close(src);
	return rc;
}

/* ---- the frame loop ------------------------------------------------------ */

int tern_stage_serve(tern_engine *e, const tern_stage_opts *o, tern_err *err)
{
	const tern_layers *ls = tern_engine_layers(e);
	const int n_embd = ls->hp.n_embd;
	const int prev = o->rank - 1;
	const int next = o->rank + 1 < o->n_ranks ? o->rank + 1 : 0;
	const int n_slots = tern_engine_kv(e)->n_slots;
	float *hidden = NULL; /* (cap_rows, n_embd) */
	size_t cap_rows = 0;
	tern_row *rows = NULL;
	float *stage_ms = NULL;
	tern_link_send_req sreq = {0};
	int rc = 0;
	for (;;) {
		uint8_t *buf = NULL;
		Tern__V1__Frame *h = NULL;
		const uint8_t *payload = NULL;
		size_t pl = 0;
		rc = tern_link_recv(prev, TERN_TAG_ACT, -1, &buf, &h, &payload, &pl, NULL, err);
		if (rc < 0)
			break;
		if (h->kind == TERN__V1__FRAME_KIND__FRAME_KIND_SHUTDOWN) {
			tern_link_wait(&sreq, 30, NULL);
			/* Pass it on so every stage, and finally the coordinator,
			 * knows the pipeline has drained. */
			tern_link_send(next, TERN_TAG_ACT, h, NULL, 0, NULL);
			tern__v1__frame__free_unpacked(h, NULL);
			free(buf);
			rc = 0;
			break;
		}
		Tern__V1__Frame out = *h; /* shallow: fields point into h */
		const size_t n = h->n_seq_ids;
		char errbuf[600] = "";
		if (h->kind != TERN__V1__FRAME_KIND__FRAME_KIND_ACTIVATIONS) {
			snprintf(errbuf, sizeof errbuf, "stage %d: unexpected frame kind %d", o->rank, (int)h->kind);
		} else if (h->error && h->error[0]) {
			/* An upstream stage failed this micro-batch: pass it on. */
		} else if ((int)h->n_embd != n_embd) {
			snprintf(errbuf, sizeof errbuf, "stage %d: rows of width %u, model has %d", o->rank, h->n_embd,
				 n_embd);
		} else {
			if (n > cap_rows) {
				tern_aligned_free(hidden);
				free(rows);
				hidden = tern_aligned_alloc(n * (size_t)n_embd * sizeof(float), TERN_ALIGN);
				rows = malloc(n * sizeof *rows);
				cap_rows = hidden && rows ? n : 0;
			}
			if (!cap_rows) {
				snprintf(errbuf, sizeof errbuf, "stage %d: out of memory for %zu rows", o->rank, n);
			} else {
				int bad = 0;
				for (size_t i = 0; i < n; i++) {
					if (h->seq_ids[i] >= (uint64_t)n_slots)
						bad = 1;
					rows[i].slot = (int32_t)h->seq_ids[i];
					rows[i].pos = (int32_t)h->positions[i];
				}
				memcpy(hidden, payload, pl);
				tern_err fe;
				tern_err_clear(&fe);
				const double t0 = tern_now_s();
				if (bad)
					snprintf(errbuf, sizeof errbuf, "stage %d: slot out of range (have %d)", o->rank,
						 n_slots);
				else if (tern_engine_forward(e, rows, (int)n, hidden, &fe) < 0)
					snprintf(errbuf, sizeof errbuf, "stage %d: %s", o->rank, fe.msg);
				const float ms = (float)((tern_now_s() - t0) * 1e3);
				float *nm = realloc(stage_ms, (h->n_stage_ms + 1) * sizeof *nm);
				if (nm) {
					stage_ms = nm;
					if (h->n_stage_ms)
						memcpy(stage_ms, h->stage_ms, h->n_stage_ms * sizeof *nm);
					stage_ms[h->n_stage_ms] = ms;
					out.n_stage_ms = h->n_stage_ms + 1;
					out.stage_ms = stage_ms;
				}
			}
		}
		if (errbuf[0])
			out.error = errbuf;
		/* At most one send in flight (isend packs its own copy); a
		 * downstream that is slow to take it holds this stage here. */
		rc = tern_link_wait(&sreq, -1, err);
		if (rc == 0) {
			const int ok = !(out.error && out.error[0]);
			rc = tern_link_isend(next, TERN_TAG_ACT, &out, ok ? (const void *)hidden : payload, pl, &sreq, err);
		}
		tern__v1__frame__free_unpacked(h, NULL);
		free(buf);
		if (rc < 0)
			break;
	}
	tern_link_wait(&sreq, 30, NULL);
	tern_aligned_free(hidden);
	free(rows);
	free(stage_ms);
	return rc;
}
