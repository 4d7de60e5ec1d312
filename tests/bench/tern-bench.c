/* tern-bench.c: the benchmark executable's entry point. `tern-bench MODE
 * [options]` hands the remaining arguments to the mode's main; every mode
 * writes the same row format (bench.h, DESIGN.md "Benchmark output"). A new
 * mode is one line in `modes` and one bench_<mode>_main. */
#include <stdio.h>
#include <string.h>

#include "bench.h"

typedef struct bench_mode {
	const char *name;
	int (*main)(int argc, char **argv);
	const char *what;
} bench_mode;

static const bench_mode modes[] = {
    {"kernels", bench_kernels_main, "GEMV/GEMM per packing x ISA x threads vs measured read bandwidth"},
    {"run", bench_run_main, "prefill/decode tokens/s of a model shape (engine_bench) vs the bandwidth bound"},
    {"cluster", bench_cluster_main, "aggregate decode tokens/s vs concurrency for 1, 2, 4 stages (gRPC)"},
    {"serve", bench_serve_main, "TTFT, inter-token latency, tokens/s: gRPC direct, relayed, HTTP"},
};

static void usage(FILE *f)
{
	fprintf(f, "usage: tern-bench MODE [options]   (tern-bench MODE --help for the mode's options)\n\nmodes:\n");
	for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
		fprintf(f, "  %-10s %s\n", modes[i].name, modes[i].what);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
		if (!strcmp(argv[1], modes[i].name))
			return modes[i].main(argc - 1, argv + 1);
	fprintf(stderr, "tern-bench: unknown mode '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
