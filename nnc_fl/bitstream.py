"""The container: magic, version, a bounded tensor table, then payloads that tile the rest exactly.

See FORMAT.md for the byte layout. Writing is one function (:func:`write_stream`), reading is one
function (:func:`read_table`) that distrusts every field: each is bounded before it is used, sizes are
computed with Python integers (no overflow), payload spans must tile the data exactly and every
problem raises :class:`FormatError` with its own reason.

Stream flag bit 1 makes the payloads of the modes in :data:`ZSTD_MODES` zstd frames; unwrapping one
(:func:`unzstd_payload`) checks the frame's declared content size against what the tensor's shape
allows *before* decompressing. The ``zstandard`` package is imported only for such streams.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _zstdframe
from .errors import FormatError, LimitError, SchemaError
from .fingerprint import TEMPORAL_DIGEST_SIZE

MAGIC = b"NNCF"
VERSION = 1
FLAG_FINGERPRINT = 0x01
FLAG_ZSTD = 0x02  # payloads of ZSTD_MODES are each one zstd frame of the plain layout
FLAG_SCHEMA = 0x04  # schema-bound table: names, dtypes and shapes referenced by a digest, not repeated
FLAG_TEMPORAL = 0x08  # the table names the temporal reference (tools bit 5) by its digest
_KNOWN_FLAGS = FLAG_FINGERPRINT | FLAG_ZSTD | FLAG_SCHEMA | FLAG_TEMPORAL
#: Bytes of the temporal reference's digest (nnc_fl.fingerprint.temporal_digest).
TEMPORAL_DIGEST_BYTES = TEMPORAL_DIGEST_SIZE
#: Bytes of the schema digest a schema-bound stream carries (see :func:`schema_digest`).
SCHEMA_DIGEST_BYTES = 4
MAX_FINGERPRINT_BYTES = 64

# modes
MODE_ZERO = 0  # every element zero (also empty tensors); no payload
MODE_RAW = 1  # little-endian element bytes, exact
MODE_QUANT = 2  # float tensor: coded levels, reconstruction level * step
MODE_INT = 3  # integer/bool tensor: coded levels are the values, exact
MODE_F16 = 4  # float tensor: n float16
MODE_INT8 = 5  # float tensor: f32 scale, n int8 levels in [-127, 127]
MODE_SPARSE = 6  # float tensor: k, position gaps, k float32 values (top-k)
MODE_TERNARY = 7  # float tensor: k, Golomb parameter, f32 mu, Golomb-coded positions, signs (STC)
MODE_LOWRANK = 8  # float tensor of rank >= 2: u8 rank r, then f32 factors P (rows x r), Q (cols x r)
MODE_FLOAT_LOSSLESS = 9  # float tensor: exact values, sign/exponent/mantissa coded (nnc_fl._floatcoder)
MODE_NAMES = {
    MODE_ZERO: "zero",
    MODE_RAW: "raw",
    MODE_QUANT: "quant",
    MODE_INT: "int",
    MODE_F16: "f16",
    MODE_INT8: "int8",
    MODE_SPARSE: "sparse",
    MODE_TERNARY: "ternary",
    MODE_LOWRANK: "lowrank",
    MODE_FLOAT_LOSSLESS: "float-lossless",
}
_CODED_MODES = (MODE_QUANT, MODE_INT)
#: Range-coded payloads: their length bounds the number of elements (_ELEMENTS_PER_BYTE_SHIFT).
_BOUNDED_MODES = (*_CODED_MODES, MODE_FLOAT_LOSSLESS)
#: Modes whose payload layouts live in :mod:`nnc_fl.payloads`: float tensors only, never empty.
FLOAT_MODES = (MODE_F16, MODE_INT8, MODE_SPARSE, MODE_TERNARY, MODE_LOWRANK)
#: Largest rank of a lowrank payload (one byte); decoding costs r passes over the tensor.
MAX_LOWRANK_RANK = 255
#: Modes whose payloads are zstd frames when the stream has FLAG_ZSTD.
ZSTD_MODES = (MODE_RAW, *FLOAT_MODES)
MAX_ZSTD_LEVEL = 22

# tools byte (coded modes): bits 0-1 probability rate pair, bit 2 dependent quantisation (quant
# mode only), bit 3 row references, bit 4 context-coded Exp-Golomb prefixes (plain level coding
# only: not with bits 2 or 3), bit 5 temporal contexts (quant mode, float32/64, not with bits 2 or
# 3; the stream must have FLAG_TEMPORAL), bit 6 the reference's scale (with bit 5 only) and bit 7
# the 8-state machine of dependent quantisation (with bit 2 only)
TOOLS_RATE_MASK = 0x03
TOOL_DQ = 0x04
TOOL_ROW_REFS = 0x08  # row references (nnc_fl/_rowref.py)
TOOL_EG_CTX = 0x10  # Exp-Golomb prefix bins in contexts (nnc_fl/_levels.py)
TOOL_TEMPORAL = 0x20  # contexts by the co-located value of a temporal reference (nnc_fl/_levels.py)
#: With TOOL_TEMPORAL: the reference is scaled by 2**((tools & MASK) >> SHIFT) before its classes are taken.
TOOL_TEMPORAL_SCALE_MASK = 0x40
TOOL_TEMPORAL_SCALE_SHIFT = 6
TOOL_DQ_8STATES = 0x80  # with TOOL_DQ: the 8-state machine (nnc_fl/_dq.py); the last free bit

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


#: Working bytes per element while a coded tensor decodes (int64 levels, float64 values).
WORK_BYTES_PER_ELEMENT = 16


def decoding_bytes(tensors: list[tuple[int, int]]) -> int:
    """Upper bound of the bytes decoding allocates for tensors of ``(elements, itemsize)``: every
    output, plus the working arrays of the largest one."""
    out = sum(n * size for n, size in tensors)
    return out + WORK_BYTES_PER_ELEMENT * max((n for n, _ in tensors), default=0)


@dataclass(frozen=True)
class Limits:
    """Bounds a decoder enforces before trusting a stream, and an encoder before writing one.

    ``max_decode_bytes`` is the decoder's memory budget: what it may allocate for its outputs and
    working arrays (default 1 GiB); a stream that needs more is refused before anything is
    allocated. Raise the limits for very large models, or derive them from the model a stream must
    describe with :meth:`for_schema` (what a server does with its clients' updates).
    """

    max_header_bytes: int = 16 << 20
    max_tensors: int = 1 << 16
    max_name_bytes: int = 1024
    max_ndim: int = 16
    max_tensor_elements: int = 1 << 31
    max_total_elements: int = 1 << 31
    max_decode_bytes: int = 1 << 30

    @classmethod
    def for_schema(cls, schema: Mapping[str, Any]) -> Limits:
        """The tightest limits a stream of exactly ``schema``'s tensors (objects with ``.shape`` and
        ``.dtype``) passes: its tensor count, longest name, highest rank, largest tensor, total
        size, and the memory decoding it takes."""
        shapes = [tuple(np.shape(v)) for v in schema.values()]
        names = [len(n.encode("utf-8")) for n in schema]
        sizes = [math.prod(s) for s in shapes]
        itemsizes = [np.dtype(getattr(v, "dtype", np.float64)).itemsize for v in schema.values()]
        return cls(
            # table entry: name, dtype, rank, <= 10 bytes per dimension, mode, step, tools, length, CRC
            max_header_bytes=64
            + MAX_FINGERPRINT_BYTES
            + TEMPORAL_DIGEST_BYTES
            + sum(n + 10 * len(s) + 32 for n, s in zip(names, shapes, strict=True)),
            max_tensors=len(shapes),
            max_name_bytes=max(names, default=0),
            max_ndim=max((len(s) for s in shapes), default=0),
            max_tensor_elements=max(sizes, default=0),
            max_total_elements=sum(sizes),
            max_decode_bytes=decoding_bytes(list(zip(sizes, itemsizes, strict=True))),
        )

    @classmethod
    def for_size(cls, tensors: int, elements: int) -> Limits:
        """The widest limits a model of ``tensors`` tensors and ``elements`` elements in all may
        need, whatever its names, ranks and dtypes (within the defaults for those)."""
        d = cls()
        return cls(
            max_header_bytes=64
            + MAX_FINGERPRINT_BYTES
            + TEMPORAL_DIGEST_BYTES
            + tensors * (d.max_name_bytes + 10 * d.max_ndim + 32),
            max_tensors=tensors,
            max_name_bytes=d.max_name_bytes,
            max_ndim=d.max_ndim,
            max_tensor_elements=elements,
            max_total_elements=elements,
            max_decode_bytes=decoding_bytes([(elements, 8)]),
        )

    def covering(self, other: Limits) -> Limits:
        """Limits that admit whatever either admits (field by field, the larger)."""
        return Limits(*(max(getattr(self, f), getattr(other, f)) for f in self.__dataclass_fields__))


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
    zstd: bool = False  # the payload is a zstd frame (stream flag bit 1 and a mode of ZSTD_MODES)

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
    zstd: bool = False  # stream flag bit 1
    #: Schema-bound streams (flag bit 2): one CRC-32 over all payloads (None: no payload, or per
    #: tensor CRCs in the self-contained table).
    payload_crc: int | None = None
    schema_bound: bool = False
    #: Flag bit 3: the digest of the temporal reference the stream's tools-bit-5 tensors need.
    temporal_digest: bytes | None = None

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
                "zstd": t.zstd,
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
        if self.zstd:
            head += ", zstd payloads"
        if self.schema_bound:
            head += ", schema-bound"
        if self.temporal_digest is not None:
            head += f", temporal reference {self.temporal_digest.hex()}"
        cols = ("name", "dtype", "shape", "mode", "step", "bytes", "bits/elem")
        rows = [
            (
                r["name"],
                r["dtype"],
                "x".join(map(str, r["shape"])) or "()",
                r["mode"] + ("+zstd" if r["zstd"] else ""),
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


def varint_len(value: int) -> int:
    """Bytes of the minimal varint of ``value`` (>= 0)."""
    return max(1, (value.bit_length() + 6) // 7)


class _Reader:
    """Bounds-checked cursor over the header bytes (or, with ``where``, over one payload)."""

    def __init__(self, data: memoryview, start: int, end: int, where: str = "header"):
        self.data, self.pos, self.end, self.where = data, start, end, where

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise FormatError(f"{self.where} truncated while reading {what}")
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


# --- payload sizes -------------------------------------------------------------------------------


def plain_payload_size(mode: int, dtype: np.dtype, numel: int) -> tuple[int, bool]:
    """``(size, exact)``: the size of a mode's plain (uncompressed) payload for ``numel`` elements.

    Exact for raw, f16 and int8; for sparse, ternary and lowrank an upper bound no valid payload
    exceeds (k <= n kept positions, gaps < n, Golomb parameter <= 31; lowrank factors hold fewer
    than n values; see FORMAT.md).
    """
    n = numel
    if mode == MODE_RAW:
        return n * dtype.itemsize, True
    if mode == MODE_F16:
        return 2 * n, True
    if mode == MODE_INT8:
        return 4 + n, True
    if mode == MODE_SPARSE:
        return varint_len(n) + n * (varint_len(max(n - 1, 0)) + 4), False
    if mode == MODE_TERNARY:
        return varint_len(n) + 1 + 4 + (33 * n + 7) // 8 + (n + 7) // 8, False
    if mode == MODE_LOWRANK:
        return 1 + 4 * max(n - 1, 0), False
    raise ValueError(f"mode {mode} has no plain payload size")


# --- writing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorRecord:
    """What the encoder hands the container for one tensor (``payload`` in its plain layout)."""

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
        if r.mode in _BOUNDED_MODES and numel > (len(r.payload) + 16) << _ELEMENTS_PER_BYTE_SHIFT:
            raise ValueError(f"tensor {r.name!r}: {numel} elements in a {len(r.payload)}-byte payload")
    if total > limits.max_total_elements:
        raise ValueError(f"{total} elements in all, above the limit {limits.max_total_elements}")


def _identity(out: bytearray, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """A tensor's name, dtype code, rank and dimensions, as the self-contained table writes them."""
    raw = name.encode("utf-8")
    _put_varint(out, len(raw))
    out += raw
    out.append(DTYPE_CODES[np.dtype(dtype).newbyteorder("<")])
    out.append(len(shape))
    for d in shape:
        _put_varint(out, d)


def schema_digest(schema: list[tuple[str, np.dtype, tuple[int, ...]]]) -> bytes:
    """The :data:`SCHEMA_DIGEST_BYTES`-byte digest of an ordered schema ``[(name, dtype, shape)]``.

    SHA-256 over ``"nnc-fl schema v1\0"``, the varint tensor count, then each tensor's name,
    dtype code, rank and dimensions exactly as a self-contained table writes them; the first bytes.
    """
    body = bytearray(b"nnc-fl schema v1\0")
    _put_varint(body, len(schema))
    for name, dtype, shape in schema:
        _identity(body, name, dtype, tuple(shape))
    return hashlib.sha256(body).digest()[:SCHEMA_DIGEST_BYTES]


def schema_of(tensors: Mapping[str, Any]) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """``[(name, dtype, shape)]`` of a mapping of arrays (or objects with ``shape`` and ``dtype``)."""
    out = []
    for name, v in tensors.items():
        dtype = np.dtype(v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype)
        native = dtype.newbyteorder("=")
        if native.newbyteorder("<") not in DTYPE_CODES:
            raise SchemaError(f"tensor {name!r}: the schema's dtype {dtype} has no code in the format")
        out.append((str(name), native, tuple(int(d) for d in np.shape(v))))
    return out


def bf16_bits(step: float) -> int | None:
    """The 16 bits of ``step`` as a bfloat16 (the high half of its float32), or None if the float32
    of ``step`` has non-zero low 16 bits (not exactly a bfloat16)."""
    (bits,) = struct.unpack("<I", struct.pack("<f", step))
    return None if bits & 0xFFFF else bits >> 16


def bf16_round(step: float) -> float:
    """``step`` rounded to the nearest bfloat16 (ties to even), as a float: the steps a schema-bound
    table carries (2 bytes; relative precision 2**-9)."""
    (bits,) = struct.unpack("<I", struct.pack("<f", step))
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def write_stream(
    records: list[TensorRecord],
    fingerprint: bytes | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    zstd_level: int | None = None,
    schema_bound: bool = False,
    temporal_digest: bytes | None = None,
) -> bytes:
    """Serialise ``records`` (in order) with an optional base-model ``fingerprint``.

    With ``zstd_level`` (1..22) the stream gets flag bit 1 and the payload of every record whose
    mode is in :data:`ZSTD_MODES` is stored as one zstd frame (content size declared) of the
    record's plain payload; that needs the ``zstandard`` package. With ``schema_bound`` the stream
    gets flag bit 2: the table references the records' names, dtypes and shapes by their
    :func:`schema_digest` instead of repeating them (decoding then needs the schema), steps are
    bfloat16 (every quant record's step must be one: :func:`bf16_round`) and one CRC-32 covers all
    payloads. ``temporal_digest`` (:data:`TEMPORAL_DIGEST_BYTES` bytes) names the temporal reference
    of the records with tools bit 5 (flag bit 3; required if any has it). Raises ``ValueError`` for
    a stream a decoder with the same ``limits`` would refuse.
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
    if temporal_digest is not None:
        temporal_digest = bytes(temporal_digest)
        if len(temporal_digest) != TEMPORAL_DIGEST_BYTES:
            raise ValueError(f"temporal digest must be {TEMPORAL_DIGEST_BYTES} bytes, got {len(temporal_digest)}")
        flags |= FLAG_TEMPORAL
        table += temporal_digest
    for r in records:
        _check_record(r)
        if r.tools & TOOL_TEMPORAL and temporal_digest is None:
            raise ValueError(f"tensor {r.name!r} has temporal contexts: the stream needs the reference's digest")
    payloads = [r.payload for r in records]
    if zstd_level is not None:
        if isinstance(zstd_level, bool) or not isinstance(zstd_level, int) or not 1 <= zstd_level <= MAX_ZSTD_LEVEL:
            raise ValueError(f"zstd level must be an integer in 1..{MAX_ZSTD_LEVEL}, got {zstd_level!r}")
        import zstandard  # only streams with flag bit 1 need it

        flags |= FLAG_ZSTD
        compressor = zstandard.ZstdCompressor(level=zstd_level, write_content_size=True)
        payloads = [
            compressor.compress(p) if r.mode in ZSTD_MODES else p for r, p in zip(records, payloads, strict=True)
        ]
    if schema_bound:
        flags |= FLAG_SCHEMA
        table += schema_digest([(r.name, r.dtype, r.shape) for r in records])
    else:
        _put_varint(table, len(records))
    for r, payload in zip(records, payloads, strict=True):
        if not schema_bound:
            _identity(table, r.name, r.dtype, r.shape)
        table.append(r.mode)
        if r.mode == MODE_QUANT:
            if schema_bound:
                bits = bf16_bits(r.step)
                if bits is None:
                    raise ValueError(f"tensor {r.name!r}: step {r.step!r} is not a bfloat16 (schema-bound table)")
                table += struct.pack("<H", bits)
            else:
                table += struct.pack("<f", r.step)
        if r.mode in _CODED_MODES:
            table.append(r.tools)
        if r.mode != MODE_ZERO:
            _put_varint(table, len(payload))
            if not schema_bound:
                table += struct.pack("<I", zlib.crc32(payload))
    if schema_bound and any(r.mode != MODE_ZERO for r in records):
        crc = 0
        for payload in payloads:
            crc = zlib.crc32(payload, crc)
        table += struct.pack("<I", crc)
    if len(table) > limits.max_header_bytes:
        raise ValueError(f"tensor table of {len(table)} bytes, above the limit {limits.max_header_bytes}")
    head = bytearray(MAGIC)
    head.append(VERSION)
    head.append(flags)
    _put_varint(head, len(table))
    head += table
    head += struct.pack("<I", zlib.crc32(head))
    return b"".join([bytes(head), *payloads])


def _check_record(r: TensorRecord) -> None:
    """Refuse a record the reader would reject for its mode (a bug in the encoder that made it)."""
    if r.mode not in MODE_NAMES:
        raise ValueError(f"tensor {r.name!r}: unknown mode {r.mode}")
    if r.mode not in (MODE_RAW, MODE_FLOAT_LOSSLESS, *FLOAT_MODES):
        return
    dtype = np.dtype(r.dtype)
    numel = 1
    for d in r.shape:
        numel *= d
    if r.mode != MODE_RAW and (dtype.kind != "f" or numel == 0):
        raise ValueError(f"tensor {r.name!r}: mode {MODE_NAMES[r.mode]!r} needs a non-empty float tensor")
    if r.mode == MODE_LOWRANK and len(r.shape) < 2:
        raise ValueError(f"tensor {r.name!r}: mode 'lowrank' needs a tensor of rank >= 2, got shape {r.shape}")
    if r.mode == MODE_FLOAT_LOSSLESS:
        return  # a range-coded payload: no plain size
    size, exact = plain_payload_size(r.mode, dtype, numel)
    if len(r.payload) > size or (exact and len(r.payload) != size):
        raise ValueError(
            f"tensor {r.name!r}: {MODE_NAMES[r.mode]} payload of {len(r.payload)} bytes for shape {r.shape}"
        )


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


def read_table(
    data: bytes | bytearray | memoryview,
    limits: Limits = DEFAULT_LIMITS,
    schema: Mapping[str, Any] | None = None,
) -> StreamInfo:
    """Parse and check the header of ``data``; raise :class:`FormatError` for any problem.

    ``schema`` (a mapping name -> array-like with ``shape`` and ``dtype``, in the stream's order)
    is needed for a schema-bound stream (flag bit 2) and ignored otherwise; a schema-bound stream
    read without one, or with one whose digest differs, raises :class:`SchemaError`.
    """
    view, table_end, r, fingerprint = _open_header(data, limits)
    total, version, zstd = len(view), view[4], bool(view[5] & FLAG_ZSTD)
    bound = bool(view[5] & FLAG_SCHEMA)
    temporal = r.take(TEMPORAL_DIGEST_BYTES, "temporal digest") if view[5] & FLAG_TEMPORAL else None
    if bound:
        if schema is None:
            raise SchemaError(
                "schema-bound stream (flag bit 2): decoding needs the schema of its tensors (pass expect=...)"
            )
        identities = schema_of(schema)
        digest = r.take(SCHEMA_DIGEST_BYTES, "schema digest")
        if digest != schema_digest(identities):
            raise SchemaError("schema-bound stream: its schema digest differs from the expected tensors'")
        count = len(identities)
        if count > limits.max_tensors:
            raise LimitError(f"tensor count is {count}, above the limit {limits.max_tensors}")
    else:
        count = r.varint("tensor count", limits.max_tensors)
    tensors: list[TensorInfo] = []
    index: dict[str, int] = {}
    offset = table_end + 4
    total_elements = 0
    for i in range(count):
        if bound:
            name, dtype, shape = identities[i]
            dtype = DTYPES[DTYPE_CODES[dtype.newbyteorder("<")]]
            _check_identity(f"tensor {name!r}", len(name.encode("utf-8")), len(shape), math.prod(shape), limits)
        else:
            name, dtype, shape = _read_identity(r, i, limits)
        t = _read_coding(r, name, dtype, shape, offset, zstd, bound, temporal is not None)
        if t.name in index:
            raise FormatError(f"duplicate tensor name {t.name!r}")
        total_elements += t.numel
        if total_elements > limits.max_total_elements:
            raise LimitError(f"stream declares over {limits.max_total_elements} elements in all")
        index[t.name] = i
        tensors.append(t)
        offset += t.length
    payload_crc = None
    if bound and any(t.mode != MODE_ZERO for t in tensors):
        (payload_crc,) = struct.unpack("<I", r.take(4, "payload CRC"))
    if r.pos != table_end:
        raise FormatError(f"{table_end - r.pos} unexplained bytes at the end of the header")
    if offset != total:
        how = "truncated" if offset > total else f"followed by {total - offset} trailing bytes"
        raise FormatError(f"payloads do not tile the stream: it is {how}")
    return StreamInfo(
        version, fingerprint, tuple(tensors), table_end + 4, total, index, zstd=zstd, payload_crc=payload_crc,
        schema_bound=bound, temporal_digest=temporal,
    )


def check_payload_crc(data: bytes | bytearray | memoryview, info: StreamInfo) -> None:
    """Schema-bound streams: check the one CRC-32 of all payloads (no-op for self-contained ones,
    whose payloads are checked one by one)."""
    if info.payload_crc is not None and zlib.crc32(memoryview(data).cast("B")[info.header_bytes :]) != info.payload_crc:
        raise FormatError("payload CRC mismatch (corrupted)")


def _check_identity(what: str, name_bytes: int, ndim: int, numel: int, limits: Limits) -> None:
    if name_bytes > limits.max_name_bytes:
        raise LimitError(f"{what}: name of {name_bytes} bytes, above the limit {limits.max_name_bytes}")
    if ndim > limits.max_ndim:
        raise LimitError(f"{what}: rank {ndim} above the limit {limits.max_ndim}")
    if numel > limits.max_tensor_elements:
        raise LimitError(f"{what}: {numel} elements, above the limit {limits.max_tensor_elements}")


def _read_identity(r: _Reader, i: int, limits: Limits) -> tuple[str, np.dtype, tuple[int, ...]]:
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
    _check_identity(what, name_len, ndim, math.prod(shape), limits)
    return name, dtype, shape


def _read_coding(
    r: _Reader,
    name: str,
    dtype: np.dtype,
    shape: tuple[int, ...],
    offset: int,
    zstd_flag: bool,
    bound: bool,
    temporal: bool = False,
) -> TensorInfo:
    what = f"tensor {name!r}"
    numel = math.prod(shape)
    mode = r.u8(f"{what} mode")
    if mode not in MODE_NAMES:
        raise FormatError(f"{what}: unknown coding mode {mode}")
    step = None
    tools = 0
    if mode == MODE_QUANT:
        if dtype.kind != "f":
            raise FormatError(f"{what}: mode 'quant' on non-float dtype {dtype.name}")
        if bound:
            (bits,) = struct.unpack("<H", r.take(2, f"{what} step"))
            (step,) = struct.unpack("<f", struct.pack("<I", bits << 16))
        else:
            (step,) = struct.unpack("<f", r.take(4, f"{what} step"))
        if not (np.isfinite(step) and step > 0):
            raise FormatError(f"{what}: step {step} is not a positive finite number")
    if mode == MODE_INT and dtype.kind == "f":
        raise FormatError(f"{what}: mode 'int' on float dtype {dtype.name}")
    if mode in (*FLOAT_MODES, MODE_FLOAT_LOSSLESS):
        if dtype.kind != "f":
            raise FormatError(f"{what}: mode {MODE_NAMES[mode]!r} on non-float dtype {dtype.name}")
        if numel == 0:
            raise FormatError(f"{what}: mode {MODE_NAMES[mode]!r} on an empty tensor")
        if mode == MODE_LOWRANK and len(shape) < 2:
            raise FormatError(f"{what}: mode 'lowrank' on a tensor of rank {len(shape)} (needs >= 2)")
    if mode in _CODED_MODES:
        tools = r.u8(f"{what} tools")  # (every bit has a meaning; the checks below bound their mixes)
        if tools & TOOL_DQ and mode != MODE_QUANT:
            raise FormatError(f"{what}: dependent quantisation on an exactly coded (int) tensor")
        if tools & TOOL_DQ_8STATES and not tools & TOOL_DQ:
            raise FormatError(f"{what}: an 8-state machine without dependent quantisation")
        if tools & TOOL_EG_CTX and tools & (TOOL_DQ | TOOL_ROW_REFS):
            raise FormatError(f"{what}: context-coded Exp-Golomb prefixes with dependent quantisation "
                              "or row references")
        if tools & TOOL_TEMPORAL:
            if mode != MODE_QUANT or dtype.itemsize < 4 or tools & (TOOL_DQ | TOOL_ROW_REFS):
                raise FormatError(f"{what}: temporal contexts on a tensor that is not a plain quantised "
                                  "float32/64 tensor")
            if not temporal:
                raise FormatError(f"{what}: temporal contexts in a stream that names no temporal reference")
        elif tools & TOOL_TEMPORAL_SCALE_MASK:
            raise FormatError(f"{what}: a temporal reference scale without temporal contexts")
    length, crc = 0, None
    if mode != MODE_ZERO:
        length = r.varint(f"{what} payload length", 1 << 62)
        if not bound:
            (crc,) = struct.unpack("<I", r.take(4, f"{what} payload CRC"))
    zstd = zstd_flag and mode in ZSTD_MODES
    if mode == MODE_RAW and not zstd and length != numel * dtype.itemsize:
        raise FormatError(f"{what}: raw payload of {length} bytes for {numel} x {dtype.itemsize}-byte elements")
    if mode in FLOAT_MODES and not zstd:
        size, exact = plain_payload_size(mode, dtype, numel)
        if length > size or (exact and length != size):
            need = f"needs {size}" if exact else f"allows at most {size}"
            raise FormatError(f"{what}: {MODE_NAMES[mode]} payload of {length} bytes, shape {shape} {need}")
    if mode in _BOUNDED_MODES:
        if numel == 0:
            raise FormatError(f"{what}: coded mode on an empty tensor")
        if numel > (length + 16) << _ELEMENTS_PER_BYTE_SHIFT:
            raise FormatError(f"{what}: {numel} elements cannot come from a {length}-byte payload")
    return TensorInfo(name, dtype, shape, mode, step, tools, offset, length, crc, zstd)


# --- zstd payloads (flag bit 1) --------------------------------------------------------------------


def _zstandard():
    """The ``zstandard`` module, imported when a stream needs it (nnc_fl itself needs numpy + numba)."""
    try:
        import zstandard
    except ImportError:
        raise FormatError(
            "the stream's payloads are zstd-compressed (flag bit 1); decoding them needs the 'zstandard' "
            "package (pip install zstandard)"
        ) from None
    return zstandard


_ZSTD_BLOCK_ERRORS = {
    _zstdframe.SHORT: "its blocks run past the payload",
    _zstdframe.RESERVED: "a block of the reserved type",
    _zstdframe.TOO_BIG: "a block larger than 128 KiB",
}


def zstd_plain_size(payload: bytes | memoryview, t: TensorInfo) -> int:
    """The plain size tensor ``t``'s zstd frame (``t.zstd``) declares, read from its frame header only.

    The payload must be exactly one frame (its block headers are walked, nothing is decompressed),
    without a dictionary; the frame must declare its content size, and that size must equal (raw,
    f16, int8) or stay within (sparse, ternary, lowrank) :func:`plain_payload_size` of the tensor's
    shape. Decoders read
    every frame's size with this before decompressing any (the plain payloads count against the
    memory budget).
    """
    zstandard = _zstandard()
    what = f"tensor {t.name!r}"
    if bytes(payload[:4]) != zstandard.FRAME_HEADER:
        raise FormatError(f"{what}: bad zstd frame header (the payload does not start with the frame magic)")
    try:
        header = zstandard.frame_header_size(payload)
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{what}: bad zstd frame header ({exc})") from None
    declared = params.content_size
    if declared == zstandard.CONTENTSIZE_UNKNOWN or declared < 0:
        raise FormatError(f"{what}: zstd frame does not declare its content size")
    if params.dict_id:
        raise FormatError(f"{what}: zstd frame needs dictionary {params.dict_id} (payload frames use none)")
    end = _zstdframe.blocks_end(np.frombuffer(payload, dtype=np.uint8), header)
    if end < 0:
        raise FormatError(f"{what}: corrupt zstd frame ({_ZSTD_BLOCK_ERRORS[end]})")
    if end + 4 * params.has_checksum != len(payload):
        raise FormatError(
            f"{what}: corrupt zstd frame (it ends at byte {end + 4 * params.has_checksum} of the "
            f"{len(payload)}-byte payload, which must be exactly one frame)"
        )
    size, exact = plain_payload_size(t.mode, t.dtype, t.numel)
    if declared > size or (exact and declared != size):
        need = f"needs {size}" if exact else f"allows at most {size}"
        raise FormatError(
            f"{what}: zstd frame declares {declared} bytes, a {t.mode_name} payload of shape {t.shape} {need}"
        )
    return declared


def unzstd_payload(payload: bytes | memoryview, t: TensorInfo) -> bytes:
    """The plain payload inside tensor ``t``'s zstd frame (``t.zstd``), bounded before decompressing
    (:func:`zstd_plain_size`); the frame must be the whole payload and decompress to exactly the
    declared size."""
    declared = zstd_plain_size(payload, t)
    zstandard = _zstandard()
    what = f"tensor {t.name!r}"
    try:
        plain = zstandard.ZstdDecompressor().decompress(payload, max_output_size=declared, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{what}: corrupt zstd frame ({exc})") from None
    if len(plain) != declared:
        raise FormatError(f"{what}: zstd frame decompressed to {len(plain)} bytes, declared {declared}")
    return plain
