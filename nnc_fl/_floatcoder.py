"""Lossless coding of float tensors (mode float-lossless): kernels and the payload around them.

Each IEEE value is split into its sign ``s``, biased exponent ``e`` and mantissa ``m`` (5 + 10 bits
for float16, 8 + 23 for float32, 11 + 52 for float64). The payload header gives ``e_top`` (the
largest exponent of the tensor) and ``tz`` (low mantissa bits that are zero in every value, e.g.
the 16 of a bfloat16 model stored as float32; they are not sent), so ``m' = m >> tz`` has
``mp = M - tz`` bits. Per value, with the binary range coder of :mod:`nnc_fl._rangecoder`:

- the sign, in one adaptive context;
- ``d = e_top - e`` in unary: bins ``d > k`` for ``k = 0 .. UNARY_BINS - 1``, context ``k``, up to
  the first 0; ``d >= UNARY_BINS`` continues as ``d - UNARY_BINS`` in ``esc_bits`` bins down a
  binary tree of contexts (zeros and outliers far from ``e_top`` stay cheap once learnt);
- the top ``min(TREE_BITS, mp)`` bits of ``m'`` down a binary tree of contexts (3 per class), the
  class being ``min(d, CLASSES - 1)``;
- the ``low`` remaining bits of ``m'``: in the *fast* profile they are not coded but packed, as
  they are, into a raw part after the coded part; in the *full* profile each is coded in a context
  of its own per (class, position).

Measured on trained and freshly initialised CNNs and MLPs (experiments/bench_lossless.py, FORMAT.md)
the exponent carries the redundancy (~2-2.6 of its 8 bits) and the mantissa is near-random, except
for its top bits given the exponent (~0.1 % of the size) and, in initial weights drawn by a uniform
generator, the low bits of small values (what the full profile is for: ~4 % smaller on such
tensors). Conditioning the exponent on the previous value's or the upper row's exponent class gained
nothing (+-0.05 %), and a binary tree over the exponent cost 0.05 % more than the unary code.

:mod:`nnc_fl.reference` is the pure-Python twin; the tests pin the two bit for bit.
"""

from __future__ import annotations

import numpy as np

from ._jit import jit, jit_inline
from ._probability import new_contexts, p_one, update
from ._rangecoder import dec_bin, dec_init, enc_bin, enc_finish, enc_init, enc_reserve
from .errors import FormatError

#: (exponent bits, mantissa bits) by item size: IEEE binary16, binary32, binary64.
FLOAT_FIELDS = {2: (5, 10), 4: (8, 23), 8: (11, 52)}
#: u8 tz, u8 flags, u16 e_top.
HEADER_BYTES = 4
#: Flags byte: bit 0 selects the full profile (every mantissa bit context coded, no raw part).
FLAG_FULL = 0x01
_KNOWN_FLAGS = FLAG_FULL
#: Unary bins (each with its own context) of the exponent distance before the bypass escape.
UNARY_BINS = 20
#: Top mantissa bits coded down a tree of contexts, per distance class.
TREE_BITS = 2
#: Distance classes ``min(e_top - e, CLASSES - 1)`` of the mantissa contexts.
CLASSES = 32
#: (fast, slow) adaptation shifts of the sign, exponent and tree contexts, and of the full
#: profile's low-bit contexts (slower: those bits are mostly near-random).
RATES = (5, 8)
LOW_RATES = (7, 10)
SIGN_CTX = 0
EXP_CTX = 1
TREE_CTX = EXP_CTX + UNARY_BINS
#: The escape tree's nodes (``2**esc_bits - 1``), then the full profile's low bits (``low`` per class).
ESC_CTX = TREE_CTX + 3 * CLASSES
#: A decoder may read this many bytes past the coded part (zeros) without the part being short.
READ_SLACK = 8
#: Every value costs at least two context bins (sign, first exponent bin), and no bin costs less
#: than ~1/709 bit: a coded part of C bytes cannot carry more than (C + 16) << 14 values.
ELEMENTS_PER_BYTE_SHIFT = 14

# decoder status codes
OK = 0
BAD_EXPONENT = 1
SHORT_PAYLOAD = 2

#: Values coded between two checks of the output buffer's room.
_SPAN = 4096
#: Upper bound of the bytes one value adds: 1 + 20 + 11 + 2 + 50 context bins of <= 10 bits each.
_MAX_BYTES_PER_VALUE = 112
#: The encoder tries the full profile when the low bits of about _SAMPLE evenly spaced values
#: promise to save this share of their size (an encoder choice, not part of the format).
_FULL_TRY_SAVING = 0.02
_SAMPLE = 1 << 14


@jit_inline
def _fields(data, i, itemsize, mbits):
    """``(sign, exponent, mantissa)`` of value ``i`` of the little-endian element bytes ``data``."""
    base = i * itemsize
    top = int(data[base + itemsize - 1])
    v = top & 0x7F
    for k in range(itemsize - 2, -1, -1):
        v = (v << 8) | int(data[base + k])
    return top >> 7, v >> mbits, v & ((1 << mbits) - 1)


@jit_inline
def _store(out, i, itemsize, s, v):
    """Write the value of sign ``s`` and other bits ``v`` (< 2**(8 itemsize - 1)) as element ``i``."""
    base = i * itemsize
    for k in range(itemsize - 1):
        out[base + k] = v & 0xFF
        v >>= 8
    out[base + itemsize - 1] = (v & 0x7F) | (s << 7)


@jit_inline
def _bitlength(x):
    n = 0
    while x >> n:
        n += 1
    return n


@jit_inline
def _layout(mbits, tz, e_top):
    """``(mp, tree, low, esc_bits, low_ctx)``: the mantissa bits coded (``m >> tz``), the top ones
    coded down the tree and the low ones after them, the escape tree's depth, the first low-bit context."""
    mp = mbits - tz
    tree = min(TREE_BITS, mp)
    esc_bits = _bitlength(max(e_top - UNARY_BINS, 0))
    return mp, tree, mp - tree, esc_bits, ESC_CTX + (1 << esc_bits)


@jit
def scan_floats(data, itemsize, mbits):
    """``(e_top, mantissa_or)``: the largest exponent, and the OR of all mantissas (for ``tz``)."""
    e_top = 0
    mant_or = 0
    for i in range(data.size // itemsize):
        _, e, m = _fields(data, i, itemsize, mbits)
        e_top = max(e_top, e)
        mant_or |= m
    return e_top, mant_or


@jit
def low_bit_counts(data, itemsize, mbits, tz, e_top, stride):
    """Every ``stride``-th value's low mantissa bits by class: ``counts[c, 0]`` values of class
    ``c``, ``counts[c, 1 + j]`` ones among them at low position ``j`` (most significant first)."""
    mp = mbits - tz
    low = mp - min(TREE_BITS, mp)
    counts = np.zeros((CLASSES, low + 1), np.int64)
    for i in range(0, data.size // itemsize, stride):
        _, e, m = _fields(data, i, itemsize, mbits)
        c = min(e_top - e, CLASSES - 1)
        counts[c, 0] += 1
        m >>= tz
        for j in range(low):
            counts[c, 1 + j] += (m >> (low - 1 - j)) & 1
    return counts


@jit
def _with_room(buf, st, n_values):
    """``buf``, or a larger copy, with room for ``n_values`` more values and the final flush."""
    return enc_reserve(buf, st, _MAX_BYTES_PER_VALUE * n_values)


@jit
def _encode_span(data, start, stop, itemsize, mbits, tz, e_top, full, ctx, st, buf):
    mp, tree, low, esc_bits, low_ctx = _layout(mbits, tz, e_top)
    fast, slow = RATES
    low_fast, low_slow = LOW_RATES
    for i in range(start, stop):
        s, e, m = _fields(data, i, itemsize, mbits)
        m >>= tz
        st = enc_bin(st, buf, s, p_one(ctx, SIGN_CTX))
        update(ctx, SIGN_CTX, s, fast, slow)
        d = e_top - e
        k = 0
        while True:
            if k == UNARY_BINS:
                node = 1
                for j in range(esc_bits):
                    bit = ((d - UNARY_BINS) >> (esc_bits - 1 - j)) & 1
                    st = enc_bin(st, buf, bit, p_one(ctx, ESC_CTX + node - 1))
                    update(ctx, ESC_CTX + node - 1, bit, fast, slow)
                    node = 2 * node + bit
                break
            bit = 1 if d > k else 0
            st = enc_bin(st, buf, bit, p_one(ctx, EXP_CTX + k))
            update(ctx, EXP_CTX + k, bit, fast, slow)
            if bit == 0:
                break
            k += 1
        cls = min(d, CLASSES - 1)
        node = 1
        for j in range(tree):
            bit = (m >> (mp - 1 - j)) & 1
            c = TREE_CTX + 3 * cls + node - 1
            st = enc_bin(st, buf, bit, p_one(ctx, c))
            update(ctx, c, bit, fast, slow)
            node = 2 * node + bit
        if full:
            for j in range(low):
                bit = (m >> (low - 1 - j)) & 1
                c = low_ctx + low * cls + j
                st = enc_bin(st, buf, bit, p_one(ctx, c))
                update(ctx, c, bit, low_fast, low_slow)
    return st


@jit
def encode_floats(data, itemsize, mbits, tz, e_top, full):
    """The coded part for the values of ``data`` (little-endian element bytes; exponents at most
    ``e_top`` and mantissas with ``tz`` zero low bits, both checked by the caller)."""
    n = data.size // itemsize
    _, _, low, _, low_ctx = _layout(mbits, tz, e_top)
    ctx = new_contexts(low_ctx + CLASSES * low)
    st = enc_init()
    buf = np.empty(n + 256, np.uint8)
    for start in range(0, n, _SPAN):
        stop = min(start + _SPAN, n)
        buf = _with_room(buf, st, stop - start)
        st = _encode_span(data, start, stop, itemsize, mbits, tz, e_top, full, ctx, st, buf)
    buf = _with_room(buf, st, 0)
    return buf[: enc_finish(st, buf)].copy()


@jit
def pack_low_bits(data, itemsize, mbits, tz):
    """The raw part of the fast profile: the low ``low`` bits of each ``m >> tz``, value ``i`` at
    bit offset ``i * low`` of a little-endian bit string (zero padded to whole bytes)."""
    n = data.size // itemsize
    mp = mbits - tz
    low = mp - min(TREE_BITS, mp)
    out = np.zeros((n * low + 7) // 8, np.uint8)
    acc = 0
    nacc = 0
    pos = 0
    for i in range(n):
        _, _, m = _fields(data, i, itemsize, mbits)
        acc |= ((m >> tz) & ((1 << low) - 1)) << nacc
        nacc += low
        while nacc >= 8:
            out[pos] = acc & 0xFF
            acc >>= 8
            nacc -= 8
            pos += 1
    if nacc > 0:
        out[pos] = acc
    return out


@jit
def decode_floats(coded, raw, n, itemsize, mbits, tz, e_top, full):
    """Mirror of :func:`encode_floats` (and of :func:`pack_low_bits` for the fast profile's
    ``raw`` part): ``(element bytes, status)``."""
    _, tree, low, esc_bits, low_ctx = _layout(mbits, tz, e_top)
    fast, slow = RATES
    low_fast, low_slow = LOW_RATES
    ctx = new_contexts(low_ctx + CLASSES * low)
    out = np.zeros(n * itemsize, np.uint8)
    st = dec_init(coded)
    acc = 0
    nacc = 0
    pos = 0
    for i in range(n):
        s, st = dec_bin(st, coded, p_one(ctx, SIGN_CTX))
        update(ctx, SIGN_CTX, s, fast, slow)
        d = 0
        k = 0
        while True:
            if k == UNARY_BINS:
                node = 1
                for _ in range(esc_bits):
                    bit, st = dec_bin(st, coded, p_one(ctx, ESC_CTX + node - 1))
                    update(ctx, ESC_CTX + node - 1, bit, fast, slow)
                    node = 2 * node + bit
                d = UNARY_BINS + node - (1 << esc_bits)
                break
            bit, st = dec_bin(st, coded, p_one(ctx, EXP_CTX + k))
            update(ctx, EXP_CTX + k, bit, fast, slow)
            if bit == 0:
                d = k
                break
            k += 1
        if d > e_top:
            return out, BAD_EXPONENT
        cls = min(d, CLASSES - 1)
        node = 1
        for _ in range(tree):
            c = TREE_CTX + 3 * cls + node - 1
            bit, st = dec_bin(st, coded, p_one(ctx, c))
            update(ctx, c, bit, fast, slow)
            node = 2 * node + bit
        m = node - (1 << tree)
        if full:
            for j in range(low):
                c = low_ctx + low * cls + j
                bit, st = dec_bin(st, coded, p_one(ctx, c))
                update(ctx, c, bit, low_fast, low_slow)
                m = (m << 1) | bit
        else:
            while nacc < low:
                acc |= (int(raw[pos]) if pos < raw.size else 0) << nacc
                nacc += 8
                pos += 1
            m = (m << low) | (acc & ((1 << low) - 1))
            acc >>= low
            nacc -= low
        _store(out, i, itemsize, s, (((e_top - d) << mbits) | (m << tz)))
        if st[2] > coded.size + READ_SLACK:
            return out, SHORT_PAYLOAD
    return out, OK


# --- the payload (plain Python around the kernels) -----------------------------------------------


def _element_bytes(values: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(values).reshape(-1)
    return flat.astype(flat.dtype.newbyteorder("<"), copy=False).view(np.uint8)


def _full_pays(counts: np.ndarray) -> bool:
    """Whether the sampled low bits (:func:`low_bit_counts`) promise the full profile a saving of
    at least ``_FULL_TRY_SAVING`` of their raw size (order-0 entropy per context)."""
    n = counts[:, :1].astype(np.float64)
    ones = counts[:, 1:].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n > 0, ones / np.maximum(n, 1), 0.5)
        h = -(p * np.log2(np.where(p > 0, p, 1)) + (1 - p) * np.log2(np.where(p < 1, 1 - p, 1)))
    total = float(n.sum()) * ones.shape[1]
    return float((n * (1.0 - h)).sum()) > _FULL_TRY_SAVING * total


def encode_float_payload(values: np.ndarray, full: bool | None = None) -> bytes:
    """The float-lossless payload of a non-empty float16/32/64 array (FORMAT.md).

    ``full`` forces a profile; by default the fast one, or the full one when a sample of the low
    mantissa bits suggests it saves and it does come out smaller. Raises ``ValueError`` for NaN or
    infinite values.
    """
    data = _element_bytes(values)
    itemsize = values.dtype.itemsize
    ebits, mbits = FLOAT_FIELDS[itemsize]
    n = data.size // itemsize
    e_top, mant_or = scan_floats(data, itemsize, mbits)
    if e_top == (1 << ebits) - 1:
        raise ValueError("NaN or Inf values have no float-lossless code")
    tz = mbits if mant_or == 0 else (mant_or & -mant_or).bit_length() - 1
    low = (mbits - tz) - min(TREE_BITS, mbits - tz)
    if full is None:
        full = low > 0 and _full_pays(low_bit_counts(data, itemsize, mbits, tz, e_top, max(1, -(-n // _SAMPLE))))
        if full:
            return min((_payload(data, itemsize, mbits, tz, e_top, f) for f in (False, True)), key=len)
    return _payload(data, itemsize, mbits, tz, e_top, bool(full) and low > 0)


def _payload(data, itemsize, mbits, tz, e_top, full):
    coded = encode_floats(data, itemsize, mbits, tz, e_top, full)
    raw = pack_low_bits(data, itemsize, mbits, tz) if not full else coded[:0]
    head = bytes([tz, FLAG_FULL if full else 0]) + int(e_top).to_bytes(2, "little")
    return b"".join([head, coded.tobytes(), raw.tobytes()])


def decode_float_payload(payload: bytes | memoryview, dtype: np.dtype, n: int, what: str) -> np.ndarray:
    """The ``n`` values (1-D, ``dtype``'s native order) of a float-lossless payload; raises
    :class:`FormatError` (reasons prefixed with ``what``) for anything malformed."""
    buf = np.frombuffer(payload, dtype=np.uint8)
    itemsize = dtype.itemsize
    ebits, mbits = FLOAT_FIELDS[itemsize]
    if buf.size < HEADER_BYTES:
        raise FormatError(f"{what}: float-lossless payload of {buf.size} bytes is shorter than its header")
    tz, flags, e_top = int(buf[0]), int(buf[1]), int(buf[2]) | int(buf[3]) << 8
    if tz > mbits:
        raise FormatError(f"{what}: {tz} dropped mantissa bits, {dtype.name} has {mbits}")
    if flags & ~_KNOWN_FLAGS:
        raise FormatError(f"{what}: unknown float-lossless flags 0x{flags:02x}")
    if e_top >= (1 << ebits) - 1:
        raise FormatError(f"{what}: top exponent {e_top} is not finite in {dtype.name}")
    full = bool(flags & FLAG_FULL)
    low = (mbits - tz) - min(TREE_BITS, mbits - tz)
    raw_size = 0 if full else (n * low + 7) // 8
    coded_size = buf.size - HEADER_BYTES - raw_size
    if coded_size < 0:
        raise FormatError(f"{what}: float-lossless payload of {buf.size} bytes cannot hold {raw_size} raw bytes")
    if n > (coded_size + 16) << ELEMENTS_PER_BYTE_SHIFT:
        raise FormatError(f"{what}: {n} elements cannot come from a {coded_size}-byte coded part")
    coded = buf[HEADER_BYTES : HEADER_BYTES + coded_size]
    raw = buf[HEADER_BYTES + coded_size :]
    if not full and (n * low) % 8 and raw[-1] >> ((n * low) % 8):
        raise FormatError(f"{what}: non-zero padding bits after the raw mantissa bits")
    out, status = decode_floats(coded, raw, n, itemsize, mbits, tz, e_top, full)
    if status == BAD_EXPONENT:
        raise FormatError(f"{what}: payload codes an exponent below 0 (beyond its top exponent {e_top})")
    if status == SHORT_PAYLOAD:
        raise FormatError(f"{what}: payload ends before all {n} elements are coded")
    return out.view(dtype.newbyteorder("<")).astype(dtype.newbyteorder("="), copy=False)
