/* bench-exec.c: the tern-bench modes that live in other programs.
 *   run      -> the engine benchmark (tests/engine_bench: prefill and decode
 *               tokens/s of a model shape beside the bandwidth bound)
 *   cluster  -> deploy/bench-serve.py cluster (aggregate decode tokens/s vs
 *               concurrency for 1, 2, 4 stages over real gRPC)
 *   serve    -> deploy/bench-serve.py serve (time to first token, inter-token
 *               latency and tokens/s under N clients: gRPC direct, gRPC through
 *               tern-server's relay, HTTP SSE)
 * They keep one entry point and one row format (DESIGN.md). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

#ifndef TERN_SOURCE_DIR
#error "TERN_SOURCE_DIR must be defined by the build"
#endif
#ifndef TERN_BINARY_DIR
#error "TERN_BINARY_DIR must be defined by the build"
#endif

static int run_exec(const char *path, char **argv)
{
	execv(path, argv);
	fprintf(stderr, "tern-bench: cannot run %s: %s\n", path, strerror(errno));
	return 2;
}

int bench_run_main(int argc, char **argv)
{
	char **args = calloc((size_t)argc + 1, sizeof *args);
	if (!args)
		return 2;
	args[0] = (char *)TERN_BINARY_DIR "/tests/engine_bench";
	for (int i = 1; i < argc; i++)
		args[i] = argv[i];
	return run_exec(args[0], args);
}

static int serve_like(int argc, char **argv, const char *mode)
{
	/* python3 bench-serve.py MODE --build BUILD args... */
	char **args = calloc((size_t)argc + 6, sizeof *args);
	if (!args)
		return 2;
	int n = 0;
	args[n++] = (char *)"/usr/bin/python3";
	args[n++] = (char *)TERN_SOURCE_DIR "/deploy/bench-serve.py";
	args[n++] = (char *)mode;
	args[n++] = (char *)"--build";
	args[n++] = (char *)TERN_BINARY_DIR;
	for (int i = 1; i < argc; i++)
		args[n++] = argv[i];
	return run_exec(args[0], args);
}

int bench_cluster_main(int argc, char **argv)
{
	return serve_like(argc, argv, "cluster");
}

int bench_serve_main(int argc, char **argv)
{
	return serve_like(argc, argv, "serve");
}
