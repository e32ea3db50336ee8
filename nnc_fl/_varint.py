"""numba kernels of the sparse and ternary float modes: LEB128 gaps, scattering kept values.

The callers (:mod:`nnc_fl.payloads`) validate shapes and sizes; these kernels read untrusted bytes
and check every index themselves (the kernels run without bounds checks): a varint never reads past
``end``, a position never reaches ``n``. Each returns a status, ``OK`` (0) or a negative error code.
They write into arrays the caller allocated, so decoding a sparse payload allocates nothing besides
its output (FORMAT.md, "Float modes"; :func:`nnc_fl.api.decoding_memory` counts on that).
"""

from __future__ import annotations

import numpy as np

from ._jit import jit, jit_inline

OK = 0
#: A value runs past the end of the region, or the region ends before ``count`` values.
SHORT = -1
#: A value longer than the caller's ``max_bytes``.
TOO_LONG = -2
#: A value of more than one byte whose last group is zero (not the minimal encoding).
OVERLONG = -3
#: Bytes left after ``count`` values.
EXTRA = -4
#: A position at or past the tensor's ``n`` elements.
PAST_END = -5


@jit_inline
def _varint(buf, pos, end, max_bytes):
    """``(value, next position)`` of the varint at ``pos``, or ``(error code, -1)``."""
    value = 0
    for j in range(max_bytes):
        if pos + j >= end:
            return SHORT, -1
        byte = np.int64(buf[pos + j])
        value |= (byte & 0x7F) << (7 * j)
        if byte < 0x80:
            if byte == 0 and j > 0:
                return OVERLONG, -1
            return value, pos + j + 1
    return TOO_LONG, -1


@jit
def decode_varints(buf, start, end, count, max_bytes, out):
    """``count`` minimal varints of at most ``max_bytes`` (<= 9) bytes filling ``buf[start:end]``
    exactly, into ``out[:count]``."""
    pos = start
    for i in range(count):
        value, pos = _varint(buf, pos, end, max_bytes)
        if pos < 0:
            return value
        out[i] = value
    return OK if pos == end else EXTRA


@jit
def scatter_gaps(buf, start, end, count, max_bytes, n, values, out):
    """Sparse positions: ``count`` varint gaps filling ``buf[start:end]`` exactly (a position is the
    previous one + gap + 1, the first from -1); ``out[position] = values[i]``. ``out`` holds ``n``
    elements, ``values`` at least ``count``."""
    pos = start
    prev = -1
    for i in range(count):
        gap, pos = _varint(buf, pos, end, max_bytes)
        if pos < 0:
            return gap
        if gap >= n - 1 - prev:  # position = prev + 1 + gap >= n, without overflow
            return PAST_END
        prev += 1 + gap
        out[prev] = values[i]
    return OK if pos == end else EXTRA


@jit
def scatter_signed(positions, sign_bytes, plus, minus, out):
    """Ternary values: ``out[positions[i]] = minus`` where sign bit ``i`` (MSB first) is set, else
    ``plus``. ``positions`` are below ``out.size`` and ``sign_bytes`` hold one bit per position (the
    caller checked both)."""
    for i in range(positions.size):
        negative = (sign_bytes[i >> 3] >> (7 - (i & 7))) & 1
        out[positions[i]] = minus if negative else plus


@jit
def finite_max_abs(values):
    """The largest ``|value|`` (0.0 for none), or -1.0 if a value is NaN or infinite."""
    top = 0.0
    for i in range(values.size):
        v = abs(np.float64(values[i]))
        if not v <= 1.7976931348623157e308:  # NaN or inf
            return -1.0
        if v > top:
            top = v
    return top
