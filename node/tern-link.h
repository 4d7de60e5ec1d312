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

/* Collective over MPI_COMM_WORLD: every rank (coordinator included, with
 * is_stage = 0) must call it once at start-up. For a stage, returns its index
 * among the stage ranks on its own host (rank order), which picks its NUMA
 * domain; the coordinator gets -1. */
int tern_link_host_stage_index(int is_stage);

#endif /* TERN_LINK_H */
