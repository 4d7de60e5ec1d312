/* tern-pipeline.h: the scheduler's back end over MPI (library
 * tern_pipeline, linked by tern-coordinator only, so tern-run and the rest
 * of serve/ need no MPI): micro-batches go through the tern-node ranks as
 * ACTIVATIONS frames (node/tern-link.h). */
#ifndef TERN_PIPELINE_H
#define TERN_PIPELINE_H

#include "tern-sched.h"

/* The scheduler's back end over MPI: stages are ranks 1..n_stages in layer
 * order; micro-batches go to rank 1 and come back from rank n_stages, up to
 * max_in_flight at once. */
int tern_coord_pipeline_backend(int n_stages, int n_embd, int max_in_flight, tern_sched_backend *out, tern_err *err);
/* Stages whose host, CPU binding (READY's text) and pid are known
 * (1..TERN_PIPE_MAX_STAGES), so that a dead or stopped one on this host can be
 * named (be->diagnose), and so that be->max_in_flight (at most the
 * max_in_flight given above) becomes the number of micro-batches that can
 * progress at once: one per group of stages on the same host and binding, plus
 * one for the coordinator's head if no stage shares its host. Call for every
 * stage before the scheduler is created from be. */
#define TERN_PIPE_MAX_STAGES 64
void tern_coord_pipeline_set_stage(tern_sched_backend *be, int stage, const char *host, const char *binding,
				   uint32_t pid);
/* Drains the pipeline: sends SHUTDOWN through the stages and waits (up to
 * timeout_s) for it to come back from the last one. Frees the back end. */
int tern_coord_pipeline_shutdown(tern_sched_backend *be, double timeout_s, tern_err *err);

#endif /* TERN_PIPELINE_H */
