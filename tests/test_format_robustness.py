"""Hostile and broken streams: every failure is a FormatError with a reason, never another exception."""

import contextlib
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnc_fl
from nnc_fl import bitstream as bs
from nnc_fl.errors import FormatError


def _small_stream(fingerprint=True):
    rng = np.random.default_rng(11)
    tensors = {
        "w": (rng.laplace(size=(6, 5)) * 0.05).astype(np.float32),
        "b": (rng.normal(size=6) * 0.01).astype(np.float16),
        "n": np.array([3, 0, -2, 700], np.int32),
        "e": np.zeros((0,), np.float32),
        "r": np.array([1.5], np.float64),
    }
    return nnc_fl.encode(tensors, step=0.01, lossless=["r"], fingerprint=b"\x07" * 32 if fingerprint else None)


def _decode_all_ways(data):
    nnc_fl.decode(data)
    info = nnc_fl.inspect(data)
    for t in info.tensors:
        nnc_fl.decode_tensor(data, t.name)


def _rebuild(table: bytes, payloads: bytes, version=bs.VERSION, flags=0) -> bytes:
    """A stream around a hand-made tensor table, with a valid header CRC."""
    head = bytearray(bs.MAGIC) + bytes([version, flags])
    bs._put_varint(head, len(table))
    head += table
    head += struct.pack("<I", zlib.crc32(head))
    return bytes(head) + payloads


def test_every_truncation_is_a_format_error():
    data = _small_stream()
    for cut in range(len(data)):
        with pytest.raises(FormatError):
            _decode_all_ways(data[:cut])


def test_trailing_bytes_are_rejected():
    with pytest.raises(FormatError, match="trailing"):
        nnc_fl.decode(_small_stream() + b"\0")


def test_every_single_bit_flip_is_detected():
    data = _small_stream()
    for i in range(len(data)):
        for bit in (0, 3, 7):
            broken = bytearray(data)
            broken[i] ^= 1 << bit
            with pytest.raises(FormatError):
                _decode_all_ways(bytes(broken))


def test_random_multi_byte_corruption_never_escapes_as_another_exception():
    data = _small_stream()
    rng = np.random.default_rng(12)
    for _ in range(2000):
        broken = bytearray(data)
        for i in rng.integers(0, len(data), size=rng.integers(1, 6)):
            broken[i] = rng.integers(0, 256)
        with contextlib.suppress(FormatError):
            _decode_all_ways(bytes(broken))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes(blob):
    for candidate in (blob, bs.MAGIC + blob, bs.MAGIC + bytes([bs.VERSION]) + blob):
        with contextlib.suppress(FormatError):
            _decode_all_ways(candidate)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=64), st.integers(0, 15))
def test_hostile_payloads_with_valid_crcs_decode_or_fail_cleanly(payload, rate):
    # A tensor table claiming a coded float tensor whose payload is arbitrary bytes (CRC made valid):
    # the decoder must return *something* bounded or raise FormatError.
    table = bytearray()
    bs._put_varint(table, 1)
    bs._put_varint(table, 1)
    table += b"x" + bytes([11, 2, 3, 50, bs.MODE_QUANT]) + struct.pack("<f", 0.5) + bytes([rate])
    bs._put_varint(table, len(payload))
    table += struct.pack("<I", zlib.crc32(payload))
    data = _rebuild(bytes(table), payload)
    try:
        out = nnc_fl.decode(data)
    except FormatError:
        return
    assert out["x"].shape == (3, 50) and np.isfinite(out["x"]).all()


def _one_entry_table(name=b"x", dtype=11, shape=(4,), mode=bs.MODE_ZERO, extra=b""):
    table = bytearray()
    bs._put_varint(table, 1)
    bs._put_varint(table, len(name))
    table += name + bytes([dtype, len(shape)])
    for d in shape:
        bs._put_varint(table, d)
    table += bytes([mode]) + extra
    return bytes(table)


@pytest.mark.parametrize(
    "stream, reason",
    [
        (b"XXXX\x01\x00\x01\x00", "bad magic"),
        (_rebuild(_one_entry_table(), b"", version=2), "unsupported stream version 2"),
        (_rebuild(_one_entry_table(), b"", flags=0x80), "unknown stream flags"),
        (_rebuild(_one_entry_table(mode=10), b""), "unknown coding mode 10"),
        (_rebuild(_one_entry_table(dtype=99), b""), "unknown dtype code 99"),
        (_rebuild(_one_entry_table(shape=(2,) * 17), b""), "rank 17"),
        (_rebuild(_one_entry_table(shape=(1 << 20, 1 << 20)), b""), "elements, above the limit"),
        (_rebuild(_one_entry_table(name=b"\xff\xfe"), b""), "not valid UTF-8"),
        (_rebuild(_one_entry_table() + b"\x00", b""), "unexplained bytes"),
        (  # tools bit 7 picks the 8-state machine of dependent quantisation (bit 2)
            _rebuild(_one_entry_table(mode=bs.MODE_QUANT, extra=struct.pack("<f", 0.5) + b"\x80\x00" + b"\0" * 4), b""),
            "an 8-state machine without dependent quantisation",
        ),
        (
            _rebuild(_one_entry_table(dtype=6, mode=bs.MODE_INT, extra=b"\x88\x00" + b"\0" * 4), b""),
            "an 8-state machine without dependent quantisation",
        ),
        (  # context-coded Exp-Golomb prefixes exist for plain level coding only
            _rebuild(_one_entry_table(mode=bs.MODE_QUANT, extra=struct.pack("<f", 0.5) + b"\x14\x00" + b"\0" * 4), b""),
            "context-coded Exp-Golomb prefixes with dependent quantisation",
        ),
        (
            _rebuild(_one_entry_table(dtype=6, mode=bs.MODE_INT, extra=b"\x18\x00" + b"\0" * 4), b""),
            "context-coded Exp-Golomb prefixes with dependent quantisation or row references",
        ),
        (
            _rebuild(
                _one_entry_table(mode=bs.MODE_QUANT, extra=struct.pack("<f", -1.0) + b"\x00\x00" + b"\0" * 4), b""
            ),
            "not a positive finite",
        ),
        (
            _rebuild(
                _one_entry_table(dtype=6, mode=bs.MODE_QUANT, extra=struct.pack("<f", 1.0) + b"\x00\x00" + b"\0" * 4),
                b"",
            ),
            "non-float dtype",
        ),
        (
            _rebuild(_one_entry_table(mode=bs.MODE_RAW, extra=b"\x03" + struct.pack("<I", zlib.crc32(b"abc"))), b"abc"),
            "raw payload of 3 bytes",
        ),
        (
            _rebuild(
                _one_entry_table(
                    shape=(1 << 30,),
                    mode=bs.MODE_QUANT,
                    extra=struct.pack("<f", 1.0) + b"\x00\x01" + struct.pack("<I", zlib.crc32(b"a")),
                ),
                b"a",
            ),
            "cannot come from a 1-byte payload",
        ),
        (_rebuild(b"\x02" + _one_entry_table()[1:] * 2, b""), "duplicate tensor name"),
        (
            _rebuild(
                _one_entry_table(dtype=6, mode=bs.MODE_INT, extra=b"\x04\x01" + struct.pack("<I", zlib.crc32(b"a"))),
                b"a",
            ),
            "dependent quantisation on an exactly coded",
        ),
        (_rebuild(b"\x80\x00", b""), "non-minimal varint"),
        (  # temporal contexts (tools bit 5) need a stream that names its reference (flag bit 3)
            _rebuild(_one_entry_table(mode=bs.MODE_QUANT, extra=struct.pack("<f", 0.5) + b"\x20\x00" + b"\0" * 4), b""),
            "names no temporal reference",
        ),
        (  # ... and a plain quantised float32/64 tensor: not DQ, not int, not float16
            _rebuild(b"\x11" * 8 + _one_entry_table(mode=bs.MODE_QUANT, extra=struct.pack("<f", 0.5) + b"\x24\x00"
                                                 + b"\0" * 4), b"", flags=bs.FLAG_TEMPORAL),
            "temporal contexts on a tensor that is not a plain quantised",
        ),
        (
            _rebuild(b"\x11" * 8 + _one_entry_table(dtype=6, mode=bs.MODE_INT, extra=b"\x20\x00" + b"\0" * 4), b"",
                     flags=bs.FLAG_TEMPORAL),
            "temporal contexts on a tensor that is not a plain quantised",
        ),
        (
            _rebuild(b"\x11" * 8 + _one_entry_table(dtype=10, mode=bs.MODE_QUANT, extra=struct.pack("<f", 0.5)
                                                 + b"\x20\x00" + b"\0" * 4), b"", flags=bs.FLAG_TEMPORAL),
            "temporal contexts on a tensor that is not a plain quantised",
        ),
        (_rebuild(b"\x11" * 5, b"", flags=bs.FLAG_TEMPORAL), "truncated while reading temporal digest"),
        (  # tools bit 6 scales the temporal reference: meaningless without bit 5
            _rebuild(_one_entry_table(mode=bs.MODE_QUANT, extra=struct.pack("<f", 0.5) + b"\x40\x00" + b"\0" * 4), b""),
            "a temporal reference scale without temporal contexts",
        ),
    ],
)
def test_named_rejections(stream, reason):
    with pytest.raises(FormatError, match=reason):
        _decode_all_ways(stream)


def test_limits_are_enforced_and_adjustable():
    data = nnc_fl.encode({"a": np.zeros((100, 100), np.float32), "b": np.ones(10, np.int8)})
    tight = nnc_fl.Limits(max_tensor_elements=1000)
    with pytest.raises(FormatError, match="above the limit"):
        nnc_fl.decode(data, limits=tight)
    with pytest.raises(FormatError, match="tensor count"):
        nnc_fl.decode(data, limits=nnc_fl.Limits(max_tensors=1))
    with pytest.raises(FormatError, match="in all"):
        nnc_fl.decode(data, limits=nnc_fl.Limits(max_total_elements=10_000))
    assert nnc_fl.decode(data)["a"].shape == (100, 100)


def test_int_values_outside_the_dtype_are_rejected():
    # levels 300 coded as if the tensor were int8
    good = nnc_fl.encode({"x": np.tile(np.array([300, -300, 5, 0, 0, 0], np.int16), 20)})
    info = nnc_fl.inspect(good).tensor("x")
    assert info.mode_name == "int"
    extra = bytearray([info.tools])
    bs._put_varint(extra, info.length)
    extra += struct.pack("<I", info.crc32)
    table = _one_entry_table(dtype=2, shape=(120,), mode=bs.MODE_INT, extra=bytes(extra))
    payload = good[info.offset : info.offset + info.length]
    with pytest.raises(FormatError, match="out of range for int8"):
        nnc_fl.decode(_rebuild(table, payload))


def test_non_bytes_input_is_a_type_error():
    with pytest.raises(TypeError):
        nnc_fl.decode(12345)


# --- mode float-lossless: hostile payloads behind valid CRCs ----------------------------------------


def _float_lossless_stream():
    from nnc_fl._floatcoder import encode_float_payload

    rng = np.random.default_rng(13)
    tensors = {  # name: (values, full profile)
        "w": ((rng.normal(size=(6, 5)) * 0.05).astype(np.float32), False),
        "h": ((rng.normal(size=24) * 3).astype(np.float16), False),
        "u": ((rng.normal(size=(2, 3, 4)) * 0.05).astype(np.float32), True),
        "d": (np.array([0.0, -0.0, 5e-324, 1e300, -2.5, 0.1] * 3, np.float64), True),
    }
    records = [
        bs.TensorRecord(name, x.dtype, x.shape, bs.MODE_FLOAT_LOSSLESS, payload=encode_float_payload(x, full))
        for name, (x, full) in tensors.items()
    ]
    data = bs.write_stream(records)
    out = nnc_fl.decode(data)
    assert all(out[name].tobytes() == x.tobytes() for name, (x, _) in tensors.items())
    return data


def test_float_lossless_truncations_and_bit_flips_are_format_errors():
    data = _float_lossless_stream()
    for cut in range(len(data)):
        with pytest.raises(FormatError):
            _decode_all_ways(data[:cut])
    for i in range(len(data)):
        broken = bytearray(data)
        broken[i] ^= 1 << (i % 8)
        with pytest.raises(FormatError):
            _decode_all_ways(bytes(broken))


def _float_entry(payload: bytes, dtype=np.float32, shape=(4,)) -> bytes:
    from streamforge import forge

    return forge([("x", dtype, shape, bs.MODE_FLOAT_LOSSLESS, payload)])


def _checked_float_decode(data):
    try:
        out = nnc_fl.decode(data)["x"]
    except FormatError:
        return
    assert np.isfinite(out).all()


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=80), st.sampled_from([np.float16, np.float32, np.float64]))
def test_float_lossless_random_payloads_decode_or_fail_cleanly(payload, dtype):
    _checked_float_decode(_float_entry(payload, dtype, (3, 50)))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([(np.float16, 5, 10), (np.float32, 8, 23), (np.float64, 11, 52)]),
    st.integers(0, 52),
    st.booleans(),
    st.integers(0, 2046),
    st.binary(min_size=0, max_size=120),
    st.integers(1, 60),
)
def test_float_lossless_payloads_with_valid_headers_decode_or_fail_cleanly(fields, tz, full, e_top, tail, n):
    # past the header checks, into the kernel: any coded and raw bytes decode to finite values or fail
    dtype, ebits, mbits = fields
    header = bytes([min(tz, mbits), int(full)]) + min(e_top, (1 << ebits) - 2).to_bytes(2, "little")
    _checked_float_decode(_float_entry(header + tail, dtype, (n,)))


def _f32_payload(values, full):
    from nnc_fl._floatcoder import encode_float_payload

    return encode_float_payload(np.asarray(values, np.float32), full)


def _coded_bins(bins):
    """Coded bytes of hand-chosen (context, bit) bins in the float-lossless model."""
    from nnc_fl import reference

    model, enc = reference._FloatModel(reference.FLOAT_ESC_CTX + 1), reference.RangeEncoder()
    for c, bit in bins:
        enc.bin(bit, model.p1(c))
        model.update(c, bit, reference.FLOAT_RATES)
    return enc.finish()


def _with_padding_bit(payload: bytes) -> bytes:
    broken = bytearray(payload)
    broken[-1] |= 0x80
    return bytes(broken)


_FOUR = [0.5, -0.25, 3.0, 1e-3]  # float32, fast profile: tz 0, 21 low bits each, 84 bits in 11 raw bytes


@pytest.mark.parametrize(
    "stream, reason",
    [
        (_float_entry(b"\x00\x00\x7f"), "shorter than its header"),
        (_float_entry(b"\x18\x00\x7f\x00" + b"\0" * 8), "24 dropped mantissa bits, float32 has 23"),
        (_float_entry(b"\x0b\x00\x7f\x00" + b"\0" * 8, np.float16, (2,)), "11 dropped mantissa bits"),
        (_float_entry(b"\x00\x02\x7f\x00" + b"\0" * 8), "unknown float-lossless flags 0x02"),
        (_float_entry(b"\x00\x00\xff\x00" + b"\0" * 8), "top exponent 255 is not finite"),
        (_float_entry(b"\x00\x00\x1f\x00" + b"\0" * 8, np.float16, (2,)), "top exponent 31 is not finite"),
        (_float_entry(b"\x00\x00\x7f\x00" + b"\0" * 10), "cannot hold 11 raw bytes"),
        (_float_entry(_with_padding_bit(_f32_payload(_FOUR, False))), "non-zero padding"),
        (_float_entry(b"\x17\x00\x7f\x00" + b"\0" * 47, shape=(1 << 20,)), "cannot come from a 47-byte coded part"),
        # top exponent 0, then d > 0: an exponent below zero
        (_float_entry(b"\x17\x00\x00\x00" + _coded_bins([(0, 0), (1, 1), (2, 0)]), shape=(1,)), "exponent below 0"),
        # values of exponent 147 = 20 + 127: zeros past the end decode as valid bins until the slack runs out
        (_float_entry(_f32_payload(2.0**20 * np.linspace(1, 1.9, 300), True)[:14], shape=(300,)), "ends before all"),
        (_float_entry(b"\x00\x00\x7f\x00", np.int32), "mode 'float-lossless' on non-float dtype int32"),
        (_float_entry(b"\x00\x00\x7f\x00", np.float32, (0, 3)), "on an empty tensor"),
        (_float_entry(b"\x00", np.float32, (1 << 30,)), "cannot come from a 1-byte payload"),
    ],
)
def test_float_lossless_named_rejections(stream, reason):
    with pytest.raises(FormatError, match=reason):
        _decode_all_ways(stream)


def test_float_lossless_hand_made_payloads_decode():
    # the pieces the rejections above break, whole: the decoder accepts exactly what the format allows
    assert nnc_fl.decode(_float_entry(_f32_payload(_FOUR, False)))["x"].tobytes() == np.float32(_FOUR).tobytes()
    one = nnc_fl.decode(_float_entry(b"\x17\x00\x00\x00" + _coded_bins([(0, 1), (1, 0)]), shape=(1,)))["x"]
    assert one.tobytes() == np.array([-0.0], np.float32).tobytes()
    # one byte more than the bound above: past the element check, into the kernel (zeros past the end of a
    # coded part decode as likely bins; with top exponent 147 = 20 + 127 those are valid values)
    with pytest.raises(FormatError, match="ends before all 1048576"):
        nnc_fl.decode(_float_entry(b"\x17\x00\x93\x00" + b"\0" * 48, shape=(1 << 20,)))


# --- temporal contexts (tools bit 5) ---------------------------------------------------------------

_TEMPORAL_REF = {"x": np.linspace(-0.02, 0.03, 150, dtype=np.float32).reshape(3, 50)}


def _varint(value: int) -> bytes:
    out = bytearray()
    bs._put_varint(out, value)
    return bytes(out)


def _temporal_stream(payload: bytes, name: bytes = b"x", tools: int = 0x20) -> bytes:
    table = nnc_fl.temporal_digest(_TEMPORAL_REF) + _one_entry_table(
        name=name, shape=(3, 50), mode=bs.MODE_QUANT,
        extra=struct.pack("<f", 0.01) + bytes([tools]) + _varint(len(payload))
        + struct.pack("<I", zlib.crc32(payload)),
    )
    return _rebuild(table, payload, flags=bs.FLAG_TEMPORAL)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=64), st.integers(0, 3))
def test_hostile_temporal_payloads_decode_or_fail_cleanly(payload, rate):
    data = _temporal_stream(payload, tools=0x20 | rate)
    with pytest.raises(nnc_fl.TemporalReferenceError, match="needs its temporal reference"):
        nnc_fl.decode(data)
    try:
        out = nnc_fl.decode(data, temporal_reference=_TEMPORAL_REF)
    except FormatError:
        return
    assert out["x"].shape == (3, 50) and np.isfinite(out["x"]).all()


def test_temporal_streams_name_their_reference_and_refuse_others():
    data = _temporal_stream(b"\x00" * 8)
    assert nnc_fl.inspect(data).temporal_digest == nnc_fl.temporal_digest(_TEMPORAL_REF)
    assert "temporal reference" in str(nnc_fl.inspect(data))
    other = {"x": _TEMPORAL_REF["x"] + np.float32(1e-3)}
    for call in (nnc_fl.decode, lambda d, **kw: nnc_fl.decode_tensor(d, "x", **kw)):
        with pytest.raises(nnc_fl.TemporalReferenceError, match="is not the one given"):
            call(data, temporal_reference=other)
        with pytest.raises(TypeError, match="temporal_reference must be a mapping"):
            call(data, temporal_reference=[1, 2])
    # a stream whose reference lacks the tensor it marks (an encoder would never write it)
    with pytest.raises(FormatError, match="the reference has no float32/64 tensor"):
        nnc_fl.decode(_temporal_stream(b"\x00" * 8, name=b"y"), temporal_reference=_TEMPORAL_REF)
    # NaN in the decoder's own reference is refused, not turned into classes
    bad = {"y": np.full((3, 50), np.nan, np.float32)}
    stream = bs.write_stream(
        [bs.TensorRecord("y", np.dtype("<f4"), (3, 50), bs.MODE_QUANT, 0.01, 0x20, b"\x00" * 8)],
        temporal_digest=nnc_fl.temporal_digest(bad),
    )
    with pytest.raises(FormatError, match="NaN or Inf"):
        nnc_fl.decode(stream, temporal_reference=bad)
