/* builder.c: engine weights for a layer range from any source of ternary
 * matrices and norms (a model file through its adapter, or the deterministic
 * random source that tests and benchmarks use), packed in one packing. */
#include "tern-engine.h"
#include "tern-shard.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

void tern_layers_free(tern_layers *ls)
{
	if (!ls)
		return;
	if (ls->l) {
		for (int l = 0; l < ls->n; l++) {
			for (int p = 0; p < TERN_PROJ_COUNT; p++) {
				tern_matrix_free(&ls->l[l].proj[p]);
				tern_gq_free(&ls->l[l].gq[p]);
			}
			for (int k = 0; k < TERN_LAYER_NORMS; k++)
				tern_aligned_free(ls->l[l].norm[k]);
		}
		free(ls->l);
	}
	for (int a = 0; a < ls->n_arena; a++)
		tern_huge_free(ls->arena[a].base, ls->arena[a].size);
	free(ls->arena);
	memset(ls, 0, sizeof *ls);
}

const char *tern_layers_format(const tern_layers *ls)
{
	return ls->group_scaled ? tern_dtype_name(TERN_DTYPE_Q2_0) : tern_packing_name(ls->packing);
}

uint64_t tern_layers_bytes(const tern_layers *ls)
{
	uint64_t b = 0;
	for (int l = 0; l < ls->n; l++)
		for (int p = 0; p < TERN_PROJ_COUNT; p++)
			b += ls->group_scaled ? tern_gq_data_bytes(ls->l[l].gq[p].m, ls->l[l].gq[p].k)
					      : ls->l[l].proj[p].data_bytes +
							(uint64_t)ls->l[l].proj[p].n_groups * sizeof(float);
	return b;
}

int tern_gq_adopt(tern_gq_matrix *out, uint8_t *blocks, size_t bytes, int m, int k, tern_err *err)
{
	const int rc = tern_gq_wrap_q2_0(out, blocks, bytes, m, k, err);
	if (rc < 0) {
		free(blocks);
		return rc;
	}
	out->owned = blocks; /* tern_gq_free releases it */
	return 0;
}

typedef struct {
	const tern_hparams *hp;
	int first;
	int n;
	tern_packing packing;
	const tern_layer_source *src;
	tern_layers *out;
	atomic_int next; /* next (layer, projection) item to take */
	atomic_int failed;
	int rc[TERN_POOL_MAX_THREADS]; /* per thread: first error */
	tern_err err[TERN_POOL_MAX_THREADS];
} build_job;

/* Threads take (layer, projection) items from a shared counter; each item
 * is fetched and packed by one thread into its own slot of out, so the
 * result does not depend on the thread count. */
static void build_run(void *ctx, int tid, int nth)
{
	(void)nth;
	build_job *job = ctx;
	const tern_hparams *hp = job->hp;
	const size_t max_mk = (size_t)(hp->n_ff > hp->n_embd ? hp->n_ff : hp->n_embd) * (size_t)hp->n_embd;
	const int max_m = hp->n_ff > hp->n_embd ? hp->n_ff : hp->n_embd;
	int8_t *w = malloc(max_mk);
	float *scales = malloc((size_t)max_m * sizeof(float));
	tern_err *err = &job->err[tid];
	int rc = 0;
	if (!w || !scales) {
		rc = TERN_ERR(err, TERN_ENOMEM, "builder: out of memory");
		goto done;
	}
	const int items = job->n * TERN_PROJ_COUNT;
	for (;;) {
		const int it = atomic_fetch_add(&job->next, 1);
		if (it >= items || atomic_load(&job->failed))
			break;
		const int l = it / TERN_PROJ_COUNT;
		const tern_proj p = (tern_proj)(it % TERN_PROJ_COUNT);
		int m, k;
		tern_proj_shape(hp, p, &m, &k);
		if (job->src->get_gq) {
			const uint8_t *data = NULL;
			size_t bytes = 0;
			rc = job->src->get_gq(job->src->ctx, job->first + l, p, m, k, &data, &bytes, err);
			if (rc < 0)
				break;
			uint8_t *copy = malloc(bytes ? bytes : 1);
			if (!copy) {
				rc = TERN_ERR(err, TERN_ENOMEM, "builder: out of memory");
				break;
			}
			memcpy(copy, data, bytes);
			if ((rc = tern_gq_adopt(&job->out->l[l].gq[p], copy, bytes, m, k, err)) < 0)
				break;
			continue;
		}
		int group_rows = m;
		rc = job->src->get_proj(job->src->ctx, job->first + l, p, m, k, w, scales, m, &group_rows, err);
		if (rc < 0)
			break;
		if (group_rows < 1 || group_rows > m) {
			rc = TERN_ERR(err, TERN_EINVAL, "builder: layer %d %s: bad scale group of %d rows",
				      job->first + l, tern_proj_gguf(p), group_rows);
			break;
		}
		rc = tern_matrix_pack(&job->out->l[l].proj[p], job->packing, w, m, k, scales, group_rows, err);
		if (rc < 0)
			break;
	}
done:
	if (rc < 0)
		atomic_store(&job->failed, 1);
	job->rc[tid] = rc;
	free(w);
	free(scales);
}

int tern_layers_build_mt(tern_layers *out, const tern_hparams *hp, int first, int n, tern_packing packing,
			 const tern_layer_source *src, tern_pool *pool, tern_err *err)
{
	memset(out, 0, sizeof *out);
	TERN_FORWARD_IF_ERROR(tern_hparams_validate(hp, err));
	TERN_RETURN_IF(n <= 0 || first < 0 || first + n > hp->n_layer, err, TERN_EINVAL,
		       "builder: layer range [%d, %d) outside the model's %d layers", first, first + n, hp->n_layer);
	TERN_RETURN_IF(packing < 0 || packing >= TERN_PACK_COUNT, err, TERN_EINVAL, "builder: bad packing %d",
		       (int)packing);
	TERN_RETURN_IF(!src || !src->get_proj || !src->get_norm, err, TERN_EINVAL, "builder: no weight source");
	out->hp = *hp;
	out->first = first;
	out->packing = packing;
	out->group_scaled = src->get_gq != NULL;
	out->l = calloc((size_t)n, sizeof *out->l);
	TERN_RETURN_IF(!out->l, err, TERN_ENOMEM, "builder: out of memory");
	out->n = n;

	build_job *job = calloc(1, sizeof *job);
	int rc = 0;
	if (!job) {
		rc = TERN_ERR(err, TERN_ENOMEM, "builder: out of memory");
		goto done;
	}
	job->hp = hp;
	job->first = first;
	job->n = n;
	job->packing = packing;
	job->src = src;
	job->out = out;
	atomic_init(&job->next, 0);
	atomic_init(&job->failed, 0);
	tern_pool_run(pool, build_run, job);
	for (int t = 0; t < tern_pool_size(pool); t++) {
		if (job->rc[t] < 0) {
			rc = job->rc[t];
			if (err)
				*err = job->err[t];
			goto done;
		}
	}
	for (int l = 0; l < n; l++) {
		tern_layer_weights *lw = &out->l[l];
		for (int q = 0; q < TERN_LAYER_NORMS; q++) {
			if (!tern_shard_norm_present(hp, (tern_norm_kind)q))
				continue; /* as the plan loader: a q/k norm the architecture has not stays NULL */
			const int width = tern_norm_len(hp, (tern_norm_kind)q);
			lw->norm[q] = tern_aligned_alloc((size_t)width * sizeof(float), TERN_ALIGN);
			if (!lw->norm[q]) {
				rc = TERN_ERR(err, TERN_ENOMEM, "builder: out of memory");
				goto done;
			}
			rc = src->get_norm(src->ctx, first + l, (tern_norm_kind)q, width, lw->norm[q], err);
			if (rc < 0)
				goto done;
		}
	}
done:
	free(job);
	if (rc < 0)
		tern_layers_free(out);
	return rc;
}

int tern_layers_build(tern_layers *out, const tern_hparams *hp, int first, int n, tern_packing packing,
		      const tern_layer_source *src, tern_err *err)
{
	return tern_layers_build_mt(out, hp, first, n, packing, src, NULL, err);
}

/* ---- deterministic random source ---------------------------------------- */

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static uint64_t stream_seed(uint64_t seed, int layer, int kind, int which)
{
	uint64_t s = seed ^ ((uint64_t)(unsigned)layer << 20) ^ ((uint64_t)(unsigned)kind << 8) ^ (uint64_t)which;
	(void)splitmix64(&s);
	return s;
}

static int random_proj(void *ctx, int layer, tern_proj p, int m, int k, int8_t *w, float *scales, int max_groups,
		       int *group_rows, tern_err *err)
{
	(void)max_groups;
	(void)err;
	uint64_t s = stream_seed(*(const uint64_t *)ctx, layer, 1, (int)p);
	const size_t count = (size_t)m * (size_t)k;
	for (size_t i = 0; i < count; i++)
		w[i] = (int8_t)((int)(splitmix64(&s) % 3u) - 1);
	const double u = (double)(splitmix64(&s) >> 11) / 9007199254740992.0;
	scales[0] = (float)((0.75 + 0.5 * u) / sqrt((double)k));
	*group_rows = m;
	return 0;
}

static int random_norm(void *ctx, int layer, tern_norm_kind n, int width, float *out, tern_err *err)
{
	(void)err;
	uint64_t s = stream_seed(*(const uint64_t *)ctx, layer, 2, (int)n);
	for (int i = 0; i < width; i++)
		out[i] = (float)(0.8 + 0.4 * ((double)(splitmix64(&s) >> 11) / 9007199254740992.0));
	return 0;
}

tern_layer_source tern_layers_random_source(uint64_t *seed_storage)
{
	tern_layer_source src = {random_proj, random_norm, seed_storage, NULL};
	return src;
}
