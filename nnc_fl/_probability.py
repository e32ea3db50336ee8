"""Adaptive probability models: a two-rate estimator per context.

Each context keeps two estimates of P(bin = 1) on a 16-bit scale, one adapting fast and one slowly
(shift ``fast`` and ``slow``); the coder uses their average on the 15-bit scale, clamped so that
neither symbol gets less than ``PROB_MIN``. The rate pair is chosen per tensor from
:data:`RATE_PAIRS` and signalled in the tensor's tools byte.
"""

import numpy as np

from ._jit import jit
from ._rangecoder import PROB_MIN, PROB_ONE

#: (fast shift, slow shift) pairs selectable per tensor; the index travels in the bitstream, so this
#: table is part of the format (FORMAT.md) and only ever grows.
RATE_PAIRS = np.array([[4, 7], [5, 8], [4, 6], [6, 9]], dtype=np.int64)

_HALF16 = 1 << 15


@jit
def new_contexts(n):
    """``n`` contexts at probability 1/2: an ``int64[n, 2]`` array (fast, slow estimate)."""
    ctx = np.empty((n, 2), np.int64)
    ctx[:, :] = _HALF16
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
    if bit:
        ctx[c, 0] += (65536 - ctx[c, 0]) >> fast
        ctx[c, 1] += (65536 - ctx[c, 1]) >> slow
    else:
        ctx[c, 0] -= ctx[c, 0] >> fast
        ctx[c, 1] -= ctx[c, 1] >> slow
