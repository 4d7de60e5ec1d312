"""test_metrics.py: tern-server's GET /metrics (Prometheus text 0.0.4) against
the requests it served. One tern-server (--stages 0, the built-in model, an
API key) started through ternlib, signalled and reaped by pid.

Scrapes, serves completions and chats, plain and streaming, with known usage,
scrapes again: the token counters moved by exactly the usage the replies
reported, requests by finish reason, HTTP responses by code, the histograms'
_count by the requests (and tokens) served; buckets are cumulative and +Inf
equals _count. Then a client that leaves (abort) and a refused request
(error); then the coordinator is stopped: /metrics still answers, tern_up 0,
the counters kept. `promtool check metrics` checks each scrape (SKIPPED, and
counted, when promtool is absent).

    /usr/bin/python3 tests/e2e/test_metrics.py BUILD_DIR SOURCE_DIR
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ternlib  # noqa: E402

build, src = sys.argv[1], sys.argv[2]
MODEL = os.path.join(src, "deploy/models/tern-kjv.gguf")
KEY = "metrics-test-key"
SLOTS = 4
PROMTOOL = shutil.which("promtool")
HISTOGRAMS = ("tern_time_to_first_token_seconds", "tern_inter_token_latency_seconds",
              "tern_e2e_request_latency_seconds")
REASONS = ("stop", "length", "cancelled", "error", "abort")

keyfile = tempfile.NamedTemporaryFile("w", prefix="tern-metrics-key-", delete=False)
keyfile.write(KEY + "\n")
keyfile.close()


GRPC = ternlib.free_port()
srv = ternlib.TernServer(build, ["-m", MODEL, "--stages", "0", "--grpc", "127.0.0.1:%d" % GRPC,
                                 "--api-key-file", keyfile.name, "--restart-limit", "0/1",
                                 "--", "--ctx", "1024", "--slots", str(SLOTS)])
res = ternlib.Results()


def request(method, path, body=None, key=KEY, timeout=60):
    """Returns (status, headers dict with lower-case names, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    h = {"Content-Type": "application/json"} if body is not None else {}
    if key:
        h["Authorization"] = "Bearer " + key
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')


def parse(text):
    """{(name, frozenset of (label, value))): float}, and {name: type}."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            types[name] = typ
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        key = (m.group(1), labels)
        assert key not in samples, "sample twice: %r" % line
        samples[key] = float(m.group(3))
    return samples, types


def scrape():
    st, h, body = request("GET", "/metrics")
    assert st == 200, "GET /metrics: %d %r" % (st, body[:200])
    assert h.get("content-type") == "text/plain; version=0.0.4; charset=utf-8", h.get("content-type")
    text = body.decode()
    s, types = parse(text)
    return text, s, types


def v(s, name, **labels):
    return s[(name, frozenset(labels.items()))]


def promtool(text):
    if not PROMTOOL:
        raise ternlib.Skip("no promtool (Debian package prometheus)")
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, "promtool check metrics: %d\n%s%s" % (p.returncode, p.stdout, p.stderr)


def check_histograms(s, types):
    for h in HISTOGRAMS:
        assert types.get(h) == "histogram", (h, types.get(h))
        buckets = sorted((float(dict(k[1])["le"]), val) for k, val in s.items() if k[0] == h + "_bucket")
        assert buckets and buckets[-1][0] == float("inf"), "%s: no +Inf bucket" % h
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), "%s: buckets not cumulative: %s" % (h, counts)
        assert counts[-1] == v(s, h + "_count"), "%s: +Inf %s != _count %s" % (h, counts[-1], v(s, h + "_count"))
        assert v(s, h + "_sum") >= 0


def delta(a, b, name, **labels):
    return v(b, name, **labels) - v(a, name, **labels)


state = {}


def auth():
    st, _, _ = request("GET", "/metrics", key=None)
    assert st == 401, "no key: %d" % st
    st, _, _ = request("GET", "/metrics", key="wrong")
    assert st == 401, "wrong key: %d" % st
    st, _, _ = request("GET", "/health", key=None)
    assert st == 200, "/health without a key: %d" % st


def first_scrape():
    text, s, types = scrape()
    state["a"] = s
    assert v(s, "tern_up") == 1
    assert v(s, "tern_kv_slots_capacity") == SLOTS, v(s, "tern_kv_slots_capacity")
    assert v(s, "tern_job_restarts_total") == 0
    for r in REASONS:
        v(s, "tern_request_finished_total", finished_reason=r)
    check_histograms(s, types)
    state["text_a"] = text


def sse(body):
    """A streaming request; returns (finish_reason, usage) from its events."""
    st, h, data = request("POST", body.pop("_path"), body)
    assert st == 200 and h.get("content-type") == "text/event-stream", (st, data[:300])
    finish, usage = None, None
    for ev in data.decode().split("\n\n"):
        if not ev.startswith("data: ") or ev == "data: [DONE]":
            continue
        j = json.loads(ev[6:])
        assert "error" not in j, j
        if j["choices"] and j["choices"][0].get("finish_reason"):
            finish = j["choices"][0]["finish_reason"]
        if j.get("usage"):
            usage = j["usage"]
    assert finish and usage, "stream without finish_reason or usage: %r" % data[-500:]
    return finish, usage


def serve_known():
    # A greedy reply first, to pick a stop string it is sure to meet.
    st, _, data = request("POST", "/v1/completions", {"prompt": "And God said", "max_tokens": 12, "temperature": 0})
    assert st == 200, data
    first = json.loads(data)
    words = [w for w in re.findall(r"[A-Za-z]+", first["choices"][0]["text"]) if len(w) > 2]
    assert words, first
    stop = words[len(words) // 2]
    served = [(first["choices"][0]["finish_reason"], first["usage"])]
    plain = [("/v1/completions", {"prompt": "In the beginning", "max_tokens": 7, "temperature": 0, "ignore_eos": True}),
             ("/v1/completions", {"prompt": "And God said", "max_tokens": 12, "temperature": 0, "stop": [stop]}),
             ("/v1/chat/completions", {"messages": [{"role": "user", "content": "And the LORD spake"}],
                                       "max_tokens": 9, "temperature": 0.7, "seed": 3, "ignore_eos": True}),
             ("/v1/completions", {"prompt": [5, 6, 7, 8, 9], "max_tokens": 1, "temperature": 0})]
    for path, body in plain:
        st, _, data = request("POST", path, body)
        assert st == 200, (path, st, data[:300])
        j = json.loads(data)
        served.append((j["choices"][0]["finish_reason"], j["usage"]))
    streams = [{"_path": "/v1/completions", "prompt": "And the earth", "max_tokens": 11, "temperature": 0,
                "ignore_eos": True},
               {"_path": "/v1/completions", "prompt": "And God said", "max_tokens": 12, "temperature": 0,
                "stop": stop},
               {"_path": "/v1/chat/completions", "messages": [{"role": "user", "content": "Blessed are"}],
                "max_tokens": 6, "temperature": 0, "ignore_eos": True}]
    for body in streams:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        served.append(sse(body))
    reasons = [f for f, _ in served]
    assert "stop" in reasons and "length" in reasons, reasons
    state["served"] = served


def counters_moved_exactly():
    text, b, types = scrape()
    a, served = state["a"], state["served"]
    n = len(served)
    prompt = sum(u["prompt_tokens"] for _, u in served)
    gen = sum(u["completion_tokens"] for _, u in served)
    with_tokens = sum(1 for _, u in served if u["completion_tokens"] > 0)
    gaps = sum(max(u["completion_tokens"] - 1, 0) for _, u in served)
    print("  %d requests: %d prompt tokens, %d generated; reasons %s" % (n, prompt, gen, [f for f, _ in served]))
    assert delta(a, b, "tern_prompt_tokens_total") == prompt, (delta(a, b, "tern_prompt_tokens_total"), prompt)
    assert delta(a, b, "tern_generation_tokens_total") == gen, (delta(a, b, "tern_generation_tokens_total"), gen)
    for r in REASONS:
        want = sum(1 for f, _ in served if f == r)
        got = delta(a, b, "tern_request_finished_total", finished_reason=r)
        assert got == want, "finished_reason=%s: moved %s, served %s" % (r, got, want)
    assert delta(a, b, "tern_e2e_request_latency_seconds_count") == n
    assert delta(a, b, "tern_time_to_first_token_seconds_count") == with_tokens
    assert delta(a, b, "tern_inter_token_latency_seconds_count") == gaps, \
        (delta(a, b, "tern_inter_token_latency_seconds_count"), gaps)
    # The replies, the two 401s and the /health of auth() came before scrape a;
    # between a and b: the n replies and scrape a's own 200.
    assert delta(a, b, "tern_http_requests_total", code="200") == n + 1, delta(a, b, "tern_http_requests_total",
                                                                                code="200")
    assert v(b, "tern_http_requests_total", code="401") >= 2
    for code in ("400", "401", "404", "429", "500", "503", "other"):
        assert delta(a, b, "tern_http_requests_total", code=code) == 0, code
    check_histograms(b, types)
    assert v(b, "tern_stage_step_seconds", stage="1") > 0
    assert 0 <= v(b, "tern_stage_busy_ratio", stage="1") <= 1
    state["text_b"] = text


def concurrent():
    """Streams and plain requests at once (more than the KV slots, so some
    wait): the counters still move by exactly what was served."""
    import threading
    _, a, _ = scrape()
    out, errors = [], []

    def one(i):
        try:
            body = {"prompt": "And God said unto", "max_tokens": 3 + i, "temperature": 0, "ignore_eos": True}
            if i % 2:
                body.update({"_path": "/v1/completions", "stream": True, "stream_options": {"include_usage": True}})
                out.append(sse(body))
            else:
                st, _, data = request("POST", "/v1/completions", body)
                assert st == 200, (st, data[:200])
                j = json.loads(data)
                out.append((j["choices"][0]["finish_reason"], j["usage"]))
        except Exception as e:  # reported below: a thread cannot fail the check itself
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2 * SLOTS + 2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    _, b, types = scrape()
    n = len(out)
    assert delta(a, b, "tern_request_finished_total", finished_reason="length") == n
    assert delta(a, b, "tern_prompt_tokens_total") == sum(u["prompt_tokens"] for _, u in out)
    assert delta(a, b, "tern_generation_tokens_total") == sum(u["completion_tokens"] for _, u in out)
    assert delta(a, b, "tern_e2e_request_latency_seconds_count") == n
    assert delta(a, b, "tern_inter_token_latency_seconds_count") == sum(u["completion_tokens"] - 1 for _, u in out)
    assert delta(a, b, "tern_http_requests_total", code="200") == n + 1
    check_histograms(b, types)


def gauges_at_rest():
    # The coordinator frees a finished sequence's slot at its next step: polled.
    for _ in range(100):
        _, s, _ = scrape()
        if v(s, "tern_num_requests_running") == 0:
            break
        time.sleep(0.1)
    assert v(s, "tern_num_requests_running") == 0 and v(s, "tern_kv_slots_used") == 0, \
        (v(s, "tern_num_requests_running"), v(s, "tern_kv_slots_used"))
    assert v(s, "tern_num_requests_waiting") == 0


def abort_and_error():
    _, b, _ = scrape()
    # A stream whose client leaves after its first event.
    body = json.dumps({"prompt": "And", "max_tokens": 500, "ignore_eos": True, "stream": True}).encode()
    c = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n"
              % (KEY.encode(), len(body)) + body)
    got = b""
    while b"data: " not in got:
        chunk = c.recv(4096)
        assert chunk, "the stream closed before its first event"
        got += chunk
    c.close()
    # Refused by the coordinator: past the context (INVALID_ARGUMENT, 400).
    st, _, data = request("POST", "/v1/completions", {"prompt": "And God said", "max_tokens": 5000})
    assert st == 400, (st, data[:300])
    for _ in range(100):
        _, s, types = scrape()
        if delta(b, s, "tern_request_finished_total", finished_reason="abort") >= 1:
            break
        time.sleep(0.1)
    assert delta(b, s, "tern_request_finished_total", finished_reason="abort") == 1
    assert delta(b, s, "tern_request_finished_total", finished_reason="error") == 1
    for r in ("stop", "length", "cancelled"):
        assert delta(b, s, "tern_request_finished_total", finished_reason=r) == 0, r
    # Neither carried usage, nor counts as finished for the end-to-end time.
    assert delta(b, s, "tern_prompt_tokens_total") == 0 and delta(b, s, "tern_generation_tokens_total") == 0
    assert delta(b, s, "tern_e2e_request_latency_seconds_count") == 0
    assert delta(b, s, "tern_time_to_first_token_seconds_count") == 1
    assert delta(b, s, "tern_http_requests_total", code="400") == 1
    check_histograms(s, types)
    state["c"] = s


def job_down():
    c = state["c"]
    kids = [p for p in ternlib.descendants(srv.proc.pid)
            if open("/proc/%d/cmdline" % p, "rb").read().split(b"\0")[0].endswith(b"tern-coordinator")]
    assert len(kids) == 1, "the coordinator among tern-server's children: %s" % kids
    os.kill(kids[0], signal.SIGTERM)
    # It drains, then exits (a zombie until tern-server reaps it): polled.
    for _ in range(600):
        try:
            if ternlib.proc_stat(kids[0])[0] == "Z":
                break
        except OSError:
            break
        time.sleep(0.1)
    assert request("GET", "/health", key=None)[0] == 503
    text, s, types = scrape()
    assert v(s, "tern_up") == 0
    assert ("tern_num_requests_running", frozenset()) not in s, "a coordinator gauge while the job is down"
    for name in ("tern_prompt_tokens_total", "tern_generation_tokens_total"):
        assert v(s, name) == v(c, name), name
    for r in REASONS:
        assert v(s, "tern_request_finished_total", finished_reason=r) == \
            v(c, "tern_request_finished_total", finished_reason=r), r
    check_histograms(s, types)
    state["text_down"] = text


try:
    res.check("/metrics needs the API key, /health does not", auth)
    res.check("first scrape: tern_up 1, KV capacity, every finished_reason, histograms well formed", first_scrape)
    res.check("promtool check metrics (first scrape)", lambda: promtool(state["text_a"]))
    res.check("8 completions and chats, plain and streaming, stop and length", serve_known)
    res.check("counters moved by exactly the usage served, histograms by the requests", counters_moved_exactly)
    res.check("promtool check metrics (after serving)", lambda: promtool(state["text_b"]))
    res.check("%d requests at once over %d KV slots: counters exact" % (2 * SLOTS + 2, SLOTS), concurrent)
    res.check("gauges at rest: nothing running, no slot used, none waiting", gauges_at_rest)
    res.check("a client that leaves is an abort, a refused request an error", abort_and_error)
    res.check("job down: /metrics still served, tern_up 0, counters kept", job_down)
    res.check("promtool check metrics (job down)", lambda: promtool(state["text_down"]))
finally:
    rc = srv.stop()
    os.unlink(keyfile.name)


def exit_status():
    assert rc == 0, "tern-server exit status on SIGTERM: %s" % rc


res.check("tern-server exits 0 on SIGTERM", exit_status)
print("(tern-server log %s)" % srv.log.name)
sys.exit(res.finish())
