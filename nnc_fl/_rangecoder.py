"""Binary range coder (the coding engine), apart from any probability model.

A multiplication-based binary arithmetic coder with a 32-bit range, 15-bit probabilities and LZMA-style
carry handling (a cached byte plus a count of pending 0xFF bytes). Bins are coded either with a
probability of a one, ``p1`` in ``[PROB_MIN, PROB_ONE - PROB_MIN]`` (context-coded bins), or with
probability 1/2 (bypass bins).

Coder state travels as tuples of integers (encoder ``(low, range, cache, pending, pos)``, decoder
``(code, range, pos)``) that each primitive takes and returns, so numba keeps it in registers (the
encoder with its state in an int64 array measured about 2x slower per bin). Every intermediate fits
in int64 (``low`` < 2^33, ``code`` and ``range`` < 2^32), so the primitives give the same results as
plain Python with ``NUMBA_DISABLE_JIT=1``. The encoder writes into a caller-provided buffer of at
least :func:`enc_room` bytes plus room for the bins still to be coded (callers size it once per span
of values, with :func:`enc_reserve`). The decoder reads zero bytes past the end of its input, so
truncated or hostile payloads decode to something bounded instead of reading out of bounds;
integrity is the CRC's job.

The very first byte an LZMA-style encoder emits is always zero; it is not written, and the decoder
starts from four bytes instead of five. After the final flush, trailing zero bytes that the flush
produced (at most four) are dropped, since the decoder reads zeros there anyway.
"""

import numpy as np

from ._jit import jit, jit_inline

PROB_BITS = 15
PROB_ONE = 1 << PROB_BITS
#: Smallest probability either symbol may get (bounds the cost of a bin to at most ~10 bits and the
#: number of bins a byte can carry, which the decoder relies on to bound allocations).
PROB_MIN = 32
_TOP = 1 << 24
_MASK32 = 0xFFFFFFFF


@jit_inline
def enc_init():
    """Fresh encoder state ``(low, range, cache, pending, pos)``; ``pos = -1`` skips the leading zero.

    ``pending`` counts the bytes held back: the cached byte and the 0xFF bytes after it.
    """
    return 0, _MASK32, 0, 1, -1


@jit_inline
def _shift_low(low, cache, pending, pos, buf):
    if low < 0xFF000000 or low > _MASK32:
        carry = low >> 32
        value = cache
        while pending > 0:
            # pos == -1 only for the virtual leading byte, which is always zero and never written
            if pos >= 0:
                buf[pos] = (value + carry) & 0xFF
            pos += 1
            value = 0xFF
            pending -= 1
        cache = (low >> 24) & 0xFF
    pending += 1
    low = (low & 0x00FFFFFF) << 8
    return low, cache, pending, pos


@jit_inline
def enc_bin(state, buf, bit, p1):
    """Code ``bit`` whose probability of being 1 is ``p1 / PROB_ONE``; return the new state."""
    low, rng, cache, pending, pos = state
    bound = (rng >> PROB_BITS) * p1
    if bit:
        rng = bound
    else:
        low += bound
        rng -= bound
    while rng < _TOP:
        rng <<= 8
        low, cache, pending, pos = _shift_low(low, cache, pending, pos, buf)
    return low, rng, cache, pending, pos


@jit_inline
def enc_bypass(state, buf, value, nbits):
    """Code the ``nbits`` low bits of ``value`` (most significant first) with probability 1/2."""
    low, rng, cache, pending, pos = state
    for k in range(nbits - 1, -1, -1):
        rng >>= 1
        if (value >> k) & 1:
            low += rng
        while rng < _TOP:
            rng <<= 8
            low, cache, pending, pos = _shift_low(low, cache, pending, pos, buf)
    return low, rng, cache, pending, pos


@jit_inline
def enc_room(state):
    """Buffer size that holds the bytes written so far, the pending ones and the final flush.

    Each byte shifted out of ``low`` adds one to ``pos + pending``: coding more bins needs about one
    more byte per 8 bits they cost.
    """
    return max(state[4], 0) + state[3] + 64


@jit
def enc_reserve(buf, state, nbytes):
    """``buf``, or a larger copy of what is written so far, with room for the bytes written, the
    pending ones, the final flush (:func:`enc_room`) and ``nbytes`` more."""
    need = enc_room(state) + nbytes
    if need <= buf.size:
        return buf
    grown = np.empty(max(2 * buf.size, need), np.uint8)
    used = max(state[4], 0)
    grown[:used] = buf[:used]
    return grown


@jit_inline
def enc_finish(state, buf):
    """Flush: pick the value in [low, low + range) with most trailing zeros, emit it; return length."""
    low, rng, cache, pending, pos = state
    for k in range(32, -1, -1):
        mask = (1 << k) - 1
        v = (low + mask) & ~mask
        if v < low + rng:
            low = v
            break
    start = pos
    for _ in range(5):
        low, cache, pending, pos = _shift_low(low, cache, pending, pos, buf)
    # at most 4 dropped, so a decoder never reads more than 4 zero bytes past a valid payload
    keep = max(start, pos - 4)
    while pos > keep and buf[pos - 1] == 0:
        pos -= 1
    return pos


@jit_inline
def dec_init(data):
    """Decoder state ``(code, range, pos)`` after reading the first four bytes."""
    n = data.size
    code = 0
    # int(): numba widens a uint8 byte to int64 anyway; plain Python (NUMBA_DISABLE_JIT=1) would keep
    # numpy's uint8 and overflow in the shift below
    for k in range(4):
        code = (code << 8) | (int(data[k]) if k < n else 0)
    return code, _MASK32, 4


@jit_inline
def _dec_normalise(code, rng, pos, data):
    n = data.size
    while rng < _TOP:
        b = int(data[pos]) if pos < n else 0
        pos += 1
        rng = (rng << 8) & _MASK32
        code = ((code << 8) | b) & _MASK32
    return code, rng, pos


@jit_inline
def dec_bin(state, data, p1):
    """Decode one bin coded with :func:`enc_bin` at probability ``p1``; return (bit, state)."""
    code, rng, pos = state
    bound = (rng >> PROB_BITS) * p1
    if code < bound:
        rng = bound
        bit = 1
    else:
        code -= bound
        rng -= bound
        bit = 0
    return bit, _dec_normalise(code, rng, pos, data)


@jit_inline
def dec_bypass(state, data, nbits):
    """Decode ``nbits`` bypass bins (most significant first) into an integer; return (value, state)."""
    code, rng, pos = state
    value = 0
    for _ in range(nbits):
        rng >>= 1
        bit = 0
        if code >= rng:
            code -= rng
            bit = 1
        value = (value << 1) | bit
        code, rng, pos = _dec_normalise(code, rng, pos, data)
    return value, (code, rng, pos)
