#!/usr/bin/python3
"""compare.py: compares two logits dumps (rows, n_vocab) float32 .npy, e.g. the reference's
--out against tern-run --dump-logits.

Metric per row: rel = max_v |got - ref| / max_v |ref| (the error relative to the row's
largest logit), plus whether the argmax agrees. Passes when every compared row has
rel <= --rtol and the same argmax (--first-only compares row 0 only, for deep random
models, which are chaotic: DESIGN.md, Numerics). A raw float32 file without the .npy
header is accepted with --vocab.

Near ties: with --ref-json (the reference's `--json --margins` output) and --margin M,
rows whose logits depend on an int8 rounding within M int8 steps of a tie
(bitnet_ref.tie_margin, row_margins) are reported as "near-tie" and left out of the check:
another correct implementation may round them the other way (DESIGN.md, Numerics).

  /usr/bin/python3 tests/ref/compare.py REF.npy GOT.npy [--rtol 1e-3] [--first-only]
      [--ref-json REF.json --margin 1e-5] [--json]
Exit status 0 when it passes, 1 when it does not, 2 on bad input.
"""

import argparse
import json
import sys

import numpy as np


def load(path, vocab):
    if path.endswith(".npy"):
        a = np.load(path)
    else:
        if not vocab:
            raise ValueError("%s: a raw file needs --vocab" % path)
        a = np.fromfile(path, np.float32).reshape(-1, vocab)
    if a.ndim != 2:
        raise ValueError("%s: expected (rows, n_vocab), got shape %s" % (path, a.shape))
    return a.astype(np.float32)


def compare(ref, got, rtol=1e-3, first_only=False, margins=None, margin=0.0):
    """Returns a dict: rows compared, worst rel and its row, argmax mismatches, near-tie rows
    skipped (margins: per-row tie margins of the reference, or None), passed."""
    if ref.shape[1] != got.shape[1]:
        raise ValueError("vocabulary %d vs %d" % (ref.shape[1], got.shape[1]))
    n = 1 if first_only else min(len(ref), len(got))
    r, g = ref[:n].astype(np.float64), got[:n].astype(np.float64)
    rel = np.abs(g - r).max(axis=1) / np.maximum(np.abs(r).max(axis=1), 1e-30)
    am = np.argmax(ref[:n], axis=1) != np.argmax(got[:n], axis=1)
    skip = np.zeros(n, bool)
    if margins is not None and margin > 0:
        skip = np.asarray(margins[:n], np.float64) <= margin
    finite = bool(np.all(np.isfinite(got[:n])))
    relc = np.where(skip, 0.0, rel)
    worst = int(np.argmax(relc)) if n else 0
    return {"rows": n, "rows_ref": len(ref), "rows_got": len(got), "max_rel": float(relc.max()) if n else 0.0,
            "worst_row": worst, "argmax_mismatch_rows": [int(i) for i in np.nonzero(am & ~skip)[0]],
            "near_tie_rows": [int(i) for i in np.nonzero(skip)[0]],
            "rows_within_rtol": int(((rel <= rtol) & ~am).sum()),
            "near_tie_max_rel": float(rel[skip].max()) if skip.any() else 0.0,
            "finite": finite, "passed": bool(n and finite and relc.max() <= rtol and not (am & ~skip).any()
                                              and (first_only or len(ref) == len(got)))}


def main(argv=None):
    ap = argparse.ArgumentParser(description="Compare two logits dumps.")
    ap.add_argument("ref")
    ap.add_argument("got")
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--first-only", action="store_true")
    ap.add_argument("--vocab", type=int, default=0, help="row length of raw (non-.npy) files")
    ap.add_argument("--ref-json", help="the reference's --json --margins output")
    ap.add_argument("--margin", type=float, default=0.0,
                    help="skip rows whose tie margin is at most this (int8 steps; needs --ref-json)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    try:
        margins = None
        if a.ref_json:
            with open(a.ref_json) as f:
                margins = json.load(f).get("tie_margin")
            if margins is None:
                raise ValueError("%s has no tie_margin (run bitnet_ref.py with --json --margins)" % a.ref_json)
        res = compare(load(a.ref, a.vocab), load(a.got, a.vocab), a.rtol, a.first_only, margins, a.margin)
    except (ValueError, OSError) as e:
        print("compare: %s" % e, file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(res))
    else:
        print("%s: %d rows (ref %d, got %d; %d within tolerance with the same argmax), max rel %.3g at row %d "
              "(tolerance %g), argmax mismatches at %s%s"
              % ("PASS" if res["passed"] else "FAIL", res["rows"], res["rows_ref"], res["rows_got"],
                 res["rows_within_rtol"], res["max_rel"],
                 res["worst_row"], a.rtol, res["argmax_mismatch_rows"] or "none",
                 "; near-tie rows skipped: %s (max rel there %.3g)" % (res["near_tie_rows"], res["near_tie_max_rel"])
                 if res["near_tie_rows"] else ""))
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
