"""Adaptive probability models: a two-rate estimator per context.

Each context keeps two estimates of P(bin = 1) on a 16-bit scale, one adapting fast and one slowly
(shift ``fast`` and ``slow``); the coder uses their average on the 15-bit scale, clamped so that
neither symbol gets less than ``PROB_MIN``. A fresh context warms up: its n-th update uses a shift of
at most ``floor(log2(n + 2))``, close to a running average, so sparse tensors whose contexts see few
bins still learn quickly (measured: ~2-8 % smaller very sparse deltas, no loss on dense ones). The
rate pair is chosen per tensor from :data:`RATE_PAIRS` and signalled in the tensor's tools byte.
"""

import numpy as np

from ._jit import jit
from ._rangecoder import PROB_MIN, PROB_ONE

#: (fast shift, slow shift) pairs selectable per tensor; the index travels in the bitstream, so this
#: table is part of the format (FORMAT.md) and only ever grows.
RATE_PAIRS = np.array([[3, 5], [2, 5], [3, 7], [4, 7]], dtype=np.int64)

_HALF16 = 1 << 15
#: Warm-up: the n-th update of a context (n = 0, 1, ...) uses shift at most WARMUP_SHIFT[n], about
#: log2(n + 2), so a fresh context learns like a running average before settling on its rates.
WARMUP_BINS = 256
WARMUP_SHIFT = np.array([max(1, int(np.log2(n + 2))) for n in range(WARMUP_BINS)], dtype=np.int64)


@jit
def new_contexts(n):
    """``n`` contexts at probability 1/2: an ``int64[n, 3]`` array (fast, slow estimate, count)."""
    ctx = np.empty((n, 3), np.int64)
    ctx[:, 0] = _HALF16
    ctx[:, 1] = _HALF16
    ctx[:, 2] = 0
    return ctx


@jit
def p_one(ctx, c):
    """The 15-bit probability of a one for context ``c``."""
    p = (ctx[c, 0] + ctx[c, 1]) >> 2
    if p < PROB_MIN:
        return PROB_MIN
    if p > PROB_ONE - PROB_MIN:
        return PROB_ONE - PROB_MIN
    return p


@jit
def update(ctx, c, bit, fast, slow):
    """Move both estimates of context ``c`` towards ``bit``."""
    n = ctx[c, 2]
    if n < WARMUP_BINS:
        ctx[c, 2] = n + 1
        w = WARMUP_SHIFT[n]
        fast = min(fast, w)
        slow = min(slow, w)
    if bit:
        ctx[c, 0] += (65536 - ctx[c, 0]) >> fast
        ctx[c, 1] += (65536 - ctx[c, 1]) >> slow
    else:
        ctx[c, 0] -= ctx[c, 0] >> fast
        ctx[c, 1] -= ctx[c, 1] >> slow
