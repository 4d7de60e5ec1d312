/* progress.c: the terminal progress bar (tern-progress.h). */
#include "tern-progress.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tern-base.h"

static void draw(tern_progress *p, int final)
{
	const double el = (double)(tern_now_ns() - p->t0_ns) / 1e9;
	const double rate = el > 0 ? (double)p->done / el : 0.0;
	char bar[31];
	const double frac = p->total ? (double)p->done / (double)p->total : 0.0;
	const int fill = (int)(frac > 1.0 ? 30 : frac * 30.0);
	for (int i = 0; i < 30; i++)
		bar[i] = i < fill ? '#' : '.';
	bar[30] = 0;
	char eta[32] = "";
	if (p->total && rate > 0 && !final && p->done < p->total)
		snprintf(eta, sizeof eta, " ETA %.0fs", (double)(p->total - p->done) / rate);
	else if (final)
		snprintf(eta, sizeof eta, " in %.1fs", el);
	fprintf(stderr, "\r%-16s [%s] %5.1f%% %9.1f MiB %7.1f MiB/s%-12s", p->label, bar, 100.0 * frac,
		(double)p->done / 1048576.0, rate / 1048576.0, eta);
	if (final)
		fputc('\n', stderr);
	fflush(stderr);
}

void tern_progress_start(tern_progress *p, const char *label, uint64_t total, int want)
{
	memset(p, 0, sizeof *p);
	snprintf(p->label, sizeof p->label, "%s", label);
	p->total = total;
	p->t0_ns = tern_now_ns();
	const char *env = getenv("TERN_PROGRESS");
	if (env && *env)
		p->active = want && atoi(env) != 0;
	else
		p->active = want && isatty(STDERR_FILENO);
}

void tern_progress_add(tern_progress *p, uint64_t bytes)
{
	p->done += bytes;
	if (!p->active)
		return;
	const uint64_t now = tern_now_ns();
	if (now - p->last_ns < 100000000ull)
		return;
	p->last_ns = now;
	draw(p, 0);
}

void tern_progress_finish(tern_progress *p)
{
	if (p->active)
		draw(p, 1);
	p->active = 0;
}
