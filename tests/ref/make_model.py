#!/usr/bin/python3
"""make_model.py: writes a random BitNet b1.58 GGUF in bitnet.cpp's layout (MODEL-FORMATS 2.4).

Owns the reference tests' synthetic models. Independent of the C generator, so files from
both can be run through both implementations.

Statistics are chosen to look like a trained model and keep activations finite over a few
layers:
- ternary weights come from the spec's own training quantizer (MODEL-FORMATS 1.3) applied
  to Gaussian latent weights: s = 1/max(mean|W|, 1e-5), Wt = clamp(round_half_even(W*s),
  -1, 1), scale = mean|W|. That gives ~31% zeros. The latent std is picked so that a
  BitLinear maps unit-RMS inputs to roughly unit-RMS outputs.
- token_embd F16 ~ N(0, 1/n_embd) (logits of order 1), norms 1 + N(0, 0.05^2); with --untied
  also an output.weight F16 of the same statistics from its own seed (the LM head of an
  untied model).
- gpt2 tokenizer metadata for a tiny byte-level vocabulary: the 256 byte symbols
  (GPT-2 bytes_to_unicode), a handful of merges, then reserved control tokens; with the
  Llama-3 vocabulary size the special ids are Llama-3's (128000, 128001, 128009), else BOS
  and EOS are the last two ids and EOT is unset. Needs vocab >= 262 (else no tokenizer keys).

Usage:
  /usr/bin/python3 tests/ref/make_model.py --out m.gguf --preset 2b4t --layers 1 --seed 1
  /usr/bin/python3 tests/ref/make_model.py --out m.gguf --n-embd 256 --n-head 4 --n-head-kv 2 \\
      --n-ff 512 --vocab 300 --layers 2 --seed 7
"""

import argparse
import os
import sys

import numpy as np

sys.dont_write_bytecode = True  # keep the source tree clean of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402

# Shapes of partition/model.c's presets that the reference tests use (n_embd, n_head,
# n_head_kv, n_ff, vocab, n_layer, n_ctx, theta).
PRESETS = {
    "125m": (768, 12, 12, 2048, 32000, 12, 2048, 10000.0),
    "700m": (1536, 16, 16, 4096, 32002, 24, 2048, 10000.0),
    "2b4t": (2560, 20, 5, 6912, 128256, 30, 4096, 500000.0),
    "3b": (3200, 32, 32, 8640, 32002, 26, 2048, 10000.0),
}

MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s"),
          ("r", "e"), ("a", "t"), ("Ġ", "w"), ("o", "u"), ("e", "n"), ("Ġ", "o")]


def bytes_to_unicode():
    """GPT-2's byte -> character map (MODEL-FORMATS 3.2)."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    m, extra = {}, 0
    for b in range(256):
        if b in keep:
            m[b] = chr(b)
        else:
            m[b] = chr(0x100 + extra)
            extra += 1
    return m


def tokenizer_kv(vocab):
    """(keys dict of gguf.Value) for a tiny byte-level gpt2 vocabulary of exactly `vocab` ids."""
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    types = [1] * 256
    merges = []
    if vocab == 128256:
        specials = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128009: "<|eot_id|>"}
        bos, eos, eot = 128000, 128001, 128009
    else:
        specials = {vocab - 2: "<|begin_of_text|>", vocab - 1: "<|end_of_text|>"}
        bos, eos, eot = vocab - 2, vocab - 1, None
    for a, b in MERGES:
        if len(tokens) >= min(specials):
            break
        merges.append("%s %s" % (a, b))
        tokens.append(a + b)
        types.append(1)
    while len(tokens) < vocab:
        i = len(tokens)
        tokens.append(specials.get(i, "<|reserved_special_token_%d|>" % i))
        types.append(3)
    kv = {
        "tokenizer.ggml.model": gguf.Value(gguf.STRING, "gpt2"),
        "tokenizer.ggml.pre": gguf.Value(gguf.STRING, "llama-bpe"),
        "tokenizer.ggml.tokens": gguf.Value(gguf.ARRAY, tokens, gguf.STRING),
        "tokenizer.ggml.token_type": gguf.Value(gguf.ARRAY, np.array(types, np.int32), gguf.INT32),
        "tokenizer.ggml.merges": gguf.Value(gguf.ARRAY, merges, gguf.STRING),
        "tokenizer.ggml.bos_token_id": gguf.Value(gguf.UINT32, bos),
        "tokenizer.ggml.eos_token_id": gguf.Value(gguf.UINT32, eos),
        "tokenizer.ggml.add_bos_token": gguf.Value(gguf.BOOL, True),
    }
    if eot is not None:
        kv["tokenizer.ggml.eot_token_id"] = gguf.Value(gguf.UINT32, eot)
    return kv


def ternary_weight(rng, n_out, n_in):
    """(Wt int8 (n_out, n_in), scale float32) by the spec's quantizer from Gaussian latents."""
    # mean|W| = 0.798 sigma; ~69% non-zeros: output RMS ~ scale * sqrt(0.69 * n_in) * input RMS ~ 1.
    sigma = 1.0 / (0.798 * np.sqrt(0.69 * n_in))
    w = (rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(sigma)).astype(np.float32)
    mean_abs = np.float32(np.abs(w).astype(np.float64).mean())
    s = np.float32(1.0) / max(mean_abs, np.float32(1e-5))
    wt = np.clip(np.rint(w * s), -1, 1).astype(np.int8)
    return wt, np.float32(1.0) / s


def write_model(path, n_embd, n_head, n_head_kv, n_ff, vocab, n_layer, seed=0, n_ctx=4096, theta=500000.0,
                arch="bitnet-b1.58", eps=1e-5, tokenizer=True, version=3, untied=False):
    if n_embd % n_head or n_head % n_head_kv or (n_embd // n_head) % 2:
        raise ValueError("heads must divide n_embd (even head_dim) and kv heads must divide heads")
    hd = n_embd // n_head
    if (n_embd * n_embd) % 128 or (n_embd * n_head_kv * hd) % 128 or (n_embd * n_ff) % 128:
        raise ValueError("i2_s needs every weight's element count to be a multiple of 128")
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, version=version)
    w.add("general.architecture", gguf.Value(gguf.STRING, arch))
    w.add("general.name", gguf.Value(gguf.STRING, "tern-ref-random-%d" % seed))
    w.add("general.file_type", gguf.Value(gguf.UINT32, 40))
    for key, vt, val in (("vocab_size", gguf.UINT32, vocab), ("context_length", gguf.UINT32, n_ctx),
                         ("embedding_length", gguf.UINT32, n_embd), ("block_count", gguf.UINT32, n_layer),
                         ("feed_forward_length", gguf.UINT32, n_ff), ("rope.dimension_count", gguf.UINT32, hd),
                         ("attention.head_count", gguf.UINT32, n_head),
                         ("attention.head_count_kv", gguf.UINT32, n_head_kv),
                         ("attention.layer_norm_rms_epsilon", gguf.FLOAT32, eps),
                         ("rope.freq_base", gguf.FLOAT32, theta)):
        w.add("%s.%s" % (arch, key), gguf.Value(vt, val))
    if tokenizer and vocab >= 262:
        for k, v in tokenizer_kv(vocab).items():
            w.add(k, v)

    # The embedding is generated and converted in row chunks (2b4t: 1.3 GB as float32).
    embd_seed = int(rng.integers(2**63))
    std = np.float32(1.0 / np.sqrt(n_embd))

    def f16_chunks(seed):
        def chunks():
            er = np.random.default_rng(seed)
            for r in range(0, vocab, 4096):
                n = min(4096, vocab - r)
                yield (er.standard_normal((n, n_embd), dtype=np.float32) * std).astype("<f2").tobytes()
        return chunks

    w.add_tensor("token_embd.weight", f16_chunks(embd_seed), gguf.F16, ne=(n_embd, vocab))
    if untied:
        w.add_tensor("output.weight", f16_chunks(int(rng.integers(2**63))), gguf.F16, ne=(n_embd, vocab))

    def norm(n):
        return (1.0 + 0.05 * rng.standard_normal(n)).astype(np.float32)

    kvw = n_head_kv * hd
    for i in range(n_layer):
        p = "blk.%d." % i
        w.add_tensor(p + "attn_norm.weight", norm(n_embd), gguf.F32)
        for name, n_out, n_in in (("attn_q", n_embd, n_embd), ("attn_k", kvw, n_embd), ("attn_v", kvw, n_embd),
                                  ("attn_output", n_embd, n_embd)):
            w.add_ternary(p + name + ".weight", *ternary_weight(rng, n_out, n_in))
        w.add_tensor(p + "attn_sub_norm.weight", norm(n_embd), gguf.F32)
        w.add_tensor(p + "ffn_norm.weight", norm(n_embd), gguf.F32)
        for name, n_out, n_in in (("ffn_gate", n_ff, n_embd), ("ffn_up", n_ff, n_embd), ("ffn_down", n_embd, n_ff)):
            w.add_ternary(p + name + ".weight", *ternary_weight(rng, n_out, n_in))
        w.add_tensor(p + "ffn_sub_norm.weight", norm(n_ff), gguf.F32)
    w.add_tensor("output_norm.weight", norm(n_embd), gguf.F32)
    w.write()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write a random BitNet b1.58 GGUF (i2_s, bitnet.cpp layout).")
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", choices=sorted(PRESETS))
    ap.add_argument("--n-embd", type=int)
    ap.add_argument("--n-head", type=int)
    ap.add_argument("--n-head-kv", type=int)
    ap.add_argument("--n-ff", type=int)
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--layers", type=int, help="layer count (default: the preset's, else 2)")
    ap.add_argument("--ctx", type=int)
    ap.add_argument("--theta", type=float)
    ap.add_argument("--arch", default="bitnet-b1.58")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-tokenizer", action="store_true")
    ap.add_argument("--untied", action="store_true", help="write a separate output.weight (the LM head)")
    a = ap.parse_args(argv)
    base = PRESETS[a.preset] if a.preset else (256, 4, 2, 512, 300, 2, 4096, 500000.0)
    vals = [a.n_embd, a.n_head, a.n_head_kv, a.n_ff, a.vocab, a.layers, a.ctx, a.theta]
    e, h, hkv, ff, voc, nl, ctx, th = [v if v is not None else b for v, b in zip(vals, base)]
    if a.n_head is not None and a.n_head_kv is None:
        hkv = h
    try:
        write_model(a.out, e, h, hkv, ff, voc, nl, a.seed, ctx, th, a.arch, tokenizer=not a.no_tokenizer,
                    untied=a.untied)
    except (ValueError, gguf.GGUFError) as err:
        print("make_model: %s" % err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
