#!/usr/bin/python3
"""make_llama.py: writes a tiny seeded Llama-style ternary model (issue 17) in the forms its
users download, all holding the same weights:

  --hf DIR      a Hugging Face LlamaForCausalLM checkpoint as HF1BitLLM/Llama3-8B-1.58 and
                tiiuae/Falcon3-*-1.58bit publish it: config.json (architectures, hidden_act silu,
                quantization_config {"quant_method": "bitnet"}, no linear_class: transformers'
                BitLinear, y = y_int / (input_scale * weight_scale)), model.safetensors with the
                projections packed 4 ternary codes per byte along the rows (uint8 [out/4, in],
                code = t + 1 at bits 2i of row p for output row i*out/4 + p) and a bf16
                weight_scale [1] next to each, bf16 embeddings and norms; tokenizer.json
                (byte-level BPE) and tokenizer_config.json.
  --gguf FILE   bitnet.cpp's GGUF of that checkpoint, general.architecture "llama", as
                utils/convert-hf-to-gguf-bitnet.py writes it: llama.* keys, q_proj / k_proj
                rows permuted for llama.cpp's interleaved RoPE (per head: reshape(n_head, 2,
                hd/2, K).swapaxes(1, 2)), weights unpacked and divided by weight_scale; then
                --outtype f32 (all F32), f16 (projections F16, token_embd and norms F32), or
                i2_s (what setup_env.py gets from llama-quantize on the f32 file: I2_S with
                the scale max|W|, F16 token_embd).

Weight choices keep every form exact and equal: ternary values from make_model's quantizer,
weight_scale a power of two near 1/mean|W| (so 1/weight_scale is exact in bf16, f16 and f32),
embeddings and norms rounded to bf16 (exact in f16 too). Tied embeddings unless --untied (then
lm_head.weight / output.weight are written). Never copies public code: written from what the
converter and transformers' integrations/bitnet.py do (partition/README.md, issue 17).

  /usr/bin/python3 tests/ref/make_llama.py --hf DIR --gguf m.gguf --outtype i2_s \\
      --n-embd 256 --n-head 4 --n-head-kv 2 --n-ff 512 --vocab 300 --layers 2 --seed 7
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402
import make_model  # noqa: E402

PROJ_HF = (("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
           ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
           ("mlp.down_proj", "ffn_down"))


def bf16_round(x):
    """float32 values rounded to bfloat16 (round to nearest even), as float32."""
    return gguf.bf16_bits_to_f32(gguf.f32_to_bf16_bits(np.asarray(x, np.float32)))


class Weights:
    """The model's values: ternary int8 matrices with their weight_scale (HF order of q/k
    rows), float32 (bf16-exact) embeddings and norms."""

    def __init__(self, n_embd, n_head, n_head_kv, n_ff, vocab, n_layer, seed, untied):
        self.n_embd, self.n_head, self.n_head_kv, self.n_ff = n_embd, n_head, n_head_kv, n_ff
        self.vocab, self.n_layer, self.untied = vocab, n_layer, untied
        self.hd = n_embd // n_head
        rng = np.random.default_rng(seed)
        kvw = n_head_kv * self.hd
        shapes = {"self_attn.q_proj": (n_embd, n_embd), "self_attn.k_proj": (kvw, n_embd),
                  "self_attn.v_proj": (kvw, n_embd), "self_attn.o_proj": (n_embd, n_embd),
                  "mlp.gate_proj": (n_ff, n_embd), "mlp.up_proj": (n_ff, n_embd), "mlp.down_proj": (n_embd, n_ff)}

        def small(shape, std):
            x = bf16_round(rng.standard_normal(shape).astype(np.float32) * np.float32(std))
            x[np.abs(x) < 2.0 ** -16] = 0.0  # bf16 values below this are not all exact in f16
            return x

        self.embed = small((vocab, n_embd), 1.0 / np.sqrt(n_embd))
        self.lm_head = small((vocab, n_embd), 1.0 / np.sqrt(n_embd)) if untied else None
        self.layers = []
        for _ in range(n_layer):
            L = {"input_layernorm": bf16_round(1.0 + 0.05 * rng.standard_normal(n_embd)),
                 "post_attention_layernorm": bf16_round(1.0 + 0.05 * rng.standard_normal(n_embd))}
            for hf, _ in PROJ_HF:
                t, a = make_model.ternary_weight(rng, *shapes[hf])
                k = int(np.round(np.log2(1.0 / float(a)))) + int(rng.integers(0, 2))
                L[hf] = (t, np.float32(2.0 ** k))  # (ternary, weight_scale): W = t / weight_scale
            self.layers.append(L)
        self.norm = bf16_round(1.0 + 0.05 * rng.standard_normal(n_embd))


# ---- Hugging Face checkpoint -----------------------------------------------------------

def pack_rows(t):
    """uint8 [out/4, in]: output row i*P + p goes to bits 2i of packed row p (code t + 1)."""
    out, k = t.shape
    P = out // 4
    codes = (t.astype(np.int16) + 1).astype(np.uint8).reshape(4, P, k)
    return (codes[0] | (codes[1] << 2) | (codes[2] << 4) | (codes[3] << 6)).astype(np.uint8)


def write_safetensors(path, tensors):
    """tensors: list of (name, dtype string, shape, raw bytes)."""
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, dt, shape, raw in tensors:
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for _, _, _, raw in tensors:
            f.write(raw)


def bf16_bytes(x):
    return gguf.f32_to_bf16_bits(np.asarray(x, np.float32)).astype("<u2").tobytes()


def tokenizer_files(vocab):
    """(tokenizer.json dict, tokenizer_config.json dict, bos, eos) from make_model's tiny
    byte-level vocabulary: the plain tokens in model.vocab, the specials in added_tokens."""
    kv = make_model.tokenizer_kv(vocab)
    tokens = kv["tokenizer.ggml.tokens"].value
    types = list(kv["tokenizer.ggml.token_type"].value)
    merges = [m.split(" ") for m in kv["tokenizer.ggml.merges"].value]
    plain = {t: i for i, t in enumerate(tokens) if types[i] == 1}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(tokens) if types[i] != 1]
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
           "normalizer": None,
           "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
               {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
                                                      "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
                                                      "\\s+(?!\\S)|\\s+"},
                "behavior": "Isolated", "invert": False},
               {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
           "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                     "ignore_merges": True, "vocab": plain, "merges": merges}}
    bos, eos = kv["tokenizer.ggml.bos_token_id"].value, kv["tokenizer.ggml.eos_token_id"].value
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": tokens[bos], "eos_token": tokens[eos],
           "clean_up_tokenization_spaces": True, "model_max_length": 4096,
           "tokenizer_class": "PreTrainedTokenizerFast"}
    return tok, cfg, bos, eos


def write_hf(d, W, theta, eps, n_ctx):
    os.makedirs(d, exist_ok=True)
    tok, tcfg, bos, eos = tokenizer_files(W.vocab)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "hidden_size": W.n_embd, "intermediate_size": W.n_ff, "num_hidden_layers": W.n_layer,
              "num_attention_heads": W.n_head, "num_key_value_heads": W.n_head_kv, "head_dim": W.hd,
              "vocab_size": W.vocab, "max_position_embeddings": n_ctx, "rms_norm_eps": eps, "rope_theta": theta,
              "rope_scaling": None, "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1,
              "tie_word_embeddings": not W.untied, "bos_token_id": bos, "eos_token_id": eos,
              "torch_dtype": "bfloat16", "initializer_range": 0.02, "use_cache": True,
              "quantization_config": {"quant_method": "bitnet", "modules_to_not_convert": None}}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(tok, f, ensure_ascii=False)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(tcfg, f, indent=2)
    ts = [("model.embed_tokens.weight", "BF16", W.embed.shape, bf16_bytes(W.embed))]
    for i, L in enumerate(W.layers):
        p = "model.layers.%d." % i
        ts.append((p + "input_layernorm.weight", "BF16", (W.n_embd,), bf16_bytes(L["input_layernorm"])))
        ts.append((p + "post_attention_layernorm.weight", "BF16", (W.n_embd,),
                   bf16_bytes(L["post_attention_layernorm"])))
        for hf, _ in PROJ_HF:
            t, ws = L[hf]
            packed = pack_rows(t)
            ts.append((p + hf + ".weight", "U8", packed.shape, packed.tobytes()))
            ts.append((p + hf + ".weight_scale", "BF16", (1,), bf16_bytes(np.array([ws], np.float32))))
    ts.append(("model.norm.weight", "BF16", (W.n_embd,), bf16_bytes(W.norm)))
    if W.untied:
        ts.append(("lm_head.weight", "BF16", W.lm_head.shape, bf16_bytes(W.lm_head)))
    write_safetensors(os.path.join(d, "model.safetensors"), ts)


# ---- bitnet.cpp GGUF -------------------------------------------------------------------

def permute_rows(w, n_head):
    """The converter's LlamaModel.permute: HF row h*hd + j*hd/2 + i -> GGUF row h*hd + 2i + j."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_header(g, arch, W, theta, eps, n_ctx, pre, extra=()):
    """general.architecture, the ARCH.* hyper-parameter keys (plus `extra` (key, type, value)
    rows) and make_model's tokenizer with tokenizer.ggml.pre = pre."""
    g.add("general.architecture", gguf.Value(gguf.STRING, arch))
    g.add("general.name", gguf.Value(gguf.STRING, "tern-%s-ternary" % arch))
    for key, vt, val in (("vocab_size", gguf.UINT32, W.vocab), ("context_length", gguf.UINT32, n_ctx),
                         ("embedding_length", gguf.UINT32, W.n_embd), ("block_count", gguf.UINT32, W.n_layer),
                         ("feed_forward_length", gguf.UINT32, W.n_ff), ("rope.dimension_count", gguf.UINT32, W.hd),
                         ("attention.head_count", gguf.UINT32, W.n_head),
                         ("attention.head_count_kv", gguf.UINT32, W.n_head_kv),
                         ("attention.layer_norm_rms_epsilon", gguf.FLOAT32, eps),
                         ("rope.freq_base", gguf.FLOAT32, theta)) + tuple(extra):
        g.add(arch + "." + key, gguf.Value(vt, val))
    tkv = make_model.tokenizer_kv(W.vocab)
    tkv["tokenizer.ggml.pre"] = gguf.Value(gguf.STRING, pre)
    for k, v in tkv.items():
        g.add(k, v)


def write_gguf(path, W, outtype, theta, eps, n_ctx, pre):
    g = gguf.GGUFWriter(path)
    add_header(g, "llama", W, theta, eps, n_ctx, pre)
    g.add("general.file_type", gguf.Value(gguf.UINT32, {"f32": 0, "f16": 1, "i2_s": 40}[outtype]))
    dense = gguf.F16 if outtype == "i2_s" else gguf.F32
    g.add_tensor("token_embd.weight", W.embed, dense)
    for i, L in enumerate(W.layers):
        p = "blk.%d." % i
        g.add_tensor(p + "attn_norm.weight", L["input_layernorm"], gguf.F32)
        g.add_tensor(p + "ffn_norm.weight", L["post_attention_layernorm"], gguf.F32)
        for hf, name in PROJ_HF:
            t, ws = L[hf]
            if hf == "self_attn.q_proj":
                t = permute_rows(t, W.n_head)
            elif hf == "self_attn.k_proj":
                t = permute_rows(t, W.n_head_kv)
            w = t.astype(np.float32) / ws  # the converter's unpack, then divide by weight_scale
            if outtype == "i2_s":
                g.add_ternary(p + name + ".weight", t, np.float32(np.abs(w).max()))  # llama-quantize: max|W|
            else:
                g.add_tensor(p + name + ".weight", w, gguf.F16 if outtype == "f16" else gguf.F32)
    g.add_tensor("output_norm.weight", W.norm, gguf.F32)
    if W.untied:
        g.add_tensor("output.weight", W.lm_head, dense)
    g.write()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write a tiny Llama-style ternary model (HF checkpoint and/or "
                                             "bitnet.cpp GGUF).")
    ap.add_argument("--hf", help="checkpoint directory to write")
    ap.add_argument("--gguf", help="GGUF file to write")
    ap.add_argument("--outtype", choices=("i2_s", "f16", "f32"), default="i2_s")
    ap.add_argument("--pre", default="llama-bpe", help="tokenizer.ggml.pre (llama-bpe; falcon3 for Falcon3)")
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-head-kv", type=int, default=2)
    ap.add_argument("--n-ff", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=300)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--theta", type=float, default=500000.0)
    ap.add_argument("--eps", type=float, default=1e-5)
    ap.add_argument("--untied", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if not a.hf and not a.gguf:
        print("make_llama: give --hf DIR and/or --gguf FILE", file=sys.stderr)
        return 1
    if a.n_embd % a.n_head or a.n_head % a.n_head_kv or (a.n_embd // a.n_head) % 2 or a.n_ff % 4 or a.vocab < 262:
        print("make_llama: heads must divide n_embd (even head size), kv heads the heads; n_ff % 4 == 0; "
              "vocab >= 262", file=sys.stderr)
        return 1
    W = Weights(a.n_embd, a.n_head, a.n_head_kv, a.n_ff, a.vocab, a.layers, a.seed, a.untied)
    try:
        if a.hf:
            write_hf(a.hf, W, a.theta, a.eps, a.ctx)
        if a.gguf:
            write_gguf(a.gguf, W, a.outtype, a.theta, a.eps, a.ctx, a.pre)
    except gguf.GGUFError as e:
        print("make_llama: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
