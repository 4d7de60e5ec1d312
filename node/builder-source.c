/* builder-source.c: engine weights for a layer range straight from a model
 * file opened through partition/'s uniform model source (tern-source.h):
 * the exact ternary matrices and their per-group scales, and the f32 norms. */
#include "tern-engine.h"

typedef struct {
	const tern_source *src;
	int group_rows; /* requested rows per scale for full-precision sources; <= 0: per tensor */
} source_ctx;

static int source_proj(void *ctx, int layer, tern_proj p, int m, int k, int8_t *w, float *scales, int max_groups,
		       int *group_rows, tern_err *err)
{
	const source_ctx *c = ctx;
	int gr = 0;
	(void)k;
	const int want = c->group_rows > 0 && c->group_rows < m ? c->group_rows : m;
	/* the scales buffer holds max_groups floats: never ask for more groups */
	const int ask = (m + want - 1) / want > max_groups ? m : want;
	TERN_FORWARD_IF_ERROR(tern_source_ternary(c->src, layer, p, ask, w, scales, &gr, err));
	*group_rows = gr;
	return 0;
}

static int source_gq(void *ctx, int layer, tern_proj p, int m, int k, const uint8_t **data, size_t *bytes,
		     tern_err *err)
{
	const source_ctx *c = ctx;
	(void)m;
	(void)k;
	return tern_source_gq(c->src, layer, p, data, bytes, err);
}

static int source_norm(void *ctx, int layer, tern_norm_kind n, int width, float *out, tern_err *err)
{
	const source_ctx *c = ctx;
	(void)width;
	return tern_source_norm(c->src, layer, n, out, err);
}

int tern_layers_from_source_mt(tern_layers *out, const tern_source *src, int first, int n, tern_packing packing,
			       int group_rows, tern_pool *pool, tern_err *err)
{
	source_ctx c = {src, group_rows};
	const tern_layer_source ls = {source_proj, source_norm, &c, tern_source_group_scaled(src) ? source_gq : NULL};
	return tern_layers_build_mt(out, tern_source_hparams(src), first, n, packing, &ls, pool, err);
}

int tern_layers_from_source(tern_layers *out, const tern_source *src, int first, int n, tern_packing packing,
			    int group_rows, tern_err *err)
{
	return tern_layers_from_source_mt(out, src, first, n, packing, group_rows, NULL, err);
}
