/* tern-link.h: frames over MPI between the coordinator (rank 0) and the
 * pipeline stages (ranks 1..S). Shared by node/ and coordinator/ as the small
 * static library tern_link, so both sides speak one wire form.
 *
 * Receives take a timeout: a peer that died or hung turns into TERN_ETIMEOUT
 * rather than a hang (DESIGN.md, failure rules). */
#ifndef TERN_LINK_H
#define TERN_LINK_H

#include <stddef.h>
#include <stdint.h>

#include "tern-frame.h"

/* MPI tags. */
enum { TERN_TAG_CONTROL = 1, TERN_TAG_ACT = 2 };

/* Packs h + payload and sends it to rank dest (blocking standard send). */
int tern_link_send(int dest, int tag, const Tern__V1__Frame *h, const void *payload, size_t payload_bytes,
		   tern_err *err);

/* Waits up to timeout_s seconds (< 0: forever) for a message with the tag
 * from src (MPI_ANY_SOURCE allowed), receives it into a new buffer (*buf,
 * free()) and unpacks the header (*h, free with
 * tern__v1__frame__free_unpacked). *payload points into *buf. */
int tern_link_recv(int src, int tag, double timeout_s, uint8_t **buf, Tern__V1__Frame **h,
		   const uint8_t **payload, size_t *payload_bytes, int *from, tern_err *err);

/* Receives and drops frames from src with the tag (MPI_ANY_TAG allowed)
 * until one of the given kind arrives: 0, or TERN_ETIMEOUT after timeout_s
 * (< 0: forever), or the receive's error. Used to drain the pipeline and to
 * wait for SHUTDOWN. */
int tern_link_recv_until(int src, int tag, double timeout_s, int kind, tern_err *err);

/* A send in flight: the packed buffer must live until the request completes.
 * Sends on the activation path are non-blocking, so no rank ever blocks in a
 * send while its downstream peer blocks sending to it (the pipeline is a
 * ring through the coordinator). */
typedef struct tern_link_send_req {
	void *buf;    /* packed frame, freed on completion */
	long request; /* MPI_Request stored as an integer handle (MPI_Request_c2f) */
	int active;
} tern_link_send_req;

/* Starts a non-blocking send of h + payload to dest. r must not be active
 * (wait for it first). */
int tern_link_isend(int dest, int tag, const Tern__V1__Frame *h, const void *payload, size_t payload_bytes,
		    tern_link_send_req *r, tern_err *err);
/* 1 if r is complete (or was never active), 0 if still in flight; frees the
 * buffer on completion. */
int tern_link_test(tern_link_send_req *r);
/* Waits for r to complete, up to timeout_s (< 0: forever). TERN_ETIMEOUT
 * leaves it active. */
int tern_link_wait(tern_link_send_req *r, double timeout_s, tern_err *err);

/* Collective over MPI_COMM_WORLD: every rank (coordinator included, with
 * is_stage = 0) must call it once at start-up. For a stage, returns its index
 * among the stage ranks on its own host (rank order), which picks its NUMA
 * domain; the coordinator gets -1. */
int tern_link_host_stage_index(int is_stage);

#endif /* TERN_LINK_H */
