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
#: Significance contexts of states 2 and 3 (sets 1 and 2) follow the 72 of plain coding.
DQ_SIG_CTX = 72
N_CONTEXTS_DQ = 126
MAX_DQ_INDEX = 1 << 61

# --- Row references (tools bit 3; FORMAT.md, "Row references") ------------------------------------

#: Context of the per-row reference flag, then 3 equal-flag contexts (by min(|referenced|, 2)).
REF_CTX = 126
EQ_CTX = 127
N_CONTEXTS_ROWS = 130


def dq_sig_base(state: int) -> int:
    return 0 if state < 2 else DQ_SIG_CTX + 27 * (state - 2)


def dq_level(k: int, state: int) -> int:
    """Reconstruction level of index k: 2k in Q0 (states 0, 1), 2k - sgn(k) in Q1 (states 2, 3)."""
    if state < 2 or k == 0:
        return 2 * k
    return 2 * k - (1 if k > 0 else -1)


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


def _update_activity(activity: list[int], col: int, q: int) -> None:
    activity[col] = (activity[col] * 15 + 64 * min(abs(q), 2)) >> 4


def encode_levels(
    levels: Sequence[int], cols: int, rate_index: int = 0, dq: bool = False, refs: Sequence[int] | None = None
) -> bytes:
    """Reference of ``nnc_fl._levels.encode_levels``; with ``dq``, of ``nnc_fl._dq.encode_indices_dq``
    (``levels`` are then the quantisation indices); with ``refs`` (per row, the distance to the
    referenced row or 0), of ``nnc_fl._rowref.encode_rows``."""
    n_ctx = N_CONTEXTS_ROWS if refs is not None else (N_CONTEXTS_DQ if dq else N_CONTEXTS)
    model, enc = _Model(rate_index, n_ctx), RangeEncoder()
    levels = [int(v) for v in levels]
    activity = [0] * cols
    state = 0
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
        if dq:
            c_sig += dq_sig_base(state)
            state = DQ_TRANS[state][q & 1]
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
            enc.bypass((1 << (nb + 1)) - 2, nb + 1)
            enc.bypass(x, nb)
    return enc.finish()


def decode_levels(
    data: bytes,
    n: int,
    cols: int,
    rate_index: int = 0,
    stats: dict | None = None,
    dq: bool = False,
    rows: bool = False,
) -> list[int]:
    """Reference of ``nnc_fl._levels.decode_levels`` (with ``dq``: ``nnc_fl._dq.decode_levels_dq``,
    returning reconstruction levels; with ``rows``: ``nnc_fl._rowref.decode_rows``) for valid payloads.

    If ``stats`` is given, ``stats["bytes_read"]`` receives how many bytes the decoder consumed.
    """
    n_ctx = N_CONTEXTS_ROWS if rows else (N_CONTEXTS_DQ if dq else N_CONTEXTS)
    model, dec = _Model(rate_index, n_ctx), RangeDecoder(data)
    levels: list[int] = []  # the coded integers: levels, or indices with dq
    out: list[int] = []
    activity = [0] * cols
    state = 0
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
        quantiser_state = state
        if dq:
            c_sig += dq_sig_base(state)
        q = None
        if d:
            ref = levels[i - d * cols]
            c_eq = EQ_CTX + min(abs(ref), 2)
            eq = dec.bin(model.p1(c_eq))
            model.update(c_eq, eq)
            if eq:
                q = ref
        if q is None:
            q = _decode_value(dec, model, c_sig, c_sign, g)
        levels.append(q)
        out.append(dq_level(q, quantiser_state) if dq else q)
        state = DQ_TRANS[state][q & 1]
        _update_activity(activity, i % cols, q)
    if stats is not None:
        stats["bytes_read"] = dec.pos
    return out


def _decode_value(dec: RangeDecoder, model: _Model, c_sig: int, c_sign: int, g: int) -> int:
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
        while dec.bypass(1):
            nb += 1
            assert nb <= MAX_EG_PREFIX  # the kernel reports BAD_LEVEL
        m = GT_FLAGS + ((1 << nb) | dec.bypass(nb))
    return -m if neg else m
