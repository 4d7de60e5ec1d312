/* node-main.c: tern-node, one pipeline stage (MPI ranks 1..S).
 *
 * Start-up: wait for the coordinator's HELLO, pin to this host's NUMA domain
 * (stages on one host take domains round-robin in rank order), answer READY
 * with host and binding, then serve frames until SHUTDOWN. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tern-link.h"
#include "tern-topo.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: tern-node [--no-bind] [--timeout SECONDS]\n"
		   "  Runs one pipeline stage; launched by mpirun as ranks 1..S beside tern-coordinator.\n");
}

int main(int argc, char **argv)
{
	int bind = 1;
	double timeout = 60.0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--no-bind")) {
			bind = 0;
		} else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
			timeout = atof(argv[++i]);
		} else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "tern-node: unknown argument '%s'\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	int provided = 0;
	MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
	int rank = 0, size = 0;
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	if (rank == 0) {
		fprintf(stderr, "tern-node: rank 0 is the coordinator's; launch tern-coordinator first (MPMD)\n");
		MPI_Abort(MPI_COMM_WORLD, 2);
	}
	/* Stages sharing a host split its NUMA domains round-robin. */
	const int local_index = tern_link_host_stage_index(1);

	tern_err err;
	tern_err_clear(&err);
	char host[256] = "?";
	gethostname(host, sizeof host - 1);
	uint8_t *buf = NULL;
	Tern__V1__Frame *h = NULL;
	const uint8_t *payload;
	size_t pl;
	int rc = tern_link_recv(0, TERN_TAG_CONTROL, timeout, &buf, &h, &payload, &pl, NULL, &err);
	if (rc < 0 || h->kind != TERN__V1__FRAME_KIND__FRAME_KIND_HELLO) {
		fprintf(stderr, "tern-node %d: no HELLO from the coordinator: %s\n", rank,
			rc < 0 ? err.msg : "unexpected frame");
		MPI_Abort(MPI_COMM_WORLD, 3);
	}
	char plan_id[256];
	snprintf(plan_id, sizeof plan_id, "%s", h->plan_id ? h->plan_id : "");
	tern__v1__frame__free_unpacked(h, NULL);
	free(buf);

	char binding[256] = "unbound";
	char errmsg[512] = "";
	tern_topo *topo = NULL;
	if (tern_node_topo_load(&topo, &err) < 0) {
		snprintf(errmsg, sizeof errmsg, "%s", err.msg);
	} else if (bind && tern_node_topo_n_domains(topo) > 0) {
		int mem_bound = 0;
		int d = local_index % tern_node_topo_n_domains(topo);
		if (tern_node_topo_bind(topo, d, &mem_bound, binding, sizeof binding, &err) < 0)
			snprintf(errmsg, sizeof errmsg, "%s", err.msg);
	}
	TERN_LOGI("node", "stage %d on %s: %s", rank, host, binding);

	Tern__V1__Frame ready = TERN__V1__FRAME__INIT;
	ready.kind = TERN__V1__FRAME_KIND__FRAME_KIND_READY;
	ready.stage = (uint32_t)rank;
	ready.host = host;
	ready.binding = binding;
	ready.plan_id = plan_id;
	ready.error = errmsg;
	if (tern_link_send(0, TERN_TAG_CONTROL, &ready, NULL, 0, &err) < 0) {
		fprintf(stderr, "tern-node %d: %s\n", rank, err.msg);
		MPI_Abort(MPI_COMM_WORLD, 3);
	}
	int status = errmsg[0] ? 1 : 0;
	for (;;) {
		rc = tern_link_recv(0, TERN_TAG_CONTROL, -1, &buf, &h, &payload, &pl, NULL, &err);
		if (rc < 0) {
			fprintf(stderr, "tern-node %d: %s\n", rank, err.msg);
			status = 1;
			break;
		}
		const int kind = h->kind;
		tern__v1__frame__free_unpacked(h, NULL);
		free(buf);
		if (kind == TERN__V1__FRAME_KIND__FRAME_KIND_SHUTDOWN)
			break;
	}
	tern_node_topo_free(topo);
	MPI_Finalize();
	return status;
}
