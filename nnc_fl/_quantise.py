"""Uniform scalar quantisation: levels = round(x / step), reconstruction = level * step.

Rounding is to nearest with ties away from zero, computed in float64, so the reconstruction error
of every element is at most step / 2 before the final cast to the tensor's dtype.
"""

import math

import numpy as np

from ._jit import jit

# quantise status codes
OK = 0
NOT_FINITE = 1
OVERFLOW = 2


@jit
def quantise(x, step, max_level):
    """Quantise flat float ``x``; return (int64 levels, status). ``status`` names the first problem."""
    n = x.size
    levels = np.empty(n, np.int64)
    limit = float(max_level)
    for i in range(n):
        v = np.float64(x[i]) / step
        if not np.isfinite(v):
            return levels, NOT_FINITE if not np.isfinite(np.float64(x[i])) else OVERFLOW
        a = abs(v)
        if not a < limit:
            return levels, OVERFLOW
        f = np.floor(a)
        q = np.int64(f)
        if a - f >= 0.5:
            q += 1
        levels[i] = -q if v < 0 else q
    return levels, OK


@jit
def dequantise(levels, step):
    """``levels * step`` in float64."""
    out = np.empty(levels.size, np.float64)
    for i in range(levels.size):
        out[i] = levels[i] * step
    return out


@jit
def max_magnitude(levels):
    """``max |level|`` of int64 ``levels`` (|level| <= 2**62), 0 if empty, without a temporary array."""
    top = 0
    for i in range(levels.size):
        top = max(top, abs(levels[i]))
    return top


@jit
def sum_squares(x):
    """``sum(x**2)`` of flat ``x`` in float64, in one pass without a temporary array."""
    acc = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        acc += v * v
    return acc


@jit
def on_grid(x, inv_g, limit):
    """Whether every ``x[i] * inv_g`` of flat float ``x`` is an integer of magnitude at most
    ``limit`` (``inv_g`` a power of two, so the product is exact); NaN and Inf are not."""
    for i in range(x.size):
        q = np.float64(x[i]) * inv_g
        if not abs(q) <= limit or q != np.floor(q):
            return False
    return True


@jit
def grid_levels_or(x, inv_g):
    """The bitwise OR of every ``|round(x[i] * inv_g)|`` of flat float ``x`` (on the grid, so the
    lowest set bit is the largest power of two all its levels share); ``-1`` if one is not finite
    or beyond 2**62."""
    acc = 0
    for i in range(x.size):
        a = abs(np.rint(np.float64(x[i]) * inv_g))
        if not a < 4.611686018427388e18:  # 2**62 (NaN fails too)
            return -1
        acc |= np.int64(a)
    return acc


def all_finite(x: np.ndarray) -> bool:
    """Whether every value of float ``x`` is finite, without a temporary array where it can: a
    float64 sum of float16/32 values cannot overflow, so it is finite exactly when they all are."""
    if x.dtype.itemsize < 8:
        return math.isfinite(float(np.add.reduce(x, axis=None, dtype=np.float64)))
    return bool(np.isfinite(x).all())
