"""Structure-aware fuzz campaign of the nnc-fl decoder (issue 9: no single client can crash the server).

Run ``python -m experiments.fuzz --n 1000000 --workers 2 --out report.json``. This is a long
campaign, not a CI test (``tests/test_fuzz_smoke.py`` runs its core loop briefly).

**Corpus.** Valid streams built here: four small models mixing float16/32/64, integer and bool
tensors, 0-d, empty and 2-4-d tensors, coded with the nnc codec (several steps, ``rel_step``,
``rd_lambda``, lossless), with the baseline codecs of :mod:`experiments.baselines` (modes raw+zstd,
f16, int8+zstd, sparse+zstd, ternary) and with :func:`nnc_fl.bitstream.write_stream` for the other
combinations (f16+zstd, int8, sparse and ternary without zstd, ternary+zstd, every mode in one
stream, temporal contexts against a reference that every target is then given), with and without
fingerprints (1, 32, 48 and 64 bytes).

**Mutations**, each applied to a random corpus stream (``kind:sub-kind`` in the report):

- ``bytes``: flips, overwrites, insertions, deletions, truncation, extension, duplicated chunks,
  splices of two streams -- anywhere, CRCs left as they fall (the CRC checks are the target);
- ``header``: the stream is parsed into its raw fields by this module's own table parser
  (:class:`RawStream`; the library's writer refuses hostile records on purpose), one to three fields
  are set to boundary or random values (huge and non-minimal varints, dims whose product overflows
  64 bits, unknown codes, NaN / negative / subnormal / huge steps, tool bits in bad mixes, reserved flag bits,
  duplicate names, length fields that lie, entries dropped / duplicated / swapped, modes changed with
  or without a fitting payload) and the stream is re-serialised with a valid header CRC and valid
  payload CRCs (unless the CRC itself is the mutated field);
- ``payload``: one payload is replaced (random bytes, bit flips, truncation, extension,
  all-0x00 / all-0xFF, crafted levels re-encoded by the range coder, structure-aware edits of the
  f16 / int8 / sparse / ternary fields, zstd frames that lie about their size, carry no size,
  several frames, skippable frames, checksums, dictionaries, huge windows) and its length, payload
  CRC and the header CRC are recomputed, so the mutation reaches the entropy decoder and the
  payload parsers.

**Targets**, for every mutated stream: :func:`nnc_fl.decode` (default limits and memory budget),
:func:`nnc_fl.read_fingerprint`, :func:`nnc_fl.inspect` (and its text rendering),
:func:`nnc_fl.decode_tensor` for each listed tensor, and :func:`nnc_fl.decode` with
``expect=`` the original stream's schema (the server's call).

**Outcomes**: ``ok``, ``FormatError`` / ``LimitError`` / ``SchemaError``, ``CRASH`` (any other
exception: the input is recorded as hex with the traceback and the mutation kind; a worker process
that dies counts too), ``HANG`` (a call that spends more CPU time than ``--hang-limit`` seconds plus
the elements the stream declares at ``--min-rate`` elements per second: CPU time, so that a loaded
machine does not make hangs, and per declared element, since a 600-byte stream may rightly declare
47 M elements within the default memory budget and take a second to decode them; a worker stuck in
native code longer than ``--kill-after`` is killed, recorded and replaced), ``MISMATCH`` (calls that
succeed but disagree: ``decode_tensor`` or ``decode(expect=)`` returning other values than
``decode``, a decoded table differing from ``inspect``, non-finite values from a mode that cannot
carry them, a stream of exactly the expected schema that ``decode(expect=)`` refuses while
``decode`` accepts it).

Input ``i`` is made by ``numpy.random.default_rng([seed, i])``, so a run is reproducible whatever
the number of workers, and ``--show I`` regenerates input ``I`` (hex) for a reproduction.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import math
import multiprocessing as mp
import os
import queue
import re
import resource
import signal
import struct
import sys
import threading
import time
import traceback
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import zstandard

import nnc_fl
from nnc_fl import bitstream as bs
from nnc_fl._floatcoder import encode_float_payload
from nnc_fl._levels import encode_levels, temporal_classes
from nnc_fl.errors import FormatError
from nnc_fl.payloads import (
    golomb_parameter,
    lowrank_fits,
    lowrank_view,
    pack_f16,
    pack_int8,
    pack_lowrank,
    pack_sparse,
    pack_ternary,
)

#: The calls made on every mutated stream, in order.
CALLS = ("decode", "fingerprint", "inspect", "decode_tensor", "decode_expect")
OUTCOMES = ("ok", "FormatError", "LimitError", "SchemaError", "CRASH", "HANG", "MISMATCH")
KINDS = ("bytes", "header", "payload")
#: Mutated inputs are cut to this size (insertions and lying zstd frames stay bounded).
MAX_INPUT = 1 << 20
#: Modes that cannot reconstruct a non-finite value.
_FINITE_MODES = (bs.MODE_ZERO, bs.MODE_QUANT, bs.MODE_INT, bs.MODE_INT8, bs.MODE_SPARSE, bs.MODE_TERNARY)
_KEEP = 10  # entries kept in each "slowest" / "largest" list
_KEEP_RECORDS = 40  # crash / hang / mismatch records kept (distinct signatures first)


# ---------------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    """One valid corpus stream and the schema (name, shape, dtype) of its tensors; for a stream with
    temporal contexts, the reference every target decodes it (and its mutations) with."""

    name: str
    data: bytes
    schema: tuple[tuple[str, tuple[int, ...], str], ...]
    reference: Mapping[str, np.ndarray] | None = field(default=None, compare=False, repr=False)

    def expect(self) -> dict[str, np.ndarray]:
        return {n: np.zeros(s, np.dtype(d)) for n, s, d in self.schema}


def _models() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(20240909)

    def delta(shape, dtype=np.float32, scale=0.01):
        return (rng.laplace(size=shape) * scale).astype(dtype)

    def sparse(shape, dtype=np.float32, keep=0.1):
        x = delta(shape, dtype)
        x[rng.random(shape) > keep] = 0
        return x

    cnn = {
        "conv.weight": delta((4, 3, 3, 3)),
        "conv.bias": delta((4,), scale=0.002),
        "bn.weight": delta((4,), np.float16, 0.05),
        "bn.num_batches_tracked": np.array(17, np.int64),
        "fc.weight": delta((6, 4, 2), np.float64),
        "fc.bias": delta((6,), np.float64, 0.001),
        "mask": rng.random(5) > 0.5,
        "temperature": np.array(0.25, np.float32),
        "unused": np.zeros((0, 4), np.float32),
    }
    mixed = {
        "w4": delta((2, 3, 2, 4)),
        "h": delta((8, 8), np.float16, 0.5),
        "d": delta((20,), np.float64),
        "i8": rng.integers(-128, 128, (3, 5)).astype(np.int8),
        "u8": rng.integers(0, 256, 9).astype(np.uint8),
        "i16": np.array([-32768, 32767, 0, 5], np.int16),
        "u16": rng.integers(0, 65536, (2, 2)).astype(np.uint16),
        "i32": rng.integers(-(2**31), 2**31, 7).astype(np.int32),
        "u32": rng.integers(0, 2**32, 3, dtype=np.uint64).astype(np.uint32),
        "i64": np.array([2**62, -(2**62), 1, -(2**63)], np.int64),
        "u64": np.array([2**64 - 1, 0, 3], np.uint64),
        "flag": np.array(True),
        "empty_i": np.zeros((3, 0, 2), np.int32),
        "scalar": np.array(-1.5, np.float64),
        "é/ünïcode": delta((3,)),
    }
    mlp = {
        "l1.weight": delta((16, 24)),
        "l1.bias": delta((16,)),
        "l2.weight": delta((4, 16)),
        "l2.bias": delta((4,)),
    }
    sparse_model = {
        "big": sparse((32, 32)),
        "half": sparse((64,), np.float16, 0.3),
        "dense64": delta((5, 5), np.float64, 0.1),
        "counter": np.array(3, np.int64),
    }
    return {"cnn": cnn, "mixed": mixed, "mlp": mlp, "sparse": sparse_model}


def _schema(tensors: Mapping[str, np.ndarray]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    return tuple((k, tuple(v.shape), v.dtype.str) for k, v in tensors.items())


def _cols(shape: tuple[int, ...], n: int) -> int:
    return n // shape[0] if len(shape) >= 2 and shape[0] else max(n, 1)


def _coded_record(
    name: str, arr: np.ndarray, step: float, rate: int = 0, reference: np.ndarray | None = None
) -> bs.TensorRecord:
    """A quant (float) or int record of ``arr`` coded by the range coder; with ``reference`` (a
    float32/64 tensor of its shape), in temporal contexts (tools bit 5; bit 6 when ``rate`` is odd)."""
    flat = arr.reshape(-1)
    if arr.dtype.kind == "f":
        levels = np.rint(flat.astype(np.float64) / np.float32(step)).astype(np.int64)
        mode, s = bs.MODE_QUANT, float(np.float32(step))
    else:
        levels, mode, s = flat.astype(np.int64), bs.MODE_INT, None
    tools, tref = rate, None
    if reference is not None:
        shift = rate & 1
        tref = temporal_classes(reference.reshape(-1), s * 2.0**-shift, np.empty(arr.size, np.int8))
        tools |= bs.TOOL_TEMPORAL | (shift << bs.TOOL_TEMPORAL_SCALE_SHIFT)
    payload = encode_levels(levels, _cols(arr.shape, arr.size), rate, False, tref).tobytes()
    return bs.TensorRecord(name, arr.dtype, arr.shape, mode, s, tools, payload)


def _temporal_reference(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A temporal reference for a model's non-empty float32/64 tensors: a scaled, perturbed copy."""
    rng = np.random.default_rng(77)
    return {
        k: (0.7 * v + rng.laplace(size=v.shape) * 0.002).astype(v.dtype)
        for k, v in tensors.items()
        if v.dtype.kind == "f" and v.dtype.itemsize >= 4 and v.size
    }


def _float_record(name: str, arr: np.ndarray, mode: int) -> bs.TensorRecord:
    """A record of a non-empty float tensor in one of the float modes 4-8 (lowrank: rank-1 factors
    where they fit the shape, f16 otherwise)."""
    flat = arr.reshape(-1).astype(np.float64)
    if mode == bs.MODE_LOWRANK and not lowrank_fits(arr.shape, 1):
        mode = bs.MODE_F16
    if mode == bs.MODE_LOWRANK:
        rows, cols = lowrank_view(arr.shape)
        view = flat.reshape(rows, cols)
        payload = pack_lowrank(view[:, :1], view[:1, :].T / (view[0, 0] if view[0, 0] else 1.0))
    elif mode == bs.MODE_F16:
        payload = pack_f16(flat)
    elif mode == bs.MODE_INT8:
        scale = np.float32(np.abs(flat).max() / 127.0)
        levels = np.zeros(flat.size, np.int8) if scale == 0 else np.clip(np.rint(flat / scale), -127, 127)
        payload = pack_int8(scale, levels.astype(np.int8))
    elif mode == bs.MODE_SPARSE:
        pos = np.flatnonzero(flat)[::2]
        payload = pack_sparse(pos, flat[pos].astype(np.float32))
    else:
        pos = np.flatnonzero(flat)[::3]
        mu = np.float32(np.abs(flat[pos]).mean()) if pos.size else np.float32(0)
        payload = pack_ternary(pos, flat[pos] < 0, mu, golomb_parameter(pos.size, flat.size))
    return bs.TensorRecord(name, arr.dtype, arr.shape, mode, payload=payload)


def _plain_record(name: str, arr: np.ndarray, mode: int | None) -> bs.TensorRecord:
    """``arr`` in ``mode`` where it applies; raw (int, bool, or no mode) and zero (empty) otherwise."""
    if arr.size == 0:
        return bs.TensorRecord(name, arr.dtype, arr.shape, bs.MODE_ZERO)
    if mode is not None and arr.dtype.kind == "f":
        return _float_record(name, arr, mode)
    payload = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    return bs.TensorRecord(name, arr.dtype, arr.shape, bs.MODE_RAW, payload=payload)


def build_corpus() -> list[Seed]:
    """The valid streams every mutation starts from (deterministic)."""
    from experiments.baselines import Fp16Codec, Int8ZstdCodec, PowerSGDCodec, STCCodec, TopKCodec, ZstdCodec

    fps = [None, b"\x01", bytes(range(32)), bytes(range(100, 148)), b"\xff" * 64]
    out: list[Seed] = []

    def add(name: str, data: bytes, tensors: Mapping[str, np.ndarray], reference=None) -> None:
        nnc_fl.decode(data, expect=tensors, temporal_reference=reference)  # valid for its schema
        out.append(Seed(name, data, _schema(tensors), reference))

    for m, (model, tensors) in enumerate(_models().items()):
        fp = lambda j, m=m: fps[(m + j) % len(fps)]  # noqa: E731 - varies the fingerprint per stream
        nnc = [
            ("step0.01", {"step": 0.01}),
            ("step0.001", {"step": 0.001}),
            ("rel0.25", {"rel_step": 0.25}),
            ("rd2", {"step": 0.002, "rd_lambda": 2.0}),
            ("qp-40", {"qp": -40}),
        ]
        for j, (label, kw) in enumerate(nnc):
            add(f"{model}/nnc-{label}", nnc_fl.encode(tensors, fingerprint=fp(j), **kw), tensors)
        floats = [k for k, v in tensors.items() if v.dtype.kind == "f"]
        add(f"{model}/nnc-lossless", nnc_fl.encode(tensors, lossless=list(tensors), fingerprint=fp(5)), tensors)
        add(f"{model}/nnc-part-lossless", nnc_fl.encode(tensors, step=0.005, lossless=floats[:1], fingerprint=fp(6)),
            tensors)
        codecs = [ZstdCodec(), Fp16Codec(), Int8ZstdCodec(), TopKCodec(ratio=0.2), TopKCodec(ratio=1.0),
                  STCCodec(ratio=0.1), STCCodec(ratio=0.6), PowerSGDCodec(rank=1)]
        for j, codec in enumerate(codecs):
            add(f"{model}/{codec.name}-{j}", codec.encode(tensors, fingerprint=fp(j)), tensors)
        # the float modes with the other zstd setting than their baseline codec, and all modes mixed
        add(f"{model}/nnc-float-lossless", nnc_fl.encode(tensors, lossless=floats, float_lossless=True, step=0.01,
                                                         fingerprint=fp(8)), tensors)
        for mode, zstd in ((bs.MODE_F16, 3), (bs.MODE_INT8, None), (bs.MODE_SPARSE, None), (bs.MODE_TERNARY, 1),
                           (bs.MODE_LOWRANK, None), (bs.MODE_LOWRANK, 2)):
            records = [_plain_record(k, v, mode) for k, v in tensors.items()]
            add(f"{model}/{bs.MODE_NAMES[mode]}{'+zstd' if zstd else ''}",
                bs.write_stream(records, fp(mode), zstd_level=zstd), tensors)
        cycle = [bs.MODE_QUANT, bs.MODE_F16, bs.MODE_INT8, bs.MODE_SPARSE, bs.MODE_TERNARY, None]
        for zstd in (None, 2):
            records = []
            for j, (k, v) in enumerate(tensors.items()):
                mode = cycle[j % len(cycle)]
                if v.size and (mode == bs.MODE_QUANT or (v.dtype.kind in "iub" and j % 2 == 0)):
                    if v.dtype.kind in "iu" and v.dtype.itemsize == 8 and np.abs(v.astype(np.float64)).max() >= 2**62:
                        records.append(_plain_record(k, v, None))
                    else:
                        records.append(_coded_record(k, v, 0.004, rate=j % 4))
                else:
                    records.append(_plain_record(k, v, mode))
            data = bs.write_stream(records, fp(7 + (zstd or 0)), zstd_level=zstd)
            add(f"{model}/mixed{'+zstd' if zstd else ''}", data, tensors)
        # temporal contexts (tools bits 5-6): every float32/64 tensor against a reference
        reference = _temporal_reference(tensors)
        records = [
            _coded_record(k, v, 0.003, rate=j % 4, reference=reference[k]) if k in reference
            else _plain_record(k, v, None)
            for j, (k, v) in enumerate(tensors.items())
        ]
        digest = nnc_fl.temporal_digest(reference)
        add(f"{model}/temporal", bs.write_stream(records, fp(9), temporal_digest=digest), tensors, reference)
    for seed in out:  # the fuzzer's own table parser and writer reproduce every corpus stream
        if parse(seed.data).serialise() != seed.data:
            raise AssertionError(f"table parser/writer do not round-trip {seed.name}")
    return out


# ---------------------------------------------------------------------------------------------------
# A raw table parser / writer that writes anything (hostile records included)
# ---------------------------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """Minimal LEB128 of any integer >= 0 (longer than 10 bytes for values >= 2**70: hostile)."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _vb(value: int | bytes) -> bytes:
    return value if isinstance(value, bytes) else varint(value)


@dataclass
class RawEntry:
    """One table entry as raw fields. ``None`` overrides mean "what the other fields imply"."""

    name: bytes
    dtype: int
    dims: list  # ints, or bytes (a raw, possibly non-minimal varint)
    mode: int
    step: bytes | None = None  # raw 4 bytes; present in the table iff not None
    tools: int | None = None  # present iff not None
    payload: bytes | None = None  # length + CRC fields and payload bytes present iff not None
    name_len: int | bytes | None = None
    rank: int | None = None
    length: int | bytes | None = None
    crc: int | None = None


@dataclass
class RawStream:
    """A stream as raw fields; :meth:`serialise` writes them with a valid header CRC unless told."""

    entries: list[RawEntry]
    fingerprint: bytes | None
    zstd: bool
    magic: bytes = bs.MAGIC
    version: int = bs.VERSION
    flags: int | None = None
    fp_len: int | None = None
    count: int | bytes | None = None
    table_len: int | bytes | None = None
    table_tail: bytes = b""
    header_crc: int | None = None
    trailer: bytes = b""
    temporal: bytes | None = None  # the temporal reference's digest (flag bit 3)

    def serialise(self) -> bytes:
        table = bytearray()
        if self.fingerprint is not None:
            table.append((len(self.fingerprint) if self.fp_len is None else self.fp_len) & 0xFF)
            table += self.fingerprint
        if self.temporal is not None:
            table += self.temporal
        table += _vb(len(self.entries) if self.count is None else self.count)
        for e in self.entries:
            table += _vb(len(e.name) if e.name_len is None else e.name_len) + e.name
            table.append(e.dtype & 0xFF)
            table.append((len(e.dims) if e.rank is None else e.rank) & 0xFF)
            for d in e.dims:
                table += _vb(d)
            table.append(e.mode & 0xFF)
            if e.step is not None:
                table += e.step
            if e.tools is not None:
                table.append(e.tools & 0xFF)
            if e.payload is not None:
                table += _vb(len(e.payload) if e.length is None else e.length)
                table += struct.pack("<I", (zlib.crc32(e.payload) if e.crc is None else e.crc) & 0xFFFFFFFF)
        table += self.table_tail
        flags = self.flags
        if flags is None:
            flags = (bs.FLAG_FINGERPRINT if self.fingerprint is not None else 0) | (bs.FLAG_ZSTD if self.zstd else 0)
            flags |= bs.FLAG_TEMPORAL if self.temporal is not None else 0
        head = bytearray(self.magic) + bytes([self.version & 0xFF, flags & 0xFF])
        head += _vb(len(table) if self.table_len is None else self.table_len) + table
        head += struct.pack("<I", (zlib.crc32(head) if self.header_crc is None else self.header_crc) & 0xFFFFFFFF)
        payloads = b"".join(e.payload for e in self.entries if e.payload is not None)
        return bytes(head) + payloads + self.trailer


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def parse(data: bytes) -> RawStream:
    """The raw fields of a *valid* stream (the corpus; no checks)."""
    flags = data[5]
    table_len, pos = _read_varint(data, 6)
    table_end = pos + table_len
    fingerprint = None
    if flags & bs.FLAG_FINGERPRINT:
        n = data[pos]
        fingerprint = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
    temporal = None
    if flags & bs.FLAG_TEMPORAL:
        temporal = data[pos : pos + bs.TEMPORAL_DIGEST_BYTES]
        pos += bs.TEMPORAL_DIGEST_BYTES
    count, pos = _read_varint(data, pos)
    entries = []
    offset = table_end + 4
    for _ in range(count):
        n, pos = _read_varint(data, pos)
        name = data[pos : pos + n]
        pos += n
        dtype, rank = data[pos], data[pos + 1]
        pos += 2
        dims = []
        for _ in range(rank):
            d, pos = _read_varint(data, pos)
            dims.append(d)
        mode = data[pos]
        pos += 1
        e = RawEntry(name, dtype, dims, mode)
        if mode == bs.MODE_QUANT:
            e.step = data[pos : pos + 4]
            pos += 4
        if mode in (bs.MODE_QUANT, bs.MODE_INT):
            e.tools = data[pos]
            pos += 1
        if mode != bs.MODE_ZERO:
            length, pos = _read_varint(data, pos)
            pos += 4
            e.payload = data[offset : offset + length]
            offset += length
        entries.append(e)
    return RawStream(entries, fingerprint, bool(flags & bs.FLAG_ZSTD), temporal=temporal)


# ---------------------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------------------

_INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
_BIG = (
    2**14, 2**16, 2**16 + 1, 2**24 + 1, 2**31 - 1, 2**31, 2**31 + 1, 2**32, 2**32 + 1, 2**53 + 1,
    2**62, 2**62 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**70, 2**77 - 1,
)
_STEPS = tuple(
    struct.pack("<I", u)
    for u in (
        0x7FC00000, 0xFFC00000, 0x7F800001, 0x7F800000, 0xFF800000, 0x00000000, 0x80000000, 0xBF800000,
        0x00000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0x0DA24260, 0x7149F2CA, 0x3F800000, 0x3C23D70A,
    )
)
_FLOATS32 = (float("nan"), float("inf"), float("-inf"), -1.0, 0.0, -0.0, 1e-45, 1e-38, 3.4028235e38, 1e5, 65504.0,
             65520.0, 1e300)


def _choice(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _rand_bytes(rng: np.random.Generator, n: int) -> bytes:
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def _nonminimal(value: int, rng: np.random.Generator) -> bytes:
    """A non-minimal LEB128 of ``value``: extra ``0x80 ... 0x00`` groups (or a 10+ byte chain)."""
    v = bytearray(varint(value))
    v[-1] |= 0x80
    v += b"\x80" * int(rng.integers(0, 10)) + b"\x00"
    return bytes(v)


def _big_value(rng: np.random.Generator) -> int | bytes:
    r = rng.random()
    if r < 0.6:
        return int(_choice(rng, _BIG))
    if r < 0.75:
        return int(rng.integers(0, 2**62)) >> int(rng.integers(0, 62))
    if r < 0.85:
        return b"\x80" * 10 + b"\x01"  # an 11-byte varint
    if r < 0.95:
        return b"\xff" * int(rng.integers(1, 12)) + b"\x7f"
    return b"\x80" * int(rng.integers(1, 12))  # never terminates


_EDITS = ("flip", "set", "insert", "delete", "truncate", "extend", "dup", "splice")
_REPLACEMENTS = ("zeros", "ones", "random")


def generic_bytes(data: bytes, rng: np.random.Generator, other: bytes, replace_all: float = 0.25) -> tuple[str, bytes]:
    """A random edit of ``data`` (any bytes); ``other`` is spliced in by some edits. With
    probability ``replace_all`` the whole of ``data`` is replaced (zeros, 0xFF, random bytes)."""
    n = len(data)
    op = _choice(rng, _REPLACEMENTS if rng.random() < replace_all else _EDITS)
    b = bytearray(data)
    if op == "flip" and n:
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(n))
            b[i] ^= 1 << int(rng.integers(8))
    elif op == "set" and n:
        for _ in range(int(rng.integers(1, 9))):
            b[int(rng.integers(n))] = _choice(rng, _INTERESTING_BYTES) if rng.random() < 0.5 else int(rng.integers(256))
    elif op == "insert":
        i = int(rng.integers(n + 1))
        b[i:i] = _rand_bytes(rng, int(rng.integers(1, 17)))
    elif op == "delete" and n:
        i = int(rng.integers(n))
        del b[i : i + int(rng.integers(1, 17))]
    elif op == "truncate":
        b = b[: int(rng.integers(n + 1))]
    elif op == "extend":
        k = int(rng.integers(1, 65))
        b += bytes(k) if rng.random() < 0.5 else _rand_bytes(rng, k)
    elif op == "dup" and n:
        i = int(rng.integers(n))
        chunk = b[i : i + int(rng.integers(1, 65))]
        j = int(rng.integers(n + 1))
        b[j:j] = chunk
    elif op == "splice" and other:
        i, j = int(rng.integers(n + 1)), int(rng.integers(len(other) + 1))
        b = b[:i] + other[j:]
    elif op in ("zeros", "ones"):
        k = n if rng.random() < 0.6 else int(rng.integers(0, 2 * n + 17))
        b = bytearray((b"\x00" if op == "zeros" else b"\xff") * k)
    else:
        op = "random"
        k = n if rng.random() < 0.5 else int(rng.integers(0, 2 * n + 17))
        b = bytearray(_rand_bytes(rng, k))
    return op, bytes(b)


def _numel(dims: Iterable) -> int:
    return math.prod(d for d in dims if isinstance(d, int))


def _factor_shape(n: int, rng: np.random.Generator) -> list[int]:
    """Random dims (rank 0-4) whose product is ``n`` (factors below 1000 spread, the rest in one)."""
    if n == 0:
        dims = [int(rng.integers(0, 4)) for _ in range(int(rng.integers(1, 4)))]
        dims[int(rng.integers(len(dims)))] = 0
        return dims
    rank = int(rng.integers(0 if n == 1 else 1, 5))
    dims = [1] * max(rank, 1)
    m, p = n, 2
    while m > 1 and p * p <= m and p < 1000:  # (n may be a huge number with a huge prime factor)
        while m % p == 0:
            dims[int(rng.integers(len(dims)))] *= p
            m //= p
        p += 1
    if m > 1:
        dims[int(rng.integers(len(dims)))] *= m
    return dims if rank else []


def _dtype_of(code: int) -> np.dtype:
    return bs.DTYPES.get(code, np.dtype("<f4"))


def fitting_payload(mode: int, dtype_code: int, dims: list, rng: np.random.Generator, zstd: bool) -> bytes | None:
    """A valid payload of ``mode`` for that dtype and shape (random values), or ``None`` if too big."""
    n = _numel(dims)
    if n > 1 << 15:
        return None
    dt = _dtype_of(dtype_code)
    values = rng.laplace(size=n) * 0.05
    if mode == bs.MODE_ZERO:
        return None
    if mode == bs.MODE_RAW:
        plain = (values.astype(dt) if dt.kind == "f" else rng.integers(0, 2, n).astype(dt)).astype(dt.newbyteorder("<"))
        plain = plain.tobytes()
    elif mode in (bs.MODE_QUANT, bs.MODE_INT):
        levels = rng.integers(-3, 4, n).astype(np.int64)
        if dt.kind in "ub":
            levels = np.abs(levels) % (2 if dt.kind == "b" else 4)
        shape = tuple(d for d in dims if isinstance(d, int))
        return encode_levels(levels, _cols(shape, n), int(rng.integers(4))).tobytes()
    elif n == 0:
        return b""
    elif mode == bs.MODE_F16:
        plain = pack_f16(values)
    elif mode == bs.MODE_INT8:
        plain = pack_int8(np.float32(0.01), rng.integers(-127, 128, n).astype(np.int8))
    elif mode == bs.MODE_SPARSE:
        pos = np.flatnonzero(rng.random(n) < rng.random())
        plain = pack_sparse(pos, values[pos].astype(np.float32))
    elif mode == bs.MODE_TERNARY:
        pos = np.flatnonzero(rng.random(n) < rng.random())
        plain = pack_ternary(pos, rng.random(pos.size) < 0.5, 0.01, golomb_parameter(pos.size, n))
    elif mode == bs.MODE_LOWRANK and all(isinstance(d, int) for d in dims) and lowrank_fits(tuple(dims), 1):
        rows, cols = lowrank_view(tuple(dims))
        plain = pack_lowrank(rng.laplace(size=(rows, 1)) * 0.1, rng.laplace(size=(cols, 1)) * 0.1)
    elif mode == bs.MODE_FLOAT_LOSSLESS and dt.kind == "f":
        return encode_float_payload(values.astype(dt))  # (never a zstd frame)
    else:
        return _rand_bytes(rng, int(rng.integers(0, 32)))
    return _zstd_frame(plain, rng) if zstd and mode in bs.ZSTD_MODES else plain


def _zstd_frame(plain: bytes, rng: np.random.Generator, **kw) -> bytes:
    kw.setdefault("write_content_size", True)
    return zstandard.ZstdCompressor(level=int(rng.integers(1, 6)), **kw).compress(plain)


# -- header mutations -----------------------------------------------------------------------------


def _entry(s: RawStream, rng: np.random.Generator) -> RawEntry | None:
    return _choice(rng, s.entries) if s.entries else None


def _h_magic(s, rng, ctx):
    s.magic = _rand_bytes(rng, 4) if rng.random() < 0.5 else b"NNCf"
    return "magic"


def _h_version(s, rng, ctx):
    s.version = _choice(rng, (0, 2, 3, 0x81, 255))
    return "version"


def _h_flags(s, rng, ctx):
    base = (bs.FLAG_FINGERPRINT if s.fingerprint is not None else 0) | (bs.FLAG_ZSTD if s.zstd else 0)
    r = rng.random()
    if r < 0.4:
        s.flags = base | (1 << int(rng.integers(2, 8)))
        return "flags-reserved"
    if r < 0.7:
        s.zstd = not s.zstd  # payloads unchanged: plain ones read as frames and frames as plain
        return "flags-zstd"
    s.flags = base ^ bs.FLAG_FINGERPRINT
    return "flags-fingerprint"


def _h_fingerprint(s, rng, ctx):
    r = rng.random()
    if r < 0.3 and s.fingerprint is not None:
        s.fp_len = _choice(rng, (0, 65, 128, 255, len(s.fingerprint) + 1, len(s.fingerprint) - 1))
        return "fingerprint-length-lie"
    if r < 0.5:
        s.fingerprint = None if s.fingerprint is not None else _rand_bytes(rng, 32)
        return "fingerprint-toggle"
    s.fingerprint = _rand_bytes(rng, int(_choice(rng, (1, 31, 33, 48, 64, 65, 100, 255))))
    return "fingerprint-size"


def _lied_size(n: int, rng: np.random.Generator, shifts, p_shift: float, p_zero: float):
    """A false count or length for a true ``n``: shifted by one of ``shifts`` (probability
    ``p_shift``), zero (up to ``p_zero``), ``n`` as a non-minimal varint (up to 0.7), or huge."""
    r = rng.random()
    if r < p_shift:
        return max(0, n + int(_choice(rng, shifts)))
    if r < p_zero:
        return 0
    if r < 0.7:
        return _nonminimal(n, rng)
    return _big_value(rng)


def _h_count(s, rng, ctx):
    s.count = _lied_size(len(s.entries), rng, (-2, -1, 1, 2), 0.4, 0.5)
    return "count"


def _h_name(s, rng, ctx):
    e = _entry(s, rng)
    if e is None:
        return "name-none"
    r = rng.random()
    others = [x.name for x in s.entries if x is not e]
    if r < 0.15 and others:
        e.name = _choice(rng, others)
        return "name-duplicate"
    if r < 0.3:
        e.name = _choice(rng, (b"\xff\xfe", b"\xed\xa0\x80", b"\xc0\x80", b"a\x80", b"\xf4\x90\x80\x80"))
        return "name-utf8"
    if r < 0.45:
        e.name = b"n" * int(_choice(rng, (0, 1023, 1024, 1025, 4096)))
        return "name-size"
    if r < 0.6:
        e.name_len = _choice(rng, (len(e.name) + 1, max(len(e.name) - 1, 0), 1025, 2**31)) if rng.random() < 0.7 \
            else _nonminimal(len(e.name), rng)
        return "name-length-lie"
    if r < 0.75:
        e.name = e.name + b"\x00" + _rand_bytes(rng, 2)
        return "name-nul"
    e.name = _rand_bytes(rng, int(rng.integers(0, 24)))
    return "name-random"


def _h_dtype(s, rng, ctx):
    e = _entry(s, rng)
    if e is None:
        return "dtype-none"
    e.dtype = int(rng.integers(1, 13)) if rng.random() < 0.5 else _choice(rng, (0, 13, 14, 127, 128, 255))
    return "dtype"


def _h_rank(s, rng, ctx):
    e = _entry(s, rng)
    if e is None:
        return "rank-none"
    r = rng.random()
    if r < 0.35:
        e.rank = _choice(rng, (len(e.dims) + 1, max(len(e.dims) - 1, 0), 16, 17, 255))
        return "rank-lie"
    if r < 0.6:
        e.dims = [*e.dims, int(_choice(rng, (1, 1, 2, 0)))] if rng.random() < 0.6 else e.dims[:-1]
        return "rank-change"
    e.dims = [1] * int(_choice(rng, (15, 16, 17, 64))) + list(e.dims)
    return "rank-many-ones"


def _h_dims(s, rng, ctx):
    e = _entry(s, rng)
    if e is None:
        return "dims-none"
    r = rng.random()
    if not e.dims:
        e.dims = [_big_value(rng)]
        return "dims-0d-grow"
    i = int(rng.integers(len(e.dims)))
    if r < 0.3:
        e.dims[i] = _big_value(rng)
        return "dims-big"
    if r < 0.4:
        e.dims[i] = _choice(rng, (0, 1, 2))
        return "dims-small"
    if r < 0.5:
        d = e.dims[i]
        e.dims[i] = _nonminimal(d if isinstance(d, int) else 1, rng)
        return "dims-nonminimal"
    if r < 0.62:
        a = int(_choice(rng, (2**32, 2**33, 2**31, 2**21, 2**62)))
        e.dims = [a, 2**64 // a] + ([2] if rng.random() < 0.5 else [])  # a product that wraps in 64 bits
        return "dims-overflow"
    if r < 0.8:
        e.dims = _factor_shape(_numel(e.dims), rng)
        return "dims-reshape"
    factor = int(_choice(rng, (2, 3, 64, 1000, 2**14, 2**20)))
    e.dims[i] = (e.dims[i] if isinstance(e.dims[i], int) else 1) * factor
    return "dims-scale"


def _zero_frame(prefix: bytes, zeros: int) -> bytes:
    """A zstd frame (content size declared) of ``prefix`` then ``zeros`` zero bytes: one raw block,
    then RLE blocks -- a few bytes per 128 KiB of content."""
    out = bytearray(b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + struct.pack("<Q", len(prefix) + zeros))
    out += (int(zeros == 0) | (len(prefix) << 3)).to_bytes(3, "little") + prefix
    while zeros > 0:
        chunk = min(zeros, 1 << 17)
        zeros -= chunk
        out += (int(zeros == 0) | (1 << 1) | (chunk << 3)).to_bytes(3, "little") + b"\x00"
    return bytes(out)


#: Element counts of the "bomb" mutation (a small stream declaring a large, valid tensor).
_BOMB_SIZES = (2**16, 2**18, 2**20, 2**20, 2**22, 2**22, 2**24, 47_000_000)


def _h_bomb(s, rng, ctx):
    """A tensor made large (up to the default memory budget) with a valid, tiny zstd payload that
    decompresses to its whole plain layout: f16/raw zeros, int8 zeros, sparse or ternary with k = n."""
    e = _entry(s, rng)
    if e is None:
        return "bomb-none"
    n = int(_choice(rng, _BOMB_SIZES))
    e.dims = _factor_shape(n, rng) if rng.random() < 0.5 else [n]
    mode = int(_choice(rng, (bs.MODE_RAW, *bs.FLOAT_MODES)))
    if mode != bs.MODE_RAW or (_dtype_of(e.dtype).kind != "f" and rng.random() < 0.5):
        e.dtype = int(_choice(rng, (10, 11, 12)))
    _relayout(e, mode, rng)
    s.zstd = True
    if mode in (bs.MODE_RAW, bs.MODE_F16):
        size, _ = bs.plain_payload_size(mode, _dtype_of(e.dtype), n)
        e.payload = _zero_frame(b"", size)
    elif mode == bs.MODE_INT8:
        e.payload = _zero_frame(struct.pack("<f", 0.01), n)
    elif mode == bs.MODE_SPARSE:
        e.payload = _zero_frame(varint(n), 5 * n)  # k = n, every gap 0, every value 0.0
    else:  # (lowrank too: a ternary layout it refuses)
        e.payload = _zero_frame(varint(n) + b"\x00" + struct.pack("<f", 0.01), 2 * ((n + 7) // 8))  # k = n, b = 0
    return f"bomb-{bs.MODE_NAMES[mode]}"


def _relayout(e: RawEntry, mode: int, rng: np.random.Generator) -> None:
    """Give ``e`` the fields ``mode`` has (step, tools, payload presence)."""
    e.mode = mode
    e.step = struct.pack("<f", float(_choice(rng, (0.01, 1.0, 1e-4)))) if mode == bs.MODE_QUANT else None
    e.tools = int(rng.integers(4)) if mode in (bs.MODE_QUANT, bs.MODE_INT) else None
    if mode == bs.MODE_ZERO:
        e.payload = None
    elif e.payload is None:
        e.payload = b""


def _h_mode(s, rng, ctx):
    e = _entry(s, rng)
    if e is None:
        return "mode-none"
    r = rng.random()
    if r < 0.25:
        e.mode = int(rng.integers(len(bs.MODE_NAMES), 256)) if rng.random() < 0.5 else int(rng.integers(0, 8))
        return "mode-lie"  # the fields that follow keep the old mode's layout
    mode = int(rng.integers(0, len(bs.MODE_NAMES)))
    _relayout(e, mode, rng)
    if r < 0.55:
        return "mode-relayout"
    if rng.random() < 0.5 and mode in bs.FLOAT_MODES:
        e.dtype = int(_choice(rng, (10, 11, 12)))
    payload = fitting_payload(mode, e.dtype, e.dims, rng, s.zstd)
    if payload is not None:
        e.payload = payload
    return "mode-refit"


def _h_step(s, rng, ctx):
    quant = [e for e in s.entries if e.step is not None]
    if quant and rng.random() < 0.8:
        e = _choice(rng, quant)
        e.step = _choice(rng, _STEPS) if rng.random() < 0.8 else _rand_bytes(rng, 4)
        return "step-value"
    e = _entry(s, rng)
    if e is None:
        return "step-none"
    e.step = None if e.step is not None else _choice(rng, _STEPS)
    return "step-field-toggle"


def _h_tools(s, rng, ctx):
    coded = [e for e in s.entries if e.tools is not None]
    if coded and rng.random() < 0.8:
        e = _choice(rng, coded)
        e.tools = _choice(rng, (1, 2, 3, 4, 8, 0x40, 0x80, 0xFF, int(rng.integers(256))))
        return "tools-value"
    e = _entry(s, rng)
    if e is None:
        return "tools-none"
    e.tools = None if e.tools is not None else int(rng.integers(256))
    return "tools-field-toggle"


def _h_length(s, rng, ctx):
    with_payload = [e for e in s.entries if e.payload is not None]
    if not with_payload:
        return "length-none"
    e = _choice(rng, with_payload)
    e.length = _lied_size(len(e.payload), rng, (-1, 1, -2, 2, 8, -8, 100), 0.4, 0.55)
    return "length-lie"


def _h_crc(s, rng, ctx):
    with_payload = [e for e in s.entries if e.payload is not None]
    if not with_payload:
        return "crc-none"
    e = _choice(rng, with_payload)
    e.crc = int(rng.integers(2**32)) if rng.random() < 0.5 else zlib.crc32(e.payload) ^ 1
    return "crc-lie"


def _h_table(s, rng, ctx):
    r = rng.random()
    if r < 0.35:
        s.table_tail = _rand_bytes(rng, int(rng.integers(1, 5)))
        return "table-unexplained-bytes"
    if r < 0.8:
        real, _ = _read_varint(s.serialise(), 6)
        s.table_len = max(0, real + int(_choice(rng, (-1, 1, -4, 4, 1000, -1000))))
        return "table-length-lie"
    s.table_len = _big_value(rng) if rng.random() < 0.7 else 16 * 2**20 + 1
    return "table-length-big"


def _h_header_crc(s, rng, ctx):
    s.header_crc = int(rng.integers(2**32))
    return "header-crc-lie"


def _h_entries(s, rng, ctx):
    if not s.entries:
        return "entries-none"
    r = rng.random()
    i = int(rng.integers(len(s.entries)))
    if r < 0.3:
        del s.entries[i]
        return "entries-drop"
    if r < 0.5:
        s.entries.insert(i, replace(s.entries[i], dims=list(s.entries[i].dims)))
        return "entries-duplicate"
    if r < 0.7:
        j = int(rng.integers(len(s.entries)))
        s.entries[i], s.entries[j] = s.entries[j], s.entries[i]
        return "entries-swap"
    if r < 0.85:
        j = int(rng.integers(len(s.entries)))
        if s.entries[j].payload is not None and s.entries[i].payload is not None:
            s.entries[i].payload = s.entries[j].payload  # another tensor's payload, CRC made valid
        return "entries-payload-swap"
    other = parse(_choice(rng, ctx)).entries  # an entry of another stream
    s.entries.insert(i, _choice(rng, other) if other else s.entries[i])
    return "entries-foreign"


def _h_trailer(s, rng, ctx):
    if rng.random() < 0.6:
        s.trailer = _rand_bytes(rng, int(rng.integers(1, 9))) if rng.random() < 0.5 else b"\x00"
        return "trailing-bytes"
    with_payload = [e for e in s.entries if e.payload]
    if not with_payload:
        return "trailer-none"
    e = with_payload[-1]
    e.length = len(e.payload)
    e.payload = e.payload[: int(rng.integers(len(e.payload)))]  # the stream ends before the last payload
    e.crc = zlib.crc32(e.payload)
    return "stream-short"


_HEADER_MUTATIONS: tuple[tuple[Callable, float], ...] = (
    (_h_magic, 0.2), (_h_version, 0.3), (_h_flags, 0.8), (_h_fingerprint, 0.8), (_h_count, 0.8),
    (_h_name, 1.0), (_h_dtype, 1.0), (_h_rank, 1.0), (_h_dims, 2.0), (_h_mode, 2.0), (_h_step, 1.0),
    (_h_tools, 0.8), (_h_length, 1.0), (_h_crc, 0.5), (_h_table, 0.8), (_h_header_crc, 0.1),
    (_h_entries, 1.0), (_h_trailer, 0.5), (_h_bomb, 0.1),
)
_H_FUNCS = [f for f, _ in _HEADER_MUTATIONS]
_H_P = np.array([w for _, w in _HEADER_MUTATIONS]) / sum(w for _, w in _HEADER_MUTATIONS)


def mutate_header(s: RawStream, rng: np.random.Generator, ctx: list[bytes]) -> str:
    labels = []
    for _ in range(1 + min(int(rng.geometric(0.6)) - 1, 2)):
        f = _H_FUNCS[int(rng.choice(len(_H_FUNCS), p=_H_P))]
        labels.append(f(s, rng, ctx))
    return labels[0] if len(labels) == 1 else "multi"


# -- payload mutations ----------------------------------------------------------------------------


def _f32(x: float) -> bytes:
    """``x`` as little-endian float32 bytes (beyond the float32 range: infinity)."""
    with np.errstate(over="ignore"):
        return struct.pack("<f", float(np.float32(x)))


def _plain_fields(mode: int, plain: bytes):
    """(k, rest) of a sparse / ternary plain payload, or None if it does not parse."""
    try:
        k, pos = _read_varint(plain, 0)
    except IndexError:
        return None
    return k, pos


def structured_plain(mode: int, plain: bytes, n: int, rng: np.random.Generator) -> tuple[str, bytes]:
    """A field-aware edit of a plain payload of a float mode (or raw)."""
    b = bytearray(plain)
    if mode == bs.MODE_INT8 and len(b) >= 4:
        r = rng.random()
        if r < 0.6:
            b[0:4] = _f32(_choice(rng, _FLOATS32))
            return "int8-scale", bytes(b)
        if len(b) > 4:
            b[4 + int(rng.integers(len(b) - 4))] = 0x80
        return "int8-level-128", bytes(b)
    if mode == bs.MODE_F16:
        if len(b) >= 2:
            i = 2 * int(rng.integers(len(b) // 2))
            b[i : i + 2] = _choice(rng, (b"\x00\x7c", b"\x00\xfc", b"\x01\x7e", b"\xff\x7b", b"\x00\x80"))
        return "f16-special", bytes(b)
    if mode in (bs.MODE_SPARSE, bs.MODE_TERNARY):
        parsed = _plain_fields(mode, plain)
        if parsed is None:
            return "plain-unparsed", plain
        k, pos = parsed
        r = rng.random()
        if r < 0.3:
            new_k = _choice(rng, (0, 1, k + 1, max(k - 1, 0), n, n + 1, 2**31, 2**63))
            head = varint(int(new_k)) if rng.random() < 0.8 else _nonminimal(k, rng)
            return "k", bytes(head) + plain[pos:]
        if mode == bs.MODE_SPARSE:
            if r < 0.55 and k:
                values_at = len(plain) - 4 * k
                j = values_at + 4 * int(rng.integers(k))
                b[j : j + 4] = _f32(_choice(rng, _FLOATS32))
                return "sparse-value", bytes(b)
            if r < 0.8:
                gaps = _choice(rng, (varint(n), varint(n - 1), varint(2**63), b"\x80\x00", b"\xff" * 9 + b"\x7f",
                                     varint(2**62) * 4))
                j = pos + int(rng.integers(max(len(plain) - 4 * k - pos, 0) + 1))
                b[j:j] = gaps
                return "sparse-gap", bytes(b)
            # k = n: every position (the worst case of the layout), random values
            vals = rng.laplace(size=n).astype("<f4").tobytes() if rng.random() < 0.5 else bytes(4 * n)
            return "sparse-full", varint(n) + bytes(n) + vals
        # ternary: u8 b, f32 mu, Golomb code, sign bits
        if len(b) < pos + 5:
            return "plain-unparsed", plain
        if r < 0.45:
            b[pos] = _choice(rng, (0, 1, 30, 31, 32, 33, 64, 255))
            return "ternary-b", bytes(b)
        if r < 0.65:
            b[pos + 1 : pos + 5] = _f32(_choice(rng, _FLOATS32))
            return "ternary-mu", bytes(b)
        if r < 0.85:
            code_end = len(b) - (k + 7) // 8
            fill = _choice(rng, (b"\xff", b"\x00", b"\x80", b"\x7f"))
            b[pos + 5 : code_end] = fill * max(code_end - pos - 5, 0) + (fill * int(rng.integers(0, 4)))
            return "ternary-code", bytes(b)
        if k % 8 and len(b):
            b[-1] |= 1
        return "ternary-sign-padding", bytes(b)
    # raw: bool bytes 2..255, NaN / inf floats
    if len(b):
        b[int(rng.integers(len(b)))] = _choice(rng, (2, 0x7F, 0x80, 0xFF))
    return "raw-byte", bytes(b)


def crafted_levels(e: RawEntry, rng: np.random.Generator) -> tuple[str, bytes] | None:
    """A coded payload of crafted levels (huge, out of the dtype's range, overflowing the step)."""
    n = _numel(e.dims)
    if not 0 < n <= 1 << 15:
        return None
    levels = np.zeros(n, np.int64)
    k = int(_choice(rng, (0, 7, 8, 15, 16, 31, 32, 40, 61, 62)))
    hot = rng.random(n) < 0.3
    levels[hot] = rng.integers(-(2**k), 2**k + 1, int(hot.sum())) if k < 62 else 2**62
    if rng.random() < 0.3:
        levels[int(rng.integers(n))] = _choice(
            rng, (2**62, -(2**62), 2**62 - 1, 300, -1, 2, 70000, 2**31, -(2**31) - 1))
    shape = tuple(d if isinstance(d, int) else 1 for d in e.dims)
    return f"levels-2^{k}", encode_levels(levels, _cols(shape, n), int(rng.integers(4))).tobytes()


def _zstd_lie(plain: bytes, rng: np.random.Generator, e: RawEntry) -> tuple[str, bytes]:
    """A zstd frame that misrepresents itself."""
    def frame_declaring(size: int, content: bytes, fhd: int = 0xE0) -> bytes:
        block = (1 | (len(content) << 3)).to_bytes(3, "little")
        return b"\x28\xb5\x2f\xfd" + bytes([fhd]) + struct.pack("<Q", size) + block + content

    n = len(plain)
    op = _choice(rng, ("declare-other", "declare-huge", "short-content", "long-content", "no-size", "two-frames",
                       "trailing-junk", "skippable", "checksum", "dictionary", "window", "rle-bomb", "corrupt-block"))
    if op == "declare-other":
        return op, frame_declaring(max(n + int(_choice(rng, (-1, 1, 16, -16, 4096))), 0), plain)
    if op == "declare-huge":
        return op, frame_declaring(int(_choice(rng, (2**31, 2**32, 2**40, 2**63 - 1, 2**64 - 1))), plain[: 1 << 12])
    if op == "short-content":
        return op, frame_declaring(n, plain[: n // 2])
    if op == "long-content":
        return op, frame_declaring(n, plain + _rand_bytes(rng, int(rng.integers(1, 64))))
    if op == "no-size":
        return op, _zstd_frame(plain, rng, write_content_size=False)
    if op == "two-frames":
        return op, _zstd_frame(plain, rng) + _zstd_frame(plain[: n // 2], rng)
    if op == "trailing-junk":
        return op, _zstd_frame(plain, rng) + _rand_bytes(rng, int(rng.integers(1, 9)))
    if op == "skippable":
        skip = struct.pack("<II", 0x184D2A50 + int(rng.integers(16)), 4) + b"junk"
        return op, skip + _zstd_frame(plain, rng) if rng.random() < 0.5 else _zstd_frame(plain, rng) + skip
    if op == "checksum":
        f = bytearray(_zstd_frame(plain, rng, write_checksum=True))
        if rng.random() < 0.7:
            f[-1] ^= 0xFF
        return op, bytes(f)
    if op == "dictionary":
        # FHD: content size 8 bytes, single segment, dictionary id flag 1 (1 byte)
        return op, b"\x28\xb5\x2f\xfd" + bytes([0xE1, 7]) + struct.pack("<Q", n) + \
            (1 | (n << 3)).to_bytes(3, "little") + plain
    if op == "window":
        # not single segment: a window descriptor asking for a huge window
        return op, b"\x28\xb5\x2f\xfd" + bytes([0xC0, 0xF8]) + struct.pack("<Q", n) + \
            (1 | (n << 3)).to_bytes(3, "little") + plain
    if op == "rle-bomb":
        # the largest size the shape allows, as RLE blocks of one byte (a legitimate-looking bomb)
        size, _ = bs.plain_payload_size(e.mode, _dtype_of(e.dtype), _numel(e.dims)) if e.mode in bs.ZSTD_MODES \
            else (n, True)
        size = min(size, 1 << 24)
        out = bytearray(b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + struct.pack("<Q", size))
        left = size
        byte = _choice(rng, (b"\x00", b"\xff", b"\x3c"))
        while left > 0 or not out[13:]:
            chunk = min(left, 1 << 17)
            left -= chunk
            out += (int(left == 0) | (1 << 1) | (chunk << 3)).to_bytes(3, "little") + byte
        return op, bytes(out)
    f = bytearray(_zstd_frame(plain, rng))
    if len(f) > 14:
        for _ in range(int(rng.integers(1, 4))):
            f[14 + int(rng.integers(len(f) - 14))] ^= 1 << int(rng.integers(8))
    return "corrupt-block", bytes(f)


def mutate_payload(s: RawStream, rng: np.random.Generator, ctx: list[bytes]) -> str:
    with_payload = [e for e in s.entries if e.payload is not None]
    if not with_payload:
        return mutate_header(s, rng, ctx)  # nothing to mutate: counted as a header mutation below
    e = _choice(rng, with_payload)
    other = _choice(rng, [x.payload for x in with_payload]) or b""
    framed = s.zstd and e.mode in bs.ZSTD_MODES
    r = rng.random()
    if framed:
        try:
            plain = zstandard.ZstdDecompressor().decompress(e.payload)
        except zstandard.ZstdError:
            plain = b""
        if r < 0.35:
            sub, plain2 = structured_plain(e.mode, plain, _numel(e.dims), rng)
            e.payload = _zstd_frame(plain2, rng)
            return "zstd-plain-" + sub
        if r < 0.55:
            op, plain2 = generic_bytes(plain, rng, other)
            e.payload = _zstd_frame(plain2, rng)
            return "zstd-plain-" + op
        if r < 0.8:
            op, e.payload = _zstd_lie(plain, rng, e)
            return "zstd-" + op
        op, e.payload = generic_bytes(e.payload, rng, other)
        return "zstd-frame-" + op
    if e.mode in (bs.MODE_QUANT, bs.MODE_INT) and r < 0.35:
        crafted = crafted_levels(e, rng)
        if crafted is not None:
            sub, e.payload = crafted
            if rng.random() < 0.2 and e.tools is not None:
                e.tools = int(rng.integers(4))
            return "coded-" + sub
    if e.mode in (bs.MODE_RAW, *bs.FLOAT_MODES) and r < 0.5:
        sub, e.payload = structured_plain(e.mode, e.payload, _numel(e.dims), rng)
        return "plain-" + sub
    op, e.payload = generic_bytes(e.payload, rng, other)
    return ("coded-" if e.mode in (bs.MODE_QUANT, bs.MODE_INT) else "plain-") + op


def mutate(seed_index: int, corpus: list[Seed], rng: np.random.Generator) -> tuple[str, str, bytes]:
    """``(kind, sub-kind, input)``: one mutation of a random corpus stream."""
    src = corpus[seed_index]
    data = [c.data for c in corpus]
    r = rng.random()
    if r < 0.3:
        op, out = generic_bytes(src.data, rng, _choice(rng, data), replace_all=0.03)
        return "bytes", op, out[:MAX_INPUT]
    s = parse(src.data)
    if r < 0.65:
        kind, sub = "header", mutate_header(s, rng, data)
    else:
        kind, sub = "payload", mutate_payload(s, rng, data)
        if rng.random() < 0.1:  # sometimes a header field lies as well
            mutate_header(s, rng, data)
            sub += "+header"
    return kind, sub, s.serialise()[:MAX_INPUT]


def make_input(seed: int, index: int, corpus: list[Seed]) -> tuple[int, str, str, bytes]:
    """``(corpus index, kind, sub-kind, input)`` of input number ``index`` of campaign ``seed``."""
    rng = np.random.default_rng([seed, index])
    c = int(rng.integers(len(corpus)))
    kind, sub, data = mutate(c, corpus, rng)
    return c, kind, sub, data


# ---------------------------------------------------------------------------------------------------
# Running the targets and classifying
# ---------------------------------------------------------------------------------------------------


class _Timeout(BaseException):
    """Raised by the watchdog alarm inside a call that runs too long (Python code only)."""


def _on_alarm(signum, frame):
    raise _Timeout


_REASON_SUBS = ((re.compile(r"'[^']*'|\"[^\"]*\""), "'…'"), (re.compile(r"0x[0-9a-f]+"), "0xN"),
                (re.compile(r"-?\d+(\.\d+)?(e[-+]?\d+)?"), "N"), (re.compile(r"\(.*\)"), "(…)"))


def reason_template(message: str) -> str:
    """A FormatError message without its numbers and names (to count distinct rejections)."""
    for pattern, repl in _REASON_SUBS:
        message = pattern.sub(repl, message)
    return message[:120]


@dataclass
class CallResult:
    outcome: str  # the classification: OUTCOMES
    seconds: float  # CPU seconds of the process (all threads)
    value: object = None
    error: str = ""
    trace: str = ""
    completed: str = ""  # how the call ended (a slow call is a HANG but may have completed "ok")
    wall: float = 0.0  # wall-clock seconds


def _call(fn: Callable[[], object], allowance: float, alarm: bool) -> CallResult:
    """Run one target. Time is the process's CPU time (all threads), so a loaded machine cannot
    turn a slow call into a HANG; a call over ``allowance`` CPU seconds is one."""
    t0, c0 = time.perf_counter(), time.process_time()
    if alarm:
        signal.setitimer(signal.ITIMER_PROF, 4 * allowance)
    try:
        value = fn()
        res = CallResult("ok", 0.0, value)
    except FormatError as exc:
        res = CallResult(type(exc).__name__, 0.0, error=str(exc))
    except _Timeout:
        res = CallResult("HANG", 0.0, error="interrupted by the watchdog alarm")
    except Exception as exc:  # noqa: BLE001 - anything but FormatError is what we hunt
        res = CallResult("CRASH", 0.0, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc())
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_PROF, 0)
    res.seconds = time.process_time() - c0
    res.wall = time.perf_counter() - t0
    res.completed = res.outcome
    if res.outcome not in ("CRASH", "HANG") and res.seconds > allowance:
        res.error = f"{res.seconds:.2f} CPU s, allowed {allowance:.2f} (outcome {res.outcome}: {res.error})"
        res.outcome = "HANG"
    return res


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _consistency(data: bytes, results: dict[str, list[CallResult]], expect: Mapping[str, np.ndarray]) -> str | None:
    """Why the calls that completed disagree, or None (slow calls count as completed; a call the
    watchdog interrupted, or a crash, is not compared)."""
    dec, ins, exp = results["decode"][0], results["inspect"][0], results["decode_expect"][0]
    if any(r.completed in ("HANG", "CRASH") for rs in results.values() for r in rs):
        return None
    if dec.completed == "ok":
        out = dec.value
        if ins.completed != "ok":
            return "decode succeeded where inspect failed"
        info = ins.value
        if [t.name for t in info.tensors] != list(out):
            return "decoded names differ from the table"
        for t in info.tensors:
            arr = out[t.name]
            if arr.shape != t.shape or arr.dtype != t.dtype.newbyteorder("="):
                return f"tensor {t.name!r} decoded as {arr.dtype}{arr.shape}, table says {t.dtype}{t.shape}"
            if t.mode in _FINITE_MODES and arr.dtype.kind == "f" and not np.isfinite(arr).all():
                return f"tensor {t.name!r} of mode {t.mode_name} decoded to non-finite values"
        for r in results["decode_tensor"]:
            if r.completed != "ok":
                return f"decode_tensor failed ({r.error}) where decode succeeded"
            name, arr = r.value
            if not _same(arr, out[name]):
                return f"decode_tensor({name!r}) differs from decode()"
        matches = [(t.name, t.shape, t.dtype.newbyteorder("=")) for t in info.tensors]
        schema = [(k, tuple(v.shape), v.dtype) for k, v in expect.items()]
        if sorted(matches, key=lambda x: x[0]) == sorted(schema, key=lambda x: x[0]) and exp.completed != "ok":
            return f"decode(expect=) refused a stream of exactly that schema ({exp.error})"
    if exp.completed == "ok":
        if dec.completed != "ok":
            return f"decode(expect=) succeeded where decode failed ({dec.error})"
        if list(exp.value) != list(dec.value) or not all(_same(exp.value[k], dec.value[k]) for k in dec.value):
            return "decode(expect=) differs from decode()"
        if set(exp.value) != set(expect) or any(
            exp.value[k].shape != expect[k].shape or exp.value[k].dtype != expect[k].dtype for k in expect
        ):
            return "decode(expect=) returned tensors outside the schema"
    return None


def _proc_status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise OSError(f"{key} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _proc_status_mb("VmHWM:")
    except OSError:
        return False
    return True


#: A stream whose table lets decode() allocate this much is measured (peak RSS around its decode()).
HEAVY_BYTES = 32 << 20


def _table(data: bytes):
    """The stream's table (:func:`nnc_fl.inspect`), or ``None`` where there is none to read."""
    try:
        return nnc_fl.inspect(data)
    except FormatError:
        return None


def _claims(data: bytes, info=None) -> tuple[int, int]:
    """``(claim, zstd plain bytes)``: the most memory the stream lets one call allocate by the
    decoder's own estimate (:func:`nnc_fl.api.decoding_memory`: outputs and working arrays, zstd
    plain buffers included, of all tensors for decode(), of one for decode_tensor, within the default
    budget), and the plain size its table allows its zstd payloads. ``(0, 0)`` without a table
    (``info``: the table, if already read)."""
    info = _table(data) if info is None else info
    if info is None:
        return 0, 0
    plain = sum(bs.plain_payload_size(t.mode, t.dtype, t.numel)[0] for t in info.tensors if t.zstd)
    try:
        outputs, working = nnc_fl.api.decoding_memory(data, info.tensors)
    except FormatError:  # a zstd frame header every call refuses up front
        return 0, plain
    budget = nnc_fl.DEFAULT_LIMITS.max_decode_bytes
    claims = [outputs + max(working, default=0)]
    claims += [t.numel * t.dtype.itemsize + w for t, w in zip(info.tensors, working, strict=True)]
    return max((c for c in claims if c <= budget), default=0), plain


#: The slowest decoding rate that is not a hang (elements per CPU second; the decoders run at
#: 20-100 M/s): a call may take ``hang_limit`` plus the elements it is allowed to produce at this
#: rate. A 600-byte stream may legitimately declare 47 M elements within the default memory budget
#: and take a second or two to decode them; a call that spends time on anything else is a HANG.
MIN_RATE = 5e6


def _allowances(info, hang_limit: float, min_rate: float) -> tuple[float, dict[str, float]]:
    """CPU seconds allowed to ``decode`` and to each ``decode_tensor``, from the elements the
    stream's table ``info`` declares (up to what the default memory budget lets one call produce)."""
    if info is None:
        return hang_limit, {}
    cap = nnc_fl.DEFAULT_LIMITS.max_decode_bytes
    each = {t.name: hang_limit + min(t.numel, cap) / min_rate for t in info.tensors}
    return hang_limit + min(sum(t.numel for t in info.tensors), cap) / min_rate, each


def run_targets(data: bytes, expect: Mapping[str, np.ndarray], hang_limit: float, alarm: bool,
                measure: bool = False, min_rate: float = MIN_RATE, reference: Mapping | None = None):
    """Every target on ``data``: ``{call: [CallResult]}``, a mismatch reason (or None) and, with
    ``measure`` for a stream that may need over :data:`HEAVY_BYTES`, ``(the largest peak RSS growth
    of one call in bytes, the largest allocation the table claims for one call)``. A call may spend
    ``hang_limit`` CPU seconds plus its declared elements at ``min_rate``.

    Memory is measured per call (peak RSS during the call over the RSS at its start), as the budget
    applies per call: summed over a stream's five calls, memory the allocator keeps after one call
    (freed, not returned) showed up as the next call's growth (seen: 1,075 MB over the calls of a
    stream whose decode() alone peaks at its 728 MB claim)."""
    results: dict[str, list[CallResult]] = {}
    info = _table(data)
    claim, plain = _claims(data, info) if measure else (0, 0)
    whole, each = _allowances(info, hang_limit, min_rate)
    heavy = claim + plain >= HEAVY_BYTES and _reset_peak_rss()
    growth = [0.0]

    def call(fn, allowance):
        base = _proc_status_mb("VmRSS:") if heavy and _reset_peak_rss() else None
        res = _call(fn, allowance, alarm)
        if base is not None:
            growth[0] = max(growth[0], _proc_status_mb("VmHWM:") - base)
        return res

    results["decode"] = [call(lambda: nnc_fl.decode(data, temporal_reference=reference), whole)]
    results["fingerprint"] = [_call(lambda: nnc_fl.read_fingerprint(data), hang_limit, alarm)]

    def _inspect():
        info = nnc_fl.inspect(data)
        str(info)
        info.as_rows()
        return info

    ins = _call(_inspect, hang_limit, alarm)
    results["inspect"] = [ins]
    results["decode_tensor"] = []
    if ins.completed == "ok":
        for t in ins.value.tensors:
            results["decode_tensor"].append(call(
                lambda name=t.name: (name, nnc_fl.decode_tensor(data, name, temporal_reference=reference)),
                each.get(t.name, hang_limit)))
    results["decode_expect"] = [
        call(lambda: nnc_fl.decode(data, expect=expect, temporal_reference=reference), hang_limit)
    ]
    memory = (int(growth[0] * (1 << 20)), claim) if heavy else None
    return results, _consistency(data, results, expect), memory


# ---------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------


def _rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@dataclass
class Stats:
    """What a run (or a part of it) found; :meth:`merge` adds another part."""

    inputs: int = 0
    busy_s: float = 0.0
    outcomes: dict = field(default_factory=lambda: defaultdict(Counter))  # kind -> decode() outcome counts
    calls: dict = field(default_factory=lambda: defaultdict(Counter))  # call -> outcome counts
    subkinds: dict = field(default_factory=lambda: defaultdict(Counter))  # kind:sub -> decode() outcomes
    reasons: Counter = field(default_factory=Counter)  # FormatError templates, all calls
    anomalies: Counter = field(default_factory=Counter)  # "CRASH|HANG|MISMATCH|OVER_BUDGET kind:sub" -> inputs
    crash_count: int = 0
    hang_count: int = 0
    mismatch_count: int = 0
    crashes: list = field(default_factory=list)
    hangs: list = field(default_factory=list)
    mismatches: list = field(default_factory=list)
    slowest: list = field(default_factory=list)  # heaps of (key, index, record)
    slowest_per_byte: list = field(default_factory=list)
    slowest_per_byte_1k: list = field(default_factory=list)
    rss_jumps: list = field(default_factory=list)
    peak_rss_kb: int = 0
    input_bytes: int = 0
    measured: int = 0  # heavy streams whose decode() peak RSS was measured
    memory: list = field(default_factory=list)  # largest peak RSS growth of decode()
    memory_over_claim: list = field(default_factory=list)  # growth / decoding_memory, where above 1
    over_budget_count: int = 0
    over_budget: list = field(default_factory=list)

    def merge(self, other: Stats) -> None:
        self.inputs += other.inputs
        self.busy_s += other.busy_s
        self.input_bytes += other.input_bytes
        for mine, theirs in ((self.outcomes, other.outcomes), (self.calls, other.calls),
                             (self.subkinds, other.subkinds)):
            for k, c in theirs.items():
                mine[k].update(c)
        self.reasons.update(other.reasons)
        self.anomalies.update(other.anomalies)
        self.crash_count += other.crash_count
        self.hang_count += other.hang_count
        self.mismatch_count += other.mismatch_count
        self.measured += other.measured
        self.over_budget_count += other.over_budget_count
        for name in ("crashes", "hangs", "mismatches", "over_budget"):
            for rec in getattr(other, name):
                _keep_record(getattr(self, name), rec)
        for name in ("slowest", "slowest_per_byte", "slowest_per_byte_1k", "rss_jumps", "memory",
                     "memory_over_claim"):
            for item in getattr(other, name):
                _push(getattr(self, name), item)
        self.peak_rss_kb = max(self.peak_rss_kb, other.peak_rss_kb)

    def to_json(self) -> dict:
        def top(heap):
            return [rec for _, _, rec in sorted(heap, key=lambda x: (-x[0], x[1]))]

        return {
            "inputs": self.inputs,
            "input_bytes": self.input_bytes,
            "outcomes": {k: dict(v) for k, v in sorted(self.outcomes.items())},
            "calls": {k: dict(self.calls[k]) for k in CALLS if k in self.calls},
            "subkinds": {k: dict(v) for k, v in sorted(self.subkinds.items())},
            "reasons": dict(self.reasons.most_common(150)),
            "distinct_reasons": len(self.reasons),
            "anomalies_by_mutation": dict(self.anomalies.most_common()),
            "crash_count": self.crash_count,
            "other_exceptions": sum(c.get("CRASH", 0) for c in self.calls.values()),
            "hang_count": self.hang_count,
            "mismatch_count": self.mismatch_count,
            "crashes": self.crashes,
            "hangs": self.hangs,
            "mismatches": self.mismatches,
            "slowest": top(self.slowest),
            "slowest_per_byte": top(self.slowest_per_byte),
            "slowest_per_byte_min_1k": top(self.slowest_per_byte_1k),
            "largest_rss_jumps": top(self.rss_jumps),
            "heavy_streams_measured": self.measured,
            "largest_peak_rss_growth": top(self.memory),
            "peak_rss_growth_over_claim": top(self.memory_over_claim),
            "over_budget_count": self.over_budget_count,
            "over_budget": self.over_budget,
            "peak_rss_mb": round(self.peak_rss_kb / 1024, 1),
        }


def _push(heap: list, item: tuple) -> None:
    if len(heap) < _KEEP:
        heapq.heappush(heap, item)
    elif item[0] > heap[0][0]:
        heapq.heapreplace(heap, item)


def _keep_record(records: list, rec: dict) -> None:
    """Keep the first record of each signature, up to a bound."""
    if len(records) < _KEEP_RECORDS and all(r["signature"] != rec["signature"] for r in records):
        records.append(rec)


def _signature(trace: str, error: str) -> str:
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    where = f"{os.path.basename(frames[-1][0])}:{frames[-1][1]}" if frames else ""
    return f"{error.split(':')[0]}@{where}"


def _input_record(index: int, kind: str, sub: str, seed_name: str, data: bytes, **extra) -> dict:
    rec = {"index": index, "kind": kind, "mutation": f"{kind}:{sub}", "seed_stream": seed_name, "bytes": len(data)}
    rec.update(extra)
    rec["input_hex"] = data.hex() if len(data) <= 65536 else data[:65536].hex() + "…"
    return rec


class Fuzzer:
    """The core loop: make input ``i``, run every target, classify, account. In-process."""

    def __init__(self, corpus: list[Seed], seed: int, hang_limit: float = 2.0, *, alarm: bool = False,
                 measure: bool = True, min_rate: float = MIN_RATE):
        """``alarm``: interrupt Python code that runs 4x its allowance of CPU time with SIGPROF (main thread only;
        the campaign's workers do); ``measure``: the peak RSS of decode() on heavy streams."""
        self.corpus, self.seed, self.hang_limit, self.min_rate = corpus, seed, hang_limit, min_rate
        self.expects = [c.expect() for c in corpus]
        self.alarm = alarm and threading.current_thread() is threading.main_thread()
        if self.alarm:
            signal.signal(signal.SIGPROF, _on_alarm)
        self.measure = measure and _reset_peak_rss()
        self.memory_budget = nnc_fl.DEFAULT_LIMITS.max_decode_bytes
        self.stats = Stats()

    def warm_up(self) -> None:
        """Compile / load every kernel and import zstandard, so no input pays for it (a mutated
        tools byte can send a stream to the row-reference or DQ decoder the corpus does not use:
        loading that kernel from numba's cache cost one run's only slow call, 3 CPU s)."""
        for c, expect in zip(self.corpus, self.expects, strict=True):
            run_targets(c.data, expect, 1e9, False, reference=c.reference)
        x = {"w": np.outer(np.arange(1, 9), np.arange(-20, 20)).astype(np.float32) * 1e-3}
        for options in ({"row_refs": True}, {"row_refs": True, "dq": True}, {"dq": True}, {"dq": 8},
                        {"row_refs": True, "dq": 8}, {"step": 1e-5}):
            run_targets(nnc_fl.encode(x, **{"step": 1e-3, **options}), x, 1e9, False)
        for i in range(200):
            _, _, _, data = make_input(self.seed ^ 0x5EED, i, self.corpus)
            if len(data) < 2048 and sum(_claims(data)) < HEAVY_BYTES:
                run_targets(data, self.expects[0], 1e9, False)

    def one(self, index: int, generated: Callable[[], None] | None = None) -> None:
        c, kind, sub, data = make_input(self.seed, index, self.corpus)
        if generated is not None:
            generated()
        st = self.stats
        rss0 = _rss_kb()
        t0 = time.perf_counter()
        results, mismatch, memory = run_targets(data, self.expects[c], self.hang_limit, self.alarm, self.measure,
                                                self.min_rate, self.corpus[c].reference)
        seconds = time.perf_counter() - t0
        st.inputs += 1
        st.busy_s += seconds
        st.input_bytes += len(data)
        st.outcomes[kind][results["decode"][0].outcome] += 1
        st.subkinds[f"{kind}:{sub}"][results["decode"][0].outcome] += 1
        crashed = hung = False
        worst = max((r for rs in results.values() for r in rs), key=lambda r: r.seconds)
        worst_call = next(k for k, rs in results.items() if worst in rs)
        seed_name = self.corpus[c].name
        for call, rs in results.items():
            for r in rs:
                st.calls[call][r.outcome] += 1
                if r.outcome in ("FormatError", "LimitError", "SchemaError"):
                    st.reasons[f"{r.outcome}: {reason_template(r.error)}"] += 1
                elif r.outcome == "CRASH":
                    crashed = True
                    _keep_record(st.crashes, _input_record(
                        index, kind, sub, seed_name, data, call=call, error=r.error, traceback=r.trace,
                        signature=_signature(r.trace, r.error)))
                elif r.outcome == "HANG":
                    hung = True
                    _keep_record(st.hangs, _input_record(
                        index, kind, sub, seed_name, data, call=call, seconds=round(r.seconds, 3), error=r.error,
                        signature=f"{call}:{kind}:{sub}"))
        st.crash_count += crashed
        st.hang_count += hung
        for flag, name in ((crashed, "CRASH"), (hung, "HANG"), (mismatch is not None, "MISMATCH")):
            if flag:
                st.anomalies[f"{name} {kind}:{sub}"] += 1
        if mismatch is not None:
            st.mismatch_count += 1
            st.calls["consistency"]["MISMATCH"] += 1
            _keep_record(st.mismatches, _input_record(index, kind, sub, seed_name, data, error=mismatch,
                                                      signature=reason_template(mismatch)))
        n = max(len(data), 1)
        lean = {"index": index, "mutation": f"{kind}:{sub}", "bytes": len(data), "call": worst_call,
                "seconds": round(worst.seconds, 6), "wall_s": round(worst.wall, 6),
                "seconds_per_byte": worst.seconds / n,
                "all_calls_s": round(seconds, 6), "outcome": worst.outcome}
        for heap, key in ((st.slowest, worst.seconds), (st.slowest_per_byte, worst.seconds / n)):
            if len(heap) < _KEEP or key > heap[0][0]:
                _push(heap, (key, index, {**lean, "input_hex": data.hex() if len(data) <= 8192 else None}))
        if len(data) >= 1024:
            _push(st.slowest_per_byte_1k, (worst.seconds / n, index, lean))
        if memory is not None:
            growth, claim = memory
            mem = {**lean, "decode_outcome": results["decode"][0].outcome, "claim_mb": round(claim / 2**20, 1),
                   "peak_growth_mb": round(growth / 2**20, 1), "input_hex": data.hex() if len(data) <= 8192 else None}
            st.measured += 1
            _push(st.memory, (growth, index, mem))
            if claim and growth > claim + (16 << 20):  # (claim 0: every call was refused up front)
                _push(st.memory_over_claim, (growth / claim, index, mem))
            if growth > self.memory_budget:
                st.over_budget_count += 1
                st.anomalies[f"OVER_BUDGET {kind}:{sub}"] += 1
                _keep_record(st.over_budget, {**mem, "signature": f"{kind}:{sub}:{results['decode'][0].outcome}"})
        rss1 = _rss_kb()
        if rss1 > rss0:
            _push(st.rss_jumps, (rss1 - rss0, index, {**lean, "rss_growth_mb": round((rss1 - rss0) / 1024, 1)}))
        st.peak_rss_kb = max(st.peak_rss_kb, rss1)

    def run(self, indices: Iterable[int], on_progress: Callable[[int], None] | None = None) -> Stats:
        for index in indices:
            self.one(index)
            if on_progress is not None:
                on_progress(index)
        self.stats.peak_rss_kb = max(self.stats.peak_rss_kb, _rss_kb())
        return self.stats


# ---------------------------------------------------------------------------------------------------
# Workers (processes) and the campaign
# ---------------------------------------------------------------------------------------------------


def _worker(w, seed, indices, corpus, hang_limit, min_rate, out_q, current, started, flush_every):
    """Run ``indices``; send partial Stats tagged with the last index they cover."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fuzzer = Fuzzer(corpus, seed, hang_limit, alarm=True, min_rate=min_rate)
    fuzzer.warm_up()
    last = time.monotonic()
    done = 0

    def generated():
        started.value = time.time()

    for index in indices:
        current.value = index
        started.value = -time.time()  # negative: making the input (the fuzzer's own code)
        fuzzer.one(index, generated)
        started.value = 0.0
        done += 1
        if done >= flush_every or time.monotonic() - last > 10:
            fuzzer.stats.peak_rss_kb = max(fuzzer.stats.peak_rss_kb, _rss_kb())
            out_q.put(("stats", w, index, fuzzer.stats))
            fuzzer.stats = Stats()
            done, last = 0, time.monotonic()
    fuzzer.stats.peak_rss_kb = max(fuzzer.stats.peak_rss_kb, _rss_kb())
    out_q.put(("done", w, indices[-1] if indices else -1, fuzzer.stats))


def campaign(n: int, workers: int, seed: int, hang_limit: float, kill_after: float, log=print,
             min_rate: float = MIN_RATE) -> dict:
    """Inputs ``0 .. n-1`` of campaign ``seed`` on ``workers`` processes; the JSON report."""
    t_start = time.time()
    corpus = build_corpus()
    log(f"corpus: {len(corpus)} valid streams, {min(len(c.data) for c in corpus)}-"
        f"{max(len(c.data) for c in corpus)} bytes; {n} inputs, {workers} worker(s), seed {seed}", flush=True)
    total = Stats()
    dead: dict[str, list[dict]] = {"CRASH": [], "HANG": []}  # inputs a worker was lost on
    spawn = mp.get_context("spawn")
    out_q = spawn.Queue()
    pending = {w: list(range(w, n, workers)) for w in range(workers)}  # indices not reported yet
    procs: dict[int, tuple] = {}
    restarts = 0
    generator_lost: list[dict] = []

    def start(w: int) -> None:
        current, started = spawn.Value("q", -1, lock=False), spawn.Value("d", 0.0, lock=False)
        p = spawn.Process(target=_worker, args=(w, seed, pending[w], corpus, hang_limit, min_rate, out_q, current,
                                                started, 2000), daemon=True)
        p.start()
        procs[w] = (p, current, started)

    def handle(msg) -> None:
        what, w, last, part = msg
        total.merge(part)
        pending[w] = [i for i in pending[w] if i > last]
        if what == "done" and w in procs:
            procs.pop(w)[0].join()

    def drain() -> None:
        while True:
            try:
                handle(out_q.get(timeout=0.2))
            except queue.Empty:
                return

    def lost(w: int, why: str) -> None:
        """Worker ``w`` died or hung on its current input: record it, skip that input, restart."""
        nonlocal restarts
        p, current, started = procs.pop(w)
        p.join()
        drain()  # what it reported before it was lost counts; the rest is run again
        index = current.value
        if index >= 0 and started.value < 0:  # lost while making the input: a bug of this script
            generator_lost.append({"index": index, "error": why})
            pending[w] = [i for i in pending[w] if i != index]
        elif index >= 0:
            c, kind, sub, data = make_input(seed, index, corpus)
            outcome = "HANG" if "hung" in why else "CRASH"
            dead[outcome].append(_input_record(index, kind, sub, corpus[c].name, data, call="(worker)", error=why,
                                               signature=why))
            total.inputs += 1
            total.outcomes[kind][outcome] += 1
            total.subkinds[f"{kind}:{sub}"][outcome] += 1
            total.anomalies[f"{outcome} {kind}:{sub} (worker lost)"] += 1
            if outcome == "HANG":
                total.hang_count += 1
            else:
                total.crash_count += 1
            pending[w] = [i for i in pending[w] if i != index]
        restarts += 1
        log(f"worker {w}: {why} at input {index}; restarting", flush=True)
        if pending[w]:
            start(w)

    for w in range(workers):
        if pending[w]:
            start(w)
    last_log = time.time()
    while procs:
        with contextlib.suppress(queue.Empty):
            handle(out_q.get(timeout=0.5))
        for w, (p, _, started) in list(procs.items()):
            if not p.is_alive():
                drain()
                if w in procs:  # no "done" message came: it died
                    lost(w, f"worker process died (exit code {p.exitcode})")
            elif started.value and time.time() - abs(started.value) > kill_after:
                p.kill()
                lost(w, f"worker hung > {kill_after:g} s in one input (killed)")
        if time.time() - last_log > 60:
            done = total.inputs
            rate = done / max(time.time() - t_start, 1e-9)
            log(f"[{time.strftime('%H:%M:%S')}] {done}/{n} inputs ({rate:.0f}/s), crashes {total.crash_count}, "
                f"hangs {total.hang_count}, mismatches {total.mismatch_count}, over budget "
                f"{total.over_budget_count}, peak RSS {total.peak_rss_kb / 1024:.0f} MB, "
                f"ETA {(n - done) / max(rate, 1e-9) / 60:.1f} min", flush=True)
            last_log = time.time()
    elapsed = time.time() - t_start
    report = total.to_json()
    report["crashes"] = dead["CRASH"] + report["crashes"]
    report["hangs"] = dead["HANG"] + report["hangs"]
    report.update({
        "n": n, "seed": seed, "workers": workers, "hang_limit_s": hang_limit, "min_rate": min_rate,
        "kill_after_s": kill_after,
        "elapsed_s": round(elapsed, 1), "throughput_inputs_per_s": round(total.inputs / elapsed, 1),
        "worker_restarts": restarts, "lost_while_making_the_input": generator_lost,
        "corpus": [{"name": c.name, "bytes": len(c.data), "tensors": len(c.schema)} for c in corpus],
        "command": " ".join(sys.argv),
    })
    return report


def summary(report: dict) -> str:
    lines = []
    cols = OUTCOMES[:6]
    lines.append(f"{'decode() outcome by kind':<26}" + "".join(f"{c:>13}" for c in cols) + f"{'total':>10}")
    for kind, counts in report["outcomes"].items():
        lines.append(f"{kind:<26}" + "".join(f"{counts.get(c, 0):>13}" for c in cols) + f"{sum(counts.values()):>10}")
    lines.append("")
    cols = OUTCOMES
    lines.append(f"{'calls':<26}" + "".join(f"{c:>13}" for c in cols))
    for call, counts in report["calls"].items():
        lines.append(f"{call:<26}" + "".join(f"{counts.get(c, 0):>13}" for c in cols))
    lines.append("")
    lines.append(f"inputs {report['inputs']}, distinct FormatError reasons {report['distinct_reasons']}, "
                 f"sub-kinds {len(report['subkinds'])}")
    lines.append(f"CRASHES {report['crash_count']}   HANGS {report['hang_count']}   "
                 f"MISMATCHES {report['mismatch_count']}   exceptions other than FormatError "
                 f"{report['other_exceptions']}   decode() over the memory budget {report['over_budget_count']}")
    if report.get("slowest"):
        s = report["slowest"][0]
        lines.append(f"slowest input: {s['seconds']:.4f} s ({s['call']}, {s['bytes']} bytes, {s['mutation']})")
    if report.get("slowest_per_byte"):
        s = report["slowest_per_byte"][0]
        lines.append(f"slowest per byte: {s['seconds_per_byte'] * 1e6:.2f} µs/byte ({s['seconds'] * 1e3:.3f} ms for "
                     f"{s['bytes']} bytes, {s['call']}, {s['mutation']})")
    if report.get("slowest_per_byte_min_1k"):
        s = report["slowest_per_byte_min_1k"][0]
        lines.append(f"slowest per byte (inputs >= 1 KB): {s['seconds_per_byte'] * 1e6:.3f} µs/byte "
                     f"({s['seconds'] * 1e3:.3f} ms for {s['bytes']} bytes, {s['call']}, {s['mutation']})")
    if report.get("largest_peak_rss_growth"):
        m = report["largest_peak_rss_growth"][0]
        lines.append(f"heavy streams measured {report['heavy_streams_measured']}; largest peak RSS growth "
                     f"{m['peak_growth_mb']} MB for {m['bytes']} bytes ({m['mutation']}, claim {m['claim_mb']} MB, "
                     f"{m['seconds']:.2f} s, {m['decode_outcome']})")
    if report.get("peak_rss_growth_over_claim"):
        m = report["peak_rss_growth_over_claim"][0]
        lines.append(f"largest growth / decoding_memory claim: {m['peak_growth_mb']} / {m['claim_mb']} MB "
                     f"({m['mutation']}, {m['bytes']} bytes)")
    lines.append(f"peak RSS of a worker (getrusage, sampled after every input): {report['peak_rss_mb']} MB")
    if "elapsed_s" in report:
        lines.append(f"time {report['elapsed_s']} s, {report['throughput_inputs_per_s']} inputs/s, "
                     f"worker restarts {report['worker_restarts']}")
    for name, count in list(report["anomalies_by_mutation"].items())[:20]:
        lines.append(f"  {count:>7} x {name}")
    for rec in report["crashes"][:10]:
        lines.append(f"  CRASH #{rec['index']} {rec['mutation']} {rec['call']}: {rec['error'][:160]}")
    for rec in report["hangs"][:10]:
        lines.append(f"  HANG #{rec['index']} {rec['mutation']} {rec['call']}: {rec['error'][:160]}")
    for rec in report["mismatches"][:10]:
        lines.append(f"  MISMATCH #{rec['index']} {rec['mutation']}: {rec['error'][:160]}")
    for rec in report["over_budget"][:10]:
        lines.append(f"  OVER BUDGET #{rec['index']} {rec['mutation']}: one call grew the peak RSS by "
                     f"{rec['peak_growth_mb']} MB ({rec['bytes']} bytes, {rec['seconds']:.2f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="number of mutated inputs")
    p.add_argument("--workers", type=int, default=1, help="worker processes (at most the cores you may use)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--hang-limit", type=float, default=2.0,
                   help="CPU seconds a call may take, plus its declared elements at --min-rate")
    p.add_argument("--min-rate", type=float, default=MIN_RATE,
                   help="elements per CPU second below which a decode is a HANG (default %(default).0f)")
    p.add_argument("--kill-after", type=float, default=60.0, help="kill a worker stuck this long in one input (s)")
    p.add_argument("--show", type=int, metavar="I", help="print input I of --seed (kind, hex) and run it")
    args = p.parse_args(argv)
    if args.show is not None:
        corpus = build_corpus()
        c, kind, sub, data = make_input(args.seed, args.show, corpus)
        print(f"input {args.show} (seed {args.seed}): {kind}:{sub} of {corpus[c].name}, {len(data)} bytes")
        print(data.hex())
        results, mismatch, memory = run_targets(data, corpus[c].expect(), args.hang_limit, False, True,
                                                args.min_rate, corpus[c].reference)
        for call, rs in results.items():
            for r in rs:
                print(f"{call:>14}: {r.outcome} {r.seconds * 1e3:.3f} ms CPU ({r.wall * 1e3:.3f} ms wall) "
                      f"{r.error[:200]}")
                if r.trace:
                    print(r.trace)
        print("mismatch:", mismatch)
        if memory is not None:
            print(f"peak RSS growth {memory[0] / 2**20:.1f} MB, decoding_memory claim {memory[1] / 2**20:.1f} MB")
        return 0
    if args.workers < 1 or args.n < 0:
        p.error("--workers must be >= 1 and --n >= 0")
    report = campaign(args.n, args.workers, args.seed, args.hang_limit, args.kill_after, min_rate=args.min_rate)
    print(summary(report))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)
        print(f"report written to {args.out}")
    bad = report["crash_count"] or report["hang_count"] or report["mismatch_count"] or report["over_budget_count"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
