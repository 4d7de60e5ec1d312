/* link.c: frames over MPI (see tern-link.h). */
#include "tern-link.h"

#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Packs h + payload into a new buffer (*out, free()); returns its length. */
static long pack(const Tern__V1__Frame *h, const void *payload, size_t payload_bytes, uint8_t **out, tern_err *err)
{
	*out = NULL;
	const size_t n = tern_frame_size(h, payload_bytes);
	TERN_RETURN_IF(n > (size_t)INT32_MAX, err, TERN_ERANGE, "frame of %zu bytes is too large for one message", n);
	uint8_t *buf = malloc(n);
	TERN_RETURN_IF(!buf, err, TERN_ENOMEM, "out of memory for a %zu-byte frame", n);
	const long w = tern_frame_pack(h, payload, payload_bytes, buf, n, err);
	if (w < 0)
		free(buf);
	else
		*out = buf;
	return w;
}

/* One step of a polling wait: sleeps *ns, doubling it up to 1 ms, so a wait
 * answers fast when the peer is quick and an idle one does not burn a core. */
static void backoff(long *ns)
{
	struct timespec ts = {0, *ns};
	nanosleep(&ts, NULL);
	if (*ns < 1000000)
		*ns *= 2;
}

int tern_link_send(int dest, int tag, const Tern__V1__Frame *h, const void *payload, size_t payload_bytes,
		   tern_err *err)
{
	uint8_t *buf;
	const long w = pack(h, payload, payload_bytes, &buf, err);
	if (w < 0)
		return (int)w;
	int rc = MPI_Send(buf, (int)w, MPI_BYTE, dest, tag, MPI_COMM_WORLD);
	free(buf);
	TERN_RETURN_IF(rc != MPI_SUCCESS, err, TERN_ECOMM, "MPI_Send to rank %d failed (code %d)", dest, rc);
	return 0;
}

int tern_link_recv(int src, int tag, double timeout_s, uint8_t **bufp, Tern__V1__Frame **h,
		   const uint8_t **payload, size_t *payload_bytes, int *from, tern_err *err)
{
	*bufp = NULL;
	*h = NULL;
	MPI_Status st;
	int flag = 0;
	const double deadline = timeout_s < 0 ? -1 : tern_now_s() + timeout_s;
	long sleep_ns = 1000;
	/* Poll rather than block, so a dead peer becomes a timeout. */
	for (;;) {
		int rc = MPI_Iprobe(src, tag, MPI_COMM_WORLD, &flag, &st);
		TERN_RETURN_IF(rc != MPI_SUCCESS, err, TERN_ECOMM, "MPI_Iprobe failed (code %d)", rc);
		if (flag)
			break;
		if (deadline >= 0 && tern_now_s() > deadline)
			return TERN_ERR(err, TERN_ETIMEOUT, "no message from rank %d within %.1f s", src, timeout_s);
		backoff(&sleep_ns);
	}
	int count = 0;
	MPI_Get_count(&st, MPI_BYTE, &count);
	uint8_t *buf = malloc(count > 0 ? (size_t)count : 1);
	TERN_RETURN_IF(!buf, err, TERN_ENOMEM, "out of memory for a %d-byte frame", count);
	int rc = MPI_Recv(buf, count, MPI_BYTE, st.MPI_SOURCE, st.MPI_TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
	if (rc != MPI_SUCCESS) {
		free(buf);
		return TERN_ERR(err, TERN_ECOMM, "MPI_Recv from rank %d failed (code %d)", st.MPI_SOURCE, rc);
	}
	rc = tern_frame_unpack(buf, (size_t)count, h, payload, payload_bytes, err);
	if (rc < 0) {
		free(buf);
		return rc;
	}
	if (from)
		*from = st.MPI_SOURCE;
	*bufp = buf;
	return 0;
}

int tern_link_host_stage_index(int is_stage)
{
	MPI_Comm stages = MPI_COMM_NULL, local = MPI_COMM_NULL;
	int rank = 0, idx = -1;
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_split(MPI_COMM_WORLD, is_stage ? 1 : MPI_UNDEFINED, rank, &stages);
	if (stages != MPI_COMM_NULL) {
		MPI_Comm_split_type(stages, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local);
		MPI_Comm_rank(local, &idx);
		MPI_Comm_free(&local);
		MPI_Comm_free(&stages);
	}
	return idx;
}

int tern_link_isend(int dest, int tag, const Tern__V1__Frame *h, const void *payload, size_t payload_bytes,
		    tern_link_send_req *r, tern_err *err)
{
	TERN_RETURN_IF(r->active, err, TERN_ESTATE, "send request still in flight");
	uint8_t *buf;
	const long w = pack(h, payload, payload_bytes, &buf, err);
	if (w < 0)
		return (int)w;
	MPI_Request req;
	int rc = MPI_Isend(buf, (int)w, MPI_BYTE, dest, tag, MPI_COMM_WORLD, &req);
	if (rc != MPI_SUCCESS) {
		free(buf);
		return TERN_ERR(err, TERN_ECOMM, "MPI_Isend to rank %d failed (code %d)", dest, rc);
	}
	r->buf = buf;
	r->request = (long)MPI_Request_c2f(req);
	r->active = 1;
	return 0;
}

int tern_link_test(tern_link_send_req *r)
{
	if (!r->active)
		return 1;
	MPI_Request req = MPI_Request_f2c((MPI_Fint)r->request);
	int done = 0;
	MPI_Test(&req, &done, MPI_STATUS_IGNORE);
	if (!done) {
		r->request = (long)MPI_Request_c2f(req);
		return 0;
	}
	free(r->buf);
	r->buf = NULL;
	r->active = 0;
	return 1;
}

int tern_link_wait(tern_link_send_req *r, double timeout_s, tern_err *err)
{
	const double deadline = timeout_s < 0 ? -1 : tern_now_s() + timeout_s;
	long sleep_ns = 1000;
	while (!tern_link_test(r)) {
		if (deadline >= 0 && tern_now_s() > deadline)
			return TERN_ERR(err, TERN_ETIMEOUT, "send not completed within %.1f s", timeout_s);
		backoff(&sleep_ns);
	}
	return 0;
}

int tern_link_recv_until(int src, int tag, double timeout_s, int kind, tern_err *err)
{
	const double deadline = timeout_s < 0 ? -1 : tern_now_s() + timeout_s;
	for (;;) {
		double left = -1;
		if (deadline >= 0) {
			left = deadline - tern_now_s();
			if (left < 0)
				left = 0;
		}
		uint8_t *buf;
		Tern__V1__Frame *h;
		const uint8_t *payload;
		size_t pl;
		TERN_FORWARD_IF_ERROR(tern_link_recv(src, tag, left, &buf, &h, &payload, &pl, NULL, err));
		const int got = h->kind;
		tern__v1__frame__free_unpacked(h, NULL);
		free(buf);
		if (got == kind)
			return 0;
	}
}
