/* grpc-gate.h: the gRPC server's own plaintext TCP listener, which caps the
 * number of connections and the time a client may take to send the HTTP/2
 * preface (gRPC core 1.51 has no connection cap). Internal to tern_grpc:
 * grpc-server.c uses it for TCP without TLS; TLS and unix: addresses use
 * gRPC's own listener (grpc_server_add_channel_from_fd takes plaintext
 * only). */
#ifndef TERN_GRPC_GATE_H
#define TERN_GRPC_GATE_H

#include <grpc/grpc.h>

#include "tern-base.h"

typedef struct tern_grpc_gate tern_grpc_gate;

/* Binds and listens on "HOST:PORT" or "[V6]:PORT" (port 0: a free one).
 * max_conns >= 1 bounds connections in their handshake plus those handed to
 * gRPC; handshake_ms bounds the wait for the preface. Errors: TERN_EINVAL
 * (address syntax, cap 0), TERN_EIO (cannot bind), TERN_ENOMEM. */
int tern_grpc_gate_open(const char *listen, unsigned max_conns, unsigned handshake_ms, tern_grpc_gate **out,
			tern_err *err);

/* The bound port. */
int tern_grpc_gate_port(const tern_grpc_gate *g);

/* Starts the accept thread; admitted connections go to server, which must
 * be started and outlive the gate. */
int tern_grpc_gate_start(tern_grpc_gate *g, grpc_server *server, tern_err *err);

/* Stops the thread, closes the listener and every connection not yet handed
 * over. Call before shutting the server down. NULL is a no-op. */
void tern_grpc_gate_close(tern_grpc_gate *g);

#endif /* TERN_GRPC_GATE_H */
