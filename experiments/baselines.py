"""Classic federated-learning update codecs, the baselines the NNC codec is measured against.

Each class implements :class:`nnc_fl.codecs.UpdateCodec` and is registered under its name when this
module is imported:

============  ==============================================================================
name          what it sends for each floating-point tensor
============  ==============================================================================
``zstd``      the exact bytes, zstd-compressed (lossless reference)
``fp16``      IEEE half precision (round to nearest even; beyond +-65504 becomes +-inf)
``int8-zstd`` 8-bit uniform quantisation, ``scale = max|x| / 127`` (float32), then zstd
``topk``      the ``k = ceil(ratio * n)`` largest magnitudes (DGC-style sparsification):
              positions as delta-coded LEB128 varints, values as float32, then zstd
``stc``       sparse ternary compression (Sattler et al., IEEE TNNLS 2019): the top-k set to
              ``+-mu`` with ``mu = mean |top-k values|``; positions Golomb-coded with the paper's
              parameter ``b* = 1 + floor(log2(log(phi - 1) / log(1 - p)))``, ``p = k / n``;
              one sign bit per kept value
============  ==============================================================================

Integer and bool tensors, and every tensor when ``encode(..., exact=True)``, are stored exactly.
``topk`` and ``stc`` keep at most the non-zero entries (zeros are never "kept"); ties between equal
magnitudes go to the lower flat index. Error feedback (residual accumulation) is not done here: the
client wrapper keeps ``delta - decode(encode(delta))``, so the codecs are stateless and
deterministic.

Container (shared by all five; little-endian; "one way to write a stream")::

    offset size  field
    0      4     magic b"NFLB"
    4      1     version (1)
    5      1     codec id (zstd 1, fp16 2, int8-zstd 3, topk 4, stc 5)
    6      1     flags: bit 0 = body is one zstd frame; other bits 0
    7      1     fingerprint length F (0 = none, at most 64)
    8      8     body length B (uncompressed), at most MAX_BODY_BYTES
    16     F     fingerprint
    16+F   ...   the body: B bytes, or one zstd frame whose content size is B, to the end

    body   = u32 tensor count, then per tensor an entry, then the payloads in entry order,
             which must tile the rest of the body exactly
    entry  = u16 name length, UTF-8 name, u8 dtype code, u8 method, u8 ndim, ndim x u32 dims,
             u64 payload length

Payload of each method (``n`` = number of elements of the tensor)::

    RAW  0   n items of the tensor's dtype
    FP16 1   n float16
    INT8 2   f32 scale, n int8 in [-127, 127]
    TOPK 3   u64 k, k varints (gap to the previous position minus one; first from -1), k f32 values
    STC  4   u64 k, u8 Golomb parameter b, f32 mu, u64 Golomb byte count G, G bytes of Golomb code
             (MSB first, zero padded), ceil(k / 8) bytes of sign bits (1 = negative, zero padded)

Every header field is bounded before it is used, and :meth:`decode` raises
:class:`nnc_fl.FormatError` -- and nothing else -- for any malformed, truncated or altered stream.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numba
import numpy as np
import zstandard

from nnc_fl.codecs import ParamValue, register_codec
from nnc_fl.errors import FormatError

# --------------------------------------------------------------------------------------------
# Limits and codes
# --------------------------------------------------------------------------------------------

MAGIC = b"NFLB"
VERSION = 1
HEADER_SIZE = 16
MAX_FINGERPRINT_BYTES = 64
MAX_BODY_BYTES = 1 << 31
MAX_TENSORS = 100_000
MAX_NAME_BYTES = 1024
MAX_NDIM = 32
MAX_DIM = (1 << 32) - 1
MAX_TENSOR_ELEMENTS = 1 << 31
MAX_TOTAL_ELEMENTS = 1 << 31

CODEC_IDS = {"zstd": 1, "fp16": 2, "int8-zstd": 3, "topk": 4, "stc": 5}
_CODEC_NAMES = {v: k for k, v in CODEC_IDS.items()}
_FLAG_ZSTD = 0x01

RAW, FP16, INT8, TOPK, STC = 0, 1, 2, 3, 4
_METHOD_NAMES = {RAW: "raw", FP16: "fp16", INT8: "int8", TOPK: "topk", STC: "stc"}

_DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(s) for s in ("<f2", "<f4", "<f8", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "|b1")
)
_DTYPE_CODES = {dt: i for i, dt in enumerate(_DTYPES)}

_MIN_ENTRY_BYTES = 2 + 1 + 1 + 1 + 8
_MAX_VARINT_BYTES = 5  # gaps are < MAX_TENSOR_ELEMENTS = 2**31 < 2**35
_MAX_GOLOMB_PARAM = 31
_GOLDEN = (1.0 + math.sqrt(5.0)) / 2.0

_U16, _U32, _U64, _F32 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q"), struct.Struct("<f")


@dataclass(frozen=True)
class _Entry:
    """One tensor of a container: its description and its (still coded) payload."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    method: int
    payload: bytes

    @property
    def size(self) -> int:
        return math.prod(self.shape)


# --------------------------------------------------------------------------------------------
# Container: writing
# --------------------------------------------------------------------------------------------


def _little_endian(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("<") if dtype.byteorder not in ("|", "<") else dtype


def _check_tensor(name: object, value: object) -> tuple[str, np.ndarray]:
    """Validate one input tensor; return it with a little-endian dtype of the supported table."""
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, got {type(name).__name__}")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"tensor name {name!r} is not valid UTF-8: {exc}") from exc
    if len(encoded) > MAX_NAME_BYTES:
        raise ValueError(f"tensor name {name[:40]!r}... is {len(encoded)} bytes, limit {MAX_NAME_BYTES}")
    arr = np.asarray(value)
    dtype = _little_endian(arr.dtype)
    if dtype not in _DTYPE_CODES:
        raise ValueError(f"tensor {name!r} has unsupported dtype {arr.dtype}")
    if arr.ndim > MAX_NDIM or any(d > MAX_DIM for d in arr.shape):
        raise ValueError(f"tensor {name!r} has shape {arr.shape}, beyond the container's limits")
    if arr.size > MAX_TENSOR_ELEMENTS:
        raise ValueError(f"tensor {name!r} has {arr.size} elements, limit {MAX_TENSOR_ELEMENTS}")
    return name, np.asarray(arr, dtype=dtype, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)


def _entry_bytes(name: str, arr: np.ndarray, method: int, payload_len: int) -> bytes:
    encoded = name.encode("utf-8")
    parts = [_U16.pack(len(encoded)), encoded, bytes([_DTYPE_CODES[arr.dtype], method, arr.ndim])]
    parts += [_U32.pack(d) for d in arr.shape]
    parts.append(_U64.pack(payload_len))
    return b"".join(parts)


def _pack_container(
    codec_id: int,
    items: list[tuple[str, np.ndarray, int, bytes]],
    fingerprint: bytes | None,
    zstd_level: int | None,
) -> bytes:
    """Write the container for ``(name, array, method, payload)`` items."""
    if fingerprint is None:
        fingerprint = b""
    elif not isinstance(fingerprint, (bytes, bytearray)) or not 1 <= len(fingerprint) <= MAX_FINGERPRINT_BYTES:
        raise ValueError(f"fingerprint must be 1 to {MAX_FINGERPRINT_BYTES} bytes or None")
    if len(items) > MAX_TENSORS:
        raise ValueError(f"{len(items)} tensors, limit {MAX_TENSORS}")
    if sum(arr.size for _, arr, _, _ in items) > MAX_TOTAL_ELEMENTS:
        raise ValueError(f"more than {MAX_TOTAL_ELEMENTS} elements in total")
    table = [_U32.pack(len(items))]
    table += [_entry_bytes(name, arr, method, len(payload)) for name, arr, method, payload in items]
    body = b"".join(table + [payload for _, _, _, payload in items])
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"body of {len(body)} bytes exceeds the limit {MAX_BODY_BYTES}")
    flags = 0
    stored = body
    if zstd_level is not None:
        flags |= _FLAG_ZSTD
        stored = zstandard.ZstdCompressor(level=zstd_level, write_content_size=True).compress(body)
    header = MAGIC + bytes([VERSION, codec_id, flags, len(fingerprint)]) + _U64.pack(len(body))
    return header + bytes(fingerprint) + stored


# --------------------------------------------------------------------------------------------
# Container: reading (every field bounded before use)
# --------------------------------------------------------------------------------------------


class _Reader:
    """Cursor over bytes whose every read is length-checked (FormatError on truncation)."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, field: str) -> bytes:
        if n > self.remaining:
            raise FormatError(
                f"truncated {self.what}: {field} needs {n} bytes at offset {self.pos}, {self.remaining} left"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return _U16.unpack(self.take(2, field))[0]

    def u32(self, field: str) -> int:
        return _U32.unpack(self.take(4, field))[0]

    def u64(self, field: str) -> int:
        return _U64.unpack(self.take(8, field))[0]

    def f32(self, field: str) -> float:
        return _F32.unpack(self.take(4, field))[0]


def _codec_label(codec_id: int) -> str:
    return _CODEC_NAMES.get(codec_id, f"unknown codec id {codec_id}")


def _read_header(data: bytes) -> tuple[int, int, bytes, int, bytes]:
    """Parse the fixed header: ``(codec_id, flags, fingerprint, body_len, stored_body)``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FormatError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise FormatError(f"stream of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    if data[:4] != MAGIC:
        raise FormatError(f"bad magic {data[:4]!r}, expected {MAGIC!r}")
    version, codec_id, flags, fp_len = data[4], data[5], data[6], data[7]
    if version != VERSION:
        raise FormatError(f"unsupported container version {version} (this reader knows {VERSION})")
    if codec_id not in _CODEC_NAMES:
        raise FormatError(f"unknown codec id {codec_id}")
    if flags & ~_FLAG_ZSTD:
        raise FormatError(f"unknown flag bits {flags:#04x}")
    if fp_len > MAX_FINGERPRINT_BYTES:
        raise FormatError(f"fingerprint length {fp_len} exceeds {MAX_FINGERPRINT_BYTES}")
    body_len = _U64.unpack(data[8:16])[0]
    if body_len > MAX_BODY_BYTES:
        raise FormatError(f"body length {body_len} exceeds the limit {MAX_BODY_BYTES}")
    if len(data) < HEADER_SIZE + fp_len:
        raise FormatError(f"truncated stream: the {fp_len}-byte fingerprint is cut off")
    fingerprint = data[HEADER_SIZE : HEADER_SIZE + fp_len]
    return codec_id, flags, fingerprint, body_len, data[HEADER_SIZE + fp_len :]


def _unzstd(stored: bytes, body_len: int) -> bytes:
    """Decompress the single zstd frame of a body, which must declare exactly ``body_len`` bytes."""
    try:
        declared = zstandard.frame_content_size(stored)
    except zstandard.ZstdError as exc:
        raise FormatError(f"bad zstd frame header: {exc}") from exc
    if declared != body_len:
        raise FormatError(f"zstd frame declares {declared} bytes, header says {body_len}")
    try:
        body = zstandard.ZstdDecompressor().decompress(stored, max_output_size=body_len, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise FormatError(f"corrupt zstd body: {exc}") from exc
    if len(body) != body_len:
        raise FormatError(f"zstd body decompressed to {len(body)} bytes, header says {body_len}")
    return body


def _read_entry(reader: _Reader, allowed: frozenset[int]) -> tuple[str, np.dtype, tuple[int, ...], int, int]:
    name_len = reader.u16("name length")
    if name_len > MAX_NAME_BYTES:
        raise FormatError(f"tensor name length {name_len} exceeds {MAX_NAME_BYTES}")
    try:
        name = reader.take(name_len, "tensor name").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"tensor name is not UTF-8: {exc}") from exc
    dtype_code, method, ndim = reader.u8("dtype"), reader.u8("method"), reader.u8("ndim")
    if dtype_code >= len(_DTYPES):
        raise FormatError(f"tensor {name!r}: unknown dtype code {dtype_code}")
    dtype = _DTYPES[dtype_code]
    if method not in allowed:
        raise FormatError(f"tensor {name!r}: method {_METHOD_NAMES.get(method, method)} is not allowed here")
    if method != RAW and dtype.kind != "f":
        raise FormatError(f"tensor {name!r}: lossy method {_METHOD_NAMES[method]} on non-float dtype {dtype}")
    if ndim > MAX_NDIM:
        raise FormatError(f"tensor {name!r}: {ndim} dimensions exceed {MAX_NDIM}")
    shape = tuple(reader.u32("dimension") for _ in range(ndim))
    if math.prod(shape) > MAX_TENSOR_ELEMENTS:
        raise FormatError(f"tensor {name!r}: shape {shape} exceeds {MAX_TENSOR_ELEMENTS} elements")
    return name, dtype, shape, method, reader.u64("payload length")


def _parse_body(body: bytes, allowed: frozenset[int]) -> list[_Entry]:
    reader = _Reader(body, "body")
    count = reader.u32("tensor count")
    if count > MAX_TENSORS or count * _MIN_ENTRY_BYTES > reader.remaining:
        raise FormatError(f"tensor count {count} is impossible for a {len(body)}-byte body (limit {MAX_TENSORS})")
    heads, names, total_elements, total_payload = [], set(), 0, 0
    for _ in range(count):
        name, dtype, shape, method, payload_len = _read_entry(reader, allowed)
        if name in names:
            raise FormatError(f"duplicate tensor name {name!r}")
        names.add(name)
        total_elements += math.prod(shape)
        total_payload += payload_len
        if total_elements > MAX_TOTAL_ELEMENTS:
            raise FormatError(f"more than {MAX_TOTAL_ELEMENTS} elements in total")
        if total_payload > len(body):
            raise FormatError(f"payload lengths add up to more than the {len(body)}-byte body")
        heads.append((name, dtype, shape, method, payload_len))
    if total_payload != reader.remaining:
        raise FormatError(f"payloads declare {total_payload} bytes but {reader.remaining} follow the table")
    return [_Entry(n, dt, sh, m, reader.take(ln, f"payload of {n!r}")) for n, dt, sh, m, ln in heads]


def _unpack_container(data: bytes, codec_id: int, zstd: bool, allowed: frozenset[int]) -> tuple[bytes, list[_Entry]]:
    """Check the header against the expecting codec and split the body into entries."""
    got_id, flags, fingerprint, body_len, stored = _read_header(data)
    if got_id != codec_id:
        raise FormatError(f"stream was written by codec {_codec_label(got_id)!r}, not {_codec_label(codec_id)!r}")
    if bool(flags & _FLAG_ZSTD) != zstd:
        raise FormatError(
            f"codec {_codec_label(codec_id)!r} streams {'must' if zstd else 'must not'} be zstd-compressed"
        )
    if zstd:
        body = _unzstd(stored, body_len)
    elif len(stored) != body_len:
        raise FormatError(f"body has {len(stored)} bytes, header says {body_len}")
    else:
        body = stored
    return fingerprint, _parse_body(body, allowed)


def read_fingerprint(data: bytes) -> bytes | None:
    """The fingerprint stored in a baseline stream's header (``None`` if it has none).

    Only the header is checked; raises :class:`nnc_fl.FormatError` if it is malformed.
    """
    _, _, fingerprint, _, _ = _read_header(data)
    return fingerprint or None


# --------------------------------------------------------------------------------------------
# Per-tensor methods: RAW, FP16, INT8
# --------------------------------------------------------------------------------------------


def _expect_len(entry: _Entry, expected: int) -> None:
    if len(entry.payload) != expected:
        raise FormatError(
            f"tensor {entry.name!r}: {_METHOD_NAMES[entry.method]} payload has {len(entry.payload)} bytes, "
            f"shape {entry.shape} needs {expected}"
        )


def _native(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("=")


def _check_range(entry: _Entry, max_abs: float, what: str) -> None:
    """Values up to ``max_abs`` must be finite in the tensor's dtype (encoders never exceed it)."""
    if max_abs > float(np.finfo(entry.dtype).max):
        raise FormatError(f"tensor {entry.name!r}: {what} {max_abs:g} overflows {entry.dtype}")


def _raw_encode(arr: np.ndarray) -> bytes:
    return arr.tobytes()


def _raw_decode(entry: _Entry) -> np.ndarray:
    _expect_len(entry, entry.size * entry.dtype.itemsize)
    if entry.dtype.kind == "b":
        raw = np.frombuffer(entry.payload, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise FormatError(f"tensor {entry.name!r}: bool bytes must be 0 or 1")
    return np.frombuffer(entry.payload, dtype=entry.dtype).astype(_native(entry.dtype)).reshape(entry.shape)


def _fp16_encode(arr: np.ndarray) -> bytes:
    return arr.astype("<f2").tobytes()


def _fp16_decode(entry: _Entry) -> np.ndarray:
    _expect_len(entry, 2 * entry.size)
    return np.frombuffer(entry.payload, dtype="<f2").astype(_native(entry.dtype)).reshape(entry.shape)


def _require_finite(name: str, arr: np.ndarray, codec: str) -> None:
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"tensor {name!r} has non-finite values, which codec {codec!r} cannot represent")


def int8_scale(arr: np.ndarray) -> np.float32:
    """The per-tensor step of the ``int8-zstd`` codec: ``max|x| / 127`` rounded to float32."""
    peak = float(np.max(np.abs(arr), initial=0.0))
    with np.errstate(over="ignore"):
        scale = np.float32(peak / 127.0)
    return scale


def _int8_encode(name: str, arr: np.ndarray) -> bytes:
    _require_finite(name, arr, "int8-zstd")
    scale = int8_scale(arr)
    if not np.isfinite(scale):
        raise ValueError(f"tensor {name!r}: max |x| is beyond float32, no int8 scale fits")
    if scale == 0:
        q = np.zeros(arr.shape, dtype=np.int8)
    else:
        q = np.clip(np.rint(arr.astype(np.float64) / np.float64(scale)), -127, 127).astype(np.int8)
    return _F32.pack(float(scale)) + q.tobytes()


def _int8_decode(entry: _Entry) -> np.ndarray:
    _expect_len(entry, 4 + entry.size)
    scale = _F32.unpack(entry.payload[:4])[0]
    if not (math.isfinite(scale) and scale >= 0.0):
        raise FormatError(f"tensor {entry.name!r}: int8 scale {scale} is not a finite non-negative number")
    _check_range(entry, 127.0 * scale, "int8 range 127 * scale")
    q = np.frombuffer(entry.payload, dtype=np.int8, offset=4)
    if q.size and q.min() < -127:
        raise FormatError(f"tensor {entry.name!r}: int8 value -128 is outside [-127, 127]")
    return (q.astype(np.float64) * scale).astype(_native(entry.dtype)).reshape(entry.shape)


# --------------------------------------------------------------------------------------------
# Top-k selection and varints (TOPK)
# --------------------------------------------------------------------------------------------


def sparsity_k(n: int, ratio: float) -> int:
    """How many entries ``topk`` / ``stc`` aim to keep of ``n``: ``ceil(ratio * n)``, at most ``n``."""
    return min(n, math.ceil(ratio * n))


def topk_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Sorted flat indices of the ``k`` largest ``|values|`` among the non-zero ones.

    Ties at the threshold go to the lower index, so the choice is unique. Fewer than ``k``
    indices come back when fewer than ``k`` entries are non-zero.
    """
    mag = np.abs(values.reshape(-1))
    nonzero = np.count_nonzero(mag)
    if k >= nonzero:
        return np.flatnonzero(mag)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    threshold = np.partition(mag, mag.size - k)[mag.size - k]
    above = np.flatnonzero(mag > threshold)
    at = np.flatnonzero(mag == threshold)[: k - above.size]
    return np.sort(np.concatenate([above, at]))


def varint_encode(values: np.ndarray) -> bytes:
    """LEB128 (7 bits per byte, low group first, high bit = more follows) of non-negative integers."""
    v = np.asarray(values, dtype=np.uint64)
    if v.size == 0:
        return b""
    nbytes = np.ones(v.shape, dtype=np.int64)
    rest = v >> np.uint64(7)
    while rest.any():
        nbytes += rest > 0
        rest >>= np.uint64(7)
    starts = np.cumsum(nbytes) - nbytes
    out = np.empty(int(nbytes.sum()), dtype=np.uint8)
    for j in range(int(nbytes.max())):
        sel = nbytes > j
        group = ((v[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)).astype(np.uint8)
        more = (nbytes[sel] - 1 > j).astype(np.uint8) << 7
        out[starts[sel] + j] = group | more
    return out.tobytes()


def varint_decode(data: bytes, count: int, max_bytes: int = _MAX_VARINT_BYTES) -> np.ndarray:
    """Inverse of :func:`varint_encode` for exactly ``count`` values filling ``data`` exactly.

    Raises :class:`nnc_fl.FormatError` for a wrong count, a value running past the end, a value
    longer than ``max_bytes`` or a non-minimal (overlong) encoding.
    """
    b = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(b < 0x80)
    if ends.size != count or (count and ends[-1] != b.size - 1) or (not count and b.size):
        raise FormatError(f"varint region of {b.size} bytes does not hold exactly {count} values")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > max_bytes:
        raise FormatError(f"varint of {lengths.max()} bytes exceeds {max_bytes}")
    if np.any((lengths > 1) & (b[ends] == 0)):
        raise FormatError("overlong varint (a trailing zero group)")
    out = np.zeros(count, dtype=np.int64)
    for j in range(int(lengths.max())):
        sel = lengths > j
        out[sel] |= (b[starts[sel] + j].astype(np.int64) & 0x7F) << (7 * j)
    return out


def _positions_from_gaps(gaps: np.ndarray, n: int, name: str) -> np.ndarray:
    """Positions from ``gap = position - previous - 1`` (previous starts at -1); must stay below ``n``."""
    if gaps.size and gaps.max() >= n:
        raise FormatError(f"tensor {name!r}: position gap {gaps.max()} exceeds the {n} elements")
    positions = np.cumsum(gaps + 1) - 1
    if positions.size and positions[-1] >= n:
        raise FormatError(f"tensor {name!r}: position {positions[-1]} is past the {n} elements")
    return positions


def _topk_encode(name: str, arr: np.ndarray, ratio: float) -> bytes:
    _require_finite(name, arr, "topk")
    flat = arr.reshape(-1)
    idx = topk_indices(flat, sparsity_k(flat.size, ratio))
    values = flat[idx].astype("<f4")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"tensor {name!r}: kept values overflow float32")
    gaps = np.diff(idx, prepend=-1) - 1
    return _U64.pack(idx.size) + varint_encode(gaps) + values.tobytes()


def _topk_decode(entry: _Entry) -> np.ndarray:
    reader = _Reader(entry.payload, f"topk payload of {entry.name!r}")
    k = reader.u64("k")
    if k > entry.size or reader.remaining < 5 * k:
        raise FormatError(
            f"tensor {entry.name!r}: k = {k} impossible for {entry.size} elements / {len(entry.payload)} bytes"
        )
    positions = varint_decode(reader.take(reader.remaining - 4 * k, "positions"), k)
    positions = _positions_from_gaps(positions, entry.size, entry.name)
    values = np.frombuffer(reader.take(4 * k, "values"), dtype="<f4")
    if not np.all(np.isfinite(values)):
        raise FormatError(f"tensor {entry.name!r}: non-finite top-k value")
    _check_range(entry, float(np.max(np.abs(values), initial=0.0)), "top-k value")
    out = np.zeros(entry.size, dtype=_native(entry.dtype))
    out[positions] = values
    return out.reshape(entry.shape)


# --------------------------------------------------------------------------------------------
# Golomb position coding and ternarisation (STC)
# --------------------------------------------------------------------------------------------


def golomb_parameter(k: int, n: int) -> int:
    """STC's Golomb parameter ``b* = 1 + floor(log2(log(phi - 1) / log(1 - p)))``, ``p = k / n``, >= 0.

    Distances ``d >= 1`` between kept positions are coded as ``q = (d - 1) >> b*`` ones, a zero,
    and the ``b*`` low bits of ``d - 1`` (Sattler et al. 2019, Algorithm 3).
    """
    if k <= 0 or k >= n:
        return 0
    p = k / n
    ratio = math.log(_GOLDEN - 1.0) / math.log1p(-p)
    return min(_MAX_GOLOMB_PARAM, max(0, 1 + math.floor(math.log2(ratio))))


def golomb_encode(positions: np.ndarray, b: int) -> tuple[bytes, int]:
    """Golomb-code the distances of increasing ``positions`` (first from -1): ``(bytes, bit count)``."""
    v = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1) - 1
    if v.size == 0:
        return b"", 0
    q = v >> b
    lengths = q + 1 + b
    starts = np.cumsum(lengths) - lengths
    bits = np.zeros(int(lengths.sum()), dtype=np.uint8)
    ones = int(q.sum())
    if ones:
        run_start = np.repeat(starts, q)
        offset = np.arange(ones) - np.repeat(np.cumsum(q) - q, q)
        bits[run_start + offset] = 1
    for j in range(b):
        bits[starts + q + 1 + j] = (v >> (b - 1 - j)) & 1
    return np.packbits(bits).tobytes(), bits.size


def _golomb_decode_py(buf: np.ndarray, nbits: int, k: int, b: int, n: int, out: np.ndarray) -> int:
    """Decode ``k`` Golomb codewords into ``out``; return the bits used, or a negative error code.

    -1: the code ends early; -2: a position reaches ``n``; -3: a unary run is longer than possible.
    Plain Python (the reference); :func:`_golomb_decode` is the same function compiled by numba.
    """
    bit_pos = 0
    prev = -1
    q_limit = (n >> b) + 1
    for i in range(k):
        q = 0
        while True:
            if bit_pos >= nbits:
                return -1
            bit = (int(buf[bit_pos >> 3]) >> (7 - (bit_pos & 7))) & 1
            bit_pos += 1
            if bit == 0:
                break
            q += 1
            if q > q_limit:
                return -3
        if bit_pos + b > nbits:
            return -1
        r = 0
        for _ in range(b):
            r = (r << 1) | ((int(buf[bit_pos >> 3]) >> (7 - (bit_pos & 7))) & 1)
            bit_pos += 1
        position = prev + (q << b) + r + 1
        if position >= n:
            return -2
        out[i] = position
        prev = position
    return bit_pos


_golomb_decode = numba.njit(cache=False, nogil=True)(_golomb_decode_py)

_GOLOMB_ERRORS = {-1: "Golomb code ends early", -2: "Golomb position past the tensor", -3: "Golomb unary run too long"}


def golomb_decode(data: bytes, k: int, b: int, n: int, *, jit: bool = True) -> np.ndarray:
    """Inverse of :func:`golomb_encode`: ``k`` positions below ``n`` that use ``data`` exactly.

    ``data`` must end within 7 zero padding bits of the last codeword; raises
    :class:`nnc_fl.FormatError` otherwise. ``jit=False`` runs the pure-Python reference.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    out = np.zeros(k, dtype=np.int64)
    kernel = _golomb_decode if jit else _golomb_decode_py
    used = kernel(buf, buf.size * 8, k, b, n, out) if k else 0
    if used < 0:
        raise FormatError(_GOLOMB_ERRORS[used])
    if buf.size != (used + 7) // 8:
        raise FormatError(f"Golomb code uses {used} bits but occupies {buf.size} bytes")
    if used % 8 and buf[-1] & ((1 << (8 - used % 8)) - 1):
        raise FormatError("non-zero padding after the Golomb code")
    return out


def _stc_encode(name: str, arr: np.ndarray, ratio: float) -> bytes:
    _require_finite(name, arr, "stc")
    flat = arr.reshape(-1)
    idx = topk_indices(flat, sparsity_k(flat.size, ratio))
    kept = flat[idx].astype(np.float64)
    mu = np.float32(np.mean(np.abs(kept))) if idx.size else np.float32(0.0)
    if not np.isfinite(mu):
        raise ValueError(f"tensor {name!r}: mean magnitude overflows float32")
    b = golomb_parameter(idx.size, flat.size)
    code, _ = golomb_encode(idx, b)
    signs = np.packbits((kept < 0).astype(np.uint8)).tobytes()
    return _U64.pack(idx.size) + bytes([b]) + _F32.pack(float(mu)) + _U64.pack(len(code)) + code + signs


def _stc_decode(entry: _Entry) -> np.ndarray:
    reader = _Reader(entry.payload, f"stc payload of {entry.name!r}")
    k, b, mu = reader.u64("k"), reader.u8("Golomb parameter"), reader.f32("mu")
    if k > entry.size:
        raise FormatError(f"tensor {entry.name!r}: k = {k} exceeds its {entry.size} elements")
    if b > _MAX_GOLOMB_PARAM:
        raise FormatError(f"tensor {entry.name!r}: Golomb parameter {b} exceeds {_MAX_GOLOMB_PARAM}")
    if not (math.isfinite(mu) and mu >= 0.0):
        raise FormatError(f"tensor {entry.name!r}: mu {mu} is not a finite non-negative number")
    _check_range(entry, mu, "mu")
    code_len = reader.u64("Golomb byte count")
    if code_len > reader.remaining or code_len + (k + 7) // 8 != reader.remaining:
        raise FormatError(
            f"tensor {entry.name!r}: Golomb/sign sections do not tile the {len(entry.payload)}-byte payload"
        )
    positions = golomb_decode(reader.take(code_len, "Golomb code"), k, b, entry.size)
    sign_bytes = np.frombuffer(reader.take((k + 7) // 8, "sign bits"), dtype=np.uint8)
    if k % 8 and sign_bytes[-1] & ((1 << (8 - k % 8)) - 1):
        raise FormatError(f"tensor {entry.name!r}: non-zero padding after the sign bits")
    negative = np.unpackbits(sign_bytes, count=k).astype(bool)
    out = np.zeros(entry.size, dtype=_native(entry.dtype))
    out[positions] = np.where(negative, -mu, mu)
    return out.reshape(entry.shape)


_DECODERS = {RAW: _raw_decode, FP16: _fp16_decode, INT8: _int8_decode, TOPK: _topk_decode, STC: _stc_decode}


# --------------------------------------------------------------------------------------------
# The codecs
# --------------------------------------------------------------------------------------------


def _check_level(level: object) -> int:
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 22:
        raise ValueError(f"zstd level must be an integer in 1..22, got {level!r}")
    return level


def _check_ratio(ratio: object) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}")
    return float(ratio)


class _ContainerCodec:
    """Shared encode/decode: floats go through :meth:`_lossy`, everything else is stored exactly."""

    name: str = ""
    _method: int = RAW  # the lossy method for floating-point tensors
    _zstd_level: int | None = None

    def _lossy(self, name: str, arr: np.ndarray) -> bytes:
        return _raw_encode(arr)

    def encode(
        self,
        tensors: Mapping[str, np.ndarray],
        *,
        fingerprint: bytes | None = None,
        exact: bool = False,
    ) -> bytes:
        """Code ``tensors`` (names, order, dtypes and shapes kept); ``exact=True`` codes every tensor losslessly.

        Raises ``TypeError`` for a non-mapping or non-str names, ``ValueError`` for unsupported
        dtypes, limits exceeded, a bad fingerprint or (lossy codecs) non-finite float values.
        """
        if not isinstance(tensors, Mapping):
            raise TypeError(f"tensors must be a mapping of name to array, got {type(tensors).__name__}")
        items = []
        for raw_name, value in tensors.items():
            name, arr = _check_tensor(raw_name, value)
            if exact or arr.dtype.kind != "f" or self._method == RAW:
                items.append((name, arr, RAW, _raw_encode(arr)))
            else:
                items.append((name, arr, self._method, self._lossy(name, arr)))
        return _pack_container(CODEC_IDS[self.name], items, fingerprint, self._zstd_level)

    def decode(self, data: bytes) -> dict[str, np.ndarray]:
        """Inverse of :meth:`encode`; raises :class:`nnc_fl.FormatError` (only) for malformed input."""
        allowed = frozenset({RAW, self._method})
        _, entries = _unpack_container(data, CODEC_IDS[self.name], self._zstd_level is not None, allowed)
        return {e.name: _DECODERS[e.method](e) for e in entries}

    def params(self) -> dict[str, ParamValue]:
        """Settings that rebuild this codec with :func:`nnc_fl.codecs.make_codec`."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class ZstdCodec(_ContainerCodec):
    """Lossless: the tensors' bytes, zstd-compressed at ``level``."""

    name = "zstd"

    def __init__(self, *, level: int = 3) -> None:
        self._zstd_level = _check_level(level)

    def params(self) -> dict[str, ParamValue]:
        return {"level": self._zstd_level}


class Fp16Codec(_ContainerCodec):
    """Floating-point tensors as IEEE float16 (no entropy coding); others exact."""

    name = "fp16"
    _method = FP16

    def _lossy(self, name: str, arr: np.ndarray) -> bytes:
        return _fp16_encode(arr)


class Int8ZstdCodec(_ContainerCodec):
    """Per-tensor uniform 8-bit quantisation (``scale = max|x| / 127``), then zstd at ``level``."""

    name = "int8-zstd"
    _method = INT8

    def __init__(self, *, level: int = 3) -> None:
        self._zstd_level = _check_level(level)

    def _lossy(self, name: str, arr: np.ndarray) -> bytes:
        return _int8_encode(name, arr)

    def params(self) -> dict[str, ParamValue]:
        return {"level": self._zstd_level}


class TopKCodec(_ContainerCodec):
    """Top-k sparsification per tensor (``k = ceil(ratio * n)``): varint gaps + float32 values, zstd."""

    name = "topk"
    _method = TOPK

    def __init__(self, *, ratio: float = 0.01, level: int = 3) -> None:
        self.ratio = _check_ratio(ratio)
        self._zstd_level = _check_level(level)

    def _lossy(self, name: str, arr: np.ndarray) -> bytes:
        return _topk_encode(name, arr, self.ratio)

    def params(self) -> dict[str, ParamValue]:
        return {"ratio": self.ratio, "level": self._zstd_level}


class STCCodec(_ContainerCodec):
    """Sparse ternary compression per tensor: top-k -> +-mu, Golomb-coded positions, sign bits."""

    name = "stc"
    _method = STC

    def __init__(self, *, ratio: float = 0.01) -> None:
        self.ratio = _check_ratio(ratio)

    def _lossy(self, name: str, arr: np.ndarray) -> bytes:
        return _stc_encode(name, arr, self.ratio)

    def params(self) -> dict[str, ParamValue]:
        return {"ratio": self.ratio}


BASELINE_CODECS = {cls.name: cls for cls in (ZstdCodec, Fp16Codec, Int8ZstdCodec, TopKCodec, STCCodec)}

for _name, _cls in BASELINE_CODECS.items():
    register_codec(_name, _cls)


__all__ = [
    "BASELINE_CODECS",
    "Fp16Codec",
    "Int8ZstdCodec",
    "STCCodec",
    "TopKCodec",
    "ZstdCodec",
    "golomb_decode",
    "golomb_encode",
    "golomb_parameter",
    "int8_scale",
    "read_fingerprint",
    "sparsity_k",
    "topk_indices",
    "varint_decode",
    "varint_encode",
]
