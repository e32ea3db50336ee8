"""Baseline update codecs: round trips, error bounds, golden streams, and hostile/truncated input."""

import math
import struct

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import baselines as B
from experiments.deltas import trained_delta
from nnc_fl import FormatError
from nnc_fl.codecs import UpdateCodec, make_codec, registered_codecs

NAMES = ["zstd", "fp16", "int8-zstd", "topk", "stc"]
LOSSY_NEED_FINITE = ["int8-zstd", "topk", "stc"]
ZSTD_CODECS = ["zstd", "int8-zstd", "topk"]


def _codec(name, **params):
    if name in ("topk", "stc"):
        params.setdefault("ratio", 0.2)
    return make_codec(name, **params)


def _mixed_tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(scale=0.01, size=(4, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.normal(size=4).astype(np.float64),
        "half": rng.normal(size=(5, 2)).astype(np.float16),
        "big-endian": np.arange(6, dtype=">f4") / 7,
        "scalar": np.array(-1.5, dtype=np.float32),
        "empty": np.zeros((3, 0), dtype=np.float32),
        "zeros": np.zeros(8, dtype=np.float32),
        "bn.num_batches_tracked": np.array(1234567890123, dtype=np.int64),
        "ints": rng.integers(-(2**31), 2**31, size=7).astype(np.int32),
        "bytes": rng.integers(0, 256, size=(2, 3)).astype(np.uint8),
        "u64": np.array([2**64 - 1, 0], dtype=np.uint64),
        "mask": np.array([True, False, True]),
        "ünïcode/name": np.ones(2, dtype=np.int16),
    }


def _bitwise_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# -- registry and parameters -------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_registered_and_rebuildable_from_params(name):
    assert name in registered_codecs()
    codec = _codec(name)
    assert isinstance(codec, UpdateCodec) and codec.name == name
    again = make_codec(name, **codec.params())
    assert again.params() == codec.params()
    assert repr(codec).endswith(")")


@pytest.mark.parametrize(
    "name, params, reason",
    [
        ("topk", {"ratio": 0.0}, "ratio"),
        ("stc", {"ratio": 1.5}, "ratio"),
        ("topk", {"ratio": True}, "ratio"),
        ("zstd", {"level": 0}, "level"),
        ("int8-zstd", {"level": 23}, "level"),
        ("fp16", {"level": 3}, "bad parameters"),
    ],
)
def test_bad_parameters_are_rejected(name, params, reason):
    with pytest.raises(ValueError, match=reason):
        make_codec(name, **params)


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_round_trip_keeps_names_order_dtypes_shapes_and_ints(name, exact):
    tensors = _mixed_tensors()
    codec = _codec(name)
    data = codec.encode(tensors, exact=exact)
    assert data == codec.encode(tensors, exact=exact), "deterministic"
    out = codec.decode(data)
    assert list(out) == list(tensors)
    for key, value in tensors.items():
        got = out[key]
        assert got.dtype == value.dtype.newbyteorder("=") and got.shape == value.shape, key
        assert got.flags.writeable and got.flags.c_contiguous
        if exact or value.dtype.kind != "f" or name == "zstd":
            assert _bitwise_equal(got, value.astype(value.dtype.newbyteorder("="))), key
        else:
            assert np.all(np.isfinite(got)), key
    assert np.all(out["zeros"] == 0)


@pytest.mark.parametrize("name", NAMES)
def test_exact_mode_is_bitwise_even_for_nan_inf_and_negative_zero(name):
    odd = {"x": np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.0], dtype=np.float32)}
    codec = _codec(name)
    assert _bitwise_equal(codec.decode(codec.encode(odd, exact=True))["x"], odd["x"])
    if name in LOSSY_NEED_FINITE:
        with pytest.raises(ValueError, match="non-finite"):
            codec.encode(odd)


@pytest.mark.parametrize("name", NAMES)
def test_empty_update(name):
    codec = _codec(name)
    assert codec.decode(codec.encode({})) == {}


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    shape=st.lists(st.integers(0, 6), max_size=3).map(tuple),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    seed=st.integers(0, 1000),
    ratio=st.sampled_from([0.01, 0.3, 1.0]),
)
def test_lossy_round_trip_property(name, shape, dtype, seed, ratio):
    x = np.random.default_rng(seed).laplace(size=shape).astype(dtype)
    codec = make_codec(name, ratio=ratio) if name in ("topk", "stc") else make_codec(name)
    y = codec.decode(codec.encode({"x": x}))["x"]
    assert y.shape == x.shape and y.dtype == x.dtype
    peak = float(np.max(np.abs(x), initial=0.0))
    assert np.all(np.abs(y.astype(np.float64)) <= peak * (1 + 1e-3) + 1e-12)


# -- error bounds of each lossy codec ---------------------------------------------------------------


def test_fp16_relative_error():
    x = np.random.default_rng(1).normal(scale=0.01, size=10_000).astype(np.float32)
    x = x[np.abs(x) > 2**-14]  # fp16 normal range
    y = B.Fp16Codec().decode(B.Fp16Codec().encode({"x": x}))["x"]
    assert np.all(np.abs(y - x) <= 2**-11 * np.abs(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_int8_error_at_most_half_a_step(dtype):
    x = np.random.default_rng(2).laplace(scale=0.02, size=(50, 40)).astype(dtype)
    scale = float(B.int8_scale(x))
    assert scale == pytest.approx(float(np.abs(x).max()) / 127, rel=1e-6)
    y = B.Int8ZstdCodec().decode(B.Int8ZstdCodec().encode({"x": x}))["x"]
    tolerance = scale / 2 * (1 + 1e-6) + (
        float(np.finfo(dtype).eps) * float(np.abs(x).max()) if dtype == np.float16 else 0
    )
    assert np.max(np.abs(y.astype(np.float64) - x.astype(np.float64))) <= tolerance
    levels = np.rint(y.astype(np.float64) / scale)
    assert np.abs(levels).max() == 127


def test_topk_keeps_exactly_the_k_largest():
    x = np.random.default_rng(3).normal(size=(37, 29)).astype(np.float32)
    codec = B.TopKCodec(ratio=0.05)
    y = codec.decode(codec.encode({"x": x}))["x"]
    k = math.ceil(0.05 * x.size)
    expected = np.argsort(-np.abs(x).ravel(), kind="stable")[:k]
    assert np.array_equal(np.flatnonzero(y), np.sort(expected))
    assert np.array_equal(y.ravel()[expected], x.ravel()[expected])


def test_topk_ties_go_to_the_lower_index_and_zeros_are_never_kept():
    x = np.array([0.0, 1.0, -1.0, 1.0, 0.5, 0.0], dtype=np.float32)
    assert B.topk_indices(x, 2).tolist() == [1, 2]
    assert B.topk_indices(np.array([0.0, 0.0, 3.0]), 2).tolist() == [2]
    assert B.topk_indices(x, 0).tolist() == []
    assert B.sparsity_k(1000, 0.01) == 10 and B.sparsity_k(5, 0.01) == 1 and B.sparsity_k(0, 0.5) == 0


def test_stc_values_are_zero_or_plus_minus_mu():
    x = np.random.default_rng(4).laplace(size=(64, 50)).astype(np.float32)
    codec = B.STCCodec(ratio=0.02)
    y = codec.decode(codec.encode({"x": x}))["x"]
    k = math.ceil(0.02 * x.size)
    kept = np.sort(np.argsort(-np.abs(x).ravel(), kind="stable")[:k])
    mu = np.float32(np.mean(np.abs(x.ravel()[kept].astype(np.float64))))
    assert np.array_equal(np.flatnonzero(y), kept)
    assert set(np.unique(y).tolist()) <= {0.0, float(mu), -float(mu)}
    assert np.array_equal(np.sign(y.ravel()[kept]), np.sign(x.ravel()[kept]))


def test_sizes_on_a_real_update_are_ordered_as_expected():
    delta = trained_delta("medium")
    raw = sum(v.nbytes for v in delta.values())
    size = {name: len(make_codec(name).encode(delta)) for name in NAMES}
    assert size["stc"] < size["topk"] < size["int8-zstd"] < size["fp16"] < size["zstd"] < raw
    assert size["fp16"] == pytest.approx(raw / 2, rel=0.01)


# -- Golomb and varint pieces ---------------------------------------------------------------------------


def test_golomb_parameter_follows_the_stc_formula():
    phi = (1 + math.sqrt(5)) / 2
    for k, n in [(1, 1000), (10, 1000), (1, 400), (50, 100), (3, 10**6)]:
        p = k / n
        assert B.golomb_parameter(k, n) == max(0, 1 + math.floor(math.log2(math.log(phi - 1) / math.log(1 - p))))
    assert B.golomb_parameter(10, 1000) == 6
    assert B.golomb_parameter(0, 10) == B.golomb_parameter(10, 10) == 0


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), seed=st.integers(0, 10**6), density=st.floats(0.0, 1.0), b=st.integers(0, 12))
def test_golomb_round_trip_and_jit_matches_reference(n, seed, density, b):
    rng = np.random.default_rng(seed)
    positions = np.flatnonzero(rng.random(n) < density)
    code, nbits = B.golomb_encode(positions, b)
    assert len(code) == (nbits + 7) // 8
    jit = B.golomb_decode(code, positions.size, b, n)
    ref = B.golomb_decode(code, positions.size, b, n, jit=False)
    assert np.array_equal(jit, positions) and np.array_equal(ref, positions)


def test_golomb_rejects_bad_codes():
    code, nbits = B.golomb_encode(np.array([3, 9, 40]), 2)
    with pytest.raises(FormatError, match="ends early"):
        B.golomb_decode(code[:-1], 3, 2, 100)
    with pytest.raises(FormatError, match="past the tensor"):
        B.golomb_decode(code, 3, 2, 40)
    with pytest.raises(FormatError, match="occupies"):
        B.golomb_decode(code + b"\x00", 3, 2, 100)
    if nbits % 8:
        with pytest.raises(FormatError, match="padding"):
            B.golomb_decode(code[:-1] + bytes([code[-1] | 1]), 3, 2, 100)
    with pytest.raises(FormatError, match="unary run"):
        B.golomb_decode(b"\xff" * 8, 1, 0, 10)


def test_varints():
    values = np.array([0, 1, 127, 128, 300, 2**21, 2**35 - 1], dtype=np.int64)
    data = B.varint_encode(values)
    assert B.varint_encode(np.array([300])) == b"\xac\x02"
    assert np.array_equal(B.varint_decode(data, len(values)), values)
    with pytest.raises(FormatError, match="exactly"):
        B.varint_decode(data, len(values) + 1)
    with pytest.raises(FormatError, match="exactly"):
        B.varint_decode(data[:-1], len(values))
    with pytest.raises(FormatError, match="overlong"):
        B.varint_decode(b"\x81\x00", 1)
    with pytest.raises(FormatError, match="exceeds"):
        B.varint_decode(b"\x80" * 5 + b"\x01", 1)


# -- golden streams (format drift) -----------------------------------------------------------------

GOLDEN_INPUT = {"w": np.array([[0.5, -0.25, 0.0], [1.0, -2.0, 0.125]], np.float32), "n": np.array([3, -1], np.int8)}
GOLDEN_FP16 = (
    "4e464c42010200003a000000000000000200000001007701010202000000030000000c0000000000000001006e0300"
    "01020000000200000000000000003800b40000003c00c0003003ff"
)
GOLDEN_STC = (
    "4e464c42010500044500000000000000abababab020000000100770104020200000003000000170000000000000001"
    "006e0300010200000002000000000000000300000000000000005555953f0100000000000000602003ff"
)
GOLDEN_BODIES = {  # the uncompressed bodies; the zstd frame around them depends on the zstd version
    "int8-zstd": "0200000001007701020202000000030000000a0000000000000001006e0300010200000002000000000000000402813c"
    "20f00040810803ff",
    "topk": "020000000100770103020200000003000000170000000000000001006e0300010200000002000000000000000300000000"
    "0000000002000000003f0000803f000000c003ff",
}


def test_golden_streams():
    assert B.Fp16Codec().encode(GOLDEN_INPUT).hex() == GOLDEN_FP16
    assert B.STCCodec(ratio=0.5).encode(GOLDEN_INPUT, fingerprint=b"\xab" * 4).hex() == GOLDEN_STC
    for name, body in GOLDEN_BODIES.items():
        data = make_codec(name, **({"ratio": 0.5} if name == "topk" else {})).encode(GOLDEN_INPUT)
        assert zstandard.ZstdDecompressor().decompress(data[16:]).hex() == body
    stc = B.STCCodec().decode(bytes.fromhex(GOLDEN_STC))["w"]
    assert np.allclose(stc, [[7 / 6, 0, 0], [7 / 6, -7 / 6, 0]])


# -- fingerprints and input validation ----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_fingerprint_is_carried(name):
    codec = _codec(name)
    fp = bytes(range(32))
    assert B.read_fingerprint(codec.encode({"a": np.ones(3, np.float32)}, fingerprint=fp)) == fp
    assert B.read_fingerprint(codec.encode({"a": np.ones(3, np.float32)})) is None
    with pytest.raises(ValueError, match="fingerprint"):
        codec.encode({}, fingerprint=b"x" * 65)


@pytest.mark.parametrize(
    "tensors, reason",
    [
        ({"c": np.ones(2, np.complex64)}, "unsupported dtype"),
        ({"o": np.array([object()])}, "unsupported dtype"),
        ({"x" * 2000: np.ones(2)}, "bytes, limit"),
        ({"bad\ud800": np.ones(2)}, "UTF-8"),
    ],
)
def test_encode_rejects_bad_input(tensors, reason):
    with pytest.raises(ValueError, match=reason):
        B.ZstdCodec().encode(tensors)


def test_encode_rejects_wrong_types():
    with pytest.raises(TypeError, match="names must be str"):
        B.ZstdCodec().encode({1: np.ones(2)})
    with pytest.raises(TypeError, match="mapping"):
        B.ZstdCodec().encode([np.ones(2)])


# -- malformed streams: FormatError and nothing else -------------------------------------------------


def _small_tensors():
    rng = np.random.default_rng(5)
    return {
        "w": rng.normal(size=(6, 5)).astype(np.float32),
        "b": rng.normal(size=5).astype(np.float16),
        "s": np.array(2.5),
        "i": np.arange(4, dtype=np.int32),
        "m": np.array([True, False]),
        "e": np.zeros(0, np.float32),
    }


def _only_format_errors(codec, data):
    """Decode ``data``; True if it decoded, False on FormatError; any other exception propagates."""
    try:
        codec.decode(data)
    except FormatError:
        return False
    return True


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_every_truncation_raises_format_error(name, exact):
    codec = _codec(name)
    data = codec.encode(_small_tensors(), fingerprint=b"\x01" * 32, exact=exact)
    for n in range(len(data)):
        with pytest.raises(FormatError):
            codec.decode(data[:n])
    with pytest.raises(FormatError):
        codec.decode(data + b"\x00")


@pytest.mark.parametrize("name", NAMES)
def test_random_corruption_raises_only_format_error(name):
    codec = _codec(name)
    data = codec.encode(_small_tensors(), fingerprint=b"\x02" * 32)
    rng = np.random.default_rng(sum(map(ord, name)))
    for _ in range(1500):
        bad = bytearray(data)
        for _ in range(rng.integers(1, 4)):
            i = rng.integers(len(bad))
            bad[i] = rng.integers(256) if rng.random() < 0.5 else bad[i] ^ (1 << rng.integers(8))
        _only_format_errors(codec, bytes(bad))


def _rewrap(data, body):
    """The stream ``data`` with its zstd body replaced by ``body`` (header length fixed up)."""
    fp_len = data[7]
    head = data[:8] + struct.pack("<Q", len(body)) + data[16 : 16 + fp_len]
    return head + zstandard.ZstdCompressor(level=1).compress(body)


@pytest.mark.parametrize("name", ZSTD_CODECS)
def test_corrupted_bodies_behind_valid_zstd_raise_only_format_error(name):
    codec = _codec(name)
    data = codec.encode(_small_tensors())
    body = zstandard.ZstdDecompressor().decompress(data[16:])
    assert codec.decode(_rewrap(data, body)).keys() == _small_tensors().keys()
    for n in range(len(body)):
        with pytest.raises(FormatError):
            codec.decode(_rewrap(data, body[:n]))
    rng = np.random.default_rng(7)
    decoded = 0
    for _ in range(1500):
        bad = bytearray(body)
        for _ in range(rng.integers(1, 3)):
            i = rng.integers(len(bad))
            bad[i] = rng.integers(256) if rng.random() < 0.5 else bad[i] ^ (1 << rng.integers(8))
        decoded += _only_format_errors(codec, _rewrap(data, bytes(bad)))
    assert decoded > 0  # payload changes that keep the structure valid decode to other values


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200), name=st.sampled_from(NAMES))
def test_random_bytes_raise_only_format_error(data, name):
    codec = _codec(name)
    _only_format_errors(codec, data)
    _only_format_errors(codec, b"NFLB\x01" + bytes([B.CODEC_IDS[name]]) + data)


def _stream(codec_id, items, zstd=False, fingerprint=None):
    return B._pack_container(codec_id, items, fingerprint, 3 if zstd else None)


def _item(name, arr, method=B.RAW, payload=None):
    arr = np.asarray(arr)
    return (name, arr, method, arr.tobytes() if payload is None else payload)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda good: b"XXXX" + good[4:], "bad magic"),
        (lambda good: good[:4] + b"\x02" + good[5:], "version"),
        (lambda good: good[:5] + b"\x09" + good[6:], "unknown codec id"),
        (lambda good: good[:5] + b"\x04" + good[6:], "written by codec 'topk'"),
        (lambda good: good[:6] + b"\x01" + good[7:], "must not be zstd"),
        (lambda good: good[:6] + b"\x80" + good[7:], "flag"),
        (lambda good: good[:7] + b"\x41" + good[8:], "fingerprint length"),
        (lambda good: good[:8] + struct.pack("<Q", 2**40) + good[16:], "body length"),
        (lambda good: good[:8] + struct.pack("<Q", 99) + good[16:], "header says"),
        (lambda good: good[:16] + struct.pack("<I", 10**6) + good[20:], "tensor count"),
    ],
)
def test_hostile_headers(make, reason):
    good = _stream(B.CODEC_IDS["fp16"], [_item("a", np.ones(3, np.float32))])
    assert B.Fp16Codec().decode(good)["a"].tolist() == [1, 1, 1]
    with pytest.raises(FormatError, match=reason):
        B.Fp16Codec().decode(make(good))


def test_hostile_bodies():
    fp16 = B.Fp16Codec()
    cid = B.CODEC_IDS["fp16"]
    one = np.ones(2, np.float32)
    cases = [
        ([_item("a", one), _item("a", one)], "duplicate"),
        ([_item("a", np.ones(2, np.int32), B.FP16, b"\0" * 4)], "non-float"),
        ([_item("a", one, B.INT8, b"\0" * 6)], "not allowed"),
        ([_item("a", one, B.RAW, b"\0" * 7)], "needs 8"),
        ([_item("a", np.array([True]), B.RAW, b"\x02")], "bool"),
        ([_item("\xff", one)], None),  # valid UTF-8 name: decodes
    ]
    for items, reason in cases:
        data = _stream(cid, items)
        if reason is None:
            assert list(fp16.decode(data)) == ["\xff"]
        else:
            with pytest.raises(FormatError, match=reason):
                fp16.decode(data)
    bad_name = _stream(cid, [_item("ab", one)]).replace(b"ab", b"\xff\xfe")
    with pytest.raises(FormatError, match="UTF-8"):
        fp16.decode(bad_name)
    huge = _stream(cid, [_item("a", np.zeros((1, 1), np.float32))])
    dims_at = huge.index(b"\x01\x00\x00\x00\x01\x00\x00\x00")
    huge = huge[:dims_at] + struct.pack("<II", 2**31, 2) + huge[dims_at + 8 :]
    with pytest.raises(FormatError, match="exceeds"):
        fp16.decode(huge)


def test_hostile_payloads():
    int8 = B.Int8ZstdCodec()
    f16 = np.ones(2, np.float16)
    cases = [
        (int8, [_item("a", np.ones(2, np.float32), B.INT8, struct.pack("<f", -1.0) + b"\0\0")], "scale"),
        (int8, [_item("a", np.ones(2, np.float32), B.INT8, struct.pack("<f", 1.0) + b"\x80\0")], "-128"),
        (int8, [_item("a", f16, B.INT8, struct.pack("<f", 1e6) + b"\0\0")], "overflows"),
        (B.TopKCodec(), [_item("a", f16, B.TOPK, struct.pack("<Q", 3) + b"\0" * 15)], "impossible"),
        (B.TopKCodec(), [_item("a", f16, B.TOPK, struct.pack("<Q", 1) + b"\0" + struct.pack("<f", 1e9))], "overflows"),
        (B.TopKCodec(), [_item("a", f16, B.TOPK, struct.pack("<Q", 1) + b"\x05" + struct.pack("<f", 1.0))], "gap 5"),
        (
            B.TopKCodec(),
            [_item("a", f16, B.TOPK, struct.pack("<Q", 2) + b"\x01\x00" + struct.pack("<ff", 1, 1))],
            "past",
        ),
        (
            B.TopKCodec(),
            [_item("a", f16, B.TOPK, struct.pack("<Q", 1) + b"\0" + struct.pack("<f", np.nan))],
            "non-finite",
        ),
    ]
    stc_head = struct.pack("<QBf", 1, 0, 1.0) + struct.pack("<Q", 1) + b"\x00"
    cases += [
        (B.STCCodec(), [_item("a", f16, B.STC, stc_head + b"\x40")], "padding after the sign"),
        (
            B.STCCodec(),
            [_item("a", f16, B.STC, struct.pack("<QBf", 1, 40, 1.0) + struct.pack("<Q", 1) + b"\0\0")],
            "Golomb parameter",
        ),
        (
            B.STCCodec(),
            [_item("a", f16, B.STC, struct.pack("<QBf", 1, 0, -1.0) + struct.pack("<Q", 1) + b"\0\0")],
            "mu",
        ),
        (
            B.STCCodec(),
            [_item("a", f16, B.STC, struct.pack("<QBf", 1, 0, 1.0) + struct.pack("<Q", 9) + b"\0\0")],
            "tile",
        ),
        (
            B.STCCodec(),
            [_item("a", f16, B.STC, struct.pack("<QBf", 3, 0, 1.0) + struct.pack("<Q", 1) + b"\0\0")],
            "exceeds",
        ),
    ]
    for codec, items, reason in cases:
        data = _stream(B.CODEC_IDS[codec.name], items, zstd=codec.name != "stc")
        with pytest.raises(FormatError, match=reason):
            codec.decode(data)
    ok = _stream(B.CODEC_IDS["stc"], [_item("a", f16, B.STC, stc_head + b"\x00")])
    assert B.STCCodec().decode(ok)["a"].tolist() == [1.0, 0.0]


def test_zstd_frame_problems():
    codec = B.ZstdCodec()
    good = codec.encode({"a": np.arange(100, dtype=np.float32)})
    with pytest.raises(FormatError, match="zstd"):
        codec.decode(good[:16] + b"\x00" * 20)
    with pytest.raises(FormatError, match="zstd frame declares"):
        codec.decode(good[:8] + struct.pack("<Q", 5) + good[16:])
    with pytest.raises(FormatError):
        codec.decode(good + zstandard.ZstdCompressor().compress(b"more"))
    with pytest.raises(FormatError, match="expected bytes"):
        codec.decode("not bytes")
