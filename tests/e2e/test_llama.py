#!/usr/bin/python3
"""test_llama.py: the Llama-style ternary families (issue 17) end to end, on files an
independent writer (tests/ref/make_llama.py) makes in their published forms from one seed:
the bitnet.cpp GGUF (general.architecture "llama", q/k permuted) as I2_S, F16 and F32, the
same with Falcon3's pre-tokenizer name, and the Hugging Face LlamaForCausalLM checkpoint
(packed uint8 + weight_scale, BitLinear's divide).

  - ref_gguf_equals_ref_hf: the numpy reference (tests/ref/bitnet_ref.py) reads the GGUF its
    own way (permuted rows, interleaved RoPE) and the checkpoint another (HF rows, NEOX RoPE,
    divide); the two agree (a sanity check of writer and reference);
  - ref_detects_permutation: the same reference with NEOX RoPE on the GGUF's permuted rows
    (what a reader that forgot to undo the permutation computes) differs: the checks below
    can fail;
  - tern_run_vs_ref_<form>: tern-run's greedy ids and logits of every row against the
    reference, every packing and kernel ISA bit-identical (tests/engine_vs_ref.py's check);
  - forms_bit_identical: every form gives tern-run the same logits bit for bit;
  - cluster_2_stages_<form> and plan_2_stages: a 2-stage pipeline (mpirun, tern-coordinator
    + tern-node; and a tern-partition plan) gives tern-run's tokens;
  - refused_*: what tern does not run is a one-line error and a non-zero exit;
  - untied_head: an untied checkpoint (lm_head.weight) and GGUF (output.weight): the
    reference reads both heads alike, tern-run's logits of both equal the reference's, and
    a 2-stage pipeline from the checkpoint and from its plan gives tern-run's tokens.

Usage: test_llama.py BUILD_DIR
"""

import json
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
from ternlib import Results, Skip, run_tern_run  # noqa: E402
from test_cluster import run_batch  # noqa: E402

PY = "/usr/bin/python3"
SHAPE = ["--n-embd", "256", "--n-head", "4", "--n-head-kv", "2", "--n-ff", "512", "--vocab", "300",
         "--layers", "2", "--seed", "7"]
PROMPTS = ["the cat", "hello world", "once upon a time", "a"]
N_GEN = 8


def make(args):
    subprocess.run([PY, os.path.join(HERE, "..", "ref", "make_llama.py")] + SHAPE + args, check=True)


def dump_logits(build, model, path):
    engine_vs_ref.run([os.path.join(build, "coordinator", "tern-run"), "-m", model, "--tokens",
                       ",".join(map(str, engine_vs_ref.PROMPT)), "-n", "16", "--temp", "0", "--ignore-eos", "-q",
                       "--dump-logits", path])
    return np.load(path)


def main():
    build = os.path.abspath(sys.argv[1])
    tern_run = os.path.join(build, "coordinator", "tern-run")
    work = tempfile.mkdtemp(prefix="tern-llama-")
    forms = {}
    for outtype in ("i2_s", "f16", "f32"):
        forms["gguf_" + outtype] = os.path.join(work, "l-%s.gguf" % outtype)
        make(["--gguf", forms["gguf_" + outtype], "--outtype", outtype])
    forms["gguf_falcon3_pre"] = os.path.join(work, "falcon3.gguf")
    make(["--gguf", forms["gguf_falcon3_pre"], "--outtype", "i2_s", "--pre", "falcon3"])
    forms["hf"] = os.path.join(work, "hf")
    make(["--hf", forms["hf"]])
    res = Results()
    prompt = engine_vs_ref.PROMPT[:8]

    def ref_logits(model, **kw):
        m = bitnet_ref.BitNetModel(model, verbose=False)
        for k, v in kw.items():
            setattr(m, k, v)
        return m.run(prompt, 8)[0]

    def refs_agree():
        a, b = ref_logits(forms["gguf_i2_s"]), ref_logits(forms["hf"])
        rel = np.abs(a - b).max() / np.abs(a).max()
        assert rel < 1e-5 and (a.argmax(1) == b.argmax(1)).all(), rel
    res.check("ref_gguf_equals_ref_hf", refs_agree)

    def ref_detects_permutation():
        a = ref_logits(forms["gguf_i2_s"])
        b = ref_logits(forms["gguf_i2_s"], rope=bitnet_ref.rope_neox)
        rel = np.abs(a - b).max() / np.abs(a).max()
        assert rel > 1e-2, "NEOX RoPE on permuted rows changed the logits by only %.2e" % rel
    res.check("ref_detects_permutation", ref_detects_permutation)

    for name, path in forms.items():
        def fn(name=name, path=path):
            assert engine_vs_ref.check_model(name, path, tern_run, work, None, name == "gguf_i2_s")
        res.check("tern_run_vs_ref_" + name, fn)

    def forms_identical():
        got = {n: dump_logits(build, p, os.path.join(work, n + ".npy")) for n, p in forms.items()}
        first = got["gguf_i2_s"]
        for n, x in got.items():
            assert x.shape == first.shape and np.array_equal(x, first), "%s differs from gguf_i2_s" % n
    res.check("forms_bit_identical", forms_identical)

    want = {}

    def cluster(name):
        def fn():
            model = forms[name]
            for p in PROMPTS:
                want.setdefault((name, p), run_tern_run(build, model, p, N_GEN))
            rows = run_batch(build, model, 2, PROMPTS, work)
            for p, row in zip(PROMPTS, rows):
                assert row["token_ids"] == want[(name, p)], (name, p, row, want[(name, p)])
        return fn
    if shutil.which("mpirun"):
        res.check("cluster_2_stages_gguf_i2_s", cluster("gguf_i2_s"))
        res.check("cluster_2_stages_hf", cluster("hf"))
    else:
        res.check("cluster_2_stages", lambda: (_ for _ in ()).throw(Skip("no mpirun")))

    def plan():
        if not shutil.which("mpirun"):
            raise Skip("no mpirun")
        d = os.path.join(work, "plan")
        subprocess.run([os.path.join(build, "partition", "tern-partition"), forms["hf"], "--stages", "2", "-o", d],
                       check=True, stdout=subprocess.DEVNULL)
        rows = run_batch(build, d, 2, PROMPTS, work)
        for p, row in zip(PROMPTS, rows):
            assert row["token_ids"] == run_tern_run(build, forms["hf"], p, N_GEN), (p, row)
    res.check("plan_2_stages", plan)

    def refused(edit, needle):
        def fn():
            d = os.path.join(work, "bad")
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(forms["hf"], d)
            with open(os.path.join(d, "config.json")) as f:
                cfg = json.load(f)
            edit(cfg)
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(cfg, f)
            r = subprocess.run([tern_run, "-m", d, "--tokens", "1", "-n", "1", "-q"], capture_output=True, text=True)
            lines = r.stderr.strip().splitlines()
            assert r.returncode != 0 and len(lines) == 1 and needle in lines[0], (r.returncode, r.stderr)
        return fn
    res.check("refused_rope_scaling",
              refused(lambda c: c.update(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "rope_scaling"))
    res.check("refused_not_ternary", refused(lambda c: c.pop("quantization_config"), "not a ternary checkpoint"))
    res.check("refused_other_class", refused(lambda c: c.update(architectures=["Qwen3ForCausalLM"]), "Qwen3"))

    def untied():
        hf, gg = os.path.join(work, "untied"), os.path.join(work, "untied.gguf")
        make(["--hf", hf, "--untied"])
        make(["--gguf", gg, "--outtype", "i2_s", "--untied"])
        a, b = ref_logits(gg), ref_logits(hf)
        rel = np.abs(a - b).max() / np.abs(a).max()
        assert rel < 1e-5 and (a.argmax(1) == b.argmax(1)).all(), rel
        for name, path in (("untied_hf", hf), ("untied_gguf", gg)):
            assert engine_vs_ref.check_model(name, path, tern_run, work, None, False)
        if not shutil.which("mpirun"):
            raise Skip("no mpirun: tern-run checked, the pipeline not")
        d = os.path.join(work, "plan-untied")
        subprocess.run([os.path.join(build, "partition", "tern-partition"), hf, "--stages", "2", "-o", d],
                       check=True, stdout=subprocess.DEVNULL)
        for src in (hf, d):
            rows = run_batch(build, src, 2, PROMPTS, work)
            for p, row in zip(PROMPTS, rows):
                assert row["token_ids"] == run_tern_run(build, hf, p, N_GEN), (src, p, row)
    res.check("untied_head", untied)
    rc = res.finish()
    shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
