"""Encoder search over the probability rate pairs the tools byte signals (bits 0-1).

NNC lets the encoder pick, per tensor, the adaptation rates of its probability estimators by
pseudo-encoding the candidates. Here one pass walks the bins of the chosen levels (or DQ indices)
once and runs the four context sets of :data:`RATE_PAIRS` side by side, adding up each one's
estimated code length (the ``-log2 p`` table of the RD estimate); the caller then codes with the
cheapest. About one plain encoding's work instead of three more.
"""

import numpy as np

from ._dq import N_CONTEXTS_DQ, _next, _sig_base
from ._jit import jit
from ._levels import (
    _BITS,
    N_CONTEXTS,
    _col_update,
    _contexts_of,
    _gt_context,
    _gt_flag,
    _gt_last,
)
from ._probability import RATE_PAIRS, new_contexts, p_one, update


@jit
def _bin_cost(ctxs, c, bit, costs):
    """Add the cost of ``bit`` in context ``c`` to each rate pair's total, then update its model."""
    for r in range(RATE_PAIRS.shape[0]):
        ctx = ctxs[r]
        p = p_one(ctx, c)
        costs[r] += _BITS[(p if bit else 32768 - p) >> 5]
        update(ctx, c, bit, RATE_PAIRS[r, 0], RATE_PAIRS[r, 1])


@jit
def rate_costs(ks, cols, dq, first_state=0):
    """Estimated context-coded bits of ``ks`` with each rate pair (bypass bins excluded: the same
    for all), as coded by :func:`nnc_fl._levels.encode_levels` or, with ``dq``,
    :func:`nnc_fl._dq.encode_indices_dq` (the machine from ``first_state``)."""
    n_ctx = N_CONTEXTS_DQ if dq else N_CONTEXTS
    ctxs = np.empty((RATE_PAIRS.shape[0], n_ctx, 3), np.int64)
    for r in range(RATE_PAIRS.shape[0]):
        ctxs[r] = new_contexts(n_ctx)
    costs = np.zeros(RATE_PAIRS.shape[0])
    colact = np.zeros(cols, np.int64)
    state = first_state
    col = 0
    for i in range(ks.size):
        k = ks[i]
        c_sig, c_sign, g = _contexts_of(ks, i, col, cols, colact)
        if dq:
            c_sig += _sig_base(state)
            state = _next(state, k)
        _col_update(colact, col, k)
        col += 1
        if col == cols:
            col = 0
        sig = 1 if k != 0 else 0
        _bin_cost(ctxs, c_sig, sig, costs)
        if sig == 0:
            continue
        _bin_cost(ctxs, c_sign, 1 if k < 0 else 0, costs)
        m = abs(k)
        j = 1
        while True:
            gt = _gt_flag(m, j)
            _bin_cost(ctxs, _gt_context(j, g), gt, costs)
            if _gt_last(j, gt):
                break
            j += 1
    return costs
