#!/usr/bin/python3
"""bench-serve.py: cluster and serving benchmarks of tern over real gRPC.

  tern-bench cluster  ->  bench-serve.py cluster MODEL [--stages 1,2,4] [--conc 1,2,4,8,16,32]
  tern-bench serve    ->  bench-serve.py serve MODEL [--stages N] [--clients N]

cluster: for each stage count, start the cluster (deploy/tern-up), then for
each concurrency C run C streaming clients that each generate --tokens tokens
(ignore_eos, greedy) and report the aggregate decode tokens/s, the mean
per-sequence time per token, and the speed-up over one sequence. The bound
printed beside it is the single-sequence memory bound: measured read bandwidth
/ bytes read per token (packed weights + LM head), times C for a batch (the
weights are read once per step for the whole batch), capped at the
compute-free ideal.

serve: one cluster, N concurrent clients with staggered starts; time to first
token and per-client decode tokens/s as p50/p90/p99.

Output: a table on stdout; with --json one JSON object per row (DESIGN.md
"Benchmark output": bench, what, threads, value, unit, bound, fraction, plus
stages and sequences); --plot FILE.png draws aggregate tokens/s vs concurrency
per stage count with gnuplot.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))


def start_cluster(build, model, stages, port, extra):
    env = dict(os.environ, TERN_UP_PIDFILE="/tmp/tern-bench-%d.pid" % port,
               TERN_UP_LOG="/tmp/tern-bench-%d.log" % port)
    cmd = [os.path.join(HERE, "tern-up"), "--build", build, "--stages", str(stages), "--daemon", model, "--",
           "--listen", "127.0.0.1:%d" % port] + extra
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError("cluster did not start:\n" + r.stdout + r.stderr)
    m = re.search(r"decode reads (\d+) bytes per token", open(env["TERN_UP_LOG"]).read())
    env["TERN_BYTES_PER_TOKEN"] = m.group(1) if m else "0"
    return env


def stop_cluster(env):
    subprocess.run([os.path.join(HERE, "tern-down")], env=env, capture_output=True)


def read_bw(build, threads):
    """Read bandwidth (GB/s) measured by tern-bench kernels, or None."""
    exe = os.path.join(build, "tests", "bench", "tern-bench")
    try:
        # The smallest kernels run: its read_bw rows are the bandwidth probe.
        out = subprocess.run([exe, "kernels", "--json", "--threads", str(threads), "--packing", "tl2",
                              "--shape", "64x64", "--ws-mib", "8", "--batches", "1", "--min-time", "0.05"],
                             capture_output=True, text=True, timeout=300).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("what") == "read_bw" and row.get("threads") == threads:
            return row["value"]
    return None


def one_stream(client, pb, prompt, n, out, i, t_start):
    t0 = time.time()
    first = None
    got = 0
    for m in client.generate(pb.GenerateRequest(prompt=prompt, max_tokens=n, ignore_eos=True), timeout=3600):
        if not m.done:
            got += 1
            if first is None:
                first = time.time()
    t1 = time.time()
    out[i] = {"ttft": (first or t1) - t0, "tokens": got, "decode_s": t1 - (first or t1), "start": t0 - t_start,
              "end": t1 - t_start}


def run_clients(client, pb, n_clients, n_tokens, stagger=0.0):
    out = [None] * n_clients
    ths = []
    t_start = time.time()
    for i in range(n_clients):
        th = threading.Thread(target=one_stream, args=(client, pb, "The quick brown fox %d" % i, n_tokens, out, i,
                                                        t_start))
        th.start()
        ths.append(th)
        if stagger:
            time.sleep(stagger)
    for th in ths:
        th.join()
    return out, time.time() - t_start


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return 0.0
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["cluster", "serve"])
    ap.add_argument("model")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--stages", default=None)
    ap.add_argument("--conc", default="1,2,4,8,16,32")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--port", type=int, default=50200)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--threads", type=int, default=0, help="kernel threads per stage (0: domain cores)")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    from ternlib import Client, load_pb2  # noqa: E402
    pb = load_pb2(build)
    bw = read_bw(build, os.cpu_count() or 1)
    rows = []

    def emit(row):
        rows.append(row)
        if a.json:
            print(json.dumps(row), flush=True)

    if bw:
        emit({"bench": a.mode, "what": "read_bw", "threads": os.cpu_count(), "value": round(bw, 2),
              "unit": "GB/s", "bound": None, "fraction": None})

    def bound_of(env):
        bpt = float(env.get("TERN_BYTES_PER_TOKEN", "0"))
        return bw * 1e9 / bpt if (bw and bpt) else None
    extra = ["--slots", str(max(32, a.clients)), "--queue", "256"]
    if a.threads:
        extra += ["-t", str(a.threads)]
    if a.mode == "cluster":
        stage_list = [int(x) for x in (a.stages or "1,2,4").split(",")]
        conc = [int(x) for x in a.conc.split(",")]
        if not a.json:
            print("%-7s %-5s %12s %14s %10s %12s" % ("stages", "seqs", "tok/s", "ms/token/seq", "speedup",
                                                     "bound tok/s"))
        for s in stage_list:
            env = start_cluster(build, a.model, s, a.port, extra)
            bound1 = bound_of(env)
            try:
                cl = Client(pb, a.port)
                run_clients(cl, pb, 1, 4)  # warm-up
                base = None
                for c in conc:
                    out, wall = run_clients(cl, pb, c, a.tokens)
                    toks = sum(o["tokens"] for o in out)
                    decode_wall = max(o["end"] for o in out) - min(o["start"] + o["ttft"] for o in out)
                    agg = toks / decode_wall if decode_wall > 0 else 0
                    lat = statistics.mean(o["decode_s"] / max(1, o["tokens"] - 1) for o in out) * 1e3
                    base = base or agg
                    bound = bound1 * c if bound1 else None
                    emit({"bench": "cluster", "what": "decode_aggregate", "threads": a.threads or None,
                          "stages": s, "sequences": c, "value": round(agg, 3), "unit": "tok/s",
                          "bound": round(bound, 3) if bound else None,
                          "fraction": round(agg / bound, 4) if bound else None,
                          "ms_per_token_per_seq": round(lat, 3), "speedup_vs_1": round(agg / base, 3)})
                    if not a.json:
                        print("%-7d %-5d %12.2f %14.2f %10.2f %12s" % (s, c, agg, lat, agg / base,
                                                                       "%.2f" % bound if bound else "-"))
                cl.close()
            finally:
                stop_cluster(env)
        if a.plot:
            data = tempfile.NamedTemporaryFile("w", suffix=".dat", delete=False)
            for s in stage_list:
                data.write("# stages %d\n" % s)
                for r in rows:
                    if r.get("stages") == s:
                        data.write("%d %f\n" % (r["sequences"], r["value"]))
                data.write("\n\n")
            data.close()
            plots = ", ".join("'%s' index %d with linespoints title '%d stage(s)'" % (data.name, i, s)
                              for i, s in enumerate(stage_list))
            script = ("set terminal png size 900,600; set output '%s'; set logscale x 2; set xlabel 'concurrent "
                      "sequences'; set ylabel 'aggregate decode tokens/s'; set grid; set key left top; plot %s"
                      % (a.plot, plots))
            subprocess.run(["gnuplot", "-e", script], check=True)
            print("plot: %s" % a.plot, file=sys.stderr)
    else:
        s = int(a.stages or 2)
        env = start_cluster(build, a.model, s, a.port, extra)
        try:
            cl = Client(pb, a.port)
            run_clients(cl, pb, 1, 4)
            out, wall = run_clients(cl, pb, a.clients, a.tokens, stagger=0.05)
            ttft = [o["ttft"] for o in out]
            rate = [(o["tokens"] - 1) / o["decode_s"] for o in out if o["decode_s"] > 0]
            for name, xs, unit in (("ttft", ttft, "s"), ("client_decode", rate, "tok/s")):
                for p in (50, 90, 99):
                    v = pct(xs, p)
                    emit({"bench": "serve", "what": "%s_p%d" % (name, p), "threads": a.threads or None,
                          "stages": s, "sequences": a.clients, "value": round(v, 4), "unit": unit,
                          "bound": None, "fraction": None})
                    if not a.json:
                        print("%-20s %10.4f %s" % ("%s p%d" % (name, p), v, unit))
            agg = sum(o["tokens"] for o in out) / wall
            emit({"bench": "serve", "what": "aggregate", "threads": a.threads or None, "stages": s,
                  "sequences": a.clients, "value": round(agg, 3), "unit": "tok/s", "bound": None, "fraction": None})
            if not a.json:
                print("%-20s %10.3f tok/s (%d clients x %d tokens in %.2f s)" % ("aggregate", agg, a.clients,
                                                                                  a.tokens, wall))
            cl.close()
        finally:
            stop_cluster(env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
