/* tern-plan.h: the planner (which layers go to which NUMA domain of which
 * host), the cluster description it plans for (a hosts file, this machine's
 * topology, or N equal domains), and the plan directory: a protobuf manifest
 * (proto/plan.proto) beside one shard per stage and one for the coordinator
 * (tern-shard.h).
 *
 * The planner needs only hyper-parameters, so a plan for a 100B model over
 * many hosts is computed without reading any weights (`--dry-run`). */
#ifndef TERN_PLAN_H
#define TERN_PLAN_H

#include <stdint.h>
#include <stdio.h>

#include "tern-base.h"
#include "tern-kernels.h"
#include "tern-model.h"

/* ---- cluster description ------------------------------------------------ */

typedef struct tern_cluster_host {
	char name[64];
	char address[128]; /* defaults to name */
} tern_cluster_host;

typedef struct tern_cluster_domain {
	int host;           /* index into tern_cluster.hosts */
	int numa;           /* NUMA domain (os index) on that host */
	uint64_t mem_bytes; /* memory a stage may use there */
	int cores;
	int line;           /* line of the hosts file that declared it (0 if none) */
} tern_cluster_domain;

typedef struct tern_cluster {
	int n_hosts;
	tern_cluster_host *hosts;     /* (n_hosts) */
	int n_domains;
	tern_cluster_domain *domains; /* (n_domains) in pipeline order: one stage each */
	int coord_domain;             /* index into domains the coordinator shares */
} tern_cluster;

/* Hosts file, a small YAML subset (deploy/hosts.example.yaml is the example):
 *
 *   hosts:                       # the only top-level key
 *     - name: node-a             # required, unique, [A-Za-z0-9._-], < 64 chars
 *       address: 10.0.0.1        # optional, defaults to name
 *       coordinator: true        # optional, on at most one host (default: first)
 *       domains:                 # required, non-empty, pipeline order
 *         - numa: 0              # optional, defaults to the position in the list
 *           memory: 64GiB        # required: bytes, or K/M/G/T[iB] (binary), KB/MB/GB/TB (decimal)
 *           cores: 16            # required, >= 1
 *         - {numa: 1, memory: 64GiB, cores: 16}   # flow maps on one line work too
 *
 * One YAML document, read by libyaml: block mappings and sequences (spaces
 * only), `#` comments, plain/single/double-quoted scalars, flow maps.
 * Anchors, aliases, tags, block strings (`|`, `>`), flow lists, unknown or
 * duplicate keys and files over 1 MiB are errors naming the file and line.
 * Values are taken as written (`coordinator` is `true` or `false`, numbers
 * are decimal). */
int tern_cluster_parse_yaml(tern_cluster *c, const char *text, size_t len, const char *fname, tern_err *err);
int tern_cluster_load_yaml(tern_cluster *c, const char *path, tern_err *err);

/* One host with n equal domains sharing mem_total bytes and cores_total cores
 * (`--stages N`). */
int tern_cluster_uniform(tern_cluster *c, const char *host, int n, uint64_t mem_total, int cores_total, tern_err *err);
/* Incremental construction (the CLI fills it from hwloc). Returns the new index. */
int tern_cluster_add_host(tern_cluster *c, const char *name, const char *address, tern_err *err);
int tern_cluster_add_domain(tern_cluster *c, int host, int numa, uint64_t mem_bytes, int cores, tern_err *err);
void tern_cluster_free(tern_cluster *c);

/* ---- what is planned ---------------------------------------------------- */

/* The LM head a plan stores (plan.proto LmHead; coordinator/gen's
 * tern_head_format has the same numbers): the head matrix as the model
 * stores it, or packed quantized (kernels/tern-float.h tern_qh_*) in the
 * coordinator's shard as role TERN_ROLE_HEAD_PACKED. */
#define TERN_PLAN_HEAD_STORED 0
#define TERN_PLAN_HEAD_Q8 1
#define TERN_PLAN_HEAD_Q4 2
/* The LM head tern-partition, tern-run and tern-coordinator use unless told
 * otherwise (--lm-head): q8, measured in coordinator/README.md ("Quantized LM
 * head"). The library's own default (tern_plan_opts_default) stays STORED. */
#define TERN_PLAN_HEAD_DEFAULT TERN_PLAN_HEAD_Q8
/* The kernels' tern_qh_type of a packed plan head; -1 for STORED or unknown. */
int tern_plan_head_qh(int lm_head);
/* Bytes of a packed head of n_vocab x n_embd in that format (tern_qh_bytes);
 * 0 for STORED or unknown. */
uint64_t tern_plan_head_packed_bytes(int lm_head, int n_vocab, int n_embd);

typedef struct tern_plan_model {
	tern_hparams hp;
	tern_dtype embd_type;     /* token embedding as stored: F32, F16 or BF16 (the manifest keeps its GGUF code) */
	uint64_t tokenizer_bytes; /* coordinator memory for tokenizer tables; 0 = estimate from n_vocab */
	int lm_head;              /* TERN_PLAN_HEAD_*: the head the coordinator reads per token */
} tern_plan_model;

typedef struct tern_plan_opts {
	tern_packing packing; /* TL2 by default */
	int group_rows;       /* rows per scale group; 0 = one scale per tensor */
	int n_seqs;           /* sequences the KV cache is sized for (default 4) */
	int n_ctx;            /* context per sequence (default min(4096, n_ctx_train)) */
	int work_tokens;      /* largest micro-batch / prefill chunk in tokens (default 128) */
	int kv_type;          /* KV cache element type, tern_kv_type_ok (default TERN_KV_TYPE_DEFAULT, f16) */
	int lm_head;          /* TERN_PLAN_HEAD_*: the LM head stored in the coordinator's shard (default STORED) */
	int lm_head_f16;      /* refuse a head matrix not stored as F16 (--lm-head f16) */
} tern_plan_opts;

/* Fills defaults for hp (TL2, per tensor, 4 x min(4096, n_ctx_train), 128, f16 KV). */
void tern_plan_opts_default(tern_plan_opts *o, const tern_hparams *hp);
/* Bytes per element of an embedding type; 0 unless F32, F16 or BF16. */
int tern_plan_embd_elem_bytes(tern_dtype embd_type);

/* Byte counts the planner balances and fits (pure functions).
 * layer weights: packed ternary data of the 7 projections + their scales + f32 norms;
 * layer KV: n_seqs x n_ctx positions of K and V in o->kv_type;
 * layer token bytes: what decoding one token reads: the weights + K,V of n_ctx positions;
 * stage work: micro-batch activations (f32 and int8 + LUTs) + attention scores
 *   of one prefill chunk, an estimate documented in planner.c. */
uint64_t tern_plan_layer_weight_bytes(const tern_hparams *hp, const tern_plan_opts *o);
uint64_t tern_plan_layer_kv_bytes(const tern_hparams *hp, const tern_plan_opts *o);
uint64_t tern_plan_layer_token_bytes(const tern_hparams *hp, const tern_plan_opts *o);
uint64_t tern_plan_stage_work_bytes(const tern_hparams *hp, const tern_plan_opts *o);
/* Coordinator: embeddings (+ the untied head as stored, + the packed head) + output norm; logits + tokenizer;
 * head read per token (the packed head's real bytes when the plan stores one) + one embedding row + the norm. */
uint64_t tern_plan_coord_weight_bytes(const tern_plan_model *m);
uint64_t tern_plan_coord_work_bytes(const tern_plan_model *m, const tern_plan_opts *o);
uint64_t tern_plan_coord_token_bytes(const tern_plan_model *m);

typedef struct tern_plan_stage {
	int index;              /* 1..S (MPI rank) */
	int domain;             /* index into tern_cluster.domains */
	int first_layer;
	int last_layer;         /* inclusive */
	uint64_t weight_bytes;
	uint64_t kv_bytes;
	uint64_t work_bytes;
	uint64_t token_bytes;   /* per token: its layers' weights + KV read */
	uint64_t mem_need;      /* weight + kv + work (+ the coordinator's if it shares the domain) */
	double token_share;
} tern_plan_stage;

typedef struct tern_plan_layout {
	int n_stages;
	tern_plan_stage *stages;   /* (n_stages) */
	int coord_domain;          /* index into tern_cluster.domains */
	int coord_stage;           /* 1-based stage on that domain, 0 if none */
	uint64_t coord_weight_bytes, coord_work_bytes, coord_token_bytes;
	double coord_share;
	uint64_t total_token_bytes;     /* stages + coordinator */
	uint64_t bottleneck_bytes;      /* max over domains of the per-token bytes they read */
} tern_plan_layout;

/* Chooses contiguous layer groups, one per cluster domain, each >= 1 layer:
 * first the smallest achievable maximum per-domain per-token bytes (the
 * coordinator's head counted on its domain) among assignments that fit every
 * domain's memory, then among those the one with the smallest sum of squared
 * stage bytes (so slack is spread, not dumped on one stage). Exact DP,
 * O(S * L^2).
 * If no assignment fits, returns TERN_ERANGE with a one-line message and sets
 * *shortfall (may be NULL) to the smallest number of bytes that, added to
 * every domain, would make a plan fit. */
int tern_plan_compute(const tern_plan_model *m, const tern_plan_opts *o, const tern_cluster *c,
		      tern_plan_layout *out, uint64_t *shortfall, tern_err *err);
void tern_plan_layout_free(tern_plan_layout *l);

/* The dry-run table: stage, host, NUMA domain, layers, weight MiB, KV MiB,
 * work MiB, memory use of the domain, share of per-token bytes. */
void tern_plan_print_table(FILE *f, const tern_plan_model *m, const tern_plan_opts *o, const tern_cluster *c,
			   const tern_plan_layout *l);

/* ---- plan directory ------------------------------------------------------ */

#define TERN_PLAN_MANIFEST "plan.pb"
#define TERN_PLAN_FORMAT_VERSION 1
/* Largest manifest accepted (the tokenizer of a 128k vocabulary is ~6 MB). */
#define TERN_PLAN_MANIFEST_MAX (256u << 20)

/* The decoded manifest: protobuf-c's Tern__V1__Plan (plan.pb-c.h). */
typedef struct Tern__V1__Plan tern_plan_manifest;

/* Decodes and validates a manifest from memory: format version, hparams,
 * stages contiguous over [0, n_layer) in index order 1..S, every shard named
 * in files, file names without '/', sizes sane. name is used in messages. */
int tern_plan_manifest_decode(tern_plan_manifest **out, const uint8_t *buf, size_t len, const char *name,
			      tern_err *err);
/* The manifest's hyper-parameters as tern_hparams (validated). */
int tern_plan_manifest_hparams(const tern_plan_manifest *p, tern_hparams *hp, tern_err *err);
/* The packed LM head of a plan in its coordinator shard sh (path for
 * messages): with Coordinator.lm_head Q8/Q4, the TERN_ROLE_HEAD_PACKED
 * tensor's dtype, shape and byte size are checked against n_vocab x n_embd
 * in that format before anything is read; *index = the tensor, *qh = its
 * tern_qh_type. With STORED, *index = *qh = -1 and such a tensor is an error.
 * TERN_EFORMAT (one line, naming the file) for any mismatch or unknown format. */
struct tern_shard;
int tern_plan_packed_head(const tern_plan_manifest *p, const struct tern_shard *sh, const char *path, int *index,
			  int *qh, tern_err *err);
/* Reads dir/plan.pb and decodes it. */
int tern_plan_manifest_read(tern_plan_manifest **out, const char *dir, tern_err *err);
void tern_plan_manifest_free(tern_plan_manifest *p);

/* Checks every file of the plan: present, size and xxh64 as in the
 * manifest, shard header and index consistent with its stage. The first
 * problem is returned (TERN_ECHECKSUM, TERN_EFORMAT, TERN_EIO, ...) with the
 * damaged file's path in the message. */
int tern_plan_verify(const char *dir, int show_progress, tern_err *err);

/* Writes the plan directory for a model (GGUF file or HF checkpoint
 * directory, read via tern-source.h): plans as tern_plan_compute (refusing a
 * plan that does not fit), packs every stage's projections in o->packing with
 * the scales of their own groups (o->group_rows applies only to
 * full-precision sources; pre-quantized ones keep their per-tensor scale),
 * writes the shards (zstd level zlevel, 0 = raw) and then the manifest.
 * show_progress draws a progress bar on stderr when it is a terminal; table
 * (may be NULL) receives the plan table. */
int tern_plan_write(const char *model_path, const tern_plan_opts *o, const tern_cluster *c, const char *dir,
		    int zlevel, int show_progress, FILE *table, tern_err *err);

#endif /* TERN_PLAN_H */
