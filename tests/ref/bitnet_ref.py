#!/usr/bin/python3
"""bitnet_ref.py: the independent reference forward pass of BitNet b1.58 (plain numpy).

Owns the oracle the C engine is compared against (issue 5). Written from
MODEL-FORMATS.md 1.1-1.4 and 2.1-2.5 only; it shares no code with the C engine. It
favours being obviously correct over speed: every step of MODEL-FORMATS 1.2 is one short
function below, vectorised with numpy but without fusions or reordering.

Precision (float32 values everywhere, like bitnet.cpp; the exceptions are listed):
- Every intermediate vector (residual stream, norm outputs, q/k/v, attention output,
  relu^2 product, logits) is float32, and every elementwise operation is done in float32
  in the order MODEL-FORMATS gives (e.g. RMSNorm: x*scale, then *weight).
- float64 is used for reductions only, each rounded to float32 once at the end:
  * RMSNorm sum of squares: (x*x) in float32, summed in float64, like FORK ggml
    (ggml_float); then mean -> float32, scale = 1/sqrtf(mean+eps) in float32.
  * activation absmax: max|x| in float64 starting at 1e-5, s = float32(127/max), as FORK
    quantize_row_i8_s.
  * softmax: max and x-max in float32; exp evaluated in float64 and rounded to float32
    (numpy 1.24's float32 exp missed the correctly rounded value for 39% of 1e6 random
    inputs on this machine; glibc's expf almost never does);
    the sum of exps in float64, then one float32 multiply by float32(1/sum), like FORK
    ggml_vec_soft_max_f32.
  * dot products that are float in bitnet.cpp (q.k, p.v, the LM head): products and sum
    in float64 (products of f32/f16 values are exact in float64), then rounded to float32.
    This is the "nearly exact" value, so any float32 implementation differs from it only
    by its own rounding.
- Ternary x int8 dot products are exact integers: computed as a float64 matrix product of
  integer-valued matrices, which is exact because every partial sum is an integer below
  2^53 (|sum| <= 128*K). y = float32(dot) / s * weight_scale in float32 (FORK I2_S matmul).
- Quantizer rounding: round half to even (np.rint on the float32 product x*s), clip to
  [-128, 127] (FORK nearest_int). --act-round away selects C round() (half away from
  zero), which some bitnet.cpp versions use.
- RoPE: theta_j = pos * base^(-2j/n_rot) and its cos/sin in float64, rounded to float32,
  then the rotation in float32. --rope ggml instead reproduces ggml's float32 incremental
  theta (theta_scale = powf(base, -2/n_rot), theta *= theta_scale per pair), which drifts
  from the exact angle at large positions.
- KV cache in float32 (bitnet.cpp's default is F16: --kv-f16 rounds K, V, and the q and
  softmax operands ggml converts for its F16 matmuls, to float16). --kv-type f16|bf16
  instead rounds only K and V, once, to nearest even as they are stored, and computes with
  them exactly (widened) as tern's engine does with its KV cache (node/README.md).
- LM head: the F16 token_embd converted exactly; --lm-head-f16-act rounds the final
  normalised activation to F16 first, as ggml's F16 mul_mat does.

The LM head is token_embd (tied), or output.weight when the file has one (untied, as HF's
modeling code does with tie_word_embeddings false and tern does; the FORK graph never reads
output.weight, MODEL-FORMATS 1.2); the token lookup always reads token_embd.

Architectures: "bitnet-b1.58", "bitnet-25", "bitnet-1.58" (FORK build_bitnet_158), and
"bitnet" only with the b1.58 tensor set (FORK's own "bitnet" graph, with SiLU and separate
*.scale tensors, is a different model and is refused).

Llama-style ternary models (issue 17: HF1BitLLM/Llama3-8B-1.58, tiiuae/Falcon3-*-1.58bit),
from transformers' modeling_llama.py and integrations/bitnet.py (BitLinear):
  h += o(attn(q, k, v)) and h += down(silu(gate(f)) * up(f)): no sub-norms; each
  projection y = y_int / (input_scale * weight_scale) with the same per-token absmax int8
  activations (W = ternary / weight_scale); silu(g) = g / (1 + exp(-g)), each step in
  float32 (exp in float64, rounded), then * up in float32.
Read two ways, on purpose not the way tern reads them:
  - general.architecture "llama" GGUF (bitnet.cpp's converter): q/k rows are kept in the
    file's permuted order and rotated with llama.cpp's interleaved RoPE (pairs 2i, 2i+1)
    instead of being un-permuted; projections I2_S, or F16/F32/BF16 holding
    ternary / weight_scale (every element 0 or +-a: W = sign * a, anything else refused);
  - a Hugging Face checkpoint directory (LlamaForCausalLM config.json, model.safetensors
    with uint8 [out/4, in] packed weights + weight_scale): HF row order, rotate_half RoPE,
    the BitLinear divide.

CLI:
  /usr/bin/python3 tests/ref/bitnet_ref.py MODEL.gguf --tokens 1,2,3 [--generate N]
      [--layers L] [--chunk C] [--out logits.npy] [--json [--margins]]
Row i of the logits is the output after feeding token i of the sequence (the prompt, then
the greedy tokens); with --generate N there are len(prompt) + N - 1 rows and generated
token k is argmax(row len(prompt)-1+k) (lowest id on ties). --margins adds, per row, the
smallest distance of any int8 rounding that row depends on to a tie (tie_margin,
row_margins) and the top-2 logit gap: rows with a tiny margin may legitimately differ in
another correct implementation.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.dont_write_bytecode = True  # keep the source tree clean of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402

ARCHS_B158 = ("bitnet-b1.58", "bitnet-25", "bitnet-1.58")
# The four distinct inputs of the BitLinears of a layer (MODEL-FORMATS 1.3), in order.
SITES = ("attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm")
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


class ModelError(Exception):
    pass


class Options:
    """Numerics switches (defaults: MODEL-FORMATS as written)."""

    def __init__(self, rope="exact", act_round="even", kv_f16=False, lm_head_f16_act=False, kv_type="f32"):
        if rope not in ("exact", "ggml") or act_round not in ("even", "away") or kv_type not in KV_TYPES:
            raise ValueError("bad options")
        self.rope, self.act_round, self.kv_f16, self.lm_head_f16_act = rope, act_round, kv_f16, lm_head_f16_act
        self.kv_type = kv_type


KV_TYPES = ("f32", "f16", "bf16")


def kv_round(x, kv_type):
    """float32 x as a KV cache of kv_type stores it: rounded to nearest, ties to even
    (numpy's float16 cast; bfloat16 by the bits, which numpy has no type for), then
    widened back to float32 exactly."""
    if kv_type == "f16":
        return x.astype(np.float16).astype(np.float32)
    if kv_type == "bf16":
        u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        return u.astype(np.uint32).view(np.float32)
    return x


# ---- the operations of MODEL-FORMATS 1.2-1.4 ---------------------------------------------

def rms_norm(x, w, eps):
    """x: (T, n) float32, w: (n,) float32 -> (T, n) float32 (see the header for precision)."""
    x = np.asarray(x, np.float32)
    ss = (x * x).astype(np.float64).sum(axis=-1)
    mean = (ss / x.shape[-1]).astype(np.float32)
    scale = np.float32(1.0) / np.sqrt(mean + np.float32(eps))
    return (x * scale[:, None]) * w


def quantize_act(x, act_round="even"):
    """Per-row absmax int8 quantization (MODEL-FORMATS 1.3). x: (T, K) float32 ->
    (q: (T, K) int8, s: (T,) float32) with x ~ q / s."""
    x = np.asarray(x, np.float32)
    amax = np.maximum(np.abs(x).astype(np.float64).max(axis=-1), 1e-5)
    s = (127.0 / amax).astype(np.float32)
    prod = x * s[:, None]  # float32 product, as in C (x[i] * s)
    if act_round == "even":
        r = np.rint(prod)
    else:
        r = np.sign(prod) * np.floor(np.abs(prod.astype(np.float64)) + 0.5)
    return np.clip(r, -128, 127).astype(np.int8), s


def tie_margin(x):
    """Per row of x (T, K): the smallest distance of the quantizer's float32 product x*s to a
    rounding tie k+0.5, in int8 steps (0 = exactly on a tie). Another implementation whose
    inputs differ by a few float32 roundings (e.g. the attention output, whose elements can
    lose many relative bits to cancellation) may round an element within ~1e-5 of a tie the
    other way: the "chaos" of DESIGN.md, Numerics."""
    x = np.asarray(x, np.float32)
    amax = np.maximum(np.abs(x).astype(np.float64).max(axis=-1), 1e-5)
    s = (127.0 / amax).astype(np.float32)
    prod = (x * s[:, None]).astype(np.float64)
    return np.abs(prod - np.floor(prod) - 0.5).min(axis=-1)


def bitlinear(x, w, w_scale, act_round="even", divide=False):
    """x: (T, K) float32, w: (N, K) int8 ternary, w_scale float32 -> (T, N) float32.
    divide: transformers' BitLinear, y = y_int / (input_scale * weight_scale).
    w_scale (N, K/64) instead: ggml Q2_0, weight (code - 1) * d of its group of 64 along the
    row, dequantized exactly in float64 and multiplied with the same int8 activations, then
    / s (the group sums' float rounding is tern's; the difference is ~1e-7 relative)."""
    q, s = quantize_act(x, act_round)
    assert 128 * w.shape[1] < 2**53
    if np.ndim(w_scale) == 2:
        wd = w.astype(np.float64) * np.repeat(w_scale.astype(np.float64), 64, axis=1)
        return ((q.astype(np.float64) @ wd.T) / s[:, None].astype(np.float64)).astype(np.float32)
    dot = q.astype(np.float64) @ w.astype(np.float64).T  # exact integers
    if divide:
        return dot.astype(np.float32) / (s[:, None] * np.float32(w_scale))
    return (dot.astype(np.float32) / s[:, None]) * np.float32(w_scale)


def rope_cos_sin(positions, n_rot, base, mode="exact"):
    """cos, sin: (T, n_rot/2) float32 for the NEOX pairs (j, j + n_rot/2)."""
    half = n_rot // 2
    pos = np.asarray(positions, np.int64)
    if mode == "exact":
        j = np.arange(half, dtype=np.float64)
        theta = pos[:, None].astype(np.float64) * np.power(float(base), -2.0 * j / n_rot)[None, :]
        return np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    theta_scale = np.power(np.float32(base), np.float32(-2.0) / np.float32(n_rot))
    theta = pos.astype(np.float32)
    cos = np.empty((len(pos), half), np.float32)
    sin = np.empty((len(pos), half), np.float32)
    for i in range(half):
        cos[:, i] = np.cos(theta)
        sin[:, i] = np.sin(theta)
        theta = (theta * theta_scale).astype(np.float32)
    return cos, sin


def rope_neox(x, cos, sin, n_rot):
    """x: (T, n_heads, head_dim) float32; rotates dims [0, n_rot) in pairs (j, j+n_rot/2)."""
    half = n_rot // 2
    out = x.copy()
    x0, x1 = x[:, :, :half], x[:, :, half:n_rot]
    c, s = cos[:, None, :], sin[:, None, :]
    out[:, :, :half] = x0 * c - x1 * s
    out[:, :, half:n_rot] = x0 * s + x1 * c
    return out


def attention(q, k_all, v_all, positions, kv_f16=False):
    """Causal GQA attention for new tokens. q: (T, n_head, hd) float32 (RoPE applied);
    k_all, v_all: (n_cache, n_head_kv, hd) float32, cache slot = position; token t
    attends to slots 0..positions[t]. Returns (T, n_head*hd) float32."""
    T, n_head, hd = q.shape
    n_kv = k_all.shape[1]
    group = n_head // n_kv
    scale = np.float32(1.0) / np.sqrt(np.float32(hd))
    if kv_f16:
        q = q.astype(np.float16).astype(np.float32)
    out = np.empty((T, n_head, hd), np.float32)
    kv_head = np.arange(n_head) // group                      # query head h uses KV head h // group
    k64 = k_all.astype(np.float64)[:, kv_head, :]             # (n_cache, n_head, hd)
    v64 = v_all.astype(np.float64)[:, kv_head, :]
    for t in range(T):
        n = int(positions[t]) + 1
        kq = np.einsum("hd,jhd->hj", q[t].astype(np.float64), k64[:n]).astype(np.float32)  # (n_head, n)
        z = kq * scale
        m = z.max(axis=-1, keepdims=True)
        e = np.exp((z - m).astype(np.float64)).astype(np.float32)  # ~correctly rounded expf
        inv = (1.0 / e.astype(np.float64).sum(axis=-1, keepdims=True)).astype(np.float32)
        p = e * inv
        if kv_f16:
            p = p.astype(np.float16).astype(np.float32)
        out[t] = np.einsum("hj,jhd->hd", p.astype(np.float64), v64[:n]).astype(np.float32)
    return out.reshape(T, n_head * hd)


def relu_sqr_mul(g, u):
    r = np.maximum(g, np.float32(0))
    return (r * r) * u


def silu_mul(g, u):
    """Llama's act_fn(gate) * up with act_fn = SiLU (hidden_act "silu"): g / (1 + exp(-g)) in
    float32 step by step like every elementwise operation here, exp as in attention (float64,
    rounded to float32), then * up."""
    g = np.asarray(g, np.float32)
    with np.errstate(over="ignore"):
        e = np.exp(-g.astype(np.float64)).astype(np.float32)  # inf past float32's range: g / inf = -0
    return (g / (np.float32(1) + e)) * u


def rope_interleaved(x, cos, sin, n_rot):
    """llama.cpp's normal (non-NEOX) RoPE: rotates the pairs (2i, 2i+1) with frequency i."""
    out = x.copy()
    x0, x1 = x[:, :, 0:n_rot:2], x[:, :, 1:n_rot:2]
    c, s = cos[:, None, :], sin[:, None, :]
    out[:, :, 0:n_rot:2] = x0 * c - x1 * s
    out[:, :, 1:n_rot:2] = x0 * s + x1 * c
    return out


def ternary_of_float(w, what):
    """A float matrix whose every element is 0 or +-a (one a): (int8 signs, float32 a)."""
    w = np.asarray(w, np.float32)
    mags = np.unique(np.abs(w[w != 0]))
    if len(mags) != 1:
        raise ModelError("%s: a float projection must hold ternary / weight_scale (one magnitude), has %d"
                         % (what, len(mags)))
    return np.sign(w).astype(np.int8), np.float32(mags[0])


def read_safetensors(path):
    """{name: numpy array} of a safetensors file (F32, F16, BF16 -> float32; U8 as is)."""
    import struct
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base, out = 8 + n, {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        buf = raw[base + a:base + b]
        dt = t["dtype"]
        if dt == "BF16":
            arr = gguf.bf16_bits_to_f32(np.frombuffer(buf, "<u2"))
        elif dt in ("F32", "F16", "U8"):
            arr = np.frombuffer(buf, {"F32": "<f4", "F16": "<f2", "U8": "u1"}[dt]).astype(
                np.uint8 if dt == "U8" else np.float32)
        else:
            raise ModelError("%s: tensor %s has dtype %s" % (path, name, dt))
        out[name] = arr.reshape(t["shape"])
    return out


def unpack_rows(packed):
    """transformers' unpack_weights: uint8 [P, K] -> int8 [4P, K], row i*P + p from bits 2i of row p."""
    codes = [((packed >> (2 * i)) & 3).astype(np.int8) - 1 for i in range(4)]
    if any((c == 2).any() for c in codes):
        raise ModelError("packed weight holds the invalid code 3")
    return np.concatenate(codes, axis=0)


# ---- the model ---------------------------------------------------------------------------

class Layer:
    pass


class BitNetModel:
    """A BitNet b1.58 GGUF loaded for reference inference. n_layers cuts the model to its
    first L layers (the final norm and LM head still apply)."""

    def __init__(self, path, n_layers=None, options=None, verbose=True):
        self.opt = options or Options()
        self.path = str(path)
        # what the architecture changes (see the header): defaults are BitNet b1.58's
        self.sub_norms, self.ffn_act, self.rope = True, relu_sqr_mul, rope_neox
        self.qk_norm = False
        self.divide = False  # BitLinear's y_int / (input_scale * weight_scale)
        if os.path.isdir(self.path):
            self._load_hf(n_layers)
            return
        try:
            g = gguf.GGUFReader(path)
        except gguf.GGUFError as e:
            raise ModelError(str(e))
        self.g = g
        arch = g.get("general.architecture")
        if arch == "bitnet":
            # FORK's build_bitnet (SiLU, separate *.scale tensors) is a different graph; a file
            # with this name and the b1.58 tensor set is run as b1.58, anything else refused.
            if any(n.endswith(".scale") for n in g.tensors) or "blk.0.attn_sub_norm.weight" not in g.tensors:
                raise ModelError("%s: architecture 'bitnet' with the old 1bitLLM tensor set (separate "
                                 "*.scale tensors / no sub-norms) is not the b1.58 graph" % self.path)
            if verbose:
                print("warning: %s: arch 'bitnet' with b1.58 tensors, run as bitnet-b1.58" % self.path,
                      file=sys.stderr)
        elif arch == "llama":
            self.sub_norms, self.ffn_act, self.rope = False, silu_mul, rope_interleaved
        elif arch == "qwen3":
            # modeling_qwen3.py: Llama's graph plus RMSNorm over each head of q and k before
            # RoPE (rotate_half, NEOX pairs; the converter leaves q/k rows unpermuted)
            self.sub_norms, self.ffn_act, self.rope, self.qk_norm = False, silu_mul, rope_neox, True
        elif arch not in ARCHS_B158:
            raise ModelError("%s: unsupported architecture %r (need one of %s, 'bitnet', 'llama' or 'qwen3')"
                             % (self.path, arch, ", ".join(ARCHS_B158)))

        def hp(key, default=None, kind=int):
            v = g.get("%s.%s" % (arch, key), default)
            if v is None:
                raise ModelError("%s: missing key %s.%s" % (self.path, arch, key))
            return kind(v)

        self.arch = arch
        self.n_embd = hp("embedding_length")
        self.n_layer_file = hp("block_count")
        self.n_ff = hp("feed_forward_length")
        self.n_head = hp("attention.head_count")
        self.n_head_kv = hp("attention.head_count_kv", self.n_head)
        self.eps = np.float32(hp("attention.layer_norm_rms_epsilon", 1e-5, float))
        self.theta = hp("rope.freq_base", 10000.0, float)
        self.n_ctx_train = hp("context_length", 4096)
        if self.n_head <= 0 or self.n_embd % self.n_head or self.n_head_kv <= 0 or self.n_head % self.n_head_kv:
            raise ModelError("%s: inconsistent heads: n_embd %d, heads %d, kv heads %d"
                             % (self.path, self.n_embd, self.n_head, self.n_head_kv))
        self.head_dim = self.n_embd // self.n_head
        self.n_rot = hp("rope.dimension_count", self.head_dim)
        if self.n_rot % 2 or self.n_rot > self.head_dim:
            raise ModelError("%s: rope.dimension_count %d vs head_dim %d" % (self.path, self.n_rot, self.head_dim))
        self.n_layer = self.n_layer_file if n_layers is None else int(n_layers)
        if not 0 <= self.n_layer <= self.n_layer_file:
            raise ModelError("%s: --layers %d outside 0..%d" % (self.path, self.n_layer, self.n_layer_file))

        self.embd = self._embedding()                         # (n_vocab, n_embd) float16 or float32
        self.n_vocab = self.embd.shape[0]
        self.output_norm = self._vec("output_norm.weight", self.n_embd)
        self.tied = "output.weight" not in g.tensors
        self.head = self.embd if self.tied else self._embedding("output.weight")  # (n_vocab, n_embd)
        if self.head.shape[0] != self.n_vocab:
            raise ModelError("%s: output.weight has %d rows, token_embd %d" % (self.path, self.head.shape[0],
                                                                               self.n_vocab))
        kvw = self.n_head_kv * self.head_dim
        shapes = {"attn_q": (self.n_embd, self.n_embd), "attn_k": (kvw, self.n_embd), "attn_v": (kvw, self.n_embd),
                  "attn_output": (self.n_embd, self.n_embd), "ffn_gate": (self.n_ff, self.n_embd),
                  "ffn_up": (self.n_ff, self.n_embd), "ffn_down": (self.n_embd, self.n_ff)}
        self.layers = []
        for i in range(self.n_layer):
            L = Layer()
            L.attn_norm = self._vec("blk.%d.attn_norm.weight" % i, self.n_embd)
            L.ffn_norm = self._vec("blk.%d.ffn_norm.weight" % i, self.n_embd)
            if self.sub_norms:
                L.attn_sub_norm = self._vec("blk.%d.attn_sub_norm.weight" % i, self.n_embd)
                L.ffn_sub_norm = self._vec("blk.%d.ffn_sub_norm.weight" % i, self.n_ff)
            if self.qk_norm:
                L.q_norm = self._vec("blk.%d.attn_q_norm.weight" % i, self.head_dim)
                L.k_norm = self._vec("blk.%d.attn_k_norm.weight" % i, self.head_dim)
            for name in LINEARS:
                tname = "blk.%d.%s.weight" % (i, name)
                if tname not in g.tensors:
                    raise ModelError("%s: missing tensor %s" % (self.path, tname))
                t = g.tensors[tname]
                if arch in ("llama", "qwen3") and t.gtype in (gguf.F32, gguf.F16, gguf.BF16) and t.shape == shapes[name]:
                    setattr(L, name, ternary_of_float(g.tensor(tname), "%s: %s" % (self.path, tname)))
                    continue
                if t.gtype == gguf.Q2_0 and t.shape == shapes[name]:
                    # group-scaled: (w, d) with d (rows, cols/64), bitlinear dequantizes per group
                    setattr(L, name, gguf.q2_0_unpack(g.raw(tname), *shapes[name]))
                    continue
                if t.gtype != gguf.I2_S:
                    raise ModelError("%s: %s is %s; the reference needs i2_s ternary weights"
                                     % (self.path, tname, gguf.TYPE_NAMES.get(t.gtype, t.gtype)))
                if t.shape != shapes[name]:
                    raise ModelError("%s: %s has ne %s, expected {%d, %d}" % (self.path, tname, list(t.ne),
                                                                              shapes[name][1], shapes[name][0]))
                try:
                    w, s = g.ternary(tname)                   # w: (out, in) int8
                except gguf.GGUFError as e:
                    raise ModelError(str(e))
                setattr(L, name, (w, s))
            self.layers.append(L)

    def _load_hf(self, n_layers):
        """A LlamaForCausalLM ternary checkpoint (config.json + *.safetensors)."""
        d = self.path
        try:
            with open(os.path.join(d, "config.json")) as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            raise ModelError("%s: config.json: %s" % (d, e))
        if cfg.get("architectures", [None])[0] != "LlamaForCausalLM" or cfg.get("hidden_act", "silu") != "silu":
            raise ModelError("%s: the reference reads LlamaForCausalLM (silu) checkpoints only" % d)
        q = cfg.get("quantization_config") or {}
        if q.get("quant_method") != "bitnet" or q.get("linear_class") == "autobitlinear":
            raise ModelError("%s: need quantization_config bitnet with BitLinear (no linear_class)" % d)
        if cfg.get("rope_scaling") is not None:
            raise ModelError("%s: rope_scaling is not modelled" % d)
        self.arch = "llama"
        self.sub_norms, self.ffn_act, self.rope, self.divide = False, silu_mul, rope_neox, True
        t = {}
        for fn in sorted(os.listdir(d)):
            if fn.endswith(".safetensors"):
                t.update(read_safetensors(os.path.join(d, fn)))
        self.n_embd, self.n_layer_file = cfg["hidden_size"], cfg["num_hidden_layers"]
        self.n_ff, self.n_head = cfg["intermediate_size"], cfg["num_attention_heads"]
        self.n_head_kv = cfg.get("num_key_value_heads", self.n_head)
        self.eps = np.float32(cfg.get("rms_norm_eps", 1e-5))
        self.theta = float(cfg.get("rope_theta", 10000.0))
        self.n_ctx_train = cfg.get("max_position_embeddings", 2048)
        self.head_dim = self.n_rot = self.n_embd // self.n_head
        self.n_layer = self.n_layer_file if n_layers is None else int(n_layers)
        self.embd = t["model.embed_tokens.weight"]
        self.n_vocab = self.embd.shape[0]
        self.tied = "lm_head.weight" not in t
        self.head = self.embd if self.tied else t["lm_head.weight"]  # (n_vocab, n_embd)
        if self.head.shape != self.embd.shape:
            raise ModelError("%s: lm_head.weight is %s, embed_tokens %s" % (d, self.head.shape, self.embd.shape))
        self.output_norm = t["model.norm.weight"]
        names = (("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
                 ("attn_output", "self_attn.o_proj"), ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"),
                 ("ffn_down", "mlp.down_proj"))
        self.layers = []
        for i in range(self.n_layer):
            p = "model.layers.%d." % i
            L = Layer()
            L.attn_norm = t[p + "input_layernorm.weight"]
            L.ffn_norm = t[p + "post_attention_layernorm.weight"]
            for name, hf in names:
                ws = t[p + hf + ".weight_scale"].reshape(-1)
                setattr(L, name, (unpack_rows(t[p + hf + ".weight"]), np.float32(ws[0])))
            self.layers.append(L)

    def _vec(self, name, n):
        t = self.g.tensors.get(name)
        if t is None:
            raise ModelError("%s: missing tensor %s" % (self.path, name))
        if t.gtype not in (gguf.F32, gguf.F16, gguf.BF16) or t.shape != (n,):
            raise ModelError("%s: %s must be a float vector of %d, is %s %s"
                             % (self.path, name, n, gguf.TYPE_NAMES.get(t.gtype, t.gtype), list(t.ne)))
        return np.ascontiguousarray(self.g.tensor(name), np.float32)

    def _embedding(self, name="token_embd.weight"):
        t = self.g.tensors.get(name)
        if t is None:
            raise ModelError("%s: missing tensor %s" % (self.path, name))
        if len(t.ne) != 2 or t.ne[0] != self.n_embd:
            raise ModelError("%s: %s has ne %s, expected {%d, n_vocab}" % (self.path, name, list(t.ne), self.n_embd))
        if t.gtype == gguf.F16:
            return self.g.tensor_f16_view(name)              # converted per use: 2b4t would be 1.3 GB as f32
        if t.gtype in (gguf.F32, gguf.BF16):
            return self.g.tensor(name)
        raise ModelError("%s: %s has type %s (need f16, f32 or bf16)"
                         % (self.path, name, gguf.TYPE_NAMES.get(t.gtype, t.gtype)))

    # -- the forward pass
    def new_cache(self, n_ctx):
        return KVCache(self.n_layer, n_ctx, self.n_head_kv, self.head_dim)

    def forward(self, tokens, cache, margins=None):
        """Feeds `tokens` at positions cache.n_past.. and returns their logits (T, n_vocab)
        float32; appends their K/V to the cache. If `margins` is a list, appends a
        (T, n_layer, 4) array of tie_margin at the SITES of every layer."""
        tokens = np.asarray(tokens, np.int64)
        T = len(tokens)
        if T == 0:
            return np.zeros((0, self.n_vocab), np.float32)
        if tokens.min() < 0 or tokens.max() >= self.n_vocab:
            raise ModelError("token id outside 0..%d" % (self.n_vocab - 1))
        positions = np.arange(cache.n_past, cache.n_past + T)
        if positions[-1] >= cache.n_ctx:
            raise ModelError("context full: %d positions > n_ctx %d" % (positions[-1] + 1, cache.n_ctx))
        cos, sin = rope_cos_sin(positions, self.n_rot, self.theta, self.opt.rope)
        h = np.asarray(self.embd[tokens], np.float32)         # (T, n_embd)
        hd, ar = self.head_dim, self.opt.act_round
        marg = np.full((T, self.n_layer, len(SITES)), np.inf)
        dv = self.divide
        for li, L in enumerate(self.layers):
            a = rms_norm(h, L.attn_norm, self.eps)
            q = bitlinear(a, *L.attn_q, ar, dv).reshape(T, self.n_head, hd)
            k = bitlinear(a, *L.attn_k, ar, dv).reshape(T, self.n_head_kv, hd)
            v = bitlinear(a, *L.attn_v, ar, dv).reshape(T, self.n_head_kv, hd)
            if self.qk_norm:
                q = rms_norm(q.reshape(-1, hd), L.q_norm, self.eps).reshape(T, self.n_head, hd)
                k = rms_norm(k.reshape(-1, hd), L.k_norm, self.eps).reshape(T, self.n_head_kv, hd)
            q = self.rope(q, cos, sin, self.n_rot)
            k = self.rope(k, cos, sin, self.n_rot)
            if self.opt.kv_f16:
                k = k.astype(np.float16).astype(np.float32)
                v = v.astype(np.float16).astype(np.float32)
            k, v = kv_round(k, self.opt.kv_type), kv_round(v, self.opt.kv_type)
            cache.k[li][positions] = k
            cache.v[li][positions] = v
            n = positions[-1] + 1
            o = attention(q, cache.k[li][:n], cache.v[li][:n], positions, self.opt.kv_f16)
            if self.sub_norms:
                o = rms_norm(o, L.attn_sub_norm, self.eps)
            h = h + bitlinear(o, *L.attn_output, ar, dv)
            f = rms_norm(h, L.ffn_norm, self.eps)
            m = self.ffn_act(bitlinear(f, *L.ffn_gate, ar, dv), bitlinear(f, *L.ffn_up, ar, dv))
            if self.sub_norms:
                m = rms_norm(m, L.ffn_sub_norm, self.eps)
            h = h + bitlinear(m, *L.ffn_down, ar, dv)
            if margins is not None:
                for si, xin in enumerate((a, o, f, m)):
                    marg[:, li, si] = tie_margin(xin)
        cache.n_past += T
        if margins is not None:
            margins.append(marg)
        x = rms_norm(h, self.output_norm, self.eps)
        if self.opt.lm_head_f16_act:
            x = x.astype(np.float16).astype(np.float32)
        return self.lm_head(x)

    def lm_head(self, x, rows_per_chunk=8192):
        """logits (T, n_vocab) float32 = head . x (token_embd, or output.weight when untied), in float64,
        chunked over the vocabulary."""
        x64 = np.ascontiguousarray(np.asarray(x, np.float64).T)  # (n_embd, T)
        out = np.empty((x.shape[0], self.n_vocab), np.float32)
        # One reused conversion buffer: fresh 170 MB arrays per chunk cost more in page faults than the product.
        buf = np.empty((min(rows_per_chunk, self.n_vocab), self.n_embd), np.float64)
        for r in range(0, self.n_vocab, rows_per_chunk):
            n = min(rows_per_chunk, self.n_vocab - r)
            np.copyto(buf[:n], self.head[r:r + n])
            out[:, r:r + n] = (buf[:n] @ x64).T.astype(np.float32)
        return out

    def run(self, prompt, n_generate=0, chunk=None, margins=None):
        """Feeds the prompt (in chunks of `chunk` tokens, default all at once), then
        generates greedily. Returns (logits (rows, n_vocab), generated token list). With
        `margins` a list, appends the (rows, n_layer, 4) tie margins (see forward)."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ModelError("empty prompt")
        cache = self.new_cache(len(prompt) + max(n_generate, 1))
        step = chunk or len(prompt)
        parts = [] if margins is not None else None
        rows = [self.forward(prompt[i:i + step], cache, parts) for i in range(0, len(prompt), step)]
        generated = []
        for k in range(n_generate):
            tok = int(np.argmax(rows[-1][-1]))
            generated.append(tok)
            if k + 1 < n_generate:
                rows.append(self.forward([tok], cache, parts))
        if margins is not None:
            margins.append(np.concatenate(parts, axis=0))
        return np.concatenate(rows, axis=0), generated


def row_margins(marg, sites=SITES):
    """From (rows, n_layer, 4) site margins: per row the smallest margin (int8 steps) among the
    `sites` its logits depend on, and where it is ("row j layer l site"). Row t depends on
    all of its own sites and on the sites of earlier rows that feed their K/V: every site of
    the layers before the last, and the last layer's attn_norm (the k/v input)."""
    T, nl, _ = marg.shape
    out, where = [], []
    if nl == 0:
        return [float("inf")] * T, [""] * T
    marg = marg.copy()
    marg[:, :, [i for i, n in enumerate(SITES) if n not in sites]] = np.inf
    feed = marg.copy()
    feed[:, nl - 1, 1:] = np.inf                  # a row's last-layer o/ffn inputs feed no later row
    best, best_at = np.inf, ""
    for t in range(T):
        own = marg[t]
        i = np.unravel_index(np.argmin(own), own.shape)
        cand, cand_at = own[i], "row %d layer %d %s" % (t, i[0], SITES[i[1]])
        if best < cand:
            cand, cand_at = best, best_at
        out.append(float(cand))
        where.append(cand_at)
        j = np.unravel_index(np.argmin(feed[t]), feed[t].shape)
        if feed[t][j] < best:
            best, best_at = feed[t][j], "row %d layer %d %s" % (t, j[0], SITES[j[1]])
    return out, where


class KVCache:
    def __init__(self, n_layer, n_ctx, n_head_kv, head_dim):
        self.n_ctx, self.n_past = n_ctx, 0
        self.k = [np.zeros((n_ctx, n_head_kv, head_dim), np.float32) for _ in range(n_layer)]  # slot = position
        self.v = [np.zeros((n_ctx, n_head_kv, head_dim), np.float32) for _ in range(n_layer)]


def parse_tokens(s):
    try:
        toks = [int(t) for t in s.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise ModelError("--tokens: expected comma-separated integers, got %r" % s)
    if not toks:
        raise ModelError("--tokens: empty")
    return toks


def main(argv=None):
    ap = argparse.ArgumentParser(description="Reference BitNet b1.58 forward pass (numpy).")
    ap.add_argument("model", help="BitNet b1.58 GGUF (i2_s weights), llama GGUF, or a LlamaForCausalLM "
                                  "ternary checkpoint directory")
    ap.add_argument("--tokens", required=True, help="prompt token ids, comma-separated")
    ap.add_argument("--generate", type=int, default=0, help="greedy tokens to generate")
    ap.add_argument("--layers", type=int, default=None, help="use only the first L layers")
    ap.add_argument("--chunk", type=int, default=None, help="feed the prompt in chunks of this many tokens")
    ap.add_argument("--out", help="write the logits (rows, n_vocab) float32 as .npy")
    ap.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    ap.add_argument("--margins", action="store_true",
                    help="add per-row tie margins and top-2 logit gaps to the JSON (see row_margins)")
    ap.add_argument("--margin-sites", default="all",
                    help="comma-separated sites the margins consider (default all: %s)" % ",".join(SITES))
    ap.add_argument("--rope", choices=("exact", "ggml"), default="exact")
    ap.add_argument("--act-round", choices=("even", "away"), default="even")
    ap.add_argument("--kv-f16", action="store_true")
    ap.add_argument("--kv-type", choices=KV_TYPES, default="f32",
                    help="KV cache element type: K and V rounded to it as stored (tern-run --kv-type)")
    ap.add_argument("--lm-head-f16-act", action="store_true")
    a = ap.parse_args(argv)
    try:
        if a.generate < 0 or (a.chunk is not None and a.chunk <= 0):
            raise ModelError("--generate must be >= 0 and --chunk > 0")
        prompt = parse_tokens(a.tokens)
        t0 = time.time()
        m = BitNetModel(a.model, a.layers, Options(a.rope, a.act_round, a.kv_f16, a.lm_head_f16_act,
                                                      a.kv_type))
        t1 = time.time()
        marg = [] if a.margins else None
        logits, gen = m.run(prompt, a.generate, a.chunk, marg)
        t2 = time.time()
    except ModelError as e:
        print("bitnet_ref: %s" % e, file=sys.stderr)
        return 1
    if a.out:
        np.save(a.out, logits)
    if not np.all(np.isfinite(logits)):
        print("warning: non-finite logits", file=sys.stderr)
    summary = {"model": a.model, "arch": m.arch, "n_layer": m.n_layer, "n_vocab": m.n_vocab,
               "prompt": prompt, "generated": gen, "rows": int(logits.shape[0]),
               "argmax": [int(i) for i in np.argmax(logits, axis=-1)],
               "load_s": round(t1 - t0, 3), "forward_s": round(t2 - t1, 3)}
    if a.margins:
        sites = SITES if a.margin_sites == "all" else tuple(a.margin_sites.split(","))
        if not set(sites) <= set(SITES):
            print("bitnet_ref: --margin-sites: unknown site in %r (known: %s)" % (a.margin_sites, ",".join(SITES)),
                  file=sys.stderr)
            return 1
        summary["tie_margin"], summary["tie_margin_at"] = row_margins(marg[0], sites)
        top2 = np.sort(logits, axis=-1)[:, -2:]
        summary["top2_gap"] = [float(g) for g in top2[:, 1] - top2[:, 0]]
    if a.json:
        print(json.dumps(summary))
    else:
        print("%s: %d layers, %d rows of %d logits in %.2f s (load %.2f s); generated: %s"
              % (a.model, m.n_layer, logits.shape[0], m.n_vocab, t2 - t1, t1 - t0,
                 ",".join(map(str, gen)) or "-"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
