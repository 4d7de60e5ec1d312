/* tern-coord.h: the coordinator's pieces that tern-coordinator and tern-run
 * share: the tokenizer built from a model source, the coordinator's model
 * (a file or a plan), and the offline batch mode. None of it needs MPI; the
 * MPI back end of the scheduler is tern-pipeline.h. */
#ifndef TERN_COORD_H
#define TERN_COORD_H

#include "tern-engine.h"
#include "tern-sched.h"
#include "tern-source.h"
#include "tern-tokenizer.h"

/* The tokenizer described by the source's vocabulary (GGUF tokenizer.ggml.*
 * or HF tokenizer.json). TERN_EFORMAT when the model has none. */
int tern_coord_tokenizer_from_source(tern_source *src, tern_tokenizer **out, tern_err *err);

/* What the coordinator holds of a model: hyper-parameters, tokenizer, and
 * the head (embeddings, final norm, LM head). From a model file (GGUF / HF
 * checkpoint) or from a plan directory (manifest + the coordinator's shard,
 * checksum verified); in the plan case the stages' layer ranges are the
 * plan's. "%h" in the path stands for this host's name. */
typedef struct tern_coord_model {
	tern_hparams hp;
	char path[4096];
	int from_plan;
	int plan_stages;               /* stages the plan was cut for (0: a model file) */
	struct tern_source *src;       /* model-file mode */
	struct Tern__V1__Plan *plan;   /* plan mode: the manifest */
	void *emb;                     /* plan mode: the embeddings (n_vocab, n_embd), in the coordinator
					* shard's mapping (coord_shard set) or, from older plans, decompressed */
	struct tern_shard *coord_shard; /* plan mode, emb in its mapping: the open coordinator shard (emb
					 * is then not freed), else NULL */
	void *out_w;                   /* plan mode, untied: the output matrix (n_vocab, n_embd), or NULL */
	void *qhead;                   /* plan mode: the packed LM head (the head borrows it), or NULL */
	tern_tokenizer *tok;
	tern_head *head;
} tern_coord_model;

int tern_coord_model_open(const char *path, tern_coord_model **out, tern_err *err);
void tern_coord_model_close(tern_coord_model *m);
/* Every layer of the model m holds, for running them in this process
 * (tern-coordinator --stages 0), from the same parse: a model file's source
 * packed as packing by pool's threads, or the plan's stage shards as packed
 * (packing then does not apply). Free with tern_layers_free. */
int tern_coord_model_layers(const tern_coord_model *m, int packing, tern_pool *pool, tern_layers *out,
			    tern_err *err);
/* Layer range of stage s (1..n_stages): the plan's (n_stages must match it),
 * or an even split of the model's layers. */
int tern_coord_model_stage_range(const tern_coord_model *m, int s, int n_stages, int *first, int *count,
				 tern_err *err);

/* Offline batch mode: every line of in_path is a JSON object
 *   {"prompt": "...", "max_tokens": 32, "temperature": 0, "top_k": 0,
 *    "top_p": 1, "min_p": 0, "repetition_penalty": 1, "seed": 1,
 *    "stop": ["..."], "token_ids": [1,2,3], "messages": [{"role":..,"content":..}],
 *    "ignore_eos": false, "score": false, "id": "..."}
 * (prompt, token_ids or messages). All are submitted to the scheduler at
 * once (beyond the queue limit they wait their turn), the scheduler runs until
 * all are done, and out_path gets one JSON object per input line, in input
 * order: {"id", "text", "token_ids", "finish_reason", "prompt_tokens",
 * "completion_tokens", "error"}, plus "prompt_nll" and "scored_tokens" for
 * "score": true (the prompt's summed NLL; with max_tokens 0 nothing is
 * generated), which is how perplexity runs through the cluster. A malformed line is reported with its line
 * number and stops the run before anything is generated. */
int tern_coord_batch(tern_sched *s, const char *in_path, const char *out_path, tern_err *err);

#endif /* TERN_COORD_H */
