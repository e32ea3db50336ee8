"""Schema-bound streams (flag bit 2): compact tables that reference the tensors' schema by digest."""

import contextlib
import hashlib
import struct
import zlib

import numpy as np
import pytest

import nnc_fl
from nnc_fl import bitstream as bs
from nnc_fl.codecs import make_codec
from nnc_fl.errors import FormatError, SchemaError


def _tiny_mlp(rng=None, zero=False):
    """The six tensors of a 30 -> 64 -> 64 -> 2 MLP (6 274 parameters)."""
    shapes = {"net.0.weight": (64, 30), "net.0.bias": (64,), "net.2.weight": (64, 64), "net.2.bias": (64,),
              "net.4.weight": (2, 64), "net.4.bias": (2,)}
    if zero:
        return {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    rng = rng or np.random.default_rng(5)
    return {k: (rng.laplace(size=s) * 0.01).astype(np.float32) for k, s in shapes.items()}


def test_all_zero_update_of_a_six_tensor_model_is_at_most_24_bytes():
    t = _tiny_mlp(zero=True)
    data = nnc_fl.encode(t, schema_bound=True)
    assert len(data) <= 24
    assert len(nnc_fl.encode(t)) > 80  # the self-contained table repeats names and shapes
    out = nnc_fl.decode(data, expect=t)
    assert list(out) == list(t) and all(not v.any() and v.dtype == np.float32 for v in out.values())


def test_at_most_8_table_bytes_per_coded_tensor():
    t = _tiny_mlp()
    bound = nnc_fl.encode(t, schema_bound=True)
    info = nnc_fl.inspect(bound, expect=t)
    fixed = 4 + 1 + 1 + 1 + bs.SCHEMA_DIGEST_BYTES + 4 + 4  # magic, version, flags, length, digest, 2 CRCs
    assert info.header_bytes - fixed <= 8 * len(t)
    assert info.schema_bound and not nnc_fl.inspect(nnc_fl.encode(t)).schema_bound


def test_round_trip_matches_the_self_contained_stream_at_bfloat16_steps():
    t = _tiny_mlp()
    bound = nnc_fl.encode(t, schema_bound=True, step=0.004)
    out = nnc_fl.decode(bound, expect=t)
    s = bs.bf16_round(0.004)
    assert nnc_fl.inspect(bound, expect=t).tensor("net.0.weight").step == s
    plain = nnc_fl.decode(nnc_fl.encode(t, step=s))
    for k in t:
        np.testing.assert_array_equal(out[k], plain[k])
        assert np.abs(out[k] - t[k]).max() <= s / 2 * (1 + 1e-6)
    # payloads are the self-contained stream's, only the table differs
    a, b = nnc_fl.inspect(nnc_fl.encode(t, step=s)), nnc_fl.inspect(bound, expect=t)
    assert [x.length for x in a.tensors] == [x.length for x in b.tensors]
    assert nnc_fl.decode_tensor(bound, "net.2.bias", expect=t).tolist() == out["net.2.bias"].tolist()


def test_every_dtype_and_mode_round_trips():
    rng = np.random.default_rng(1)
    t = {
        "f16": (rng.normal(size=(5, 3)) * 0.1).astype(np.float16),
        "f64": rng.normal(size=7),
        "i8": rng.integers(-100, 100, size=9).astype(np.int8),
        "flag": rng.random(12) < 0.5,
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.array(3.5, np.float32),
        "lossless": rng.normal(size=4).astype(np.float32),
    }
    data = nnc_fl.encode(t, schema_bound=True, lossless=["lossless"], fingerprint=b"\x01" * 32)
    out = nnc_fl.decode(data, expect=t)
    assert nnc_fl.read_fingerprint(data) == b"\x01" * 32
    for k, v in t.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
    np.testing.assert_array_equal(out["i8"], t["i8"])
    np.testing.assert_array_equal(out["flag"], t["flag"])
    assert out["lossless"].tobytes() == t["lossless"].tobytes()


def test_decoding_without_or_with_another_schema_is_a_schema_error():
    t = _tiny_mlp()
    data = nnc_fl.encode(t, schema_bound=True)
    with pytest.raises(SchemaError, match="needs the schema"):
        nnc_fl.decode(data)
    with pytest.raises(SchemaError, match="needs the schema"):
        nnc_fl.inspect(data)
    other = dict(t)
    other["net.4.bias"] = np.zeros(3, np.float32)
    with pytest.raises(SchemaError, match="digest"):
        nnc_fl.decode(data, expect=other)
    with pytest.raises(SchemaError, match="digest"):
        nnc_fl.decode(data, expect={k: t[k] for k in reversed(t)})  # order is part of the schema
    with pytest.raises(SchemaError, match="digest"):
        nnc_fl.decode(data, expect={k: v.astype(np.float64) for k, v in t.items()})


def test_every_truncation_and_bit_flip_is_a_format_error():
    t = _tiny_mlp()
    t = {k: v[:3] for k, v in t.items()}  # small stream, every byte tried
    data = nnc_fl.encode(t, schema_bound=True, fingerprint=b"\x02" * 8)
    for cut in range(len(data)):
        with pytest.raises(FormatError):
            nnc_fl.decode(data[:cut], expect=t)
    for i in range(len(data)):
        for bit in (0, 5):
            broken = bytearray(data)
            broken[i] ^= 1 << bit
            with pytest.raises(FormatError):
                nnc_fl.decode(bytes(broken), expect=t)
            with contextlib.suppress(FormatError, KeyError):
                nnc_fl.decode_tensor(bytes(broken), "net.0.bias", expect=t)


def _bound_stream(entries: bytes, payloads: bytes, schema, crc=True, fingerprint=None) -> bytes:
    table = bytearray()
    flags = bs.FLAG_SCHEMA
    if fingerprint:
        flags |= bs.FLAG_FINGERPRINT
        table += bytes([len(fingerprint)]) + fingerprint
    table += bs.schema_digest(bs.schema_of(schema)) + entries
    if crc:
        table += struct.pack("<I", zlib.crc32(payloads))
    head = bytearray(bs.MAGIC) + bytes([bs.VERSION, flags])
    bs._put_varint(head, len(table))
    head += table
    head += struct.pack("<I", zlib.crc32(head))
    return bytes(head) + payloads


SCHEMA = {"w": np.zeros((3, 4), np.float32)}
ONE = nnc_fl.encode({"w": np.arange(12, dtype=np.float32).reshape(3, 4) / 10}, step=0.125)
PAYLOAD = ONE[nnc_fl.inspect(ONE).tensors[0].offset :]


@pytest.mark.parametrize(
    "entries, payload, crc, reason",
    [
        (bytes([bs.MODE_QUANT]) + struct.pack("<H", 0) + b"\x00\x01", b"x", True, "not a positive finite"),
        (bytes([bs.MODE_QUANT]) + struct.pack("<H", 0x7F80) + b"\x00\x01", b"x", True, "not a positive finite"),
        (bytes([bs.MODE_QUANT]) + struct.pack("<H", 0x7FC0) + b"\x00\x01", b"x", True, "not a positive finite"),
        (bytes([bs.MODE_QUANT]) + struct.pack("<H", 0xBE00) + b"\x00\x01", b"x", True, "not a positive finite"),
        (bytes([bs.MODE_QUANT]) + struct.pack("<H", 0x3E00) + b"\xf0\x01", b"x", True, "8-state machine without"),
        (bytes([10]), b"", False, "unknown coding mode 10"),
        (bytes([bs.MODE_INT]) + b"\x00\x01", b"x", True, "mode 'int' on float"),
        (bytes([bs.MODE_RAW, 3]), b"abc", True, "raw payload of 3 bytes"),
        (bytes([bs.MODE_ZERO]), b"", True, "unexplained bytes"),  # a payload CRC with no payload
        (bytes([bs.MODE_QUANT]) + struct.pack("<H", 0x3E00) + b"\x00\x01", b"x", False, "truncated"),
        (bytes([bs.MODE_QUANT]) + struct.pack("<H", 0x3E00) + b"\x00\x02", b"x", True, "truncated"),
        (bytes([bs.MODE_QUANT]) + struct.pack("<H", 0x3E00) + b"\x00", b"", False, "truncated"),
    ],
)
def test_named_rejections_of_schema_bound_fields(entries, payload, crc, reason):
    with pytest.raises(FormatError, match=reason):
        nnc_fl.decode(_bound_stream(entries, payload, SCHEMA, crc=crc), expect=SCHEMA)


def test_payload_crc_covers_every_payload():
    entry = bytes([bs.MODE_QUANT]) + struct.pack("<H", 0x3E00) + b"\x00" + bytes([len(PAYLOAD)])
    good = _bound_stream(entry, PAYLOAD, SCHEMA)
    assert nnc_fl.decode(good, expect=SCHEMA)["w"].shape == (3, 4)
    bad = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(FormatError, match="payload CRC"):
        nnc_fl.decode(bad, expect=SCHEMA)
    with pytest.raises(FormatError, match="payload CRC"):
        nnc_fl.decode_tensor(bad, "w", expect=SCHEMA)


def test_writer_refuses_a_step_that_is_not_bfloat16():
    rec = bs.TensorRecord("w", np.dtype(np.float32), (3, 4), bs.MODE_QUANT, 0.1, 0, b"x")
    with pytest.raises(ValueError, match="bfloat16"):
        bs.write_stream([rec], schema_bound=True)


def test_bf16_round_is_to_nearest_even():
    assert bs.bf16_round(1.0) == 1.0
    assert bs.bf16_round(1.0 + 2**-8) == 1.0  # tie, even
    assert bs.bf16_round(1.0 + 3 * 2**-8) == 1.0 + 2**-6  # tie, to even
    assert bs.bf16_round(0.1) == pytest.approx(0.1, rel=2**-8)
    assert bs.bf16_bits(bs.bf16_round(0.1)) is not None and bs.bf16_bits(0.1) is None


def test_codec_schema_bound_updates_and_self_contained_keyframes():
    t = _tiny_mlp()
    codec = make_codec("nnc", schema_bound="true", rel_step=0.5)
    assert codec.params() == {"rel_step": 0.5, "schema_bound": True}
    data = codec.encode(t)
    assert nnc_fl.inspect(data, expect=t).schema_bound
    assert list(codec.decode(data)) == list(t)  # its own stream, again (error feedback)
    assert list(codec.decode(data, expect=t)) == list(t)
    with pytest.raises(SchemaError):
        make_codec("nnc", schema_bound=True).decode(data)  # a fresh codec needs the schema
    key = codec.encode(t, exact=True)
    assert not nnc_fl.inspect(key).schema_bound
    with pytest.raises(ValueError, match="schema_bound"):
        make_codec("nnc", schema_bound="maybe")


def test_golden_schema_bound_stream():
    rng = np.random.default_rng(2024)
    tensors = {
        "conv.weight": (rng.laplace(size=(4, 2, 3, 3)) * 0.02).astype(np.float32),
        "conv.bias": (rng.normal(size=4) * 0.01).astype(np.float32),
        "steps": np.array(7, np.int64),
        "empty": np.zeros((0, 5), np.float16),
    }
    data = nnc_fl.encode(tensors, step=0.01, schema_bound=True)
    assert len(data) == 73
    assert hashlib.sha256(data).hexdigest() == GOLDEN_SCHEMA_BOUND


GOLDEN_SCHEMA_BOUND = "c59e431c2f5eeaac968f144559c889b5c3b9f7ff7171fbd582d9ed5b8468b080"
