#!/usr/bin/python3
"""make_qwen3.py: writes a tiny seeded Qwen3-architecture ternary model (issue 17: PrismML
Ternary-Bonsai's graph) as a GGUF in the form llama.cpp's converter gives Qwen3:

  general.architecture "qwen3", qwen3.* keys (attention.key_length / value_length = head_dim),
  no q/k row permutation (Qwen3 rotates with rotate_half, llama.cpp's NEOX mode), per layer
  attn_norm, attn_q_norm and attn_k_norm (f32[head_dim]: transformers' Qwen3Attention applies
  RMSNorm over each head of q and k after the projections, before RoPE), ffn_norm, and the
  seven projections; SwiGLU; output.weight when --untied (Qwen3-8B's config unties it).

The values are make_llama's (ternary matrices with a power-of-two weight_scale, bf16-exact
embeddings and norms) plus the q/k norm weights, so every --outtype holds the same model:
  f32 / f16   the projections as ternary / weight_scale (one magnitude per tensor);
  i2_s        bitnet.cpp's I2_S with the scale max|W|;
  q2_0        ggml Q2_0 (type 42), the Ternary-Bonsai files' format: an f16 scale per 64
              weights of a row (d = 1 / weight_scale times a seeded 2^-1, 1 or 2 per group, so
              this form is its own model), F16 token_embd.
The tokenizer is make_model's tiny byte-level BPE with --pre (default llama-bpe; Qwen3's own
GGUFs say "qwen2", which tern runs too).

  /usr/bin/python3 tests/ref/make_qwen3.py --gguf q.gguf --outtype f16 --n-embd 256 \\
      --n-head 4 --n-head-kv 2 --n-ff 512 --vocab 300 --layers 2 --seed 7
"""

import argparse
import os
import sys

import numpy as np

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402
import make_llama  # noqa: E402


def add_qk_norms(W, seed):
    """Per layer q_norm and k_norm (head_dim), spread widely enough that dropping them
    changes the logits (the reference check below can fail)."""
    rng = np.random.default_rng(seed + 1000)
    for L in W.layers:
        L["self_attn.q_norm"] = make_llama.bf16_round(0.5 + rng.random(W.hd))
        L["self_attn.k_norm"] = make_llama.bf16_round(0.5 + rng.random(W.hd))


def write_gguf(path, W, outtype, theta, eps, n_ctx, pre, seed=0):
    g = gguf.GGUFWriter(path)
    make_llama.add_header(g, "qwen3", W, theta, eps, n_ctx, pre,
                          (("attention.key_length", gguf.UINT32, W.hd), ("attention.value_length", gguf.UINT32, W.hd)))
    dense = gguf.F32 if outtype == "f32" else gguf.F16
    grng = np.random.default_rng(seed + 2000)
    g.add_tensor("token_embd.weight", W.embed, dense)
    for i, L in enumerate(W.layers):
        p = "blk.%d." % i
        g.add_tensor(p + "attn_norm.weight", L["input_layernorm"], gguf.F32)
        g.add_tensor(p + "attn_q_norm.weight", L["self_attn.q_norm"], gguf.F32)
        g.add_tensor(p + "attn_k_norm.weight", L["self_attn.k_norm"], gguf.F32)
        g.add_tensor(p + "ffn_norm.weight", L["post_attention_layernorm"], gguf.F32)
        for hf, name in make_llama.PROJ_HF:
            t, ws = L[hf]
            w = t.astype(np.float32) / ws
            if outtype == "i2_s":
                g.add_ternary(p + name + ".weight", t, np.float32(np.abs(w).max()))
            elif outtype == "q2_0":
                # a scale per 64-group: 1 / weight_scale times 2^-1, 2^0 or 2^1 (seeded), so a reader
                # that used one scale per row or tensor gives other logits
                e = grng.integers(-1, 2, (t.shape[0], t.shape[1] // gguf.Q2_0_GROUP))
                d = (np.float32(1.0 / ws) * np.exp2(e)).astype(np.float32)
                raw = gguf.q2_0_pack(t, d)
                g.add_tensor(p + name + ".weight", lambda raw=raw: [raw], gguf.Q2_0, ne=(t.shape[1], t.shape[0]))
            else:
                g.add_tensor(p + name + ".weight", w, gguf.F16 if outtype == "f16" else gguf.F32)
    g.add_tensor("output_norm.weight", W.norm, gguf.F32)
    if W.untied:
        g.add_tensor("output.weight", W.lm_head, dense)
    g.write()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write a tiny Qwen3-architecture ternary GGUF.")
    ap.add_argument("--gguf", required=True, help="GGUF file to write")
    ap.add_argument("--outtype", choices=("i2_s", "f16", "f32", "q2_0"), default="f16")
    ap.add_argument("--pre", default="llama-bpe", help="tokenizer.ggml.pre")
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-head-kv", type=int, default=2)
    ap.add_argument("--n-ff", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=300)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--theta", type=float, default=1000000.0)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--untied", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.n_embd % a.n_head or a.n_head % a.n_head_kv or (a.n_embd // a.n_head) % 2 or a.n_ff % 64 or \
            a.n_embd % 64 or a.vocab < 262:
        print("make_qwen3: heads must divide n_embd (even head size), kv heads the heads; n_embd and n_ff "
              "multiples of 64; vocab >= 262", file=sys.stderr)
        return 1
    W = make_llama.Weights(a.n_embd, a.n_head, a.n_head_kv, a.n_ff, a.vocab, a.layers, a.seed, a.untied)
    add_qk_norms(W, a.seed)
    try:
        write_gguf(a.gguf, W, a.outtype, a.theta, a.eps, a.ctx, a.pre, a.seed)
    except gguf.GGUFError as e:
        print("make_qwen3: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
