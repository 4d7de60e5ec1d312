/* tern-http.h: tern-server's HTTP/1.1 front end (libmicrohttpd): the OpenAI
 * API (/v1/models, /v1/chat/completions, /v1/completions, plain and SSE),
 * /health, /tokenize, /detokenize, and /metrics (tern-metrics.h). Every
 * request is relayed to the coordinator over tern.v1.Tern gRPC; nothing here
 * knows a model.
 *
 * No thread per connection: libmicrohttpd's one epoll thread serves every
 * connection; a generation's gRPC call (a held call, tern-hold.h) runs on the
 * server's one event loop, which fills the reply (SSE or JSON) and resumes
 * the connection, suspended while there is nothing to send; the handlers
 * that block on a unary call (health, /metrics, tokenize, detokenize) run on
 * TERN_HTTP_WORKERS threads. The loop looks at the sockets of suspended
 * connections every TERN_SERVICE_TICK_MS, so a client that disconnects has
 * its upstream call cancelled (its sequence freed) within about that,
 * streaming or not. */
#ifndef TERN_HTTP_H
#define TERN_HTTP_H

#include <stddef.h>

#include "tern-base.h"
#include "tern-grpc-client.h"
#include "tern-metrics.h"
#include "tern-supervise.h"

/* Threads for the handlers that block on a unary call (health, /metrics'
 * Stats, tokenize, detokenize). */
#define TERN_HTTP_WORKERS 4
/* A stream that has sent nothing for this long gets an SSE comment line. */
#define TERN_HTTP_KEEPALIVE_S 15

typedef struct tern_http_opts {
	const char *listen;          /* "127.0.0.1:8080" (default), "[::1]:8080"; port 0 picks one */
	const char *api_key;         /* when set, everything but /health needs "Authorization: Bearer <key>" */
	tern_grpc_client *upstream;  /* the coordinator; must outlive the server */
	const char *model_id;        /* the name /v1/models lists and replies carry */
	size_t max_body;             /* larger request bodies get 413 (default 4 MiB) */
	unsigned max_connections;    /* beyond it new connections are refused (default 2048) */
	unsigned idle_timeout_s;     /* idle connections are closed (default 300) */
	const char *tls_cert_file;   /* PEM certificate chain; with tls_key_file: HTTPS only */
	const char *tls_key_file;    /* PEM private key */
	const char *cors_origin;     /* NULL: no CORS headers (browsers refuse other origins); an origin
				      * ("https://app.example") or "*": replies to it carry
				      * Access-Control-Allow-Origin, and its OPTIONS preflight gets 204 */
	tern_supervisor *supervisor; /* the job's: generations resume on its next start (tern-hold.h), /health
				      * shows its state; NULL: none. Must outlive the server */
	tern_metrics *metrics;       /* /metrics' counters, shared with the supervisor; NULL: the server's own */
} tern_http_opts;

typedef struct tern_http_server tern_http_server;

/* Binds and starts serving. Errors: TERN_EINVAL (bad address, one TLS file
 * without the other, no TLS in libmicrohttpd), TERN_EIO (bind failed, a TLS
 * file unreadable or not PEM), TERN_ENOMEM. */
int tern_http_start(const tern_http_opts *o, tern_http_server **out, tern_err *err);
/* The bound port. */
int tern_http_port(const tern_http_server *s);
/* Stops accepting connections (those open keep being served). */
void tern_http_quiesce(tern_http_server *s);
/* Closes every connection (their calls are cancelled) and frees s. NULL is a no-op. */
void tern_http_stop(tern_http_server *s);

#endif /* TERN_HTTP_H */
