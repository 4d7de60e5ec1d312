#!/usr/bin/python3
"""make_corpus.py: writes the seed corpora of tests/fuzz/ (small valid and
damaged GGUF and safetensors files, config.json texts), deterministically.
An independent writer of both formats (struct + json), so the corpus does not
depend on the C writer it helps to test. Run from anywhere:
    /usr/bin/python3 tests/fuzz/make_corpus.py
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B",
          U64: "<Q", I64: "<q", F64: "<d"}
GF32, GF16, GI2S = 0, 1, 36


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gval(t, v):
    if t == STR:
        return gstr(v)
    if t == ARR:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(gval(et, x) for x in items)
    return struct.pack(SCALAR[t], v)


def gguf(kvs, tensors, version=3, align=32):
    """kvs: [(key, type, value)], tensors: [(name, ne, type, data bytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gstr(k) + struct.pack("<I", t) + gval(t, v)
    off = 0
    offs = []
    for name, ne, t, data in tensors:
        offs.append(off)
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", t, off)
        off += (len(data) + align - 1) // align * align
    out += b"\0" * ((-len(out)) % align)
    for (name, ne, t, data), o in zip(tensors, offs):
        out += data + b"\0" * ((-len(data)) % align)
    return out


def i2s(m, k, seed, scale):
    """Ternary values w[i] = (i*seed) % 3 - 1 in the 128/32 layout + tail."""
    n = m * k
    w = [((i * seed + i // 7) % 3) - 1 for i in range(n)]
    b = bytearray(n // 4)
    for i, v in enumerate(w):
        blk, j = divmod(i, 128)
        grp, pos = divmod(j, 32)
        b[blk * 32 + pos] |= (v + 1) << (6 - 2 * grp)
    return bytes(b) + struct.pack("<f", scale) + b"\0" * 28


def tiny_model(version=3):
    arch = "bitnet-b1.58"
    d, ff, nv = 64, 128, 6
    toks = ["<|begin_of_text|>", "<|end_of_text|>", "a", "b", "\u0120a", "<|eot_id|>"]
    kvs = [("general.architecture", STR, arch), ("general.name", STR, "corpus"),
           (arch + ".vocab_size", U32, nv), (arch + ".context_length", U32, 256),
           (arch + ".embedding_length", U32, d), (arch + ".block_count", U32, 1),
           (arch + ".feed_forward_length", U32, ff), (arch + ".rope.dimension_count", U32, 32),
           (arch + ".attention.head_count", U32, 2), (arch + ".attention.head_count_kv", U32, 1),
           (arch + ".attention.layer_norm_rms_epsilon", F32, 1e-5), (arch + ".rope.freq_base", F32, 500000.0),
           ("tokenizer.ggml.model", STR, "gpt2"), ("tokenizer.ggml.pre", STR, "llama-bpe"),
           ("tokenizer.ggml.tokens", ARR, (STR, toks)),
           ("tokenizer.ggml.token_type", ARR, (I32, [3, 3, 1, 1, 1, 3])),
           ("tokenizer.ggml.merges", ARR, (STR, ["\u0120 a"])),
           ("tokenizer.ggml.bos_token_id", U32, 0), ("tokenizer.ggml.eos_token_id", U32, 1),
           ("tokenizer.ggml.add_bos_token", BOOL, 1)]
    f32 = lambda n, v: struct.pack("<%df" % n, *([v] * n))
    t = [("token_embd.weight", [d, nv], GF16, struct.pack("<%de" % (d * nv), *[(i % 17) / 17 - 0.5 for i in range(d * nv)])),
         ("output_norm.weight", [d], GF32, f32(d, 1.0))]
    kv = 32
    shapes = {"attn_q": (d, d), "attn_k": (kv, d), "attn_v": (kv, d), "attn_output": (d, d),
              "ffn_gate": (ff, d), "ffn_up": (ff, d), "ffn_down": (d, ff)}
    for n in ("attn_norm", "attn_sub_norm", "ffn_norm"):
        t.append(("blk.0.%s.weight" % n, [d], GF32, f32(d, 1.0)))
    t.append(("blk.0.ffn_sub_norm.weight", [ff], GF32, f32(ff, 1.0)))
    for i, (n, (m, k)) in enumerate(shapes.items()):
        t.append(("blk.0.%s.weight" % n, [k, m], GI2S, i2s(m, k, i + 2, 0.125)))
    return gguf(kvs, t, version)


def all_types():
    kvs = [("u8", U8, 200), ("i8", I8, -3), ("u16", U16, 60000), ("i16", I16, -2), ("u32", U32, 7),
           ("i32", I32, -7), ("f32", F32, 0.5), ("bool", BOOL, 1), ("str", STR, "hi"), ("u64", U64, 1 << 40),
           ("i64", I64, -1 << 40), ("f64", F64, 0.25), ("general.alignment", U32, 64),
           ("arr.i32", ARR, (I32, [1, 2, 3])), ("arr.str", ARR, (STR, ["x", "", "yz"])),
           ("arr.f64", ARR, (F64, [1.0])), ("arr.bool", ARR, (BOOL, [0, 1]))]
    t = [("v", [4], GF32, struct.pack("<4f", 1, 2, 3, 4)), ("h", [2, 2], GF16, struct.pack("<4e", 1, 2, 3, 4))]
    return gguf(kvs, t, 3, 64)


def st(entries, meta=True):
    """entries: [(name, dtype, shape, data bytes)]."""
    hdr = {"__metadata__": {"format": "pt"}} if meta else {}
    off = 0
    for name, dt, shape, data in entries:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(hdr).encode()
    h += b" " * ((-len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(e[3] for e in entries)


def main():
    g = os.path.join(HERE, "corpus", "fuzz_gguf")
    s = os.path.join(HERE, "corpus", "fuzz_safetensors")
    os.makedirs(g, exist_ok=True)
    os.makedirs(s, exist_ok=True)
    model = tiny_model(3)
    files = {
        "model-v3.gguf": model,
        "model-v2.gguf": tiny_model(2),
        "all-types.gguf": all_types(),
        "empty.gguf": gguf([], []),
        "truncated.gguf": model[: len(model) // 3],
        "wrong-magic.gguf": b"GGUX" + model[4:200],
        "huge-count.gguf": model[:8] + struct.pack("<Q", 1 << 62) + model[16:300],
    }
    for n, b in files.items():
        with open(os.path.join(g, n), "wb") as f:
            f.write(b)
    bf = struct.pack("<4H", 0x3F80, 0xC000, 0x3E80, 0)
    packed = bytes([0b10010001] * 8)
    sfiles = {
        "packed.safetensors": st([("model.layers.0.self_attn.q_proj.weight", "U8", [2, 4], packed),
                                  ("model.layers.0.self_attn.q_proj.weight_scale", "BF16", [1], bf[:2]),
                                  ("model.norm.weight", "BF16", [4], bf)]),
        "f32.safetensors": st([("a", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)), ("s", "F16", [], b"\0\x3c")],
                              meta=False),
        "bad-offsets.safetensors": st([("a", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4))])[:-5],
        "config.json": json.dumps({"hidden_size": 2560, "num_hidden_layers": 30, "num_attention_heads": 20,
                                   "num_key_value_heads": 5, "intermediate_size": 6912, "vocab_size": 128256,
                                   "rope_theta": 500000.0, "rms_norm_eps": 1e-05, "tie_word_embeddings": True,
                                   "bos_token_id": 128000, "eos_token_id": [128001, 128009],
                                   "quantization_config": {"quant_method": "bitnet",
                                                           "quantization_mode": "offline"}}).encode(),
        "config-llama.json": json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                         "hidden_act": "silu", "hidden_size": 4096, "num_hidden_layers": 32,
                                         "num_attention_heads": 32, "num_key_value_heads": 8,
                                         "intermediate_size": 14336, "vocab_size": 128256, "rope_theta": 500000.0,
                                         "rope_scaling": None, "tie_word_embeddings": False,
                                         "quantization_config": {"quant_method": "bitnet",
                                                                 "modules_to_not_convert": None}}).encode(),
        "escapes.json": b'{"hidden_size": 64, "s": "\\u00e9\\ud83d\\ude00\\n", "n": [-1.5e3, 0, true, null]}',
    }
    for n, b in sfiles.items():
        with open(os.path.join(s, n), "wb") as f:
            f.write(b)


if __name__ == "__main__":
    main()
