"""test_http_hostile.py: tern-server's HTTP side against hostile and broken
clients, with raw sockets (Python's standard library only). One tern-server
(--stages 0, the built-in model) started, signalled and reaped by pid. Every
case must get an HTTP status (or, for a cut upload, a closed connection), and
after each one a normal request must still be served. Also CORS: off by
default, and with --cors ORIGIN (a second tern-server) that origin only.

    /usr/bin/python3 tests/e2e/test_http_hostile.py BUILD_DIR SOURCE_DIR
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ternlib  # noqa: E402
from ternlib import free_port  # noqa: E402

build, src = sys.argv[1], sys.argv[2]
MODEL = os.path.join(src, "deploy/models/tern-kjv.gguf")
KEY_FILE = tempfile.NamedTemporaryFile(prefix="tern-hostile-key-", delete=False).name
with open(KEY_FILE, "w") as f:
    f.write("k3y\n")
failed = 0
passed = 0


HTTP = free_port()
GRPC = free_port()
log = tempfile.NamedTemporaryFile(prefix="tern-hostile-", suffix=".log", delete=False)
srv = subprocess.Popen([os.path.join(build, "coordinator/tern-server"), "-m", MODEL, "--stages", "0",
                        "--http", "127.0.0.1:%d" % HTTP, "--grpc", "127.0.0.1:%d" % GRPC, "--", "--ctx", "1024"],
                       stdout=log, stderr=subprocess.STDOUT)


def check(cond, what):
    global failed
    if not cond:
        failed += 1
        print("  FAIL: %s" % what)
    return cond


def raw(data, read=True, timeout=30):
    """Sends bytes on a new connection; returns the status code (or None) and the reply."""
    s = socket.create_connection(("127.0.0.1", HTTP), timeout=timeout)
    try:
        s.sendall(data)
        if not read:
            return s
        out = b""
        while True:
            try:
                b = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not b:
                break
            out += b
            if b"\r\n\r\n" in out and b"Content-Length" in out.split(b"\r\n\r\n")[0]:
                head, _, body = out.partition(b"\r\n\r\n")
                n = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
                if len(body) >= n:
                    break
        code = int(out.split(b" ")[1]) if out.startswith(b"HTTP/1.") else None
        return code, out
    finally:
        if read:
            s.close()


def request(method, path, body=None, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", HTTP, timeout=timeout)
    c.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def still_serving(what):
    st, body = request("POST", "/v1/completions",
                       json.dumps({"prompt": "And God said,", "max_tokens": 4, "temperature": 0}))
    return check(st == 200 and json.loads(body)["choices"][0]["text"], "%s: the server still serves (%s)" % (what, st))


cases = []


def case(fn):
    cases.append(fn)
    return fn


def with_origin(method, path, origin, port=None, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port or HTTP, timeout=60)
    h = {"Origin": origin}
    if method == "OPTIONS":
        h.update({"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}


@case
def cors():
    # Off by default: a page from another origin gets no CORS headers (the
    # browser refuses the reply), and no preflight succeeds.
    st, h = with_origin("GET", "/v1/models", "https://evil.example")
    check(st == 200 and "access-control-allow-origin" not in h, "no --cors: no ACAO header (%s %s)" % (st, h))
    st, h = with_origin("OPTIONS", "/v1/chat/completions", "https://evil.example")
    check(st != 204 and "access-control-allow-origin" not in h, "no --cors: preflight refused (%s)" % st)
    # --cors ORIGIN: that origin only, preflight without the key.
    other = ternlib.TernServer(build, ["-m", MODEL, "--stages", "0", "--cors", "https://app.example",
                                       "--api-key-file", KEY_FILE])
    try:
        st, h = with_origin("OPTIONS", "/v1/chat/completions", "https://app.example", other.port)
        check(st == 204 and h.get("access-control-allow-origin") == "https://app.example" and
              "POST" in h.get("access-control-allow-methods", "") and
              "authorization" in h.get("access-control-allow-headers", "").lower(),
              "--cors: preflight 204 with the headers (%s %s)" % (st, h))
        st, h = with_origin("GET", "/v1/models", "https://app.example", other.port)
        check(st == 401 and h.get("access-control-allow-origin") == "https://app.example",
              "--cors: a 401 still names the origin, so the page can read it (%s %s)" % (st, h))
        st, h = with_origin("GET", "/health", "https://evil.example", other.port)
        check(st == 200 and "access-control-allow-origin" not in h, "--cors: other origins get none (%s)" % h)
    finally:
        check(other.stop() == 0, "the --cors server stops cleanly")


@case
def malformed_requests():
    for body in [b"{", b"[]", b"null", b'{"prompt": 5}', b'{"prompt": "\\ud800"}', b"\xff\xfe{}",
                 b'{"prompt": "a", "max_tokens": -1}', b'{"prompt": "a", "max_tokens": 1e300}',
                 b'{"prompt": "a", "stop": [' + b'"x",' * 100 + b'"y"]}', b"[" * 100000 + b"]" * 100000]:
        st, out = raw(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                      % len(body) + body)
        check(st == 400 and b'"invalid_request_error"' in out, "body %r...: %s" % (body[:30], st))
    still_serving("malformed JSON")


@case
def no_content_length_and_chunked():
    st, _ = raw(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    check(st == 400, "POST without Content-Length or body: %s" % st)
    body = json.dumps({"prompt": "And God", "max_tokens": 3, "temperature": 0}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
    st, out = raw(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                  + chunked + b"0\r\n\r\n")
    check(st == 200 and b'"text_completion"' in out, "chunked upload: %s" % st)
    still_serving("chunked")


@case
def big_bodies():
    body = b"x" * (10 << 20)
    st, _ = raw(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % len(body) + body)
    check(st == 413, "10 MiB body: %s" % st)
    # Claimed, never sent: the status at once.
    st, _ = raw(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\nConnection: close\r\n\r\n"
                + b"x" * 1000)
    check(st == 413, "100 GB claimed: %s" % st)
    still_serving("big bodies")


@case
def header_floods_and_garbage():
    st, _ = raw(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 20000 + b"\r\n")
    check(st in (413, 431), "20,000 headers: %s" % st)
    st, _ = raw(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n")
    check(st in (413, 431), "a 200 KB header: %s" % st)
    st, _ = raw(b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    check(st in (413, 414, 431), "a 100 KB URL: %s" % st)
    st, _ = raw(b"GARBAGE\r\n\r\n")
    check(st in (None, 400), "a garbage request line: %s" % st)
    # No line end yet: MHD waits for one (the connection's idle timeout
    # bounds it); the check is only that nothing breaks.
    st, _ = raw(b"\x00\x01\x02\x03" * 1000, timeout=1)
    check(st in (None, 400), "binary noise: %s" % st)
    still_serving("header floods")


@case
def slow_reader_and_idle_connections():
    # A stream whose client never reads: its thread blocks, nobody else does.
    body = json.dumps({"prompt": "And", "max_tokens": 1000, "ignore_eos": True, "stream": True}).encode()
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", HTTP))
    slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    idle = []
    for _ in range(1000):
        s = socket.create_connection(("127.0.0.1", HTTP), timeout=10)
        idle.append(s)
    half = [raw(b"GET /health HTTP/1.1\r\nHost: x\r\n", read=False) for _ in range(20)]  # headers never end
    still_serving("a reader that never reads, 1,000 idle and 20 half-sent connections")
    with open("/proc/%d/status" % srv.pid) as f:
        rss = [int(l.split()[1]) for l in f if l.startswith("VmRSS:")][0]
    check(rss < 512 * 1024, "tern-server's memory with 1,021 connections: %d KiB" % rss)
    print("  tern-server RSS with 1,021 open connections: %.1f MiB" % (rss / 1024))
    for s in idle + half + [slow]:
        s.close()
    still_serving("after they closed")
    # The stream nobody read was cancelled at the coordinator (polled, not timed).
    tern = os.path.join(build, "coordinator/tern")
    for _ in range(300):
        st = json.loads(subprocess.check_output([tern, "stats", "--json", "--server", "127.0.0.1:%d" % GRPC]))
        if st["active_sequences"] == 0:
            break
        time.sleep(0.1)
    check(st["active_sequences"] == 0 and st["requests_cancelled"] >= 1,
          "the unread stream was cancelled: %s" % json.dumps(st))


def sse_stream(body, cut_after=None):
    """One SSE request on a raw socket: (status, the events' data lines), or
    after cut_after events the socket is closed (the client leaves)."""
    s = socket.create_connection(("127.0.0.1", HTTP), timeout=300)
    try:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        out = b""
        while b"data: [DONE]" not in out:
            if cut_after is not None and out.count(b"data: ") >= cut_after:
                break
            b = s.recv(65536)
            if not b:
                break
            out += b
        code = int(out.split(b" ")[1]) if out.startswith(b"HTTP/1.") else None
        return code, [l[6:] for l in out.split(b"\n") if l.startswith(b"data: ")]
    finally:
        s.close()


@case
def streams_without_threads():
    # 64 SSE streams at once: tern-server's thread count stays near its idle
    # count (one event loop, libmicrohttpd's one poller, no thread per
    # connection), and every stream is whole.
    import concurrent.futures as cf
    import threading
    idle = len(ternlib.thread_stats(srv.pid))
    most = [idle]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            most[0] = max(most[0], len(ternlib.thread_stats(srv.pid)))
            time.sleep(0.005)
    sampler = threading.Thread(target=sample)
    sampler.start()
    body = json.dumps({"prompt": "And God said,", "max_tokens": 8, "ignore_eos": True, "temperature": 0,
                       "stream": True}).encode()
    try:
        with cf.ThreadPoolExecutor(64) as ex:
            outs = list(ex.map(lambda _: sse_stream(body), range(64)))
    finally:
        stop.set()
        sampler.join()
    check(most[0] <= idle + 8, "tern-server went from %d to %d threads with 64 HTTP streams" % (idle, most[0]))
    print("  tern-server threads: %d idle, at most %d with 64 HTTP streams" % (idle, most[0]))
    texts = set()
    for st, events in outs:
        ok = st == 200 and events and events[-1] == b"[DONE]"
        check(ok, "a stream of the 64 is whole (%s, %d events)" % (st, len(events)))
        if ok:
            texts.add(b"".join(json.loads(e)["choices"][0]["text"].encode() for e in events[:-1]))
    check(len(texts) == 1, "the 64 greedy streams say the same: %s" % texts)
    # A client that leaves mid-stream frees its sequence at once.
    tern = os.path.join(build, "coordinator/tern")
    before = json.loads(subprocess.check_output([tern, "stats", "--json", "--server", "127.0.0.1:%d" % GRPC]))
    long = json.dumps({"prompt": "And", "max_tokens": 1000, "ignore_eos": True, "stream": True}).encode()
    st, _ = sse_stream(long, cut_after=2)
    t0 = time.time()
    while time.time() - t0 < 5:
        now = json.loads(subprocess.check_output([tern, "stats", "--json", "--server", "127.0.0.1:%d" % GRPC]))
        if now["active_sequences"] == 0 and now["requests_cancelled"] > before["requests_cancelled"]:
            break
        time.sleep(0.05)
    check(st == 200 and now["active_sequences"] == 0 and now["requests_cancelled"] > before["requests_cancelled"],
          "a client that left mid-stream was cancelled: %s" % json.dumps(now))
    print("  a client that left mid-stream: its sequence freed within %.2f s" % (time.time() - t0))


try:
    deadline = time.time() + 120
    while True:
        try:
            if request("GET", "/health", timeout=5)[0] == 200:
                break
        except OSError:
            pass
        if srv.poll() is not None or time.time() > deadline:
            print("FAIL: tern-server did not start:\n" + open(log.name).read())
            sys.exit(1)
        time.sleep(0.2)
    for fn in cases:
        f0 = failed
        t0 = time.time()
        try:
            fn()
        except Exception as e:  # a case that raised counts as failed, the others still run
            check(False, "%s: %r" % (fn.__name__, e))
        print("[%s] %s (%.1f s)" % ("  OK  " if failed == f0 else " FAIL ", fn.__name__, time.time() - t0))
        passed += failed == f0
finally:
    srv.send_signal(signal.SIGTERM)
    try:
        rc = srv.wait(60)
    except subprocess.TimeoutExpired:
        srv.kill()
        rc = srv.wait()
    check(rc == 0, "tern-server exit status on SIGTERM: %s" % rc)
print("%d passed, %d failed, 0 skipped (log %s)" % (passed, len(cases) - passed, log.name))
sys.exit(1 if failed else 0)
