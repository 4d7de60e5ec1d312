#!/usr/bin/python3
"""test_spare.py: a host dies, a spare host takes its place, the streams go
on (issue 15).

Four network-namespace hosts (deploy/netns-hosts, deploy/nsagent as Open
MPI's launch agent): tern-server on h1 launches a 2-stage plan of the
built-in model (tern-partition) from WORK/%h/plan, with the coordinator on
h1 and one stage on each of h2 and h3, each of which holds the whole plan
(as deploy/tern-up --remote-dir WORK/%h would leave it). The hostfile lists
two spares: "# spare: h5 slots=1", a host that cannot be reached (no such
namespace), then "# spare: h4 slots=1", which holds nothing. Four streams
(2 gRPC through the relay, 2 HTTP SSE, greedy and seeded) run undisturbed,
then again; mid-stream every process of h3 is killed (its orted and its
stage) by pid. The copy to h5 must fail and h5 be skipped (one log line);
h4 must get exactly what stage 2 reads, the manifest and stage 2's shard
(not the coordinator's or stage 1's), the job come back with stage 2 on h4,
and every stream complete identical to its undisturbed run. /health names
the replacement and the stage's new host, gRPC Health lists it, /metrics
counts it and the bytes copied, the log says both.

Needs root for network namespaces: SKIPPED (77) otherwise.

Usage: test_spare.py BUILD_DIR SOURCE_DIR
"""

import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

build, src = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
DEPLOY = os.path.join(src, "deploy")
PREFIX = "tsp%d" % os.getpid() if len(sys.argv) < 4 else sys.argv[3]


def outside():
    """Makes the hosts, runs this script again inside h1, removes the hosts."""
    if os.geteuid() != 0:
        print("SKIPPED: network-namespace hosts need root")
        return 77
    up = subprocess.run(["sh", os.path.join(DEPLOY, "netns-hosts"), "up", "4", PREFIX], capture_output=True,
                        text=True)
    try:
        if up.returncode != 0:
            print("SKIPPED: cannot create network namespaces here: %s" % up.stderr.strip()[:200])
            return 77
        inner = "hostname h1; exec /usr/bin/python3 %s %s %s %s" % (os.path.abspath(__file__), build, src, PREFIX)
        return subprocess.run(["ip", "netns", "exec", PREFIX + "-h1", "unshare", "--uts", "sh", "-c", inner]).returncode
    finally:
        subprocess.run(["sh", os.path.join(DEPLOY, "netns-hosts"), "down", PREFIX], capture_output=True)


if len(sys.argv) < 4:
    sys.exit(outside())

# ---- inside h1 ----
from ternlib import (Client, Results, TernServer, free_port, http_health, join_streams, load_pb2,  # noqa: E402
                     start_streams, stream_pauses, stream_summary, wait_streams)

MODEL = os.path.join(src, "deploy/models/tern-kjv.gguf")
TOKENS = 64
pb = load_pb2(build)
res = Results()
work = tempfile.mkdtemp(prefix="tern-spare-")
hosts = os.path.join(work, "hosts")
with open(hosts, "w") as f:
    f.write("# network: 10.77.0.0/24\nh1 slots=1\nh2 slots=1\nh3 slots=1\n# spare: h5 slots=1\n"
            "# spare: h4 slots=1\n")
# The plan on h1, h2, h3 (each host's own directory); none on h4.
os.makedirs(os.path.join(work, "h1"))
subprocess.run([os.path.join(build, "partition", "tern-partition"), MODEL, "--stages", "2", "-o",
                os.path.join(work, "h1", "plan")], check=True, capture_output=True)
for h in ("h2", "h3"):
    shutil.copytree(os.path.join(work, "h1", "plan"), os.path.join(work, h, "plan"))
PLAN = os.path.join(work, "%h", "plan")
NEEDED = ["plan.pb", "stage-002.shard"]
NEEDED_BYTES = sum(os.path.getsize(os.path.join(work, "h1", "plan", f)) for f in NEEDED)
os.environ.update({"OMPI_MCA_plm_rsh_agent": os.path.join(DEPLOY, "nsagent"), "TERN_NETNS_PREFIX": PREFIX,
                   "OMPI_MCA_plm_rsh_no_tree_spawn": "1", "OMPI_MCA_mpi_yield_when_idle": "1",
                   "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
grpc_port = free_port()
specs = [{"grpc": i < 2, "prompt": p, "temperature": 0.8 if i % 2 else 0.0, "seed": 77 + i, "tokens": TOKENS}
         for i, p in enumerate(["And God said", "In the beginning", "Blessed are the", "And it came to pass"])]


def wait_ready(port, gen, timeout=180):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st, h = http_health(port)
        if st == 200 and h.get("generation") == gen:
            return h
        time.sleep(0.2)
    raise AssertionError("not ready (generation %d): %s" % (gen, http_health(port)))


def pids_of_host(name):
    out = subprocess.run(["ip", "netns", "pids", PREFIX + "-" + name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


state = {}
srv = TernServer(build, ["-m", PLAN, "--hostfile", hosts, "--grpc", "127.0.0.1:%d" % grpc_port,
                         "--restart-limit", "3/600", "--", "--ctx", "1024"], timeout=240)
try:
    def undisturbed():
        h = wait_ready(srv.port, 0)
        assert [s["host"] for s in h["stages"]] == ["h2", "h3"], h
        outs, threads = start_streams(pb, specs, grpc_port, srv.port)
        join_streams(threads)
        for o in outs:
            assert o["error"] is None, o["error"]
        state["ref"] = [stream_summary(o) for o in outs]
    res.check("undisturbed over h1 (coordinator), h2, h3", undisturbed)

    def host_dies():
        assert "ref" in state, "no undisturbed run"
        outs, threads = start_streams(pb, specs, grpc_port, srv.port)
        wait_streams(outs, 6)
        victims = pids_of_host("h3")
        assert victims, "no process on h3"
        for p in victims:
            os.kill(p, signal.SIGKILL)
        join_streams(threads)
        for o, want in zip(outs, state["ref"]):
            got = stream_summary(o)
            assert got == want, "stream differs after h3 died:\n got %s\nwant %s" % (got, want)
        p = sorted(stream_pauses(outs))
        print("  pause per stream p50 %.2f s, max %.2f s" % (p[len(p) // 2], p[-1]), flush=True)
        h = wait_ready(srv.port, 1)
        assert [s["host"] for s in h["stages"]] == ["h2", "h4"], h["stages"]
        assert h["replaced"] == [{"host": "h3", "by": "h4", "files_copied": len(NEEDED),
                                  "bytes_copied": NEEDED_BYTES}], h.get("replaced")
        assert pids_of_host("h4"), "nothing runs on the spare"
        c = Client(pb, grpc_port)
        try:
            g = c.health(pb.HealthRequest(), timeout=10)
        finally:
            c.close()
        assert list(g.replaced_hosts) == ["h3 -> h4"] and g.generation == 1, (g.replaced_hosts, g.generation)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        assert "tern_host_replacements_total 1\n" in text, [ln for ln in text.splitlines() if "replace" in ln]
        assert "tern_host_copy_bytes_total %d\n" % NEEDED_BYTES in text, \
            ([ln for ln in text.splitlines() if "copy" in ln], NEEDED_BYTES)
        got = sorted(os.listdir(os.path.join(work, "h4", "plan")))
        assert got == NEEDED, "h4 holds %s, want what stage 2 reads: %s" % (got, NEEDED)
    res.check("every process of h3 killed mid-stream: spare h4 takes stage 2, streams identical", host_dies)
finally:
    rc = srv.stop()
    log = open(srv.log.name).read()
want_log = ["tern-server: spare host h5 skipped: copying ",
            "tern-server: host h3 failed: spare host h4 takes its 1 slot(s) (stages 2-2; 2 of 2 file(s) copied, "
            "%d bytes, in " % NEEDED_BYTES]
res.check("the log says h5 was skipped, which host replaced which and what was copied",
          lambda: None if all(sum(ln.startswith(w) for ln in log.splitlines()) == 1 for w in want_log) else
          (_ for _ in ()).throw(AssertionError(log[-3000:])))
res.check("tern-server exits 0 on SIGTERM", lambda: None if rc == 0 else (_ for _ in ()).throw(AssertionError(rc)))
shutil.rmtree(work, ignore_errors=True)
sys.exit(res.finish())
