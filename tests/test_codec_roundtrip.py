"""encode/decode round trips: exactness for ints and lossless tensors, step/2 bounds for floats."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nnc_fl
import nnc_fl.bitstream as bs
import nnc_fl.codecs
from nnc_fl.steps import default_step, qp_to_step, round_up_mantissa

FLOATS = [np.float16, np.float32, np.float64]
INTS = [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]
SHAPES = [(), (0,), (1,), (17,), (3, 0, 2), (5, 7), (4, 3, 3, 3), (2, 1, 1, 1, 6)]


def _float_tensor(rng, shape, dtype, scale=0.05):
    return (rng.laplace(scale=scale, size=shape)).astype(dtype)


def _int_tensor(rng, shape, dtype):
    if dtype == np.bool_:
        return rng.random(shape) < 0.3
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def _assert_same_layout(original, decoded):
    assert list(decoded) == list(original)
    for name, value in original.items():
        value = np.asarray(value)
        assert decoded[name].shape == value.shape, name
        assert decoded[name].dtype == value.dtype, name


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SHAPES)
def test_lossy_error_at_most_half_a_step(dtype, shape):
    rng = np.random.default_rng(1)
    x = _float_tensor(rng, shape, dtype)
    step = 0.01
    out = nnc_fl.decode(nnc_fl.encode({"x": x}, step=step))
    _assert_same_layout({"x": x}, out)
    if x.size:
        err = np.abs(out["x"].astype(np.float64) - x.astype(np.float64)).max()
        ulp = float(np.finfo(dtype).eps) * float(np.abs(x).max() + step)
        assert err <= step / 2 + ulp


@pytest.mark.parametrize("dtype", INTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_integers_exact(dtype, shape):
    rng = np.random.default_rng(2)
    x = _int_tensor(rng, shape, dtype)
    out = nnc_fl.decode(nnc_fl.encode({"x": x}, step=0.5))
    _assert_same_layout({"x": x}, out)
    np.testing.assert_array_equal(out["x"], x)


@pytest.mark.parametrize("dtype", INTS)
def test_small_integer_values_are_entropy_coded(dtype):
    x = (np.arange(4096) % 3 == 0).astype(dtype)
    data = nnc_fl.encode({"x": x})
    assert nnc_fl.inspect(data).tensor("x").mode_name == "int"
    assert len(data) < x.nbytes
    np.testing.assert_array_equal(nnc_fl.decode(data)["x"], x)


@pytest.mark.parametrize("dtype", FLOATS)
def test_lossless_floats_bit_exact_including_negative_zero(dtype):
    rng = np.random.default_rng(3)
    x = _float_tensor(rng, (9, 4), dtype)
    x[0, 0] = -0.0
    nz = np.array([-0.0, 0.0], dtype)
    out = nnc_fl.decode(nnc_fl.encode({"x": x, "nz": nz}, step=0.5, lossless=["x", "nz"]))
    assert out["x"].tobytes() == x.tobytes()
    assert out["nz"].tobytes() == nz.tobytes()


def test_all_zero_tensors_and_scalars_round_trip_exactly():
    tensors = {
        "zero_matrix": np.zeros((64, 32), np.float32),
        "zero_bias": np.zeros(32, np.float16),
        "zero_int": np.zeros((3, 3), np.int64),
        "scalar": np.float64(0.25),
        "int_scalar": np.array(-5, np.int32),
        "empty": np.zeros((0, 10), np.float32),
        "tiny": np.full((8,), 1e-9, np.float32),  # quantises to zero
    }
    data = nnc_fl.encode(tensors, step=0.25)
    out = nnc_fl.decode(data)
    _assert_same_layout(tensors, out)
    for name in ("zero_matrix", "zero_bias", "zero_int", "empty", "tiny"):
        assert not out[name].any()
    assert out["scalar"] == 0.25 and out["int_scalar"] == -5
    modes = {t.name: t.mode_name for t in nnc_fl.inspect(data).tensors}
    assert modes["zero_matrix"] == modes["empty"] == modes["tiny"] == "zero"


def test_extreme_int64_values_fall_back_to_raw_and_stay_exact():
    x = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max, 0, 1], np.int64)
    u = np.array([np.iinfo(np.uint64).max, 0, 3], np.uint64)
    out = nnc_fl.decode(nnc_fl.encode({"x": x, "u": u}))
    np.testing.assert_array_equal(out["x"], x)
    np.testing.assert_array_equal(out["u"], u)


def test_big_endian_and_non_contiguous_inputs():
    x = np.arange(24, dtype=">f4").reshape(4, 6)[:, ::2] / 7
    out = nnc_fl.decode(nnc_fl.encode({"x": x}, step=1e-3))
    assert out["x"].dtype == np.float32 and out["x"].shape == (4, 3)
    assert np.abs(out["x"] - x).max() <= 5e-4 + 1e-6


def test_qp_gives_the_nnc_step():
    assert qp_to_step(-65) == pytest.approx(1.3351e-5, rel=1e-4)
    assert qp_to_step(0) == 1.0 and qp_to_step(4) == 2.0 and qp_to_step(-4) == 0.5
    assert qp_to_step(1) == 1.25 and qp_to_step(-1) == 0.875
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    data = nnc_fl.encode({"x": x}, qp=-20)
    assert nnc_fl.inspect(data).tensor("x").step == qp_to_step(-20)
    assert np.abs(nnc_fl.decode(data)["x"] - x).max() <= qp_to_step(-20) / 2 + 1e-7


def test_per_tensor_steps_and_default_policy():
    rng = np.random.default_rng(4)
    w = _float_tensor(rng, (32, 16), np.float32, scale=0.1)
    b = _float_tensor(rng, (32,), np.float32, scale=0.1)
    info = nnc_fl.inspect(nnc_fl.encode({"w": w, "b": b}, step={"w": 0.05}))
    assert info.tensor("w").step == np.float32(0.05)
    assert info.tensor("b").step == default_step(b)
    # default policy: power of two, 1-d tensors finer
    sw, sb = default_step(w), default_step(b)
    assert np.log2(sw) == int(np.log2(sw)) and sb < sw
    rms = float(np.sqrt(np.mean(w.astype(np.float64) ** 2)))
    assert rms / 16 < sw <= rms / 8


def test_rel_step_follows_each_tensors_rms():
    rng = np.random.default_rng(7)
    w = _float_tensor(rng, (40, 30), np.float32, scale=0.1)
    b = _float_tensor(rng, (40,), np.float32, scale=0.1)
    info = nnc_fl.inspect(nnc_fl.encode({"w": w, "b": b}, rel_step=2.0))
    rms = lambda x: float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))  # noqa: E731
    assert info.tensor("w").step == pytest.approx(2.0 * rms(w), rel=1e-6)
    assert info.tensor("b").step == pytest.approx(2.0 * rms(b) / 4, rel=1e-6)
    codec = nnc_fl.codecs.make_codec("nnc", rel_step=2.0)
    assert codec.params() == {"rel_step": 2.0}
    assert nnc_fl.inspect(codec.encode({"w": w})).tensor("w").step == info.tensor("w").step


def test_rel_step_relative_to_the_update_gives_every_tensor_one_step():
    rng = np.random.default_rng(8)
    w = _float_tensor(rng, (40, 30), np.float32, scale=0.3)
    v = _float_tensor(rng, (20, 10), np.float16, scale=1.0)
    b = _float_tensor(rng, (40,), np.float32, scale=0.5)
    bn = np.abs(_float_tensor(rng, (8,), np.float32, scale=1.0))
    tensors = {"w": w, "v": v, "b": b, "bn.running_var": bn, "n": np.array(5)}
    info = nnc_fl.inspect(nnc_fl.encode(tensors, rel_step=0.25, rel_to="update", lossless=["bn.running_var"]))
    # one step for all quantised floats: 0.25 x the RMS of w, v and b together (exact and int tensors left out)
    together = np.concatenate([w.ravel(), v.astype(np.float64).ravel(), b.ravel()]).astype(np.float64)
    common = 0.25 * float(np.sqrt(np.mean(together**2)))
    assert {n: info.tensor(n).step for n in ("w", "v", "b")} == pytest.approx(dict.fromkeys("wvb", common), rel=1e-6)
    assert info.tensor("bn.running_var").mode == bs.MODE_RAW and info.tensor("n").mode == bs.MODE_INT
    # per-name steps and qps still override; the common step comes from the other tensors only
    over = nnc_fl.inspect(nnc_fl.encode({"w": w, "b": b}, rel_step=2.0, rel_to="update", step={"b": 0.5}))
    assert over.tensor("b").step == 0.5
    assert over.tensor("w").step == pytest.approx(2.0 * float(np.sqrt(np.mean(w.astype(np.float64) ** 2))), rel=1e-6)
    assert nnc_fl.inspect(nnc_fl.encode({"w": w, "b": b}, rel_step=2.0, rel_to="update", qp={"b": -8})).tensor(
        "b").step == qp_to_step(-8)
    # the same through the codec, with a budget (one common factor keeps the steps equal)
    codec = nnc_fl.codecs.make_codec("nnc", rel_step=2.0, rel_to="update", target_fraction=0.05)
    assert codec.params() == {"rel_step": 2.0, "rel_to": "update", "target_fraction": 0.05}
    data = codec.encode({"w": w, "b": b})
    assert len(data) <= 0.05 * 4 * (w.size + b.size)
    budget = nnc_fl.inspect(data)
    assert budget.tensor("w").step == budget.tensor("b").step
    assert "rel_to" not in nnc_fl.codecs.make_codec("nnc", rel_step=2.0).params()
    zero = nnc_fl.inspect(nnc_fl.encode({"w": np.zeros((3, 3), np.float32)}, rel_step=1.0, rel_to="update"))
    assert zero.tensor("w").mode == bs.MODE_ZERO


@pytest.mark.parametrize("kwargs, why", [
    (dict(rel_to="model", rel_step=1.0), "rel_to must be one of"),
    (dict(rel_to="update"), "give rel_step too"),
    (dict(rel_to="update", step=0.1), "give rel_step too"),
])
def test_rel_to_needs_a_known_value_and_rel_step(kwargs, why):
    w = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match=why):
        nnc_fl.encode({"w": w}, **kwargs)
    with pytest.raises(ValueError, match=why):
        nnc_fl.codecs.make_codec("nnc", **kwargs)


def test_rel_to_update_refuses_non_finite_tensors_as_the_coder_does():
    with pytest.raises(ValueError, match="NaN"):
        nnc_fl.encode({"w": np.ones((4, 4), np.float32), "x": np.array([1.0, np.nan])}, rel_step=1.0, rel_to="update")


def test_fingerprint_is_carried():
    fp = nnc_fl.fingerprint({"w": np.ones(3, np.float32)})
    assert len(fp) == 32
    assert nnc_fl.inspect(nnc_fl.encode({"w": np.ones(3)}, fingerprint=fp)).fingerprint == fp
    assert nnc_fl.inspect(nnc_fl.encode({"w": np.ones(3)})).fingerprint is None
    assert fp != nnc_fl.fingerprint({"w": np.ones(3, np.float64)})
    assert fp != nnc_fl.fingerprint({"v": np.ones(3, np.float32)})


def test_decode_tensor_reads_one_tensor_only():
    rng = np.random.default_rng(5)
    tensors = {f"t{i}": _float_tensor(rng, (10, 10), np.float32) for i in range(4)}
    data = bytearray(nnc_fl.encode(tensors, step=0.01))
    full = nnc_fl.decode(bytes(data))
    # corrupt the payload of t0: t3 still decodes, t0 fails its CRC
    t0 = nnc_fl.inspect(bytes(data)).tensor("t0")
    data[t0.offset] ^= 0xFF
    np.testing.assert_array_equal(nnc_fl.decode_tensor(bytes(data), "t3"), full["t3"])
    with pytest.raises(nnc_fl.FormatError, match="CRC"):
        nnc_fl.decode_tensor(bytes(data), "t0")
    with pytest.raises(KeyError, match="nope"):
        nnc_fl.decode_tensor(bytes(data), "nope")


def test_inspect_table():
    data = nnc_fl.encode({"layer.weight": np.ones((4, 4), np.float32) * 0.3, "n": np.arange(5)}, step=0.1)
    info = nnc_fl.inspect(data)
    rows = info.as_rows()
    assert [r["name"] for r in rows] == ["layer.weight", "n"]
    assert rows[0]["mode"] == "quant" and rows[0]["shape"] == [4, 4]
    assert rows[1]["mode"] == "int" and rows[1]["step"] is None
    assert sum(r["bytes"] for r in rows) + info.header_bytes == len(data) == info.total_bytes
    text = str(info)
    assert "layer.weight" in text and "quant" in text and "4x4" in text


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"x": np.array([1.0, np.nan], np.float32)}, "'x'.*NaN"),
        ({"y": np.array([np.inf], np.float64)}, "'y'.*NaN or Inf"),
        ({"z": np.array([1 + 2j])}, "unsupported dtype"),
        ({"s": np.array(["a"])}, "unsupported dtype"),
        ({3: np.ones(2)}, "names must be str"),
    ],
)
def test_bad_input_raises_clear_errors(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        nnc_fl.encode(bad, step=0.1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="at most one of step, qp and rel_step"):
        nnc_fl.encode({"x": np.ones(2)}, step=0.1, qp=-4)
    with pytest.raises(ValueError, match="at most one"):
        nnc_fl.encode({"x": np.ones(2)}, step=0.1, rel_step=1.0)
    with pytest.raises(ValueError, match="rel_step"):
        nnc_fl.encode({"x": np.ones(2)}, rel_step=-1.0)
    with pytest.raises(ValueError, match="step"):
        nnc_fl.encode({"x": np.ones(2)}, step=0.0)
    with pytest.raises(ValueError, match="2\\*\\*62"):
        nnc_fl.encode({"x": np.ones(2) * 1e10}, step=1e-12)
    with pytest.raises(ValueError, match="lossless names"):
        nnc_fl.encode({"x": np.ones(2)}, lossless=["y"])
    with pytest.raises(TypeError, match="qp"):
        nnc_fl.encode({"x": np.ones(2)}, qp=1.5)
    with pytest.raises(TypeError, match="mapping"):
        nnc_fl.encode([np.ones(2)])


def test_deterministic_bytes():
    rng = np.random.default_rng(6)
    t = {"w": _float_tensor(rng, (50, 40), np.float32)}
    assert nnc_fl.encode(t, step=0.003) == nnc_fl.encode(dict(t), step=0.003)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from([np.float16, np.float32, np.float64]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9),
        elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=16),
    ),
    step=st.floats(1e-4, 10.0),
)
def test_property_lossy_round_trip(arr, step):
    data, decoded = nnc_fl.encode({"a": arr}, step=step, return_decoded=True)
    out = nnc_fl.decode(data)["a"]
    assert out.shape == arr.shape and out.dtype == arr.dtype
    assert decoded["a"].tobytes() == out.tobytes()  # the encoder's reconstruction is the decoder's
    if arr.size:
        s = float(np.float32(step))
        err = np.abs(out.astype(np.float64) - arr.astype(np.float64)).max()
        assert err <= s / 2 + float(np.finfo(arr.dtype).eps) * (float(np.abs(arr).max()) + s)


@settings(max_examples=120, deadline=None)
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from(INTS),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12),
    )
)
def test_property_integers_exact(arr):
    out = nnc_fl.decode(nnc_fl.encode({"a": arr}))["a"]
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_rate_distortion_quantisation_trades_error_for_bytes():
    rng = np.random.default_rng(8)
    x = {"w": (rng.laplace(size=(64, 256)) * 0.01).astype(np.float32)}
    plain = nnc_fl.encode(x, step=0.01)
    rd = nnc_fl.encode(x, step=0.01, rd_lambda=0.2)
    assert nnc_fl.encode(x, step=0.01, rd_lambda=0.0) == plain
    assert len(rd) < 0.95 * len(plain)
    out = nnc_fl.decode(rd)["w"]  # the ordinary decoder: the format is unchanged
    err = np.abs(out.astype(np.float64) - x["w"])
    step = float(np.float32(0.01))
    assert err.max() < step * (1 + 1e-6)  # below one step (not half a step)
    assert err.max() > step / 2  # and it did move some values
    levels = np.round(out.astype(np.float64) / step)
    rounded = np.sign(x["w"]) * np.floor(np.abs(x["w"]) / step + 0.5)
    assert np.all(np.abs(levels) <= np.abs(rounded))  # only ever towards zero
    with pytest.raises(ValueError, match="rd_lambda"):
        nnc_fl.encode(x, step=0.01, rd_lambda=-1)


def test_rate_distortion_payload_matches_the_reference_decoder():
    from nnc_fl import reference
    from nnc_fl._levels import encode_levels_rd
    from nnc_fl._quantise import quantise

    rng = np.random.default_rng(9)
    x = rng.laplace(size=500) * 0.03
    levels, _ = quantise(x, 0.01, 1 << 62)
    payload = encode_levels_rd(levels, x, 0.01, 0.3, 50, 0).tobytes()
    assert reference.decode_levels(payload, 500, 50) == levels.tolist()
    assert reference.encode_levels(levels.tolist(), 50) == payload


def test_dependent_quantisation_round_trips_within_two_steps_and_is_signalled():
    rng = np.random.default_rng(10)
    x = {
        "w": (rng.normal(size=(64, 96)) * 0.01).astype(np.float32),
        "b": (rng.normal(size=64) * 0.01).astype(np.float32),
        "n": np.arange(5),
        "h": (rng.normal(size=(8, 8)) * 0.01).astype(np.float16),
    }
    for lam in (0.0, 0.075):
        data = nnc_fl.encode(x, step=0.004, dq=True, rd_lambda=lam)
        info = nnc_fl.inspect(data)
        assert info.tensor("w").tools & nnc_fl.bitstream.TOOL_DQ and not info.tensor("n").tools
        out = nnc_fl.decode(data)
        np.testing.assert_array_equal(out["n"], x["n"])
        s = float(np.float32(0.004))
        for k in ("w", "b", "h"):
            assert np.abs(out[k].astype(np.float64) - x[k]).max() < 2 * s * (1 + 1e-3)
    # at about half the step, DQ reaches the RMSE of plain RD coding in fewer bytes
    plain = nnc_fl.encode({"w": x["w"]}, step=0.008, rd_lambda=0.1)
    dq = nnc_fl.encode({"w": x["w"]}, step=0.0046, rd_lambda=0.075, dq=True)
    rmse = lambda d: float(np.sqrt(np.mean((nnc_fl.decode(d)["w"].astype(np.float64) - x["w"]) ** 2)))  # noqa: E731
    assert rmse(dq) < rmse(plain) and len(dq) < len(plain)
    tiny = {"w": np.full((3, 3), 1e-4, np.float32)}  # every index 0 after the trellis
    assert nnc_fl.inspect(nnc_fl.encode(tiny, step=0.01, dq=True)).tensor("w").mode_name == "zero"
    codec = nnc_fl.codecs.make_codec("nnc", dq=True, step=0.004)
    assert codec.params() == {"step": 0.004, "dq": True}
    assert nnc_fl.inspect(codec.encode(x)).tensor("w").tools & nnc_fl.bitstream.TOOL_DQ
    assert not nnc_fl.inspect(codec.encode(x, exact=True)).tensor("n").tools


def test_eight_state_dependent_quantisation_round_trips_with_every_tool_and_is_signalled():
    rng = np.random.default_rng(13)
    w = (rng.normal(size=(64, 96)) * 0.01).astype(np.float32)
    w[40:48] = w[8:16]  # repeated rows: row references take them
    x = {"w": w, "b": (rng.normal(size=64) * 0.01).astype(np.float32),
         "h": (rng.normal(size=(8, 8)) * 0.01).astype(np.float16), "n": np.arange(5)}
    s = float(np.float32(0.004))
    for kw in ({}, {"rate_search": True, "row_refs": True, "schema_bound": True}):
        data = nnc_fl.encode(x, step=0.004, dq=8, rd_lambda=0.075, **kw)
        expect = x if kw else None
        info = nnc_fl.inspect(data, expect=expect)
        for k in ("w", "b", "h"):
            tools = info.tensor(k).tools
            assert tools & bs.TOOL_DQ and tools & bs.TOOL_DQ_8STATES, (k, tools)
        assert not info.tensor("n").tools
        out = nnc_fl.decode(data, expect=expect)
        np.testing.assert_array_equal(out["n"], x["n"])
        for k in ("w", "b", "h"):
            assert np.abs(out[k].astype(np.float64) - x[k]).max() < 2 * s * (1 + 1e-3)
            np.testing.assert_array_equal(nnc_fl.decode_tensor(data, k, expect=expect), out[k])
    assert info.tensor("w").tools & bs.TOOL_ROW_REFS
    codec = nnc_fl.codecs.make_codec("nnc", dq="8", step=0.004)  # as it travels in a config record
    assert codec.params() == {"step": 0.004, "dq": 8}
    assert nnc_fl.inspect(codec.encode(x)).tensor("w").tools & bs.TOOL_DQ_8STATES
    assert nnc_fl.codecs.make_codec("nnc", dq=4).params() == nnc_fl.codecs.make_codec("nnc", dq=True).params()
    for bad in (3, "16", "yes please", 8.5):
        with pytest.raises(ValueError, match="dq must be true, false, 4 or 8"):
            nnc_fl.codecs.make_codec("nnc", dq=bad)
    four = nnc_fl.inspect(nnc_fl.encode(x, step=0.004, dq=4, rd_lambda=0.075))
    assert not four.tensor("w").tools & bs.TOOL_DQ_8STATES
    for bad in (1, 2, 3, 16, -4, 8.0, "8", None):
        with pytest.raises(ValueError, match="dq must be"):
            nnc_fl.encode(x, step=0.004, dq=bad)


def test_dependent_quantisation_keeps_float16_reconstructions_finite():
    x = {"h": np.array([65504.0, -65504.0, 1.0, 0.0] * 4, np.float16)}
    out = nnc_fl.decode(nnc_fl.encode(x, step=40.0, dq=True))["h"]
    assert np.isfinite(out).all() and np.abs(out.astype(np.float64) - x["h"]).max() < 2 * 64


def test_rate_search_picks_a_signalled_pair_and_never_loses_much():
    rng = np.random.default_rng(12)
    x = {"w": (rng.normal(size=(128, 64)) * 0.01).astype(np.float32), "n": np.arange(300) % 7}
    for kw in ({}, {"rd_lambda": 0.1}, {"dq": True, "rd_lambda": 0.075}, {"dq": 8, "rd_lambda": 0.075}):
        base = nnc_fl.encode(x, step=0.003, **kw)
        searched = nnc_fl.encode(x, step=0.003, rate_search=True, **kw)
        assert len(searched) <= len(base) + 2
        out, ref = nnc_fl.decode(searched), nnc_fl.decode(base)
        if "rd_lambda" not in kw:  # RD decisions depend on the rates; else the same levels, other rates
            assert all(np.array_equal(out[k], ref[k]) for k in x)
        np.testing.assert_array_equal(out["n"], x["n"])
    assert {t.tools & 3 for t in nnc_fl.inspect(searched).tensors} != {0}
    assert nnc_fl.codecs.make_codec("nnc", rate_search=True).params() == {"rate_search": True}


def test_row_references_code_repeated_units_cheaper_and_round_trip():
    rng = np.random.default_rng(13)
    w = (rng.laplace(size=(64, 64)) * 0.01).astype(np.float32)
    w[10:17] = 0.0  # dead units
    for r in range(20, 64, 4):
        w[r] = w[int(rng.integers(0, r - 1))] + (rng.random(64) < 0.1) * 0.003  # near-copies
    x = {"w": w, "b": w[:, 0].copy(), "i": (np.arange(64 * 4).reshape(64, 4) % 3).astype(np.int16)}
    for kw in ({}, {"rd_lambda": 0.1}, {"dq": True, "rd_lambda": 0.075}, {"rate_search": True}):
        plain = nnc_fl.encode(x, step=0.002, **kw)
        refs = nnc_fl.encode(x, step=0.002, row_refs=True, **kw)
        info = nnc_fl.inspect(refs)
        assert info.tensor("w").tools & nnc_fl.bitstream.TOOL_ROW_REFS
        assert not info.tensor("b").tools & nnc_fl.bitstream.TOOL_ROW_REFS  # one row: nothing to reference
        assert info.tensor("w").length < 0.95 * nnc_fl.inspect(plain).tensor("w").length
        out, ref = nnc_fl.decode(refs), nnc_fl.decode(plain)
        assert all(np.array_equal(out[k], ref[k]) for k in x)  # same levels, fewer bytes
    assert nnc_fl.codecs.make_codec("nnc", row_refs=True).params() == {"row_refs": True}


# --- temporal contexts (temporal_reference=...) ------------------------------------------------------


def _consecutive_updates(seed=21):
    """Two updates of a small model that agree in sign and size where the model keeps moving."""
    rng = np.random.default_rng(seed)
    drift = {"w": rng.laplace(size=(64, 96)) * 0.01, "b": rng.normal(size=64) * 0.01}
    prev = {k: (v + rng.normal(size=v.shape) * 0.004).astype(np.float32) for k, v in drift.items()}
    cur = {k: (v + rng.normal(size=v.shape) * 0.004).astype(np.float32) for k, v in drift.items()}
    cur["h"] = (rng.normal(size=(8, 8)) * 0.01).astype(np.float16)  # float16: coded without the tool
    cur["n"] = np.arange(5, dtype=np.int64)
    return prev, cur


@pytest.mark.parametrize(
    "options", [{}, {"rd_lambda": 0.02}, {"rate_search": True}, {"schema_bound": True}, {"target_bytes": 3000}]
)
def test_temporal_contexts_code_consecutive_updates_smaller_and_round_trip(options):
    prev, cur = _consecutive_updates()
    kw = {"rel_step": 1.0, "rel_to": "update", **options}
    expect = cur if options.get("schema_bound") else None
    plain = nnc_fl.encode(cur, **kw)
    data, decoded = nnc_fl.encode(cur, temporal_reference=prev, return_decoded=True, **kw)
    info = nnc_fl.inspect(data, expect=expect)
    assert info.temporal_digest == nnc_fl.temporal_digest(prev)
    assert info.tensor("w").tools & bs.TOOL_TEMPORAL
    assert not info.tensor("h").tools & bs.TOOL_TEMPORAL  # no reference, and float16
    assert len(data) <= len(plain) or "target_bytes" in options  # the tool never makes a stream larger
    before = nnc_fl.inspect(plain, expect=expect).tensor("w")
    if "target_bytes" in options:  # the same budget buys a finer step
        assert info.tensor("w").step < before.step
    else:
        assert info.tensor("w").length < 0.95 * before.length
    out = nnc_fl.decode(data, temporal_reference=prev, expect=expect)
    assert all(out[k].tobytes() == decoded[k].tobytes() for k in cur)
    assert nnc_fl.decode_tensor(data, "w", temporal_reference=prev, expect=expect).tobytes() == out["w"].tobytes()
    if not options:  # plain rounding: the same levels either way, fewer bytes
        assert all(out[k].tobytes() == nnc_fl.decode(plain)[k].tobytes() for k in cur)


def test_the_temporal_reference_is_scaled_to_the_tensor():
    # the classes compare the tensor with its reference scaled by the power of two nearest their RMS
    # ratio, at most 2 (tools bit 6): one node's update is larger than the average it is compared with
    prev, cur = _consecutive_updates()
    for factor, shift in ((1.0, 0), (0.3, 0), (1.3, 0), (2.2, 1), (3.0, 1)):
        reference = {"w": prev["w"] / np.float32(factor)}
        data = nnc_fl.encode(cur, step=0.004, temporal_reference=reference)
        tools = nnc_fl.inspect(data).tensor("w").tools
        assert tools & bs.TOOL_TEMPORAL and tools >> bs.TOOL_TEMPORAL_SCALE_SHIFT == shift, factor
        out = nnc_fl.decode(data, temporal_reference=reference)
        assert out["w"].tobytes() == nnc_fl.decode(nnc_fl.encode(cur, step=0.004))["w"].tobytes()


def test_temporal_reference_is_used_only_where_it_applies():
    prev, cur = _consecutive_updates()
    # dependent quantisation and row references code without it; the stream then names no reference
    for kw in ({"dq": True}, {}):
        data = nnc_fl.encode(cur, step=0.004, temporal_reference={} if not kw else prev, **kw)
        assert nnc_fl.inspect(data).temporal_digest is None
        assert nnc_fl.decode(data)["w"].shape == (64, 96)
    # a reference far below the step gives class 0 everywhere: the usual contexts, no tool, no digest
    tiny = {k: v * np.float32(1e-6) for k, v in prev.items()}
    data = nnc_fl.encode(cur, step=0.004, temporal_reference=tiny)
    assert nnc_fl.inspect(data).temporal_digest is None
    assert data == nnc_fl.encode(cur, step=0.004)


@pytest.mark.parametrize(
    "reference, error, match",
    [
        ({"w": np.zeros((64, 95), np.float32)}, ValueError, "shape"),
        ({"w": np.zeros((64, 96), np.float16)}, ValueError, "float32/64"),
        ({"w": np.zeros((64, 96), np.int32)}, ValueError, "float32/64"),
        ({"w": np.full((64, 96), np.inf, np.float32)}, ValueError, "NaN or Inf"),
        ({"w": np.full((64, 96), np.nan, np.float64)}, ValueError, "NaN or Inf"),
        ([("w", 1)], TypeError, "temporal_reference must be a mapping"),
    ],
)
def test_temporal_reference_errors_name_the_tensor(reference, error, match):
    _, cur = _consecutive_updates()
    with pytest.raises(error, match=match):
        nnc_fl.encode(cur, step=0.004, temporal_reference=reference)


# --- lossless floats in mode float-lossless (float_lossless=True) -----------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(), (1,), (17,), (5, 7), (4, 3, 3, 3), (64, 40)])
def test_float_lossless_is_bit_exact(dtype, shape):
    rng = np.random.default_rng(10)
    x = _float_tensor(rng, shape, dtype)
    if x.size > 2:
        info = np.finfo(dtype)
        x.flat[:3] = [-0.0, info.smallest_subnormal, -info.max]
    tensors = {"x": x, "nz": np.array([-0.0, 0.0], dtype), "z": np.zeros(3, dtype)}
    data = nnc_fl.encode(tensors, step=0.5, lossless=["x", "nz", "z"], float_lossless=True)
    out = nnc_fl.decode(data)
    _assert_same_layout(tensors, out)
    for name, value in tensors.items():
        assert out[name].tobytes() == value.tobytes(), name
    modes = {t.name: t.mode_name for t in nnc_fl.inspect(data).tensors}
    assert modes["z"] == "zero"
    # the coded mode where it is smaller than the raw bytes (a few values may stay raw)
    assert modes["nz"] in ("raw", "float-lossless")
    if x.size >= 64:
        assert modes["x"] == "float-lossless"


def test_float_lossless_is_smaller_and_opt_in():
    rng = np.random.default_rng(11)
    w = {"w": _float_tensor(rng, (128, 64), np.float32)}
    raw = nnc_fl.encode(w, lossless=["w"])
    coded = nnc_fl.encode(w, lossless=["w"], float_lossless=True)
    assert nnc_fl.inspect(raw).tensor("w").mode_name == "raw"  # the default keeps today's bytes
    assert nnc_fl.inspect(coded).tensor("w").mode_name == "float-lossless"
    assert len(coded) < 0.87 * len(raw)
    assert nnc_fl.decode(coded)["w"].tobytes() == w["w"].tobytes()
    # quantised tensors are not affected by the switch
    assert nnc_fl.encode(w, step=0.01, float_lossless=True) == nnc_fl.encode(w, step=0.01)
    with pytest.raises(ValueError, match="NaN or Inf"):
        nnc_fl.encode({"w": np.array([1.0, np.inf])}, lossless=["w"], float_lossless=True)
    with pytest.raises(TypeError, match="float_lossless"):
        nnc_fl.encode(w, lossless=["w"], float_lossless=1)


def test_nnc_codec_float_lossless_keyframes():
    rng = np.random.default_rng(12)
    model = {"w": _float_tensor(rng, (96, 50), np.float32), "b": _float_tensor(rng, (96,), np.float64),
             "n": np.array(3, np.int64)}
    codec = nnc_fl.codecs.make_codec("nnc", float_lossless=True)
    assert codec.params() == {"float_lossless": True}
    assert nnc_fl.codecs.make_codec("nnc", **codec.params()).params() == codec.params()
    assert "float_lossless" not in nnc_fl.codecs.make_codec("nnc").params()
    data = codec.encode(model, exact=True)
    modes = {t.name: t.mode_name for t in nnc_fl.inspect(data).tensors}
    assert modes == {"w": "float-lossless", "b": "float-lossless", "n": "int"}
    out = codec.decode(data, expect=model)
    assert all(out[k].tobytes() == np.asarray(v).tobytes() for k, v in model.items())
    assert len(data) < len(nnc_fl.codecs.make_codec("nnc").encode(model, exact=True))
    with pytest.raises(ValueError, match="float_lossless"):
        nnc_fl.codecs.make_codec("nnc", float_lossless="yes")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from([np.float16, np.float32, np.float64]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12),
        elements=st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True, width=16),
    ),
)
def test_property_float_lossless_round_trip(arr):
    data = nnc_fl.encode({"a": arr}, lossless=["a"], float_lossless=True)
    out = nnc_fl.decode(data)["a"]
    assert out.shape == arr.shape and out.dtype == arr.dtype
    assert out.tobytes() == arr.tobytes()
    assert len(data) <= len(nnc_fl.encode({"a": arr}, lossless=["a"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from([np.float16, np.float32, np.float64]),
        shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=9),
        elements=st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True, width=16),
    ),
    bits=st.integers(1, 52),
)
def test_property_round_up_mantissa_never_rounds_down(arr, bits):
    out = round_up_mantissa(arr, bits)
    assert out.shape == arr.shape and out.dtype == arr.dtype
    finite = np.isfinite(arr)
    assert np.array_equal(out[~finite], arr[~finite], equal_nan=True)  # NaN / Inf as they were
    a, o = arr[finite].astype(np.float64), out[finite].astype(np.float64)
    assert np.all(o >= a)
    tiny = float(np.finfo(arr.dtype).tiny)  # below it (subnormals) the bits are absolute, not relative
    assert np.all(o - a <= np.maximum(np.abs(a), tiny) * 2.0**-bits)
    assert np.all(np.isfinite(o))  # rounding that would overflow keeps the value
    assert np.array_equal(round_up_mantissa(out, bits), out, equal_nan=True)  # idempotent
    mantissa = {np.dtype(np.float16): 10, np.dtype(np.float32): 23, np.dtype(np.float64): 52}[arr.dtype]
    if bits >= mantissa:
        assert out.tobytes() == arr.tobytes()


def test_round_up_mantissa_edges():
    x = np.array([1.0, np.nextafter(np.float32(1), np.float32(2)), -np.nextafter(np.float32(1), np.float32(2)),
                  np.finfo(np.float32).max, -0.0, 1e-45, -1e-45], np.float32)
    out = round_up_mantissa(x, 8)
    assert out.tolist()[:3] == [1.0, 1.0 + 2.0**-8, -1.0]  # up one unit of 8 bits; negatives towards zero
    assert out[3] == x[3]  # would overflow to inf: kept
    assert out[4] == 0 and out[6] == 0 and out[5] > 0
    ints = np.arange(5, dtype=np.int32)
    assert np.array_equal(round_up_mantissa(ints, 3), ints)
    assert round_up_mantissa(x, None).tobytes() == x.tobytes()  # None: exact
    for bad in (0, 53, 2.5, True, np.bool_(True), "x", float("inf"), float("nan"), "8.5"):
        with pytest.raises((TypeError, ValueError), match="lossless_bits"):
            round_up_mantissa(x, bad)


def test_lossless_bits_keeps_statistics_above_their_values_and_costs_fewer_bytes():
    rng = np.random.default_rng(21)
    var = rng.gamma(2.0, 0.5, size=256).astype(np.float32)
    new_var = (var * rng.uniform(0.0, 1.5, size=256)).astype(np.float32)
    new_var[:8] = 0.0  # variances that fell to zero
    delta = {"w": _float_tensor(rng, (64, 40), np.float32), "bn.running_var": new_var - var,
             "bn.running_mean": rng.normal(size=256).astype(np.float32)}
    exact = nnc_fl.codecs.make_codec("nnc", rel_step=2.0, float_lossless=True)
    rounded = nnc_fl.codecs.make_codec("nnc", rel_step=2.0, float_lossless=True, lossless_bits="8")
    assert rounded.params()["lossless_bits"] == 8
    assert nnc_fl.codecs.make_codec("nnc", **rounded.params()).params() == rounded.params()
    data, decoded = rounded.encode_decoded(delta)
    out = rounded.decode(data)
    assert all(np.array_equal(out[k], decoded[k]) for k in delta)
    d = out["bn.running_var"]
    assert np.all(d >= delta["bn.running_var"]) and np.all(var + d >= 0)
    assert np.all(d - delta["bn.running_var"] <= np.abs(delta["bn.running_var"]) * 2.0**-8)
    assert np.all(out["bn.running_mean"] >= delta["bn.running_mean"])
    assert np.array_equal(out["w"], exact.decode(exact.encode(delta))["w"])  # quantised tensors unchanged
    stats = ["bn.running_var", "bn.running_mean"]
    sizes = [sum(t.length for t in nnc_fl.inspect(c.encode(delta)).tensors if t.name in stats)
             for c in (exact, rounded)]
    assert sizes[1] < 0.6 * sizes[0]
    # keyframes stay bit exact
    key = rounded.decode(rounded.encode(delta, exact=True), expect=delta)
    assert all(key[k].tobytes() == v.tobytes() for k, v in delta.items())
    # the functional form, and the default: exact
    assert nnc_fl.decode(nnc_fl.encode(delta, lossless=stats))["bn.running_var"].tobytes() == \
        delta["bn.running_var"].tobytes()
    with pytest.raises(ValueError, match="lossless_bits"):
        nnc_fl.codecs.make_codec("nnc", lossless_bits=0)
    with pytest.raises(TypeError, match="lossless_bits"):
        nnc_fl.encode(delta, lossless=stats, lossless_bits=True)


# --- encoder-side reconstruction (return_decoded) and threads -------------------------------------

_DECODED_CASES = [
    {},
    {"rd_lambda": 0.1},
    {"dq": True, "rd_lambda": 0.05},
    {"row_refs": True, "rate_search": True},
    {"schema_bound": True},
    {"float_lossless": True, "lossless": ["x32"]},
]


def _mixed_tensors(rng):
    w = _float_tensor(rng, (40, 30), np.float32)
    w[5:9] = w[0]  # repeated rows for row references
    return {
        "x32": w,
        "x16": _float_tensor(rng, (7, 9), np.float16),
        "x64": _float_tensor(rng, (33,), np.float64),
        "scalar": np.float32(0.25),
        "tiny": np.full(5, 1e-9, np.float32),  # rounds to zero: mode zero
        "noise": rng.normal(size=4).astype(np.float32) * 1e3,  # coarse step vs raw
        "h_edge": np.array([65504.0, -65504.0, 1.0], np.float16),  # overflow-safe step
        "ints": rng.integers(-300, 300, size=(6, 5)),
        "big": np.array([2**62 + 5, -3], np.int64),  # beyond levels: raw
        "flags": rng.random(11) < 0.5,
        "empty": np.zeros((0, 3), np.float32),
        "be": _float_tensor(rng, (12,), np.float32).astype(">f4"),
    }


@pytest.mark.parametrize("options", _DECODED_CASES)
def test_return_decoded_is_what_decode_gives_bit_for_bit(options):
    rng = np.random.default_rng(21)
    x = _mixed_tensors(rng)
    for step_kw in ({"step": 0.01}, {"rel_step": 2.0}, {}):
        data, decoded = nnc_fl.encode(x, return_decoded=True, **step_kw, **options)
        assert data == nnc_fl.encode(x, **step_kw, **options)
        expect = x if options.get("schema_bound") else None
        out = nnc_fl.decode(data, expect=expect)
        assert list(decoded) == list(out)
        for k in out:
            assert decoded[k].dtype == out[k].dtype and decoded[k].shape == out[k].shape, k
            assert decoded[k].tobytes() == out[k].tobytes(), (k, options, step_kw)
    codec = nnc_fl.codecs.make_codec("nnc", rel_step=2.0, **{k: v for k, v in options.items() if k != "lossless"})
    for exact in (False, True):
        data, decoded = codec.encode_decoded(x, exact=exact)
        out = codec.decode(data, expect=x)
        assert all(decoded[k].tobytes() == out[k].tobytes() for k in out)
    with pytest.raises(TypeError, match="return_decoded"):
        nnc_fl.encode(x, return_decoded=1)


def test_threads_do_not_change_the_stream_and_errors_name_the_tensor():
    rng = np.random.default_rng(22)
    x = {f"t{i}": _float_tensor(rng, (int(rng.integers(1, 300)), 17), np.float32) for i in range(9)}
    one = nnc_fl.encode(x, rel_step=1.0, threads=1)
    assert nnc_fl.encode(x, rel_step=1.0, threads=3) == one
    a, b = nnc_fl.decode(one, threads=1), nnc_fl.decode(one, threads=4)
    assert list(a) == list(b) == list(x) and all(a[k].tobytes() == b[k].tobytes() for k in a)
    bad = dict(x, t3=np.array([1.0, np.nan], np.float32), t7=np.array([np.inf], np.float32))
    with pytest.raises(ValueError, match="'t3'"):  # the first bad tensor in order, whatever finished first
        nnc_fl.encode(bad, threads=4)
    for threads in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            nnc_fl.encode(x, threads=threads)
        with pytest.raises(ValueError, match="threads"):
            nnc_fl.decode(one, threads=threads)


def test_wide_levels_get_context_coded_prefixes_and_round_trip_exactly():
    # a keyframe: a whole model's values on a grid, most levels beyond the greater-than flags
    rng = np.random.default_rng(12)
    grid = 2.0**-9
    x = {
        "w": (rng.integers(-55, 56, size=(64, 200)) * grid).astype(np.float32),
        "small": (rng.integers(-2, 3, size=(64, 200)) * grid).astype(np.float32),
        "n": rng.integers(-1000, 1000, size=500),
    }
    data = nnc_fl.codecs.make_codec("nnc").encode(x, exact=True, grid={"w": grid, "small": grid})
    info = nnc_fl.inspect(data)
    eg = nnc_fl.bitstream.TOOL_EG_CTX
    assert info.tensor("w").tools & eg and info.tensor("n").tools & eg
    assert not info.tensor("small").tools & eg  # levels within the flags: not tried
    out = nnc_fl.decode(data)
    for k in x:
        np.testing.assert_array_equal(out[k], x[k])
    np.testing.assert_array_equal(nnc_fl.decode_tensor(data, "w"), x["w"])
    # near the zeroth-order entropy of a uniform level (log2 111 = 6.8 bits), where bypass
    # prefixes cost ~9.6 bits
    assert info.tensor("w").length * 8 / x["w"].size < 8.0


def test_a_prepared_temporal_reference_is_a_frozen_copy_with_its_digest():
    prev, cur = _consecutive_updates()
    prepared = nnc_fl.TemporalReference(prev)
    assert prepared.digest == nnc_fl.temporal_digest(prev) and list(prepared) == list(prev)
    assert set(prepared.finite) == {"w", "b"}
    with pytest.raises(ValueError):
        prepared["w"][0, 0] = 1.0  # read-only
    data = nnc_fl.encode(cur, step=0.004, temporal_reference=prepared)
    assert data == nnc_fl.encode(cur, step=0.004, temporal_reference=prev)  # the same stream
    prev["w"][0, 0] += np.float32(1.0)  # the caller's arrays may change: the prepared copy does not
    out = nnc_fl.decode(data, temporal_reference=prepared)
    with pytest.raises(nnc_fl.TemporalReferenceError):
        nnc_fl.decode(data, temporal_reference=prev)
    assert out["w"].tobytes() == nnc_fl.decode(nnc_fl.encode(cur, step=0.004))["w"].tobytes()
    bad = nnc_fl.TemporalReference({"w": np.full((64, 96), np.nan, np.float32)})
    assert not bad.finite
    with pytest.raises(ValueError, match="NaN or Inf"):
        nnc_fl.encode(cur, step=0.004, temporal_reference=bad)
    with pytest.raises(TypeError, match="mapping"):
        nnc_fl.TemporalReference([1, 2])
