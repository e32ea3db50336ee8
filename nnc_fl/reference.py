"""Slow pure-Python twin of the level coder, written for clarity: an executable part of FORMAT.md.

It codes a sequence of integer levels exactly as the numba kernels of ``nnc_fl._levels`` do
(binarisation, contexts, two-rate probability estimation, range coder with carry and flush), using
plain Python integers. The tests check the kernels against it bit for bit. Never used on a hot path.

It imports nothing from the kernels: its constants are written out below, as in FORMAT.md, so a
change to a kernel constant shows up as a mismatch against this file (``tests/test_kernels.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

# --- The format's constants (FORMAT.md, "Payload coding") ----------------------------------------

#: Greater-than flags |q| > k for k = 1 .. GT_FLAGS; larger magnitudes continue in Exp-Golomb.
GT_FLAGS = 12
#: First context of each kind: 27 significance, 9 sign, then 3 per greater-than flag.
SIG_CTX = 0
SIGN_CTX = 27
GT_CTX = 36
N_CONTEXTS = 72
#: With context-coded Exp-Golomb prefixes (tools bit 4): prefix bin j in EG_CTX + min(j, EG_CONTEXTS - 1).
EG_CTX = 72
EG_CONTEXTS = 16
N_CONTEXTS_EG = 88
#: Temporal contexts (tools bit 5): for a reference class t != 0, blocks of 27 sig contexts (by |t|),
#: 9 sign contexts (by the sign of t) and 36 greater-than contexts (by |t|) after the 88 above.
T_SIG_CTX = 88
T_SIGN_CTX = 142
T_GT_CTX = 160
N_CONTEXTS_T = 232
#: Column activity classes: 0 (none), below ACT_HIGH, at or above ACT_HIGH.
ACT_HIGH = 96
#: Largest level magnitude; Exp-Golomb prefixes of a valid payload are at most MAX_EG_PREFIX bins.
MAX_LEVEL = 1 << 62
MAX_EG_PREFIX = 62
#: (fast, slow) adaptation shifts by the tools byte's rate index.
RATE_PAIRS = ((3, 5), (2, 5), (3, 7), (4, 7))
#: A context's first WARMUP_BINS updates cap both shifts at warmup_shift(n).
WARMUP_BINS = 256
#: Both estimates of P(bin = 1) start at 1/2 on their 16-bit scale.
P_INIT = 1 << 15
#: Coder probabilities are 15-bit, clamped to [PROB_MIN, PROB_ONE - PROB_MIN].
PROB_BITS = 15
PROB_ONE = 1 << 15
PROB_MIN = 32
#: 32-bit range, renormalised (a byte shifted out) while below RANGE_TOP.
RANGE_MASK = 0xFFFFFFFF
RANGE_TOP = 1 << 24

# --- Dependent quantisation (tools bit 2; FORMAT.md, "Dependent quantisation") --------------------

#: Next state by (state, parity of the index): states 0, 1 use quantiser Q0, states 2, 3 use Q1.
DQ_TRANS = ((0, 2), (2, 0), (1, 3), (3, 1))
#: The 8-state machine (tools bit 7), NNC's: state s uses Q(s & 1); its states are numbered 0-7
#: here (the kernels number them 8-15).
DQ_TRANS_8 = ((0, 2), (7, 5), (1, 3), (6, 4), (2, 0), (5, 7), (3, 1), (4, 6))
#: Significance contexts of states 2 and 3 (sets 1 and 2) follow the 72 of plain coding.
DQ_SIG_CTX = 72
N_CONTEXTS_DQ = 126
MAX_DQ_INDEX = 1 << 61

# --- Row references (tools bit 3; FORMAT.md, "Row references") ------------------------------------

#: Context of the per-row reference flag, then 3 equal-flag contexts (by min(|referenced|, 2)).
REF_CTX = 126
EQ_CTX = 127
N_CONTEXTS_ROWS = 130


def _q1(state: int, states: int) -> bool:
    """Whether ``state`` of the ``states``-state machine uses quantiser Q1."""
    return bool(state & 1) if states == 8 else state >= 2


def dq_sig_base(state: int, states: int = 4) -> int:
    """First significance context in ``state``: set 0 with Q0; with Q1, set 1 (8 states) or sets 1
    and 2 for states 2 and 3 (4 states)."""
    if not _q1(state, states):
        return 0
    return DQ_SIG_CTX if states == 8 else DQ_SIG_CTX + 27 * (state - 2)


def dq_level(k: int, state: int, states: int = 4) -> int:
    """Reconstruction level of index k: 2k in Q0, 2k - sgn(k) in Q1."""
    if not _q1(state, states) or k == 0:
        return 2 * k
    return 2 * k - (1 if k > 0 else -1)


def dq_next(state: int, k: int, states: int = 4) -> int:
    """The state after index ``k``."""
    return (DQ_TRANS_8 if states == 8 else DQ_TRANS)[state][k & 1]


def warmup_shift(n: int) -> int:
    """Largest shift the n-th update of a context (n = 0, 1, ...) may use: max(1, floor(log2(n + 2)))."""
    return max(1, (n + 2).bit_length() - 1)

class _Model:
    """Two-rate probability estimate of a one, per context."""

    def __init__(self, rate_index: int, n_contexts: int = N_CONTEXTS):
        self.fast, self.slow = RATE_PAIRS[rate_index]
        self.p = [[P_INIT, P_INIT] for _ in range(n_contexts)]
        self.count = [0] * n_contexts

    def p1(self, c: int) -> int:
        return min(max((self.p[c][0] + self.p[c][1]) >> 2, PROB_MIN), PROB_ONE - PROB_MIN)

    def update(self, c: int, bit: int) -> None:
        fast, slow = self.fast, self.slow
        if self.count[c] < WARMUP_BINS:
            warm = warmup_shift(self.count[c])
            fast, slow = min(fast, warm), min(slow, warm)
            self.count[c] += 1
        for j, shift in ((0, fast), (1, slow)):
            if bit:
                self.p[c][j] += (65536 - self.p[c][j]) >> shift
            else:
                self.p[c][j] -= self.p[c][j] >> shift


class RangeEncoder:
    def __init__(self):
        self.low, self.range, self.cache, self.pending = 0, RANGE_MASK, 0, 1
        self.out = bytearray()
        self.skip_leading = True

    def _shift_low(self) -> None:
        if self.low < 0xFF000000 or self.low > RANGE_MASK:
            carry = self.low >> 32
            value = self.cache
            for _ in range(self.pending):
                if self.skip_leading:
                    assert value + carry == 0  # the virtual leading byte
                    self.skip_leading = False
                else:
                    self.out.append((value + carry) & 0xFF)
                value = 0xFF
            self.pending = 0
            self.cache = (self.low >> 24) & 0xFF
        self.pending += 1
        self.low = (self.low & 0xFFFFFF) << 8

    def _normalise(self) -> None:
        while self.range < RANGE_TOP:
            self.range <<= 8
            self._shift_low()

    def bin(self, bit: int, p1: int) -> None:
        bound = (self.range >> PROB_BITS) * p1
        if bit:
            self.range = bound
        else:
            self.low += bound
            self.range -= bound
        self._normalise()

    def bypass(self, value: int, nbits: int) -> None:
        for k in range(nbits - 1, -1, -1):
            self.range >>= 1
            if (value >> k) & 1:
                self.low += self.range
            self._normalise()

    def finish(self) -> bytes:
        for k in range(32, -1, -1):
            v = (self.low + (1 << k) - 1) & ~((1 << k) - 1)
            if v < self.low + self.range:
                self.low = v
                break
        start = len(self.out)
        for _ in range(5):
            self._shift_low()
        keep = max(start, len(self.out) - 4)
        while len(self.out) > keep and self.out[-1] == 0:
            self.out.pop()
        return bytes(self.out)


class RangeDecoder:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0
        self.code, self.range = 0, RANGE_MASK
        for _ in range(4):
            self.code = (self.code << 8) | self._byte()

    def _byte(self) -> int:
        b = self.data[self.pos] if self.pos < len(self.data) else 0
        self.pos += 1
        return b

    def _normalise(self) -> None:
        while self.range < RANGE_TOP:
            self.range = (self.range << 8) & RANGE_MASK
            self.code = ((self.code << 8) | self._byte()) & RANGE_MASK

    def bin(self, p1: int) -> int:
        bound = (self.range >> PROB_BITS) * p1
        if self.code < bound:
            self.range, bit = bound, 1
        else:
            self.code -= bound
            self.range -= bound
            bit = 0
        self._normalise()
        return bit

    def bypass(self, nbits: int) -> int:
        value = 0
        for _ in range(nbits):
            self.range >>= 1
            bit = int(self.code >= self.range)
            if bit:
                self.code -= self.range
            value = (value << 1) | bit
            self._normalise()
        return value


def _contexts(levels: Sequence[int], i: int, cols: int, activity: list[int]) -> tuple[int, int, int]:
    left = levels[i - 1] if i % cols else 0
    up = levels[i - cols] if i >= cols else 0
    a, b = min(abs(left), 2), min(abs(up), 2)
    act = activity[i % cols]
    c = 0 if act == 0 else (1 if act < ACT_HIGH else 2)

    def sign(v: int) -> int:
        return 0 if v == 0 else (1 if v > 0 else 2)

    return SIG_CTX + 9 * c + 3 * a + b, SIGN_CTX + 3 * sign(left) + sign(up), min(a + b, 2)


def temporal_class(ref: float, step: float) -> int:
    """Reference class of a co-located reference value: ``round(ref / step)`` (ties to even) in [-2, 2]."""
    return max(-2, min(2, round(ref / step)))


def _temporal(c_sig: int, c_sign: int, g: int, t: int) -> tuple[int, int, int]:
    """The contexts of a level whose reference class is ``t`` (``g`` becomes the gt context offset)."""
    if t == 0:
        return c_sig, c_sign, g
    a = abs(t)
    return (
        T_SIG_CTX + 27 * (a - 1) + c_sig - SIG_CTX,
        T_SIGN_CTX + 9 * (t < 0) + c_sign - SIGN_CTX,
        g + T_GT_CTX - GT_CTX + 36 * (a - 1),
    )


def _update_activity(activity: list[int], col: int, q: int) -> None:
    activity[col] = (activity[col] * 15 + 64 * min(abs(q), 2)) >> 4


def encode_levels(
    levels: Sequence[int],
    cols: int,
    rate_index: int = 0,
    dq: bool | int = False,
    refs: Sequence[int] | None = None,
    egctx: bool = False,
    tref: Sequence[int] | None = None,
) -> bytes:
    """Reference of ``nnc_fl._levels.encode_levels``; with ``dq``, of ``nnc_fl._dq.encode_indices_dq``
    (``levels`` are then the quantisation indices; ``dq=8``: the 8-state machine); with ``refs``
    (per row, the distance to the referenced row or 0), of ``nnc_fl._rowref.encode_rows``; with
    ``egctx`` (plain coding only), the Exp-Golomb prefix bins in contexts; with ``tref`` (plain
    coding only; per level its reference class, :func:`temporal_class`), temporal contexts."""
    assert not ((egctx or tref is not None) and (dq or refs is not None))
    n_ctx = N_CONTEXTS_ROWS if refs is not None else (N_CONTEXTS_DQ if dq else N_CONTEXTS_EG)
    if tref is not None:
        n_ctx = N_CONTEXTS_T
    model, enc = _Model(rate_index, n_ctx), RangeEncoder()
    levels = [int(v) for v in levels]
    activity = [0] * cols
    state, states = 0, (8 if dq == 8 else 4)
    d = 0
    for i, q in enumerate(levels):
        assert abs(q) <= (MAX_DQ_INDEX if dq else MAX_LEVEL)
        row = i // cols
        if refs is not None and i % cols == 0 and row > 0:
            d = int(refs[row])
            enc.bin(int(d > 0), model.p1(REF_CTX))
            model.update(REF_CTX, int(d > 0))
            if d:
                enc.bypass(d - 1, (row - 1).bit_length())
        c_sig, c_sign, g = _contexts(levels, i, cols, activity)
        if tref is not None:
            c_sig, c_sign, g = _temporal(c_sig, c_sign, g, int(tref[i]))
        if dq:
            c_sig += dq_sig_base(state, states)
            state = dq_next(state, q, states)
        _update_activity(activity, i % cols, q)
        if d:
            ref = levels[i - d * cols]
            c_eq = EQ_CTX + min(abs(ref), 2)
            enc.bin(int(q == ref), model.p1(c_eq))
            model.update(c_eq, int(q == ref))
            if q == ref:
                continue
        for c, bit in ((c_sig, int(q != 0)),) + (((c_sign, int(q < 0)),) if q else ()):
            enc.bin(bit, model.p1(c))
            model.update(c, bit)
        if q == 0:
            continue
        m = abs(q)
        for k in range(1, GT_FLAGS + 1):
            c, bit = GT_CTX + 3 * (k - 1) + g, int(m > k)
            enc.bin(bit, model.p1(c))
            model.update(c, bit)
            if not bit:
                break
        if m > GT_FLAGS:
            x = m - GT_FLAGS
            nb = x.bit_length() - 1
            if egctx:
                for j in range(nb + 1):
                    c = EG_CTX + min(j, EG_CONTEXTS - 1)
                    enc.bin(int(j < nb), model.p1(c))
                    model.update(c, int(j < nb))
            else:
                enc.bypass((1 << (nb + 1)) - 2, nb + 1)
            enc.bypass(x, nb)
    return enc.finish()


def decode_levels(
    data: bytes,
    n: int,
    cols: int,
    rate_index: int = 0,
    stats: dict | None = None,
    dq: bool | int = False,
    rows: bool = False,
    egctx: bool = False,
    tref: Sequence[int] | None = None,
) -> list[int]:
    """Reference of ``nnc_fl._levels.decode_levels`` (with ``dq``: ``nnc_fl._dq.decode_levels_dq``,
    returning reconstruction levels; with ``rows``: ``nnc_fl._rowref.decode_rows``; ``egctx`` and
    ``tref`` as for :func:`encode_levels`) for valid payloads.

    If ``stats`` is given, ``stats["bytes_read"]`` receives how many bytes the decoder consumed.
    """
    n_ctx = N_CONTEXTS_ROWS if rows else (N_CONTEXTS_DQ if dq else N_CONTEXTS_EG)
    if tref is not None:
        n_ctx = N_CONTEXTS_T
    model, dec = _Model(rate_index, n_ctx), RangeDecoder(data)
    levels: list[int] = []  # the coded integers: levels, or indices with dq
    out: list[int] = []
    activity = [0] * cols
    state, states = 0, (8 if dq == 8 else 4)
    d = 0
    for i in range(n):
        row = i // cols
        if rows and i % cols == 0 and row > 0:
            d = 0
            if dec.bin(model.p1(REF_CTX)):
                model.update(REF_CTX, 1)
                d = dec.bypass((row - 1).bit_length()) + 1
                assert d <= row  # the kernel reports BAD_REF
            else:
                model.update(REF_CTX, 0)
        c_sig, c_sign, g = _contexts(levels, i, cols, activity)
        if tref is not None:
            c_sig, c_sign, g = _temporal(c_sig, c_sign, g, int(tref[i]))
        quantiser_state = state
        if dq:
            c_sig += dq_sig_base(state, states)
        q = None
        if d:
            ref = levels[i - d * cols]
            c_eq = EQ_CTX + min(abs(ref), 2)
            eq = dec.bin(model.p1(c_eq))
            model.update(c_eq, eq)
            if eq:
                q = ref
        if q is None:
            q = _decode_value(dec, model, c_sig, c_sign, g, egctx)
        levels.append(q)
        out.append(dq_level(q, quantiser_state, states) if dq else q)
        state = dq_next(state, q, states)
        _update_activity(activity, i % cols, q)
    if stats is not None:
        stats["bytes_read"] = dec.pos
    return out


def _decode_value(dec: RangeDecoder, model: _Model, c_sig: int, c_sign: int, g: int, egctx: bool = False) -> int:
    """The bins of one level (or index): significance, sign, greater-than flags, Exp-Golomb."""
    sig = dec.bin(model.p1(c_sig))
    model.update(c_sig, sig)
    if not sig:
        return 0
    neg = dec.bin(model.p1(c_sign))
    model.update(c_sign, neg)
    m = 1
    for k in range(1, GT_FLAGS + 1):
        c = GT_CTX + 3 * (k - 1) + g
        bit = dec.bin(model.p1(c))
        model.update(c, bit)
        if not bit:
            break
        m = k + 1
    if m > GT_FLAGS:
        nb = 0
        while True:
            if egctx:
                c = EG_CTX + min(nb, EG_CONTEXTS - 1)
                one = dec.bin(model.p1(c))
                model.update(c, one)
            else:
                one = dec.bypass(1)
            if not one:
                break
            nb += 1
            assert nb <= MAX_EG_PREFIX  # the kernel reports BAD_LEVEL
        m = GT_FLAGS + ((1 << nb) | dec.bypass(nb))
    return -m if neg else m


# --- Lossless float coding (FORMAT.md, "Mode float-lossless") -------------------------------------

#: (exponent bits, mantissa bits) of IEEE binary16, binary32 and binary64, by item size.
FLOAT_FIELDS = {2: (5, 10), 4: (8, 23), 8: (11, 52)}
#: Payload header: u8 tz, u8 flags (bit 0: full profile), u16 e_top.
FLOAT_HEADER_BYTES = 4
FLOAT_FLAG_FULL = 1
#: Context-coded unary bins of the exponent distance before the bypass escape.
FLOAT_UNARY_BINS = 20
#: Top mantissa bits coded down a tree of contexts, per distance class; distance classes.
FLOAT_TREE_BITS = 2
FLOAT_CLASSES = 32
#: (fast, slow) shifts of the sign, exponent and tree contexts, and of the full profile's low bits.
FLOAT_RATES = (5, 8)
FLOAT_LOW_RATES = (7, 10)
#: Context numbers: the sign, 20 unary bins, 3 tree nodes per class, the escape tree's nodes (from
#: FLOAT_ESC_CTX, 2**esc_bits numbers), then the full profile's low bits (`low` per class).
FLOAT_SIGN_CTX = 0
FLOAT_EXP_CTX = 1
FLOAT_TREE_CTX = 21
FLOAT_ESC_CTX = 117


class _FloatModel:
    """Contexts of the float-lossless mode: the estimator of :class:`_Model`, rates given per bin."""

    def __init__(self, n_contexts: int):
        self.p = [[P_INIT, P_INIT] for _ in range(n_contexts)]
        self.count = [0] * n_contexts

    def p1(self, c: int) -> int:
        return min(max((self.p[c][0] + self.p[c][1]) >> 2, PROB_MIN), PROB_ONE - PROB_MIN)

    def update(self, c: int, bit: int, rates: tuple[int, int]) -> None:
        fast, slow = rates
        if self.count[c] < WARMUP_BINS:
            warm = warmup_shift(self.count[c])
            fast, slow = min(fast, warm), min(slow, warm)
            self.count[c] += 1
        for j, shift in ((0, fast), (1, slow)):
            if bit:
                self.p[c][j] += (65536 - self.p[c][j]) >> shift
            else:
                self.p[c][j] -= self.p[c][j] >> shift


def _float_layout(itemsize: int, tz: int) -> tuple[int, int, int, int, int]:
    """(exponent bits, mantissa bits, kept mantissa bits mp, tree bits, low bits) for ``tz``."""
    ebits, mbits = FLOAT_FIELDS[itemsize]
    mp = mbits - tz
    tree = min(FLOAT_TREE_BITS, mp)
    return ebits, mbits, mp, tree, mp - tree


def encode_floats(patterns: Sequence[int], itemsize: int, full: bool = False) -> bytes:
    """Reference of the float-lossless payload of the values with bit patterns ``patterns``
    (unsigned integers of ``8 * itemsize`` bits, finite values), in the fast or the ``full`` profile
    (``nnc_fl._floatcoder.encode_float_payload(values, full)``)."""
    ebits, mbits = FLOAT_FIELDS[itemsize]
    fields = [(p >> (ebits + mbits), (p >> mbits) & ((1 << ebits) - 1), p & ((1 << mbits) - 1)) for p in patterns]
    e_top = max(e for _, e, _ in fields)
    assert e_top < (1 << ebits) - 1  # no NaN or Inf
    mant_or = 0
    for _, _, m in fields:
        mant_or |= m
    tz = mbits if mant_or == 0 else (mant_or & -mant_or).bit_length() - 1
    _, _, mp, tree, low = _float_layout(itemsize, tz)
    full = bool(full) and low > 0
    esc_bits = max(e_top - FLOAT_UNARY_BINS, 0).bit_length()
    low_ctx = FLOAT_ESC_CTX + (1 << esc_bits)
    model, enc = _FloatModel(low_ctx + FLOAT_CLASSES * low), RangeEncoder()

    def code(c: int, bit: int, rates: tuple[int, int] = FLOAT_RATES) -> None:
        enc.bin(bit, model.p1(c))
        model.update(c, bit, rates)

    raw = 0
    for i, (s, e, m) in enumerate(fields):
        m >>= tz
        code(FLOAT_SIGN_CTX, s)
        d = e_top - e
        for k in range(FLOAT_UNARY_BINS):
            code(FLOAT_EXP_CTX + k, int(d > k))
            if d <= k:
                break
        else:  # escape: d - FLOAT_UNARY_BINS down a tree of esc_bits bins
            node = 1
            for j in range(esc_bits):
                bit = ((d - FLOAT_UNARY_BINS) >> (esc_bits - 1 - j)) & 1
                code(FLOAT_ESC_CTX + node - 1, bit)
                node = 2 * node + bit
        cls = min(d, FLOAT_CLASSES - 1)
        node = 1
        for j in range(tree):
            bit = (m >> (mp - 1 - j)) & 1
            code(FLOAT_TREE_CTX + 3 * cls + node - 1, bit)
            node = 2 * node + bit
        if full:
            for j in range(low):
                code(low_ctx + low * cls + j, (m >> (low - 1 - j)) & 1, FLOAT_LOW_RATES)
        else:
            raw |= (m & ((1 << low) - 1)) << (i * low)
    head = bytes([tz, FLOAT_FLAG_FULL if full else 0]) + e_top.to_bytes(2, "little")
    tail = b"" if full else raw.to_bytes((len(fields) * low + 7) // 8, "little")
    return head + enc.finish() + tail


def decode_floats(payload: bytes, n: int, itemsize: int, stats: dict | None = None) -> list[int]:
    """Reference decoder of a valid float-lossless payload of ``n`` values: their bit patterns.

    If ``stats`` is given, ``stats["bytes_read"]`` receives how many bytes the range decoder
    consumed (of the coded part).
    """
    tz, flags, e_top = payload[0], payload[1], int.from_bytes(payload[2:4], "little")
    ebits, mbits, _, tree, low = _float_layout(itemsize, tz)
    full = bool(flags & FLOAT_FLAG_FULL)
    raw_size = 0 if full else (n * low + 7) // 8
    coded = payload[FLOAT_HEADER_BYTES : len(payload) - raw_size]
    raw = int.from_bytes(payload[len(payload) - raw_size :], "little")
    esc_bits = max(e_top - FLOAT_UNARY_BINS, 0).bit_length()
    low_ctx = FLOAT_ESC_CTX + (1 << esc_bits)
    model, dec = _FloatModel(low_ctx + FLOAT_CLASSES * low), RangeDecoder(coded)

    def bin_(c: int, rates: tuple[int, int] = FLOAT_RATES) -> int:
        bit = dec.bin(model.p1(c))
        model.update(c, bit, rates)
        return bit

    out = []
    for i in range(n):
        s = bin_(FLOAT_SIGN_CTX)
        d = 0
        while True:
            if d == FLOAT_UNARY_BINS:
                node = 1
                for _ in range(esc_bits):
                    node = 2 * node + bin_(FLOAT_ESC_CTX + node - 1)
                d += node - (1 << esc_bits)
                break
            if not bin_(FLOAT_EXP_CTX + d):
                break
            d += 1
        assert d <= e_top  # the kernel reports BAD_EXPONENT
        cls = min(d, FLOAT_CLASSES - 1)
        node = 1
        for _ in range(tree):
            node = 2 * node + bin_(FLOAT_TREE_CTX + 3 * cls + node - 1)
        m = node - (1 << tree)
        if full:
            for j in range(low):
                m = (m << 1) | bin_(low_ctx + low * cls + j, FLOAT_LOW_RATES)
        else:
            m = (m << low) | ((raw >> (i * low)) & ((1 << low) - 1))
        out.append((s << (ebits + mbits)) | ((e_top - d) << mbits) | (m << tz))
    if stats is not None:
        stats["bytes_read"] = dec.pos
    return out
