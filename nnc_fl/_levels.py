"""Binarisation and context modelling of integer levels (DeepCABAC style), encoder and decoder.

A tensor's levels are scanned in row-major order over a 2-D view ``(rows, cols)`` where ``rows`` is
the first dimension (output channels / neurons) and ``cols`` the product of the others. Each level
``q`` is binarised as

- ``sig``: ``q != 0``, context from the magnitudes of the left and upper neighbours and the recent
  activity of the column (27 contexts);
- ``sign`` (if sig): 1 for negative, context from the signs of the left and upper neighbours (9);
- greater-than flags ``|q| > k`` for ``k = 1 .. GT_FLAGS``, stopping at the first 0, context from
  ``k`` and the neighbourhood magnitude class (``GT_FLAGS * 3`` contexts);
- if ``|q| > GT_FLAGS``: ``|q| - GT_FLAGS - 1`` as an order-0 Exp-Golomb code in bypass bins; with
  the *context-coded prefix* tool (``egctx``) its prefix bins are coded in contexts by bin index
  (``EG_CONTEXTS``), which learns how far levels reach: wide level distributions (keyframes of
  whole models, where most levels pass the flags) cost ~2-3 bits less per such level.

Weight deltas of a layer are close to sums of outer products (output error times input activation),
so a level's magnitude and sign correlate with its row neighbour (same output) and its column
neighbour (same input); the contexts exploit both. Inputs that never fire (dead pixels, dead ReLU
units) leave whole columns at zero: a per-column activity, an exponentially decaying average of
``min(|q|, 2)`` over the rows coded so far, separates those columns from live ones.

Encoder and decoder below mirror each other line by line; :mod:`nnc_fl.reference` is a slow
pure-Python twin used by the tests to pin the kernels bit for bit.
"""

import numpy as np

from ._jit import jit, jit_inline
from ._probability import RATE_PAIRS, new_contexts, p_one, update
from ._rangecoder import dec_bin, dec_bypass, dec_init, enc_bin, enc_bypass, enc_finish, enc_init, enc_reserve

GT_FLAGS = 12
SIG_CTX = 0
SIGN_CTX = 27
GT_CTX = 36
#: Column activity classes: 0 (none), below ACT_HIGH, at or above ACT_HIGH.
ACT_HIGH = 96


@jit
def _col_update(colact, col, q):
    """Column activity: ``act <- (15 * act + 64 * min(|q|, 2)) >> 4`` after each coded level."""
    colact[col] = (colact[col] * 15 + 64 * min(abs(q), 2)) >> 4
N_CONTEXTS = GT_CTX + 3 * GT_FLAGS
#: Contexts of the Exp-Golomb prefix bins with ``egctx``: bin j uses EG_CTX + min(j, EG_CONTEXTS - 1).
EG_CTX = N_CONTEXTS
EG_CONTEXTS = 16
N_CONTEXTS_EG = EG_CTX + EG_CONTEXTS
#: Temporal contexts (tools bit 5): with a reference class t (the co-located value of the previous
#: round's update in units of this tensor's step, rounded and clipped to [-2, 2]) other than 0,
#: the sig contexts are those of the block T_SIG_CTX + 27 * (|t| - 1), the sign contexts of the
#: block T_SIGN_CTX + 9 * (t < 0), the greater-than flags those of T_GT_CTX + 36 * (|t| - 1);
#: t = 0 keeps the usual contexts.
T_SIG_CTX = N_CONTEXTS_EG
T_SIGN_CTX = T_SIG_CTX + 2 * 27
T_GT_CTX = T_SIGN_CTX + 2 * 9
N_CONTEXTS_T = T_GT_CTX + 2 * 3 * GT_FLAGS
#: Largest level magnitude the format carries (Exp-Golomb prefixes are at most 62 bins).
MAX_LEVEL = 1 << 62
MAX_EG_PREFIX = 62
#: A decoder may read this many bytes past the payload (zeros) without the payload being short.
READ_SLACK = 8

# decoder status codes
OK = 0
BAD_LEVEL = 1
SHORT_PAYLOAD = 2


@jit
def _sign_class(v):
    if v == 0:
        return 0
    return 1 if v > 0 else 2


@jit
def _contexts_from(left, up, act):
    """(sig context, sign context, gt class) from the left and upper neighbours' levels and the
    column's activity ``act``."""
    a = min(abs(left), 2)
    b = min(abs(up), 2)
    c = 0 if act == 0 else (1 if act < ACT_HIGH else 2)
    sig = SIG_CTX + 9 * c + 3 * a + b
    sign = SIGN_CTX + 3 * _sign_class(left) + _sign_class(up)
    return sig, sign, min(a + b, 2)


@jit_inline
def _temporal(c_sig, c_sign, g, t):
    """The contexts of :func:`_contexts_from` moved to the temporal blocks of reference class
    ``t`` (-2 .. 2; 0 keeps them). ``g`` becomes an offset that :func:`_gt_context` adds."""
    if t == 0:
        return c_sig, c_sign, g
    a = np.int64(t if t > 0 else -t)  # (an int8 class: int64 arithmetic without the JIT too)
    c_sig = T_SIG_CTX + 27 * (a - 1) + (c_sig - SIG_CTX)
    c_sign = T_SIGN_CTX + 9 * (0 if t > 0 else 1) + (c_sign - SIGN_CTX)
    return c_sig, c_sign, g + (T_GT_CTX - GT_CTX) + 36 * (a - 1)


@jit
def temporal_classes(ref, step, out):
    """``out[i] = clip(rint(ref[i] / step), -2, 2)`` (float64 division, ties to even): the
    reference classes of tools bit 5, for a finite float32/64 ``ref`` and an int8 ``out``."""
    for i in range(ref.size):
        v = np.rint(np.float64(ref[i]) / step)
        out[i] = 2 if v > 2.0 else (-2 if v < -2.0 else np.int8(v))
    return out


@jit
def _contexts_of(levels, i, col, cols, colact):
    """(sig context, sign context, gt class) from the already coded neighbours of position ``i``."""
    left = levels[i - 1] if col > 0 else 0
    up = levels[i - cols] if i >= cols else 0
    return _contexts_from(left, up, colact[col])


# --- Binarisation: the bins of one level, defined once -------------------------------------------
# The encoder (_encode_span), the decoder (_decode, dec_beyond_flags) and the RD bit estimate
# (_level_bits) walk a level's bins with these helpers only. For a level q with magnitude m = |q|:
#   sig = (q != 0) in the sig context; if sig: sign = (q < 0) in the sign context; then flags
#   _gt_flag(m, k) for k = 1, 2, ..., each in _gt_context(k, g), up to the one where _gt_last(k, flag);
#   if _eg_follows(m), x = m - GT_FLAGS in bypass bins: _eg_split(m) gives (nb, x), coded as the nb + 1
#   prefix bins _eg_prefix(nb) and the nb low bits of x; _eg_join inverts it.
# (The walks are `while True ... k += 1` loops: measured faster than a `k = next(k)` loop for the
# encoder and than a `for k in range(...)` loop for the bit estimate.)


@jit_inline
def _gt_context(k, g):
    """Context of the flag ``|q| > k`` (k = 1 .. GT_FLAGS) in neighbourhood magnitude class ``g``
    (plus the temporal block's offset, :func:`_temporal`)."""
    return GT_CTX + 3 * (k - 1) + g


@jit_inline
def _gt_flag(m, k):
    """Value of the flag ``|q| > k`` for magnitude ``m``."""
    return 1 if m > k else 0


@jit_inline
def _gt_last(k, flag):
    """Whether flag ``k`` of value ``flag`` is the last one: a 0, or flag GT_FLAGS."""
    return flag == 0 or k == GT_FLAGS


@jit_inline
def _gt_magnitude(k, flag):
    """Inverse of the flags: the magnitude is ``k`` after a 0 at flag ``k``, at least ``k + 1`` after a 1."""
    return k + flag


@jit_inline
def _eg_follows(m):
    """Whether magnitude ``m`` (or the lower bound the flags give) continues in Exp-Golomb bins."""
    return m > GT_FLAGS


@jit_inline
def _eg_split(m):
    """Order-0 Exp-Golomb of ``x = m - GT_FLAGS >= 1``: ``(nb, x)`` with ``x`` of ``nb + 1`` bits."""
    x = m - GT_FLAGS
    nb = 0
    while (x >> (nb + 1)) != 0:
        nb += 1
    return nb, x


@jit_inline
def _eg_prefix(nb):
    """The ``nb + 1`` prefix bins, as one value: ``nb`` ones, then a zero."""
    return (1 << (nb + 1)) - 2


@jit_inline
def _eg_context(j):
    """Context of Exp-Golomb prefix bin ``j`` (0-based) with ``egctx``."""
    return EG_CTX + min(j, EG_CONTEXTS - 1)


@jit_inline
def _eg_bins(nb):
    """Number of bypass bins of an Exp-Golomb code with prefix ``nb``: ``nb + 1`` prefix, ``nb`` low bits."""
    return 2 * nb + 1


@jit_inline
def _eg_join(nb, low):
    """Inverse of :func:`_eg_split`: ``x = m - GT_FLAGS`` from the prefix ``nb`` and the ``nb`` low bits."""
    return (1 << nb) | low


#: Levels coded between two checks of the output buffer's room.
_SPAN = 4096
#: Upper bound of the bytes one level can add: 14 context bins (sig, sign, flags) and, with egctx,
#: up to 63 context-coded prefix bins, each <= 10 bits; <= 125 bypass bins (820 bits in all).
_MAX_BYTES_PER_LEVEL = 112


#: -log2 of a bin's probability, by the probability's top 10 bits (index p >> 5 of a 15-bit p).
_BITS = -np.log2((np.arange(1024) * 32 + 16) / 32768.0)


@jit
def _bin_bits(p1, bit):
    return _BITS[(p1 if bit else 32768 - p1) >> 5]


@jit
def _level_bits(m, neg, c_sig, c_sign, g, ctx, egctx):
    """Estimated bits to code magnitude ``m`` (with sign ``neg``) in the current context state."""
    if m == 0:
        return _bin_bits(p_one(ctx, c_sig), 0)
    bits = _bin_bits(p_one(ctx, c_sig), 1) + _bin_bits(p_one(ctx, c_sign), neg)
    k = 1
    while True:
        gt = _gt_flag(m, k)
        bits += _bin_bits(p_one(ctx, _gt_context(k, g)), gt)
        if _gt_last(k, gt):
            break
        k += 1
    if _eg_follows(m):
        nb, _ = _eg_split(m)
        if egctx:
            for j in range(nb + 1):
                bits += _bin_bits(p_one(ctx, _eg_context(j)), 1 if j < nb else 0)
            bits += nb
        else:
            bits += _eg_bins(nb)
    return bits


@jit
def eg_context_gain(levels, rate_index):
    """Estimated bits ``egctx`` saves on ``levels``: the bypass bins of their Exp-Golomb prefixes
    minus what the same bins cost in their adaptive contexts (the other bins cost the same either
    way). Lets an encoder skip the second coding pass where context-coded prefixes cannot pay."""
    fast = RATE_PAIRS[rate_index, 0]
    slow = RATE_PAIRS[rate_index, 1]
    ctx = new_contexts(N_CONTEXTS_EG)
    gain = 0.0
    for i in range(levels.size):
        m = abs(levels[i])
        if not _eg_follows(m):
            continue
        nb, _ = _eg_split(m)
        gain += nb + 1
        for j in range(nb + 1):
            c = _eg_context(j)
            one = 1 if j < nb else 0
            gain -= _bin_bits(p_one(ctx, c), one)
            update(ctx, c, one, fast, slow)
    return gain


@jit
def _rd_choice(q, a, lam, c_sig, c_sign, g, ctx, egctx):
    """``q`` = round(x / step) with ``a`` = |x| / step: keep it, or step one towards zero when
    ``q`` was rounded up and that lowers distortion + lam x bits (error stays below one step)."""
    m = abs(q)
    if m == 0 or a >= m:
        return q
    neg = 1 if q < 0 else 0
    j_keep = (m - a) ** 2 + lam * _level_bits(m, neg, c_sig, c_sign, g, ctx, egctx)
    j_down = (a - m + 1) ** 2 + lam * _level_bits(m - 1, neg, c_sig, c_sign, g, ctx, egctx)
    if j_down < j_keep:
        return q + 1 if neg else q - 1
    return q


@jit
def _encode_span(levels, x, inv_step, lam, start, stop, cols, ctx, st, buf, fast, slow, colact, egctx, tref):
    """Code ``levels[start:stop]`` into ``buf`` (which has room for them); return the coder state.

    With ``lam > 0`` each level may first be lowered by :func:`_rd_choice` (rate-distortion
    quantisation, from the values ``x``); the coded level is written back into ``levels``. With
    ``tref`` (int8 reference classes, or None) the contexts are temporal (:func:`_temporal`).
    """
    col = start % cols
    for i in range(start, stop):
        q = levels[i]
        c_sig, c_sign, g = _contexts_of(levels, i, col, cols, colact)
        if tref is not None:
            c_sig, c_sign, g = _temporal(c_sig, c_sign, g, tref[i])
        if lam > 0.0 and q != 0:  # (a zero level is never lowered)
            q = _rd_choice(q, abs(np.float64(x[i])) * inv_step, lam, c_sig, c_sign, g, ctx, egctx)
            levels[i] = q
        _col_update(colact, col, q)
        col += 1
        if col == cols:
            col = 0
        sig = 1 if q != 0 else 0
        st = enc_bin(st, buf, sig, p_one(ctx, c_sig))
        update(ctx, c_sig, sig, fast, slow)
        if sig == 0:
            continue
        neg = 1 if q < 0 else 0
        st = enc_bin(st, buf, neg, p_one(ctx, c_sign))
        update(ctx, c_sign, neg, fast, slow)
        m = -q if neg else q
        k = 1
        while True:
            c = _gt_context(k, g)
            gt = _gt_flag(m, k)
            st = enc_bin(st, buf, gt, p_one(ctx, c))
            update(ctx, c, gt, fast, slow)
            if _gt_last(k, gt):
                break
            k += 1
        if _eg_follows(m):
            nb, xg = _eg_split(m)
            if egctx:
                for j in range(nb + 1):
                    c = _eg_context(j)
                    one = 1 if j < nb else 0
                    st = enc_bin(st, buf, one, p_one(ctx, c))
                    update(ctx, c, one, fast, slow)
            else:
                st = enc_bypass(st, buf, _eg_prefix(nb), nb + 1)
            st = enc_bypass(st, buf, xg, nb)
    return st


@jit
def _with_room(buf, st, n_levels):
    """``buf``, or a larger copy, with room for ``n_levels`` more levels and the final flush."""
    return enc_reserve(buf, st, _MAX_BYTES_PER_LEVEL * n_levels)


@jit
def _encode(levels, x, inv_step, lam, cols, rate_index, egctx, tref):
    n = levels.size
    fast = RATE_PAIRS[rate_index, 0]
    slow = RATE_PAIRS[rate_index, 1]
    ctx = new_contexts(N_CONTEXTS_EG if tref is None else N_CONTEXTS_T)
    colact = np.zeros(cols, np.int64)
    st = enc_init()
    buf = np.empty(n // 4 + 256, np.uint8)
    for start in range(0, n, _SPAN):
        stop = min(start + _SPAN, n)
        buf = _with_room(buf, st, stop - start)
        st = _encode_span(levels, x, inv_step, lam, start, stop, cols, ctx, st, buf, fast, slow, colact, egctx, tref)
    buf = _with_room(buf, st, 0)
    return buf[: enc_finish(st, buf)].copy()


@jit
def encode_levels(levels, cols, rate_index, egctx=False, tref=None):
    """Code int64 ``levels`` (|level| <= MAX_LEVEL, checked by the caller); return the payload.
    ``egctx``: Exp-Golomb prefix bins in contexts (the tool bit says so to the decoder); ``tref``:
    int8 reference classes of every level (:func:`temporal_classes`), temporal contexts."""
    return _encode(levels, np.zeros(0, np.float64), 1.0, 0.0, cols, rate_index, egctx, tref)


@jit
def encode_levels_rd(levels, x, step, lam, cols, rate_index, egctx=False, tref=None):
    """Rate-distortion quantisation and coding in one pass.

    ``levels`` must hold ``round(x / step)`` (from :func:`nnc_fl._quantise.quantise`); levels whose
    rounding went up may be lowered by one where ``(error / step)**2 + lam * bits`` is smaller, with
    bits estimated from the adaptive contexts at that point. ``levels`` is updated in place to what
    was coded, and the payload is returned; the decoder is the usual :func:`decode_levels`.
    """
    return _encode(levels, x, 1.0 / step, lam, cols, rate_index, egctx, tref)


@jit
def dec_beyond_flags(st, data, ctx, fast, slow, egctx, max_value):
    """Decode the Exp-Golomb bins of a magnitude past the greater-than flags (a rare path, kept out of
    the decoders' loops). Return (magnitude, coder state); magnitude -1 for a prefix longer than
    MAX_EG_PREFIX or a magnitude beyond ``max_value`` (the decoders' BAD_LEVEL)."""
    nb = 0
    while True:
        if egctx:
            c = _eg_context(nb)
            one, st = dec_bin(st, data, p_one(ctx, c))
            update(ctx, c, one, fast, slow)
        else:
            one, st = dec_bypass(st, data, 1)
        if one == 0:
            break
        nb += 1
        if nb > MAX_EG_PREFIX:
            return -1, st
    low, st = dec_bypass(st, data, nb)
    x = _eg_join(nb, low)
    if x > max_value - GT_FLAGS:  # checked before adding GT_FLAGS, which could overflow int64
        return -1, st
    return GT_FLAGS + x, st


@jit
def _decode(data, n, cols, rate_index, egctx, levels, values, step, tref):
    """Mirror of :func:`_encode`: decode ``n`` levels into ``levels`` and ``level * step`` (in
    float64, stored in ``values``' dtype) into ``values``; either may be empty (not wanted).
    Return (status, largest level magnitude).

    The upper neighbour comes from a buffer of one row, so only the outputs asked for are
    written (a float32 tensor never passes through int64 levels and float64 values). ``tref``:
    the reference classes of temporal contexts, or None.
    """
    fast = RATE_PAIRS[rate_index, 0]
    slow = RATE_PAIRS[rate_index, 1]
    ctx = new_contexts(N_CONTEXTS_EG if tref is None else N_CONTEXTS_T)
    colact = np.zeros(cols, np.int64)
    row = np.zeros(cols, np.int64)  # the row above from column col on, this row before it
    want_levels = levels.size == n
    want_values = values.size == n
    st = dec_init(data)
    top = 0
    col = 0
    left = 0
    for i in range(n):
        up = row[col]
        c_sig, c_sign, g = _contexts_from(left, up, colact[col])
        if tref is not None:
            c_sig, c_sign, g = _temporal(c_sig, c_sign, g, tref[i])
        sig, st = dec_bin(st, data, p_one(ctx, c_sig))
        update(ctx, c_sig, sig, fast, slow)
        q = 0
        if sig:
            neg, st = dec_bin(st, data, p_one(ctx, c_sign))
            update(ctx, c_sign, neg, fast, slow)
            k = 1
            while True:
                c = _gt_context(k, g)
                gt, st = dec_bin(st, data, p_one(ctx, c))
                update(ctx, c, gt, fast, slow)
                m = _gt_magnitude(k, gt)
                if _gt_last(k, gt):
                    break
                k += 1
            if _eg_follows(m):
                m, st = dec_beyond_flags(st, data, ctx, fast, slow, egctx, MAX_LEVEL)
                if m < 0:
                    return BAD_LEVEL, top
            if st[2] > data.size + READ_SLACK:
                return SHORT_PAYLOAD, top
            q = -m if neg else m
            top = max(top, m)
        _col_update(colact, col, q)
        row[col] = q
        if want_levels:
            levels[i] = q
        if want_values:
            values[i] = q * step
        left = q
        col += 1
        if col == cols:
            col = 0
            left = 0
    return OK, top


@jit
def decode_levels(data, n, cols, rate_index, egctx=False, tref=None):
    """Mirror of :func:`encode_levels`: return (int64 levels, status)."""
    levels = np.zeros(n, np.int64)
    status, _ = _decode(data, n, cols, rate_index, egctx, levels, np.empty(0, np.float64), 1.0, tref)
    return levels, status


@jit
def decode_values(data, cols, rate_index, egctx, step, values, tref=None):
    """Decode a payload of ``values.size`` levels straight into ``values`` (float32 or float64):
    ``level * step`` computed in float64 and stored in ``values``' dtype, as ``dequantise(levels,
    step).astype(dtype)`` gives. Return (status, largest level magnitude, for the caller's range
    check); on a status other than OK ``values`` is partly written. ``tref``: as for
    :func:`decode_levels`."""
    return _decode(data, values.size, cols, rate_index, egctx, np.empty(0, np.int64), values, step, tref)
