#!/usr/bin/python3
"""bench-serve.py: cluster and serving benchmarks of tern over real gRPC.

  tern-bench cluster  ->  bench-serve.py cluster MODEL [--stages 1,2,4] [--conc 1,2,4,8,16,32]
  tern-bench serve    ->  bench-serve.py serve MODEL [--stages N] [--clients 1,4,16,64,256]

cluster: for each stage count, start the cluster (deploy/tern-up), then for
each concurrency C run C streaming clients that each generate --tokens tokens
(ignore_eos, greedy) and report the aggregate decode tokens/s, the mean
per-sequence time per token, and the speed-up over one sequence. The bound
printed beside it is the lower of two, both measured in the same run: the
memory bound, read bandwidth / bytes read per token (packed weights + LM
head) times C (the weights are read once per step for the whole batch), and
the compute bound, the int8 dot-product peak of the box's best unit (all
cores) / 2 ops per multiply-add per token (one per ternary weight and one per
head weight, as the coordinator prints). The "c"/"b" after it says which.
--coord-args passes tern-coordinator options (e.g. '--lm-head q8').

serve: one tern-server (it launches the job), and for each client count in
--clients (1,4,16,64,256) the same streaming load three ways, side by side on
that one job: gRPC straight to the coordinator (its private Unix socket), gRPC
through tern-server's relay (--grpc) and the OpenAI HTTP API with SSE
(--http). Per path: time to first token and inter-token latency p50/p90/p99,
aggregate tokens/s; and what the front end adds: TTFT p50 minus the direct
path's (ms) and aggregate tokens/s as a fraction of the direct path's. Each
client count runs --rounds rounds (at least 24 streams per path in all), the
three paths in a rotating order, samples pooled. The clients are Python
threads on the same box, so a Python-side limit shows in every path alike.
--server-args passes tern-server options (e.g. '--nice 0' for the before
figure of the priority split).

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
    cmd = [os.path.join(HERE, "tern-up"), "--no-server", "--build", build, "--stages", str(stages), "--daemon", model, "--",
           "--listen", "127.0.0.1:%d" % port] + extra
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError("cluster did not start:\n" + r.stdout + r.stderr)
    log = open(env["TERN_UP_LOG"]).read()
    m = re.search(r"decode reads (\d+) bytes per token", log)
    env["TERN_BYTES_PER_TOKEN"] = m.group(1) if m else "0"
    m = re.search(r"decode does (\d+) multiply-adds per token", log)
    env["TERN_MACS_PER_TOKEN"] = m.group(1) if m else "0"
    return env


def stop_cluster(env):
    subprocess.run([os.path.join(HERE, "tern-down")], env=env, capture_output=True)


def read_bounds(build, threads):
    """(read bandwidth GB/s, int8 peak GOPS, its unit) measured by tern-bench
    kernels with `threads` threads; None for what it did not give."""
    exe = os.path.join(build, "tests", "bench", "tern-bench")
    try:
        # The smallest kernels run: its read_bw rows are the bandwidth probe.
        out = subprocess.run([exe, "kernels", "--json", "--threads", str(threads), "--packing", "tl2",
                              "--shape", "64x64", "--ws-mib", "8", "--batches", "1", "--min-time", "0.05"],
                             capture_output=True, text=True, timeout=300).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None, None, None
    bw = peak = unit = None
    for line in out.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("threads") != threads:
            continue
        if row.get("what") == "read_bw":
            bw = row["value"]
        elif row.get("what") == "int8_peak" and row.get("value") and (peak is None or row["value"] > peak):
            peak, unit = row["value"], row.get("int8_unit")
    return bw, peak, unit


def cpu_model():
    """The CPU's name as /proc/cpuinfo gives it (for plot titles)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def one_stream(client, pb, prompt, n, out, i, t_start):
    t0 = time.time()
    first = None
    got = 0
    gaps = []
    last = None
    for m in client.generate(pb.GenerateRequest(prompt=prompt, max_tokens=n, ignore_eos=True), timeout=3600):
        if not m.done:
            now = time.time()
            got += 1
            if first is None:
                first = now
            else:
                gaps.append(now - last)
            last = now
    t1 = time.time()
    out[i] = {"ttft": (first or t1) - t0, "tokens": got, "decode_s": t1 - (first or t1), "start": t0 - t_start,
              "end": t1 - t_start, "gaps": gaps}


def one_http_stream(port, prompt, n, out, i, t_start):
    """The same request as one_stream, as an OpenAI completions SSE stream
    (a chunk per token with text; tokens counted from the usage chunk)."""
    import http.client
    t0 = time.time()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    c.request("POST", "/v1/completions", json.dumps({"prompt": prompt, "max_tokens": n, "ignore_eos": True,
                                                      "temperature": 0, "stream": True,
                                                      "stream_options": {"include_usage": True}}),
              {"Content-Type": "application/json"})
    r = c.getresponse()
    first = last = None
    gaps = []
    got = 0
    for line in r:
        if not line.startswith(b"data: {"):
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            got = ev["usage"]["completion_tokens"]
        if ev.get("choices") and ev["choices"][0].get("text"):
            now = time.time()
            if first is None:
                first = now
            else:
                gaps.append(now - last)
            last = now
    c.close()
    t1 = time.time()
    out[i] = {"ttft": (first or t1) - t0, "tokens": got, "decode_s": t1 - (first or t1), "start": t0 - t_start,
              "end": t1 - t_start, "gaps": gaps}


def run_clients(client, pb, n_clients, n_tokens, stagger=0.0, http_port=None):
    out = [None] * n_clients
    ths = []
    t_start = time.time()
    for i in range(n_clients):
        prompt = "The quick brown fox %d" % i
        if http_port:
            th = threading.Thread(target=one_http_stream, args=(http_port, prompt, n_tokens, out, i, t_start))
        else:
            th = threading.Thread(target=one_stream, args=(client, pb, prompt, n_tokens, out, i, t_start))
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


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far (its ended threads included)."""
    from ternlib import proc_stat  # noqa: E402
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(build, model, stages, extra, server_args=None):
    """tern-server on free ports; returns (process, HTTP port, relay port, its log file)."""
    from ternlib import free_port, wait_port  # noqa: E402
    http_port, grpc_port = free_port(), free_port()
    log = tempfile.NamedTemporaryFile(prefix="tern-bench-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([os.path.join(build, "coordinator", "tern-server"), "-m", model, "--stages", str(stages),
                             "--http", "127.0.0.1:%d" % http_port, "--grpc", "127.0.0.1:%d" % grpc_port]
                            + list(server_args or []) + ["--"] + extra,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    if wait_port(proc, r"serving tern\.v1\.Tern gRPC on .* \(port (\d+)\)", 600) is None:
        proc.kill()
        raise RuntimeError("tern-server did not start: " + open(log.name).read()[-3000:])
    return proc, http_port, grpc_port, log.name


def serve_bench(a, build, pb, Client, clients, extra, emit):
    import signal
    s = int(a.stages if a.stages is not None else 1)
    proc, http_port, grpc_port, log = start_server(build, a.model, s, extra, list(a.server_args.split()))
    try:
        # The coordinator's own address: the --listen of the launch line
        # tern-server logs.
        m = re.search(r"--listen (\S+)", open(log).read())
        direct = m.group(1)
        paths = [("direct", Client(pb, 0, target=direct), None), ("relay", Client(pb, grpc_port), None),
                 ("http", None, http_port)]
        for _, cl, hp in paths:
            run_clients(cl, pb, 2, 4, http_port=hp)  # warm-up
        if not a.json:
            print("%-7s %-6s %9s %9s %9s %9s %9s %9s %10s %9s %8s %10s" % (
                "path", "clients", "ttft p50", "p90", "p99", "itl p50", "p90", "p99", "tok/s", "+ttft ms",
                "tok/s %", "srv us/tok"))
        for n in clients:
            # Rounds in a rotating order, so no path always runs first (or
            # on a warmer box); every round's samples are pooled.
            rounds = max(a.rounds, -(-24 // n))
            got = {name: {"ttft": [], "itl": [], "tokens": 0, "wall": 0.0, "cpu": 0.0} for name, _, _ in paths}
            for r in range(rounds):
                for name, cl, hp in paths[r % len(paths):] + paths[:r % len(paths)]:
                    c0 = cpu_seconds(proc.pid)
                    out, wall = run_clients(cl, pb, n, a.tokens, http_port=hp)
                    g = got[name]
                    g["cpu"] += cpu_seconds(proc.pid) - c0
                    g["ttft"] += [o["ttft"] for o in out]
                    g["itl"] += [x for o in out for x in o["gaps"]]
                    g["tokens"] += sum(o["tokens"] for o in out)
                    g["wall"] += wall
            base = None
            for name, _, _ in paths:
                g = got[name]
                ttft, itl = g["ttft"], g["itl"]
                agg = g["tokens"] / g["wall"]
                row = {"bench": "serve", "what": name, "threads": a.threads or os.cpu_count(), "stages": s,
                       "sequences": n, "rounds": rounds, "value": round(agg, 3), "unit": "tok/s", "bound": None,
                       "fraction": None}
                for p in (50, 90, 99):
                    row["ttft_p%d_ms" % p] = round(pct(ttft, p) * 1e3, 3)
                    row["itl_p%d_ms" % p] = round(pct(itl, p) * 1e3, 3)
                if base is None:
                    base = row
                row["ttft_added_ms"] = round(row["ttft_p50_ms"] - base["ttft_p50_ms"], 3)
                row["vs_direct"] = round(agg / base["value"], 4) if base["value"] else None
                # What tern-server itself spent per token streamed (on the
                # direct path: its idle cost, Health checks).
                row["server_us_per_token"] = round(g["cpu"] / max(1, g["tokens"]) * 1e6, 2)
                emit(row)
                if not a.json:
                    print("%-7s %-6d %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %10.1f %9.2f %7.1f%% %10.1f" % (
                        name, n, row["ttft_p50_ms"], row["ttft_p90_ms"], row["ttft_p99_ms"], row["itl_p50_ms"],
                        row["itl_p90_ms"], row["itl_p99_ms"], agg, row["ttft_added_ms"],
                        100 * (row["vs_direct"] or 0), row["server_us_per_token"]), flush=True)
        for _, cl, _ in paths:
            if cl:
                cl.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["cluster", "serve"])
    ap.add_argument("model")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--stages", default=None)
    ap.add_argument("--conc", default="1,2,4,8,16,32")
    ap.add_argument("--clients", default="1,4,16,64,256")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3,
                    help="serve: rounds per client count (at least 24 streams per path in all)")
    ap.add_argument("--server-args", default="", help="serve: more tern-server options, e.g. '--nice 0'")
    ap.add_argument("--coord-args", default="", help="more tern-coordinator options, e.g. '--lm-head q8'")
    ap.add_argument("--port", type=int, default=0, help="cluster: the coordinator's gRPC port (default: a free one)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--threads", type=int, default=0, help="kernel threads per stage (0: domain cores)")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    from ternlib import Client, load_pb2  # noqa: E402
    pb = load_pb2(build)
    bw, peak, peak_unit = read_bounds(build, os.cpu_count() or 1)
    rows = []

    def emit(row):
        rows.append(row)
        if a.json:
            print(json.dumps(row), flush=True)

    if bw:
        emit({"bench": a.mode, "what": "read_bw", "threads": os.cpu_count(), "value": round(bw, 2),
              "unit": "GB/s", "bound": None, "fraction": None})
    if peak:
        emit({"bench": a.mode, "what": "int8_peak", "threads": os.cpu_count(), "value": round(peak, 1),
              "unit": "GOPS", "bound": None, "fraction": None, "int8_unit": peak_unit})

    def bound_of(env):
        bpt = float(env.get("TERN_BYTES_PER_TOKEN", "0"))
        return bw * 1e9 / bpt if (bw and bpt) else None

    def compute_bound_of(env):
        macs = float(env.get("TERN_MACS_PER_TOKEN", "0"))
        return peak * 1e9 / (2 * macs) if (peak and macs) else None
    clients = [int(x) for x in a.clients.split(",")]
    extra = ["--slots", str(max(32, max(clients) if a.mode == "serve" else 0)), "--queue", "1024"]
    extra += a.coord_args.split()
    if a.threads:
        extra += ["-t", str(a.threads)]
    if a.mode == "cluster":
        stage_list = [int(x) for x in (a.stages or "1,2,4").split(",")]
        conc = [int(x) for x in a.conc.split(",")]
        if not a.json:
            print("%-7s %-5s %12s %14s %10s %12s %6s" % ("stages", "seqs", "tok/s", "ms/token/seq", "speedup",
                                                         "bound tok/s", "frac"))
        from ternlib import free_port  # noqa: E402
        for s in stage_list:
            # a fixed port collides with another run of the same benchmark on the box
            port = a.port or free_port()
            env = start_cluster(build, a.model, s, port, extra)
            bound1 = bound_of(env)
            cbound = compute_bound_of(env)
            try:
                cl = Client(pb, port)
                run_clients(cl, pb, 1, 4)  # warm-up
                base = None
                for c in conc:
                    out, wall = run_clients(cl, pb, c, a.tokens)
                    toks = sum(o["tokens"] for o in out)
                    decode_wall = max(o["end"] for o in out) - min(o["start"] + o["ttft"] for o in out)
                    agg = toks / decode_wall if decode_wall > 0 else 0
                    lat = statistics.mean(o["decode_s"] / max(1, o["tokens"] - 1) for o in out) * 1e3
                    base = base or agg
                    bwb = bound1 * c if bound1 else None
                    bound = min(x for x in (bwb, cbound) if x) if (bwb or cbound) else None
                    kind = None if bound is None else ("bandwidth" if bwb and (not cbound or bwb <= cbound) else "compute")
                    emit({"bench": "cluster", "what": "decode_aggregate", "threads": a.threads or os.cpu_count(),
                          "stages": s, "sequences": c, "value": round(agg, 3), "unit": "tok/s",
                          "bound": round(bound, 3) if bound else None,
                          "fraction": round(agg / bound, 4) if bound else None, "bound_kind": kind,
                          "bandwidth_bound": round(bwb, 3) if bwb else None,
                          "compute_bound": round(cbound, 3) if cbound else None,
                          "ms_per_token_per_seq": round(lat, 3), "speedup_vs_1": round(agg / base, 3)})
                    if not a.json:
                        print("%-7d %-5d %12.2f %14.2f %10.2f %12s %6s" % (
                            s, c, agg, lat, agg / base, "%.2f %s" % (bound, kind[0]) if bound else "-",
                            "%.0f%%" % (100 * agg / bound) if bound else "-"))
                cl.close()
            finally:
                stop_cluster(env)
        if a.plot:
            data = tempfile.NamedTemporaryFile("w", suffix=".dat", delete=False)
            for s in stage_list:
                data.write("# stages %d\n" % s)
                for r in rows:
                    if r.get("stages") == s and r.get("what") == "decode_aggregate":
                        data.write("%d %f %f\n" % (r["sequences"], r["value"], r["bound"] or 0))
                data.write("\n\n")
            data.close()
            plots = ", ".join("'%s' index %d using 1:2 with linespoints title '%d stage(s)'" % (data.name, i, s)
                              for i, s in enumerate(stage_list))
            # The bound depends on the model and the box, not the stage count.
            plots += ", '%s' index 0 using 1:3 with lines dashtype 2 title 'bound: min(bandwidth x sequences, " \
                     "int8 peak)'" % data.name
            title = "%s, %s, %d CPUs" % (os.path.basename(a.model), cpu_model(), os.cpu_count() or 1)
            script = ("set terminal png size 900,600; set output '%s'; set title '%s' noenhanced; set logscale x 2; "
                      "set xlabel 'concurrent sequences'; set ylabel 'aggregate decode tokens/s'; set grid; "
                      "set key left top; plot %s" % (a.plot, title.replace("'", ""), plots))
            subprocess.run(["gnuplot", "-e", script], check=True)
            print("plot: %s" % a.plot, file=sys.stderr)
    else:
        serve_bench(a, build, pb, Client, clients, extra, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
