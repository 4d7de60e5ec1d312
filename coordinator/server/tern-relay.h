/* tern-relay.h: tern.v1.Tern as tern-server serves it (--grpc): a
 * tern_service (serve/tern-service.h) whose every call is relayed to the
 * coordinator, so the `tern` CLI and every gRPC client work through
 * tern-server unchanged, and grpc/'s server (auth, connection cap, status
 * codes) serves it as it serves the scheduler, on its completion-queue
 * thread (no thread per stream). A client's cancel cancels the
 * upstream call; the coordinator's refusals (INVALID_ARGUMENT,
 * RESOURCE_EXHAUSTED, UNAVAILABLE) reach the client as they are; a stream
 * whose job died resumes on its next start (tern-hold.h), and Health carries
 * the supervisor's generation. */
#ifndef TERN_RELAY_H
#define TERN_RELAY_H

#include "tern-base.h"
#include "tern-grpc-client.h"
#include "tern-service.h"
#include "tern-supervise.h"

typedef struct tern_relay tern_relay;

/* up and sup (may be NULL: no resume) must outlive the relay. Errors:
 * TERN_ENOMEM. */
int tern_relay_create(tern_grpc_client *up, tern_supervisor *sup, tern_relay **out, tern_err *err);
const tern_service *tern_relay_service(tern_relay *r);
/* Frees r. Call after the gRPC server that uses it has stopped (its stop
 * cancels every stream and runs the loop until they have ended). NULL is a
 * no-op. */
void tern_relay_free(tern_relay *r);

#endif /* TERN_RELAY_H */
