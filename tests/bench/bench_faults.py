#!/usr/bin/python3
"""bench_faults.py: the pause a stream sees when a stage dies, split into
its parts (issue 15). A figure, not a test.

    /usr/bin/python3 tests/bench/bench_faults.py BUILD_DIR MODEL [--faults 20] [--stages 2]

tern-server launches MODEL over the stages; one greedy gRPC stream runs
through its relay while a tern-node is killed (kill -9, by pid) once it has
sent 8 tokens, FAULTS times. Each fault's pause (the gap between the last
token before it and the first after) is split, from tern-server's log as it
is written and the stream's clock, into detection (kill -> "the MPI job
exited"), restart (-> "up again": back-off, process start, shard load) and
re-prefill (-> the next token). Prints p50 and max of each, one JSON row
per part with --json (DESIGN.md benchmark rows: bench "faults").
"""

import argparse
import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from ternlib import Client, TernServer, free_port, http_health, job_ranks, load_pb2  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("model")
    ap.add_argument("--faults", type=int, default=20)
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    pb = load_pb2(a.build)
    gport = free_port()
    srv = TernServer(a.build, ["-m", a.model, "--stages", str(a.stages), "--grpc", "127.0.0.1:%d" % gport,
                               "--restart-limit", "%d/100000" % (a.faults + 5), "--", "--ctx", "2048"], timeout=900)
    log = open(srv.log.name)
    seen = []  # (time, line) of tern-server's log, read as it grows

    def tail():
        while srv.proc.poll() is None:
            ln = log.readline()
            if ln:
                seen.append((time.monotonic(), ln))
            else:
                time.sleep(0.005)
    threading.Thread(target=tail, daemon=True).start()
    parts = {"pause": [], "detection": [], "restart": [], "reprefill": []}
    try:
        for f in range(a.faults):
            gen = f
            while not (http_health(srv.port)[0] == 200 and http_health(srv.port)[1].get("generation") == gen):
                time.sleep(0.1)
            c = Client(pb, gport)
            times, kill_at = [], [None]
            req = pb.GenerateRequest(prompt="And God said", max_tokens=64, ignore_eos=True,
                                     sampling=pb.SamplingParams(seed=1, has_seed=True))
            for m in c.generate(req, timeout=600):
                times.append(time.monotonic())
                if len(times) == 8:
                    n0 = len(seen)
                    kill_at[0] = time.monotonic()
                    os.kill(job_ranks(srv.proc.pid)[1], signal.SIGKILL)
            c.close()
            k = kill_at[0]
            after = [t for t in times if t > k][0]
            before = max(t for t in times if t <= k)
            ev = {key: next((t for t, ln in seen[n0:] if key in ln), None)
                  for key in ("the MPI job exited", "is up again")}
            parts["pause"].append(after - before)
            parts["detection"].append(ev["the MPI job exited"] - k)
            parts["restart"].append(ev["is up again"] - ev["the MPI job exited"])
            parts["reprefill"].append(after - ev["is up again"])
    finally:
        srv.stop()
    print("%d faults, %s, %d stages (kill -9 of stage 1 after 8 tokens)" % (a.faults, os.path.basename(a.model),
                                                                            a.stages))
    for name, v in parts.items():
        v = sorted(v)
        p50, mx = v[len(v) // 2], v[-1]
        print("  %-10s p50 %6.3f s  max %6.3f s" % (name, p50, mx))
        if a.json:
            print(json.dumps({"bench": "faults", "what": name, "threads": 0, "value": p50, "unit": "s",
                              "max": mx, "bound": None, "fraction": None, "model": os.path.basename(a.model),
                              "stages": a.stages}))


if __name__ == "__main__":
    main()
