/* grpc-gate.c: the plaintext TCP listener of the gRPC server (grpc-gate.h).
 *
 * gRPC core 1.51 has no cap on the number of connections, so tern accepts
 * them itself. One thread polls the listening socket and the connections
 * still in their handshake. A connection is handed to gRPC
 * (grpc_server_add_channel_from_fd) once its client has sent the whole
 * 24-byte HTTP/2 preface (peeked, so gRPC reads it again); one that has not
 * within the handshake time is closed. Beyond the cap (handshaking plus
 * handed over) a new connection is closed at once, so a client fails fast
 * instead of waiting in the backlog.
 *
 * gRPC owns a handed-over fd and closes it without telling: each is
 * remembered with its inode, and the list is swept before every admission
 * (an fd that is closed, or whose number now names another file, is gone). */
#include "grpc-gate.h"

#include <errno.h>
#include <fcntl.h>
#include <grpc/grpc_posix.h>
#include <grpc/grpc_security.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define PREFACE_LEN 24
/* A connection that has sent part of the preface is peeked again this often
 * (polling it for input would fire at once: the peeked bytes stay unread). */
#define PARTIAL_RETRY_MS 20

typedef struct pending_conn {
	int fd;
	double deadline_s;
	int partial; /* some of the preface is in, not all */
} pending_conn;

typedef struct handed_conn {
	int fd;
	dev_t dev;
	ino_t ino;
} handed_conn;

struct tern_grpc_gate {
	int listen_fd;
	int wake[2]; /* a byte on wake[1] stops the thread */
	int port;
	unsigned cap;
	double handshake_s;
	grpc_server *server;
	pthread_t thread;
	int started;
	pending_conn *pending; /* (cap) */
	handed_conn *handed;   /* (cap) */
	unsigned n_pending, n_handed;
	unsigned long long refused;
};

int tern_grpc_gate_open(const char *addr, unsigned max_conns, unsigned handshake_ms, tern_grpc_gate **out,
			tern_err *err)
{
	*out = NULL;
	char host[256], port[16];
	TERN_RETURN_IF(tern_split_host_port(addr, host, sizeof host, port, sizeof port) < 0, err, TERN_EINVAL,
		       "cannot listen on %s: expected HOST:PORT", addr);
	TERN_RETURN_IF(max_conns < 1, err, TERN_EINVAL, "the connection cap must be at least 1");
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
	struct addrinfo *ai = NULL;
	const int gai = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
	TERN_RETURN_IF(gai != 0, err, TERN_EIO, "cannot listen on %s: %s", addr, gai_strerror(gai));
	int fd = -1;
	int bind_errno = 0;
	/* One socket: for a name ("localhost") its IPv4 address first, as
	 * clients dial 127.0.0.1; for every address (":PORT") IPv6's, which
	 * takes IPv4 too. */
	const int first_family = host[0] ? AF_INET : AF_INET6;
	for (int pass = 0; pass < 2 && fd < 0; pass++)
		for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
			if ((a->ai_family == first_family) != (pass == 0))
				continue;
			fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
			if (fd < 0)
				continue;
			const int one = 1;
			setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
			if (bind(fd, a->ai_addr, a->ai_addrlen) < 0 || listen(fd, 128) < 0) {
				bind_errno = errno;
				close(fd);
				fd = -1;
			}
		}
	freeaddrinfo(ai);
	TERN_RETURN_IF(fd < 0, err, TERN_EIO, "cannot listen on %s (%s)", addr,
		       bind_errno ? strerror(bind_errno) : "no usable address");
	tern_grpc_gate *g = calloc(1, sizeof *g);
	if (g) {
		g->pending = calloc(max_conns, sizeof *g->pending);
		g->handed = calloc(max_conns, sizeof *g->handed);
	}
	if (!g || !g->pending || !g->handed || pipe2(g->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
		if (g) {
			free(g->pending);
			free(g->handed);
		}
		free(g);
		close(fd);
		return TERN_ERR(err, TERN_ENOMEM, "out of memory");
	}
	struct sockaddr_storage sa;
	socklen_t sl = sizeof sa;
	getsockname(fd, (struct sockaddr *)&sa, &sl);
	g->port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
						 : ((struct sockaddr_in *)&sa)->sin_port);
	g->listen_fd = fd;
	g->cap = max_conns;
	g->handshake_s = handshake_ms / 1000.0;
	*out = g;
	return 0;
}

int tern_grpc_gate_port(const tern_grpc_gate *g)
{
	return g ? g->port : 0;
}

/* Forgets handed-over connections gRPC has closed since. */
static void sweep_handed(tern_grpc_gate *g)
{
	unsigned k = 0;
	for (unsigned i = 0; i < g->n_handed; i++) {
		struct stat st;
		if (fstat(g->handed[i].fd, &st) == 0 && st.st_dev == g->handed[i].dev && st.st_ino == g->handed[i].ino)
			g->handed[k++] = g->handed[i];
	}
	g->n_handed = k;
}

static void drop_pending(tern_grpc_gate *g, unsigned i, int handed)
{
	const int fd = g->pending[i].fd;
	g->pending[i] = g->pending[--g->n_pending];
	if (handed) {
		struct stat st;
		if (fstat(fd, &st) < 0) {
			close(fd);
			return;
		}
		g->handed[g->n_handed++] = (handed_conn){fd, st.st_dev, st.st_ino};
		grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
		grpc_server_add_channel_from_fd(g->server, fd, creds);
		grpc_server_credentials_release(creds);
	} else {
		close(fd);
	}
}

static void accept_all(tern_grpc_gate *g)
{
	for (;;) {
		const int fd = accept4(g->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return; /* EAGAIN: none left; anything else (EMFILE, ECONNABORTED): next round */
		sweep_handed(g);
		if (g->n_pending + g->n_handed >= g->cap) {
			close(fd);
			if (g->refused++ % 1000 == 0)
				TERN_LOGW("grpc",
					  "connection cap of %u reached: new connections are closed (%llu so far)",
					  g->cap, g->refused);
			continue;
		}
		const int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		g->pending[g->n_pending++] = (pending_conn){fd, tern_now_s() + g->handshake_s, 0};
	}
}

/* Peeks at a handshaking connection: hands it over, closes it, or waits. */
static void look_at(tern_grpc_gate *g, unsigned i)
{
	char buf[PREFACE_LEN];
	const ssize_t n = recv(g->pending[i].fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	if (n <= 0) {
		drop_pending(g, i, 0); /* closed by the client, or reset */
		return;
	}
	/* Anything but the preface is gRPC's to refuse, properly. */
	if (n == PREFACE_LEN || memcmp(buf, preface, (size_t)n) != 0)
		drop_pending(g, i, 1);
	else
		g->pending[i].partial = 1;
}

static void *gate_loop(void *arg)
{
	tern_grpc_gate *g = arg;
	struct pollfd *pf = calloc((size_t)g->cap + 2, sizeof *pf);
	unsigned *who = calloc((size_t)g->cap + 2, sizeof *who);
	if (!pf || !who) {
		TERN_LOGE("grpc", "out of memory: the gRPC listener stops accepting");
		free(pf);
		free(who);
		return NULL;
	}
	for (;;) {
		const double now = tern_now_s();
		for (unsigned i = g->n_pending; i-- > 0;)
			if (now >= g->pending[i].deadline_s)
				drop_pending(g, i, 0);
		int timeout_ms = -1, any_partial = 0;
		unsigned n = 0;
		pf[n++] = (struct pollfd){.fd = g->wake[0], .events = POLLIN};
		pf[n++] = (struct pollfd){.fd = g->listen_fd, .events = POLLIN};
		for (unsigned i = 0; i < g->n_pending; i++) {
			const int ms = (int)((g->pending[i].deadline_s - now) * 1000.0) + 1;
			if (timeout_ms < 0 || ms < timeout_ms)
				timeout_ms = ms;
			if (g->pending[i].partial) {
				any_partial = 1;
				continue;
			}
			who[n] = i;
			pf[n++] = (struct pollfd){.fd = g->pending[i].fd, .events = POLLIN};
		}
		if (any_partial && (timeout_ms < 0 || timeout_ms > PARTIAL_RETRY_MS))
			timeout_ms = PARTIAL_RETRY_MS;
		if (poll(pf, n, timeout_ms) < 0 && errno != EINTR)
			break;
		if (pf[0].revents)
			break;
		/* Highest index first: drop_pending moves the last entry into the
		 * hole, which this order has already visited. */
		for (unsigned k = n; k-- > 2;)
			if (pf[k].revents)
				look_at(g, who[k]);
		for (unsigned i = g->n_pending; i-- > 0;)
			if (g->pending[i].partial)
				look_at(g, i);
		if (pf[1].revents)
			accept_all(g);
	}
	free(pf);
	free(who);
	return NULL;
}

int tern_grpc_gate_start(tern_grpc_gate *g, grpc_server *server, tern_err *err)
{
	g->server = server;
	TERN_RETURN_IF(pthread_create(&g->thread, NULL, gate_loop, g) != 0, err, TERN_ESTATE,
		       "cannot start the gRPC listener thread");
	g->started = 1;
	return 0;
}

void tern_grpc_gate_close(tern_grpc_gate *g)
{
	if (!g)
		return;
	if (g->started) {
		const char b = 1;
		while (write(g->wake[1], &b, 1) < 0 && errno == EINTR)
			;
		pthread_join(g->thread, NULL);
	}
	for (unsigned i = 0; i < g->n_pending; i++)
		close(g->pending[i].fd);
	close(g->listen_fd);
	close(g->wake[0]);
	close(g->wake[1]);
	free(g->pending);
	free(g->handed);
	free(g);
}
