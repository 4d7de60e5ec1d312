#!/usr/bin/python3
"""test_bad_stage.py: a stage that returns wrong frames takes the pipeline
down cleanly, never the coordinator's memory.

A real tern-coordinator under mpirun with tests/e2e/bad-stage.c as its one
stage (a real MPI rank that answers HELLO, then returns every activation frame
with one thing wrong: rows, sequence ids, positions, step, width,
kind). For each, a gRPC Generate gets UNAVAILABLE whose reason names the
mismatch, the coordinator prints it as one error line, the job exits non-zero,
and nothing crashed (no signal, no sanitizer report). The honest mode (echo)
shows the fake stage itself works: that generation completes.

Usage: test_bad_stage.py BUILD_DIR
"""

import os
import sys
import tempfile

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ternlib import Client, Results, Server, load_pb2, make_model  # noqa: E402

# mode -> what the coordinator's reason must say
MODES = {
    "rows": "sequence ids",
    "fewer": "sequence ids",
    "ids": "row 0 of micro-batch",
    "pos": "row 0 of micro-batch",
    "step": "returned micro-batch",
    "width": "width",
    "kind": "frame of kind",
}


def main():
    build = os.path.abspath(sys.argv[1])
    pb = load_pb2(build)
    work = tempfile.mkdtemp(prefix="tern-bad-stage-")
    model = os.path.join(work, "m.gguf")
    make_model(model, layers=2)
    bad = os.path.join(build, "tests", "bad-stage")
    res = Results()

    def run(mode):
        srv = Server(build, model, 1, ["--slots", "4", "-c", "128"], node=[bad, mode])
        cl = Client(pb, srv.port)
        try:
            try:
                ids, _, final = cl.gen(prompt="the cat sat", max_tokens=6, ignore_eos=True, timeout=60)
                code, details = grpc.StatusCode.OK, ""
            except grpc.RpcError as e:
                ids, final = None, None
                code, details = e.code(), e.details()
        finally:
            cl.close()
            rc = srv.stop()
        log = open(srv.log.name, errors="replace").read()
        return code, details, rc, log, ids, final

    def honest():
        code, details, rc, log, ids, final = run("echo")
        assert code == grpc.StatusCode.OK, (code, details, log[-3000:])
        assert len(ids) == 6 and final.finish_reason == pb.FINISH_REASON_LENGTH, (ids, final)
        assert rc == 0, (rc, log[-3000:])
    res.check("honest_fake_stage_serves", honest)

    for mode, reason in MODES.items():
        def lying(mode=mode, reason=reason):
            code, details, rc, log, _, _ = run(mode)
            assert code == grpc.StatusCode.UNAVAILABLE, (mode, code, details, log[-3000:])
            assert reason in details and "\n" not in details, (mode, details)
            lines = [ln for ln in log.splitlines() if ln.startswith("tern-coordinator: ") and reason in ln]
            assert lines, (mode, log[-3000:])
            assert rc != 0, (mode, rc)
            for bad_sign in ("AddressSanitizer", "runtime error", "Segmentation", "signal 11", "Aborted (core"):
                assert bad_sign not in log, (mode, bad_sign, log[-3000:])
        res.check("bad_stage_" + mode, lying)
    return res.finish()


if __name__ == "__main__":
    sys.exit(main())
