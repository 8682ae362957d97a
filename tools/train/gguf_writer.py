# Minimal GGUF v3 writer (and reader for checks) in pure Python: metadata, F32/F16/Q8_0 tensors.
# Written for Tessera's trained model from the format as llama.cpp's ggml/gguf read it; no gguf-py.
"""GGUF v3 writer.

File layout (little endian):
  "GGUF" | u32 version=3 | u64 n_tensors | u64 n_kv
  n_kv x (string key | u32 value type | value)
  n_tensors x (string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset in data)
  padding to general.alignment (32) | tensor data, each tensor starting at a multiple of 32
Strings are u64 length + UTF-8 bytes; arrays are u32 element type + u64 count + elements.
ne[0] is the innermost (contiguous) dimension: the reverse of PyTorch's shape order.
"""

import struct

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32

# GGUF metadata value types.
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY, \
    T_UINT64, T_INT64, T_FLOAT64 = range(13)
_SCALAR_FMT = {T_UINT8: "<B", T_INT8: "<b", T_UINT16: "<H", T_INT16: "<h", T_UINT32: "<I",
               T_INT32: "<i", T_FLOAT32: "<f", T_BOOL: "<?", T_UINT64: "<Q", T_INT64: "<q",
               T_FLOAT64: "<d"}

# ggml tensor types used here, with (block size in elements, bytes per block).
GGML_F32, GGML_F16, GGML_Q8_0 = 0, 1, 8
_TYPE_BLOCK = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_Q8_0: (32, 34)}
TYPE_NAMES = {GGML_F32: "F32", GGML_F16: "F16", GGML_Q8_0: "Q8_0"}

# llama_ftype values for general.file_type.
FTYPE_ALL_F32, FTYPE_MOSTLY_F16, FTYPE_MOSTLY_Q8_0 = 0, 1, 7


def tensor_nbytes(ne, ggml_type):
    block, size = _TYPE_BLOCK[ggml_type]
    if ne[0] % block:
        raise ValueError(f"ne[0]={ne[0]} is not a multiple of the {TYPE_NAMES[ggml_type]} block size {block}")
    n = 1
    for d in ne:
        n *= d
    return n // block * size


def _string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _value(vtype, value):
    if vtype == T_STRING:
        return _string(value)
    return struct.pack(_SCALAR_FMT[vtype], value)


def _pad(n):
    return (ALIGNMENT - n % ALIGNMENT) % ALIGNMENT


class GGUFWriter:
    """Collects metadata and tensors, then writes the file in one pass."""

    def __init__(self):
        self.kv = []        # (key, type, value, element type for arrays)
        self.tensors = []   # (name, ne, ggml type, data bytes)
        self._keys = set()
        self._names = set()

    def _add(self, key, vtype, value, etype=None):
        if key in self._keys:
            raise ValueError(f"duplicate metadata key {key}")
        self._keys.add(key)
        self.kv.append((key, vtype, value, etype))

    def add_uint32(self, key, v): self._add(key, T_UINT32, v)
    def add_int32(self, key, v): self._add(key, T_INT32, v)
    def add_float32(self, key, v): self._add(key, T_FLOAT32, v)
    def add_bool(self, key, v): self._add(key, T_BOOL, bool(v))
    def add_string(self, key, v): self._add(key, T_STRING, v)

    def add_array(self, key, etype, values):
        self._add(key, T_ARRAY, list(values), etype)

    def add_tensor(self, name, ne, ggml_type, data):
        """ne in ggml order (ne[0] innermost); data: the raw bytes in that type's layout."""
        if name in self._names:
            raise ValueError(f"duplicate tensor {name}")
        if len(name.encode()) >= 64:
            raise ValueError(f"tensor name {name} longer than ggml's 63 characters")
        want = tensor_nbytes(ne, ggml_type)
        if len(data) != want:
            raise ValueError(f"tensor {name}: {len(data)} bytes, {TYPE_NAMES[ggml_type]} {list(ne)} needs {want}")
        self._names.add(name)
        self.tensors.append((name, list(ne), ggml_type, bytes(data)))

    def write(self, path):
        head = bytearray()
        head += GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(self.tensors), len(self.kv))
        for key, vtype, value, etype in self.kv:
            head += _string(key) + struct.pack("<I", vtype)
            if vtype == T_ARRAY:
                head += struct.pack("<IQ", etype, len(value))
                if etype == T_STRING:
                    for v in value:
                        head += _string(v)
                else:
                    head += struct.pack(f"<{len(value)}{_SCALAR_FMT[etype][1]}", *value)
            else:
                head += _value(vtype, value)
        offset = 0
        for name, ne, gtype, data in self.tensors:
            head += _string(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
            head += struct.pack("<IQ", gtype, offset)
            offset += len(data) + _pad(len(data))
        head += b"\0" * _pad(len(head))
        with open(path, "wb") as f:
            f.write(head)
            for name, ne, gtype, data in self.tensors:
                f.write(data)
                f.write(b"\0" * _pad(len(data)))


def read_gguf(path):
    """Read a GGUF file back: (metadata dict, {name: (ne, type, bytes)}). Used by the checks.
    Raises ValueError naming the file for anything malformed or truncated."""
    try:
        return _read_gguf(path)
    except (struct.error, KeyError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: malformed or truncated GGUF ({type(e).__name__}: {e})") from e


def _read_gguf(path):
    with open(path, "rb") as f:
        buf = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return vals

    def string():
        nonlocal pos
        (n,) = take("<Q")
        s = buf[pos:pos + n].decode("utf-8")
        pos += n
        return s

    def value(vtype):
        if vtype == T_STRING:
            return string()
        if vtype == T_ARRAY:
            etype, n = take("<IQ")
            return [value(etype) for _ in range(n)]
        return take(_SCALAR_FMT[vtype])[0]

    if buf[:4] != GGUF_MAGIC:
        raise ValueError(f"{path}: not a GGUF file")
    pos = 4
    version, n_tensors, n_kv = take("<IQQ")
    if version != GGUF_VERSION:
        raise ValueError(f"{path}: GGUF version {version}, expected {GGUF_VERSION}")
    meta = {}
    for _ in range(n_kv):
        key = string()
        (vtype,) = take("<I")
        meta[key] = value(vtype)
    infos = []
    for _ in range(n_tensors):
        name = string()
        (nd,) = take("<I")
        ne = list(take(f"<{nd}Q"))
        gtype, off = take("<IQ")
        infos.append((name, ne, gtype, off))
    data_start = pos + _pad(pos)
    tensors = {}
    for name, ne, gtype, off in infos:
        n = tensor_nbytes(ne, gtype)
        if data_start + off + n > len(buf):
            raise ValueError(f"{path}: tensor {name} extends past the end of the file")
        tensors[name] = (ne, gtype, buf[data_start + off:data_start + off + n])
    return meta, tensors


def f32_bytes(values):
    return struct.pack(f"<{len(values)}f", *values)


def f16_bytes(values):
    return struct.pack(f"<{len(values)}e", *values)


def _round_half_away(x):
    # ggml's reference quantizer uses roundf: halves round away from zero.
    return int(x + 0.5) if x >= 0 else -int(-x + 0.5)


def quantize_q8_0(values):
    """Reference Q8_0 (ggml block_q8_0): per 32 values an fp16 scale d = absmax/127 followed by 32
    int8 q = round(x / d), halves away from zero, computed with the fp32 d as ggml's
    quantize_row_q8_0_ref does. Pure Python: the reference the vectorised exporter is checked against."""
    if len(values) % 32:
        raise ValueError(f"Q8_0 needs a multiple of 32 values, got {len(values)}")
    out = bytearray()
    for i in range(0, len(values), 32):
        blk = values[i:i + 32]
        amax = max(abs(v) for v in blk)
        d = struct.unpack("<f", struct.pack("<f", amax / 127.0))[0]
        inv = 1.0 / d if d else 0.0
        inv = struct.unpack("<f", struct.pack("<f", inv))[0]
        q = [_round_half_away(struct.unpack("<f", struct.pack("<f", v * inv))[0]) for v in blk]
        out += struct.pack("<e", d) + struct.pack("<32b", *q)
    return bytes(out)


def dequantize_q8_0(data):
    vals = []
    for i in range(0, len(data), 34):
        (d,) = struct.unpack_from("<e", data, i)
        vals.extend(d * q for q in struct.unpack_from("<32b", data, i + 2))
    return vals
