/* tern-grpc.h: the gRPC server of tern-coordinator (service tern.v1.Tern on
 * the gRPC C core with protobuf-c messages). It owns the network side only:
 * calls, metadata, auth, TLS, streaming and cancellation; every request is
 * handed to a tern_service (the scheduler).
 *
 * One thread drives the completion queue. Output of a generation may be
 * produced on any thread; each call keeps at most one send in flight and
 * queues the rest, as the C core requires. */
#ifndef TERN_GRPC_H
#define TERN_GRPC_H

#include "tern-base.h"
#include "tern-service.h"

typedef struct tern_grpc_opts {
	const char *listen;          /* "127.0.0.1:50051" (default); port 0 picks a free one */
	const char *tls_cert_file;   /* PEM certificate chain; with tls_key_file enables TLS */
	const char *tls_key_file;    /* PEM private key */
	const char *auth_token;      /* when set, every call needs "authorization: Bearer <token>" (the
				      * scheme in any case); repeated failures from one address are
				      * refused for a doubling time (grpc-server.c, AUTH_*) */
	int max_message_bytes;       /* largest request accepted (default 1 MiB) */
	unsigned max_connections;    /* plain TCP: connections beyond it are closed at once
				      * (default TERN_GRPC_MAX_CONNECTIONS); see below */
} tern_grpc_opts;

/* Connections that have not finished the HTTP/2 handshake after this many
 * milliseconds are closed; connections idle (no call) this long get GOAWAY.
 * Over plain TCP at most max_connections are open at once (in handshake or
 * served): tern listens itself (grpc-gate.h). With TLS or a unix: address
 * gRPC listens and only the two timeouts hold (gRPC core 1.51 can neither
 * cap connections nor take a TLS connection from tern). */
#define TERN_GRPC_HANDSHAKE_MS 5000
#define TERN_GRPC_IDLE_MS 300000
#define TERN_GRPC_MAX_CONNECTIONS 1024

typedef struct tern_grpc_server tern_grpc_server;

/* Binds, starts the server and its thread. svc must outlive the server.
 * Errors: TERN_EIO (bind failed: address in use or invalid), TERN_EINVAL
 * (unreadable TLS files), TERN_ENOMEM. */
int tern_grpc_start(const tern_grpc_opts *opts, const tern_service *svc, tern_grpc_server **out, tern_err *err);

/* The bound port (useful with port 0). */
int tern_grpc_port(const tern_grpc_server *s);

/* Stops accepting, cancels every call in flight (the service's cancel is
 * called for each generation), waits until all calls are released (up to
 * grace_s seconds), and frees the server. NULL is a no-op. */
void tern_grpc_stop(tern_grpc_server *s, double grace_s);

#endif /* TERN_GRPC_H */
