/* bad-stage.c: a pipeline stage that lies, for test_bad_stage.py. A real MPI
 * rank that runs in place of tern-node: it answers HELLO with READY like a
 * stage, then returns every activation frame with one thing wrong, chosen by
 * argv[1]:
 *   echo      nothing wrong (identity layers): the test's control case
 *   rows      64 times as many rows as were sent (header and payload agree,
 *             so only a check against what was sent catches it)
 *   fewer     one row fewer in the header and the payload
 *   ids       the first row's sequence id changed
 *   pos       the first row's position changed
 *   step      the step (micro-batch id) changed
 *   width     rows one float wider
 *   kind      a RELEASE frame instead of ACTIVATIONS
 * Then it waits for the coordinator's SHUTDOWN (or for mpirun to end it). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern-link.h"

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "echo";
	MPI_Init(&argc, &argv);
	MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
	int rank = 0, size = 0;
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	tern_link_host_stage_index(1);
	tern_err err;
	tern_err_clear(&err);
	uint8_t *buf = NULL;
	Tern__V1__Frame *h = NULL;
	const uint8_t *payload = NULL;
	size_t pl = 0;
	if (tern_link_recv(0, TERN_TAG_CONTROL, 60, &buf, &h, &payload, &pl, NULL, &err) < 0) {
		fprintf(stderr, "bad-stage: %s\n", err.msg);
		MPI_Abort(MPI_COMM_WORLD, 3);
	}
	Tern__V1__Frame ready = TERN__V1__FRAME__INIT;
	ready.kind = TERN__V1__FRAME_KIND__FRAME_KIND_READY;
	ready.stage = (uint32_t)rank;
	ready.host = (char *)"bad-stage";
	ready.binding = (char *)mode;
	ready.plan_id = h->plan_id;
	ready.first_layer = h->first_layer;
	ready.n_layers = h->n_layers;
	if (tern_link_send(0, TERN_TAG_CONTROL, &ready, NULL, 0, &err) < 0) {
		fprintf(stderr, "bad-stage: %s\n", err.msg);
		MPI_Abort(MPI_COMM_WORLD, 3);
	}
	tern__v1__frame__free_unpacked(h, NULL);
	free(buf);

	const int prev = rank - 1, next = rank + 1 < size ? rank + 1 : 0;
	for (;;) {
		if (tern_link_recv(prev, MPI_ANY_TAG, -1, &buf, &h, &payload, &pl, NULL, &err) < 0)
			break;
		if (h->kind == TERN__V1__FRAME_KIND__FRAME_KIND_SHUTDOWN) {
			tern_link_send(next, TERN_TAG_ACT, h, NULL, 0, NULL);
			tern__v1__frame__free_unpacked(h, NULL);
			free(buf);
			break;
		}
		Tern__V1__Frame out = *h; /* shallow: arrays point into h */
		const void *body = payload;
		size_t body_len = pl;
		void *big = NULL;
		uint64_t *ids = NULL;
		uint32_t *pos = NULL;
		if (!strcmp(mode, "rows")) {
			const size_t n = 64 * h->n_seq_ids + 1;
			ids = calloc(n, sizeof *ids);
			pos = calloc(n, sizeof *pos);
			out.n_seq_ids = out.n_positions = n;
			out.seq_ids = ids;
			out.positions = pos;
			body_len = n * h->n_embd * sizeof(float);
			body = big = calloc(1, body_len);
		} else if (!strcmp(mode, "fewer") && h->n_seq_ids > 1) {
			out.n_seq_ids = out.n_positions = h->n_seq_ids - 1;
			body_len = out.n_seq_ids * h->n_embd * sizeof(float);
		} else if (!strcmp(mode, "ids") && h->n_seq_ids > 0) {
			h->seq_ids[0] += 1;
		} else if (!strcmp(mode, "pos") && h->n_positions > 0) {
			h->positions[0] += 1;
		} else if (!strcmp(mode, "step")) {
			out.step = h->step + 1;
		} else if (!strcmp(mode, "width")) {
			out.n_embd = h->n_embd + 1;
			body_len = h->n_seq_ids * (h->n_embd + 1) * sizeof(float);
			body = big = calloc(1, body_len);
		} else if (!strcmp(mode, "kind")) {
			out.kind = TERN__V1__FRAME_KIND__FRAME_KIND_RELEASE;
		}
		const int rc = tern_link_send(next, TERN_TAG_ACT, &out, body, body_len, &err);
		free(big);
		free(ids);
		free(pos);
		tern__v1__frame__free_unpacked(h, NULL);
		free(buf);
		if (rc < 0) {
			fprintf(stderr, "bad-stage: %s\n", err.msg);
			break;
		}
	}
	MPI_Finalize();
	return 0;
}
