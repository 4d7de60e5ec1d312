/* head-source.c: the LM head and embeddings of a model file opened through
 * partition/'s uniform model source: token_embd as stored (no copy), the
 * output matrix as the head of an untied model, and the output norm. */
#include "tern-head.h"

#include <stdlib.h>

#include "tern-gguf.h"
#include "tern-source.h"

/* A dense matrix of the head (token_embd or output) as stored: F32/F16/BF16
 * of n_vocab x n_embd. */
static int head_matrix(const tern_source *src, tern_dense_kind kind, tern_dense_view *v, tern_err *err)
{
	const tern_hparams *hp = tern_source_hparams(src);
	TERN_FORWARD_IF_ERROR(tern_source_dense(src, kind, v, err));
	TERN_RETURN_IF(v->type != TERN_DTYPE_F32 && v->type != TERN_DTYPE_F16 && v->type != TERN_DTYPE_BF16, err,
		       TERN_EUNSUP, "%s: %s type %s is not F32/F16/BF16", tern_source_path(src), tern_dense_gguf(kind),
		       tern_dtype_name(v->type));
	TERN_RETURN_IF(v->rows != hp->n_vocab || v->cols != hp->n_embd, err, TERN_EFORMAT,
		       "%s: %s is %lld x %lld, expected %d x %d", tern_source_path(src), tern_dense_gguf(kind),
		       (long long)v->rows, (long long)v->cols, hp->n_vocab, hp->n_embd);
	return 0;
}

int tern_head_from_source(const tern_source *src, tern_isa isa, tern_head **out, tern_err *err)
{
	*out = NULL;
	const tern_hparams *hp = tern_source_hparams(src);
	tern_dense_view v, o;
	TERN_FORWARD_IF_ERROR(head_matrix(src, TERN_DENSE_TOKEN_EMBD, &v, err));
	if (!hp->tied_embeddings)
		TERN_FORWARD_IF_ERROR(head_matrix(src, TERN_DENSE_OUTPUT, &o, err));
	float *norm = malloc((size_t)hp->n_embd * sizeof(float));
	TERN_RETURN_IF(!norm, err, TERN_ENOMEM, "head: out of memory");
	int rc = tern_source_norm(src, 0, TERN_NORM_OUTPUT, norm, err);
	if (rc == 0) {
		tern_head_config cfg = {hp->n_vocab, hp->n_embd, v.type,       v.data,
					v.row_bytes, norm,       hp->norm_eps, isa, TERN_HEAD_FILE, NULL, TERN_DTYPE_NONE, NULL, 0, 0};
		if (!hp->tied_embeddings) {
			cfg.head_dtype = o.type;
			cfg.head = o.data;
			cfg.head_row_bytes = o.row_bytes;
		}
		rc = tern_head_create(&cfg, out, err);
	}
	free(norm);
	return rc;
}
