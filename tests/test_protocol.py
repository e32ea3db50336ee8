"""nnc_fl.protocol: payload packing, protocol records, codec specs, the base a message needs."""

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
        nonce=bytes(16),
        tensors=4,
        elements=1000,
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
        ({"protocol": "nnc-fl/1"}, "protocol"),
        ({"nonce": b"short"}, "nonce"),
        ({"codec": "x" * 5000}, "characters"),
        ({"tensors": -1}, "beyond the bounds"),
        ({"elements": 1 << 41}, "beyond the bounds"),
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


def test_payload_chain_keys():
    arrays = {p.chain_key(i): Array(**p.pack_payload(bytes([i]) * 3)) for i in range(3)}
    assert p.payloads_of(arrays, 3) == [b"\0\0\0", b"\1\1\1", b"\2\2\2"]
    with pytest.raises(p.ProtocolError, match="exactly"):
        p.payloads_of(arrays, 2)
    with pytest.raises(p.ProtocolError, match="chains"):
        p.payloads_of(arrays, 0)


def test_check_base():
    p.check_base(4, FP_A, *_down().base)
    assert _down(kind=p.KEYFRAME).base is None  # a keyframe needs no model
    p.check_base(5, FP_B, *_down(kind=p.SAME).base)
    with pytest.raises(p.ProtocolError, match="version 4"):
        p.check_base(3, FP_A, *_down().base)
    with pytest.raises(p.ProtocolError, match="fingerprint"):
        p.check_base(4, FP_B, *_down().base)
