/* tern-grpc-client.h: a client of service tern.v1.Tern (gRPC C core with
 * protobuf-c messages), shared by `tern` (the CLI) and `tern-server` (the
 * HTTP front end), so both call the coordinator the same way.
 *
 * A client is one channel; it may be used from many threads at once. Each
 * call (a stream) has its own completion queue and belongs to the thread that
 * started it: next/cancel/finish are called from that thread only. */
#ifndef TERN_GRPC_CLIENT_H
#define TERN_GRPC_CLIENT_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"

typedef struct tern_grpc_client_opts {
	const char *target;       /* "127.0.0.1:50051", "unix:/path", ... */
	const char *bearer_token; /* sent as "authorization: Bearer <token>" when set */
	const char *tls_ca_file;  /* PEM root certificate: TLS; NULL: plain text */
} tern_grpc_client_opts;

typedef struct tern_grpc_client tern_grpc_client;

/* Creates the channel (no connection is made yet). Errors: TERN_EINVAL
 * (unreadable CA file), TERN_ENOMEM. tern_grpc_client_close(NULL) is a no-op. */
int tern_grpc_client_open(const tern_grpc_client_opts *o, tern_grpc_client **out, tern_err *err);
void tern_grpc_client_close(tern_grpc_client *c);

/* "OK", "INVALID_ARGUMENT", ... for a gRPC status code; "?" if unknown. */
const char *tern_grpc_status_name(int code);

typedef struct tern_grpc_stream tern_grpc_stream;

/* Starts a call of method ("/tern.v1.Tern/Generate") with req. timeout_s <= 0:
 * no deadline. Returns 0, or TERN_ENOMEM; a call that fails later (server
 * down, refused) reports it as its status in tern_grpc_stream_finish. */
int tern_grpc_stream_start(tern_grpc_client *c, const char *method, const ProtobufCMessage *req, double timeout_s,
			   tern_grpc_stream **out, tern_err *err);

/* Waits up to wait_s (< 0: forever) for the next response message. Returns 1
 * with *msg, *len (valid until the next call on s), 0 when wait_s passed
 * first, -1 when the server sent its last message (the status waits in
 * tern_grpc_stream_finish). */
int tern_grpc_stream_next(tern_grpc_stream *s, double wait_s, const uint8_t **msg, size_t *len);

/* Cancels the call (the server frees what it holds for it); next() then
 * returns -1 and finish() CANCELLED. */
void tern_grpc_stream_cancel(tern_grpc_stream *s);

/* Ends the call (cancelling it if the server has not finished), frees s and
 * returns the call's status code, its details copied into detail. */
int tern_grpc_stream_finish(tern_grpc_stream *s, char *detail, size_t detail_len);

/* One whole call: every response message to on_msg, in order; returns the
 * status code (details into detail). */
typedef void (*tern_grpc_on_msg)(void *ctx, const uint8_t *msg, size_t len);
int tern_grpc_call(tern_grpc_client *c, const char *method, const ProtobufCMessage *req, double timeout_s,
		   tern_grpc_on_msg on_msg, void *ctx, char *detail, size_t detail_len);

/* One unary call whose reply is unpacked as a message of type desc: the
 * reply (free it with protobuf_c_message_free_unpacked) when the call ends OK
 * and the reply unpacks, else NULL (an OK call without a well-formed reply is
 * the caller's to report); *status is the call's status code. */
ProtobufCMessage *tern_grpc_unary(tern_grpc_client *c, const char *method, const ProtobufCMessage *req,
				  double timeout_s, const ProtobufCMessageDescriptor *desc, int *status, char *detail,
				  size_t detail_len);

#endif /* TERN_GRPC_CLIENT_H */
