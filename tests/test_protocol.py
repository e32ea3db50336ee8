"""nnc_fl.protocol: payload packing, protocol records, version rules, delta arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from nnc_fl import protocol as p

FP_A, FP_B = bytes(range(32)), bytes(range(1, 33))


def _down(**changes) -> p.Downlink:
    fields = dict(
        kind=p.DELTA,
        version=5,
        fingerprint=FP_B,
        base_version=4,
        base_fingerprint=FP_A,
        payload_codec="nnc",
        payload_codec_params='{"step": 0.01}',
        codec="nnc",
        codec_params='{"step": 0.02}',
        arrays_key="arrays",
        server_round=3,
    )
    fields.update(changes)
    return p.Downlink(**fields)


def test_payload_travels_in_a_flower_array_and_refuses_numpy():
    arr = Array(**p.pack_payload(b"\x00coded\xff"))
    record = ArrayRecord({p.PAYLOAD_KEY: arr})
    assert p.payload_of(record) == b"\x00coded\xff"
    with pytest.raises(TypeError, match="nnc-fl/1"):
        arr.numpy()  # forgetting to decode fails loudly


@pytest.mark.parametrize(
    "array",
    [Array(np.zeros(3, np.uint8)), Array(dtype="uint8", shape=(2,), stype=p.STYPE, data=b"abc")],
)
def test_unpack_refuses_foreign_arrays(array):
    with pytest.raises(p.ProtocolError):
        p.unpack_payload(array)


def test_payload_of_needs_exactly_the_payload_key():
    with pytest.raises(p.ProtocolError, match="only"):
        p.payload_of(ArrayRecord({"w": Array(np.zeros(2, np.float32))}))


def test_downlink_round_trips_through_a_config_record():
    down = _down()
    assert p.Downlink.from_config(ConfigRecord(down.to_config())) == down


def test_uplink_round_trips_through_a_config_record():
    up = p.Uplink(kind=p.UPDATE, version=4, fingerprint=FP_A, codec="nnc", encode_s=0.5, decode_s=0.1)
    assert p.Uplink.from_config(ConfigRecord(up.to_config())) == up


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"protocol": "nnc-fl/2"}, "protocol"),
        ({"kind": "bogus"}, "kind"),
        ({"version": "5"}, "version"),
        ({"version": True}, "version"),
        ({"fingerprint": b"short"}, "32"),
    ],
)
def test_malformed_downlink_records_are_refused(change, message):
    record = {**_down().to_config(), **change}
    with pytest.raises(p.ProtocolError, match=message):
        p.Downlink.from_config(record)


def test_missing_field_is_named():
    record = _down().to_config()
    del record["arrays_key"]
    with pytest.raises(p.ProtocolError, match="arrays_key"):
        p.Downlink.from_config(record)


def test_codec_params_json_round_trip_and_limits():
    assert p.decode_params(p.encode_params({"step": 0.01, "qp": -38})) == {"qp": -38, "step": 0.01}
    for bad in ("[1]", "{", '{"a": [1]}', "x" * 5000, 3):
        with pytest.raises(p.ProtocolError):
            p.decode_params(bad)
    with pytest.raises(p.ProtocolError):
        p.encode_params({"a": [1, 2]})


@pytest.mark.parametrize(
    ("held", "increments_from", "kind"),
    [
        (5, 5, p.SAME),
        (4, 5, p.DELTA),
        (4, None, p.KEYFRAME),
        (3, 5, p.KEYFRAME),  # needs G_4 - G_3, which the server no longer has
        (3, 4, p.DELTA),  # chain of two increments
        (0, 1, p.DELTA),
        (None, 1, p.KEYFRAME),
        (6, 1, p.KEYFRAME),  # a node claiming a future version
    ],
)
def test_version_rule(held, increments_from, kind):
    assert p.choose_downlink(held, 5, increments_from) == kind


def test_chain_longer_than_the_limit_gets_a_keyframe():
    v = p.MAX_CHAIN + 10
    assert p.choose_downlink(v - p.MAX_CHAIN, v, 1) == p.DELTA
    assert p.choose_downlink(v - p.MAX_CHAIN - 1, v, 1) == p.KEYFRAME


def test_payload_chain_keys():
    arrays = {p.chain_key(i): Array(**p.pack_payload(bytes([i]) * 3)) for i in range(3)}
    assert p.payloads_of(arrays, 3) == [b"\0\0\0", b"\1\1\1", b"\2\2\2"]
    with pytest.raises(p.ProtocolError, match="exactly"):
        p.payloads_of(arrays, 2)
    with pytest.raises(p.ProtocolError, match="chains"):
        p.payloads_of(arrays, 0)


def test_check_base():
    p.check_base(_down(), 4, FP_A)
    p.check_base(_down(kind=p.KEYFRAME), None, None)
    p.check_base(_down(kind=p.SAME), 5, FP_B)
    with pytest.raises(p.ProtocolError, match="version 4"):
        p.check_base(_down(), 3, FP_A)
    with pytest.raises(p.ProtocolError, match="fingerprint"):
        p.check_base(_down(), 4, FP_B)


def test_delta_arithmetic_is_exact_for_every_dtype():
    rng = np.random.default_rng(0)
    base = {
        "w": rng.standard_normal((3, 4)).astype(np.float32),
        "h": rng.standard_normal(5).astype(np.float16),
        "n": np.array(7, np.int64),
        "u": np.array([250, 3], np.uint8),
        "m": np.array([True, False, True]),
    }
    new = {
        "w": base["w"] + 1,
        "h": base["h"] * 2,
        "n": np.array(12, np.int64),
        "u": np.array([2, 255], np.uint8),  # wraps modulo 256
        "m": np.array([False, False, True]),
    }
    delta = p.model_delta(new, base)
    assert {k: v.dtype for k, v in delta.items()} == {k: v.dtype for k, v in base.items()}
    back = p.apply_delta(base, delta)
    for name in ("n", "u", "m"):
        np.testing.assert_array_equal(back[name], new[name])
    np.testing.assert_allclose(back["w"], new["w"], rtol=1e-6)


def test_cast_like_restores_model_dtypes_and_order():
    ref = {"a": np.zeros(2, np.float32), "n": np.array(0, np.int64), "m": np.zeros(2, bool)}
    agg = {"m": np.array([0.7, 0.2]), "n": np.array(4.6), "a": np.array([1.0, 2.0])}
    out = p.cast_like(agg, ref)
    assert list(out) == ["a", "n", "m"]
    assert out["a"].dtype == np.float32 and out["n"] == 5 and out["n"].dtype == np.int64
    np.testing.assert_array_equal(out["m"], [True, False])
    with pytest.raises(ValueError, match="names"):
        p.cast_like({"a": agg["a"]}, ref)
    with pytest.raises(ValueError, match="shape"):
        p.cast_like({**agg, "a": np.zeros(3)}, ref)
