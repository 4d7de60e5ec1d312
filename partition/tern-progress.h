/* tern-progress.h: a one-line progress bar for long steps (bytes done, rate,
 * ETA) drawn on stderr only when stderr is a terminal, so logs and pipes stay
 * clean. TERN_PROGRESS=0/1 in the environment overrides the detection. */
#ifndef TERN_PROGRESS_H
#define TERN_PROGRESS_H

#include <stdint.h>

typedef struct tern_progress {
	char label[48];
	uint64_t total;     /* bytes expected (0: unknown, no ETA) */
	uint64_t done;
	uint64_t t0_ns;     /* start */
	uint64_t last_ns;   /* last redraw, to redraw at most ~10 times a second */
	int active;         /* drawing at all */
} tern_progress;

/* Starts a bar if enabled (want != 0 and stderr is a terminal). */
void tern_progress_start(tern_progress *p, const char *label, uint64_t total, int want);
void tern_progress_add(tern_progress *p, uint64_t bytes);
/* Draws the final state and ends the line. */
void tern_progress_finish(tern_progress *p);

#endif /* TERN_PROGRESS_H */
