/* tern-launch.h: tern-server's MPI job: the MPMD line deploy/tern-up runs
 * (one tern-coordinator and S tern-node ranks under mpirun, single box or a
 * hostfile), started as a child in its own process group, stopped by
 * signalling the coordinator (which drains the pipeline and stops the
 * stages), by pid, never by name. */
#ifndef TERN_LAUNCH_H
#define TERN_LAUNCH_H

#include <stdint.h>
#include <sys/types.h>

#include "tern-base.h"

typedef struct tern_launch_opts {
	const char *model;            /* GGUF file, HF directory or plan directory */
	int stages;                   /* -1: one per NUMA domain (or the hostfile's slots - 1); 0: in-process */
	const char *hostfile;         /* Open MPI hostfile; NULL: this box */
	const char *bin_dir;          /* where tern-coordinator is; tern-node is there or in ../node */
	const char *grpc_listen;      /* the coordinator's --listen */
	const char *network;          /* with hostfile: the private cluster network MPI may use (CIDR or
				       * interfaces); NULL: the hostfile's "# network: NET" line */
	int private_net;              /* single box: the job in its own network namespace (root) */
	char *const *coord_args;      /* (n_coord_args) more tern-coordinator options */
	int n_coord_args;
	int restore_nice;             /* 1: the job runs at nice `job_nice` (tern-server itself runs nicer) */
	int job_nice;
} tern_launch_opts;

#define TERN_MAX_FAILED 8

typedef struct tern_job {
	pid_t pid;      /* mpirun, or tern-coordinator itself with 0 stages */
	int stages;
	int via_mpirun;
	int exited;     /* reaped */
	int status;     /* waitpid status when exited */
	int err_fd;     /* the read end of the job's stderr; -1 once closed */
	char line[4096]; /* (line_len) a line of it not yet complete */
	size_t line_len;
	/* Hosts the job's stderr named failed (mpirun's lost daemon or dead
	 * rank, the coordinator's dead stage), in the order seen. */
	char failed[TERN_MAX_FAILED][256];
	int n_failed;
} tern_job;

#define TERN_MAX_HOSTS 64

/* A host of an Open MPI hostfile. */
typedef struct tern_host {
	char name[256];
	int slots;
} tern_host;

/* An Open MPI hostfile as tern reads it: "host slots=N" lines in order
 * (the coordinator takes the first slot), and two comment lines mpirun
 * ignores: "# network: NET" (the private cluster network) and
 * "# spare: host slots=N" (a host tern-server may put in place of a failed
 * one, in the order listed). */
typedef struct tern_hostfile {
	tern_host host[TERN_MAX_HOSTS]; /* (n_hosts) */
	int n_hosts;
	tern_host spare[TERN_MAX_HOSTS]; /* (n_spares) */
	int n_spares;
	int slots;                      /* of host[] */
	char network[256];              /* "" when the file has no network line */
} tern_hostfile;

/* Errors: TERN_EINVAL (unreadable, bad slots, fewer than 2 slots, too many hosts). */
int tern_hostfile_read(const char *path, tern_hostfile *hf, tern_err *err);
/* Writes hf in the same form. Errors: TERN_EIO. */
int tern_hostfile_write(const tern_hostfile *hf, const char *path, tern_err *err);

/* What tern_launch_sync_host found and did. */
typedef struct tern_sync_result {
	int files;      /* files the host's stages read */
	int copied;     /* of them, copied: missing there, or another xxh64 */
	uint64_t bytes; /* bytes copied */
	double seconds; /* checking and copying */
} tern_sync_result;

/* Before a spare host takes stages [first_stage, first_stage + n_stages)
 * of a job of `stages` stages: makes the files those stages read from
 * o->model the same there as here (this host, where tern-server runs, next
 * to the coordinator), comparing xxh64 and copying only what is missing or
 * different. What a stage reads: a plan's manifest and the shards of its
 * stages (every stage shard when the job's stage count is not the plan's),
 * a model file, or every file of a checkpoint directory. "%h" in o->model
 * is the host's name on each side (deploy/tern-up --remote-dir). The host
 * is reached as mpirun reaches it: the first alternative of
 * OMPI_MCA_plm_rsh_agent (default ssh) runs `xxhsum -H1 PATH` there, and a
 * copy goes through its stdin into PATH.part, renamed once whole (the
 * stage checks the shard's xxh64 again as it loads it). Errors: TERN_EIO
 * (unreadable here, the remote shell failed or timed out), TERN_EINVAL (a
 * quote in the path), and those of reading the plan's manifest. */
int tern_launch_sync_host(const tern_launch_opts *o, const char *host, int first_stage, int n_stages, int stages,
			  tern_sync_result *r, tern_err *err);

/* This machine's NUMA domains (/sys/devices/system/node), at least 1. */
int tern_launch_numa_domains(void);

/* Starts the job (argv printed to stderr first), with MPI kept off the
 * network as deploy/tern-up keeps it (deploy/README.md, trust model): on one
 * box shared memory between ranks and mpirun's OOB on loopback; with
 * private_net the whole job in a fresh network namespace with loopback only
 * (the coordinator must then serve on a unix: address); across hosts TCP only
 * on the named cluster network. Errors: TERN_EINVAL (no binaries, unreadable
 * hostfile, no network named, private_net without root or with a TCP
 * address), TERN_EIO (fork failed). */
int tern_launch_start(const tern_launch_opts *o, tern_job *job, tern_err *err);

/* Forwards what the job wrote to stderr (noting failed hosts in
 * job->failed) and reaps the job if it has exited: 1 exited (job->status
 * set), 0 running. Call it often: the job blocks when its stderr is full. */
int tern_launch_poll(tern_job *job);
/* Closes what is left of an exited job (its stderr pipe). */
void tern_launch_release(tern_job *job);

/* SIGTERM to the coordinator (found among mpirun's children by its MPI rank),
 * waits up to grace_s for the job to end, then kills its process group.
 * Returns the job's exit status (0 clean; mpirun's after a failed rank), or
 * -1 when it had to be killed. */
int tern_launch_stop(tern_job *job, double grace_s);

#endif /* TERN_LAUNCH_H */
