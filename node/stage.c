/* stage.c: a pipeline stage's load and frame loop (see tern-stage.h). */
#include "tern-stage.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern-link.h"

/* ---- loading -------------------------------------------------------------- */

int tern_stage_load(const Tern__V1__Frame *hello, tern_layers *out, tern_err *err)
{
	memset(out, 0, sizeof *out);
	const int first = (int)hello->first_layer, n = (int)hello->n_layers;
	TERN_RETURN_IF(hello->first_layer > INT32_MAX || hello->n_layers > INT32_MAX, err, TERN_EINVAL,
		       "HELLO names layers %u..+%u", hello->first_layer, hello->n_layers);
	if (hello->plan_dir && hello->plan_dir[0]) {
		/* The shards hold packed weights: HELLO's packing does not apply. */
		char dir[4096];
		tern_path_expand_host(hello->plan_dir, dir, sizeof dir);
		tern_plan_manifest *pm = NULL;
		TERN_FORWARD_IF_ERROR(tern_plan_manifest_read(&pm, dir, err));
		const int rc = tern_layers_from_plan(out, pm, dir, first, n, TERN_LAYERS_PACKING_AS_STORED, err);
		tern_plan_manifest_free(pm);
		return rc;
	}
	TERN_RETURN_IF(!hello->model_path || !hello->model_path[0], err, TERN_EINVAL,
		       "HELLO names no model to load");
	TERN_RETURN_IF(hello->packing >= TERN_PACK_COUNT, err, TERN_EINVAL, "unknown packing %u", hello->packing);
	return tern_layers_load(out, hello->model_path, first, n, (int)hello->packing, NULL, err);
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
		} else if (pl != n * (size_t)n_embd * sizeof(float)) {
			/* tern_frame_unpack checked this against the header already;
			 * the copy below relies on it, so it is checked where used. */
			snprintf(errbuf, sizeof errbuf, "stage %d: %zu payload bytes for %zu rows of %d", o->rank, pl, n,
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
