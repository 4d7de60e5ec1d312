/* plan-internal.h: what the plan writer (plan-write.c) and the manifest
 * reader (plan-manifest.c) share; not part of tern-plan.h's contract. */
#ifndef TERN_PLAN_INTERNAL_H
#define TERN_PLAN_INTERNAL_H

#include "plan.pb-c.h"
#include "tern-model.h"

/* The hyper-parameters the manifest stores as uint32 (tern_hparams: int),
 * and those it stores with the same type, for X-macros over the fields. */
#define TERN_PLAN_HPARAMS_U32(X) \
	X(n_embd) X(n_layer) X(n_head) X(n_head_kv) X(head_dim) X(n_ff) X(n_vocab) X(n_ctx_train)
#define TERN_PLAN_HPARAMS_SAME(X) X(rope_theta) X(norm_eps) X(bos_id) X(eos_id) X(eot_id)

/* "dir/name" in a new malloc'd string; NULL when out of memory. */
char *tern_plan_path(const char *dir, const char *name);

/* Initialises h with hp's values; h->arch borrows hp->arch. */
void tern_plan_pb_hparams(Tern__V1__HParams *h, const tern_hparams *hp);

#endif
