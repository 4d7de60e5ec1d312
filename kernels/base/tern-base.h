/* tern-base.h: the shared plumbing every tern module uses, kept in the lowest
 * layer (kernels/) so nothing above needs its own copy: error codes with
 * context, levelled logging to stderr, a monotonic clock, aligned allocation,
 * whole-file reads and read-only mappings, and a CPU-feature probe. Depends
 * on libc only. */
#ifndef TERN_BASE_H
#define TERN_BASE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ------------------------------------------------------------
 * Library functions return 0 on success or a negative TERN_E* code, and fill
 * a caller-supplied tern_err (may be NULL) with a one-line message and the
 * source location that raised it. */
enum {
	TERN_OK = 0,
	TERN_EINVAL = -1,   /* bad argument or bad value in input data */
	TERN_ENOMEM = -2,   /* allocation failed */
	TERN_EIO = -3,      /* read/write/open failed */
	TERN_EFORMAT = -4,  /* malformed file or message */
	TERN_ERANGE = -5,   /* offset or size out of bounds, absurd dimension */
	TERN_ECHECKSUM = -6,/* checksum mismatch */
	TERN_EUNSUP = -7,   /* valid but unsupported (type, version, ISA) */
	TERN_ESTATE = -8,   /* call not valid in the current state */
	TERN_ECOMM = -9,    /* a peer (MPI rank, socket) failed or went away */
	TERN_ETIMEOUT = -10,/* an operation did not complete in time */
	TERN_EFULL = -11,   /* a bounded queue or pool is full */
};

typedef struct tern_err {
	int code;          /* last error code, TERN_OK if none */
	const char *file;  /* source file that raised it (static string) */
	int line;
	char msg[512];     /* one line, no trailing newline */
} tern_err;

/* Name of an error code ("EINVAL", ...); never NULL. */
const char *tern_strerror(int code);

/* Records code and a printf-style message in *err (if err is non-NULL) and
 * returns code, so it can be used as `return tern_err_set(...)`. */
int tern_err_set(tern_err *err, int code, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

/* Clears *err (no-op on NULL). */
void tern_err_clear(tern_err *err);

#define TERN_ERR(err, code, ...) tern_err_set((err), (code), __FILE__, __LINE__, __VA_ARGS__)

/* Return `code` with a message when `cond` holds (zstd's RETURN_ERROR_IF). */
#define TERN_RETURN_IF(cond, err, code, ...)                            \
	do {                                                            \
		if (cond)                                               \
			return TERN_ERR((err), (code), __VA_ARGS__);    \
	} while (0)

/* Propagate a negative result unchanged (zstd's FORWARD_IF_ERROR); the callee
 * already filled the message. */
#define TERN_FORWARD_IF_ERROR(expr)                                     \
	do {                                                            \
		int tern_rc_ = (expr);                                  \
		if (tern_rc_ < 0)                                       \
			return tern_rc_;                                \
	} while (0)

/* ---- logging -----------------------------------------------------------
 * Lines go to stderr as "tern <level> <tag>: message". The threshold comes
 * from TERN_LOG (error|warn|info|debug, default info) or tern_log_set_level. */
typedef enum { TERN_LOG_ERROR = 0, TERN_LOG_WARN = 1, TERN_LOG_INFO = 2, TERN_LOG_DEBUG = 3 } tern_log_level;

void tern_log_set_level(tern_log_level level);
tern_log_level tern_log_get_level(void);
/* Parses "error", "warn", "info", "debug"; returns -1 for anything else. */
int tern_log_parse_level(const char *s);
void tern_log(tern_log_level level, const char *tag, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define TERN_LOGE(tag, ...) tern_log(TERN_LOG_ERROR, tag, __VA_ARGS__)
#define TERN_LOGW(tag, ...) tern_log(TERN_LOG_WARN, tag, __VA_ARGS__)
#define TERN_LOGI(tag, ...) tern_log(TERN_LOG_INFO, tag, __VA_ARGS__)
#define TERN_LOGD(tag, ...) tern_log(TERN_LOG_DEBUG, tag, __VA_ARGS__)

/* ---- clock ------------------------------------------------------------- */
/* Monotonic time in nanoseconds (CLOCK_MONOTONIC); only differences mean anything. */
uint64_t tern_now_ns(void);
/* The same in seconds, as a double. */
double tern_now_s(void);

/* ---- aligned allocation -------------------------------------------------
 * `align` must be a power of two >= sizeof(void *). The block is not zeroed
 * unless the _zero variant is used. Returns NULL on failure or on size 0.
 * Free with tern_aligned_free (NULL is a no-op). */
void *tern_aligned_alloc(size_t size, size_t align);
void *tern_aligned_calloc(size_t size, size_t align);
/* A large region (zero-filled, page aligned) in 2 MiB pages where the kernel
 * gives them (madvise MADV_HUGEPAGE; THP "madvise" mode is common): 512 times
 * fewer page faults when it is first written and fewer TLB misses when it is
 * streamed. Free with tern_huge_free(p, size), the same size. */
void *tern_huge_alloc(size_t size);
void tern_huge_free(void *p, size_t size);
void tern_aligned_free(void *p);
/* Cache line / SIMD alignment used for every kernel buffer. */
#define TERN_ALIGN 64

/* ---- files --------------------------------------------------------------
 * The one place a file is read whole or mapped (file.c). Errors name the
 * path: TERN_EIO (cannot open, not a regular file, read or map failure),
 * TERN_ERANGE (larger than the caller's limit), TERN_ENOMEM. */

/* Reads the file at path (any readable file: regular, pipe, /dev/stdin) into
 * a new buffer *buf (free()) of *len bytes, NUL-terminated at buf[*len] so
 * text parsers may rely on it. More than max bytes is TERN_ERANGE
 * "PATH: larger than MAX bytes"; nothing is returned on failure. */
int tern_read_file(const char *path, size_t max, char **buf, size_t *len, tern_err *err);
/* The first line of a small file (a token or key file: at most 64 KiB, the
 * line end dropped), malloc'd; NULL with err set when unreadable or empty. */
char *tern_read_first_line(const char *path, tern_err *err);

/* A read-only private mapping of a whole regular file. data is never NULL
 * (an empty file maps to a static empty byte); size is the file's size. */
typedef struct tern_file_map {
	const uint8_t *data; /* (size) */
	size_t size;
	int mapped;          /* 1 when data must be unmapped */
} tern_file_map;

/* Maps path read-only; *m is zeroed on failure. */
int tern_map_file(const char *path, tern_file_map *m, tern_err *err);
/* Unmaps and zeroes *m; a zeroed or NULL map is a no-op. */
void tern_unmap_file(tern_file_map *m);

/* Copies path to out with every "%h" replaced by this host's name, so each
 * host of a cluster can keep its copy of a model in a per-host directory
 * (deploy/tern-up --remote-dir). Truncates to out_len - 1 bytes. */
void tern_path_expand_host(const char *path, char *out, size_t out_len);

/* ---- numbers from command lines ---------------------------------------
 * One parser for every option value: the whole string must be the number
 * (no leading space, no trailing text), within [lo, hi]. On failure
 * TERN_EINVAL with one line naming the value, `what` (the option, may be
 * NULL) and what was expected: "bad value 'x' for --threads: expected an
 * integer in [1, 1024]"; *out is left untouched. */
int tern_parse_int64(const char *s, int64_t lo, int64_t hi, const char *what, int64_t *out, tern_err *err);
int tern_parse_int(const char *s, int lo, int hi, const char *what, int *out, tern_err *err);
/* Any unsigned 64-bit value (seeds), decimal or 0x-prefixed hex; no sign. */
int tern_parse_uint64(const char *s, const char *what, uint64_t *out, tern_err *err);
/* A finite decimal (strtod syntax, no inf/nan) in [lo, hi]. */
int tern_parse_double(const char *s, double lo, double hi, const char *what, double *out, tern_err *err);

/* "HOST:PORT" or "[V6]:PORT", split at the last ':' (the brackets dropped)
 * into host and port: 0, or -1 when there is no port or a part does not fit
 * its buffer. host may come out empty (":PORT"). */
int tern_split_host_port(const char *addr, char *host, size_t host_cap, char *port, size_t port_cap);
int tern_parse_float(const char *s, float lo, float hi, const char *what, float *out, tern_err *err);
/* A byte count: digits, then nothing or B, K/KiB, M/MiB, G/GiB, T/TiB (powers
 * of 1024), in [lo, hi] bytes. */
int tern_parse_size(const char *s, uint64_t lo, uint64_t hi, const char *what, uint64_t *out, tern_err *err);
/* For getopt_long loops run with opterr = 0 and an optstring starting with
 * ':': prints "PROG: unknown option 'X'" (c == '?') or "PROG: option 'X'
 * needs a value" (c == ':'), then "PROG: see PROG --help", on stderr.
 * Returns 2, the exit status of every tern CLI for a bad command line. */
int tern_opt_fail(const char *prog, int c, char *const *argv);
/* Prints "PROG: MSG" and the same hint (a bad option value); returns 2. */
int tern_opt_bad(const char *prog, const char *msg);

/* ---- CPU features ------------------------------------------------------
 * Probed once from cpuid (x86: also XGETBV, so a feature counts only when the
 * OS saves its registers) or fixed at build time (aarch64: NEON). */
typedef struct tern_cpu {
	unsigned avx2 : 1;
	unsigned fma : 1;
	unsigned f16c : 1;
	unsigned avx512f : 1;
	unsigned avx512bw : 1;
	unsigned avx512vl : 1;
	unsigned avx512vnni : 1;
	unsigned avx512vbmi : 1;
	unsigned avxvnni : 1;
	unsigned neon : 1;
	unsigned dotprod : 1;
} tern_cpu;

/* The features of the running CPU (cached after the first call; thread-safe). */
const tern_cpu *tern_cpu_get(void);
/* Writes a space-separated feature list ("avx2 fma avx512f ...") into buf. */
void tern_cpu_describe(const tern_cpu *cpu, char *buf, size_t len);
/* How many CPUs this process may run on (its affinity mask; the online
 * count where the mask cannot be read), at least 1: the default thread
 * count of tern-run and local mode, as llama.cpp uses every core. */
int tern_cpu_count(void);

/* Runs fn(arg) on a new detached thread: 0, or -1 when it cannot start (fn
 * is then not called and arg is still the caller's). */
int tern_thread_detached(void *(*fn)(void *), void *arg);

#ifdef __cplusplus
}
#endif
#endif /* TERN_BASE_H */
