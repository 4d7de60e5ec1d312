/* head-source.c: the LM head and embeddings of a model file opened through
 * partition/'s uniform model source: token_embd as stored (no copy) and the
 * output norm. */
#include "tern-head.h"

#include <stdlib.h>

#include "tern-gguf.h"
#include "tern-source.h"

int tern_head_from_source(const tern_source *src, tern_isa isa, tern_head **out, tern_err *err)
{
	*out = NULL;
	const tern_hparams *hp = tern_source_hparams(src);
	tern_dense_view v;
	TERN_FORWARD_IF_ERROR(tern_source_dense(src, TERN_DENSE_TOKEN_EMBD, &v, err));
	TERN_RETURN_IF(v.type != TERN_DTYPE_F32 && v.type != TERN_DTYPE_F16 && v.type != TERN_DTYPE_BF16, err,
		       TERN_EUNSUP, "%s: token_embd type %s is not F32/F16/BF16", tern_source_path(src),
		       tern_dtype_name(v.type));
	TERN_RETURN_IF(v.rows != hp->n_vocab || v.cols != hp->n_embd, err, TERN_EFORMAT,
		       "%s: token_embd is %lld x %lld, expected %d x %d", tern_source_path(src), (long long)v.rows,
		       (long long)v.cols, hp->n_vocab, hp->n_embd);
	float *norm = malloc((size_t)hp->n_embd * sizeof(float));
	TERN_RETURN_IF(!norm, err, TERN_ENOMEM, "head: out of memory");
	int rc = tern_source_norm(src, 0, TERN_NORM_OUTPUT, norm, err);
	if (rc == 0) {
		const tern_head_config cfg = {hp->n_vocab, hp->n_embd, v.type,       v.data,
					      v.row_bytes, norm,       hp->norm_eps, isa, TERN_HEAD_FILE, NULL};
		rc = tern_head_create(&cfg, out, err);
	}
	free(norm);
	return rc;
}
