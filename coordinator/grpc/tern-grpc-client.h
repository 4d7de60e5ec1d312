/* tern-grpc-client.h: a client of service tern.v1.Tern (gRPC C core with
 * protobuf-c messages), shared by `tern` (the CLI) and `tern-server` (the
 * HTTP front end), so both call the coordinator the same way.
 *
 * A client is one channel; it may be used from many threads at once. A
 * blocking call (tern_grpc_stream) has its own completion queue and belongs
 * to the thread that started it: next/cancel/finish are called from that
 * thread only. An event-driven call (tern_grpc_astream) lives on a completion
 * queue someone else drives (tern-cq.h) and calls back on that thread. */
#ifndef TERN_GRPC_CLIENT_H
#define TERN_GRPC_CLIENT_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "tern-base.h"
#include "tern-cq.h"

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

/* An event-driven server-streaming call on a shared completion queue: no
 * thread of its own, no hand-off. Every callback runs on the thread that
 * drives the queue (it calls grpc_completion_queue_next and each event's
 * tern_cq_tag). msg() gets each response message (valid during the call
 * only); end() the call's status once, after the last message and after
 * every operation of the call has completed; the stream is freed when end()
 * returns. */
typedef struct tern_grpc_astream tern_grpc_astream;
typedef struct tern_grpc_astream_cb {
	void *ctx;
	void (*msg)(void *ctx, const uint8_t *msg, size_t len);
	void (*end)(void *ctx, int status, const char *detail);
} tern_grpc_astream_cb;

/* Starts method(req) on cq (a grpc_completion_queue * made for next, whose
 * tags are tern_cq_tag). No callback runs before it returns. timeout_s <= 0:
 * no deadline. Errors: TERN_ENOMEM, TERN_EIO (the call could not start). */
int tern_grpc_astream_start(tern_grpc_client *c, const char *method, const ProtobufCMessage *req, double timeout_s,
			    void *cq, const tern_grpc_astream_cb *cb, tern_grpc_astream **out, tern_err *err);

/* Cancels the call (the server frees what it holds for it); end() follows
 * with CANCELLED (or the status it had already). Call on the queue's thread,
 * before end() has run. */
void tern_grpc_astream_cancel(tern_grpc_astream *s);

/* Puts tag t on cq (its done() runs on the queue's thread) from any thread:
 * the C core has no call to post to a queue, so this watches c's channel
 * for a change from SHUTDOWN, which completes at once while the channel
 * lives (else at a 1 s deadline). One wake per tag in flight; the queue
 * must not be shut down before it is back. */
void tern_grpc_wake(tern_grpc_client *c, void *cq, tern_cq_tag *t);

/* A completion queue for an event loop of the caller's (every tag a
 * tern_cq_tag); NULL when out of memory. */
void *tern_grpc_cq_create(void);
/* Waits up to wait_ms for one event and runs its tag's done(): 1 ran one,
 * 0 none came, -1 the queue is shut down and empty. */
int tern_grpc_cq_run(void *cq, int wait_ms);
/* No new operations after this; tern_grpc_cq_run drains what is pending. */
void tern_grpc_cq_shutdown(void *cq);
/* After tern_grpc_cq_run returned -1. */
void tern_grpc_cq_destroy(void *cq);

#endif /* TERN_GRPC_CLIENT_H */
