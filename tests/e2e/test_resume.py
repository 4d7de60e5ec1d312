#!/usr/bin/python3
"""test_resume.py: a stage, the coordinator or a hung stage goes down, the
streams go on (issue 15).

One tern-server launches the built-in model over 2 tern-node stages. Eight
streams run at once, four through its gRPC relay and four over HTTP SSE
(/v1/completions), half greedy, half sampled at temperature 0.8 with a seed,
two of the HTTP ones with logprobs. Each is first run undisturbed; then, for
each fault, all eight again, and once every stream has sent some tokens the
fault is injected by pid:
  - kill -9 a tern-node;
  - kill -9 the coordinator rank;
  - SIGSTOP a tern-node (the coordinator's stall timeout, or tern-server's);
  - two faults in one stream (a stage, then, once the streams flow again,
    the coordinator).
Every stream must complete byte-identical to its undisturbed run: gRPC token
ids, indices, text, usage, finish reason and seed; HTTP text, finish reason,
usage and logprobs. Then /metrics: restarts counted, resumed requests and
their pauses, token counters not double-counted; gRPC Health's generation.
Then a relayed stream cancelled while its held call waits for the job (a
stage killed) is never sent again: no resume counted, no sequence once the
job is back, and the relay serves the next request.

The back-off: before each single fault the test waits until the log says the
job has served --backoff-reset 2 s ("the back-off starts anew"), so each of
those restarts must wait the first step, 1 s (the log's "restarting the MPI
job in 1 s"): isolated faults do not climb to the cap.

Last, a job that dies at every start: the model file is removed and a stage
killed; the restarts must back off 1, 2, 4 s (no start ever serves, so the
streak is never reset) and past --restart-limit 3/600 (4 failures, 3 restarts
counted) both streams end with UNAVAILABLE (gRPC)
and an SSE error event on a properly ended body, nothing of the job is left,
/health says failed, new requests are refused, tern-server exits 0.

The pause each stream saw (its longest gap between two tokens) is printed
per fault: figures, not assertions.

Usage: test_resume.py BUILD_DIR SOURCE_DIR
"""

import http.client
import json
import os
import shutil
import signal
import sys
import tempfile
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ternlib import (Client, Results, TernServer, descendants, free_port, http_health, job_ranks,  # noqa: E402
                     join_streams, load_pb2, start_streams, stream_pauses, stream_summary, wait_streams)

build, src = sys.argv[1], sys.argv[2]
MODEL = os.path.join(src, "deploy/models/tern-kjv.gguf")
TOKENS = 96
PROMPTS = ["And God said", "In the beginning", "The LORD is my shepherd", "And it came to pass",
           "Blessed are the", "Then Jesus said unto them", "And the earth was", "Behold, I stand at"]
pb = load_pb2(build)
res = Results()


def spec(i):
    """The i-th request: 0-3 over gRPC, 4-7 over HTTP; odd ones sampled."""
    sampled = i % 2 == 1
    return {"i": i, "grpc": i < 4, "prompt": PROMPTS[i], "temperature": 0.8 if sampled else 0.0,
            "seed": 1000 + i, "logprobs": i in (5, 7), "tokens": TOKENS}


def start_all(srv, grpc_port):
    return start_streams(pb, [spec(i) for i in range(8)], grpc_port, srv.port)


def wait_ready(srv, gen=None, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st, h = http_health(srv.port)
        if st == 200 and (gen is None or h.get("generation") == gen) and len(job_ranks(srv.proc.pid)) == 3:
            return h
        time.sleep(0.2)
    raise AssertionError("tern-server not ready again (generation %s): %s" % (gen, http_health(srv.port)))


state = {"faults": 0, "pauses": []}
tmp = tempfile.mkdtemp(prefix="tern-resume-")
grpc_port = free_port()
srv = TernServer(build, ["-m", MODEL, "--stages", "2", "--grpc", "127.0.0.1:%d" % grpc_port,
                         "--restart-limit", "20/600", "--backoff-reset", "2", "--", "--ctx", "1024", "--slots", "8"])
RESET = "the back-off starts anew"


def log_lines(server, key):
    return [ln for ln in open(server.log.name).read().splitlines() if key in ln]


def restart_delays(server):
    """The back-off of each restart so far, in s, from the log."""
    return [int(ln.split(" in ")[1].split()[0]) for ln in log_lines(server, "restarting the MPI job in")]


def wait_backoff_reset(server, n, timeout=60):
    """Until the log has said n times that the job served --backoff-reset."""
    end = time.monotonic() + timeout
    while len(log_lines(server, RESET)) < n:
        if time.monotonic() > end:
            raise AssertionError("the log never said '%s' %d times" % (RESET, n))
        time.sleep(0.1)


def scrape():
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    vals = {}
    for ln in text.splitlines():
        if ln and not ln.startswith("#"):
            k, v = ln.rsplit(" ", 1)
            vals[k] = float(v)
    return vals


def undisturbed():
    wait_ready(srv, 0)
    state["m0"] = scrape()
    outs, threads = start_all(srv, grpc_port)
    join_streams(threads)
    for o in outs:
        assert o["error"] is None, "undisturbed stream %d failed: %s" % (o["spec"]["i"], o["error"])
        if o["spec"]["grpc"]:
            assert len(o["ids"]) == TOKENS and [i for i, _ in o["ids"]] == list(range(TOKENS)), o["ids"][:5]
        else:
            assert o.get("done") and o["final"]["completion_tokens"] == TOKENS, stream_summary(o)
    state["ref"] = [stream_summary(o) for o in outs]
    state["http_tokens"] = sum(o["final"]["completion_tokens"] for o in outs if not o["spec"]["grpc"])


def fault_case(name, inject):
    def run():
        if "ref" not in state:
            raise AssertionError("no undisturbed run to compare with")
        gen = state["faults"]
        wait_ready(srv, gen)
        wait_backoff_reset(srv, gen)
        outs, threads = start_all(srv, grpc_port)
        wait_streams(outs, 8)
        n = inject(outs)
        state["faults"] += n
        join_streams(threads)
        delays = restart_delays(srv)
        # The fault after a job that served --backoff-reset: the first step.
        assert len(delays) == state["faults"] and delays[gen] == 1, \
            "restart back-offs %s: fault %d after the reset line should wait 1 s" % (delays, gen + 1)
        for o, want in zip(outs, state["ref"]):
            got = stream_summary(o)
            assert got == want, "stream %d (%s) differs after the fault:\n got %s\nwant %s" % (
                o["spec"]["i"], "gRPC" if o["spec"]["grpc"] else "HTTP", json.dumps(got)[:1500],
                json.dumps(want)[:1500])
        p = sorted(stream_pauses(outs))
        state["pauses"] += p
        print("  %s: pause per stream p50 %.2f s, max %.2f s" % (name, p[len(p) // 2], p[-1]), flush=True)
        wait_ready(srv, state["faults"])
    res.check(name, run)


def kill_rank(rank, sig=signal.SIGKILL):
    def inject(outs):
        pid = job_ranks(srv.proc.pid)[rank]
        os.kill(pid, sig)
        return 1
    return inject


def two_faults(outs):
    kill_rank(2)(outs)
    wait_ready(srv, state["faults"] + 1)
    since = [len(o["times"]) for o in outs]
    wait_streams(outs, 4, since)
    kill_rank(0)(outs)
    return 2


def metrics_counted():
    m = scrape()
    m0 = state["m0"]
    assert m["tern_job_restarts_total"] == state["faults"], (m["tern_job_restarts_total"], state["faults"])
    resumed = m["tern_requests_resumed_total"]
    assert 1 <= resumed <= 8 * state["faults"], resumed
    assert m["tern_resume_pause_seconds_count"] == resumed, m["tern_resume_pause_seconds_count"]
    # HTTP requests: the undisturbed run and each fault case's, each counted once.
    runs = 1 + sum(1 for name, ok in res.items if ok and name.startswith("fault:"))
    got = m["tern_generation_tokens_total"] - m0["tern_generation_tokens_total"]
    assert got == runs * state["http_tokens"], "generation tokens %s, want %d x %d" % (got, runs, state["http_tokens"])
    c = Client(pb, grpc_port)
    try:
        h = c.health(pb.HealthRequest(), timeout=10)
    finally:
        c.close()
    assert h.ready and h.generation == state["faults"], (h.ready, h.generation, state["faults"])
    p = sorted(state["pauses"])
    print("  pause over %d streams x faults: p50 %.2f s, max %.2f s" % (len(p), p[len(p) // 2], p[-1]))


def cancel_while_down():
    """A relayed stream cancelled while its held call waits for the job ends
    there: it is never sent again (nothing resumed, no sequence after the
    restart), and the relay serves on."""
    wait_ready(srv, state["faults"])
    m0 = scrape()
    waiting0 = len(log_lines(srv, "waiting for the job"))
    c = Client(pb, grpc_port)
    try:
        call = c.generate(pb.GenerateRequest(prompt=PROMPTS[0], max_tokens=800, ignore_eos=True), timeout=120)
        for _ in range(3):
            next(call)
        os.kill(job_ranks(srv.proc.pid)[1], signal.SIGKILL)
        state["faults"] += 1
        end = time.monotonic() + 30
        while len(log_lines(srv, "waiting for the job")) <= waiting0:
            assert time.monotonic() < end, "the stream never waited for the job"
            time.sleep(0.02)
        call.cancel()
        wait_ready(srv, state["faults"])
        # Sent again, it would hold a sequence for 800 tokens.
        for _ in range(10):
            st = c.stats(pb.StatsRequest(), timeout=10)
            assert st.active_sequences == 0, "a cancelled stream was sent again: %d active" % st.active_sequences
            time.sleep(0.1)
        ids, _, final = c.gen(prompt=PROMPTS[1], max_tokens=4)
        assert len(ids) == 4 and final is not None, ids
    finally:
        c.close()
    m = scrape()
    assert m["tern_requests_resumed_total"] == m0["tern_requests_resumed_total"], \
        (m["tern_requests_resumed_total"], m0["tern_requests_resumed_total"])


try:
    res.check("undisturbed: 8 streams, 4 gRPC + 4 HTTP, greedy and seeded", undisturbed)
    fault_case("fault: kill -9 a tern-node mid-stream", kill_rank(1))
    fault_case("fault: kill -9 the coordinator mid-stream", kill_rank(0))
    fault_case("fault: SIGSTOP a tern-node (stall)", kill_rank(2, signal.SIGSTOP))
    fault_case("fault: two faults in one stream", two_faults)
    res.check("metrics: restarts, resumed requests and pauses; tokens not double-counted", metrics_counted)
    res.check("a relayed stream cancelled while the job is down is not sent again", cancel_while_down)
finally:
    rc = srv.stop()
res.check("tern-server exits 0 on SIGTERM", lambda: (_ for _ in ()).throw(AssertionError(rc)) if rc != 0 else None)


def dies_at_every_start():
    model = os.path.join(tmp, "doomed.gguf")
    shutil.copy(MODEL, model)
    gport = free_port()
    s2 = TernServer(build, ["-m", model, "--stages", "1", "--grpc", "127.0.0.1:%d" % gport,
                            "--restart-limit", "3/600", "--", "--ctx", "1024"])
    try:
        outs, threads = start_streams(pb, [spec(0), spec(4)], gport, s2.port)
        wait_streams(outs, 4)
        os.unlink(model)  # every start from now on fails to load it
        os.kill(job_ranks(s2.proc.pid)[1], signal.SIGKILL)
        join_streams(threads)
        g, h = outs
        assert g["error"] and g["error"][0] == grpc.StatusCode.UNAVAILABLE and "not restarting" in g["error"][1], \
            g["error"]
        assert h["status"] == 200 and h["error"] and "not restarting" in h["error"]["message"], h
        assert not h.get("done"), "an SSE stream that failed must not end with [DONE]"
        # No start served: the back-off doubles every time, and the 4th
        # failure within the window is past the limit (3 restarts made).
        assert restart_delays(s2) == [1, 2, 4], restart_delays(s2)
        assert not log_lines(s2, RESET), log_lines(s2, RESET)
        assert log_lines(s2, "failed 4 times within 600 s: not restarting it"), open(s2.log.name).read()[-2000:]
        c = http.client.HTTPConnection("127.0.0.1", s2.port, timeout=10)
        c.request("GET", "/metrics")
        restarts = [ln for ln in c.getresponse().read().decode().splitlines()
                    if ln.startswith("tern_job_restarts_total ")]
        c.close()
        assert restarts == ["tern_job_restarts_total 3"], restarts
        left = [p for p in descendants(s2.proc.pid)]
        assert not left, "processes of the job left behind: %s" % left
        st, body = http_health(s2.port)
        assert st == 503 and body.get("job") == "failed", (st, body)
        c = Client(pb, gport)
        try:
            code = None
            try:
                list(c.generate(pb.GenerateRequest(prompt="hi", max_tokens=2), timeout=30))
            except grpc.RpcError as e:
                code = e.code()
            assert code == grpc.StatusCode.UNAVAILABLE, code
        finally:
            c.close()
    finally:
        rc2 = s2.stop()
    assert rc2 == 0, "tern-server exit status after the job was given up: %s" % rc2


res.check("a job that dies at every start: past --restart-limit every stream ends, nothing left", dies_at_every_start)
shutil.rmtree(tmp, ignore_errors=True)
sys.exit(res.finish())
