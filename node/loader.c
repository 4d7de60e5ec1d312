/* loader.c: the engine's plain-argument loader (see tern-engine.h): layers
 * [first, first + n) from a model file (packed here) or from a plan
 * directory (already packed by tern-partition), with no MPI and no hwloc,
 * so a stage, tern-coordinator --stages 0 and tests load the same way.
 *
 * From a plan, each stage shard holding some of the layers is mapped once,
 * its whole-file xxh64 (the manifest's) is checked once, and every matrix
 * and norm is decompressed straight into the tern_layers storage. */
#include "tern-engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "plan.pb-c.h"
#include "tern-shard.h"

/* The shard's roles Q..DOWN and its four layer norms are in the engine's
 * projection and norm order. */
_Static_assert((int)TERN_ROLE_Q == (int)TERN_PROJ_Q && (int)TERN_ROLE_DOWN == (int)TERN_PROJ_DOWN &&
		       TERN_SHARD_N_PROJ == TERN_PROJ_COUNT,
	       "shard projection roles follow tern_proj");
_Static_assert((int)TERN_ROLE_FFN_SUB_NORM - (int)TERN_ROLE_ATTN_NORM == (int)TERN_NORM_FFN_SUB - (int)TERN_NORM_ATTN,
	       "shard norm roles follow tern_norm_kind");

/* A bump allocator over one tern_layers_arena (tern_shard_alloc): 64-byte
 * aligned pieces, NULL when the region is used up; freed with the region. */
static void *arena_alloc(void *ctx, size_t bytes, size_t align)
{
	tern_layers_arena *a = ctx;
	if (align < TERN_ALIGN)
		align = TERN_ALIGN;
	const size_t at = (a->used + align - 1) / align * align;
	if (at > a->size || bytes > a->size - at)
		return NULL;
	a->used = at + bytes;
	return (char *)a->base + at;
}

static void arena_free(void *ctx, void *p, size_t bytes)
{
	(void)ctx;
	(void)p;
	(void)bytes;
}

/* The bytes layers [lo, hi] of sh take in an arena: each packed ternary
 * projection's data and scales, as tern_shard_load_matrix asks for them,
 * 64-byte aligned. */
static size_t arena_need(const tern_shard *sh, int lo, int hi)
{
	size_t need = 0;
	for (int l = lo; l <= hi; l++)
		for (int p = 0; p < TERN_PROJ_COUNT; p++) {
			const tern_shard_tensor *t = tern_shard_tensor_at(sh, tern_shard_find(sh, (tern_shard_role)p, l));
			/* only packed ternary matrices come from the arena (Q2_0 blocks are adopted apart) */
			if (t && t->dtype == TERN_DTYPE_TERNARY)
				need += (t->raw_bytes + 2 * TERN_ALIGN) / TERN_ALIGN * TERN_ALIGN +
					((size_t)(t->n_groups ? t->n_groups : 1) * sizeof(float) + 2 * TERN_ALIGN) /
					    TERN_ALIGN * TERN_ALIGN;
		}
	return need;
}

/* One layer of an open shard into lw, every shape checked against hp; the
 * matrices' bytes from the allocator a. */
static int layer_from_shard(const tern_shard *sh, const char *path, const tern_hparams *hp, int layer,
			    const tern_shard_alloc *a, tern_layer_weights *lw, tern_err *err)
{
	for (int p = 0; p < TERN_PROJ_COUNT; p++) {
		const int i = tern_shard_find(sh, (tern_shard_role)p, layer);
		TERN_RETURN_IF(i < 0, err, TERN_EFORMAT, "%s: layer %d has no %s", path, layer,
			       tern_proj_name((tern_proj)p));
		int m, k;
		tern_proj_shape(hp, (tern_proj)p, &m, &k);
		const tern_shard_tensor *t = tern_shard_tensor_at(sh, i);
		TERN_RETURN_IF(t->m != m || t->k != k, err, TERN_EFORMAT, "%s: tensor '%s' is %d x %d, the model needs %d x %d",
			       path, t->name, t->m, t->k, m, k);
		if (t->dtype == TERN_DTYPE_Q2_0) {
			uint8_t *blocks = malloc(t->raw_bytes);
			TERN_RETURN_IF(!blocks, err, TERN_ENOMEM, "%s: out of memory", path);
			const int rc = tern_shard_read_tensor(sh, i, blocks, t->raw_bytes, NULL, err);
			if (rc < 0) {
				free(blocks);
				return rc;
			}
			TERN_FORWARD_IF_ERROR(tern_gq_adopt(&lw->gq[p], blocks, t->raw_bytes, m, k, err));
			continue;
		}
		/* owns_data stays 0: the arena is released by tern_layers_free */
		TERN_FORWARD_IF_ERROR(tern_shard_load_matrix(sh, i, a, &lw->proj[p], err));
	}
	for (int q = 0; q < TERN_LAYER_NORMS; q++) {
		if (!tern_shard_norm_present(hp, (tern_norm_kind)q))
			continue; /* a q/k norm the architecture has not: NULL, never applied */
		const int i = tern_shard_find(sh, tern_shard_norm_role((tern_norm_kind)q), layer);
		const int width = tern_norm_len(hp, (tern_norm_kind)q);
		const tern_shard_tensor *t = i >= 0 ? tern_shard_tensor_at(sh, i) : NULL;
		TERN_RETURN_IF(!t || t->dtype != TERN_DTYPE_F32 || (int64_t)t->m * t->k != width, err, TERN_EFORMAT,
			       "%s: layer %d: no f32[%d] %s", path, layer, width, tern_norm_name((tern_norm_kind)q));
		lw->norm[q] = tern_aligned_alloc((size_t)width * sizeof(float), TERN_ALIGN);
		TERN_RETURN_IF(!lw->norm[q], err, TERN_ENOMEM, "%s: out of memory", path);
		TERN_FORWARD_IF_ERROR(tern_shard_read_tensor(sh, i, lw->norm[q], (size_t)width * sizeof(float), NULL, err));
	}
	return 0;
}

/* The layers of out that stage st's shard holds. */
static int stage_from_plan(tern_layers *out, const tern_plan_manifest *pm, const char *dir, const Tern__V1__Stage *st,
			   tern_err *err)
{
	const Tern__V1__FileRef *fr = NULL;
	for (size_t i = 0; i < pm->n_files; i++)
		if (st->shard && !strcmp(pm->files[i]->name, st->shard))
			fr = pm->files[i];
	TERN_RETURN_IF(!fr, err, TERN_EFORMAT, "%s: the plan has no shard for stage %u", dir, st->index);
	char path[4200];
	TERN_RETURN_IF((size_t)snprintf(path, sizeof path, "%s/%s", dir, fr->name) >= sizeof path, err, TERN_EINVAL,
		       "%s: path too long", dir);
	tern_shard *sh = NULL;
	TERN_FORWARD_IF_ERROR(tern_shard_open(&sh, path, &fr->xxh64, err));
	int rc = 0, sf, sl;
	tern_shard_layers(sh, &sf, &sl);
	if (sf != (int)st->first_layer || sl != (int)st->last_layer || tern_shard_packing(sh) != out->packing) {
		rc = TERN_ERR(err, TERN_EFORMAT, "%s: shard holds layers %d-%d packed as %s, the plan says %u-%u as %s",
			      path, sf, sl, tern_packing_name(tern_shard_packing(sh)), st->first_layer, st->last_layer,
			      tern_packing_name(out->packing));
	}
	const int lo = sf > out->first ? sf : out->first;
	const int hi = sl < out->first + out->n - 1 ? sl : out->first + out->n - 1;
	/* one region for this shard's matrices, written once by the copy below:
	 * in 2 MiB pages the copy is not bound by page faults (4 KiB pages made
	 * a stage load at ~0.25 GB/s from the page cache) */
	tern_layers_arena *grown = rc == 0 ? realloc(out->arena, (size_t)(out->n_arena + 1) * sizeof *grown) : NULL;
	if (rc == 0 && !grown)
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
	if (rc == 0) {
		out->arena = grown;
		tern_layers_arena *ar = &out->arena[out->n_arena];
		ar->size = arena_need(sh, lo, hi) + 1;
		ar->used = 0;
		ar->base = tern_huge_alloc(ar->size);
		if (!ar->base)
			rc = TERN_ERR(err, TERN_ENOMEM, "%s: cannot allocate %zu bytes for layers %d-%d", path, ar->size, lo,
				      hi);
		else
			out->n_arena++;
	}
	const tern_shard_alloc alloc = {arena_alloc, arena_free, rc == 0 ? &out->arena[out->n_arena - 1] : NULL};
	for (int l = lo; rc == 0 && l <= hi; l++)
		rc = layer_from_shard(sh, path, &out->hp, l, &alloc, &out->l[l - out->first], err);
	tern_shard_close(sh);
	return rc;
}

int tern_layers_from_plan(tern_layers *out, const tern_plan_manifest *pm, const char *dir, int first, int n,
			  int packing, tern_err *err)
{
	memset(out, 0, sizeof *out);
	TERN_FORWARD_IF_ERROR(tern_plan_manifest_hparams(pm, &out->hp, err));
	const tern_packing stored = (tern_packing)((int)pm->packing - 1);
	TERN_RETURN_IF(packing != TERN_LAYERS_PACKING_AS_STORED && packing != (int)stored, err, TERN_EINVAL,
		       "%s: the plan is packed as %s; it cannot be loaded as %s (re-run tern-partition)", dir,
		       tern_packing_name(stored), packing >= 0 && packing < TERN_PACK_COUNT ? tern_packing_name((tern_packing)packing) : "?");
	TERN_RETURN_IF(n <= 0 || first < 0 || first + n > out->hp.n_layer, err, TERN_EINVAL,
		       "%s: layers %d..%d asked for, the model has %d", dir, first, first + n - 1, out->hp.n_layer);
	out->l = calloc((size_t)n, sizeof *out->l);
	TERN_RETURN_IF(!out->l, err, TERN_ENOMEM, "out of memory");
	out->first = first;
	out->n = n;
	out->packing = stored;
	/* Stages hold disjoint ranges (the manifest is validated), so each
	 * layer is loaded by at most one of them; a layer none holds is an error. */
	int rc = 0, covered = 0;
	for (size_t s = 0; rc == 0 && s < pm->n_stages; s++) {
		const Tern__V1__Stage *st = pm->stages[s];
		const int lo = (int)st->first_layer > first ? (int)st->first_layer : first;
		const int hi = (int)st->last_layer < first + n - 1 ? (int)st->last_layer : first + n - 1;
		if (lo > hi)
			continue;
		rc = stage_from_plan(out, pm, dir, st, err);
		covered += hi - lo + 1;
	}
	if (rc == 0 && covered != n)
		rc = TERN_ERR(err, TERN_EFORMAT, "%s: the plan's stages do not hold layers %d..%d", dir, first,
			      first + n - 1);
	/* a group-scaled (Q2_0) plan has every projection so, or it is refused */
	int n_gq = 0;
	for (int l = 0; rc == 0 && l < n; l++)
		for (int p = 0; p < TERN_PROJ_COUNT; p++)
			n_gq += out->l[l].gq[p].blocks != NULL;
	if (rc == 0 && n_gq != 0 && n_gq != n * TERN_PROJ_COUNT)
		rc = TERN_ERR(err, TERN_EFORMAT, "%s: the plan mixes Q2_0 and packed ternary projections", dir);
	out->group_scaled = n_gq != 0;
	if (rc < 0)
		tern_layers_free(out);
	return rc;
}

int tern_layers_load(tern_layers *out, const char *path, int first, int n, int packing, tern_pool *pool,
		     tern_err *err)
{
	memset(out, 0, sizeof *out);
	TERN_RETURN_IF(!path || !path[0], err, TERN_EINVAL, "no model to load");
	char p[4096], manifest[4200];
	tern_path_expand_host(path, p, sizeof p);
	snprintf(manifest, sizeof manifest, "%s/%s", p, TERN_PLAN_MANIFEST);
	struct stat st;
	if (stat(manifest, &st) == 0) {
		tern_plan_manifest *pm = NULL;
		TERN_FORWARD_IF_ERROR(tern_plan_manifest_read(&pm, p, err));
		const int rc = tern_layers_from_plan(out, pm, p, first, n, packing, err);
		tern_plan_manifest_free(pm);
		return rc;
	}
	tern_source *src = NULL;
	TERN_FORWARD_IF_ERROR(tern_source_open(&src, p, err));
	const int n_layer = tern_source_hparams(src)->n_layer;
	int rc;
	if (n <= 0 || first < 0 || first + n > n_layer)
		rc = TERN_ERR(err, TERN_EINVAL, "%s: layers %d..%d asked for, the model has %d", p, first, first + n - 1,
			      n_layer);
	else if (packing < 0 || packing >= TERN_PACK_COUNT)
		rc = TERN_ERR(err, TERN_EINVAL, "unknown packing %d", packing);
	else
		rc = tern_layers_from_source_mt(out, src, first, n, (tern_packing)packing, 0, pool, err);
	tern_source_close(src);
	return rc;
}
