/* tern-stage.h: one pipeline stage's life after start-up (tern-node, MPI
 * ranks 1..S): load the layer range named by the coordinator's HELLO, pin
 * memory and threads to the NUMA domain, answer READY, then run every
 * ACTIVATIONS frame through its layers and pass it on (to the next stage, or
 * from the last stage back to the coordinator) until SHUTDOWN.
 *
 * Frames travel in order on each rank pair, so a KV slot may be reused by a
 * new sequence as soon as the coordinator decides: its rows arrive after the
 * old sequence's. Every slot is claimed once at start; a row at position 0
 * restarts its slot. */
#ifndef TERN_STAGE_H
#define TERN_STAGE_H

#include "frame.pb-c.h"
#include "tern-base.h"
#include "tern-engine.h"

typedef struct tern_stage_opts {
	int rank;          /* this process's MPI rank (1..S) */
	int n_ranks;       /* MPI world size (S + 1) */
	int cpu_first;     /* first CPU of the stage's domain (-1: unpinned pool) */
	int n_cpus;        /* CPUs of the domain, for the kernel threads */
	const int *cpus;   /* (n_cpus) CPU ids of the domain, or NULL */
} tern_stage_opts;

/* Loads layers [first_layer, first_layer + n_layers) named by hello with
 * the engine's loader (tern_layers_load): model_path, a GGUF or HF
 * checkpoint packed as hello->packing, or plan_dir, the plan's shards as
 * packed. */
int tern_stage_load(const Tern__V1__Frame *hello, tern_layers *out, tern_err *err);

/* Serves frames until SHUTDOWN (returns 0) or a communication failure
 * (negative). e has every slot claimed. */
int tern_stage_serve(tern_engine *e, const tern_stage_opts *o, tern_err *err);

#endif /* TERN_STAGE_H */
