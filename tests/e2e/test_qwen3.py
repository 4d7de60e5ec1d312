#!/usr/bin/python3
"""test_qwen3.py: the Qwen3 architecture (issue 17: PrismML Ternary-Bonsai's graph, QK-norm)
end to end, on GGUFs an independent writer (tests/ref/make_qwen3.py) makes from one seed:
general.architecture "qwen3", attn_q_norm / attn_k_norm per layer, F16, F32 and I2_S
projections, tied and untied heads.

  - ref_detects_qk_norm: the numpy reference (tests/ref/bitnet_ref.py, which applies
    RMSNorm over each head of q and k before RoPE as modeling_qwen3.py does) without the
    q/k norms differs: the checks below can fail;
  - tern_run_vs_ref_<form>: tern-run's greedy ids and logits of every row against the
    reference, every packing and kernel ISA (tests/engine_vs_ref.py's check);
  - forms_bit_identical: every form gives tern-run the same logits bit for bit;
  - cluster_2_stages and plan_2_stages: a 2-stage pipeline (mpirun, tern-coordinator +
    tern-node; and a tern-partition plan) gives tern-run's tokens;
  - the Ternary-Bonsai weight format, ggml Q2_0 (an f16 scale per 64 weights, seeded 2^-1..2^1
    times 1 / weight_scale per group): ref_detects_group_scales (the reference with one scale
    per row differs), tern_run_vs_ref_q2_0 (every kernel ISA; --packing does not apply), and
    cluster_2_stages / plan_2_stages on it too (the plan's shards keep the blocks as stored);
  - synth_bonsai_8b_q2_0: tern-partition synth bonsai-8b (shrunk by --dims) writes Q2_0
    projections, and tern-run on it matches the reference;
  - qwen2_pre_runs: Qwen3's own pre-tokenizer name "qwen2" is accepted and a text prompt runs;
  - refused_head_dim: attention.key_length other than n_embd / n_head likewise.

Usage: test_qwen3.py BUILD_DIR
"""

import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "ref"))
sys.dont_write_bytecode = True
import numpy as np  # noqa: E402
import bitnet_ref  # noqa: E402
import engine_vs_ref  # noqa: E402
import gguf  # noqa: E402
from ternlib import Results, Skip, run_tern_run  # noqa: E402
from test_cluster import run_batch  # noqa: E402
from test_llama import dump_logits  # noqa: E402

PY = "/usr/bin/python3"
SHAPE = ["--n-embd", "256", "--n-head", "4", "--n-head-kv", "2", "--n-ff", "512", "--vocab", "300",
         "--layers", "2", "--seed", "11"]
PROMPTS = ["the cat", "hello world", "once upon a time", "a"]
N_GEN = 8


def make(path, args):
    subprocess.run([PY, os.path.join(HERE, "..", "ref", "make_qwen3.py"), "--gguf", path] + SHAPE + args,
                   check=True)
    return path


def main():
    build = os.path.abspath(sys.argv[1])
    tern_run = os.path.join(build, "coordinator", "tern-run")
    work = tempfile.mkdtemp(prefix="tern-qwen3-")
    forms = {t: make(os.path.join(work, "q-%s.gguf" % t), ["--outtype", t]) for t in ("f16", "f32", "i2_s")}
    forms["untied_f16"] = make(os.path.join(work, "q-untied.gguf"), ["--outtype", "f16", "--untied"])
    forms["q2_0"] = make(os.path.join(work, "q-q2_0.gguf"), ["--outtype", "q2_0"])
    res = Results()
    prompt = engine_vs_ref.PROMPT[:8]

    def ref_detects_qk_norm():
        m = bitnet_ref.BitNetModel(forms["f16"], verbose=False)
        a = m.run(prompt, 8)[0]
        m.qk_norm = False
        b = m.run(prompt, 8)[0]
        rel = np.abs(a - b).max() / np.abs(a).max()
        assert rel > 1e-2, "dropping the q/k norms changed the logits by only %.2e" % rel
    res.check("ref_detects_qk_norm", ref_detects_qk_norm)

    def ref_detects_group_scales():
        m = bitnet_ref.BitNetModel(forms["q2_0"], verbose=False)
        a = m.run(prompt, 8)[0]
        for L in m.layers:
            for name in bitnet_ref.LINEARS:
                w, d = getattr(L, name)
                assert d.ndim == 2 and len(np.unique(d)) > 1, "%s: one scale only" % name
                setattr(L, name, (w, np.repeat(d.mean(axis=1, keepdims=True), d.shape[1], axis=1)))
        b = m.run(prompt, 8)[0]
        rel = np.abs(a - b).max() / np.abs(a).max()
        assert rel > 1e-2, "one scale per row changed the logits by only %.2e" % rel
    res.check("ref_detects_group_scales", ref_detects_group_scales)

    for name, path in forms.items():
        def fn(name=name, path=path):
            # a Q2_0 model runs its own kernels (tern-gq.h) whatever --packing says: one packing
            pk = ("tl2",) if name == "q2_0" else ("tl2", "i2_s", "tl1")
            assert engine_vs_ref.check_model("qwen3_" + name, path, tern_run, work, None,
                                             name in ("f16", "q2_0"), packings=pk)
        res.check("tern_run_vs_ref_" + name, fn)

    def forms_identical():
        got = {n: dump_logits(build, forms[n], os.path.join(work, n + ".npy")) for n in ("f16", "f32", "i2_s")}
        for n, x in got.items():
            assert x.shape == got["f16"].shape and np.array_equal(x, got["f16"]), "%s differs from f16" % n
    res.check("forms_bit_identical", forms_identical)

    def synth_bonsai():
        # tern-partition synth's bonsai-8b preset (shrunk) writes the family's own GGUF: Q2_0
        # projections; the reference reads the file on its own and tern-run matches it
        path = os.path.join(work, "bonsai.gguf")
        subprocess.run([os.path.join(build, "partition", "tern-partition"), "synth", "bonsai-8b", "--dims",
                        "n_embd=256,n_head=4,n_head_kv=2,n_ff=512,n_vocab=300,n_ctx=512,bos=1,eos=2,eot=3",
                        "--layers", "2", "-o", path], check=True, stdout=subprocess.DEVNULL)
        g = gguf.GGUFReader(path)
        types = {t.gtype for n, t in g.tensors.items() if n.startswith("blk.") and n.endswith(
            tuple(x + ".weight" for x in bitnet_ref.LINEARS))}
        assert types == {gguf.Q2_0}, types
        assert engine_vs_ref.check_model("bonsai_synth", path, tern_run, work, None, False, packings=("tl2",))
    res.check("synth_bonsai_8b_q2_0", synth_bonsai)

    def cluster():
        if not shutil.which("mpirun"):
            raise Skip("no mpirun")
        for model in (forms["f16"], forms["untied_f16"], forms["q2_0"]):
            rows = run_batch(build, model, 2, PROMPTS, work)
            for p, row in zip(PROMPTS, rows):
                assert row["token_ids"] == run_tern_run(build, model, p, N_GEN), (model, p, row)
    res.check("cluster_2_stages", cluster)

    def plan():
        if not shutil.which("mpirun"):
            raise Skip("no mpirun")
        for form in ("i2_s", "q2_0"):
            d = os.path.join(work, "plan-" + form)
            subprocess.run([os.path.join(build, "partition", "tern-partition"), forms[form], "--stages", "2", "-o",
                            d], check=True, stdout=subprocess.DEVNULL)
            rows = run_batch(build, d, 2, PROMPTS, work)
            for p, row in zip(PROMPTS, rows):
                assert row["token_ids"] == run_tern_run(build, forms[form], p, N_GEN), (form, p, row)
    res.check("plan_2_stages", plan)

    def refused(path, needle):
        def fn():
            r = subprocess.run([tern_run, "-m", path, "--tokens", "1", "-n", "1", "-q"], capture_output=True,
                               text=True)
            lines = r.stderr.strip().splitlines()
            assert r.returncode != 0 and len(lines) == 1 and needle in lines[0], (r.returncode, r.stderr)
        return fn
    def qwen2_pre():
        # Qwen3's own pre-tokenizer name: accepted, and a text prompt with digits runs (the split
        # itself is test_pretok_qwen2's, against a Python reference)
        path = make(os.path.join(work, "pre.gguf"), ["--pre", "qwen2", "--outtype", "q2_0"])
        r = subprocess.run([tern_run, "-m", path, "-p", "in 1999 and 2024", "-n", "2", "--temp", "0"],
                           capture_output=True, text=True)
        assert r.returncode == 0 and "prompt" in r.stderr, (r.returncode, r.stderr)
    res.check("qwen2_pre_runs", qwen2_pre)

    def head_dim():
        # a Qwen3 GGUF whose heads are not n_embd / n_head wide (Qwen3-0.6B's 1024 / 16 with head_dim 128)
        src, dst = forms["f16"], os.path.join(work, "hd.gguf")
        g = gguf.GGUFReader(src)
        w = gguf.GGUFWriter(dst)
        for k, v in g.kv.items():
            w.add(k, gguf.Value(gguf.UINT32, 128) if k.endswith("attention.key_length") else v)
        for name, t in g.tensors.items():
            raw = bytes(g.raw(name))
            w.add_tensor(name, lambda raw=raw: [raw], t.gtype, ne=t.ne)
        w.write()
        refused(dst, "key_length")()
    res.check("refused_head_dim", head_dim)
    rc = res.finish()
    shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
