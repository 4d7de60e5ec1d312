/* tern-hold.h: a Generate call that outlives the MPI job (issue 15).
 *
 * tern-server's HTTP side and its gRPC relay call the coordinator through
 * this instead of a bare tern_grpc_astream. It hands out the coordinator's
 * messages unchanged, but it
 * remembers the token ids it handed out, and when the call fails because the
 * job died (UNAVAILABLE and its kin while the supervisor restarts jobs), it
 * waits for the next generation of the job and sends the request again with
 * those ids as resume_token_ids: the coordinator replays them and continues at
 * the next index, so the caller sees a pause, then the same stream. The
 * request gets an explicit seed first, so a sampled stream continues the same.
 *
 * An error that is not the job's (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, a
 * cancel) passes through as it is, as does everything when the supervisor is
 * attached or NULL. Past the restart limit, or when the server stops, the call
 * ends with UNAVAILABLE and the supervisor's reason.
 *
 * tern_held_open puts it on a shared completion queue (tern-cq.h) and pushes
 * every message and the end to callbacks on the queue's thread, with
 * tern_held_tick called there while the job is down (the relay and the HTTP
 * side: no thread per stream). A held call belongs to the queue's thread. */
#ifndef TERN_HOLD_H
#define TERN_HOLD_H

#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"
#include "tern-grpc-client.h"
#include "tern-supervise.h"
#include "tern.pb-c.h"

typedef struct tern_held tern_held;

/* Where a held call's output goes (all on the queue's thread). msg(): a
 * message, the owner's to free (tern__v1__generate_response__free_unpacked);
 * end(): the call's status once, after which h is gone. */
typedef struct tern_held_cb {
	void *ctx;
	void (*msg)(void *ctx, Tern__V1__GenerateResponse *msg);
	void (*end)(void *ctx, int status, const char *detail);
} tern_held_cb;

/* Starts Generate(req) (req is copied; sup may be NULL: no resume) on cq (a
 * grpc_completion_queue * whose thread runs every tern_cq_tag), its output
 * to cb; no callback runs before it returns. Only tern_held_cancel and
 * tern_held_tick apply to it, on the queue's thread. Errors: TERN_ENOMEM,
 * TERN_EIO. A malformed message ends the call with INTERNAL. */
int tern_held_open(tern_supervisor *sup, tern_grpc_client *up, const Tern__V1__GenerateRequest *req, void *cq,
		   const tern_held_cb *cb, tern_held **out, tern_err *err);

/* An event-driven call waiting for the job looks again (without blocking);
 * may end it (end() runs, h is gone). Call every TERN_SERVICE_TICK_MS or so
 * on the queue's thread; a no-op while streaming. */
void tern_held_tick(tern_held *h);

/* Cancels the call (also while it waits for the job); end() follows with
 * CANCELLED: at once when it was waiting for the job (h is then gone), else
 * once the upstream call has wound down. */
void tern_held_cancel(tern_held *h);

#endif /* TERN_HOLD_H */
