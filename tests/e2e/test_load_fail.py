#!/usr/bin/env python3
"""test_load_fail.py BUILD_DIR: a coordinator that cannot load its model ends
the whole MPI job at once with its one-line error and a non-zero exit.

Each case starts `mpirun tern-coordinator -m BAD --stages 2 : -n 2 tern-node`
and needs the job to end within a bound far below the stages' 120 s HELLO
wait (which is how long such a job used to hang): a missing model file, a
damaged (truncated) model file, a plan with a damaged coord.shard, a plan
whose plan.pb is garbage, a plan made from a model without a tokenizer, and
a plan storing a q8 LM head whose manifest names q4 (the shard's tensor has
the wrong size for it) or an unknown format.
The stages must end cleanly on the coordinator's SHUTDOWN (no MPI_Abort)."""

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ternlib import Results  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
BOUND_S = 30  # a hang is 120 s; a prompt exit takes about 2 s here


def run_job(build, model):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_mpi_yield_when_idle="1")
    cmd = ["mpirun", "--bind-to", "none", "--oversubscribe", "-n", "1",
           os.path.join(build, "coordinator", "tern-coordinator"), "-m", model, "--listen", "127.0.0.1:0",
           "--stages", "2", ":", "-n", "2", os.path.join(build, "node", "tern-node")]
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                         env=env, start_new_session=True)
    try:
        out, err = p.communicate(timeout=BOUND_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        p.communicate()
        raise AssertionError("the job was still running after %d s" % BOUND_S)
    return p.returncode, out + err, time.time() - t0


def expect_prompt_failure(build, model, what, expect=None):
    rc, text, dt = run_job(build, model)
    print("    %s: exit %d after %.1f s" % (what, rc, dt), flush=True)
    assert rc != 0, "exit 0 for %s:\n%s" % (what, text[-2000:])
    lines = [ln for ln in text.splitlines() if ln.startswith("tern-coordinator: ")]
    assert lines, "no one-line error from the coordinator:\n" + text[-2000:]
    print("    " + lines[0], flush=True)
    assert expect is None or expect in lines[0], "expected %r in the error line" % expect
    assert "MPI_ABORT" not in text and "tern-node" not in text, "stages did not end cleanly:\n" + text[-2000:]


def varint(buf, i):
    v = shift = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return v, i


def fields(buf, i, end):
    """(field number, wire type, value start, value end) of each field of a protobuf message."""
    while i < end:
        tag, i = varint(buf, i)
        wire = tag & 7
        if wire == 0:
            _, j = varint(buf, i)
        elif wire == 1:
            j = i + 8
        elif wire == 5:
            j = i + 4
        elif wire == 2:
            n, i = varint(buf, i)
            j = i + n
        else:
            raise AssertionError("wire type %d in plan.pb" % wire)
        yield tag >> 3, wire, i, j
        i = j


def set_lm_head(manifest, value):
    """Rewrites plan.proto's Plan.coordinator (10).lm_head (11), a one-byte varint, in place."""
    buf = bytearray(open(manifest, "rb").read())
    for f, wire, a, b in fields(buf, 0, len(buf)):
        if f == 10 and wire == 2:
            for g, w2, c, d in fields(buf, a, b):
                if g == 11 and w2 == 0:
                    assert d == c + 1 and value < 0x80, (c, d, value)
                    buf[c] = value
                    open(manifest, "wb").write(buf)
                    return
    raise AssertionError("%s: no Coordinator.lm_head" % manifest)


def main():
    build = os.path.abspath(sys.argv[1])
    res = Results()
    work = tempfile.mkdtemp(prefix="tern-loadfail-")
    kjv = os.path.join(ROOT, "deploy", "models", "tern-kjv.gguf")
    part = os.path.join(build, "partition", "tern-partition")
    plan = os.path.join(work, "plan")
    subprocess.run([part, kjv, "--stages", "2", "-o", plan, "--no-progress"], check=True, capture_output=True)

    def missing():
        expect_prompt_failure(build, os.path.join(work, "no-such-model.gguf"), "missing model file")
    res.check("missing_model_file", missing)

    def truncated():
        bad = os.path.join(work, "truncated.gguf")
        with open(kjv, "rb") as f, open(bad, "wb") as g:
            g.write(f.read(4096))
        expect_prompt_failure(build, bad, "truncated model file")
    res.check("damaged_model_file", truncated)

    def bad_coord_shard():
        d = os.path.join(work, "plan-bad-shard")
        shutil.copytree(plan, d)
        p = os.path.join(d, "coord.shard")
        with open(p, "r+b") as f:
            f.seek(os.path.getsize(p) // 2)
            b = f.read(16)
            f.seek(os.path.getsize(p) // 2)
            f.write(bytes(x ^ 0x5A for x in b))
        expect_prompt_failure(build, d, "damaged coord.shard")
    res.check("damaged_coord_shard", bad_coord_shard)

    def bad_manifest():
        d = os.path.join(work, "plan-bad-manifest")
        shutil.copytree(plan, d)
        with open(os.path.join(d, "plan.pb"), "wb") as f:
            f.write(b"\x0a\xff\xff\xff\xff\x0fgarbage")
        expect_prompt_failure(build, d, "garbage plan.pb")
    res.check("bad_plan_manifest", bad_manifest)

    def no_tokenizer():
        m = os.path.join(work, "notok.gguf")
        subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tests", "ref", "make_model.py"), "--out", m,
                        "--n-embd", "64", "--n-head", "2", "--n-head-kv", "1", "--n-ff", "128", "--vocab", "64",
                        "--layers", "2", "--seed", "3", "--no-tokenizer"], check=True, capture_output=True)
        d = os.path.join(work, "plan-notok")
        r = subprocess.run([part, m, "--stages", "2", "-o", d, "--no-progress"], capture_output=True, text=True)
        if r.returncode != 0:
            # The planner refusing such a model is as good: the job never starts.
            assert "tokenizer" in (r.stdout + r.stderr), r.stdout + r.stderr
            return
        expect_prompt_failure(build, d, "plan without a tokenizer")
    res.check("plan_without_tokenizer", no_tokenizer)

    qplan = os.path.join(work, "plan-q8")
    subprocess.run([part, kjv, "--stages", "2", "-o", qplan, "--no-progress", "--lm-head", "q8"], check=True,
                   capture_output=True)

    def bad_head(value, expect):
        def fn():
            d = os.path.join(work, "plan-head-%d" % value)
            shutil.copytree(qplan, d)
            set_lm_head(os.path.join(d, "plan.pb"), value)
            expect_prompt_failure(build, d, "plan with LM head format %d" % value, expect)
        return fn
    res.check("plan_head_wrong_size", bad_head(2, "coord.shard: q4 LM head of"))
    res.check("plan_head_unknown_format", bad_head(9, "unknown LM head format 9"))

    shutil.rmtree(work, ignore_errors=True)
    return res.finish()


if __name__ == "__main__":
    sys.exit(main())
