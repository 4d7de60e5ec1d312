#!/usr/bin/python3
"""test_cluster.py: the coordinator and its stages, pipelined over MPI.

  - identical output: every token of every sequence equals tern-run's (greedy),
    for 1, 2, 3 and 4 stages and 1..16 concurrent sequences, through the
    offline batch mode; also with fewer slots than requests (sequences join and
    leave while others decode), with small prefill chunks (long prompts
    interleave with decoding), and with the layers in-process (--stages 0);
    stages on one box keep 1 micro-batch in flight (they share its cores),
    --in-flight 4 keeps 4 (the pipelining used across hosts); a stage without
    a binding (--no-bind) runs one kernel thread per CPU;
    also from a 2-stage plan directory, through its stages and in-process;
    also for an untied model (its own LM head), from the file and a plan;
    also with a quantized LM head (--lm-head q8/q4 on both sides), and from
    plans that store the q8 head (tern-partition --lm-head q8); all of it with the
    default f16 KV cache, and once more with --kv-type f32 on both sides (the stages
    log the type the coordinator's HELLO gave them); with a KV pool of 3 blocks
    (--kv-blocks) over 2 stages and in-process, requests waiting for blocks;
  - a malformed batch line is a one-line error naming the line, exit non-zero;
  - faults: a stage killed mid-generation, and a stage that hangs (SIGSTOP):
    the in-flight request fails with an error within 10 s of the fault and the
    coordinator exits non-zero; nothing hangs.

Usage: test_cluster.py BUILD_DIR
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ternlib import Client, Results, Server, load_pb2, make_model, run_tern_run  # noqa: E402

PROMPTS = ["the cat", "hello world", "a", "once upon a time there was", "the the the", "xyz", "tern serves",
           "what is it", "on the hill", "ab", "where the water", "in", "hot tea", "ouzo", "then", "stone"]
N_GEN = 8


def mpi_env():
    e = dict(os.environ)
    e.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
              "OMPI_MCA_mpi_yield_when_idle": "1"})
    return e


def run_batch(build, model, stages, prompts, work, extra=(), log=None, stdout=None, node_args=()):
    """The batch's rows in input order; log / stdout (lists) receive the
    job's stderr / the coordinator's stdout; node_args go to every tern-node."""
    inp = os.path.join(work, "in.jsonl")
    out = os.path.join(work, "out.jsonl")
    with open(inp, "w") as f:
        for i, p in enumerate(prompts):
            f.write(json.dumps({"id": str(i), "prompt": p, "max_tokens": N_GEN, "ignore_eos": True}) + "\n")
    coord = [os.path.join(build, "coordinator", "tern-coordinator"), "-m", model, "--stages", str(stages),
             "--batch", inp, "--out", out] + list(extra)
    cmd = ["mpirun", "--bind-to", "none", "--oversubscribe", "-n", "1"] + coord
    if stages:
        cmd += [":", "-n", str(stages), os.path.join(build, "node", "tern-node")] + list(node_args)
    r = subprocess.run(cmd, capture_output=True, text=True, env=mpi_env(), timeout=300)
    if r.returncode != 0:
        raise AssertionError("batch run failed (%d):\n%s" % (r.returncode, r.stderr[-3000:]))
    if log is not None:
        log.append(r.stderr)
    rows = [json.loads(line) for line in open(out)]
    assert [row["id"] for row in rows] == [str(i) for i in range(len(prompts))], rows
    if stdout is not None:
        stdout.append(r.stdout)
    return rows


def head_bytes(fmt, vocab=300, n_embd=128):
    """Bytes the LM head reads per token in a format (kernels/tern-float.h tern_qh_bytes; F16 as stored)."""
    if fmt == "file":
        return vocab * n_embd * 2
    quant = 512 if fmt == "q8" else 256
    return (vocab + 15) // 16 * (quant + 32) * ((n_embd + 31) // 32)


def main():
    build = os.path.abspath(sys.argv[1])
    pb = load_pb2(build)
    work = tempfile.mkdtemp(prefix="tern-cluster-")
    model = os.path.join(work, "m.gguf")
    make_model(model, layers=4, seed=5)
    res = Results()
    want = {p: run_tern_run(build, model, p, N_GEN) for p in PROMPTS}

    def identical(stages, n_seqs, extra=(), in_flight=None):
        """in_flight: the number of micro-batches the coordinator must say it
        keeps in the pipeline (every stage here shares this box's cores: 1,
        unless --in-flight says otherwise)."""
        def fn():
            log = []
            rows = run_batch(build, model, stages, PROMPTS[:n_seqs], work, extra, log)
            for p, row in zip(PROMPTS, rows):
                assert row["token_ids"] == want[p], (stages, p, row, want[p])
                assert row["finish_reason"] == "length" and row["completion_tokens"] == N_GEN, row
            if in_flight:
                line = "pipeline: %d micro-batch%s in flight at most" % (in_flight, "es" if in_flight > 1 else "")
                assert line in log[0], (line, log[0][-2000:])
        return fn

    for s in (1, 2, 3, 4):
        res.check("identical_%d_stages_16_seqs" % s, identical(s, 16, in_flight=1))
    # Several micro-batches in flight at once, as across hosts.
    res.check("identical_3_stages_16_seqs_in_flight_4", identical(3, 16, ["--in-flight", "4"], in_flight=4))
    res.check("identical_2_stages_1_seq", identical(2, 1))
    res.check("identical_2_stages_5_seqs_3_slots", identical(2, 5, ["--slots", "3"]))
    res.check("identical_3_stages_chunk_2", identical(3, 16, ["--chunk", "2", "--max-rows", "8"]))
    res.check("identical_in_process", identical(0, 16))

    # The KV cache type travels in HELLO: --kv-type f32 on the coordinator
    # gives every stage an f32 cache, and tern-run --kv-type f32's ids.
    def identical_kv_f32():
        log = []
        rows = run_batch(build, model, 2, PROMPTS[:4], work, ["--kv-type", "f32"], log)
        for p, row in zip(PROMPTS, rows):
            want32 = run_tern_run(build, model, p, N_GEN, ["--kv-type", "f32"])
            assert row["token_ids"] == want32, (p, row, want32)
        assert log[0].count(" f32 KV (") == 2, log[0][-2000:]
        log = []
        run_batch(build, model, 2, PROMPTS[:1], work, (), log)
        assert log[0].count(" f16 KV (") == 2, log[0][-2000:]
    res.check("identical_kv_f32_2_stages", identical_kv_f32)

    # A KV pool of 3 blocks (--kv-blocks travels in HELLO): 16 requests on 16
    # slots, each waiting for the blocks of its prompt + max_tokens, so at most
    # three run at once and slots are reused on other sequences' blocks; every
    # stage runs out of nothing mid-step and the ids are tern-run's.
    def identical_kv_blocks(stages):
        def fn():
            log = []
            rows = run_batch(build, model, stages, PROMPTS[:16], work, ["--kv-blocks", "3"], log)
            for p, row in zip(PROMPTS, rows):
                assert row["token_ids"] == want[p], (stages, p, row, want[p])
            if stages:
                assert log[0].count(" KV (3 blocks of 32 positions)") == stages, log[0][-2000:]
        return fn
    res.check("identical_kv_blocks_3_2_stages", identical_kv_blocks(2))
    res.check("identical_kv_blocks_3_in_process", identical_kv_blocks(0))
    # A stage that is not bound to a NUMA domain runs one kernel thread per
    # CPU it may use, as tern-run does (it used to run 1).
    def unbound_threads():
        log = []
        rows = run_batch(build, model, 1, PROMPTS[:2], work, log=log, node_args=["--no-bind"])
        for p, row in zip(PROMPTS, rows):
            assert row["token_ids"] == want[p], (p, row, want[p])
        n = len(os.sched_getaffinity(0))
        assert re.search(r"stage 1: layers .*, %d threads?, loaded" % n, log[0]), (n, log[0][-2000:])
    res.check("unbound_stage_threads", unbound_threads)

    # A plan directory (tern-partition, 2 stages): its stages load their
    # shards, and --stages 0 loads every layer from all of them in-process.
    plan = os.path.join(work, "plan")
    subprocess.run([os.path.join(build, "partition", "tern-partition"), model, "--stages", "2", "-o", plan],
                   check=True, stdout=subprocess.DEVNULL)

    def identical_plan(stages):
        def fn():
            rows = run_batch(build, plan, stages, PROMPTS[:4], work)
            for p, row in zip(PROMPTS, rows):
                assert row["token_ids"] == want[p], (stages, p, row, want[p])
        return fn
    res.check("identical_plan_2_stages", identical_plan(2))
    res.check("identical_plan_in_process", identical_plan(0))

    # An untied model (its own output.weight is the LM head; tern-run's
    # logits of it are checked against the numpy reference by
    # engine_vs_ref.py): the coordinator from the file and from a 2-stage
    # plan gives tern-run's ids, all with the head as stored (--lm-head
    # file; the plan then keeps the output matrix, role 13).
    untied = os.path.join(work, "untied.gguf")
    make_model(untied, layers=4, seed=6, untied=True)
    uplan = os.path.join(work, "plan-untied")
    subprocess.run([os.path.join(build, "partition", "tern-partition"), untied, "--stages", "2", "-o", uplan,
                    "--lm-head", "file"], check=True, stdout=subprocess.DEVNULL)
    want_u = {p: run_tern_run(build, untied, p, N_GEN, ["--lm-head", "file"]) for p in PROMPTS[:4]}

    def identical_untied(src, stages):
        def fn():
            rows = run_batch(build, src, stages, PROMPTS[:4], work, [] if src == uplan else ["--lm-head", "file"])
            for p, row in zip(PROMPTS, rows):
                assert row["token_ids"] == want_u[p], (src, stages, p, row, want_u[p])
        return fn
    res.check("identical_untied_file_2_stages", identical_untied(untied, 2))
    res.check("identical_untied_plan_2_stages", identical_untied(uplan, 2))
    res.check("identical_untied_plan_in_process", identical_untied(uplan, 0))

    # A quantized LM head (--lm-head q8 / q4) on the coordinator gives
    # tern-run's ids with the same head, through 2 stages and in-process.
    def identical_lm_head(fmt, stages):
        def fn():
            rows = run_batch(build, model, stages, PROMPTS[:4], work, ["--lm-head", fmt])
            for p, row in zip(PROMPTS, rows):
                want_q = run_tern_run(build, model, p, N_GEN, ["--lm-head", fmt])
                assert row["token_ids"] == want_q, (fmt, stages, p, row, want_q)
        return fn
    for fmt in ("q8", "q4"):
        res.check("identical_lm_head_%s_2_stages" % fmt, identical_lm_head(fmt, 2))
    res.check("identical_lm_head_q4_in_process", identical_lm_head("q4", 0))

    # A plan that stores the packed q8 head (tern-partition --lm-head q8):
    # the coordinator uses the shard's bytes as its default head (its
    # "decode reads" line names the head's bytes: on this small model q8 and
    # F16 agree on every greedy id, so the ids alone cannot tell) and gives
    # tern-run --lm-head q8's ids over 2 stages and in-process, for the tied
    # model and the untied one (whose plan then keeps no output matrix:
    # asking it for another head is a one-line error, exit non-zero); the
    # tied plan still quantizes q4 from token_embd when asked.
    def q8_plan(src, name):
        d = os.path.join(work, name)
        subprocess.run([os.path.join(build, "partition", "tern-partition"), src, "--stages", "2", "-o", d,
                        "--lm-head", "q8", "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        return d
    qplan, uqplan = q8_plan(model, "plan-q8"), q8_plan(untied, "plan-untied-q8")

    def identical_head_plan(src, plan_dir, stages, fmt, extra=()):
        def fn():
            out = []
            rows = run_batch(build, plan_dir, stages, PROMPTS[:4], work, extra, stdout=out)
            assert "+ LM head %d)" % head_bytes(fmt) in out[0], out[0][-2000:]
            for p, row in zip(PROMPTS, rows):
                want_q = run_tern_run(build, src, p, N_GEN, ["--lm-head", fmt])
                assert row["token_ids"] == want_q, (plan_dir, stages, p, row, want_q)
        return fn
    # tern-partition's default head is q8 (the plan above); --lm-head file stores F16
    fplan = os.path.join(work, "plan-file")
    subprocess.run([os.path.join(build, "partition", "tern-partition"), model, "--stages", "2", "-o", fplan,
                    "--lm-head", "file", "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    res.check("plan_default_head_q8", identical_head_plan(model, plan, 2, "q8"))
    res.check("identical_plan_f16_head_in_process", identical_head_plan(model, fplan, 0, "file"))
    res.check("identical_plan_q8_2_stages", identical_head_plan(model, qplan, 2, "q8"))
    res.check("identical_plan_q8_in_process", identical_head_plan(model, qplan, 0, "q8"))
    res.check("identical_plan_q8_asked_q4", identical_head_plan(model, qplan, 0, "q4", ["--lm-head", "q4"]))
    res.check("identical_untied_plan_q8_2_stages", identical_head_plan(untied, uqplan, 2, "q8"))

    def untied_q8_plan_refuses_file():
        inp = os.path.join(work, "one.jsonl")
        with open(inp, "w") as f:
            f.write('{"prompt": "a", "max_tokens": 2}\n')
        r = subprocess.run(["mpirun", "-n", "1", os.path.join(build, "coordinator", "tern-coordinator"), "-m",
                            uqplan, "--stages", "0", "--batch", inp, "--out", os.path.join(work, "o.jsonl"),
                            "--lm-head", "file"], capture_output=True, text=True, env=mpi_env(), timeout=120)
        assert r.returncode != 0, r
        assert "stores only the q8 LM head" in r.stderr, r.stderr
    res.check("untied_plan_q8_refuses_file", untied_q8_plan_refuses_file)

    def bad_batch():
        inp = os.path.join(work, "bad.jsonl")
        with open(inp, "w") as f:
            f.write('{"prompt": "a", "max_tokens": 2}\n{"prompt": \n')
        r = subprocess.run(["mpirun", "-n", "1", os.path.join(build, "coordinator", "tern-coordinator"), "-m",
                            model, "--stages", "0", "--batch", inp, "--out", os.path.join(work, "o.jsonl")],
                           capture_output=True, text=True, env=mpi_env(), timeout=120)
        assert r.returncode != 0, r
        assert "bad.jsonl:2" in r.stderr, r.stderr
    res.check("malformed_batch_line", bad_batch)

    # A hung stage is found by the stall timeout the fault cases pass, a dead
    # one sooner (mpirun's signal); the request must fail within that timeout
    # plus a margin for ending the stream and the job on a loaded 2-core box.
    stall_timeout_s = 5
    fail_margin_s = 5

    def fault(sig):
        def fn():
            srv = Server(build, model, 2, ["--stall-timeout", str(stall_timeout_s), "-c", "1024"])
            cl = Client(pb, srv.port)
            victim = None
            try:
                it = cl.generate(pb.GenerateRequest(prompt="the cat", max_tokens=900, ignore_eos=True),
                                 timeout=120)
                next(it)
                stages = srv.stage_pids()
                assert stages, "no tern-node processes found among the job's ranks"
                victim = stages[-1]
                t0 = time.time()
                os.kill(victim, sig)
                code, details = None, ""
                try:
                    for _ in it:
                        pass
                except grpc.RpcError as e:
                    code, details = e.code(), e.details() or ""
                t_fail = time.time() - t0
                assert code is not None and code != grpc.StatusCode.OK, "stream ended without an error"
                # The status names the stage, its rank and host, and what happened to it.
                rank = len(stages)
                what = "died" if sig == signal.SIGKILL else "is stopped"
                assert ("stage %d (rank %d on host " % (rank, rank)) in details and what in details, details
                bound = stall_timeout_s + fail_margin_s
                assert t_fail < bound, "took %.1f s to fail the request (bound: --stall-timeout %d s + %d s)" % (
                    t_fail, stall_timeout_s, fail_margin_s)
                srv.proc.wait(timeout=30)
                assert srv.proc.returncode != 0, "coordinator exited 0 after losing a stage"
                print("  %s: request failed with %s (%s) after %.2f s; job exited %d" %
                      (signal.Signals(sig).name, code, details, t_fail, srv.proc.returncode))
            finally:
                cl.close()
                if victim is not None:
                    try:
                        os.kill(victim, signal.SIGCONT)  # a stopped stage, so the job can end
                    except ProcessLookupError:
                        pass
                srv.stop()
        return fn
    res.check("fault_stage_killed", fault(signal.SIGKILL))
    res.check("fault_stage_hangs", fault(signal.SIGSTOP))
    return res.finish()


if __name__ == "__main__":
    sys.exit(main())
