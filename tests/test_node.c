/* test_node.c: node/ — hwloc topology and NUMA pinning. Run with a synthetic
 * 2-domain topology (HWLOC_SYNTHETIC + HWLOC_THISSYSTEM=1, set by ctest) so
 * the multi-NUMA path is exercised on a one-node machine. */
#include <stdlib.h>
#include <string.h>

#include "tern-test.h"
#include "tern-topo.h"

static void test_domains(void)
{
	tern_topo *t = NULL;
	tern_err e;
	TT_REQUIRE(tern_node_topo_load(&t, &e) == 0);
	const int n = tern_node_topo_n_domains(t);
	const char *want = getenv("TERN_TEST_EXPECT_DOMAINS");
	TT_CHECK(n >= 1);
	if (want)
		TT_EQ_INT(n, atoi(want));
	int pus = 0;
	for (int i = 0; i < n; i++) {
		const tern_numa_domain *d = tern_node_topo_domain(t, i);
		TT_REQUIRE(d != NULL);
		TT_EQ_INT(d->logical_index, i);
		TT_CHECK(d->n_pus >= 1);
		TT_CHECK(d->cpuset[0] != '\0');
		pus += d->n_pus;
	}
	TT_CHECK(tern_node_topo_domain(t, n) == NULL);
	TT_CHECK(tern_node_topo_domain(t, -1) == NULL);
	TT_CHECK(pus >= 1);
	tern_node_topo_free(t);
	tern_node_topo_free(NULL);
}

static void test_bind_each_domain(void)
{
	tern_topo *t = NULL;
	tern_err e;
	TT_REQUIRE(tern_node_topo_load(&t, &e) == 0);
	const int n = tern_node_topo_n_domains(t);
	for (int i = 0; i < n; i++) {
		int mem = -1;
		char desc[256];
		int rc = tern_node_topo_bind(t, i, &mem, desc, sizeof desc, &e);
		TT_CHECKF(rc == 0, "%s", e.msg);
		TT_CHECK(mem == 0 || mem == 1);
		TT_CHECK(strstr(desc, "numa") != NULL);
		if (tern_node_topo_is_thissystem(t)) {
			/* The process is now really on that domain's CPUs. */
			char cur[64];
			TT_REQUIRE(tern_node_topo_current_binding(t, cur, sizeof cur, &e) == 0);
			TT_CHECKF(!strcmp(cur, tern_node_topo_domain(t, i)->cpuset), "bound to %s, domain has %s",
				  cur, tern_node_topo_domain(t, i)->cpuset);
		} else {
			TT_NOTE_SKIP("real CPU binding (the topology is not this system)");
		}
	}
	int mem;
	char desc[64];
	TT_EQ_INT(tern_node_topo_bind(t, n, &mem, desc, sizeof desc, &e), TERN_EINVAL);
	TT_CHECK(strstr(e.msg, "does not exist") != NULL);
	tern_node_topo_free(t);
}

TT_MAIN(TT_CASE(test_domains), TT_CASE(test_bind_each_domain))
