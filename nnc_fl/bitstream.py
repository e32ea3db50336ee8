"""The container: magic, version, a bounded tensor table, then payloads that tile the rest exactly.

See FORMAT.md for the byte layout. Writing is one function (:func:`write_stream`), reading is one
function (:func:`read_table`) that distrusts every field: each is bounded before it is used, sizes are
computed with Python integers (no overflow), payload spans must tile the data exactly and every
problem raises :class:`FormatError` with its own reason.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import FormatError, LimitError

MAGIC = b"NNCF"
VERSION = 1
FLAG_FINGERPRINT = 0x01
_KNOWN_FLAGS = FLAG_FINGERPRINT
MAX_FINGERPRINT_BYTES = 64

# modes
MODE_ZERO = 0  # every element zero (also empty tensors); no payload
MODE_RAW = 1  # little-endian element bytes, exact
MODE_QUANT = 2  # float tensor: coded levels, reconstruction level * step
MODE_INT = 3  # integer/bool tensor: coded levels are the values, exact
MODE_NAMES = {MODE_ZERO: "zero", MODE_RAW: "raw", MODE_QUANT: "quant", MODE_INT: "int"}
_CODED_MODES = (MODE_QUANT, MODE_INT)

# tools byte (coded modes): bits 0-1 probability rate pair, the rest reserved for later tools
TOOLS_RATE_MASK = 0x03
_KNOWN_TOOLS = TOOLS_RATE_MASK

#: dtype code -> numpy dtype (little-endian). The table is part of the format and only ever grows.
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("bool"),
    2: np.dtype("<i1"),
    3: np.dtype("<u1"),
    4: np.dtype("<i2"),
    5: np.dtype("<u2"),
    6: np.dtype("<i4"),
    7: np.dtype("<u4"),
    8: np.dtype("<i8"),
    9: np.dtype("<u8"),
    10: np.dtype("<f2"),
    11: np.dtype("<f4"),
    12: np.dtype("<f8"),
}
DTYPE_CODES = {dt: code for code, dt in DTYPES.items()}

#: A coded payload of L bytes may declare at most (L + 16) << 14 elements: every element costs at
#: least one context-coded bin, and no bin costs less than -log2(1 - PROB_MIN / PROB_ONE) ≈ 1/709
#: bit, so this is ~3x above what a valid encoder can produce and rejects allocation bombs.
_ELEMENTS_PER_BYTE_SHIFT = 14


@dataclass(frozen=True)
class Limits:
    """Bounds a decoder enforces before trusting a stream, and an encoder before writing one.

    Raise them for very large models, or derive them from the model a stream must describe with
    :meth:`for_schema` (what a server does with its clients' updates).
    """

    max_header_bytes: int = 16 << 20
    max_tensors: int = 1 << 16
    max_name_bytes: int = 1024
    max_ndim: int = 16
    max_tensor_elements: int = 1 << 31
    max_total_elements: int = 1 << 31

    @classmethod
    def for_schema(cls, schema: Mapping[str, Any]) -> Limits:
        """The tightest limits a stream of exactly ``schema``'s tensors (objects with ``.shape``)
        passes: its tensor count, longest name, highest rank, largest tensor and total size."""
        shapes = [tuple(np.shape(v)) for v in schema.values()]
        names = [len(n.encode("utf-8")) for n in schema]
        sizes = [math.prod(s) for s in shapes]
        return cls(
            # table entry: name, dtype, rank, <= 10 bytes per dimension, mode, step, tools, length, CRC
            max_header_bytes=64
            + MAX_FINGERPRINT_BYTES
            + sum(n + 10 * len(s) + 32 for n, s in zip(names, shapes, strict=True)),
            max_tensors=len(shapes),
            max_name_bytes=max(names, default=0),
            max_ndim=max((len(s) for s in shapes), default=0),
            max_tensor_elements=max(sizes, default=0),
            max_total_elements=sum(sizes),
        )


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class TensorInfo:
    """One row of the tensor table."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    mode: int
    step: float | None
    tools: int
    offset: int  # absolute offset of the payload in the stream
    length: int
    crc32: int | None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def mode_name(self) -> str:
        return MODE_NAMES[self.mode]


@dataclass(frozen=True)
class StreamInfo:
    """The parsed header of a stream: what :func:`nnc_fl.inspect` returns."""

    version: int
    fingerprint: bytes | None
    tensors: tuple[TensorInfo, ...]
    header_bytes: int  # everything before the first payload
    total_bytes: int
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def tensor(self, name: str) -> TensorInfo:
        """The table row of tensor ``name`` (``KeyError`` if absent)."""
        try:
            return self.tensors[self._index[name]]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in the stream") from None

    def as_rows(self) -> list[dict]:
        """The table as plain dicts (for JSON / tools)."""
        return [
            {
                "name": t.name,
                "dtype": t.dtype.name,
                "shape": list(t.shape),
                "mode": t.mode_name,
                "step": t.step,
                "tools": t.tools,
                "offset": t.offset,
                "bytes": t.length,
                "crc32": t.crc32,
                "bits_per_element": (8 * t.length / t.numel) if t.numel else 0.0,
            }
            for t in self.tensors
        ]

    def __str__(self) -> str:
        head = f"nnc-fl stream v{self.version}, {self.total_bytes} bytes ({self.header_bytes} header)"
        if self.fingerprint is not None:
            head += f", base {self.fingerprint.hex()[:16]}"
        cols = ("name", "dtype", "shape", "mode", "step", "bytes", "bits/elem")
        rows = [
            (
                r["name"],
                r["dtype"],
                "x".join(map(str, r["shape"])) or "()",
                r["mode"],
                "" if r["step"] is None else f"{r['step']:.4g}",
                str(r["bytes"]),
                f"{r['bits_per_element']:.3f}",
            )
            for r in self.as_rows()
        ]
        widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        return "\n".join([head, fmt.format(*cols)] + [fmt.format(*r) for r in rows])


# --- varints (unsigned LEB128, minimal encoding only) ---------------------------------------------


def _put_varint(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError("varint must be non-negative")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


class _Reader:
    """Bounds-checked cursor over the header bytes."""

    def __init__(self, data: memoryview, start: int, end: int):
        self.data, self.pos, self.end = data, start, end

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise FormatError(f"header truncated while reading {what}")
        b = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return b

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str, maximum: int) -> int:
        value, shift = 0, 0
        for i in range(10):
            byte = self.u8(what)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise FormatError(f"non-minimal varint in {what}")
                if value > maximum:
                    raise LimitError(f"{what} is {value}, above the limit {maximum}")
                return value
            shift += 7
        raise FormatError(f"varint too long in {what}")


# --- writing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorRecord:
    """What the encoder hands the container for one tensor."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    mode: int
    step: float | None = None
    tools: int = 0
    payload: bytes = b""


def check_writable(records: list[TensorRecord], limits: Limits) -> None:
    """Refuse (``ValueError``) what a decoder with the same ``limits`` would refuse, so an encoder
    never writes a stream its own decoder rejects."""
    if len(records) > limits.max_tensors:
        raise ValueError(f"{len(records)} tensors, above the limit {limits.max_tensors} a decoder enforces")
    total = 0
    for r in records:
        if len(r.shape) > 255:
            raise ValueError(f"tensor {r.name!r}: rank {len(r.shape)}; the format carries at most 255")
        if len(r.name.encode("utf-8")) > limits.max_name_bytes:
            raise ValueError(f"tensor name {r.name[:40]!r}... is longer than {limits.max_name_bytes} bytes")
        if len(r.shape) > limits.max_ndim:
            raise ValueError(f"tensor {r.name!r}: rank {len(r.shape)} above the limit {limits.max_ndim}")
        numel = math.prod(r.shape)
        if numel > limits.max_tensor_elements:
            raise ValueError(f"tensor {r.name!r}: {numel} elements, above the limit {limits.max_tensor_elements}")
        total += numel
        if r.mode in _CODED_MODES and numel > (len(r.payload) + 16) << _ELEMENTS_PER_BYTE_SHIFT:
            raise ValueError(f"tensor {r.name!r}: {numel} elements in a {len(r.payload)}-byte payload")
    if total > limits.max_total_elements:
        raise ValueError(f"{total} elements in all, above the limit {limits.max_total_elements}")


def write_stream(
    records: list[TensorRecord], fingerprint: bytes | None = None, limits: Limits = DEFAULT_LIMITS
) -> bytes:
    """Serialise ``records`` (in order) with an optional base-model ``fingerprint``.

    Raises ``ValueError`` for a stream a decoder with the same ``limits`` would refuse.
    """
    check_writable(records, limits)
    flags = 0
    table = bytearray()
    if fingerprint is not None:
        fingerprint = bytes(fingerprint)
        if not 1 <= len(fingerprint) <= MAX_FINGERPRINT_BYTES:
            raise ValueError(f"fingerprint must be 1..{MAX_FINGERPRINT_BYTES} bytes, got {len(fingerprint)}")
        flags |= FLAG_FINGERPRINT
        table.append(len(fingerprint))
        table += fingerprint
    _put_varint(table, len(records))
    for r in records:
        name = r.name.encode("utf-8")
        _put_varint(table, len(name))
        table += name
        table.append(DTYPE_CODES[np.dtype(r.dtype).newbyteorder("<")])
        table.append(len(r.shape))
        for d in r.shape:
            _put_varint(table, d)
        table.append(r.mode)
        if r.mode == MODE_QUANT:
            table += struct.pack("<f", r.step)
        if r.mode in _CODED_MODES:
            table.append(r.tools)
        if r.mode != MODE_ZERO:
            _put_varint(table, len(r.payload))
            table += struct.pack("<I", zlib.crc32(r.payload))
    if len(table) > limits.max_header_bytes:
        raise ValueError(f"tensor table of {len(table)} bytes, above the limit {limits.max_header_bytes}")
    head = bytearray(MAGIC)
    head.append(VERSION)
    head.append(flags)
    _put_varint(head, len(table))
    head += table
    head += struct.pack("<I", zlib.crc32(head))
    return b"".join([bytes(head), *(r.payload for r in records)])


# --- reading -------------------------------------------------------------------------------------


def _open_header(data: bytes | bytearray | memoryview, limits: Limits) -> tuple[memoryview, int, _Reader, bytes | None]:
    """Check magic, version, flags, header length and CRC; read the fingerprint. Returns the view,
    the end of the table, a reader positioned after the fingerprint, and the fingerprint."""
    try:
        view = memoryview(data).cast("B")
    except TypeError as exc:
        raise TypeError(f"expected a bytes-like object, got {type(data).__name__}") from exc
    total = len(view)
    if total < len(MAGIC) + 2:
        raise FormatError(f"stream too short ({total} bytes) to hold a header")
    if bytes(view[:4]) != MAGIC:
        raise FormatError("bad magic: not an nnc-fl stream")
    version = view[4]
    if version != VERSION:
        raise FormatError(f"unsupported stream version {version} (this decoder reads version {VERSION})")
    flags = view[5]
    if flags & ~_KNOWN_FLAGS:
        raise FormatError(f"unknown stream flags 0x{flags:02x}")
    r = _Reader(view, 6, total)
    table_len = r.varint("header length", limits.max_header_bytes)
    table_end = r.pos + table_len
    if table_end + 4 > total:
        raise FormatError("stream truncated inside the header")
    (crc,) = struct.unpack("<I", bytes(view[table_end : table_end + 4]))
    if zlib.crc32(view[:table_end]) != crc:
        raise FormatError("header CRC mismatch: the header is corrupted")
    r.end = table_end
    fingerprint = None
    if flags & FLAG_FINGERPRINT:
        n = r.u8("fingerprint length")
        if not 1 <= n <= MAX_FINGERPRINT_BYTES:
            raise FormatError(f"fingerprint length {n} outside 1..{MAX_FINGERPRINT_BYTES}")
        fingerprint = r.take(n, "fingerprint")
    return view, table_end, r, fingerprint


def read_fingerprint(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> bytes | None:
    """The fingerprint of a stream (``None`` if it has none), after checking the header's integrity
    but without parsing the tensor table."""
    return _open_header(data, limits)[3]


def read_table(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> StreamInfo:
    """Parse and check the header of ``data``; raise :class:`FormatError` for any problem."""
    view, table_end, r, fingerprint = _open_header(data, limits)
    total = len(view)
    version = view[4]
    count = r.varint("tensor count", limits.max_tensors)
    tensors: list[TensorInfo] = []
    index: dict[str, int] = {}
    offset = table_end + 4
    total_elements = 0
    for i in range(count):
        t = _read_entry(r, i, offset, limits)
        if t.name in index:
            raise FormatError(f"duplicate tensor name {t.name!r}")
        total_elements += t.numel
        if total_elements > limits.max_total_elements:
            raise LimitError(f"stream declares over {limits.max_total_elements} elements in all")
        index[t.name] = i
        tensors.append(t)
        offset += t.length
    if r.pos != table_end:
        raise FormatError(f"{table_end - r.pos} unexplained bytes at the end of the header")
    if offset != total:
        how = "truncated" if offset > total else f"followed by {total - offset} trailing bytes"
        raise FormatError(f"payloads do not tile the stream: it is {how}")
    return StreamInfo(version, fingerprint, tuple(tensors), table_end + 4, total, index)


def _read_entry(r: _Reader, i: int, offset: int, limits: Limits) -> TensorInfo:
    what = f"tensor #{i}"
    name_len = r.varint(f"{what} name length", limits.max_name_bytes)
    try:
        name = r.take(name_len, f"{what} name").decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{what} name is not valid UTF-8") from None
    what = f"tensor {name!r}"
    code = r.u8(f"{what} dtype")
    if code not in DTYPES:
        raise FormatError(f"{what}: unknown dtype code {code}")
    dtype = DTYPES[code]
    ndim = r.u8(f"{what} rank")
    if ndim > limits.max_ndim:
        raise LimitError(f"{what}: rank {ndim} above the limit {limits.max_ndim}")
    shape = tuple(r.varint(f"{what} dimension", limits.max_tensor_elements) for _ in range(ndim))
    numel = 1
    for d in shape:
        numel *= d
    if numel > limits.max_tensor_elements:
        raise LimitError(f"{what}: {numel} elements, above the limit {limits.max_tensor_elements}")
    mode = r.u8(f"{what} mode")
    if mode not in MODE_NAMES:
        raise FormatError(f"{what}: unknown coding mode {mode}")
    step = None
    tools = 0
    if mode == MODE_QUANT:
        if dtype.kind != "f":
            raise FormatError(f"{what}: mode 'quant' on non-float dtype {dtype.name}")
        (step,) = struct.unpack("<f", r.take(4, f"{what} step"))
        if not (np.isfinite(step) and step > 0):
            raise FormatError(f"{what}: step {step} is not a positive finite number")
    if mode == MODE_INT and dtype.kind == "f":
        raise FormatError(f"{what}: mode 'int' on float dtype {dtype.name}")
    if mode in _CODED_MODES:
        tools = r.u8(f"{what} tools")
        if tools & ~_KNOWN_TOOLS:
            raise FormatError(f"{what}: unknown coding tools 0x{tools:02x}")
    length, crc = 0, None
    if mode != MODE_ZERO:
        length = r.varint(f"{what} payload length", 1 << 62)
        (crc,) = struct.unpack("<I", r.take(4, f"{what} payload CRC"))
    if mode == MODE_RAW and length != numel * dtype.itemsize:
        raise FormatError(f"{what}: raw payload of {length} bytes for {numel} x {dtype.itemsize}-byte elements")
    if mode in _CODED_MODES:
        if numel == 0:
            raise FormatError(f"{what}: coded mode on an empty tensor")
        if numel > (length + 16) << _ELEMENTS_PER_BYTE_SHIFT:
            raise FormatError(f"{what}: {numel} elements cannot come from a {length}-byte payload")
    return TensorInfo(name, dtype, shape, mode, step, tools, offset, length, crc)
