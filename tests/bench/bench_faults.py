#!/usr/bin/python3
"""bench_faults.py: the pause a stream sees when part of the job dies, split
into its parts (issue 15). A figure, not a test.

    /usr/bin/python3 tests/bench/bench_faults.py BUILD_DIR MODEL [--faults 20] [--stages 2]
        [--kinds node,coord,stop] [--tokens 24] [--json]

tern-server launches MODEL (a GGUF file or a plan directory) over the
stages with --backoff-reset 1; one greedy gRPC stream runs through its relay
and, once it has sent 4 tokens, a fault is injected by pid, FAULTS times per
kind: `node` kill -9 of stage 1, `coord` kill -9 of the coordinator rank,
`stop` SIGSTOP of stage 1 (found by a stall timeout). Before each fault the
bench waits for the log's "the back-off starts anew", so every restart waits
the first back-off step (1 s), as an isolated fault does.

Each pause (the gap between the last token before the fault and the first
after) is split, from tern-server's log read as it is written, its own
"loaded in"/"opened in" figures and the stream's clock, into
  detection  fault -> "the MPI job exited" (or tern-server's stall line)
  backoff    -> the next job's mpirun line (the back-off step, 1 s)
  start      -> "up again", less the load: processes, MPI wire-up, HELLO/READY
  load       the coordinator's model open + the slowest stage's load (they
             run one after the other: the stages load on the coordinator's HELLO)
  reprefill  "up again" -> the next token (re-admission, prompt + tokens prefilled)
Prints p50 and max of each part per kind; for a plan also the load rate
(shard bytes / load time, page cache warm) of each stage and of the
coordinator's shard. One JSON row per part and kind with --json (DESIGN.md
benchmark rows: bench "faults").
"""

import argparse
import json
import os
import re
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from ternlib import Client, TernServer, free_port, http_health, job_ranks, load_pb2  # noqa: E402

KINDS = {"node": (1, signal.SIGKILL, "kill -9 of stage 1"), "coord": (0, signal.SIGKILL, "kill -9 of the coordinator"),
         "stop": (1, signal.SIGSTOP, "SIGSTOP of stage 1")}
PARTS = ["pause", "detection", "backoff", "start", "load", "reprefill"]


def pct(v):
    v = sorted(v)
    return v[len(v) // 2], v[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("model")
    ap.add_argument("--faults", type=int, default=20)
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--kinds", default="node,coord,stop")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    kinds = a.kinds.split(",")
    for k in kinds:
        if k not in KINDS:
            ap.error("unknown kind %s (node, coord, stop)" % k)
    pb = load_pb2(a.build)
    gport = free_port()
    n_all = a.faults * len(kinds)
    srv = TernServer(a.build, ["-m", a.model, "--stages", str(a.stages), "--grpc", "127.0.0.1:%d" % gport,
                               "--restart-limit", "%d/100000" % (n_all + 5), "--backoff-reset", "1", "--",
                               "--ctx", "2048"], timeout=900)
    log = open(srv.log.name)
    seen = []  # (time, line) of tern-server's log, read as it grows

    def tail():
        while srv.proc.poll() is None:
            ln = log.readline()
            if ln:
                seen.append((time.monotonic(), ln))
            else:
                time.sleep(0.002)
    threading.Thread(target=tail, daemon=True).start()

    def wait_line(key, count, timeout=900):
        end = time.monotonic() + timeout
        while sum(1 for _, ln in seen if key in ln) < count:
            if time.monotonic() > end:
                raise RuntimeError("no '%s' in the log" % key)
            time.sleep(0.02)

    res = {k: {p: [] for p in PARTS} for k in kinds}
    loads = []  # (what, seconds) of every load after a fault
    gen = 0
    try:
        for kind in kinds:
            rank, sig, _ = KINDS[kind]
            for _ in range(a.faults):
                while not (http_health(srv.port)[0] == 200 and http_health(srv.port)[1].get("generation") == gen):
                    time.sleep(0.05)
                if gen:
                    wait_line("the back-off starts anew", gen)
                c = Client(pb, gport)
                times, kill_at = [], [None]
                req = pb.GenerateRequest(prompt="And God said", max_tokens=a.tokens, ignore_eos=True,
                                         sampling=pb.SamplingParams(seed=1, has_seed=True))
                n0 = 0
                for m in c.generate(req, timeout=900):
                    times.append(time.monotonic())
                    if len(times) == 4:
                        n0 = len(seen)
                        kill_at[0] = time.monotonic()
                        os.kill(job_ranks(srv.proc.pid)[rank], sig)
                c.close()
                gen += 1
                k = kill_at[0]
                after = [t for t in times if t > k][0]
                before = max(t for t in times if t <= k)
                ev = seen[n0:]
                t_det = next(t for t, ln in ev if "the MPI job exited" in ln or "has not answered for" in ln)
                t_launch = next(t for t, ln in ev if t >= t_det and ln.startswith("tern-server: mpirun "))
                t_up = next(t for t, ln in ev if "is up again" in ln)
                job = [ln for t, ln in ev if t_launch <= t <= t_up]
                opened = [float(x) for ln in job for x in re.findall(r" opened in ([0-9.]+) s", ln)]
                stage = [(int(m.group(1)), float(m.group(2))) for ln in job
                         for m in [re.search(r"stage (\d+): layers .* loaded in ([0-9.]+) s", ln)] if m]
                load = sum(opened) + max((s for _, s in stage), default=0.0)
                loads += [("coord", s) for s in opened] + [("stage %d" % i, s) for i, s in stage]
                r = res[kind]
                r["pause"].append(after - before)
                r["detection"].append(t_det - k)
                r["backoff"].append(t_launch - t_det)
                r["load"].append(load)
                r["start"].append(t_up - t_launch - load)
                r["reprefill"].append(after - t_up)
    finally:
        srv.stop()
    name = os.path.basename(os.path.normpath(a.model))
    print("%s, %d stages, %d faults per kind, back-off step 1 s" % (name, a.stages, a.faults))
    for kind in kinds:
        print("  %s:" % KINDS[kind][2])
        for p in PARTS:
            p50, mx = pct(res[kind][p])
            print("    %-10s p50 %6.3f s  max %6.3f s" % (p, p50, mx))
            if a.json:
                print(json.dumps({"bench": "faults", "what": "%s %s" % (kind, p), "threads": 0, "value": p50,
                                  "unit": "s", "max": mx, "bound": None, "fraction": None, "model": name,
                                  "stages": a.stages}))
    plan = os.path.join(a.model, "plan.pb")
    if os.path.isdir(a.model) and os.path.exists(plan):
        # The shard each load read: stage N's stage-00N.shard, the coordinator's coord.shard.
        for what in sorted(set(w for w, _ in loads)):
            f = "coord.shard" if what == "coord" else "stage-%03d.shard" % int(what.split()[1])
            size = os.path.getsize(os.path.join(a.model, f))
            p50, mx = pct([s for w, s in loads if w == what])
            print("  load %-8s %s %.0f MB: p50 %.2f s (max %.2f s) = %.2f GB/s" % (what, f, size / 1e6, p50, mx,
                                                                                   size / 1e9 / max(p50, 1e-9)))
            if a.json:
                print(json.dumps({"bench": "faults", "what": "load rate %s" % what, "threads": 0,
                                  "value": size / max(p50, 1e-9), "unit": "B/s", "bound": None, "fraction": None,
                                  "model": name, "stages": a.stages, "bytes": size}))


if __name__ == "__main__":
    main()
