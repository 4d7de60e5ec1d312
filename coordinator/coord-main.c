/* coord-main.c: tern-coordinator, MPI rank 0.
 *
 * Start-up handshake: check that the ranks launched match the stages
 * expected, send each stage HELLO, wait (bounded) for every READY and print
 * where each stage runs. A missing or failing stage is a clear error and a
 * non-zero exit, never a hang. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tern-link.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: tern-coordinator [--stages N] [--plan-id ID] [--timeout SECONDS]\n"
		   "  Rank 0 of an MPMD job: mpirun -n 1 tern-coordinator ... : -n N tern-node ...\n");
}

static void shutdown_stages(int n_stages)
{
	Tern__V1__Frame f = TERN__V1__FRAME__INIT;
	f.kind = TERN__V1__FRAME_KIND__FRAME_KIND_SHUTDOWN;
	for (int s = 1; s <= n_stages; s++)
		tern_link_send(s, TERN_TAG_CONTROL, &f, NULL, 0, NULL);
}

int main(int argc, char **argv)
{
	int want_stages = -1;
	const char *plan_id = "none";
	double timeout = 30.0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--stages") && i + 1 < argc) {
			want_stages = atoi(argv[++i]);
		} else if (!strcmp(argv[i], "--plan-id") && i + 1 < argc) {
			plan_id = argv[++i];
		} else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
			timeout = atof(argv[++i]);
		} else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "tern-coordinator: unknown argument '%s'\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	int provided = 0;
	MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
	int rank = 0, size = 0;
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	if (rank != 0) {
		fprintf(stderr, "tern-coordinator: must be rank 0 (list it first in the mpirun line)\n");
		MPI_Abort(MPI_COMM_WORLD, 2);
	}
	tern_link_host_stage_index(0);
	const int n_stages = size - 1;
	if (n_stages < 1 || (want_stages >= 0 && want_stages != n_stages)) {
		fprintf(stderr, "tern-coordinator: the plan has %d stages but mpirun started %d tern-node ranks\n",
			want_stages >= 0 ? want_stages : 1, n_stages);
		MPI_Abort(MPI_COMM_WORLD, 2);
	}
	tern_err err;
	tern_err_clear(&err);
	Tern__V1__Frame hello = TERN__V1__FRAME__INIT;
	hello.kind = TERN__V1__FRAME_KIND__FRAME_KIND_HELLO;
	hello.plan_id = (char *)plan_id;
	hello.n_stages = (uint32_t)n_stages;
	for (int s = 1; s <= n_stages; s++) {
		hello.stage = (uint32_t)s;
		if (tern_link_send(s, TERN_TAG_CONTROL, &hello, NULL, 0, &err) < 0) {
			fprintf(stderr, "tern-coordinator: %s\n", err.msg);
			MPI_Abort(MPI_COMM_WORLD, 3);
		}
	}
	int failed = 0;
	for (int got = 0; got < n_stages; got++) {
		uint8_t *buf;
		Tern__V1__Frame *h;
		const uint8_t *payload;
		size_t pl;
		int from = -1;
		if (tern_link_recv(MPI_ANY_SOURCE, TERN_TAG_CONTROL, timeout, &buf, &h, &payload, &pl, &from, &err) < 0) {
			fprintf(stderr, "tern-coordinator: waiting for stage READY: %s\n", err.msg);
			MPI_Abort(MPI_COMM_WORLD, 3);
		}
		if (h->kind != TERN__V1__FRAME_KIND__FRAME_KIND_READY || (h->error && h->error[0])) {
			fprintf(stderr, "tern-coordinator: stage %d failed to start: %s\n", from,
				h->error && h->error[0] ? h->error : "unexpected frame");
			failed = 1;
		} else {
			printf("stage %d ready on %s: %s\n", from, h->host ? h->host : "?",
			       h->binding ? h->binding : "?");
		}
		tern__v1__frame__free_unpacked(h, NULL);
		free(buf);
	}
	fflush(stdout);
	shutdown_stages(n_stages);
	MPI_Finalize();
	return failed ? 1 : 0;
}
