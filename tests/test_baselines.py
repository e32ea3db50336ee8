"""Baseline update codecs: registration, round trips, error bounds, golden streams, and
hostile/truncated input. Their streams are nnc-fl streams (FORMAT.md, float modes); the payload
layouts themselves are tested in test_payloads.py."""

import math
import sys

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from streamforge import forge, items_of, zframe, zframe_declaring

import nnc_fl
from experiments import baselines as B
from experiments.deltas import trained_delta
from nnc_fl import FormatError
from nnc_fl import bitstream as bs
from nnc_fl import codecs as C
from nnc_fl.codecs import UpdateCodec, make_codec, registered_codecs

B.register_baselines()

NAMES = ["zstd", "fp16", "int8-zstd", "topk", "stc", "sign", "qsgd", "powersgd"]
LOSSY_NEED_FINITE = ["int8-zstd", "topk", "stc", "sign", "qsgd", "powersgd"]
ZSTD_CODECS = ["zstd", "int8-zstd", "topk", "sign", "qsgd"]
#: Codecs whose reconstruction never exceeds the input's largest magnitude.
WITHIN_PEAK = ["zstd", "fp16", "int8-zstd", "topk", "stc", "sign"]


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
        ("sign", {"level": 0}, "level"),
        ("qsgd", {"levels": 0}, "levels"),
        ("qsgd", {"levels": 128}, "levels"),
        ("qsgd", {"levels": 2.0}, "levels"),
        ("qsgd", {"norm": "l1"}, "norm"),
        ("powersgd", {"rank": 0}, "rank"),
        ("powersgd", {"rank": 256}, "rank"),
        ("powersgd", {"iterations": 0}, "iterations"),
        ("powersgd", {"ratio": 0.1}, "bad parameters"),
    ],
)
def test_bad_parameters_are_rejected(name, params, reason):
    with pytest.raises(ValueError, match=reason):
        make_codec(name, **params)


def test_register_baselines_is_explicit_and_idempotent():
    B.register_baselines()  # again: a no-op
    with pytest.raises(ValueError, match="already registered"):
        C.register_codec("topk", B.STCCodec)
    assert {
        "zstd": B.ZstdCodec,
        "fp16": B.Fp16Codec,
        "int8-zstd": B.Int8ZstdCodec,
        "topk": B.TopKCodec,
        "stc": B.STCCodec,
        "sign": B.SignCodec,
        "qsgd": B.QSGDCodec,
        "powersgd": B.PowerSGDCodec,
    } == B.BASELINE_CODECS


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
    data = codec.encode({"x": x})
    assert data == codec.encode({"x": x.copy()})  # deterministic (qsgd's random rounding included)
    y = codec.decode(data)["x"]
    assert y.shape == x.shape and y.dtype == x.dtype and np.all(np.isfinite(y))
    peak = float(np.max(np.abs(x), initial=0.0))
    if name in WITHIN_PEAK:
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


def test_scaled_sign_is_plus_minus_mean_magnitude_at_one_bit_per_element():
    x = np.random.default_rng(8).laplace(size=(200, 40)).astype(np.float32)
    x[3, :5] = 0.0
    codec = B.SignCodec()
    data = codec.encode({"x": x})
    y = codec.decode(data)["x"]
    mu = np.float32(np.mean(np.abs(x.astype(np.float64))))
    assert np.array_equal(y, np.sign(x) * mu)  # exact zeros stay zero
    assert nnc_fl.inspect(data).tensors[0].mode_name == "ternary" and nnc_fl.inspect(data).zstd
    assert len(data) < 1.05 * x.size / 8 + 60  # ~1 bit per element (the positions' code is zeros)


@pytest.mark.parametrize("norm", ["l2", "max"])
def test_qsgd_levels_are_within_one_step_and_carry_the_sign(norm):
    x = np.random.default_rng(9).normal(size=(50, 60)).astype(np.float32)
    levels = 4
    scale, q = B.qsgd_levels("x", x, levels, norm)
    size = np.linalg.norm(x.astype(np.float64)) if norm == "l2" else np.abs(x).max()
    assert scale == np.float32(size / levels)
    assert q.dtype == np.int8 and np.abs(q).max() <= levels
    assert np.all((q == 0) | (np.sign(q) == np.sign(x.ravel())))
    assert np.all(np.abs(q * np.float64(scale) - x.ravel()) <= scale * (1 + 1e-6))
    if norm == "max":
        assert np.abs(q).max() == levels
    y = B.QSGDCodec(levels=levels, norm=norm).decode(B.QSGDCodec(levels=levels, norm=norm).encode({"x": x}))["x"]
    assert np.array_equal(y.ravel(), (q * np.float64(scale)).astype(np.float32))


def test_qsgd_rounding_is_unbiased_and_seeded_by_the_tensor():
    x = np.full(20_000, 0.3, np.float32)
    x[0] = 1.0  # max norm 1, one level: every 0.3 becomes 0 or 1
    scale, q = B.qsgd_levels("x", x, 1, "max")
    assert scale == 1 and set(np.unique(q[1:]).tolist()) == {0, 1}
    assert np.mean(q[1:]) == pytest.approx(0.3, abs=0.01)
    again = B.qsgd_levels("x", x.copy(), 1, "max")[1]
    other = B.qsgd_levels("y", x, 1, "max")[1]  # same values, another name: other random numbers
    assert np.array_equal(again, q) and not np.array_equal(other, q)
    assert B.tensor_seed("x", x) == B.tensor_seed("x", x.copy()) != B.tensor_seed("x", x.astype(np.float64))


def test_powersgd_is_exact_on_low_rank_matrices_and_sends_the_rest_raw():
    rng = np.random.default_rng(10)
    low = (rng.normal(size=(30, 2)) @ rng.normal(size=(2, 24))).astype(np.float32).reshape(30, 2, 3, 4)
    tensors = {"low": low, "bias": rng.normal(size=30).astype(np.float32), "tiny": np.ones((2, 3), np.float32),
               "full": rng.normal(size=(40, 50)).astype(np.float32)}
    codec = B.PowerSGDCodec(rank=2, iterations=2)
    data = codec.encode(tensors)
    modes = {t.name: t.mode_name for t in nnc_fl.inspect(data).tensors}
    assert modes == {"low": "lowrank", "bias": "raw", "tiny": "raw", "full": "lowrank"}
    out = codec.decode(data)
    assert np.allclose(out["low"], low, rtol=0, atol=1e-5 * np.abs(low).max())
    assert _bitwise_equal(out["bias"], tensors["bias"]) and _bitwise_equal(out["tiny"], tensors["tiny"])
    t = nnc_fl.inspect(data).tensor("full")
    assert t.length == 1 + 4 * 2 * (40 + 50)
    errors = []
    for rank in (1, 4, 16):
        y = B.PowerSGDCodec(rank=rank).decode(B.PowerSGDCodec(rank=rank).encode({"f": tensors["full"]}))["f"]
        errors.append(np.linalg.norm(y - tensors["full"]))
    assert errors[0] > errors[1] > errors[2]
    # the factors are the projection of the matrix on span(P), P orthonormal
    p, q = B.lowrank_factors("full", tensors["full"].astype(np.float64), 3, 2)
    assert np.allclose(p.T @ p, np.eye(3), atol=1e-5)
    assert np.allclose(q, tensors["full"].T @ p, atol=1e-4)


def test_powersgd_overflowing_reconstruction_falls_back_to_raw():
    x = np.full((20, 20), 65000, np.float16)
    x[0, :10] = -65000
    x[1:10, 0] = -65000  # the rank-1 approximation overshoots float16's 65504 somewhere
    data = B.PowerSGDCodec(rank=1).encode({"x": x})
    assert nnc_fl.inspect(data).tensors[0].mode_name == "raw"
    assert _bitwise_equal(B.PowerSGDCodec(rank=1).decode(data)["x"], x)
    y = x.copy()
    y[:] = 60000
    assert nnc_fl.inspect(B.PowerSGDCodec(rank=1).encode({"x": y})).tensors[0].mode_name == "lowrank"


def test_powersgd_decoder_refuses_foreign_and_forged_lowrank_payloads():
    codec = B.PowerSGDCodec()
    factors = lambda rank, rows, cols: bytes([rank]) + np.ones(rank * (rows + cols), "<f4").tobytes()  # noqa: E731
    assert codec.decode(forge([("a", np.float32, (4, 5), bs.MODE_LOWRANK, factors(1, 4, 5))]))["a"].sum() == 20
    cases = [
        (forge([("a", np.float32, (20,), bs.MODE_LOWRANK, factors(1, 4, 5))]), "rank 1 \\(needs >= 2\\)"),
        (forge([("a", np.float32, (4, 5), bs.MODE_LOWRANK, factors(2, 4, 5)[:-4])]), "rank 2 needs 73"),
        (forge([("a", np.float32, (4, 5), bs.MODE_LOWRANK, b"\0")]), "lowrank rank 0"),
        (B.SignCodec().encode({"a": np.ones((4, 5), np.float32)}), "must not be zstd"),
        (B.STCCodec().encode({"a": np.ones((4, 5), np.float32)}), "mode 'ternary' is not allowed in a 'powersgd'"),
    ]
    for data, reason in cases:
        with pytest.raises(FormatError, match=reason):
            codec.decode(data)


def test_sizes_on_a_real_update_are_ordered_as_expected():
    delta = trained_delta("medium")
    raw = sum(v.nbytes for v in delta.values())
    n = sum(v.size for v in delta.values())
    size = {name: len(make_codec(name).encode(delta)) for name in NAMES}
    assert size["stc"] < size["topk"] < size["int8-zstd"] < size["fp16"] < size["zstd"] < raw
    assert size["fp16"] == pytest.approx(raw / 2, rel=0.01)
    # scaled sign: ~1 bit per element; QSGD: a few bits; rank-2 factors: 2 (rows + cols) float32 per matrix
    assert n / 8 < size["sign"] < 1.1 * n / 8 + 200
    assert size["topk"] < size["powersgd"] < size["sign"] < size["int8-zstd"]
    assert size["topk"] < size["qsgd"] < size["int8-zstd"]
    factors = sum(4 * 2 * (v.shape[0] + v.shape[1]) + 1 for v in delta.values() if v.ndim == 2)
    biases = sum(v.nbytes for v in delta.values() if v.ndim == 1)
    assert factors + biases < size["powersgd"] < factors + biases + 200
    assert len(make_codec("qsgd", levels=1).encode(delta)) < size["qsgd"]


# -- golden streams (format drift) -----------------------------------------------------------------

GOLDEN_INPUT = {"w": np.array([[0.5, -0.25, 0.0], [1.0, -2.0, 0.125]], np.float32), "n": np.array([3, -1], np.int8)}
GOLDEN_FP16 = (  # header (table: "w" f32 2x3 f16, "n" i8 2 raw; CRCs), then the f16 and the raw payload
    "4e4e43460100180201770b020203040ccc0e532f016e0201020102b1aef647e47192ef003800b40000003c00c0003003ff"
)
GOLDEN_STC = (  # fingerprint abababab; ternary payload: k=3, b=0, mu=7/6, Golomb 0x60, signs 0x20
    "4e4e434601011d04abababab0201770b020203070821f927bc016e0201020102b1aef647a4f7e9b703005555953f602003ff"
)
GOLDEN_PLAIN = {  # mode and plain payload per tensor; the zstd frames around them depend on the zstd version
    "int8-zstd": {"w": ("int8", "0402813c20f000408108"), "n": ("raw", "03ff")},
    "topk": {"w": ("sparse", "030002000000003f0000803f000000c0"), "n": ("raw", "03ff")},
    "zstd": {"w": ("raw", "0000003f000080be000000000000803f000000c00000003e"), "n": ("raw", "03ff")},
}


def test_golden_streams():
    assert B.Fp16Codec().encode(GOLDEN_INPUT).hex() == GOLDEN_FP16
    assert B.STCCodec(ratio=0.5).encode(GOLDEN_INPUT, fingerprint=b"\xab" * 4).hex() == GOLDEN_STC
    unzstd = zstandard.ZstdDecompressor().decompress
    for name, plain in GOLDEN_PLAIN.items():
        data = make_codec(name, **({"ratio": 0.5} if name == "topk" else {})).encode(GOLDEN_INPUT)
        info = nnc_fl.inspect(data)
        assert info.zstd
        got = {t.name: (t.mode_name, unzstd(data[t.offset : t.offset + t.length]).hex()) for t in info.tensors}
        assert got == plain
    stc = B.STCCodec().decode(bytes.fromhex(GOLDEN_STC))["w"]
    assert np.allclose(stc, [[7 / 6, 0, 0], [7 / 6, -7 / 6, 0]])


# -- fingerprints and input validation ----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_fingerprint_is_carried(name):
    codec = _codec(name)
    fp = bytes(range(32))
    assert nnc_fl.inspect(codec.encode({"a": np.ones(3, np.float32)}, fingerprint=fp)).fingerprint == fp
    assert nnc_fl.inspect(codec.encode({"a": np.ones(3, np.float32)})).fingerprint is None
    with pytest.raises(ValueError, match="fingerprint"):
        codec.encode({}, fingerprint=b"x" * 65)


@pytest.mark.parametrize(
    "tensors, reason",
    [
        ({"c": np.ones(2, np.complex64)}, "unsupported dtype"),
        ({"o": np.array([object()])}, "unsupported dtype"),
        ({"x" * 2000: np.ones(2)}, "longer than 1024 bytes"),
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


def test_every_bit_flip_is_detected():
    """Header and payload CRCs: no single flipped bit decodes, for every codec."""
    for name in NAMES:
        codec = _codec(name)
        data = codec.encode({k: v for k, v in _small_tensors().items() if k in "wbi"}, fingerprint=b"\x03" * 4)
        for i in range(len(data)):
            for bit in (1, 6):
                broken = bytearray(data)
                broken[i] ^= 1 << bit
                with pytest.raises(FormatError):
                    codec.decode(bytes(broken))


def _rezstd(data, name, plain):
    """``data`` with tensor ``name``'s payload replaced by a valid zstd frame of ``plain`` (valid CRCs)."""
    items = [(n, d, sh, m, zframe(plain) if n == name else p) for n, d, sh, m, p in items_of(data)]
    return forge(items, zstd=True)


@pytest.mark.parametrize("name", ZSTD_CODECS)
def test_corrupted_payloads_behind_valid_zstd_frames_raise_only_format_error(name):
    codec = _codec(name)
    data = codec.encode(_small_tensors())
    decoded = 0
    for t in nnc_fl.inspect(data).tensors:
        if not t.zstd:
            continue
        plain = zstandard.ZstdDecompressor().decompress(data[t.offset : t.offset + t.length])
        assert list(codec.decode(_rezstd(data, t.name, plain))) == list(_small_tensors())
        for n in range(len(plain)):
            with pytest.raises(FormatError):
                codec.decode(_rezstd(data, t.name, plain[:n]))
        rng = np.random.default_rng(7)
        for _ in range(150):
            bad = bytearray(plain)
            for _ in range(rng.integers(1, 3)):
                i = rng.integers(len(bad))
                bad[i] = rng.integers(256) if rng.random() < 0.5 else bad[i] ^ (1 << rng.integers(8))
            decoded += _only_format_errors(codec, _rezstd(data, t.name, bytes(bad)))
    assert decoded > 0  # payload changes that keep the structure valid decode to other values


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200), name=st.sampled_from(NAMES), flags=st.integers(0, 3))
def test_random_bytes_raise_only_format_error(data, name, flags):
    codec = _codec(name)
    _only_format_errors(codec, data)
    _only_format_errors(codec, bs.MAGIC + bytes([bs.VERSION, flags]) + data)


ONE = np.ones(3, np.float32)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda good: b"XXXX" + good[4:], "bad magic"),
        (lambda good: good[:4] + b"\x02" + good[5:], "version"),
        (lambda good: good[:5] + b"\x80" + good[6:], "unknown stream flags"),
        (lambda good: good[:5] + b"\x02" + good[6:], "header CRC"),  # the flags are covered by the CRC
        (lambda good: good[:-1] + bytes([good[-1] ^ 1]), "payload CRC"),
        (lambda good: good + b"\0", "trailing"),
        (lambda good: B.TopKCodec().encode({"a": ONE}), "'fp16' streams must not be zstd"),
        (
            lambda good: bs.write_stream(
                [bs.TensorRecord("a", ONE.dtype, (3,), bs.MODE_F16, payload=b"\0" * 6)], zstd_level=3
            ),
            "must not be zstd",
        ),
        (lambda good: B.STCCodec().encode({"a": ONE}), "mode 'ternary' is not allowed in a 'fp16' stream"),
        (lambda good: nnc_fl.encode({"a": ONE}), "mode 'quant' is not allowed"),
        (
            lambda good: forge([("a", np.float32, (3,), bs.MODE_F16, b"\0" * 6)], fingerprint=b"\1" * 65),
            "fingerprint length 65",
        ),
        (lambda good: forge([("a", np.float32, (3,), bs.MODE_ZERO, None)] * 2), "duplicate"),
    ],
)
def test_hostile_headers(make, reason):
    good = B.Fp16Codec().encode({"a": ONE})
    assert B.Fp16Codec().decode(good)["a"].tolist() == [1, 1, 1]
    with pytest.raises(FormatError, match=reason):
        B.Fp16Codec().decode(make(good))


def test_hostile_tables():
    fp16 = B.Fp16Codec()
    f16 = np.ones(2, "<f2").tobytes()
    cases = [
        ([("a", np.float32, (2,), bs.MODE_F16, f16)] * 2, "duplicate"),
        ([("a", np.int32, (2,), bs.MODE_F16, f16)], "non-float"),
        ([("a", np.float32, (2,), bs.MODE_INT8, b"\0" * 6)], "mode 'int8' is not allowed"),
        ([("a", np.int32, (2,), bs.MODE_RAW, b"\0" * 7)], "raw payload of 7 bytes"),
        ([("a", np.bool_, (1,), bs.MODE_RAW, b"\x02")], "bool"),
        ([("a", np.float32, (2,), bs.MODE_RAW, b"\0" * 8)], None),  # exact floats are fine
        ([("a", np.int16, (3,), bs.MODE_ZERO, None)], None),
        ([("\xff", np.float32, (2,), bs.MODE_F16, f16)], None),  # valid UTF-8 name: decodes
        ([(b"\xff\xfe", np.float32, (2,), bs.MODE_F16, f16)], "UTF-8"),
        ([("a", np.float32, (2**31, 2), bs.MODE_ZERO, None)], "above the limit"),
    ]
    for items, reason in cases:
        data = forge(items)
        if reason is None:
            assert len(fp16.decode(data)) == 1
        else:
            with pytest.raises(FormatError, match=reason):
                fp16.decode(data)
    ints = nnc_fl.encode({"n": np.arange(-50, 50, dtype=np.int16)})  # coded ints: fine in every stream
    assert nnc_fl.inspect(ints).tensors[0].mode_name == "int"
    assert fp16.decode(ints)["n"].tolist() == list(range(-50, 50))


def _f32(x):
    return np.float32(x).tobytes()


def test_hostile_payloads():
    """The payload checks as each codec meets them (the full list is test_payloads.HOSTILE)."""
    int8, topk, stc = B.Int8ZstdCodec(), B.TopKCodec(), B.STCCodec()
    cases = [
        (int8, bs.MODE_INT8, _f32(-1.0) + b"\0\0", "scale"),
        (int8, bs.MODE_INT8, _f32(1.0) + b"\x80\0", "-128"),
        (int8, bs.MODE_INT8, _f32(1e6) + b"\0\0", "overflows"),
        (int8, bs.MODE_INT8, _f32(1.0) + b"\0", "needs 6"),
        (topk, bs.MODE_SPARSE, b"\x02\x00" + _f32(1), "impossible"),
        (topk, bs.MODE_SPARSE, b"\x03", "k is 3"),
        (topk, bs.MODE_SPARSE, b"\x01\x00" + _f32(1e9), "overflows"),
        (topk, bs.MODE_SPARSE, b"\x01\x05" + _f32(1), "past"),
        (topk, bs.MODE_SPARSE, b"\x02\x01\x00" + _f32(1) * 2, "past"),
        (topk, bs.MODE_SPARSE, b"\x01\x00" + _f32(np.nan), "non-finite"),
        (stc, bs.MODE_TERNARY, b"\x01\x00" + _f32(1) + b"\x00\x40", "padding after the sign"),
        (stc, bs.MODE_TERNARY, b"\x01\x28" + _f32(1) + b"\x00\x00", "Golomb parameter"),
        (stc, bs.MODE_TERNARY, b"\x01\x00" + _f32(-1) + b"\x00\x00", "mu"),
        (stc, bs.MODE_TERNARY, b"\x01\x00" + _f32(1) + b"\x00\x00\x00", "occupies"),
        (stc, bs.MODE_TERNARY, b"\x03\x00" + _f32(1) + b"\x00\x00", "k is 3"),
    ]
    for codec, mode, payload, reason in cases:
        zstd = codec.name != "stc"
        data = forge([("a", np.float16, (2,), mode, zframe(payload) if zstd else payload)], zstd=zstd)
        with pytest.raises(FormatError, match=reason):
            codec.decode(data)
    ok = forge([("a", np.float16, (2,), bs.MODE_TERNARY, b"\x01\x00" + _f32(1) + b"\x00\x00")])
    assert stc.decode(ok)["a"].tolist() == [1.0, 0.0]


def test_zstd_frame_problems():
    codec = B.ZstdCodec()
    good = codec.encode({"a": np.arange(100, dtype=np.float32)})
    (t,) = nnc_fl.inspect(good).tensors
    frame = good[t.offset :]
    plain = np.arange(100, dtype="<f4").tobytes()
    bomb = zframe_declaring(1 << 40, plain)  # a frame header declaring 1 TiB
    cases = [
        (b"\0" * 20, "bad zstd frame header"),
        (zstandard.ZstdCompressor(write_content_size=False).compress(plain), "does not declare"),
        (zframe(plain[:-4]), "declares 396 bytes"),
        (bomb, "declares 1099511627776 bytes, a raw payload of shape \\(100,\\) needs 400"),
        (frame + zstandard.ZstdCompressor().compress(b"more"), "corrupt zstd frame"),
    ]
    for stored, reason in cases:
        with pytest.raises(FormatError, match=reason):
            codec.decode(forge([("a", np.float32, (100,), bs.MODE_RAW, stored)], zstd=True))
    with pytest.raises(FormatError, match="expected bytes"):
        codec.decode("not bytes")


def test_zstd_codecs_need_zstandard_only_to_decode_their_streams(monkeypatch):
    zstd_stream = B.TopKCodec().encode(_small_tensors())
    stc_stream = B.STCCodec().encode(_small_tensors())
    monkeypatch.setitem(sys.modules, "zstandard", None)  # "import zstandard" now fails
    with pytest.raises(FormatError, match="needs the 'zstandard' package"):
        B.TopKCodec().decode(zstd_stream)
    assert list(B.STCCodec().decode(stc_stream)) == list(_small_tensors())
