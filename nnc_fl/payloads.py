"""Payloads of the float modes f16, int8, sparse (top-k), ternary (STC) and lowrank (PowerSGD-style
factors): packers and readers.

Format code only (FORMAT.md, "Float modes"): a lossy transform elsewhere chooses the values (the
classic FL baselines of ``experiments/baselines.py``); the ``pack_*`` functions here turn them into
payload bytes, and :func:`decode_payload` turns a plain payload back into the tensor. The reader
distrusts every field: each is bounded before it is used, and every problem raises
:class:`FormatError` naming the tensor and the field. Positions of the sparse mode are LEB128 gaps
(:func:`varint_encode`); those of the ternary mode use STC's Golomb code (:func:`golomb_encode`),
decoded by a numba kernel with a pure-Python twin.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from . import _varint
from . import bitstream as bs
from ._jit import jit
from .bitstream import TensorInfo
from .errors import FormatError

#: Largest Golomb parameter a ternary payload may use (STC's rule gives <= 30 for n <= 2**31).
MAX_GOLOMB_PARAM = 31
_GOLDEN = (1.0 + math.sqrt(5.0)) / 2.0
_F32 = struct.Struct("<f")


# --- varints (arrays of gaps) ----------------------------------------------------------------------


def varint_encode(values: np.ndarray) -> bytes:
    """Minimal LEB128 (7 bits per byte, low group first, high bit = more follows) of integers >= 0."""
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


def varint_decode(data: bytes | memoryview, count: int, max_bytes: int = 9) -> np.ndarray:
    """Inverse of :func:`varint_encode`: exactly ``count`` values filling ``data`` exactly (int64).

    Raises :class:`FormatError` for a wrong count, a value running past the end, a value longer
    than ``max_bytes`` (at most 9, so values stay below 2**63) or a non-minimal encoding. The
    bytes are read by a numba kernel (:func:`nnc_fl._varint.decode_varints`).
    """
    max_bytes = min(max_bytes, 9)
    b = np.frombuffer(data, dtype=np.uint8)
    if count < 0 or count > b.size:  # every value takes at least one byte
        raise FormatError(f"varint region of {b.size} bytes does not hold exactly {count} values")
    out = np.zeros(count, dtype=np.int64)
    status = _varint.decode_varints(b, 0, b.size, count, max_bytes, out)
    if status != _varint.OK:
        raise FormatError(_varint_reason(status, b.size, count, max_bytes))
    return out


def _varint_reason(status: int, size: int, count: int, max_bytes: int) -> str:
    if status == _varint.TOO_LONG:
        return f"varint exceeds {max_bytes} bytes"
    if status == _varint.OVERLONG:
        return "overlong varint (a trailing zero group)"
    return f"varint region of {size} bytes does not hold exactly {count} values"  # SHORT, EXTRA


# --- Golomb position code (ternary mode) -------------------------------------------------------------


def golomb_parameter(k: int, n: int) -> int:
    """STC's Golomb parameter ``b* = 1 + floor(log2(log(phi - 1) / log(1 - p)))``, ``p = k / n``, >= 0.

    The encoder's choice for ``k`` of ``n`` positions (Sattler et al. 2019); a decoder accepts any
    parameter up to :data:`MAX_GOLOMB_PARAM`.
    """
    if k <= 0 or k >= n:
        return 0
    p = k / n
    ratio = math.log(_GOLDEN - 1.0) / math.log1p(-p)
    return min(MAX_GOLOMB_PARAM, max(0, 1 + math.floor(math.log2(ratio))))


def golomb_encode(positions: np.ndarray, b: int) -> tuple[bytes, int]:
    """Golomb code of increasing ``positions`` (distances from the previous, the first from -1).

    A distance ``d >= 1`` becomes ``q = (d - 1) >> b`` ones, a zero, then the ``b`` low bits of
    ``d - 1``, most significant first; the bits are packed MSB first and zero padded. Returns
    ``(bytes, bit count)``.
    """
    v = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1) - 1
    if v.size == 0:
        return b"", 0
    if v.min() < 0:
        raise ValueError("positions must be strictly increasing and >= 0")
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
    Every read is checked against ``nbits`` (the kernel runs without bounds checks).
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


_golomb_decode = jit(_golomb_decode_py)

_GOLOMB_ERRORS = {-1: "Golomb code ends early", -2: "Golomb position past the tensor", -3: "Golomb unary run too long"}


def golomb_decode(data: bytes | memoryview, k: int, b: int, n: int, *, jit: bool = True) -> np.ndarray:
    """Inverse of :func:`golomb_encode`: ``k`` increasing positions below ``n`` that use ``data`` exactly.

    ``data`` must end within 7 zero padding bits of the last codeword; raises :class:`FormatError`
    otherwise. ``jit=False`` runs the pure-Python reference.
    """
    if not 0 <= b <= MAX_GOLOMB_PARAM:
        raise FormatError(f"Golomb parameter {b} outside 0..{MAX_GOLOMB_PARAM}")
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


# --- packing (encoder side) ----------------------------------------------------------------------------


def _check_positions(positions: np.ndarray, values_count: int) -> np.ndarray:
    p = np.asarray(positions, dtype=np.int64).reshape(-1)
    if p.size != values_count:
        raise ValueError(f"{p.size} positions for {values_count} values")
    if p.size and (p[0] < 0 or np.any(np.diff(p) <= 0)):
        raise ValueError("positions must be strictly increasing and >= 0")
    return p


def pack_f16(values: np.ndarray) -> bytes:
    """Mode f16: the values as little-endian float16 (cast with round to nearest even)."""
    return np.asarray(values).astype("<f2").tobytes()


def pack_int8(scale: float, levels: np.ndarray) -> bytes:
    """Mode int8: float32 ``scale`` (finite, >= 0), then the int8 ``levels`` in [-127, 127]."""
    levels = np.asarray(levels)
    if levels.dtype != np.int8 or (levels.size and levels.min() < -127):
        raise ValueError("int8 levels must be an int8 array in [-127, 127]")
    scale = np.float32(scale)
    if not (np.isfinite(scale) and scale >= 0):
        raise ValueError(f"int8 scale {scale} is not a finite number >= 0")
    return _F32.pack(float(scale)) + levels.tobytes()


def pack_sparse(positions: np.ndarray, values: np.ndarray) -> bytes:
    """Mode sparse: varint ``k``, ``k`` varint gaps (position - previous - 1, the first from -1), ``k`` float32."""
    values = np.asarray(values, dtype="<f4").reshape(-1)
    p = _check_positions(positions, values.size)
    head = bytearray()
    bs._put_varint(head, p.size)
    return bytes(head) + varint_encode(np.diff(p, prepend=-1) - 1) + values.tobytes()


def pack_ternary(positions: np.ndarray, negative: np.ndarray, mu: float, b: int) -> bytes:
    """Mode ternary: varint ``k``, u8 Golomb parameter ``b``, float32 ``mu``, Golomb code, sign bits.

    Element ``positions[i]`` becomes ``-mu`` where ``negative[i]``, else ``+mu``; one sign bit per
    position (1 = negative, MSB first, zero padded).
    """
    negative = np.asarray(negative, dtype=bool).reshape(-1)
    p = _check_positions(positions, negative.size)
    if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b <= MAX_GOLOMB_PARAM:
        raise ValueError(f"Golomb parameter must be an integer in 0..{MAX_GOLOMB_PARAM}, got {b!r}")
    mu = np.float32(mu)
    if not (np.isfinite(mu) and mu >= 0):
        raise ValueError(f"mu {mu} is not a finite number >= 0")
    head = bytearray()
    bs._put_varint(head, p.size)
    head.append(b)
    head += _F32.pack(float(mu))
    code, _ = golomb_encode(p, b)
    return bytes(head) + code + np.packbits(negative.astype(np.uint8)).tobytes()


def lowrank_view(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(rows, cols)`` of the matrix a lowrank payload factors: ``shape[0]`` by the product of the rest."""
    if len(shape) < 2:
        raise ValueError(f"mode lowrank needs a tensor of rank >= 2, got shape {shape}")
    rows = shape[0]
    return rows, math.prod(shape[1:])


def lowrank_fits(shape: tuple[int, ...], rank: int) -> bool:
    """Whether rank-``rank`` factors of a ``shape`` tensor are a valid lowrank payload: ``1 <= rank <= 255``
    and fewer factor values than elements (``rank * (rows + cols) < rows * cols``)."""
    if len(shape) < 2 or not 1 <= rank <= bs.MAX_LOWRANK_RANK:
        return False
    rows, cols = lowrank_view(shape)
    return rank * (rows + cols) < rows * cols


def pack_lowrank(p: np.ndarray, q: np.ndarray) -> bytes:
    """Mode lowrank: u8 rank ``r``, then ``P`` (rows x r) and ``Q`` (cols x r) as row-major float32.

    The tensor is ``P @ Q.T`` reshaped, evaluated as :func:`lowrank_product` does. The factors must be
    finite in float32 and the tensor must admit them (:func:`lowrank_fits`).
    """
    p = np.asarray(p, dtype="<f4")
    q = np.asarray(q, dtype="<f4")
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(f"lowrank factors must be rows x r and cols x r, got {p.shape} and {q.shape}")
    rows, rank = p.shape
    cols = q.shape[0]
    if not lowrank_fits((rows, cols), rank):
        raise ValueError(f"rank {rank} factors of a {rows} x {cols} matrix are not smaller than it (or r > 255)")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
        raise ValueError("lowrank factors must be finite float32")
    return bytes([rank]) + p.tobytes() + q.tobytes()


#: :func:`lowrank_product` adds each factor's outer product to the result in blocks of rows of about
#: this many elements (and at most half the rows), so its one working block stays small.
LOWRANK_BLOCK_ELEMENTS = 1 << 18


def lowrank_block_rows(rows: int, cols: int) -> int:
    """Rows per block of :func:`lowrank_product` (its working block is this many rows x ``cols`` float64)."""
    return max(1, min(rows // 2, LOWRANK_BLOCK_ELEMENTS // max(cols, 1)))


def lowrank_product(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``sum_t outer(P[:, t], Q[:, t])`` in float64, ``t = 0, 1, ...`` in order, every product and sum
    rounded once (no fused multiply-add), so every platform gets the same bits. (rows x cols)"""
    rows, rank = p.shape
    cols = q.shape[0]
    acc = np.zeros((rows, cols), dtype=np.float64)
    block = lowrank_block_rows(rows, cols)
    tmp = np.empty((block, cols), dtype=np.float64)
    for i in range(0, rows, block):
        part = acc[i : i + block]
        work = tmp[: part.shape[0]]
        for t in range(rank):  # the factors are cast to float64 as the ufunc reads them (no copies)
            np.multiply.outer(p[i : i + block, t], q[:, t], out=work, dtype=np.float64)
            part += work
    return acc


# --- reading (decoder side) ----------------------------------------------------------------------------


def decode_payload(payload: bytes | memoryview, t: TensorInfo) -> np.ndarray:
    """Tensor ``t`` (mode f16, int8, sparse or ternary) from its plain payload; :class:`FormatError` if malformed."""
    view = memoryview(payload).cast("B")
    try:
        decoder = _DECODERS[t.mode]
    except KeyError:
        raise FormatError(f"tensor {t.name!r}: mode {t.mode} is not a float mode") from None
    out = decoder(view, t, bs._Reader(view, 0, len(view), f"tensor {t.name!r} payload"))
    return out.reshape(t.shape)


def _native(t: TensorInfo) -> np.dtype:
    return t.dtype.newbyteorder("=")


def _expect_size(view: memoryview, t: TensorInfo) -> None:
    size, _ = bs.plain_payload_size(t.mode, t.dtype, t.numel)
    if len(view) != size:
        raise FormatError(
            f"tensor {t.name!r}: {t.mode_name} payload of {len(view)} bytes, shape {t.shape} needs {size}"
        )


def _check_range(t: TensorInfo, max_abs: float, what: str) -> None:
    """Values up to ``max_abs`` must be finite in the tensor's dtype (an encoder never exceeds it)."""
    if max_abs > float(np.finfo(t.dtype).max):
        raise FormatError(f"tensor {t.name!r}: {what} {max_abs:g} overflows {t.dtype.name}")


def _f32(r: bs._Reader, what: str) -> float:
    return _F32.unpack(r.take(4, what))[0]


def _decode_f16(view: memoryview, t: TensorInfo, r: bs._Reader) -> np.ndarray:
    _expect_size(view, t)
    return np.frombuffer(view, dtype="<f2").astype(_native(t))


def _decode_int8(view: memoryview, t: TensorInfo, r: bs._Reader) -> np.ndarray:
    _expect_size(view, t)
    scale = _f32(r, "int8 scale")
    if not (math.isfinite(scale) and scale >= 0.0):
        raise FormatError(f"tensor {t.name!r}: int8 scale {scale} is not a finite non-negative number")
    _check_range(t, 127.0 * scale, "int8 range 127 * scale")
    q = np.frombuffer(view, dtype=np.int8, offset=4)
    if q.size and q.min() < -127:
        raise FormatError(f"tensor {t.name!r}: int8 level -128 is outside [-127, 127]")
    out = q.astype(np.float64)  # the one working array (8 bytes per element): scaled in place
    out *= scale
    return out.astype(_native(t), copy=False)


def _scatter_target(out: np.ndarray, values) -> tuple:
    """``(values, out)`` as the scatter kernels take them: float16 travels as its bit patterns
    (numba has no float16), float32 and float64 as themselves."""
    if out.dtype.itemsize == 2:
        return np.asarray(values, dtype=np.float16).view(np.uint16), out.view(np.uint16)
    return values, out


def _decode_sparse(view: memoryview, t: TensorInfo, r: bs._Reader) -> np.ndarray:
    """Allocates the output and, for float16 tensors, the ``k`` values as float16 (2k bytes): the
    kernel scatters each value at its position as it reads the gaps."""
    n = t.numel
    k = r.varint("k", n)
    values_at = len(view) - 4 * k
    if values_at < r.pos + k:  # each gap takes at least one byte
        raise FormatError(f"tensor {t.name!r}: k = {k} impossible for a {len(view)}-byte sparse payload")
    values = np.frombuffer(view, dtype="<f4", count=k, offset=values_at)
    top = _varint.finite_max_abs(values)
    if top < 0:
        raise FormatError(f"tensor {t.name!r}: non-finite sparse value")
    _check_range(t, top, "sparse value")
    out = np.zeros(n, dtype=_native(t))
    vals, target = _scatter_target(out, values)
    max_bytes = min(bs.varint_len(n - 1), 9)
    status = _varint.scatter_gaps(np.frombuffer(view, dtype=np.uint8), r.pos, values_at, k, max_bytes, n, vals, target)
    if status == _varint.PAST_END:
        raise FormatError(f"tensor {t.name!r}: sparse positions run past the {n} elements")
    if status != _varint.OK:
        reason = _varint_reason(status, values_at - r.pos, k, max_bytes)
        raise FormatError(f"tensor {t.name!r}: sparse gaps: {reason}")
    return out


def _decode_ternary(view: memoryview, t: TensorInfo, r: bs._Reader) -> np.ndarray:
    """Allocates the output and the ``k`` positions (int64)."""
    n = t.numel
    k = r.varint("k", n)
    b = r.u8("Golomb parameter")
    if b > MAX_GOLOMB_PARAM:
        raise FormatError(f"tensor {t.name!r}: Golomb parameter {b} exceeds {MAX_GOLOMB_PARAM}")
    mu = _f32(r, "mu")
    if not (math.isfinite(mu) and mu >= 0.0):
        raise FormatError(f"tensor {t.name!r}: mu {mu} is not a finite non-negative number")
    _check_range(t, mu, "mu")
    signs_at = len(view) - (k + 7) // 8
    if signs_at < r.pos:
        raise FormatError(f"tensor {t.name!r}: {k} sign bits do not fit the {len(view)}-byte ternary payload")
    try:
        positions = golomb_decode(view[r.pos : signs_at], k, b, n)
    except FormatError as exc:
        raise FormatError(f"tensor {t.name!r}: {exc}") from None
    sign_bytes = np.frombuffer(view, dtype=np.uint8, offset=signs_at)
    if k % 8 and sign_bytes[-1] & ((1 << (8 - k % 8)) - 1):
        raise FormatError(f"tensor {t.name!r}: non-zero padding after the sign bits")
    out = np.zeros(n, dtype=_native(t))
    (plus, minus), target = _scatter_target(out, np.array([mu, -mu], dtype=out.dtype))
    _varint.scatter_signed(positions, sign_bytes, plus, minus, target)
    return out


def _decode_lowrank(view: memoryview, t: TensorInfo, r: bs._Reader) -> np.ndarray:
    if len(t.shape) < 2:
        raise FormatError(f"tensor {t.name!r}: mode lowrank on a tensor of rank {len(t.shape)} (needs >= 2)")
    rows, cols = lowrank_view(t.shape)
    rank = r.u8("lowrank rank")
    if not lowrank_fits(t.shape, rank):
        raise FormatError(
            f"tensor {t.name!r}: lowrank rank {rank} is 0 or its factors are not smaller than the "
            f"{rows} x {cols} matrix"
        )
    need = 1 + 4 * rank * (rows + cols)
    if len(view) != need:
        raise FormatError(f"tensor {t.name!r}: lowrank payload of {len(view)} bytes, rank {rank} needs {need}")
    p = np.frombuffer(view, dtype="<f4", count=rows * rank, offset=1).reshape(rows, rank)
    q = np.frombuffer(view, dtype="<f4", offset=1 + 4 * rows * rank).reshape(cols, rank)
    if _varint.finite_max_abs(p.reshape(-1)) < 0 or _varint.finite_max_abs(q.reshape(-1)) < 0:
        raise FormatError(f"tensor {t.name!r}: non-finite lowrank factor")
    acc = lowrank_product(p, q)  # working arrays: acc, and one block of lowrank_block_rows rows
    _check_range(t, max(float(acc.max()), -float(acc.min())), "lowrank value")
    return acc.astype(_native(t), copy=False).reshape(-1)


_DECODERS = {
    bs.MODE_F16: _decode_f16,
    bs.MODE_INT8: _decode_int8,
    bs.MODE_SPARSE: _decode_sparse,
    bs.MODE_TERNARY: _decode_ternary,
    bs.MODE_LOWRANK: _decode_lowrank,
}

__all__ = [
    "MAX_GOLOMB_PARAM",
    "decode_payload",
    "golomb_decode",
    "golomb_encode",
    "golomb_parameter",
    "lowrank_fits",
    "lowrank_product",
    "lowrank_view",
    "pack_f16",
    "pack_int8",
    "pack_lowrank",
    "pack_sparse",
    "pack_ternary",
    "varint_decode",
    "varint_encode",
]
