"""Dependent (trellis-coded) quantisation: two quantisers, a 4- or 8-state machine, a Viterbi encoder.

With dependent quantisation (tools bit 2) a tensor's coded integers are quantisation *indices* k.
Quantiser Q0 reconstructs the even levels ``2k``, quantiser Q1 the odd levels and zero,
``2k - sgn(k)``; the reconstruction is ``level * step`` as usual. Which quantiser applies to an
element is the state of a machine driven by the parity of the previous index (:data:`TRANS`), that
starts anew for each tensor and runs through the whole scan. Each quantiser alone has spacing
``2 step``, but the union of the paths through the trellis packs the reconstruction points densely
in the space of sequences, which gains rate at equal distortion (trellis-coded quantisation).

Two machines share the tables, told apart by their state numbers: the 4-state one of VVC and NNC
(states 0-3, start 0; states 0 and 1 use Q0, 2 and 3 Q1) and, with tools bit 7, the 8-state one of
NNC's second edition (states 8-15, start :data:`START_8`; state ``8 + j`` uses Q(j & 1)), whose
denser packing lowers the distortion at a given step by about 2 %.

Indices are binarised and context-coded exactly as levels are (:mod:`nnc_fl._levels`: the left /
upper neighbours and the column activity are those of the indices), except that the significance
flag's context set depends on the state (:data:`SIG_SET`): set 0 where Q0 applies; with 4 states,
set 1 in state 2 and set 2 in state 3; with 8 states, set 1 wherever Q1 applies (contexts
:data:`DQ_SIG_CTX` + 27 (set - 1) + ...), so 126 contexts in all.

The decoder follows the state machine (one table lookup per element). The encoder chooses the
indices by a Viterbi search over the trellis minimising ``(x / step - level)**2 + lam * bits``,
one row (or a stretch of at most :data:`_CHUNK` elements of it) at a time, among the two
reconstruction points of each quantiser nearest the value (so every error is below two steps), with bits estimated
from the adaptive contexts as they stand before that stretch (refreshed every :data:`_REFRESH`
elements), and the neighbour contexts of each survivor path; then codes the chosen indices with
the live contexts before searching the next stretch. The search of a stretch runs
:data:`LOOKAHEAD` elements past its end (into the next row, where upper neighbours not yet chosen
count as 0), so that the stretch's last indices, and the state it hands on, are chosen knowing
the values that follow; only the stretch's own indices are kept.
"""

import numpy as np

from ._jit import jit, jit_inline
from ._levels import (
    _BITS,
    ACT_HIGH,
    BAD_LEVEL,
    GT_FLAGS,
    MAX_LEVEL,
    OK,
    READ_SLACK,
    SHORT_PAYLOAD,
    SIGN_CTX,
    _col_update,
    _contexts_from,
    _contexts_of,
    _eg_bins,
    _eg_follows,
    _eg_prefix,
    _eg_split,
    _gt_context,
    _gt_flag,
    _gt_last,
    _gt_magnitude,
    _sign_class,
    _with_room,
    dec_beyond_flags,
)
from ._probability import RATE_PAIRS, new_contexts, p_one, update
from ._rangecoder import dec_bin, dec_init, enc_bin, enc_bypass, enc_finish, enc_init

#: First state of the 8-state machine (the 4-state one starts at 0).
START_8 = 8
#: Next state by (state, parity of the index): rows 0-3 the 4-state machine, 8-15 the 8-state one
#: (NNC's table plus 8); rows 4-7 are never reached.
TRANS = np.array(
    [[0, 2], [2, 0], [1, 3], [3, 1]]
    + [[0, 0]] * 4
    + [[8, 10], [15, 13], [9, 11], [14, 12], [10, 8], [13, 15], [11, 9], [12, 14]],
    dtype=np.int64,
)
#: The quantiser (0: Q0, 1: Q1) of each state.
QUANTISER = np.array([0, 0, 1, 1] + [0] * 4 + [0, 1] * 4, dtype=np.int64)
#: The significance context set of each state.
SIG_SET = np.array([0, 0, 1, 2] + [0] * 4 + [0, 1] * 4, dtype=np.int64)
#: First significance context of the state-dependent sets 1 and 2 (after the 72 of _levels).
DQ_SIG_CTX = 72
N_CONTEXTS_DQ = DQ_SIG_CTX + 2 * 27
#: Largest index magnitude: its level 2k stays within MAX_LEVEL.
MAX_DQ_INDEX = MAX_LEVEL >> 1

#: Longest stretch of a row searched at once, and how often the rate estimates are refreshed.
_CHUNK = 2048
_REFRESH = 128
#: Elements past a stretch's end that its search looks at (not coded with it).
LOOKAHEAD = 64
_INF = 1e300


@jit_inline
def _next(state, k):
    """The state after index ``k`` in ``state`` (:data:`TRANS`)."""
    return TRANS[state, k & 1]


@jit_inline
def _sig_base(state):
    """First significance context of the set used in ``state`` (:data:`SIG_SET`)."""
    st = SIG_SET[state]
    return 0 if st == 0 else DQ_SIG_CTX + 27 * (st - 1)


@jit_inline
def dq_level(k, state):
    """Reconstruction level of index ``k`` in ``state``: ``2k`` (Q0), ``2k - sgn(k)`` (Q1)."""
    if QUANTISER[state] == 0 or k == 0:
        return 2 * k
    return 2 * k - 1 if k > 0 else 2 * k + 1


@jit_inline
def _states(state):
    """The states of ``state``'s machine: (first, end)."""
    return (START_8, START_8 + 8) if state >= START_8 else (0, 4)


@jit
def dq_levels(ks, first_state=0):
    """The reconstruction levels of a whole sequence of indices (the machine from ``first_state``:
    0, or :data:`START_8`)."""
    out = np.empty(ks.size, np.int64)
    state = first_state
    for i in range(ks.size):
        k = ks[i]
        out[i] = dq_level(k, state)
        state = _next(state, k)
    return out


@jit
def _encode_span_dq(ks, start, stop, cols, ctx, st, buf, fast, slow, colact, state):
    """Code the indices ``ks[start:stop]``; return (coder state, quantiser state)."""
    col = start % cols
    for i in range(start, stop):
        k = ks[i]
        c_sig, c_sign, g = _contexts_of(ks, i, col, cols, colact)
        c_sig += _sig_base(state)
        state = _next(state, k)
        _col_update(colact, col, k)
        col += 1
        if col == cols:
            col = 0
        sig = 1 if k != 0 else 0
        st = enc_bin(st, buf, sig, p_one(ctx, c_sig))
        update(ctx, c_sig, sig, fast, slow)
        if sig == 0:
            continue
        neg = 1 if k < 0 else 0
        st = enc_bin(st, buf, neg, p_one(ctx, c_sign))
        update(ctx, c_sign, neg, fast, slow)
        m = -k if neg else k
        j = 1
        while True:
            c = _gt_context(j, g)
            gt = _gt_flag(m, j)
            st = enc_bin(st, buf, gt, p_one(ctx, c))
            update(ctx, c, gt, fast, slow)
            if _gt_last(j, gt):
                break
            j += 1
        if _eg_follows(m):
            nb, xg = _eg_split(m)
            st = enc_bypass(st, buf, _eg_prefix(nb), nb + 1)
            st = enc_bypass(st, buf, xg, nb)
    return st, state


@jit
def _rate_tables(ctx, cost0, cost1, gtc):
    """Bits of a 0 / 1 in every context now, and ``gtc[g, m]``: bits of the greater-than flags of
    magnitude ``m`` (1..GT_FLAGS + 1; the last means "beyond the flags", Exp-Golomb bins excluded)."""
    for c in range(cost0.size):
        p = p_one(ctx, c)
        cost0[c] = _BITS[(32768 - p) >> 5]
        cost1[c] = _BITS[p >> 5]
    for g in range(3):
        acc = 0.0
        for m in range(1, GT_FLAGS + 1):
            c = _gt_context(m, g)
            gtc[g, m] = acc + cost0[c]  # flags 1 .. m-1 are ones, flag m is the zero
            acc += cost1[c]
        gtc[g, GT_FLAGS + 1] = acc


@jit_inline
def _mag_bits(m, g, gtc):
    """Bits of the flags (and Exp-Golomb bins) of magnitude ``m >= 1`` in class ``g``."""
    if m <= GT_FLAGS:
        return gtc[g, m]
    nb, _ = _eg_split(m)
    return gtc[g, GT_FLAGS + 1] + _eg_bins(nb)


@jit_inline
def _candidates(a_abs, q):
    """The magnitudes of the two reconstruction points of quantiser ``q`` nearest ``a_abs`` (one of
    them 0 near zero): levels ``2m`` (Q0) or ``2m - 1`` (Q1, and 0 for m = 0)."""
    if q == 0:
        m = np.int64(a_abs * 0.5)
        return m, m + 1
    if a_abs < 1.0:
        return np.int64(0), np.int64(1)
    m = np.int64((a_abs + 1.0) * 0.5)
    return m, m + 1


@jit_inline
def _sq_err(a_abs, m, q):
    """Squared error (in steps) of magnitude ``m`` of quantiser ``q`` for value ``a_abs``."""
    d = a_abs - (2 * m - (q if m > 0 else 0))
    return d * d


@jit
def _trellis(x, inv_step, lam, start, stop, ahead, cols, ks, colact, state0, cost0, cost1, gtc, back_s, back_k):
    """Viterbi search of the indices ``ks[start:stop]`` (one stretch of one row) from ``state0``,
    over the elements up to ``ahead`` past ``stop`` (whose indices are not kept); writes them."""
    lo, hi = _states(state0)
    cost = np.full(hi, _INF)
    left = np.zeros(hi, np.int64)
    ncost = np.empty(hi)
    nleft = np.zeros(hi, np.int64)
    cost[state0] = 0.0
    col = start % cols
    left[state0] = ks[start - 1] if col > 0 else 0
    end = min(stop + ahead, x.size)
    for i in range(start, end):
        r = i - start
        if col == cols:  # (only past stop) the next row: no left neighbour
            col = 0
            for t in range(lo, hi):
                left[t] = 0
        up = ks[i - cols] if cols <= i < start + cols else 0  # (not chosen yet from start on)
        b = min(abs(up), 2)
        sb = _sign_class(up)
        act = colact[col]
        cls = 9 * (0 if act == 0 else (1 if act < ACT_HIGH else 2)) + b
        v = np.float64(x[i]) * inv_step
        neg = 1 if v < 0 else 0
        a_abs = -v if neg else v
        m00, m01 = _candidates(a_abs, 0)
        m10, m11 = _candidates(a_abs, 1)
        d00 = _sq_err(a_abs, m00, 0)
        d01 = _sq_err(a_abs, m01, 0)
        d10 = _sq_err(a_abs, m10, 1)
        d11 = _sq_err(a_abs, m11, 1)
        for t in range(lo, hi):
            ncost[t] = _INF
        for s in range(lo, hi):
            js = cost[s]
            if js >= _INF:
                continue
            lf = left[s]
            a = min(abs(lf), 2)
            c_sig = _sig_base(s) + cls + 3 * a
            g = min(a + b, 2)
            c_sign = SIGN_CTX + 3 * _sign_class(lf) + sb
            nz = cost1[c_sig] + (cost1[c_sign] if neg else cost0[c_sign])
            if QUANTISER[s] == 0:
                ma, mb, da, db = m00, m01, d00, d01
            else:
                ma, mb, da, db = m10, m11, d10, d11
            for h in range(2):
                m = ma if h == 0 else mb
                bits = cost0[c_sig] if m == 0 else nz + _mag_bits(m, g, gtc)
                jm = js + (da if h == 0 else db) + lam * bits
                ns = _next(s, m)
                if jm < ncost[ns]:
                    ncost[ns] = jm
                    kk = -m if neg else m
                    nleft[ns] = kk
                    back_s[r, ns] = s
                    back_k[r, ns] = kk
        for t in range(lo, hi):
            cost[t] = ncost[t]
            left[t] = nleft[t]
        col += 1
    best = lo
    for s in range(lo + 1, hi):
        if cost[s] < cost[best]:
            best = s
    s = best
    for r in range(end - start - 1, -1, -1):
        if r < stop - start:
            ks[start + r] = back_k[r, s]
        s = back_s[r, s]


@jit
def encode_levels_dq(x, step, lam, cols, rate_index, ahead=LOOKAHEAD, first_state=0):
    """Dependent quantisation of float ``x`` at ``step`` and coding; return (payload, indices).

    The reconstruction levels are :func:`dq_levels` of the indices. |x| / step must stay below
    ``MAX_DQ_INDEX`` (checked by the caller). ``ahead``: the search's look-ahead past each
    stretch (:data:`LOOKAHEAD`; 0: none); ``first_state``: the machine's first state (0: 4 states,
    :data:`START_8`: 8 states).
    """
    n = x.size
    inv_step = 1.0 / step
    fast = RATE_PAIRS[rate_index, 0]
    slow = RATE_PAIRS[rate_index, 1]
    ctx = new_contexts(N_CONTEXTS_DQ)
    colact = np.zeros(cols, np.int64)
    ks = np.zeros(n, np.int64)
    cost0 = np.empty(N_CONTEXTS_DQ)
    cost1 = np.empty(N_CONTEXTS_DQ)
    gtc = np.empty((3, GT_FLAGS + 2))
    width = min(cols, _CHUNK) + ahead
    back_s = np.zeros((width, START_8 + 8), np.int8)
    back_k = np.zeros((width, START_8 + 8), np.int64)
    st = enc_init()
    buf = np.empty(n // 4 + 256, np.uint8)
    state = first_state
    since = _REFRESH
    for row in range(0, n, cols):
        end = min(row + cols, n)  # (a partial last row only if cols does not divide n)
        for start in range(row, end, _CHUNK):
            stop = min(start + _CHUNK, end)
            if since >= _REFRESH:
                _rate_tables(ctx, cost0, cost1, gtc)
                since = 0
            since += stop - start
            _trellis(x, inv_step, lam, start, stop, ahead, cols, ks, colact, state, cost0, cost1, gtc, back_s, back_k)
            buf = _with_room(buf, st, stop - start)
            st, state = _encode_span_dq(ks, start, stop, cols, ctx, st, buf, fast, slow, colact, state)
    buf = _with_room(buf, st, 0)
    return buf[: enc_finish(st, buf)].copy(), ks


@jit
def encode_indices_dq(ks, cols, rate_index, first_state=0):
    """Code given indices ``ks`` (|k| <= MAX_DQ_INDEX) with the DQ contexts, the machine from
    ``first_state``; return the payload."""
    n = ks.size
    fast = RATE_PAIRS[rate_index, 0]
    slow = RATE_PAIRS[rate_index, 1]
    ctx = new_contexts(N_CONTEXTS_DQ)
    colact = np.zeros(cols, np.int64)
    st = enc_init()
    buf = np.empty(n // 4 + 256, np.uint8)
    state = first_state
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        buf = _with_room(buf, st, stop - start)
        st, state = _encode_span_dq(ks, start, stop, cols, ctx, st, buf, fast, slow, colact, state)
    buf = _with_room(buf, st, 0)
    return buf[: enc_finish(st, buf)].copy()


@jit
def _decode_dq(data, n, cols, rate_index, ks, values, step, first_state):
    """Mirror of the DQ encoders: decode ``n`` indices into ``ks`` and their reconstructions
    ``dq_level * step`` (float64, stored in ``values``' dtype) into ``values``; either may be
    empty (not wanted). The upper neighbour comes from a buffer of one row (as in
    :func:`nnc_fl._levels._decode`). Return (status, largest reconstruction level magnitude)."""
    fast = RATE_PAIRS[rate_index, 0]
    slow = RATE_PAIRS[rate_index, 1]
    ctx = new_contexts(N_CONTEXTS_DQ)
    colact = np.zeros(cols, np.int64)
    row = np.zeros(cols, np.int64)  # indices of the row above from column col on, this row before it
    want_ks = ks.size == n
    want_values = values.size == n
    st = dec_init(data)
    top = 0
    col = 0
    left = 0
    state = first_state
    for i in range(n):
        up = row[col]
        c_sig, c_sign, g = _contexts_from(left, up, colact[col])
        c_sig += _sig_base(state)
        sig, st = dec_bin(st, data, p_one(ctx, c_sig))
        update(ctx, c_sig, sig, fast, slow)
        k = 0
        if sig:
            neg, st = dec_bin(st, data, p_one(ctx, c_sign))
            update(ctx, c_sign, neg, fast, slow)
            j = 1
            while True:
                c = _gt_context(j, g)
                gt, st = dec_bin(st, data, p_one(ctx, c))
                update(ctx, c, gt, fast, slow)
                m = _gt_magnitude(j, gt)
                if _gt_last(j, gt):
                    break
                j += 1
            if _eg_follows(m):
                m, st = dec_beyond_flags(st, data, ctx, fast, slow, False, MAX_DQ_INDEX)
                if m < 0:
                    return BAD_LEVEL, top
            if st[2] > data.size + READ_SLACK:
                return SHORT_PAYLOAD, top
            k = -m if neg else m
        level = dq_level(k, state)
        top = max(top, abs(level))
        if want_ks:
            ks[i] = k
        if want_values:
            values[i] = level * step
        state = _next(state, k)
        _col_update(colact, col, k)
        row[col] = k
        left = k
        col += 1
        if col == cols:
            col = 0
            left = 0
    return OK, top


@jit
def decode_levels_dq(data, n, cols, rate_index, first_state=0):
    """Mirror of the DQ encoders: return (int64 reconstruction levels, status); on a status other
    than OK, the indices decoded so far instead of levels."""
    ks = np.zeros(n, np.int64)
    status, _ = _decode_dq(data, n, cols, rate_index, ks, np.empty(0, np.float64), 1.0, first_state)
    if status != OK:
        return ks, status
    return dq_levels(ks, first_state), OK


@jit
def decode_values_dq(data, cols, rate_index, step, values, first_state=0):
    """Decode a DQ payload of ``values.size`` indices straight into ``values`` (float32 or float64)
    as :func:`nnc_fl._levels.decode_values` does; return (status, largest level magnitude)."""
    return _decode_dq(data, values.size, cols, rate_index, np.empty(0, np.int64), values, step, first_state)
