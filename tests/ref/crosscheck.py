#!/usr/bin/python3
"""crosscheck.py: runs tern-run and the numpy reference on the same model and tokens and
compares every row's logits (issue 5, "Correctness against an independent implementation").

tern-run decodes greedily and dumps every row's logits; its greedy tokens are read back
from that dump (token k = argmax of row prompt_len-1+k), and the reference is fed the
prompt plus those tokens (teacher forcing), so a near-tie that flips one greedy choice
cannot make the two runs compare different sequences. Rows whose reference result depends
on an int8 rounding within --margin of a tie (in int8 steps, bitnet_ref.row_margins) are
reported and not checked (see compare.py); fewer than --min-checked checked rows fail.
Also checked: tern-run's greedy tokens equal the argmax of the reference's rows at the same
positions, except at near-tie rows.

  /usr/bin/python3 tests/ref/crosscheck.py --tern-run build/coordinator/tern-run -m MODEL.gguf \\
      [--layers L] [--prompt-len 32] [--gen 32] [--packing tl2] [--kernel auto] [-t 2] \\
      [--rtol 1e-3] [--margin 1e-5] [--first-only]
Exit status 0 when it passes, 1 when it does not, 2 when a run fails.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep the source tree clean of __pycache__
sys.path.insert(0, HERE)
import bitnet_ref as br  # noqa: E402
import compare  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description="tern-run vs the numpy reference")
    ap.add_argument("--tern-run", required=True)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1, help="seed of the random prompt")
    ap.add_argument("--packing", default=None)
    ap.add_argument("--kernel", default=None)
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=None, help="tern-run prefill chunk")
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--margin", type=float, default=1e-5, help="near-tie threshold in int8 steps")
    ap.add_argument("--first-only", action="store_true")
    ap.add_argument("--min-checked", type=int, default=1,
                    help="fail unless at least this many rows were free of near ties and checked")
    ap.add_argument("--margin-sites", default="all",
                    help="comma-separated sites whose ties count (bitnet_ref.row_margins), or 'all'")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    try:
        model = br.BitNetModel(a.model, a.layers, verbose=False)
    except br.ModelError as e:
        print("crosscheck: %s" % e, file=sys.stderr)
        return 2
    rng = np.random.default_rng(a.seed)
    prompt = [int(t) for t in rng.integers(0, model.n_vocab, a.prompt_len)]
    with tempfile.TemporaryDirectory(prefix="tern-xcheck-") as tmp:
        dump = os.path.join(tmp, "c.npy")
        cmd = [a.tern_run, "-m", a.model, "--tokens", ",".join(map(str, prompt)), "-n", str(a.gen), "--temp", "0",
               "--lm-head", "file", "--ignore-eos", "-q", "-t", str(a.threads), "--dump-logits", dump]
        for flag, val in (("--layers", a.layers), ("--packing", a.packing), ("--kernel", a.kernel),
                          ("-b", a.batch_size)):
            if val is not None:
                cmd += [flag, str(val)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0 or not os.path.exists(dump):
            print("crosscheck: tern-run failed (%d): %s" % (run.returncode, run.stderr.strip()[-500:]), file=sys.stderr)
            return 2
        got = np.load(dump)
    want_rows = a.prompt_len + max(a.gen - 1, 0)
    if got.shape != (want_rows, model.n_vocab):
        print("crosscheck: tern-run dumped %s, expected (%d, %d)" % (got.shape, want_rows, model.n_vocab),
              file=sys.stderr)
        return 1
    c_gen = [int(i) for i in np.argmax(got[a.prompt_len - 1:], axis=1)]
    fed = prompt + c_gen[:-1] if a.gen else prompt
    marg = []
    ref, _ = model.run(fed, 0, None, marg)
    sites = br.SITES if a.margin_sites == "all" else tuple(a.margin_sites.split(","))
    margins, where = br.row_margins(marg[0], sites)
    res = compare.compare(ref, got, a.rtol, a.first_only, margins, a.margin)
    ref_gen = [int(i) for i in np.argmax(ref[a.prompt_len - 1:], axis=1)]
    bad_tokens = [k for k in range(len(c_gen)) if c_gen[k] != ref_gen[k]
                  and margins[a.prompt_len - 1 + k] > a.margin]
    if a.first_only:
        bad_tokens = [k for k in bad_tokens if k == 0] if a.prompt_len == 1 else []
    res["greedy_token_mismatches"] = bad_tokens
    checked = res["rows"] - len(res["near_tie_rows"])
    res["passed"] = bool(res["passed"] and not bad_tokens and checked >= a.min_checked)
    res["min_margin"] = float(min(margins)) if margins else None
    res["min_margin_at"] = where[int(np.argmin(margins))] if margins else None
    if a.json:
        print(json.dumps(res))
    else:
        print("%s %s layers=%s packing=%s kernel=%s t=%d: %d rows (%d within tolerance), checked %d: max rel %.3g "
              "(row %d), argmax mismatches %s, greedy token mismatches %s, near-tie rows %s (max rel there %.3g), "
              "smallest tie margin %.3g at %s"
              % ("PASS" if res["passed"] else "FAIL", os.path.basename(a.model), a.layers, a.packing, a.kernel,
                 a.threads, res["rows"], res["rows_within_rtol"], res["rows"] - len(res["near_tie_rows"]),
                 res["max_rel"], res["worst_row"], res["argmax_mismatch_rows"] or "none",
                 bad_tokens or "none", res["near_tie_rows"] or "none", res["near_tie_max_rel"],
                 res["min_margin"], res["min_margin_at"]))
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
