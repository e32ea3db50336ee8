"""The float modes (f16, int8, sparse, ternary) and zstd payloads (flag bit 1) of the one container:
round trips, golden payload layouts, the Golomb / varint pieces, and hostile streams with valid CRCs."""

import math
import struct
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamforge import forge, varint, zframe, zframe_declaring

import nnc_fl
from nnc_fl import FormatError
from nnc_fl import bitstream as bs
from nnc_fl import payloads as P

F16, INT8, SPARSE, TERNARY = bs.MODE_F16, bs.MODE_INT8, bs.MODE_SPARSE, bs.MODE_TERNARY
LOWRANK = bs.MODE_LOWRANK


def _decode_all_ways(data):
    out = nnc_fl.decode(data)
    info = nnc_fl.inspect(data)
    for t in info.tensors:
        np.testing.assert_array_equal(nnc_fl.decode_tensor(data, t.name), out[t.name])
    return out


def _records(zstd_level=None):
    x = np.array([[0.5, -0.25, 0.0], [1.0, -2.0, 0.125]], np.float32)
    scale = np.float32(2.0 / 127)
    levels = np.clip(np.rint(x.reshape(-1) / scale), -127, 127).astype(np.int8)
    return [
        bs.TensorRecord("f16", x.dtype, x.shape, F16, payload=P.pack_f16(x.astype(np.float16))),
        bs.TensorRecord("int8", np.dtype(np.float64), x.shape, INT8, payload=P.pack_int8(scale, levels)),
        bs.TensorRecord("sparse", np.dtype(np.float16), (6,), SPARSE, payload=P.pack_sparse([1, 4], [0.5, -2.0])),
        bs.TensorRecord(
            "ternary", x.dtype, (2, 3), TERNARY, payload=P.pack_ternary([0, 3, 4], [False, False, True], 1.5, 1)
        ),
        bs.TensorRecord("raw", np.dtype(np.int32), (2,), bs.MODE_RAW, payload=np.array([7, -7], "<i4").tobytes()),
        bs.TensorRecord("empty", x.dtype, (0, 3), bs.MODE_ZERO),
    ]


EXPECTED = {
    "f16": np.array([[0.5, -0.25, 0.0], [1.0, -2.0, 0.125]], np.float32),
    "int8": np.array([[32, -16, 0], [64, -127, 8]]) * np.float64(np.float32(2.0 / 127)),
    "sparse": np.array([0, 0.5, 0, 0, -2.0, 0], np.float16),
    "ternary": np.array([[1.5, 0, 0], [1.5, -1.5, 0]], np.float32),
    "raw": np.array([7, -7], np.int32),
    "empty": np.zeros((0, 3), np.float32),
}


@pytest.mark.parametrize("zstd_level", [None, 1, 19])
def test_each_float_mode_round_trips_through_the_one_decoder(zstd_level):
    data = bs.write_stream(_records(zstd_level), b"\x05" * 8, zstd_level=zstd_level)
    out = _decode_all_ways(data)
    assert list(out) == list(EXPECTED)
    for name, want in EXPECTED.items():
        assert out[name].dtype == want.dtype and out[name].shape == want.shape, name
        np.testing.assert_array_equal(out[name], want)
    info = nnc_fl.inspect(data)
    assert [t.mode_name for t in info.tensors] == ["f16", "int8", "sparse", "ternary", "raw", "zero"]
    assert info.zstd == (zstd_level is not None) and info.fingerprint == b"\x05" * 8
    assert [t.zstd for t in info.tensors] == [zstd_level is not None] * 5 + [False]
    assert ("ternary+zstd" in str(info)) == (zstd_level is not None) and "sparse" in str(info)
    assert info.as_rows()[2]["mode"] == "sparse" and info.as_rows()[2]["zstd"] == (zstd_level is not None)


def test_golden_payload_layouts():
    assert P.pack_f16(np.array([1.0, -2.0], np.float16)).hex() == "003c00c0"
    assert P.pack_int8(0.5, np.array([1, -127], np.int8)).hex() == "0000003f" + "0181"
    # k = 2, gaps 1 and 2, float32 0.5 and -2
    assert P.pack_sparse([1, 4], [0.5, -2.0]).hex() == "02" + "0102" + "0000003f" + "000000c0"
    # k = 3, b = 1, mu = 1.5; distances - 1 = [0, 2, 0]: q = [0, 1, 0] ones then a zero, then 1 bit
    # of the remainder [0, 0, 0]: 00 100 00 + padding -> 0x20; signs 0 0 1 + padding -> 0x20
    assert P.pack_ternary([0, 3, 4], [False, False, True], 1.5, 1).hex() == "03" + "01" + "0000c03f" + "20" + "20"
    # rank 1: P = [[1], [2]] (rows x r), Q = [[0.5], [-1], [0]] (cols x r), float32, row-major
    assert P.pack_lowrank([[1.0], [2.0]], [[0.5], [-1.0], [0.0]]).hex() == (
        "01" + "0000803f" + "00000040" + "0000003f" + "000080bf" + "00000000"
    )


def test_lowrank_payload_is_the_ordered_float64_sum_of_outer_products():
    rng = np.random.default_rng(11)
    p, q = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(10, 3)).astype(np.float32)
    record = bs.TensorRecord("w", np.dtype(np.float32), (6, 2, 5), LOWRANK, payload=P.pack_lowrank(p, q))
    data = bs.write_stream([record])
    out = _decode_all_ways(data)["w"]
    want = np.zeros((6, 10))
    for t in range(3):
        want = want + np.multiply.outer(p[:, t].astype(np.float64), q[:, t].astype(np.float64))
    assert out.shape == (6, 2, 5) and out.dtype == np.float32
    assert out.reshape(6, 10).tobytes() == want.astype(np.float32).tobytes()
    assert P.lowrank_view((6, 2, 5)) == (6, 10)
    assert P.lowrank_fits((6, 10), 3) and not P.lowrank_fits((6, 10), 4) and not P.lowrank_fits((6,), 1)
    assert not P.lowrank_fits((600, 600), 0) and not P.lowrank_fits((600, 600), 256)


def test_writer_refuses_what_the_reader_would_reject():
    f16 = P.pack_f16(np.ones(2, np.float16))
    with pytest.raises(ValueError, match="non-empty float"):
        bs.write_stream([bs.TensorRecord("a", np.dtype(np.int32), (2,), F16, payload=f16)])
    with pytest.raises(ValueError, match="non-empty float"):
        bs.write_stream([bs.TensorRecord("a", np.dtype(np.float32), (0,), F16, payload=b"")])
    with pytest.raises(ValueError, match="payload of 4 bytes"):
        bs.write_stream([bs.TensorRecord("a", np.dtype(np.float32), (3,), F16, payload=f16)])
    with pytest.raises(ValueError, match="raw payload of 3 bytes"):
        bs.write_stream([bs.TensorRecord("a", np.dtype(np.int16), (2,), bs.MODE_RAW, payload=b"abc")])
    with pytest.raises(ValueError, match="unknown mode"):
        bs.write_stream([bs.TensorRecord("a", np.dtype(np.float32), (2,), 99, payload=f16)])
    for level in (0, 23, True, 3.0):
        with pytest.raises(ValueError, match="zstd level"):
            bs.write_stream([], zstd_level=level)
    with pytest.raises(ValueError, match="increasing"):
        P.pack_sparse([3, 1], [1.0, 1.0])
    with pytest.raises(ValueError, match="int8 levels"):
        P.pack_int8(1.0, np.array([-128], np.int8))
    with pytest.raises(ValueError, match="Golomb parameter"):
        P.pack_ternary([1], [True], 1.0, 32)
    with pytest.raises(ValueError, match="mu"):
        P.pack_ternary([1], [True], float("nan"), 0)
    with pytest.raises(ValueError, match="not smaller"):
        P.pack_lowrank(np.ones((2, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="finite"):
        P.pack_lowrank(np.full((4, 1), np.inf), np.ones((5, 1)))
    with pytest.raises(ValueError, match="rows x r"):
        P.pack_lowrank(np.ones((4, 1)), np.ones((5, 2)))
    lowrank = P.pack_lowrank(np.ones((4, 1)), np.ones((5, 1)))
    with pytest.raises(ValueError, match="rank >= 2"):
        bs.write_stream([bs.TensorRecord("a", np.dtype(np.float32), (20,), LOWRANK, payload=lowrank)])


# -- varints and the Golomb position code -------------------------------------------------------------


def test_varints():
    values = np.array([0, 1, 127, 128, 300, 2**21, 2**35 - 1], dtype=np.int64)
    data = P.varint_encode(values)
    assert P.varint_encode(np.array([300])) == b"\xac\x02" == varint(300)
    assert np.array_equal(P.varint_decode(data, len(values)), values)
    with pytest.raises(FormatError, match="exactly"):
        P.varint_decode(data, len(values) + 1)
    with pytest.raises(FormatError, match="exactly"):
        P.varint_decode(data[:-1], len(values))
    with pytest.raises(FormatError, match="overlong"):
        P.varint_decode(b"\x81\x00", 1)
    with pytest.raises(FormatError, match="exceeds"):
        P.varint_decode(b"\x80" * 5 + b"\x01", 1, max_bytes=5)
    with pytest.raises(FormatError, match="exceeds 9"):
        P.varint_decode(b"\x80" * 9 + b"\x01", 1, max_bytes=12)


def test_golomb_parameter_follows_the_stc_formula():
    phi = (1 + math.sqrt(5)) / 2
    for k, n in [(1, 1000), (10, 1000), (1, 400), (50, 100), (3, 10**6)]:
        p = k / n
        assert P.golomb_parameter(k, n) == max(0, 1 + math.floor(math.log2(math.log(phi - 1) / math.log(1 - p))))
    assert P.golomb_parameter(10, 1000) == 6
    assert P.golomb_parameter(0, 10) == P.golomb_parameter(10, 10) == 0
    assert P.golomb_parameter(1, 2**31) <= P.MAX_GOLOMB_PARAM


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), seed=st.integers(0, 10**6), density=st.floats(0.0, 1.0), b=st.integers(0, 12))
def test_golomb_round_trip_and_jit_matches_reference(n, seed, density, b):
    rng = np.random.default_rng(seed)
    positions = np.flatnonzero(rng.random(n) < density)
    code, nbits = P.golomb_encode(positions, b)
    assert len(code) == (nbits + 7) // 8
    jit = P.golomb_decode(code, positions.size, b, n)
    ref = P.golomb_decode(code, positions.size, b, n, jit=False)
    assert np.array_equal(jit, positions) and np.array_equal(ref, positions)


def test_golomb_rejects_bad_codes():
    code, nbits = P.golomb_encode(np.array([3, 9, 40]), 2)
    with pytest.raises(FormatError, match="ends early"):
        P.golomb_decode(code[:-1], 3, 2, 100)
    with pytest.raises(FormatError, match="past the tensor"):
        P.golomb_decode(code, 3, 2, 40)
    with pytest.raises(FormatError, match="occupies"):
        P.golomb_decode(code + b"\x00", 3, 2, 100)
    assert nbits % 8
    with pytest.raises(FormatError, match="padding"):
        P.golomb_decode(code[:-1] + bytes([code[-1] | 1]), 3, 2, 100)
    with pytest.raises(FormatError, match="unary run"):
        P.golomb_decode(b"\xff" * 8, 1, 0, 10)
    with pytest.raises(FormatError, match="Golomb parameter 32"):
        P.golomb_decode(code, 3, 32, 100)


# -- hostile streams: named reasons, valid CRCs ---------------------------------------------------------

F32 = np.float32
ONE = struct.pack("<f", 1.0)


def _sparse(k, gaps=b"", values=()):
    return varint(k) + gaps + struct.pack(f"<{len(values)}f", *values)


def _ternary(k, b=0, mu=1.0, code=b"", signs=b""):
    return varint(k) + bytes([b]) + struct.pack("<f", mu) + code + signs


def _lowrank(rank, rows, cols, value=1.0, nan=False):
    factors = np.full(rank * (rows + cols), value, "<f4")
    if nan:
        factors[-1] = np.nan
    return bytes([rank]) + factors.tobytes()


HOSTILE = [
    # table level
    ([("a", np.int32, (2,), F16, b"\0" * 4)], "mode 'f16' on non-float dtype int32"),
    ([("a", F32, (0, 3), SPARSE, _sparse(0))], "mode 'sparse' on an empty tensor"),
    ([("a", F32, (3,), F16, b"\0" * 4)], "f16 payload of 4 bytes, shape \\(3,\\) needs 6"),
    ([("a", F32, (3,), INT8, b"\0" * 6)], "int8 payload of 6 bytes, shape \\(3,\\) needs 7"),
    ([("a", F32, (2,), SPARSE, b"\0" * 100)], "sparse payload of 100 bytes, shape \\(2,\\) allows at most"),
    ([("a", F32, (2,), TERNARY, b"\0" * 100)], "ternary payload of 100 bytes, shape \\(2,\\) allows at most"),
    # int8
    ([("a", F32, (2,), INT8, struct.pack("<f", -1.0) + b"\0\0")], "int8 scale -1.0"),
    ([("a", F32, (2,), INT8, struct.pack("<f", np.inf) + b"\0\0")], "int8 scale inf"),
    ([("a", F32, (2,), INT8, ONE + b"\x80\0")], "-128"),
    ([("a", np.float16, (2,), INT8, struct.pack("<f", 1e6) + b"\0\0")], "overflows float16"),
    # sparse
    ([("a", F32, (2,), SPARSE, b"")], "payload truncated while reading k"),
    ([("a", F32, (2,), SPARSE, _sparse(3))], "k is 3, above the limit 2"),
    ([("a", F32, (2,), SPARSE, _sparse(2, b"\0", (1,)) + b"\0\0")], "k = 2 impossible"),
    ([("a", F32, (2,), SPARSE, b"\x81\x00" + b"\0")], "non-minimal varint in k"),
    ([("a", F32, (4,), SPARSE, _sparse(1, b"\x04", (1,)))], "exactly 1 values|exceeds|past"),
    ([("a", F32, (200,), SPARSE, _sparse(1, b"\x81\x00", (1,)))], "overlong"),
    ([("a", F32, (4,), SPARSE, _sparse(1, b"\x85\x00", (1,)))], "exceeds 1"),
    ([("a", F32, (4,), SPARSE, _sparse(1, b"\x03", (1,)) + b"")], None),  # position 3: fine
    ([("a", F32, (4,), SPARSE, _sparse(2, b"\x02\x01", (1, 1)))], "run past the 4 elements"),
    ([("a", F32, (4,), SPARSE, _sparse(1, b"\x00", (np.nan,)))], "non-finite sparse value"),
    ([("a", np.float16, (4,), SPARSE, _sparse(1, b"\x00", (1e9,)))], "sparse value 1e\\+09 overflows float16"),
    ([("a", F32, (4,), SPARSE, _sparse(2, b"\0\0\0", (1, 1)))], "exactly 2 values"),
    # ternary
    ([("a", F32, (2,), TERNARY, varint(1) + b"\0" + b"\0\0")], "truncated while reading mu"),
    ([("a", F32, (2,), TERNARY, _ternary(3, code=b"\0", signs=b"\0"))], "k is 3, above the limit 2"),
    ([("a", F32, (2,), TERNARY, _ternary(1, b=40, code=b"\0", signs=b"\0"))], "Golomb parameter 40"),
    ([("a", F32, (2,), TERNARY, _ternary(1, mu=-1.0, code=b"\0", signs=b"\0"))], "mu -1.0"),
    ([("a", F32, (2,), TERNARY, _ternary(1, mu=np.nan, code=b"\0", signs=b"\0"))], "mu nan"),
    ([("a", np.float16, (2,), TERNARY, _ternary(1, mu=1e6, code=b"\0", signs=b"\0"))], "mu 1e\\+06 overflows"),
    ([("a", F32, (2,), TERNARY, _ternary(2))], "2 sign bits do not fit"),
    ([("a", F32, (2,), TERNARY, _ternary(1, code=b"", signs=b"\0"))], "Golomb code ends early"),
    ([("a", F32, (2,), TERNARY, _ternary(1, code=b"\xc0", signs=b"\0"))], "Golomb position past the tensor"),
    ([("a", F32, (99,), TERNARY, _ternary(1, code=b"\xff" * 20, signs=b"\0"))], "unary run too long"),
    ([("a", F32, (2,), TERNARY, _ternary(1, code=b"\x01", signs=b"\0"))], "padding after the Golomb code"),
    ([("a", F32, (2,), TERNARY, _ternary(1, code=b"\0\0", signs=b"\0"))], "occupies 2 bytes"),
    ([("a", F32, (2,), TERNARY, _ternary(1, code=b"\0", signs=b"\x40"))], "padding after the sign bits"),
    ([("a", F32, (2,), TERNARY, _ternary(1, code=b"\x80", signs=b"\x80"))], None),  # -mu at position 1
    # lowrank (P rows x r, Q cols x r, float32)
    ([("a", F32, (6,), LOWRANK, _lowrank(1, 6, 1))], "mode 'lowrank' on a tensor of rank 1"),
    ([("a", F32, (4, 5), LOWRANK, b"\1" + b"\0" * 100)], "lowrank payload of 101 bytes, shape \\(4, 5\\) allows"),
    ([("a", F32, (4, 5), LOWRANK, b"")], "truncated while reading lowrank rank"),
    ([("a", F32, (4, 5), LOWRANK, _lowrank(0, 4, 5)[:1])], "lowrank rank 0"),
    ([("a", F32, (4, 5), LOWRANK, _lowrank(3, 4, 5)[:21])], "lowrank rank 3 is 0 or its factors are not smaller"),
    ([("a", F32, (4, 5), LOWRANK, _lowrank(2, 4, 5) + b"\0")], "lowrank payload of 74 bytes, rank 2 needs 73"),
    ([("a", F32, (4, 5), LOWRANK, _lowrank(2, 4, 5)[:-4])], "rank 2 needs 73"),
    ([("a", F32, (4, 5), LOWRANK, _lowrank(1, 4, 5, nan=True))], "non-finite lowrank factor"),
    ([("a", np.float16, (4, 5), LOWRANK, _lowrank(1, 4, 5, value=300.0))], "lowrank value 90000 overflows float16"),
    ([("a", np.float16, (4, 5), LOWRANK, _lowrank(1, 4, 5, value=200.0))], None),  # 40000: fine
    # raw bool bytes
    ([("a", np.bool_, (2,), bs.MODE_RAW, b"\x01\x02")], "raw bool bytes must be 0 or 1"),
]


@pytest.mark.parametrize("zstd", [False, True])
@pytest.mark.parametrize("items, reason", HOSTILE)
def test_hostile_float_mode_payloads(items, reason, zstd):
    if zstd:
        if "payload of" in (reason or ""):
            return  # table-level checks of plain sizes; with zstd the frame's declared size is checked
        items = [(n, d, s, m, zframe(p)) for n, d, s, m, p in items]
    data = forge(items, zstd=zstd)
    if reason is None:
        _decode_all_ways(data)
        return
    with pytest.raises(FormatError, match=reason):
        _decode_all_ways(data)


def test_valid_forged_payloads_decode_to_what_they_say():
    data = forge(
        [
            ("a", F32, (4,), SPARSE, _sparse(1, b"\x03", (2.5,))),
            ("b", F32, (2,), TERNARY, _ternary(1, mu=0.5, code=b"\x80", signs=b"\x80")),
        ]
    )
    out = nnc_fl.decode(data)
    assert out["a"].tolist() == [0, 0, 0, 2.5] and out["b"].tolist() == [0, -0.5]


F16_PLAIN = np.array([1, -2, 3], "<f2").tobytes()


@pytest.mark.parametrize(
    "mode, shape, stored, reason",
    [
        (
            F16,
            (3,),
            zframe_declaring(1 << 40, F16_PLAIN),
            "declares 1099511627776 bytes, a f16 payload of shape \\(3,\\) needs 6",
        ),
        (F16, (3,), zframe_declaring(2**64 - 3), "declares .* bytes"),
        (F16, (3,), zframe(F16_PLAIN + b"\0\0"), "declares 8 bytes, a f16 payload of shape \\(3,\\) needs 6"),
        (SPARSE, (3,), zframe_declaring(1 << 30), "a sparse payload of shape \\(3,\\) allows at most 16"),
        (TERNARY, (3,), zframe(b"\0" * 100), "a ternary payload of shape \\(3,\\) allows at most"),
        (LOWRANK, (3, 3), zframe(b"\1" + b"\0" * 40), "a lowrank payload of shape \\(3, 3\\) allows at most 33"),
        (bs.MODE_RAW, (3,), zframe(b"\0" * 11), "a raw payload of shape \\(3,\\) needs 12"),
        (
            F16,
            (3,),
            __import__("zstandard").ZstdCompressor(write_content_size=False).compress(F16_PLAIN),
            "does not declare its content size",
        ),
        (F16, (3,), F16_PLAIN, "bad zstd frame header"),  # not a frame at all
        (F16, (3,), b"", "bad zstd frame header"),
        (F16, (3,), zframe_declaring(6, F16_PLAIN[:4]), "corrupt zstd frame"),  # shorter than declared
        (F16, (3,), zframe_declaring(6, F16_PLAIN + b"xx"), "corrupt zstd frame"),  # longer than declared
        (F16, (3,), zframe(F16_PLAIN) + zframe(b""), "corrupt zstd frame"),  # a second frame
        (F16, (3,), zframe(F16_PLAIN) + b"\0", "corrupt zstd frame"),  # trailing bytes
        (F16, (3,), b"\x50\x2a\x4d\x18\x06\0\0\0" + F16_PLAIN, "zstd"),  # a skippable frame
    ],
)
def test_zstd_frames_are_bounded_before_decompressing(mode, shape, stored, reason):
    data = forge([("a", np.float32 if mode != bs.MODE_RAW else np.int32, shape, mode, stored)], zstd=True)
    with pytest.raises(FormatError, match=reason):
        _decode_all_ways(data)


def test_zstd_stream_without_zstandard_installed(monkeypatch):
    data = bs.write_stream(_records(), zstd_level=3)
    plain = bs.write_stream(_records())
    monkeypatch.setitem(sys.modules, "zstandard", None)  # "import zstandard" now fails
    with pytest.raises(FormatError, match="needs the 'zstandard' package"):
        nnc_fl.decode(data)
    with pytest.raises(FormatError, match="zstandard"):
        nnc_fl.decode_tensor(data, "sparse")
    assert nnc_fl.decode_tensor(data, "empty").shape == (0, 3)  # no zstd payload to unwrap
    assert nnc_fl.inspect(data).zstd  # the header needs no zstandard
    assert list(nnc_fl.decode(plain)) == list(EXPECTED)  # nor do streams without flag bit 1


_MODES = st.sampled_from([F16, INT8, SPARSE, TERNARY, LOWRANK])


@settings(max_examples=300, deadline=None)
@given(
    mode=_MODES,
    shape=st.sampled_from([(1,), (7,), (3, 5), (40,)]),
    payload=st.binary(max_size=80),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    zstd=st.booleans(),
)
def test_arbitrary_payloads_with_valid_crcs_decode_or_fail_cleanly(mode, shape, payload, dtype, zstd):
    data = forge([("x", dtype, shape, mode, zframe(payload) if zstd else payload)], zstd=zstd)
    try:
        out = _decode_all_ways(data)
    except FormatError:
        return
    assert out["x"].shape == shape and out["x"].dtype == np.dtype(dtype)
    assert mode == F16 or np.isfinite(out["x"]).all()  # (float16 carries inf and NaN)


@settings(max_examples=200, deadline=None)
@given(
    k=st.integers(0, 12),
    b=st.integers(0, 40),
    mu=st.floats(allow_nan=True, width=32),
    code=st.binary(max_size=6),
    signs=st.binary(max_size=3),
    n=st.integers(1, 50),
)
def test_forged_ternary_fields_decode_or_fail_cleanly(k, b, mu, code, signs, n):
    data = forge([("x", np.float32, (n,), TERNARY, _ternary(k, b, mu, code, signs))])
    try:
        out = nnc_fl.decode(data)["x"]
    except FormatError:
        return
    assert np.count_nonzero(out) <= k and np.isfinite(out).all()


@settings(max_examples=200, deadline=None)
@given(k=st.integers(0, 12), gaps=st.binary(max_size=14), n=st.integers(1, 50), seed=st.integers(0, 99))
def test_forged_sparse_fields_decode_or_fail_cleanly(k, gaps, n, seed):
    values = np.random.default_rng(seed).normal(size=k).astype(np.float32)
    data = forge([("x", np.float32, (n,), SPARSE, _sparse(k, gaps, values))])
    try:
        out = nnc_fl.decode(data)["x"]
    except FormatError:
        return
    assert np.count_nonzero(out) <= k


def test_every_bit_flip_of_a_float_mode_stream_is_detected():
    for level in (None, 1):
        data = bs.write_stream(_records(), b"\x09" * 4, zstd_level=level)
        for i in range(len(data)):
            for bit in (0, 5):
                broken = bytearray(data)
                broken[i] ^= 1 << bit
                with pytest.raises(FormatError):
                    _decode_all_ways(bytes(broken))
        for cut in range(len(data)):
            with pytest.raises(FormatError):
                _decode_all_ways(data[:cut])
