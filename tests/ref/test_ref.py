#!/usr/bin/python3
"""test_ref.py: self-tests of the reference GGUF reader/writer and forward pass (no C code).

Owns the evidence that the oracle itself is right: the GGUF round trip of every value and
tensor type, I2_S against bytes built by hand from MODEL-FORMATS 2.3, the quantizer's tie
rounding, RoPE and causality properties, KV-cache consistency, and the vectorised forward
pass against a second, deliberately naive formulation (per-token loops, exactly rounded
sums with math.fsum, I2_S decoded bit by bit, no KV cache: the whole sequence recomputed
for every step). Prints one line per case and "N passed, N failed, 0 skipped"; exits 1 on failure.
Run: /usr/bin/python3 tests/ref/test_ref.py
"""

import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep the source tree clean of __pycache__
sys.path.insert(0, HERE)
import bitnet_ref as br  # noqa: E402
import gguf  # noqa: E402
import make_model  # noqa: E402

f32 = np.float32
TMP = tempfile.mkdtemp(prefix="tern-ref-test-")

# A tiny model: GQA (4 query heads on 2 KV heads), head_dim 16, two layers.
TINY = dict(n_embd=64, n_head=4, n_head_kv=2, n_ff=128, vocab=300, n_layer=2)


def tiny_model(name="tiny.gguf", seed=11, **over):
    p = os.path.join(TMP, name)
    kw = dict(TINY)
    kw.update(over)
    make_model.write_model(p, kw["n_embd"], kw["n_head"], kw["n_head_kv"], kw["n_ff"], kw["vocab"],
                           kw["n_layer"], seed=seed, theta=kw.get("theta", 10000.0),
                           arch=kw.get("arch", "bitnet-b1.58"))
    return p


def expect_error(fn, *words):
    try:
        fn()
    except (gguf.GGUFError, br.ModelError) as e:
        msg = str(e)
        for w in words:
            assert w in msg, "error %r lacks %r" % (msg, w)
        return msg
    raise AssertionError("no error raised (expected one mentioning %s)" % (words,))


# ---- GGUF ----------------------------------------------------------------------------

def all_type_kvs():
    V = gguf.Value
    return {
        "t.u8": V(gguf.UINT8, 255), "t.i8": V(gguf.INT8, -128), "t.u16": V(gguf.UINT16, 65535),
        "t.i16": V(gguf.INT16, -32768), "t.u32": V(gguf.UINT32, 2**32 - 1), "t.i32": V(gguf.INT32, -2**31),
        "t.f32": V(gguf.FLOAT32, float(f32(1e-5))), "t.bool": V(gguf.BOOL, True), "t.bool0": V(gguf.BOOL, False),
        "t.str": V(gguf.STRING, "h\u00e9llo \u4e16\u754c \U0001F600"), "t.empty": V(gguf.STRING, ""),
        "t.u64": V(gguf.UINT64, 2**64 - 1), "t.i64": V(gguf.INT64, -2**63), "t.f64": V(gguf.FLOAT64, math.pi),
        "a.u8": V(gguf.ARRAY, [0, 1, 255], gguf.UINT8), "a.i8": V(gguf.ARRAY, [-128, 0, 127], gguf.INT8),
        "a.u16": V(gguf.ARRAY, [0, 65535], gguf.UINT16), "a.i16": V(gguf.ARRAY, [-32768, 32767], gguf.INT16),
        "a.u32": V(gguf.ARRAY, [0, 2**32 - 1], gguf.UINT32), "a.i32": V(gguf.ARRAY, [-2**31, 2**31 - 1], gguf.INT32),
        "a.f32": V(gguf.ARRAY, [0.5, -2.25, 1e30], gguf.FLOAT32),
        "a.bool": V(gguf.ARRAY, [True, False, True], gguf.BOOL),
        "a.str": V(gguf.ARRAY, ["a b", "", "\u0120t", "x" * 300], gguf.STRING),
        "a.u64": V(gguf.ARRAY, [0, 2**64 - 1], gguf.UINT64), "a.i64": V(gguf.ARRAY, [-2**63, 2**63 - 1], gguf.INT64),
        "a.f64": V(gguf.ARRAY, [math.e, -0.0, 1e-300], gguf.FLOAT64), "a.none": V(gguf.ARRAY, [], gguf.UINT32),
    }


def test_gguf_metadata_roundtrip():
    kvs = all_type_kvs()
    for version, align in ((3, 32), (2, 32), (3, 64)):
        p = os.path.join(TMP, "kv-v%d-a%d.gguf" % (version, align))
        w = gguf.GGUFWriter(p, version=version, alignment=align)
        for k, v in kvs.items():
            w.add(k, v)
        w.add("plain.int", 7)
        w.add("plain.list", ["x", "y"])
        w.add_tensor("t", np.arange(3, dtype=np.float32), gguf.F32)
        w.write()
        r = gguf.GGUFReader(p)
        assert r.version == version and r.alignment == align
        for k, v in kvs.items():
            got = r.kv[k]
            assert got.vtype == v.vtype and got.elem_type == v.elem_type, (k, got, v)
            if v.vtype == gguf.ARRAY:
                if v.elem_type == gguf.STRING:
                    assert got.value == v.value, k
                else:
                    want = np.array(v.value, dtype=gguf._SCALAR_NP[v.elem_type])
                    if v.elem_type == gguf.BOOL:
                        want = want.astype(bool)
                    assert got.value.dtype == want.dtype and np.array_equal(got.value, want), k
            else:
                assert got.value == v.value and type(got.value) is type(v.value), (k, got.value, v.value)
        assert r.kv["plain.int"].vtype == gguf.INT32 and r.get("plain.list") == ["x", "y"]
        # A different alignment must be recorded in the file, the default must not.
        assert ("general.alignment" in r.kv) == (align != 32)
        assert r.data_offset % align == 0
        r.close()
    w = gguf.GGUFWriter(os.path.join(TMP, "range.gguf"))
    expect_error(lambda: w.add("a", gguf.Value(gguf.ARRAY, [0, 256], gguf.UINT8)), "key 'a'", "do not fit u8")
    expect_error(lambda: w.add("b", gguf.Value(gguf.INT16, 40000)), "does not fit i16")
    expect_error(lambda: w.add("c", gguf.Value(gguf.ARRAY, [], gguf.ARRAY)), "nested")
    w.add("d", 1)
    expect_error(lambda: w.add("d", 2), "duplicate key 'd'")


def test_gguf_tensor_roundtrip():
    rng = np.random.default_rng(1)
    p = os.path.join(TMP, "tensors.gguf")
    w = gguf.GGUFWriter(p)
    a_f32 = rng.standard_normal((3, 5, 7)).astype(np.float32)
    a_f16 = rng.standard_normal((4, 9)).astype(np.float16)
    a_bf16 = np.array([1.0, -2.5, 3.140625, 2.0**-10, 65536.0, -0.0], np.float32)
    a_i8 = rng.integers(-128, 128, (2, 3, 4, 5)).astype(np.int8)
    a_i16 = rng.integers(-30000, 30000, 11).astype(np.int16)
    a_i32 = rng.integers(-2**31, 2**31, (6,)).astype(np.int32)
    a_i64 = np.array([-2**63, 2**63 - 1, 0], np.int64)
    a_f64 = rng.standard_normal((2, 2))
    tern = rng.integers(-1, 2, (3, 256)).astype(np.int8)
    w.add_tensor("f32", a_f32, gguf.F32)
    w.add_tensor("f16", a_f16, gguf.F16)
    w.add_tensor("bf16", a_bf16, gguf.BF16)
    w.add_tensor("i8", a_i8, gguf.I8)
    w.add_tensor("i16", a_i16, gguf.I16)
    w.add_tensor("i32", a_i32, gguf.I32)
    w.add_tensor("i64", a_i64, gguf.I64)
    w.add_tensor("f64", a_f64, gguf.F64)
    w.add_ternary("tern", tern, 0.0625)
    w.write()
    r = gguf.GGUFReader(p)
    assert list(r.tensors) == ["f32", "f16", "bf16", "i8", "i16", "i32", "i64", "f64", "tern"]
    assert r.tensors["f32"].ne == (7, 5, 3) and r.tensors["i8"].ne == (5, 4, 3, 2)
    assert r.tensors["tern"].ne == (256, 3) and r.tensors["tern"].nbytes == 256 * 3 // 4 + 32
    assert np.array_equal(r.tensor("f32"), a_f32)
    assert r.tensor("f16").dtype == np.float32 and np.array_equal(r.tensor("f16"), a_f16.astype(np.float32))
    assert np.array_equal(r.tensor("bf16"), a_bf16)  # all exactly representable in bf16
    for name, a in (("i8", a_i8), ("i16", a_i16), ("i32", a_i32), ("i64", a_i64), ("f64", a_f64)):
        assert np.array_equal(r.tensor(name), a), name
    t, s = r.ternary("tern")
    assert np.array_equal(t, tern) and s == f32(0.0625)
    size = os.path.getsize(p)
    for ti in r.tensors.values():
        assert ti.offset % 32 == 0 and ti.data_start % 32 == 0, ti
        assert ti.data_start + ti.nbytes <= size
    # Tensors are back to back, each padded to the alignment (the layout ggml expects).
    infos = list(r.tensors.values())
    for a, b in zip(infos, infos[1:]):
        assert b.offset == (a.offset + a.nbytes + 31) // 32 * 32, (a, b)
    assert size == r.data_offset + (infos[-1].offset + infos[-1].nbytes + 31) // 32 * 32
    # bf16 rounding is to nearest even: 1 + 2^-8 is a tie between 1 and 1+2^-7.
    assert gguf.bf16_bits_to_f32(gguf.f32_to_bf16_bits(np.float32(1 + 2**-8))) == 1.0
    assert gguf.bf16_bits_to_f32(gguf.f32_to_bf16_bits(np.float32(1 + 3 * 2**-8))) == 1 + 2**-6
    r.close()


def test_gguf_sizes():
    assert gguf.tensor_nbytes(gguf.I2_S, (2560, 640)) == 2560 * 640 // 4 + 32
    assert gguf.tensor_nbytes(gguf.TL1, (2560, 6912)) == 2560 * 6912 // 4 + 32
    # TL2 per MODEL-FORMATS 2.2, evaluated by hand for K=2560, M=2560:
    # (2304*2560/3*5/8 = 1228800) + (256*2560/2*4/8 = 163840) = 1392640 (a multiple of 32) + 32.
    assert gguf.tensor_nbytes(gguf.TL2, (2560, 2560)) == 1392640 + 32
    assert gguf.tensor_nbytes(gguf.F16, (2560, 128256)) == 2560 * 128256 * 2
    assert gguf.tensor_nbytes(gguf.Q8_0, (64, 2)) == 4 * 34
    expect_error(lambda: gguf.tensor_nbytes(99, (4,)), "unknown tensor type 99")


def corrupt(src, name, fn):
    data = bytearray(open(src, "rb").read())
    fn(data)
    p = os.path.join(TMP, name)
    open(p, "wb").write(bytes(data))
    return p


def test_gguf_rejects_bad_files():
    p = os.path.join(TMP, "ok.gguf")
    w = gguf.GGUFWriter(p)
    w.add("k", gguf.Value(gguf.UINT32, 1))
    w.add_tensor("t", np.zeros(16, np.float32), gguf.F32)
    w.write()
    r = gguf.GGUFReader(p)
    data_off, hdr = r.data_offset, open(p, "rb").read()
    r.close()
    key_type_at = 24 + 8 + 1          # after magic/version/counts and the key "k"
    off_at = hdr.index(b"t", key_type_at + 8) + 1 + 4 + 8 + 4  # tensor "t": name, n_dims, ne0, type -> offset
    cases = [
        ("magic.gguf", lambda d: d.__setitem__(slice(0, 4), b"GGUX"), ["bad magic"]),
        ("v1.gguf", lambda d: d.__setitem__(slice(4, 8), struct.pack("<I", 1)), ["version 1"]),
        ("trunc.gguf", lambda d: d.__delitem__(slice(data_off + 10, None)), ["tensor 't'", "ends at"]),
        ("hdrtrunc.gguf", lambda d: d.__delitem__(slice(40, None)), ["truncated", "value of 'k'"]),
        ("count.gguf", lambda d: d.__setitem__(slice(16, 24), struct.pack("<Q", 2**40)), ["absurd counts"]),
        ("vtype.gguf", lambda d: d.__setitem__(slice(key_type_at, key_type_at + 4), struct.pack("<I", 13)),
         ["unknown value type 13"]),
        ("misalign.gguf", lambda d: d.__setitem__(slice(off_at, off_at + 8), struct.pack("<Q", 4)),
         ["not a multiple of the alignment"]),
        ("far.gguf", lambda d: d.__setitem__(slice(off_at, off_at + 8), struct.pack("<Q", 2**20)), ["ends at"]),
        ("gtype.gguf", lambda d: d.__setitem__(slice(off_at - 4, off_at), struct.pack("<I", 77)),
         ["unknown tensor type 77"]),
    ]
    for name, fn, words in cases:
        bad = corrupt(p, name, fn)
        msg = expect_error(lambda: gguf.GGUFReader(bad), *words)
        assert bad in msg, "message does not name the file: %r" % msg
    # Hand-made headers: a nested array and a duplicate key.
    bad = os.path.join(TMP, "nested.gguf")
    open(bad, "wb").write(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gguf._pack_str("x") + struct.pack("<IIQ", 9, 9, 1)
                          + b"\0" * 64)
    expect_error(lambda: gguf.GGUFReader(bad), "nested array")
    dup = b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + (gguf._pack_str("a") + struct.pack("<IB", 0, 1)) * 2
    bad = os.path.join(TMP, "dup.gguf")
    open(bad, "wb").write(dup)
    expect_error(lambda: gguf.GGUFReader(bad), "duplicate key 'a'")
    expect_error(lambda: gguf.GGUFReader(os.path.join(TMP, "missing.gguf")), "cannot open")


# ---- I2_S ----------------------------------------------------------------------------

def test_i2s_hand_example():
    # One block: element 0 = +1, 32 = -1, 64 = 0, 96 = +1; all others 0.
    # Byte 0 = code(+1)<<6 | code(-1)<<4 | code(0)<<2 | code(+1) = 2<<6 | 0<<4 | 1<<2 | 2 = 0x86;
    # every other byte holds four zeros = 0b01010101 = 0x55.
    w = np.zeros(128, np.int8)
    w[0], w[32], w[64], w[96] = 1, -1, 0, 1
    packed = gguf.i2s_pack(w.reshape(1, 128), 0.5)
    assert len(packed) == 128 // 4 + 32
    assert packed[0] == 0x86 and all(b == 0x55 for b in packed[1:32]), packed[:32].hex()
    assert packed[32:36] == struct.pack("<f", 0.5) and packed[36:] == b"\0" * 28
    # Byte pos 5 of the second block holds elements 128+5, 128+37, 128+69, 128+101 (row 1 of a 2x128 tensor).
    w2 = np.zeros((2, 128), np.int8)
    w2[1, 5], w2[1, 37], w2[1, 69], w2[1, 101] = -1, 1, -1, 1   # codes 0, 2, 0, 2 -> 0b00100010
    p2 = gguf.i2s_pack(w2, 1.0)
    assert p2[32 + 5] == 0x22 and p2[5] == 0x55

    # Random tensor against the element-by-element rule of MODEL-FORMATS 2.3.
    rng = np.random.default_rng(2)
    m, k = 6, 384
    t = rng.integers(-1, 2, (m, k)).astype(np.int8)
    expect = bytearray(m * k // 4)
    for i in range(m * k):
        b, j = divmod(i, 128)
        grp, pos = divmod(j, 32)
        expect[b * 32 + pos] |= (int(t.flat[i]) + 1) << (6 - 2 * grp)
    scale = 0.123
    got = gguf.i2s_pack(t, scale)
    assert got[:m * k // 4] == bytes(expect)
    assert struct.unpack_from("<f", got, m * k // 4)[0] == f32(scale)  # scale at byte offset m*k/4
    back, s = gguf.i2s_unpack(got, m * k)
    assert np.array_equal(back.reshape(m, k), t) and s == f32(scale)
    # In a file, the raw tensor bytes are exactly these.
    p = os.path.join(TMP, "i2s.gguf")
    wr = gguf.GGUFWriter(p)
    wr.add_ternary("w", t, scale)
    wr.write()
    r = gguf.GGUFReader(p)
    assert r.tensors["w"].ne == (k, m) and bytes(r.raw("w")) == got
    r.close()
    # Code 3 never appears in a valid tensor.
    bad = bytearray(got)
    bad[7] |= 0x30
    expect_error(lambda: gguf.i2s_unpack(bytes(bad), m * k), "code 3")
    expect_error(lambda: gguf.i2s_pack(np.zeros(100, np.int8), 1.0), "multiple of 128")
    expect_error(lambda: gguf.i2s_pack(np.full(128, 2, np.int8), 1.0), "outside")


# ---- arithmetic ----------------------------------------------------------------------

def test_quantizer_ties_and_limits():
    # amax = 127 gives s = 1 exactly, so x*s lands on the ties themselves.
    x = np.array([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 3.4999998, -127.0]], np.float32)
    q, s = br.quantize_act(x)
    assert s[0] == f32(1.0) and s.dtype == np.float32
    assert q.tolist() == [[127, 0, 2, 2, 0, -2, -2, 126, 3, -127]], q.tolist()
    qa, _ = br.quantize_act(x, "away")
    assert qa.tolist() == [[127, 1, 2, 3, -1, -2, -3, 127, 3, -127]], qa.tolist()
    # The 1e-5 floor of the absmax: an all-zero row and a row of tiny values.
    q, s = br.quantize_act(np.array([[0.0, 0.0], [1e-7, -3e-7]], np.float32))
    assert s[0] == s[1] == f32(127 / 1e-5) and q.tolist() == [[0, 0], [1, -4]], (s, q)
    # s = float32(127 / max) with the max taken in double: for x = 3, 127/3 rounded once.
    q, s = br.quantize_act(np.array([[3.0, 1.0]], np.float32))
    assert s[0] == f32(127.0 / 3.0) and q.tolist() == [[127, 42]]
    # Per row: each row has its own scale.
    q, s = br.quantize_act(np.array([[1.0, 0.5], [100.0, 50.0]], np.float32))
    assert q.tolist() == [[127, 64], [127, 64]] and s[1] == f32(1.27)


def test_bitlinear_exact_integer_dot():
    rng = np.random.default_rng(3)
    K, N = 6912, 40
    w = rng.integers(-1, 2, (N, K)).astype(np.int8)
    w[0] = 1                      # extreme rows: |dot| = 127*K
    w[1] = -1
    x = rng.standard_normal((3, K)).astype(np.float32)
    x[2] = -1.0                   # quantizes to all -127
    q, s = br.quantize_act(x)
    y = br.bitlinear(x, w, f32(0.75))
    dot = q.astype(np.int64) @ w.astype(np.int64).T
    assert dot[2, 0] == -127 * K and dot[2, 1] == 127 * K
    want = (dot.astype(np.float32) / s[:, None]) * f32(0.75)
    assert y.dtype == np.float32 and np.array_equal(y, want)


def test_rms_norm():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 300)).astype(np.float32) * 3
    w = rng.uniform(0.5, 1.5, 300).astype(np.float32)
    y = br.rms_norm(x, w, 1e-5)
    ref = x.astype(np.float64) / np.sqrt((x.astype(np.float64) ** 2).mean(axis=1, keepdims=True) + 1e-5) * w
    assert y.dtype == np.float32 and np.allclose(y, ref, rtol=3e-7 * 4, atol=0)
    # eps matters for a zero row: no division by zero.
    assert np.all(br.rms_norm(np.zeros((1, 8), np.float32), np.ones(8, np.float32), 1e-5) == 0)


def test_rope_properties():
    rng = np.random.default_rng(5)
    hd, n_heads = 128, 3
    x = rng.standard_normal((1, n_heads, hd)).astype(np.float32)
    for mode in ("exact", "ggml"):
        c, s = br.rope_cos_sin([0], hd, 500000.0, mode)
        assert np.array_equal(br.rope_neox(x, c, s, hd), x), "position 0 must be the identity (%s)" % mode
    pos = [1, 7, 100, 4095]
    c, s = br.rope_cos_sin(pos, hd, 500000.0)
    xs = np.repeat(x, len(pos), axis=0)
    y = br.rope_neox(xs, c, s, hd)
    n_in = np.linalg.norm(xs.astype(np.float64), axis=-1)
    n_out = np.linalg.norm(y.astype(np.float64), axis=-1)
    assert np.allclose(n_in, n_out, rtol=1e-6), "rotation must preserve norms"
    # NEOX pairing: a unit vector at j < hd/2 moves only within {j, j + hd/2}, by angle pos*theta^(-2j/hd).
    j, p = 5, 100
    e = np.zeros((1, 1, hd), np.float32)
    e[0, 0, j] = 1
    c, s = br.rope_cos_sin([p], hd, 500000.0)
    r = br.rope_neox(e, c, s, hd)[0, 0]
    ang = p * 500000.0 ** (-2 * j / hd)
    assert np.count_nonzero(r) == 2 and abs(r[j] - math.cos(ang)) < 1e-7 and abs(r[j + 64] - math.sin(ang)) < 1e-7
    # Relative positions: <R(p)q, R(p+d)k> depends on d only.
    q, k = x[:, :1], x[:, 1:2]
    dots = []
    for p0 in (0, 10, 1000):
        cq, sq = br.rope_cos_sin([p0], hd, 500000.0)
        ck, sk = br.rope_cos_sin([p0 + 3], hd, 500000.0)
        dots.append(float(np.dot(br.rope_neox(q, cq, sq, hd).ravel().astype(np.float64),
                                 br.rope_neox(k, ck, sk, hd).ravel().astype(np.float64))))
    assert max(dots) - min(dots) < 1e-4 * max(1.0, abs(dots[0])), dots
    # ggml's incremental float theta agrees with the exact angles to float precision at small positions.
    c1, s1 = br.rope_cos_sin(np.arange(64), hd, 500000.0, "exact")
    c2, s2 = br.rope_cos_sin(np.arange(64), hd, 500000.0, "ggml")
    assert np.abs(c1 - c2).max() < 1e-4 and np.abs(s1 - s2).max() < 1e-4
    # n_rot < head_dim: the dims past n_rot pass through.
    c, s = br.rope_cos_sin([9], 64, 10000.0)
    yr = br.rope_neox(x, c, s, 64)
    assert np.array_equal(yr[:, :, 64:], x[:, :, 64:]) and not np.array_equal(yr[:, :, :64], x[:, :, :64])


# ---- the naive formulation ------------------------------------------------------------

def naive_i2s(raw, n_out, n_in):
    """I2_S bytes -> (list of int rows, scale), one element at a time per MODEL-FORMATS 2.3."""
    w = np.zeros((n_out, n_in), np.int64)
    for i in range(n_out * n_in):
        b, j = divmod(i, 128)
        grp, pos = divmod(j, 32)
        code = (raw[b * 32 + pos] >> (6 - 2 * grp)) & 3
        assert code != 3
        w[i // n_in, i % n_in] = code - 1
    return w, f32(struct.unpack_from("<f", raw, n_out * n_in // 4)[0])


class Naive:
    """BitNet b1.58 written as loops from MODEL-FORMATS 1.2-1.4; no KV cache."""

    def __init__(self, path, n_layers=None):
        r = gguf.GGUFReader(path)
        a = r.get("general.architecture")
        g = lambda k: r.get("%s.%s" % (a, k))  # noqa: E731
        self.D, self.H, self.Hkv, self.F = g("embedding_length"), g("attention.head_count"), \
            g("attention.head_count_kv"), g("feed_forward_length")
        self.hd = self.D // self.H
        self.eps, self.base = f32(g("attention.layer_norm_rms_epsilon")), float(g("rope.freq_base"))
        self.n_layer = g("block_count") if n_layers is None else n_layers
        raw_e = bytes(r.raw("token_embd.weight"))
        self.V = r.tensors["token_embd.weight"].ne[1]
        self.E = np.frombuffer(raw_e, "<f2").astype(np.float64).reshape(self.V, self.D).tolist()
        vec = lambda n: [f32(v) for v in np.frombuffer(bytes(r.raw(n)), "<f4")]  # noqa: E731
        self.out_norm = vec("output_norm.weight")
        self.layers = []
        for i in range(self.n_layer):
            L = {n: vec("blk.%d.%s.weight" % (i, n)) for n in br.SITES}  # the four norms are named like the sites
            for n in br.LINEARS:
                t = r.tensors["blk.%d.%s.weight" % (i, n)]
                L[n] = naive_i2s(bytes(r.raw(t.name)), t.ne[1], t.ne[0])
            self.layers.append(L)
        r.close()

    def norm(self, x, w):
        ss = math.fsum(float(f32(v * v)) for v in x)
        mean = f32(ss / len(x))
        scale = f32(1.0) / np.sqrt(f32(mean + self.eps))
        return [f32(f32(v * scale) * wi) for v, wi in zip(x, w)]

    @staticmethod
    def bitlinear(x, wt):
        w, ws = wt
        amax = max(1e-5, max(abs(float(v)) for v in x))
        s = f32(127.0 / amax)
        q = np.array([min(127, max(-128, round(float(f32(v * s))))) for v in x], np.int64)  # round(): half-even
        return [f32(f32(f32(int(np.dot(row, q))) / s) * ws) for row in w]

    def rope(self, x, pos):
        half, out = self.hd // 2, list(x)
        for j in range(half):
            th = pos * self.base ** (-2.0 * j / self.hd)
            c, s = f32(math.cos(th)), f32(math.sin(th))
            x0, x1 = x[j], x[j + half]
            out[j] = f32(f32(x0 * c) - f32(x1 * s))
            out[j + half] = f32(f32(x0 * s) + f32(x1 * c))
        return out

    def logits(self, tokens):
        hd, T = self.hd, len(tokens)
        h = [[f32(v) for v in self.E[t]] for t in tokens]
        scale = f32(1.0) / np.sqrt(f32(hd))
        for L in self.layers:
            qs, ks, vs = [], [], []
            for p in range(T):
                a = self.norm(h[p], L["attn_norm"])
                q, k, v = self.bitlinear(a, L["attn_q"]), self.bitlinear(a, L["attn_k"]), self.bitlinear(a, L["attn_v"])
                qs.append([self.rope(q[i * hd:(i + 1) * hd], p) for i in range(self.H)])
                ks.append([self.rope(k[i * hd:(i + 1) * hd], p) for i in range(self.Hkv)])
                vs.append([v[i * hd:(i + 1) * hd] for i in range(self.Hkv)])
            for p in range(T):
                o = []
                for hh in range(self.H):
                    g = hh // (self.H // self.Hkv)
                    z = [f32(f32(math.fsum(float(a) * float(b) for a, b in zip(qs[p][hh], ks[j][g]))) * scale)
                         for j in range(p + 1)]
                    m = max(z)
                    e = [f32(math.exp(float(f32(zz - m)))) for zz in z]
                    inv = f32(1.0 / math.fsum(float(v) for v in e))
                    pr = [f32(v * inv) for v in e]
                    o += [f32(math.fsum(float(pr[j]) * float(vs[j][g][d]) for j in range(p + 1))) for d in range(hd)]
                o = self.norm(o, L["attn_sub_norm"])
                h[p] = [f32(a + b) for a, b in zip(h[p], self.bitlinear(o, L["attn_output"]))]
                f = self.norm(h[p], L["ffn_norm"])
                gt, up = self.bitlinear(f, L["ffn_gate"]), self.bitlinear(f, L["ffn_up"])
                mm = [f32(f32(max(f32(0), a) * max(f32(0), a)) * b) for a, b in zip(gt, up)]
                mm = self.norm(mm, L["ffn_sub_norm"])
                h[p] = [f32(a + b) for a, b in zip(h[p], self.bitlinear(mm, L["ffn_down"]))]
        out = []
        for p in range(T):
            x = self.norm(h[p], self.out_norm)
            out.append([f32(math.fsum(e * float(xv) for e, xv in zip(self.E[v], x))) for v in range(self.V)])
        return np.array(out, np.float32)

    def generate(self, prompt, n):
        seq = list(prompt)
        for _ in range(n):
            seq.append(int(np.argmax(self.logits(seq)[-1])))   # the whole sequence again, every step
        return seq[len(prompt):], self.logits(seq[:-1] if n else seq)


def close(a, b, rtol=1e-5):
    scale = max(1.0, float(np.abs(b).max()))
    return float(np.abs(a - b).max()) <= rtol * scale


def test_forward_matches_naive():
    p = tiny_model()
    prompt = [3, 250, 17, 17, 299, 0, 128, 42]
    naive = Naive(p)
    gen_n, rows_n = naive.generate(prompt, 4)
    m = br.BitNetModel(p)
    rows, gen = m.run(prompt, 4)
    assert rows.shape == (len(prompt) + 3, 300) and rows.dtype == np.float32
    assert gen == gen_n, (gen, gen_n)
    diff = float(np.abs(rows - rows_n).max())
    assert close(rows, rows_n, 1e-5), "max |diff| %g" % diff
    assert np.all(np.argmax(rows, -1) == np.argmax(rows_n, -1))
    assert float(rows.std()) > 0.3, "logits degenerate"
    # Cut to the first layer: the same against a 1-layer naive model.
    r1 = br.BitNetModel(p, n_layers=1).run(prompt)[0]
    n1 = Naive(p, n_layers=1).logits(prompt)
    assert close(r1, n1, 1e-5) and not close(r1, rows[:len(prompt)], 1e-2)
    # Zero layers: the LM head of the normalised embeddings.
    r0 = br.BitNetModel(p, n_layers=0).run(prompt)[0]
    assert close(r0, Naive(p, n_layers=0).logits(prompt), 1e-5)


def test_forward_matches_naive_mha_theta():
    # Another shape: no GQA (heads == kv heads), head_dim 32, rope base 500000, one layer.
    p = tiny_model("mha.gguf", seed=5, n_embd=128, n_head=4, n_head_kv=4, n_ff=256, n_layer=1, theta=500000.0)
    prompt = list(range(1, 30, 3))
    rows = br.BitNetModel(p).run(prompt)[0]
    assert close(rows, Naive(p).logits(prompt), 1e-5)


def test_causality():
    p = tiny_model()
    m = br.BitNetModel(p)
    a = [5, 6, 7, 8, 9, 10]
    b = [5, 6, 7, 200, 9, 10]
    la, lb = m.run(a)[0], m.run(b)[0]
    assert np.array_equal(la[:3], lb[:3]), "earlier positions changed"
    assert not np.allclose(la[3:], lb[3:]), "the changed token had no effect"


def test_kv_cache_incremental():
    p = tiny_model()
    m = br.BitNetModel(p)
    toks = [1, 2, 3, 50, 60, 70, 80, 290, 100, 7, 8]
    full = m.run(toks)[0]
    one = m.run(toks, chunk=1)[0]
    three = m.run(toks, chunk=3)[0]
    for other in (one, three):
        assert close(other, full, 1e-6) and np.array_equal(np.argmax(other, -1), np.argmax(full, -1))
    # Decode after a prefix equals the same rows of a longer prefill.
    cache = m.new_cache(16)
    m.forward(toks[:6], cache)
    rest = np.concatenate([m.forward([t], cache) for t in toks[6:]])
    assert close(rest, full[6:], 1e-6)
    expect_error(lambda: m.forward([1] * 20, cache), "context full")
    expect_error(lambda: m.forward([300], m.new_cache(4)), "token id")


def test_options_change_numbers_a_little():
    p = tiny_model()
    toks = [9, 8, 7, 6, 5, 4, 3]
    base = br.BitNetModel(p).run(toks)[0]
    for opt in (br.Options(rope="ggml"), br.Options(kv_f16=True), br.Options(lm_head_f16_act=True),
                br.Options(act_round="away")):
        other = br.BitNetModel(p, options=opt).run(toks)[0]
        # The same model within int8-flip noise: logits stay correlated.
        assert np.corrcoef(other.ravel(), base.ravel())[0, 1] > 0.9
        if opt.kv_f16 or opt.lm_head_f16_act:
            assert not np.array_equal(other, base), "f16 rounding had no effect"


def test_kv_type_rounding():
    # kv_round is round-to-nearest-even to the stored type, widened exactly: ties go to
    # the even neighbour, and the result is a fixed point.
    x = np.array([1.0, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 65504.0, 1e-7, -2.5], np.float32)
    f16 = br.kv_round(x, "f16")
    assert f16.dtype == np.float32
    assert f16[1] == 1.0 and f16[2] == 1.0 + 2.0 ** -9 and f16[3] == 65504.0 and f16[5] == -2.5
    assert np.array_equal(br.kv_round(f16, "f16"), f16)
    y = np.array([1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, 1.0 + 2.0 ** -9, -3.0], np.float32)
    bf = br.kv_round(y, "bf16")
    assert bf[0] == 1.0 and bf[1] == 1.0 + 2.0 ** -6 and bf[2] == 1.0 and bf[3] == -3.0
    assert np.array_equal(br.kv_round(bf, "bf16"), bf)
    assert br.kv_round(x, "f32") is x
    # Through the model: f16 / bf16 K and V change the numbers a little, never the
    # invariances: chunked prefill still gives the same rows.
    p = tiny_model()
    toks = [9, 8, 7, 6, 5, 4, 3, 200, 100]
    base = br.BitNetModel(p).run(toks)[0]
    for kt in ("f16", "bf16"):
        m = br.BitNetModel(p, options=br.Options(kv_type=kt))
        rows = m.run(toks)[0]
        assert not np.array_equal(rows, base), "%s rounding had no effect" % kt
        assert np.corrcoef(rows.ravel(), base.ravel())[0, 1] > 0.9
        assert close(m.run(toks, chunk=2)[0], rows, 1e-6)
    try:
        br.Options(kv_type="i8")
        raise AssertionError("kv_type i8 accepted")
    except ValueError:
        pass


def test_model_checks():
    expect_error(lambda: br.BitNetModel(tiny_model("qwen2.gguf", arch="qwen2")), "unsupported architecture")
    # qwen3 is read (QK-norm), and needs its per-head q/k norm tensors
    expect_error(lambda: br.BitNetModel(tiny_model("qwen3.gguf", arch="qwen3")), "missing tensor blk.0.attn_q_norm")
    p25 = tiny_model("b25.gguf", arch="bitnet-25")
    pb = tiny_model("bn.gguf", arch="bitnet")
    ref = br.BitNetModel(tiny_model()).run([1, 2, 3])[0]
    assert np.array_equal(br.BitNetModel(p25).run([1, 2, 3])[0], ref)
    assert np.array_equal(br.BitNetModel(pb, verbose=False).run([1, 2, 3])[0], ref)
    expect_error(lambda: br.BitNetModel(tiny_model(), n_layers=3), "--layers 3")
    # A missing tensor is named.
    src = tiny_model()
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(os.path.join(TMP, "missing-t.gguf"))
    for k, v in r.kv.items():
        w.add(k, v)
    for name, t in r.tensors.items():
        if name != "blk.1.ffn_up.weight":
            raw = bytes(r.raw(name))
            w.add_tensor(name, (lambda raw=raw: [raw]), t.gtype, ne=t.ne)
    w.write()
    r.close()
    expect_error(lambda: br.BitNetModel(w.path), "blk.1.ffn_up.weight")
    # ...but a cut that does not reach the missing layer loads.
    br.BitNetModel(w.path, n_layers=1)


def test_make_model_layout():
    p = tiny_model("layout.gguf", seed=3)
    r = gguf.GGUFReader(p)
    D, F, kvw = 64, 128, 32
    assert r.tensors["token_embd.weight"].gtype == gguf.F16 and r.tensors["token_embd.weight"].ne == (D, 300)
    assert r.tensors["output_norm.weight"].gtype == gguf.F32 and "output.weight" not in r.tensors
    for i in range(2):
        for n, ne in (("attn_q", (D, D)), ("attn_k", (D, kvw)), ("attn_v", (D, kvw)), ("attn_output", (D, D)),
                      ("ffn_gate", (D, F)), ("ffn_up", (D, F)), ("ffn_down", (F, D))):
            t = r.tensors["blk.%d.%s.weight" % (i, n)]
            assert t.gtype == gguf.I2_S and t.ne == ne, t
            w, s = r.ternary(t.name)
            zeros = float((w == 0).mean())
            assert 0.2 < zeros < 0.45 and 0 < s < 1, (t.name, zeros, s)
        for n, ln in (("attn_norm", D), ("attn_sub_norm", D), ("ffn_norm", D), ("ffn_sub_norm", F)):
            t = r.tensors["blk.%d.%s.weight" % (i, n)]
            assert t.gtype == gguf.F32 and t.ne == (ln,) and abs(float(r.tensor(t.name).mean()) - 1) < 0.1
    assert r.get("general.architecture") == "bitnet-b1.58" and r.get("bitnet-b1.58.block_count") == 2
    assert r.kv["bitnet-b1.58.attention.layer_norm_rms_epsilon"].vtype == gguf.FLOAT32
    toks = r.get("tokenizer.ggml.tokens")
    assert r.get("tokenizer.ggml.model") == "gpt2" and len(toks) == 300
    assert toks[32] == "\u0120" and toks[10] == "\u010a" and toks[65] == "A"   # GPT-2 byte map
    assert toks[r.get("tokenizer.ggml.bos_token_id")] == "<|begin_of_text|>"
    for mrg in r.get("tokenizer.ggml.merges"):
        a, b = mrg.split(" ")
        assert a + b in toks
    assert r.kv["tokenizer.ggml.token_type"].elem_type == gguf.INT32
    r.close()
    # The Llama-3 vocabulary size gets Llama-3's special ids (tokenizer metadata only: no tensors needed).
    kv = make_model.tokenizer_kv(128256)
    t = kv["tokenizer.ggml.tokens"].value
    assert len(t) == 128256 and t[128000] == "<|begin_of_text|>" and t[128009] == "<|eot_id|>"
    assert kv["tokenizer.ggml.eot_token_id"].value == 128009


def test_cli():
    p = tiny_model()
    out = os.path.join(TMP, "cli.npy")
    cmd = [sys.executable, os.path.join(HERE, "bitnet_ref.py"), p, "--tokens", "4,5,6", "--generate", "3",
           "--out", out, "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    js = json.loads(res.stdout)
    logits = np.load(out)
    assert logits.shape == (5, 300) and js["rows"] == 5 and js["prompt"] == [4, 5, 6]
    assert js["argmax"] == [int(i) for i in np.argmax(logits, -1)]
    assert js["generated"] == js["argmax"][2:5]
    want, gen = br.BitNetModel(p).run([4, 5, 6], 3)
    assert np.array_equal(logits, want) and gen == js["generated"]
    bad = subprocess.run([sys.executable, os.path.join(HERE, "bitnet_ref.py"), p, "--tokens", "1,x"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "--tokens" in bad.stderr
    mk = subprocess.run([sys.executable, os.path.join(HERE, "make_model.py"), "--out", os.path.join(TMP, "x.gguf"),
                         "--n-embd", "100", "--n-head", "3"], capture_output=True, text=True, timeout=60)
    assert mk.returncode == 1 and "heads must divide" in mk.stderr


def test_tie_margins():
    # amax = 127 makes s = 1: the margins are the distances of x itself to k + 0.5.
    assert br.tie_margin(np.array([[127.0, 0.5, 3.2]], np.float32))[0] == 0.0
    m = br.tie_margin(np.array([[127.0, 1.25, -7.875], [-127.0, 2.375, 0.0]], np.float32))
    assert m.tolist() == [0.25, 0.125], m
    # Propagation: (rows 3, layers 2, sites 4), all far from ties except the ones set below.
    marg = np.ones((3, 2, 4))
    marg[1, 1, 3] = 0.05        # row 1, last layer, ffn_sub_norm: affects row 1 only
    marg[0, 0, 2] = 0.1         # row 0, layer 0, ffn_norm: feeds the K/V of later rows
    r, where = br.row_margins(marg)
    assert r == [0.1, 0.05, 0.1] and where[2] == "row 0 layer 0 ffn_norm" and where[1] == "row 1 layer 1 ffn_sub_norm"
    marg[0, 1, 0] = 0.01        # row 0, last layer, attn_norm: its k/v reach every later row
    marg[0, 1, 1] = 0.001       # row 0, last layer, attn_sub_norm: row 0 only
    r, where = br.row_margins(marg)
    assert r == [0.001, 0.01, 0.01] and where[2] == "row 0 layer 1 attn_norm", (r, where)
    r, _ = br.row_margins(marg, ("ffn_sub_norm",))
    assert r == [1.0, 0.05, 1.0], r
    # On a model: one value per fed row, finite and non-negative; a cut to 0 layers has none.
    p = tiny_model()
    parts = []
    rows, _ = br.BitNetModel(p).run([1, 2, 3, 4], 3, None, parts)
    assert parts[0].shape == (rows.shape[0], 2, 4) and np.all((parts[0] >= 0) & (parts[0] <= 0.5))
    r, where = br.row_margins(parts[0])
    assert len(r) == rows.shape[0] and all(0 <= v <= 0.5 for v in r) and all(w.startswith("row ") for w in where)


def test_compare_tool():
    import compare
    rng = np.random.default_rng(9)
    ref = rng.standard_normal((4, 50)).astype(np.float32) * 3
    assert compare.compare(ref, ref.copy())["passed"]
    small = ref + np.float32(1e-4 * np.abs(ref).max())
    res = compare.compare(ref, small)
    assert res["passed"] and 0.5e-4 < res["max_rel"] < 2e-4 and res["rows_within_rtol"] == 4, res
    big = ref.copy()
    big[2, 7] += np.float32(0.05 * np.abs(ref[2]).max())
    res = compare.compare(ref, big)
    assert not res["passed"] and res["worst_row"] == 2 and res["rows_within_rtol"] == 3
    margins = [0.3, 0.3, 1e-6, 0.3]         # row 2 depends on a near tie: reported, not checked
    res = compare.compare(ref, big, margins=margins, margin=1e-5)
    assert res["passed"] and res["near_tie_rows"] == [2] and res["near_tie_max_rel"] > 1e-3
    swap = ref.copy()
    i = int(np.argmax(ref[1]))
    swap[1, (i + 1) % 50] = np.nextafter(ref[1, i], np.float32(np.inf))    # a near-tie: argmax differs
    res = compare.compare(ref, swap, rtol=1.0)
    assert not res["passed"] and res["argmax_mismatch_rows"] == [1]
    assert compare.compare(ref, big, first_only=True)["passed"]
    assert not compare.compare(ref, ref[:3])["passed"]                  # a missing row is a failure
    raw = os.path.join(TMP, "raw.f32")
    ref.tofile(raw)
    npy = os.path.join(TMP, "ref.npy")
    np.save(npy, ref)
    cmd = [sys.executable, os.path.join(HERE, "compare.py"), npy, raw, "--vocab", "50"]
    assert subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
    np.save(npy, big)
    assert subprocess.run(cmd, capture_output=True, timeout=60).returncode == 1


def test_llama_pieces():
    """The Llama-style pieces (issue 17): interleaved RoPE on the converter's permuted rows is
    NEOX RoPE on HF's rows, element for element; the packed HF rows unpack to what
    make_llama packed; silu_mul is close to silu in float64; a float projection with more
    than one magnitude is refused."""
    import make_llama
    rng = np.random.default_rng(3)
    n_head, hd, T = 3, 8, 5
    x = rng.standard_normal((T, n_head * hd)).astype(np.float32)
    cos, sin = br.rope_cos_sin(np.arange(T) * 7, hd, 10000.0)
    neox = br.rope_neox(x.reshape(T, n_head, hd), cos, sin, hd).reshape(T, -1)
    perm = make_llama.permute_rows(x.T, n_head).T  # columns play the rows of q
    inter = br.rope_interleaved(np.ascontiguousarray(perm).reshape(T, n_head, hd), cos, sin, hd).reshape(T, -1)
    assert np.array_equal(make_llama.permute_rows(neox.T, n_head).T, inter)
    t = rng.integers(-1, 2, (12, 5)).astype(np.int8)
    assert np.array_equal(br.unpack_rows(make_llama.pack_rows(t)), t)
    g = np.linspace(-30, 30, 1001).astype(np.float32)
    u = np.ones_like(g)
    want = g.astype(np.float64) / (1 + np.exp(-g.astype(np.float64)))
    assert np.abs(br.silu_mul(g, u) - want).max() <= 4 * np.spacing(np.float32(30))
    assert br.silu_mul(np.float32([-200.0]), np.float32([1.0]))[0] == 0.0
    w, a = br.ternary_of_float(np.float32([[0.25, -0.25], [0, 0.25]]), "w")
    assert a == np.float32(0.25) and w.tolist() == [[1, -1], [0, 1]]
    try:
        br.ternary_of_float(np.float32([[0.25, 0.5]]), "w")
        raise AssertionError("two magnitudes accepted")
    except br.ModelError:
        pass


def main():
    tests = [(n, f) for n, f in list(globals().items()) if n.startswith("test_") and callable(f)]  # file order
    passed = failed = 0
    for name, fn in tests:
        try:
            fn()
            passed += 1
            print("ok   %s" % name)
        except Exception:
            failed += 1
            print("FAIL %s" % name)
            traceback.print_exc(file=sys.stdout)
    print("%d passed, %d failed, 0 skipped" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        rc = main()
    finally:
        import shutil
        shutil.rmtree(TMP, ignore_errors=True)
    sys.exit(rc)
