"""gguf.py: an independent GGUF v2/v3 reader and v3 writer, for the reference tests.

Owns the container format of llama.cpp / bitnet.cpp model files as MODEL-FORMATS.md
section 2 describes it, written from that text only (no code shared with the C engine):

- header: magic "GGUF", u32 version (2 or 3; both have 64-bit counts), u64 n_tensors,
  u64 n_kv; KVs (gguf_str key, u32 value type, value); tensor infos (name, u32 n_dims,
  u64 ne[n_dims], u32 ggml type, u64 offset); padding to `general.alignment` (default 32)
  measured from the file start; then the data section. Tensor offsets are relative to
  the data section and multiples of the alignment.
- metadata value types 0..12 including arrays (u32 elem type, u64 count, elements);
  nested arrays are rejected, as the FORK reader does.
- tensor types F32, F16, BF16, I8 (data access), I16/I32/I64/F64 (data access), I2_S
  (bitnet.cpp's x86 128/32 layout, decode and encode), and sizes only for TL1, TL2 and a
  few block-quantized types so files holding them can still be listed.

Arrays follow numpy order: a tensor with ne = {ne0, ne1} is a (ne1, ne0) array, ne0
innermost. Everything is little-endian. The reader maps the file and checks every count,
length and extent against the file size before using it; problems raise GGUFError with a
one-line message naming the file.
"""

import mmap
import os
import struct

import numpy as np

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# Metadata value types (MODEL-FORMATS 2.1).
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
VTYPE_NAMES = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"]
# struct format of each fixed-size scalar value type.
_SCALAR_FMT = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
               FLOAT32: "<f", BOOL: "<B", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}
_SCALAR_NP = {UINT8: "<u1", INT8: "<i1", UINT16: "<u2", INT16: "<i2", UINT32: "<u4", INT32: "<i4",
              FLOAT32: "<f4", BOOL: "<u1", UINT64: "<u8", INT64: "<i8", FLOAT64: "<f8"}

# ggml tensor type ids (FORK ggml.h, MODEL-FORMATS 2.1).
F32, F16, Q4_0, Q8_0 = 0, 1, 2, 8
I8, I16, I32, I64, F64, BF16 = 24, 25, 26, 27, 28, 30
TQ1_0, TQ2_0, I2_S, I8_S, TL1, TL2 = 34, 35, 36, 37, 38, 39
Q2_0 = 42  # ggml.h GGML_TYPE_Q2_0 (PrismML's Ternary-Bonsai files; ggml-common.h block_q2_0)
TYPE_NAMES = {F32: "f32", F16: "f16", Q4_0: "q4_0", Q8_0: "q8_0", I8: "i8", I16: "i16", I32: "i32",
              I64: "i64", F64: "f64", BF16: "bf16", TQ1_0: "tq1_0", TQ2_0: "tq2_0", I2_S: "i2_s",
              TL1: "tl1", TL2: "tl2", Q2_0: "q2_0"}
# Plain element types: bytes per element and numpy dtype.
_PLAIN = {F32: (4, "<f4"), F16: (2, "<f2"), BF16: (2, "<u2"), I8: (1, "<i1"), I16: (2, "<i2"),
          I32: (4, "<i4"), I64: (8, "<i8"), F64: (8, "<f8")}
# Block-quantized types known by size only: (elements per block, bytes per block).
_BLOCKED = {Q4_0: (32, 18), Q8_0: (32, 34), TQ1_0: (256, 54), TQ2_0: (256, 66), Q2_0: (64, 18)}
Q2_0_GROUP = 64


def q2_0_pack(t, d):
    """ggml Q2_0 bytes of t (rows, cols) int in -1..2, cols % 64 == 0, with d (rows, cols/64)
    float scales: per block the f16 d, then 16 bytes, weight e at bits 2*(e%4) of byte e/4
    holding code t + 1 (dequantize_row_q2_0: (code - 1) * d)."""
    t = np.asarray(t)
    rows, cols = t.shape
    if cols % Q2_0_GROUP or t.min() < -1 or t.max() > 2:
        raise GGUFError("q2_0: %d columns (need a multiple of 64) or values outside -1..2" % cols)
    codes = (t.astype(np.int16) + 1).astype(np.uint8).reshape(rows, cols // Q2_0_GROUP, 16, 4)
    qs = codes[..., 0] | (codes[..., 1] << 2) | (codes[..., 2] << 4) | (codes[..., 3] << 6)
    dd = np.asarray(d, np.float32).astype("<f2").reshape(rows, cols // Q2_0_GROUP, 1).view(np.uint8)
    return np.concatenate([dd, qs.astype(np.uint8)], axis=2).tobytes()

def q2_0_unpack(raw, rows, cols):
    """The inverse of q2_0_pack, read from the bytes: (w (rows, cols) int8 = code - 1 in -1..2,
    d (rows, cols/64) float32), so the weight is w * d of its 64-group (dequantize_row_q2_0)."""
    ng = cols // Q2_0_GROUP
    b = np.frombuffer(bytes(raw), np.uint8)
    if cols % Q2_0_GROUP or b.size != rows * ng * 18:
        raise GGUFError("q2_0: %d bytes for %d x %d" % (b.size, rows, cols))
    b = b.reshape(rows, ng, 18)
    d = b[..., :2].copy().view("<f2").reshape(rows, ng).astype(np.float32)
    if not np.all(np.isfinite(d)):
        raise GGUFError("q2_0: a non-finite scale")
    codes = (b[..., 2:, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3  # (rows, ng, 16, 4)
    return (codes.reshape(rows, cols).astype(np.int8) - 1), d


I2S_BLOCK = 128       # elements per I2_S block
I2S_BLOCK_BYTES = 32  # bytes per I2_S block
I2S_TAIL = 32         # the float32 scale plus 28 bytes of padding after the packed codes


class GGUFError(Exception):
    pass


class Value:
    """A typed metadata value. `vtype` is one of the value types; for ARRAY,
    `elem_type` is the element type and `value` a list (or a numpy array for numeric
    elements)."""

    __slots__ = ("vtype", "value", "elem_type")

    def __init__(self, vtype, value, elem_type=None):
        if vtype == ARRAY and elem_type is None:
            raise ValueError("an array value needs an element type")
        self.vtype, self.value, self.elem_type = vtype, value, elem_type

    def __repr__(self):
        if self.vtype == ARRAY:
            return "Value(array<%s>[%d])" % (VTYPE_NAMES[self.elem_type], len(self.value))
        return "Value(%s, %r)" % (VTYPE_NAMES[self.vtype], self.value)


def tensor_nbytes(gtype, ne):
    """Bytes of a tensor of type `gtype` and dims `ne` (ne[0] innermost), per FORK
    ggml_nbytes with bitnet.cpp's special cases (MODEL-FORMATS 2.2). Raises GGUFError
    for an unknown type or a shape the type cannot have."""
    n = 1
    for d in ne:
        n *= int(d)
    if gtype in _PLAIN:
        return n * _PLAIN[gtype][0]
    if gtype in _BLOCKED:
        per, size = _BLOCKED[gtype]
        if int(ne[0]) % per:
            raise GGUFError("%s row length %d is not a multiple of %d" % (TYPE_NAMES[gtype], ne[0], per))
        return n // per * size
    if gtype in (I2_S, TL1, TL2):
        if len(ne) > 2:
            raise GGUFError("%s tensor with %d dims (at most 2)" % (TYPE_NAMES[gtype], len(ne)))
        ne0 = int(ne[0])
        ne1 = int(ne[1]) if len(ne) > 1 else 1
        if gtype == TL2:
            if ne0 < 256:
                raise GGUFError("tl2 row length %d below 256" % ne0)
            body = (ne0 - 256) * ne1 // 3 * 5 // 8 + 256 * ne1 // 2 * 4 // 8
            return (body + 31) // 32 * 32 + 32
        if (ne0 * ne1) % 4:
            raise GGUFError("%s element count %d is not a multiple of 4" % (TYPE_NAMES[gtype], ne0 * ne1))
        return ne0 * ne1 // 4 + I2S_TAIL
    raise GGUFError("unknown tensor type %d" % gtype)


# ---- I2_S --------------------------------------------------------------------------------

def i2s_pack(w, scale):
    """Packs a ternary array (any shape, int values in {-1,0,1}, row-major, element count
    a multiple of 128) and its float scale into I2_S bytes: the codes (-1->0, 0->1, +1->2)
    of each block of 128 flattened elements in 32 bytes, byte pos holding elements pos,
    32+pos, 64+pos, 96+pos at bits 7-6, 5-4, 3-2, 1-0; then the float32 scale and 28 zero
    bytes."""
    flat = np.asarray(w).reshape(-1)
    if flat.size % I2S_BLOCK:
        raise GGUFError("i2_s: element count %d is not a multiple of %d" % (flat.size, I2S_BLOCK))
    if flat.size and (flat.min() < -1 or flat.max() > 1):
        raise GGUFError("i2_s: values outside {-1,0,1}")
    codes = (flat.astype(np.int16) + 1).astype(np.uint8).reshape(-1, 4, 32)  # (block, grp, pos)
    packed = (codes[:, 0] << 6) | (codes[:, 1] << 4) | (codes[:, 2] << 2) | codes[:, 3]
    tail = np.zeros(I2S_TAIL, np.uint8)
    tail[:4] = np.frombuffer(struct.pack("<f", float(np.float32(scale))), np.uint8)
    return packed.astype(np.uint8).tobytes() + tail.tobytes()


def i2s_unpack(raw, n_elements):
    """Inverse of i2s_pack over `raw` (bytes-like of at least n/4 + 32 bytes): returns
    (int8 array of n_elements ternary values, float32 scale). Raises GGUFError on code 3."""
    if n_elements % I2S_BLOCK:
        raise GGUFError("i2_s: element count %d is not a multiple of %d" % (n_elements, I2S_BLOCK))
    nb = n_elements // 4
    if len(raw) < nb + 4:
        raise GGUFError("i2_s: %d bytes for %d elements" % (len(raw), n_elements))
    b = np.frombuffer(raw, np.uint8, nb).reshape(-1, 32)
    codes = np.stack([(b >> 6) & 3, (b >> 4) & 3, (b >> 2) & 3, b & 3], axis=1).reshape(-1)
    if np.any(codes == 3):
        raise GGUFError("i2_s: invalid code 3 at element %d" % int(np.argmax(codes == 3)))
    scale = np.frombuffer(raw, "<f4", 1, nb)[0]
    return codes.astype(np.int8) - np.int8(1), np.float32(scale)


# ---- bf16 ----------------------------------------------------------------------------

def f32_to_bf16_bits(x):
    """float32 -> bf16 bit patterns, round to nearest even (NaN stays a quiet NaN)."""
    x = np.atleast_1d(np.asarray(x, np.float32))
    bits = x.view(np.uint32).astype(np.uint64)
    u = np.uint64
    rounded = ((bits + u(0x7FFF) + ((bits >> u(16)) & u(1))) >> u(16)).astype(np.uint16)
    return np.where(np.isnan(x), ((bits >> u(16)) | u(0x40)).astype(np.uint16), rounded)


def bf16_bits_to_f32(b):
    return (np.asarray(b, np.uint16).astype(np.uint32) << 16).view(np.float32)


# ---- reader ----------------------------------------------------------------------------

class TensorInfo:
    __slots__ = ("name", "ne", "gtype", "offset", "nbytes", "data_start")

    def __init__(self, name, ne, gtype, offset, nbytes):
        self.name, self.ne, self.gtype, self.offset, self.nbytes = name, ne, gtype, offset, nbytes
        self.data_start = None

    @property
    def shape(self):
        """numpy shape: ne reversed."""
        return tuple(int(d) for d in reversed(self.ne))

    @property
    def n_elements(self):
        n = 1
        for d in self.ne:
            n *= int(d)
        return n

    def __repr__(self):
        return "TensorInfo(%s, ne=%s, %s, offset=%d)" % (self.name, list(self.ne),
                                                        TYPE_NAMES.get(self.gtype, self.gtype), self.offset)


class GGUFReader:
    """Reads and validates a whole GGUF header at open. `kv` maps key -> Value in file
    order, `tensors` maps name -> TensorInfo in file order."""

    def __init__(self, path):
        self.path = str(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except OSError as e:
            raise GGUFError("%s: cannot open: %s" % (self.path, e.strerror))
        self.file_size = size
        self._pos = 0
        self.kv = {}
        self.tensors = {}
        self._parse()

    def close(self):
        if isinstance(self._mm, mmap.mmap):
            self._mm.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    # -- low-level reads, each bounds-checked against the file size
    def _fail(self, msg):
        raise GGUFError("%s: %s" % (self.path, msg))

    def _take(self, n, what):
        if n < 0 or self._pos + n > self.file_size:
            self._fail("truncated: %s needs %d bytes at offset %d of %d" % (what, n, self._pos, self.file_size))
        p = self._pos
        self._pos += n
        return self._mm[p:p + n]

    def _scalar(self, vtype, what):
        fmt = _SCALAR_FMT[vtype]
        return struct.unpack(fmt, self._take(struct.calcsize(fmt), what))[0]

    def _str(self, what):
        n = self._scalar(UINT64, what + " length")
        raw = self._take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self._fail("%s is not valid UTF-8" % what)

    def _value(self, vtype, what):
        if vtype == STRING:
            return self._str(what)
        if vtype == ARRAY:
            self._fail("%s: nested array" % what)
        if vtype not in _SCALAR_FMT:
            self._fail("%s: unknown value type %d" % (what, vtype))
        v = self._scalar(vtype, what)
        if vtype == BOOL:
            if v > 1:
                self._fail("%s: bool value %d" % (what, v))
            return bool(v)
        return v

    def _parse(self):
        if self._take(4, "magic") != GGUF_MAGIC:
            self._fail("not a GGUF file (bad magic)")
        self.version = self._scalar(UINT32, "version")
        if self.version not in (2, 3):
            self._fail("unsupported GGUF version %d (need 2 or 3)" % self.version)
        n_tensors = self._scalar(UINT64, "tensor count")
        n_kv = self._scalar(UINT64, "kv count")
        # Every KV needs >= 8+4 bytes and every tensor info >= 8+4+8+4+8: reject absurd counts before looping.
        if n_kv * 12 > self.file_size or n_tensors * 32 > self.file_size:
            self._fail("absurd counts: %d tensors, %d kvs in %d bytes" % (n_tensors, n_kv, self.file_size))
        for i in range(n_kv):
            key = self._str("key of kv %d" % i)
            if key in self.kv:
                self._fail("duplicate key '%s'" % key)
            vtype = self._scalar(UINT32, "type of '%s'" % key)
            if vtype == ARRAY:
                et = self._scalar(UINT32, "element type of '%s'" % key)
                count = self._scalar(UINT64, "element count of '%s'" % key)
                if et == ARRAY:
                    self._fail("'%s': nested array" % key)
                if et == STRING:
                    if count * 8 > self.file_size - self._pos:
                        self._fail("truncated: '%s' claims %d strings" % (key, count))
                    val = [self._str("element %d of '%s'" % (j, key)) for j in range(count)]
                elif et in _SCALAR_NP:
                    dt = np.dtype(_SCALAR_NP[et])
                    if count * dt.itemsize > self.file_size - self._pos:
                        self._fail("truncated: '%s' claims %d elements" % (key, count))
                    val = np.frombuffer(self._take(count * dt.itemsize, key), dt).copy()
                    if et == BOOL:
                        if np.any(val > 1):
                            self._fail("'%s': bool element not 0/1" % key)
                        val = val.astype(bool)
                else:
                    self._fail("'%s': unknown element type %d" % (key, et))
                self.kv[key] = Value(ARRAY, val, et)
            else:
                self.kv[key] = Value(vtype, self._value(vtype, "value of '%s'" % key), None)

        self.alignment = DEFAULT_ALIGNMENT
        if "general.alignment" in self.kv:
            a = self.kv["general.alignment"]
            if a.vtype != UINT32 or a.value == 0 or (a.value & (a.value - 1)):
                self._fail("general.alignment must be a u32 power of two, got %r" % (a,))
            self.alignment = a.value

        infos = []
        for i in range(n_tensors):
            name = self._str("name of tensor %d" % i)
            if name in self.tensors:
                self._fail("duplicate tensor name '%s'" % name)
            n_dims = self._scalar(UINT32, "n_dims of '%s'" % name)
            if not 1 <= n_dims <= 4:
                self._fail("tensor '%s': %d dims (need 1..4)" % (name, n_dims))
            ne = [self._scalar(UINT64, "ne of '%s'" % name) for _ in range(n_dims)]
            total = 1
            for d in ne:
                if d < 1 or d > (1 << 40):
                    self._fail("tensor '%s': absurd dimension %d" % (name, d))
                total *= d
                if total > (1 << 48):
                    self._fail("tensor '%s': absurd element count" % name)
            gtype = self._scalar(UINT32, "type of '%s'" % name)
            offset = self._scalar(UINT64, "offset of '%s'" % name)
            try:
                nbytes = tensor_nbytes(gtype, ne)
            except GGUFError as e:
                self._fail("tensor '%s': %s" % (name, e))
            info = TensorInfo(name, tuple(ne), gtype, offset, nbytes)
            self.tensors[name] = info
            infos.append(info)

        self.data_offset = (self._pos + self.alignment - 1) // self.alignment * self.alignment
        if infos and self.data_offset > self.file_size:
            self._fail("truncated: data section starts at %d of %d" % (self.data_offset, self.file_size))
        spans = []
        for t in infos:
            if t.offset % self.alignment:
                self._fail("tensor '%s': offset %d is not a multiple of the alignment %d"
                           % (t.name, t.offset, self.alignment))
            end = self.data_offset + t.offset + t.nbytes
            if end > self.file_size:
                self._fail("tensor '%s' ends at byte %d of %d" % (t.name, end, self.file_size))
            t.data_start = self.data_offset + t.offset
            spans.append((t.offset, t.offset + t.nbytes, t.name))
        spans.sort()
        for a, b in zip(spans, spans[1:]):
            if b[0] < a[1]:
                self._fail("tensors '%s' and '%s' overlap" % (a[2], b[2]))

    # -- accessors
    def get(self, key, default=None):
        """The plain value of `key` (lists/arrays for ARRAY), or default."""
        v = self.kv.get(key)
        return default if v is None else v.value

    def raw(self, name):
        """The raw bytes of tensor `name` (a memoryview into the mapping, nbytes long)."""
        t = self._info(name)
        return memoryview(self._mm)[t.data_start:t.data_start + t.nbytes]

    def _info(self, name):
        t = self.tensors.get(name)
        if t is None:
            self._fail("no tensor '%s'" % name)
        return t

    def tensor(self, name):
        """Tensor data as numpy: float32 for F32/F16/BF16 (F16 and BF16 converted exactly),
        the stored integer/float type for I8..F64 (read-only views into the file where no
        conversion is needed). For I2_S use ternary()."""
        t = self._info(name)
        if t.gtype == I2_S:
            self._fail("tensor '%s' is i2_s: use ternary()" % name)
        if t.gtype not in _PLAIN:
            self._fail("tensor '%s': no data access for type %s" % (name, TYPE_NAMES.get(t.gtype, t.gtype)))
        a = np.frombuffer(self._mm, _PLAIN[t.gtype][1], t.n_elements, t.data_start).reshape(t.shape)
        if t.gtype == F16:
            return a.astype(np.float32)
        if t.gtype == BF16:
            return bf16_bits_to_f32(a)
        return a

    def tensor_f16_view(self, name):
        """Read-only float16 view of an F16 tensor (no conversion), for large embeddings."""
        t = self._info(name)
        if t.gtype != F16:
            self._fail("tensor '%s' is %s, not f16" % (name, TYPE_NAMES.get(t.gtype, t.gtype)))
        return np.frombuffer(self._mm, "<f2", t.n_elements, t.data_start).reshape(t.shape)

    def ternary(self, name):
        """An I2_S tensor as (int8 array of shape `shape` with values in {-1,0,1}, float32 scale)."""
        t = self._info(name)
        if t.gtype != I2_S:
            self._fail("tensor '%s' is %s, not i2_s" % (name, TYPE_NAMES.get(t.gtype, t.gtype)))
        try:
            w, scale = i2s_unpack(self.raw(name), t.n_elements)
        except GGUFError as e:
            self._fail("tensor '%s': %s" % (name, e))
        return w.reshape(t.shape), scale


# ---- writer ----------------------------------------------------------------------------

class GGUFWriter:
    """Collects KVs and tensors, then write() emits a v3 (or v2) file: tensors in the
    order added, each at an offset that is a multiple of the alignment, padded with zeros.

    Tensor data is either an array (converted to the declared type) or a callable that
    returns an iterable of bytes chunks (for tensors too large to hold twice in memory);
    the total must equal the type's size."""

    def __init__(self, path, version=3, alignment=DEFAULT_ALIGNMENT):
        if version not in (2, 3):
            raise GGUFError("can write GGUF version 2 or 3, not %d" % version)
        if alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError("alignment %d is not a power of two" % alignment)
        self.path, self.version, self.alignment = str(path), version, alignment
        self.kv = {}
        self._packed = {}  # key -> its encoded bytes (checked when added)
        self.tensors = []  # (name, ne, gtype, producer)
        if alignment != DEFAULT_ALIGNMENT:
            self.add("general.alignment", Value(UINT32, alignment))

    def add(self, key, value):
        """Adds a KV: `value` is a Value, or a plain Python value whose type is inferred:
        bool -> BOOL, int -> INT32 (INT64 if it does not fit), float -> FLOAT32,
        str -> STRING, list/tuple of one of those -> ARRAY."""
        if key in self.kv:
            raise GGUFError("duplicate key '%s'" % key)
        v = value if isinstance(value, Value) else _infer(value)
        try:
            self._packed[key] = _pack_str(key) + struct.pack("<I", v.vtype) + _pack_value(v)
        except GGUFError as e:
            raise GGUFError("key '%s': %s" % (key, e))
        self.kv[key] = v

    def add_tensor(self, name, data, gtype, ne=None):
        """Adds tensor `name` of type `gtype`. `data`: numpy array (shape gives ne unless
        `ne` is passed) or a callable yielding bytes chunks (then `ne` is required).
        For I2_S, pass add_ternary instead."""
        if any(t[0] == name for t in self.tensors):
            raise GGUFError("duplicate tensor name '%s'" % name)
        if callable(data):
            if ne is None:
                raise GGUFError("tensor '%s': a streamed tensor needs ne" % name)
            producer = data
        else:
            arr = np.asarray(data)
            if ne is None:
                ne = tuple(reversed(arr.shape)) or (1,)
            producer = _encoder(gtype, arr, name)
        self.tensors.append((name, tuple(int(d) for d in ne), gtype, producer))

    def add_ternary(self, name, w, scale):
        """Adds an I2_S tensor from a ternary int array of shape (ne1, ne0) and its scale."""
        w = np.asarray(w)
        packed = i2s_pack(w, scale)
        self.add_tensor(name, lambda: [packed], I2_S, ne=tuple(reversed(w.shape)))

    def write(self):
        out = bytearray()
        out += GGUF_MAGIC + struct.pack("<IQQ", self.version, len(self.tensors), len(self.kv))
        for key in self.kv:
            out += self._packed[key]
        offset = 0
        sizes = []
        for name, ne, gtype, _ in self.tensors:
            nbytes = tensor_nbytes(gtype, ne)
            sizes.append(nbytes)
            out += _pack_str(name) + struct.pack("<I", len(ne)) + struct.pack("<%dQ" % len(ne), *ne)
            out += struct.pack("<IQ", gtype, offset)
            offset += (nbytes + self.alignment - 1) // self.alignment * self.alignment
        out += b"\0" * (-len(out) % self.alignment)
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(out)
            for (name, ne, gtype, producer), nbytes in zip(self.tensors, sizes):
                written = 0
                for chunk in producer():
                    chunk = bytes(chunk)
                    written += len(chunk)
                    if written > nbytes:
                        raise GGUFError("tensor '%s': more than its %d bytes" % (name, nbytes))
                    f.write(chunk)
                if written != nbytes:
                    raise GGUFError("tensor '%s': %d bytes written, %d expected" % (name, written, nbytes))
                f.write(b"\0" * (-nbytes % self.alignment))
        os.replace(tmp, self.path)


def _infer(value):
    if isinstance(value, bool):
        return Value(BOOL, value)
    if isinstance(value, int):
        return Value(INT32 if -2**31 <= value < 2**31 else INT64, value)
    if isinstance(value, float):
        return Value(FLOAT32, value)
    if isinstance(value, str):
        return Value(STRING, value)
    if isinstance(value, (list, tuple)):
        if not value:
            raise GGUFError("cannot infer the element type of an empty list")
        et = _infer(value[0]).vtype
        if et == INT32 and any(_infer(x).vtype == INT64 for x in value):
            et = INT64
        return Value(ARRAY, list(value), et)
    raise GGUFError("cannot infer a GGUF type for %r" % type(value))


def _pack_str(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _pack_value(v):
    if v.vtype == STRING:
        return _pack_str(v.value)
    if v.vtype == ARRAY:
        et = v.elem_type
        if et == ARRAY:
            raise GGUFError("nested arrays are not allowed")
        head = struct.pack("<IQ", et, len(v.value))
        if et == STRING:
            return head + b"".join(_pack_str(s) for s in v.value)
        dt = np.dtype(_SCALAR_NP[et])
        if dt.kind in "iu" and et != BOOL and len(v.value):
            # Range-check in Python ints: np.asarray of big u64 lists silently goes through float64.
            lo, hi = min(int(x) for x in v.value), max(int(x) for x in v.value)
            if lo < np.iinfo(dt).min or hi > np.iinfo(dt).max:
                raise GGUFError("array values do not fit %s" % VTYPE_NAMES[et])
        return head + np.array(v.value, dtype=dt).tobytes()
    if v.vtype not in _SCALAR_FMT:
        raise GGUFError("unknown value type %d" % v.vtype)
    try:
        return struct.pack(_SCALAR_FMT[v.vtype], int(v.value) if v.vtype == BOOL else v.value)
    except struct.error as e:
        raise GGUFError("value %r does not fit %s: %s" % (v.value, VTYPE_NAMES[v.vtype], e))


def _encoder(gtype, arr, name):
    if gtype == BF16:
        return lambda: [f32_to_bf16_bits(arr).astype("<u2").tobytes()]
    if gtype in _PLAIN:
        dt = _PLAIN[gtype][1]
        if gtype in (I8, I16, I32, I64) and arr.size:
            info = np.iinfo(np.dtype(dt))
            if arr.min() < info.min or arr.max() > info.max:
                raise GGUFError("tensor '%s': values do not fit %s" % (name, TYPE_NAMES[gtype]))
        return lambda: [arr.astype(dt).tobytes()]
    raise GGUFError("tensor '%s': cannot encode type %s from an array" % (name, TYPE_NAMES.get(gtype, gtype)))
