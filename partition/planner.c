/* planner.c: byte counts per layer/stage/coordinator and the layer-group
 * choice (tern-plan.h). Only hyper-parameters are needed, never weights.
 *
 * Cost model (DESIGN.md "Performance model"): decoding is memory-bound, so a
 * stage's time per token is proportional to the bytes it reads per token:
 * its packed weights plus the K and V of every cached position. Domains run
 * in parallel as a pipeline, so throughput is set by the domain that reads
 * the most; the coordinator's LM head read is counted on the domain it
 * shares. */
#include "tern-plan.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void tern_plan_opts_default(tern_plan_opts *o, const tern_hparams *hp)
{
	memset(o, 0, sizeof *o);
	o->packing = TERN_PACK_TL2;
	o->group_rows = 0;
	o->n_seqs = 4;
	o->n_ctx = hp && hp->n_ctx_train > 0 && hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
	o->work_tokens = 128;
	o->kv_type = TERN_KV_TYPE_DEFAULT;
}

int tern_plan_embd_elem_bytes(tern_dtype embd_type)
{
	const int is_float = embd_type == TERN_DTYPE_F32 || embd_type == TERN_DTYPE_F16 || embd_type == TERN_DTYPE_BF16;
	return is_float ? (int)tern_dtype_size(embd_type) : 0;
}

static uint64_t proj_bytes(const tern_plan_opts *o, int m, int k)
{
	const uint64_t groups = o->group_rows > 0 ? ((uint64_t)m + (uint64_t)o->group_rows - 1) / (uint64_t)o->group_rows : 1;
	return (uint64_t)tern_matrix_data_bytes(o->packing, m, k) + groups * sizeof(float);
}

uint64_t tern_plan_layer_weight_bytes(const tern_hparams *hp, const tern_plan_opts *o)
{
	const int d = hp->n_embd, kvd = hp->n_head_kv * hp->head_dim, ff = hp->n_ff;
	uint64_t b = 2 * proj_bytes(o, d, d) + 2 * proj_bytes(o, kvd, d) + 2 * proj_bytes(o, ff, d) + proj_bytes(o, d, ff);
	b += (3 * (uint64_t)d + (uint64_t)ff) * sizeof(float); /* attn, attn_sub, ffn, ffn_sub norms */
	return b;
}

uint64_t tern_plan_layer_kv_bytes(const tern_hparams *hp, const tern_plan_opts *o)
{
	/* the pool a stage allocates by default: whole blocks for every sequence */
	return tern_hparams_kv_pool_bytes_layer(hp, o->kv_type, o->n_seqs, o->n_ctx, TERN_KV_BLOCK_DEFAULT);
}

uint64_t tern_plan_layer_token_bytes(const tern_hparams *hp, const tern_plan_opts *o)
{
	return tern_plan_layer_weight_bytes(hp, o) + tern_hparams_kv_bytes_per_token_layer(hp, o->kv_type) * (uint64_t)o->n_ctx;
}

/* Estimate of one stage's working set for a micro-batch (or prefill chunk) of
 * T tokens: f32 rows for the residual, its norm, the attention output, Q/K/V
 * and the FFN gate/up; the int8 activation row plus the TL LUTs (~11 bytes per
 * input for TL2, less for the others) of the widest input; and the attention
 * scores of one chunk against the whole context. */
uint64_t tern_plan_stage_work_bytes(const tern_hparams *hp, const tern_plan_opts *o)
{
	const uint64_t t = (uint64_t)(o->work_tokens > o->n_seqs ? o->work_tokens : o->n_seqs);
	const uint64_t d = (uint64_t)hp->n_embd, kvd = (uint64_t)hp->n_head_kv * (uint64_t)hp->head_dim;
	const uint64_t ff = (uint64_t)hp->n_ff, wide = ff > d ? ff : d;
	return t * 4 * (4 * d + 2 * kvd + 2 * ff) + t * wide * 12 + t * (uint64_t)hp->n_head * (uint64_t)o->n_ctx * 4;
}

static uint64_t embd_bytes(const tern_plan_model *m)
{
	return (uint64_t)m->hp.n_vocab * (uint64_t)m->hp.n_embd * (uint64_t)tern_plan_embd_elem_bytes(m->embd_type);
}

/* The head the logits read: the packed head when the plan stores one, else
 * the matrix as stored (the embeddings when tied, the output matrix when not). */
static uint64_t head_bytes(const tern_plan_model *m)
{
	const uint64_t packed = tern_plan_head_packed_bytes(m->lm_head, m->hp.n_vocab, m->hp.n_embd);
	return packed ? packed : embd_bytes(m);
}

uint64_t tern_plan_coord_weight_bytes(const tern_plan_model *m)
{
	/* token_embd always (the lookup); a head of its own unless tied and stored */
	const int own_head = !m->hp.tied_embeddings || tern_plan_head_qh(m->lm_head) >= 0;
	return embd_bytes(m) + (own_head ? head_bytes(m) : 0) + (uint64_t)m->hp.n_embd * sizeof(float);
}

uint64_t tern_plan_coord_work_bytes(const tern_plan_model *m, const tern_plan_opts *o)
{
	/* logits and sampling probabilities per live sequence; tokenizer tables
	 * (strings, ids, merge ranks) estimated at 64 bytes per token when unknown */
	const uint64_t tok = m->tokenizer_bytes ? m->tokenizer_bytes : (uint64_t)m->hp.n_vocab * 64;
	return (uint64_t)o->n_seqs * (uint64_t)m->hp.n_vocab * 8 + tok;
}

uint64_t tern_plan_coord_token_bytes(const tern_plan_model *m)
{
	/* the head is read whole for every token, plus one embedding row and the norm */
	return head_bytes(m) + (uint64_t)m->hp.n_embd * (sizeof(float) + (uint64_t)tern_plan_embd_elem_bytes(m->embd_type));
}

void tern_plan_layout_free(tern_plan_layout *l)
{
	if (!l)
		return;
	free(l->stages);
	memset(l, 0, sizeof *l);
}

/* Per-layer arrays so the DP stays correct if layers ever differ in shape. */
typedef struct {
	int L, S;
	uint64_t *tok;  /* (L+1) prefix sums of per-token bytes */
	uint64_t *mem;  /* (L+1) prefix sums of resident bytes (weights + KV) */
	uint64_t work;
	uint64_t coord_tok, coord_mem;
	int coord_stage; /* 0-based stage sharing the coordinator's domain, -1 none */
	const tern_cluster *c;
} dp_ctx;

static uint64_t seg_cost(const dp_ctx *x, int s, int a, int b)
{
	return x->tok[b] - x->tok[a] + (s == x->coord_stage ? x->coord_tok : 0);
}

static uint64_t seg_need(const dp_ctx *x, int s, int a, int b)
{
	return x->mem[b] - x->mem[a] + x->work + (s == x->coord_stage ? x->coord_mem : 0);
}

static int seg_fits(const dp_ctx *x, int s, int a, int b)
{
	return seg_need(x, s, a, b) <= x->c->domains[s].mem_bytes;
}

/* cell (s stages, j layers) of an (S+1) x (L+1) table; W = L + 1 in scope */
#define IDX(s, j) ((size_t)(s) * (size_t)(W) + (size_t)(j))

/* Smallest d such that adding d bytes to every domain lets some assignment
 * fit: min over partitions of max over stages of (need - memory). */
static int64_t dp_shortfall(const dp_ctx *x, int *worst_stage)
{
	const int L = x->L, S = x->S, W = L + 1;
	int64_t *g = malloc(sizeof(int64_t) * (size_t)(S + 1) * (size_t)(L + 1));
	int *arg = malloc(sizeof(int) * (size_t)(S + 1) * (size_t)(L + 1));
	int64_t res = INT64_MAX;
	if (!g || !arg)
		goto out;
	for (size_t i = 0; i < (size_t)(S + 1) * (size_t)(L + 1); i++)
		g[i] = INT64_MAX;
	g[0] = INT64_MIN;
	for (int s = 1; s <= S; s++)
		for (int j = s; j <= L - (S - s); j++)
			for (int a = s - 1; a < j; a++) {
				if (g[IDX(s - 1, a)] == INT64_MAX)
					continue;
				const int64_t over = (int64_t)seg_need(x, s - 1, a, j) - (int64_t)x->c->domains[s - 1].mem_bytes;
				const int64_t v = g[IDX(s - 1, a)] > over ? g[IDX(s - 1, a)] : over;
				if (v < g[IDX(s, j)]) {
					g[IDX(s, j)] = v;
					arg[IDX(s, j)] = a;
				}
			}
	res = g[IDX(S, L)];
	/* the stage that sets the maximum, for the message */
	*worst_stage = 0;
	for (int s = S, j = L; s >= 1; s--) {
		const int a = arg[IDX(s, j)];
		const int64_t over = (int64_t)seg_need(x, s - 1, a, j) - (int64_t)x->c->domains[s - 1].mem_bytes;
		if (over == res)
			*worst_stage = s - 1;
		j = a;
	}
out:
	free(g);
	free(arg);
	return res;
}

int tern_plan_compute(const tern_plan_model *m, const tern_plan_opts *o, const tern_cluster *c,
		      tern_plan_layout *out, uint64_t *shortfall, tern_err *err)
{
	memset(out, 0, sizeof *out);
	if (shortfall)
		*shortfall = 0;
	TERN_FORWARD_IF_ERROR(tern_hparams_validate(&m->hp, err));
	TERN_RETURN_IF(tern_plan_embd_elem_bytes(m->embd_type) == 0, err, TERN_EUNSUP,
		       "unsupported token embedding type %s", tern_dtype_name(m->embd_type));
	TERN_RETURN_IF(o->packing < 0 || o->packing >= TERN_PACK_COUNT, err, TERN_EINVAL, "unknown packing %d",
		       (int)o->packing);
	TERN_RETURN_IF(o->group_rows < 0 || o->n_seqs < 1 || o->n_seqs > (1 << 16) || o->n_ctx < 1 ||
			       o->n_ctx > (1 << 22) || o->work_tokens < 1 || o->work_tokens > (1 << 16),
		       err, TERN_EINVAL, "bad plan options (group rows %d, %d seqs, ctx %d, work tokens %d)",
		       o->group_rows, o->n_seqs, o->n_ctx, o->work_tokens);
	TERN_RETURN_IF(!tern_kv_type_ok(o->kv_type), err, TERN_EINVAL, "bad KV cache type %s (f32, f16, bf16)",
		       tern_dtype_name(o->kv_type));
	TERN_RETURN_IF(c->n_domains < 1, err, TERN_EINVAL, "the cluster has no NUMA domains");
	TERN_RETURN_IF(c->n_domains > m->hp.n_layer, err, TERN_EINVAL,
		       "%d stages but the model has only %d layers (at least one layer per stage)", c->n_domains,
		       m->hp.n_layer);
	TERN_RETURN_IF(c->coord_domain < 0 || c->coord_domain >= c->n_domains, err, TERN_EINVAL,
		       "coordinator domain %d out of range", c->coord_domain);

	/* keep every byte count (and need - memory) far inside int64 */
	const double total = (double)m->hp.n_layer * ((double)tern_plan_layer_weight_bytes(&m->hp, o) +
						      (double)tern_plan_layer_kv_bytes(&m->hp, o)) +
			     (double)c->n_domains * (double)tern_plan_stage_work_bytes(&m->hp, o) +
			     (double)tern_plan_coord_weight_bytes(m) + (double)tern_plan_coord_work_bytes(m, o);
	TERN_RETURN_IF(total > 1e18, err, TERN_ERANGE, "absurd plan: %.3g bytes of weights, KV cache and buffers", total);
	for (int i = 0; i < c->n_domains; i++)
		TERN_RETURN_IF(c->domains[i].mem_bytes > (1ull << 62), err, TERN_ERANGE, "absurd memory size on domain %d",
			       i);

	const int L = m->hp.n_layer, S = c->n_domains, W = L + 1;
	dp_ctx x = {.L = L, .S = S, .c = c, .coord_stage = c->coord_domain};
	x.work = tern_plan_stage_work_bytes(&m->hp, o);
	x.coord_tok = tern_plan_coord_token_bytes(m);
	x.coord_mem = tern_plan_coord_weight_bytes(m) + tern_plan_coord_work_bytes(m, o);
	x.tok = calloc((size_t)L + 1, sizeof(uint64_t));
	x.mem = calloc((size_t)L + 1, sizeof(uint64_t));
	const size_t cells = (size_t)(S + 1) * (size_t)(L + 1);
	uint64_t *f = malloc(cells * sizeof(uint64_t));
	double *h = malloc(cells * sizeof(double));
	int *arg = malloc(cells * sizeof(int));
	int rc = 0;
	if (!x.tok || !x.mem || !f || !h || !arg) {
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory planning %d layers over %d stages", L, S);
		goto done;
	}
	const uint64_t lt = tern_plan_layer_token_bytes(&m->hp, o);
	const uint64_t lm = tern_plan_layer_weight_bytes(&m->hp, o) + tern_plan_layer_kv_bytes(&m->hp, o);
	for (int i = 0; i < L; i++) {
		x.tok[i + 1] = x.tok[i] + lt;
		x.mem[i + 1] = x.mem[i] + lm;
	}

	/* pass 1: the smallest bottleneck among fitting assignments */
	for (size_t i = 0; i < cells; i++)
		f[i] = UINT64_MAX;
	f[0] = 0;
	for (int s = 1; s <= S; s++)
		for (int j = s; j <= L - (S - s); j++)
			for (int a = s - 1; a < j; a++) {
				if (f[IDX(s - 1, a)] == UINT64_MAX || !seg_fits(&x, s - 1, a, j))
					continue;
				const uint64_t cst = seg_cost(&x, s - 1, a, j);
				const uint64_t v = f[IDX(s - 1, a)] > cst ? f[IDX(s - 1, a)] : cst;
				if (v < f[IDX(s, j)])
					f[IDX(s, j)] = v;
			}
	const uint64_t best = f[IDX(S, L)];
	if (best == UINT64_MAX) {
		int ws = 0;
		const int64_t sf = dp_shortfall(&x, &ws);
		if (sf == INT64_MAX) {
			rc = TERN_ERR(err, TERN_ENOMEM, "out of memory planning %d layers over %d stages", L, S);
			goto done;
		}
		if (shortfall)
			*shortfall = (uint64_t)sf;
		const tern_cluster_domain *dm = &c->domains[ws];
		rc = TERN_ERR(err, TERN_ERANGE,
			      "plan does not fit: short by %llu bytes (%.1f MiB) per domain, tightest is stage %d "
			      "(host %s, NUMA %d, %.1f MiB)",
			      (unsigned long long)sf, (double)sf / 1048576.0, ws + 1, c->hosts[dm->host].name, dm->numa,
			      (double)dm->mem_bytes / 1048576.0);
		goto done;
	}

	/* pass 2: among assignments with every stage <= best, the smallest sum of
	 * squared stage bytes (doubles: only a tie-break, exactness not needed) */
	for (size_t i = 0; i < cells; i++)
		h[i] = INFINITY;
	h[0] = 0.0;
	for (int s = 1; s <= S; s++)
		for (int j = s; j <= L - (S - s); j++)
			for (int a = s - 1; a < j; a++) {
				if (h[IDX(s - 1, a)] == INFINITY || !seg_fits(&x, s - 1, a, j))
					continue;
				const uint64_t cst = seg_cost(&x, s - 1, a, j);
				if (cst > best)
					continue;
				const double v = h[IDX(s - 1, a)] + (double)cst * (double)cst;
				if (v < h[IDX(s, j)]) {
					h[IDX(s, j)] = v;
					arg[IDX(s, j)] = a;
				}
			}

	out->stages = calloc((size_t)S, sizeof *out->stages);
	if (!out->stages) {
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
		goto done;
	}
	out->n_stages = S;
	out->coord_domain = c->coord_domain;
	out->coord_stage = c->coord_domain + 1;
	out->coord_weight_bytes = tern_plan_coord_weight_bytes(m);
	out->coord_work_bytes = tern_plan_coord_work_bytes(m, o);
	out->coord_token_bytes = x.coord_tok;
	out->bottleneck_bytes = best;
	for (int s = S, j = L; s >= 1; s--) {
		const int a = arg[IDX(s, j)];
		tern_plan_stage *st = &out->stages[s - 1];
		st->index = s;
		st->domain = s - 1;
		st->first_layer = a;
		st->last_layer = j - 1;
		st->weight_bytes = tern_plan_layer_weight_bytes(&m->hp, o) * (uint64_t)(j - a);
		st->kv_bytes = tern_plan_layer_kv_bytes(&m->hp, o) * (uint64_t)(j - a);
		st->work_bytes = x.work;
		st->token_bytes = x.tok[j] - x.tok[a];
		st->mem_need = seg_need(&x, s - 1, a, j);
		j = a;
	}
	out->total_token_bytes = x.coord_tok + x.tok[L];
	for (int s = 0; s < S; s++)
		out->stages[s].token_share = (double)out->stages[s].token_bytes / (double)out->total_token_bytes;
	out->coord_share = (double)x.coord_tok / (double)out->total_token_bytes;
done:
	free(x.tok);
	free(x.mem);
	free(f);
	free(h);
	free(arg);
	return rc;
}

static double mib(uint64_t b)
{
	return (double)b / 1048576.0;
}

void tern_plan_print_table(FILE *f, const tern_plan_model *m, const tern_plan_opts *o, const tern_cluster *c,
			   const tern_plan_layout *l)
{
	fprintf(f, "model: %d layers, n_embd %d, n_ff %d, vocab %d (%.2fB parameters)\n", m->hp.n_layer, m->hp.n_embd,
		m->hp.n_ff, m->hp.n_vocab, (double)tern_hparams_total_params(&m->hp) / 1e9);
	fprintf(f, "plan: %d stages on %d host(s), packing %s, %s, KV for %d seqs x %d ctx (%s)\n", l->n_stages,
		c->n_hosts, tern_packing_name(o->packing), o->group_rows > 0 ? "row-block scales" : "per-tensor scales",
		o->n_seqs, o->n_ctx, tern_dtype_name(o->kv_type));
	fprintf(f, "%-6s %-16s %4s %-9s %11s %10s %9s %11s %11s %7s\n", "stage", "host", "numa", "layers", "weight MiB",
		"KV MiB", "work MiB", "used MiB", "domain MiB", "share");
	const tern_cluster_domain *cd = &c->domains[l->coord_domain];
	char lay[32];
	fprintf(f, "%-6s %-16s %4d %-9s %11.1f %10.1f %9.1f %11s %11s %6.1f%%\n", "coord", c->hosts[cd->host].name,
		cd->numa, "-", mib(l->coord_weight_bytes), 0.0, mib(l->coord_work_bytes), "(shared)", "-",
		100.0 * l->coord_share);
	for (int s = 0; s < l->n_stages; s++) {
		const tern_plan_stage *st = &l->stages[s];
		const tern_cluster_domain *dm = &c->domains[st->domain];
		snprintf(lay, sizeof lay, "%d-%d", st->first_layer, st->last_layer);
		fprintf(f, "%-6d %-16s %4d %-9s %11.1f %10.1f %9.1f %11.1f %11.1f %6.1f%%\n", st->index,
			c->hosts[dm->host].name, dm->numa, lay, mib(st->weight_bytes), mib(st->kv_bytes),
			mib(st->work_bytes), mib(st->mem_need), mib(dm->mem_bytes), 100.0 * st->token_share);
	}
	fprintf(f, "per token: %.1f MiB read in all, %.1f MiB on the busiest domain (pipeline bound = domain "
		   "bandwidth / that)\n",
		mib(l->total_token_bytes), mib(l->bottleneck_bytes));
}
