#!/usr/bin/python3
"""export_gguf.py: writes a model trained by train_bitnet.py as a GGUF in bitnet.cpp's layout.

Owns the mapping from the PyTorch module to MODEL-FORMATS 2.4: arch "bitnet-b1.58" with its
hyper-parameter keys; token_embd F16 (the tied head too); every BitLinear as I2_S holding the
ternary weights and, as its scale, the very float32 mean|W| the training forward used
(W ~= ternary * scale, MODEL-FORMATS 1.3); the norms F32; no output.weight. The tokenizer goes
in as gpt2 byte-level BPE with the llama-bpe pre-tokenizer: 256 byte symbols, one token per
merge in rank order, then BOS/EOS/EOT as CONTROL tokens; add_bos true.

The file is written with tests/ref/gguf.py's writer. train_bitnet.py calls export() in the training
process, so the scales are bit for bit those its PyTorch evaluation used. A re-export from a --ckpt
file can differ in the last bit of a few scales (torch's float32 mean depends on the tensor's memory
layout); commit the GGUF and the ref JSON of one run together.

Usage (re-export a checkpoint saved by train_bitnet.py --ckpt):
  /usr/bin/python3 deploy/train/export_gguf.py --ckpt model.pt --out deploy/models/tern-kjv.gguf
"""

import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "ref"))
import gguf  # noqa: E402

ARCH = "bitnet-b1.58"


def _ternary(lin):
    # The import is deferred so that train_bitnet can import this module while it is __main__.
    from train_bitnet import weight_quant
    with torch.no_grad():
        wt, ws = weight_quant(lin.weight.float())
    return wt.to(torch.int8).numpy(), np.float32(ws.item())


def _f32(t):
    return t.detach().float().numpy().astype(np.float32)


def export(model, tok, path, name="tern-kjv"):
    c = model.c
    hd = c["n_embd"] // c["n_head"]
    w = gguf.GGUFWriter(path)
    w.add("general.architecture", gguf.Value(gguf.STRING, ARCH))
    w.add("general.name", gguf.Value(gguf.STRING, name))
    w.add("general.file_type", gguf.Value(gguf.UINT32, 40))
    w.add("general.license", gguf.Value(gguf.STRING, "public-domain text (KJV); weights: same licence as tern"))
    for key, vt, val in (("vocab_size", gguf.UINT32, c["vocab"]), ("context_length", gguf.UINT32, c["n_ctx"]),
                         ("embedding_length", gguf.UINT32, c["n_embd"]), ("block_count", gguf.UINT32, c["n_layer"]),
                         ("feed_forward_length", gguf.UINT32, c["n_ff"]), ("rope.dimension_count", gguf.UINT32, hd),
                         ("attention.head_count", gguf.UINT32, c["n_head"]),
                         ("attention.head_count_kv", gguf.UINT32, c["n_head_kv"]),
                         ("attention.layer_norm_rms_epsilon", gguf.FLOAT32, 1e-5),
                         ("rope.freq_base", gguf.FLOAT32, c["rope_theta"])):
        w.add("%s.%s" % (ARCH, key), gguf.Value(vt, val))
    kv = {
        "tokenizer.ggml.model": gguf.Value(gguf.STRING, "gpt2"),
        "tokenizer.ggml.pre": gguf.Value(gguf.STRING, "llama-bpe"),
        "tokenizer.ggml.tokens": gguf.Value(gguf.ARRAY, list(tok.tokens), gguf.STRING),
        "tokenizer.ggml.token_type": gguf.Value(gguf.ARRAY, np.array(tok.types, np.int32), gguf.INT32),
        "tokenizer.ggml.merges": gguf.Value(gguf.ARRAY, ["%s %s" % m for m in tok.merges], gguf.STRING),
        "tokenizer.ggml.bos_token_id": gguf.Value(gguf.UINT32, tok.bos),
        "tokenizer.ggml.eos_token_id": gguf.Value(gguf.UINT32, tok.eos),
        "tokenizer.ggml.eot_token_id": gguf.Value(gguf.UINT32, tok.eot),
        "tokenizer.ggml.add_bos_token": gguf.Value(gguf.BOOL, True),
    }
    for k, v in kv.items():
        w.add(k, v)

    embd = model.embd.detach().float().numpy().astype(np.float16)
    w.add_tensor("token_embd.weight", embd, gguf.F16)
    for i, b in enumerate(model.blocks):
        p = "blk.%d." % i
        w.add_tensor(p + "attn_norm.weight", _f32(b.attn_norm.weight), gguf.F32)
        for nm, lin in (("attn_q", b.q), ("attn_k", b.k), ("attn_v", b.v), ("attn_output", b.o)):
            w.add_ternary(p + nm + ".weight", *_ternary(lin))
        w.add_tensor(p + "attn_sub_norm.weight", _f32(b.attn_sub_norm.weight), gguf.F32)
        w.add_tensor(p + "ffn_norm.weight", _f32(b.ffn_norm.weight), gguf.F32)
        for nm, lin in (("ffn_gate", b.gate), ("ffn_up", b.up), ("ffn_down", b.down)):
            w.add_ternary(p + nm + ".weight", *_ternary(lin))
        w.add_tensor(p + "ffn_sub_norm.weight", _f32(b.ffn_sub_norm.weight), gguf.F32)
    w.add_tensor("output_norm.weight", _f32(model.output_norm.weight), gguf.F32)
    w.write()


def load(ckpt):
    """(model, tokenizer) from a train_bitnet.py --ckpt file."""
    from train_bitnet import BitNet, Tokenizer
    d = torch.load(ckpt)
    model = BitNet(d["config"])
    model.load_state_dict(d["state"])
    model.eval()
    return model, Tokenizer([tuple(m) for m in d["merges"]])


def main(argv=None):
    ap = argparse.ArgumentParser(description="Export a train_bitnet.py checkpoint as a BitNet b1.58 GGUF (I2_S).")
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="tern-kjv")
    a = ap.parse_args(argv)
    sys.path.insert(0, HERE)
    model, tok = load(a.ckpt)
    export(model, tok, a.out, a.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
