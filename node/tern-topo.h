/* tern-topo.h: this host's NUMA domains, read with hwloc, and pinning of the
 * calling process (threads and memory policy) to one of them.
 *
 * On a one-node machine a synthetic topology stands in for tests:
 * HWLOC_XMLFILE=numa2.xml (or HWLOC_SYNTHETIC="pack:2 [numa] core:1 pu:1")
 * with HWLOC_THISSYSTEM=1 makes CPU binding real; memory binding to a node
 * the kernel lacks then fails with EINVAL, which is reported as a warning and
 * falls back to first-touch after the CPU binding (PLATFORM.md section 4). */
#ifndef TERN_TOPO_H
#define TERN_TOPO_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"

typedef struct tern_numa_domain {
	int logical_index;     /* 0..n_domains-1, hwloc's logical order */
	unsigned os_index;     /* the kernel's node number */
	int n_cores;
	int n_pus;
	uint64_t memory_bytes; /* local memory hwloc reports (0 if unknown) */
	char cpuset[64];       /* hwloc list form, e.g. "0-1" */
} tern_numa_domain;

typedef struct tern_topo tern_topo;

/* Loads the topology (honours HWLOC_* environment). */
int tern_node_topo_load(tern_topo **out, tern_err *err);
void tern_node_topo_free(tern_topo *t);

int tern_node_topo_n_domains(const tern_topo *t);
const tern_numa_domain *tern_node_topo_domain(const tern_topo *t, int i);
/* 1 if hwloc describes the machine this process runs on (binding is real). */
int tern_node_topo_is_thissystem(const tern_topo *t);

/* Binds the calling process's threads to domain i's CPUs and its memory
 * policy to domain i. A memory-binding refusal (kernel lacks the node, no
 * support) is logged as a warning and *mem_bound set to 0; a CPU-binding
 * failure on a real topology is an error. desc receives a one-line
 * description of what was done, for logs and the READY frame. */
int tern_node_topo_bind(tern_topo *t, int i, int *mem_bound, char *desc, size_t desc_len, tern_err *err);

/* The CPU ids (os indexes) of domain i into cpus (at most max); returns how
 * many the domain has (may exceed max), or a negative TERN_E*. */
int tern_node_topo_domain_cpus(const tern_topo *t, int i, int *cpus, int max, tern_err *err);

/* The cpuset this process is currently bound to, in hwloc list form. */
int tern_node_topo_current_binding(tern_topo *t, char *buf, size_t len, tern_err *err);

#endif /* TERN_TOPO_H */
