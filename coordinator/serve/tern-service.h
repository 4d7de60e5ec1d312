/* tern-service.h: what the gRPC front end asks of the serving back end (the
 * scheduler), so the server knows nothing of models or MPI and the scheduler
 * nothing of gRPC. Messages are the protobuf-c types of proto/tern.proto.
 *
 * Status codes are gRPC's (grpc_status_code values): 0 OK, 3
 * INVALID_ARGUMENT, 8 RESOURCE_EXHAUSTED, 14 UNAVAILABLE, 13 INTERNAL. */
#ifndef TERN_SERVICE_H
#define TERN_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#include "tern.pb-c.h"

enum {
	TERN_STATUS_OK = 0,
	TERN_STATUS_CANCELLED = 1,
	TERN_STATUS_UNKNOWN = 2,
	TERN_STATUS_INVALID_ARGUMENT = 3,
	TERN_STATUS_DEADLINE_EXCEEDED = 4,
	TERN_STATUS_RESOURCE_EXHAUSTED = 8,
	TERN_STATUS_ABORTED = 10,
	TERN_STATUS_INTERNAL = 13,
	TERN_STATUS_UNAVAILABLE = 14,
	TERN_STATUS_UNAUTHENTICATED = 16,
};

/* Where a generation's output goes. The back end calls piece() for every
 * generated token, in order, from its own thread, then done() exactly once
 * (also after cancel). After done() returns it never touches ctx again. */
typedef struct tern_gen_sink {
	void *ctx;
	void (*piece)(void *ctx, const Tern__V1__GenerateResponse *msg);
	/* final: the last message (done set, usage, finish reason) when status
	 * is OK, else NULL; status/details end the call. */
	void (*done)(void *ctx, const Tern__V1__GenerateResponse *final, int status, const char *details);
	/* The gRPC completion queue (a grpc_completion_queue *) of the thread
	 * that calls generate, cancel and tick, or NULL. A back end that makes
	 * gRPC calls of its own (tern-server's relay) may put them on it: their
	 * tags must be tern_cq_tag (grpc/tern-cq.h), and their callbacks then
	 * run on that thread, so piece() and done() may be called there. */
	void *cq;
} tern_gen_sink;

typedef struct tern_service {
	void *self;
	/* Validates and admits a request. Returns TERN_STATUS_OK and a handle
	 * (for cancel) once admitted — output then flows to the sink — or an
	 * error status with a one-line reason in msg, in which case the sink is
	 * never called. */
	int (*generate)(void *self, const Tern__V1__GenerateRequest *req, const tern_gen_sink *sink, uint64_t *handle,
			char *msg, size_t msg_len);
	/* Stops a generation (client cancelled, deadline passed); its KV slots
	 * are freed at once and done() follows with CANCELLED. Unknown or
	 * finished handles are ignored. */
	void (*cancel)(void *self, uint64_t handle);
	/* Fill a response (its repeated fields allocated with malloc; the server
	 * frees them with tern_service_free_* below). Return a status. */
	int (*tokenize)(void *self, const Tern__V1__TokenizeRequest *req, Tern__V1__TokenizeResponse *out, char *msg,
			size_t msg_len);
	int (*health)(void *self, Tern__V1__HealthResponse *out);
	int (*stats)(void *self, Tern__V1__StatsResponse *out);
	/* Release what tokenize/health/stats/detokenize allocated in *out. */
	void (*free_response)(void *self, ProtobufCMessage *out);
	int (*detokenize)(void *self, const Tern__V1__DetokenizeRequest *req, Tern__V1__DetokenizeResponse *out,
			  char *msg, size_t msg_len);
	/* Optional: called on the thread that calls generate and cancel at
	 * least every TERN_SERVICE_TICK_MS (the relay's held calls look for a
	 * restarted job there). */
	void (*tick)(void *self);
} tern_service;

#define TERN_SERVICE_TICK_MS 50

#endif /* TERN_SERVICE_H */
