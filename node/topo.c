/* topo.c: NUMA domains and pinning with hwloc (see tern-topo.h). */
#include "tern-topo.h"

#include <errno.h>
#include <hwloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tern_topo {
	hwloc_topology_t topo;
	int n;
	tern_numa_domain *dom; /* (n) */
};

int tern_node_topo_load(tern_topo **out, tern_err *err)
{
	*out = NULL;
	tern_topo *t = calloc(1, sizeof *t);
	TERN_RETURN_IF(!t, err, TERN_ENOMEM, "out of memory for topology");
	if (hwloc_topology_init(&t->topo) != 0) {
		free(t);
		return TERN_ERR(err, TERN_EIO, "hwloc_topology_init failed");
	}
	if (hwloc_topology_load(t->topo) != 0) {
		hwloc_topology_destroy(t->topo);
		free(t);
		return TERN_ERR(err, TERN_EIO, "hwloc_topology_load failed: %s", strerror(errno));
	}
	int n = hwloc_get_nbobjs_by_type(t->topo, HWLOC_OBJ_NUMANODE);
	if (n <= 0)
		n = 0;
	t->dom = calloc(n > 0 ? (size_t)n : 1, sizeof *t->dom);
	if (!t->dom) {
		tern_node_topo_free(t);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory for topology");
	}
	for (int i = 0; i < n; i++) {
		hwloc_obj_t o = hwloc_get_obj_by_type(t->topo, HWLOC_OBJ_NUMANODE, (unsigned)i);
		tern_numa_domain *d = &t->dom[i];
		d->logical_index = i;
		d->os_index = o->os_index;
		d->memory_bytes = o->attr ? o->attr->numanode.local_memory : 0;
		d->n_cores = hwloc_get_nbobjs_inside_cpuset_by_type(t->topo, o->cpuset, HWLOC_OBJ_CORE);
		d->n_pus = hwloc_get_nbobjs_inside_cpuset_by_type(t->topo, o->cpuset, HWLOC_OBJ_PU);
		hwloc_bitmap_list_snprintf(d->cpuset, sizeof d->cpuset, o->cpuset);
	}
	t->n = n;
	*out = t;
	return 0;
}

void tern_node_topo_free(tern_topo *t)
{
	if (!t)
		return;
	if (t->topo)
		hwloc_topology_destroy(t->topo);
	free(t->dom);
	free(t);
}

int tern_node_topo_n_domains(const tern_topo *t)
{
	return t->n;
}

const tern_numa_domain *tern_node_topo_domain(const tern_topo *t, int i)
{
	return (i >= 0 && i < t->n) ? &t->dom[i] : NULL;
}

int tern_node_topo_is_thissystem(const tern_topo *t)
{
	return hwloc_topology_is_thissystem(t->topo);
}

int tern_node_topo_bind(tern_topo *t, int i, int *mem_bound, char *desc, size_t desc_len, tern_err *err)
{
	*mem_bound = 0;
	TERN_RETURN_IF(i < 0 || i >= t->n, err, TERN_EINVAL, "NUMA domain %d does not exist (this host has %d)", i,
		       t->n);
	hwloc_obj_t o = hwloc_get_obj_by_type(t->topo, HWLOC_OBJ_NUMANODE, (unsigned)i);
	const int real = hwloc_topology_is_thissystem(t->topo);
	if (hwloc_set_cpubind(t->topo, o->cpuset, HWLOC_CPUBIND_PROCESS) != 0) {
		TERN_RETURN_IF(real, err, TERN_EIO, "cannot bind to the CPUs %s of NUMA domain %d: %s",
			       t->dom[i].cpuset, i, strerror(errno));
		TERN_LOGW("topo", "CPU binding to domain %d not applied (topology is not this system)", i);
	}
	if (hwloc_set_membind(t->topo, o->nodeset, HWLOC_MEMBIND_BIND, HWLOC_MEMBIND_PROCESS | HWLOC_MEMBIND_BYNODESET) ==
	    0) {
		*mem_bound = real;
	} else {
		TERN_LOGW("topo", "memory binding to NUMA domain %d refused (%s): using first-touch after CPU binding",
			  i, strerror(errno));
	}
	snprintf(desc, desc_len, "numa %d (os %u) cpus %s mem %s", i, t->dom[i].os_index, t->dom[i].cpuset,
		 *mem_bound ? "bound" : "first-touch");
	return 0;
}

int tern_node_topo_current_binding(tern_topo *t, char *buf, size_t len, tern_err *err)
{
	hwloc_bitmap_t set = hwloc_bitmap_alloc();
	TERN_RETURN_IF(!set, err, TERN_ENOMEM, "out of memory");
	int rc = hwloc_get_cpubind(t->topo, set, HWLOC_CPUBIND_PROCESS);
	if (rc == 0)
		hwloc_bitmap_list_snprintf(buf, len, set);
	hwloc_bitmap_free(set);
	TERN_RETURN_IF(rc != 0, err, TERN_EIO, "hwloc_get_cpubind failed: %s", strerror(errno));
	return 0;
}

int tern_node_topo_domain_cpus(const tern_topo *t, int i, int *cpus, int max, tern_err *err)
{
	TERN_RETURN_IF(i < 0 || i >= t->n, err, TERN_EINVAL, "NUMA domain %d does not exist (this host has %d)", i,
		       t->n);
	hwloc_obj_t o = hwloc_get_obj_by_type(t->topo, HWLOC_OBJ_NUMANODE, (unsigned)i);
	int n = 0;
	unsigned id;
	hwloc_bitmap_foreach_begin(id, o->cpuset)
	{
		if (n < max)
			cpus[n] = (int)id;
		n++;
	}
	hwloc_bitmap_foreach_end();
	return n;
}
