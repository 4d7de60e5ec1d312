/* tern-cq.h: the one shape of every tag on a shared gRPC completion queue.
 *
 * tern-server runs one event loop (grpc-server.c's completion-queue thread)
 * for the calls it serves and the calls it makes upstream (relay.c through
 * tern_grpc_astream): each tag is a tern_cq_tag, and the loop calls its
 * done() with the event's success flag. Whoever puts a tag on the queue owns
 * it until done() has run. */
#ifndef TERN_CQ_H
#define TERN_CQ_H

#include <stddef.h>

typedef struct tern_cq_tag tern_cq_tag;
struct tern_cq_tag {
	void (*done)(tern_cq_tag *t, int ok);
};

/* The struct of type T whose member M is the tag t. */
#define TERN_CQ_OWNER(t, T, M) ((T *)(void *)((char *)(t) - offsetof(T, M)))

#endif /* TERN_CQ_H */
