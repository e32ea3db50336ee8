"""Row references (tools bit 3): a row may repeat an earlier, not necessarily adjacent, row.

In small dense layers many rows (output units) repeat an earlier row exactly or nearly: dead units
give all-zero rows, units that saw the same inputs give near-copies. The left / up / column
contexts cannot see a non-adjacent copy. With tools bit 3, each row after the first starts with a
*reference*: a context-coded flag, and if set the distance ``d`` to the referenced earlier row
(``1 <= d <= row``, ``d - 1`` in ``bitlength(row - 1)`` bypass bins). In a row with a reference,
each coded integer (level, or DQ index) is preceded by an *equal* flag (context by the
referenced value's magnitude class, 3 contexts): 1 means "the referenced row's integer at this
column", and nothing else is coded; 0 means the integer follows, binarised and context-coded as
usual (left / up / column neighbours, DQ state). Rows without a reference are coded as usual.

The encoder picks, per row, the earlier row (within a bounded window, exact duplicates found by
hashing at any distance) with the most equal integers, and uses it when enough of them agree.
"""

import numpy as np

from ._dq import N_CONTEXTS_DQ, _next, _sig_base, dq_levels
from ._jit import jit
from ._levels import (
    BAD_LEVEL,
    MAX_LEVEL,
    OK,
    READ_SLACK,
    SHORT_PAYLOAD,
    _col_update,
    _contexts_of,
    _eg_follows,
    _eg_prefix,
    _eg_split,
    _gt_context,
    _gt_flag,
    _gt_last,
    _gt_magnitude,
    _with_room,
    dec_beyond_flags,
)
from ._probability import RATE_PAIRS, new_contexts, p_one, update
from ._rangecoder import dec_bin, dec_bypass, dec_init, enc_bin, enc_bypass, enc_finish, enc_init

#: Context of the per-row reference flag, and first of the 3 equal-flag contexts (after DQ's 126).
REF_CTX = N_CONTEXTS_DQ
EQ_CTX = REF_CTX + 1
N_CONTEXTS_ROWS = EQ_CTX + 3
#: Decoder status: a reference to a row not coded yet cannot happen (the distance has just the
#: bits it needs, but a distance beyond the rows coded so far is refused).
BAD_REF = 3
#: Encoder search: integers compared per row (rows within ``max(1, SEARCH // cols)`` above, besides
#: exact duplicates found by hash at any distance), and the least share of equal integers for a
#: reference to be used.
SEARCH = 16384
MIN_EQUAL = 0.6
#: Columns looked at first when comparing two rows (all of them only if enough of these agree).
_SAMPLES = 32


@jit
def _bitlength(v):
    nb = 0
    while (v >> nb) != 0:
        nb += 1
    return nb


@jit
def choose_refs(ks, cols, window, min_equal):
    """Per row, the distance to the earlier row it references (0: none)."""
    rows = ks.size // cols
    refs = np.zeros(rows, np.int64)
    keys = np.empty(rows, np.int64)
    for r in range(rows):
        # a polynomial hash mod 2**31 - 1: no int64 overflow, so plain Python gives the same keys (a
        # collision only nominates a row, whose equal integers are then counted)
        h = 0
        for j in range(r * cols, (r + 1) * cols):
            h = (h * 1000003 + (ks[j] & 0xFFFFF)) % 2147483647
        keys[r] = h
    stride = max(1, cols // _SAMPLES)
    for r in range(1, rows):
        best, best_eq = 0, -1
        for p in range(r - 1, -1, -1):
            if keys[p] == keys[r] or r - p <= window:
                if keys[p] != keys[r]:
                    # a first look at every stride-th column: most rows are far from a copy
                    seen = 0
                    hits = 0
                    for j in range(0, cols, stride):
                        seen += 1
                        if ks[p * cols + j] == ks[r * cols + j]:
                            hits += 1
                    if hits < 0.75 * min_equal * seen:
                        continue
                eq = 0
                for j in range(cols):
                    if ks[p * cols + j] == ks[r * cols + j]:
                        eq += 1
                if eq > best_eq:
                    best, best_eq = p, eq
                    if eq == cols:
                        break
        nonzero = 0
        for j in range(r * cols, (r + 1) * cols):
            if ks[j] != 0:
                nonzero += 1
        # worth it when most integers agree and the row is not just zeros (which codes cheaply anyway)
        if best_eq >= min_equal * cols and (nonzero > 0 or best_eq == cols):
            refs[r] = r - best
    return refs


@jit
def _code_value(st, buf, ctx, k, c_sig, c_sign, g, fast, slow):
    """The usual bins of integer ``k`` in the given contexts."""
    sig = 1 if k != 0 else 0
    st = enc_bin(st, buf, sig, p_one(ctx, c_sig))
    update(ctx, c_sig, sig, fast, slow)
    if sig == 0:
        return st
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
    return st


@jit
def encode_rows(ks, refs, cols, rate_index, dq, first_state=0):
    """Code ``ks`` (levels, or DQ indices with ``dq``, the machine from ``first_state``) with the
    row references ``refs``."""
    n = ks.size
    fast = RATE_PAIRS[rate_index, 0]
    slow = RATE_PAIRS[rate_index, 1]
    ctx = new_contexts(N_CONTEXTS_ROWS)
    colact = np.zeros(cols, np.int64)
    st = enc_init()
    buf = np.empty(n // 4 + 256, np.uint8)
    state = first_state
    for row in range(n // cols):
        buf = _with_room(buf, st, cols + 4)
        d = refs[row] if row > 0 else 0
        if row > 0:
            has = 1 if d > 0 else 0
            st = enc_bin(st, buf, has, p_one(ctx, REF_CTX))
            update(ctx, REF_CTX, has, fast, slow)
            if has:
                st = enc_bypass(st, buf, d - 1, _bitlength(row - 1))
        for col in range(cols):
            i = row * cols + col
            k = ks[i]
            c_sig, c_sign, g = _contexts_of(ks, i, col, cols, colact)
            if dq:
                c_sig += _sig_base(state)
                state = _next(state, k)
            _col_update(colact, col, k)
            if d > 0:
                ref = ks[i - d * cols]
                c_eq = EQ_CTX + min(abs(ref), 2)
                eq = 1 if k == ref else 0
                st = enc_bin(st, buf, eq, p_one(ctx, c_eq))
                update(ctx, c_eq, eq, fast, slow)
                if eq:
                    continue
            st = _code_value(st, buf, ctx, k, c_sig, c_sign, g, fast, slow)
    buf = _with_room(buf, st, 0)
    return buf[: enc_finish(st, buf)].copy()


@jit
def decode_rows(data, n, cols, rate_index, dq, first_state=0):
    """Mirror of :func:`encode_rows`: return (int64 levels -- reconstruction levels with ``dq`` --,
    status)."""
    fast = RATE_PAIRS[rate_index, 0]
    slow = RATE_PAIRS[rate_index, 1]
    ctx = new_contexts(N_CONTEXTS_ROWS)
    colact = np.zeros(cols, np.int64)
    st = dec_init(data)
    ks = np.zeros(n, np.int64)
    state = first_state
    max_value = (MAX_LEVEL >> 1) if dq else MAX_LEVEL
    for row in range(n // cols):
        d = 0
        if row > 0:
            has, st = dec_bin(st, data, p_one(ctx, REF_CTX))
            update(ctx, REF_CTX, has, fast, slow)
            if has:
                low, st = dec_bypass(st, data, _bitlength(row - 1))
                d = low + 1
                if d > row:
                    return ks, BAD_REF
        for col in range(cols):
            i = row * cols + col
            c_sig, c_sign, g = _contexts_of(ks, i, col, cols, colact)
            quantiser_state = state
            if dq:
                c_sig += _sig_base(state)
            k = 0
            coded = True
            if d > 0:
                ref = ks[i - d * cols]
                c_eq = EQ_CTX + min(abs(ref), 2)
                eq, st = dec_bin(st, data, p_one(ctx, c_eq))
                update(ctx, c_eq, eq, fast, slow)
                if eq:
                    k = ref
                    coded = False
            if coded:
                sig, st = dec_bin(st, data, p_one(ctx, c_sig))
                update(ctx, c_sig, sig, fast, slow)
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
                        m, st = dec_beyond_flags(st, data, ctx, fast, slow, False, max_value)
                        if m < 0:
                            return ks, BAD_LEVEL
                    k = -m if neg else m
            ks[i] = k
            if dq:
                state = _next(quantiser_state, k)
            _col_update(colact, col, k)
            if st[2] > data.size + READ_SLACK:
                return ks, SHORT_PAYLOAD
    if dq:
        return dq_levels(ks, first_state), OK
    return ks, OK
