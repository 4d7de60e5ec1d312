/* link.c: frames over MPI (see tern-link.h). */
#include "tern-link.h"

#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
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

/* ---- waiting for a frame ---------------------------------------------------
 * A rank spends most of its time waiting for its next frame: at one sequence a
 * stage waits while the other stages and the coordinator's head run, and on one
 * box they run on the cores it shares. So the wait never spins: it polls
 * MPI_Iprobe between sleeps (a blocking receive would not time out on a dead
 * peer, and Open MPI's blocking calls spin). Sleeping 1 ms at a time costs
 * ~0.5 ms per hand-off on average; waking every few microseconds would steal
 * the cores of the rank that works. The wait therefore remembers how long the
 * last wait for the same peer and tag took (decode steps repeat) and sleeps
 * in steps of half the time left until then, down to WAIT_MIN_NS and up to an
 * eighth of that time (1-4 ms); past it the steps grow by a quarter of the
 * time overdue, up to 1 ms. A frame that comes when the last one did is seen
 * within ~WAIT_MIN_NS plus the wake-up (60-90 us here) at ~15 wake-ups per
 * 30 ms wait instead of ~30; one much later than the last costs what the old
 * 1 ms steps did, one much earlier at most an eighth of the last wait. Each
 * wake-up costs ~20 us of CPU in this VM, taken from the rank that works.
 * The thread's timer slack is set to 1 us once, or each sleep could be 50 us
 * longer than asked. */
#define WAIT_MIN_NS 20000L
#define WAIT_MAX_NS 1000000L
#define WAIT_MAX_EXPECTED_NS 4000000L
#define WAIT_HIST 8

typedef struct wait_hist {
	int used, src, tag;
	uint64_t ns; /* how long the last completed wait took; 0 = none yet */
} wait_hist;

/* Per thread: each waiting thread has its own peers and rhythm. */
static _Thread_local wait_hist g_hist[WAIT_HIST];
static _Thread_local int g_hist_next, g_slack_set;

static wait_hist *hist_of(int src, int tag)
{
	for (int i = 0; i < WAIT_HIST; i++)
		if (g_hist[i].used && g_hist[i].src == src && g_hist[i].tag == tag)
			return &g_hist[i];
	wait_hist *w = &g_hist[g_hist_next];
	g_hist_next = (g_hist_next + 1) % WAIT_HIST;
	*w = (wait_hist){.used = 1, .src = src, .tag = tag, .ns = 0};
	return w;
}

/* The next sleep of a wait that has lasted el_ns, where the last one took
 * expect_ns (0: unknown). */
static long wait_step(uint64_t el_ns, uint64_t expect_ns)
{
	uint64_t step, cap = WAIT_MAX_NS;
	if (expect_ns > el_ns) {
		step = (expect_ns - el_ns) / 2;
		if (expect_ns / 8 > cap)
			cap = expect_ns / 8 < WAIT_MAX_EXPECTED_NS ? expect_ns / 8 : WAIT_MAX_EXPECTED_NS;
	} else {
		step = (el_ns - expect_ns) / 4;
	}
	return step < WAIT_MIN_NS ? WAIT_MIN_NS : step > cap ? (long)cap : (long)step;
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
	if (!g_slack_set) {
		prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
		g_slack_set = 1;
	}
	wait_hist *hist = hist_of(src, tag);
	const uint64_t t0 = tern_now_ns();
	const uint64_t limit_ns = timeout_s < 0 ? UINT64_MAX : (uint64_t)(timeout_s * 1e9);
	/* Poll rather than block, so a dead peer becomes a timeout. */
	for (;;) {
		int rc = MPI_Iprobe(src, tag, MPI_COMM_WORLD, &flag, &st);
		TERN_RETURN_IF(rc != MPI_SUCCESS, err, TERN_ECOMM, "MPI_Iprobe failed (code %d)", rc);
		const uint64_t el = tern_now_ns() - t0;
		if (flag) {
			hist->ns = el > 0 ? el : 1;
			break;
		}
		if (el > limit_ns)
			return TERN_ERR(err, TERN_ETIMEOUT, "no message from rank %d within %.1f s", src, timeout_s);
		struct timespec ts = {0, wait_step(el, hist->ns)};
		nanosleep(&ts, NULL);
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
