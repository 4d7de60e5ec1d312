#!/usr/bin/python3
"""check_bench_json.py: runs a tern-bench command that was given --json and
checks its stdout against DESIGN.md's "Benchmark output" convention: every line
one JSON object with the common keys, kernel rows with theirs, a read_bw row,
and the figures positive and consistent (fraction == value / bound). Run rows with
"depth" (tern-bench run --depth) carry "kv_type"; their decode rows count the KV bytes
of that depth in bytes_per_token, and deeper rows of one configuration read more.
Cluster rows (tern-bench cluster) carry both bounds, and bound is the lower one.

usage: check_bench_json.py [EMULATOR...] TERN_BENCH MODE ARGS...   (exit 0 when valid)
"""
import json
import math
import subprocess
import sys

COMMON = {"bench": str, "what": str, "threads": int, "value": (int, float), "unit": str}
NULLABLE = ("bound", "fraction")
KERNEL = {"packing": str, "isa": str, "op": str, "batch": int, "m": int, "k": int}


def fail(msg):
    print("check_bench_json: " + msg, file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) < 3:
        fail("usage: check_bench_json.py TERN_BENCH ARGS...")
    proc = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, timeout=600)
    if proc.returncode != 0:
        fail("%s exited with %d" % (" ".join(sys.argv[1:]), proc.returncode))
    lines = proc.stdout.decode().splitlines()
    if not lines:
        fail("no rows on stdout")
    seen = {"read_bw": 0, "gemv": 0, "gemm": 0, "head": 0}
    peaks = 0
    aggregates = 0
    kv_by_config = {}
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError as e:
            fail("line %d is not JSON (%s): %r" % (n, e, line[:120]))
        if not isinstance(row, dict):
            fail("line %d is not an object" % n)
        for key, typ in COMMON.items():
            if key not in row or not isinstance(row[key], typ) or isinstance(row[key], bool):
                fail("line %d: key %r missing or not %s: %r" % (n, key, typ, line[:200]))
        for key in NULLABLE:
            if key not in row or not (row[key] is None or isinstance(row[key], (int, float))):
                fail("line %d: key %r missing or not a number/null" % (n, key))
        if not (math.isfinite(row["value"]) and row["value"] > 0):
            fail("line %d: value %r is not a positive number" % (n, row["value"]))
        if row["threads"] < 1:
            fail("line %d: threads %r" % (n, row["threads"]))
        if row["bound"] is not None:
            if row["fraction"] is None or abs(row["fraction"] - row["value"] / row["bound"]) > 1e-4 * max(
                    1.0, row["fraction"]):
                fail("line %d: fraction %r is not value/bound" % (n, row["fraction"]))
        if "depth" in row:
            if not isinstance(row["depth"], int) or row["depth"] < 0 or row.get("kv_type") not in ("f32", "f16",
                                                                                                 "bf16"):
                fail("line %d: depth row without a depth >= 0 and a kv_type: %r" % (n, line[:200]))
            if row["what"] == "decode":
                kv = row.get("kv_bytes_per_token")
                if not isinstance(kv, int) or kv <= 0 or row["bytes_per_token"] < kv + row["head_bytes_per_token"]:
                    fail("line %d: decode row's bytes_per_token lacks its KV bytes: %r" % (n, line[:300]))
                key = (row["threads"], row["kv_type"], row["lm_head"])
                prev = kv_by_config.get(key)
                if prev is not None and not (row["depth"] > prev[0] and kv > prev[1]):
                    fail("line %d: deeper row does not read more KV bytes: %r" % (n, line[:300]))
                kv_by_config[key] = (row["depth"], kv)
        if row["bench"] == "kernels":
            what = row["what"]
            if what in seen:
                seen[what] += 1
            if what == "int8_peak":
                peaks += 1
                if row["unit"] != "GOPS" or not isinstance(row.get("int8_unit"), str):
                    fail("line %d: int8_peak row without GOPS and int8_unit: %r" % (n, line[:200]))
            elif what != "read_bw":
                for key, typ in KERNEL.items():
                    if key not in row or not isinstance(row[key], typ):
                        fail("line %d: kernel row lacks %r: %r" % (n, key, line[:200]))
                if row["op"] not in ("gemv", "gemm"):
                    fail("line %d: op %r" % (n, row["op"]))
                if row["bound"] is None:
                    fail("line %d: kernel row without a bandwidth bound" % n)
        elif row["bench"] == "cluster" and row["what"] == "decode_aggregate":
            aggregates += 1
            bounds = [row.get("bandwidth_bound"), row.get("compute_bound")]
            if any(not isinstance(b, (int, float)) or b <= 0 for b in bounds):
                fail("line %d: cluster row without both bounds: %r" % (n, line[:300]))
            kind = "bandwidth" if bounds[0] <= bounds[1] else "compute"
            if row["bound"] != min(bounds) or row.get("bound_kind") != kind:
                fail("line %d: bound %r / %r is not the lower of %r" % (n, row["bound"], row.get("bound_kind"),
                                                                         bounds))
        elif row["what"] == "int8_peak":
            peaks += 1
    if "--depth" in sys.argv and not kv_by_config:
        fail("--depth given but no decode row carries a depth")
    if "kernels" in sys.argv[2:]:
        for what, count in seen.items():
            if count == 0:
                fail("no %s row" % what)
    if "cluster" in sys.argv[2:] and (aggregates == 0 or peaks == 0):
        fail("a cluster run without decode_aggregate or int8_peak rows")
    print("check_bench_json: %d valid rows (%s, int8_peak %d)" %
          (len(lines), ", ".join("%s %d" % kv for kv in seen.items()), peaks))


if __name__ == "__main__":
    main()
