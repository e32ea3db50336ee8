"""A decoder's cost is bounded by what its caller allows, never by what a stream claims; an encoder
never writes what its own decoder refuses, nor a reconstruction outside the dtype's range."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

import nnc_fl
from nnc_fl import bitstream as bs
from nnc_fl._levels import encode_levels
from nnc_fl.errors import FormatError, LimitError, SchemaError

MODEL = {
    "conv.weight": np.zeros((8, 3, 3, 3), np.float32),
    "conv.bias": np.zeros(8, np.float32),
    "fc.weight": np.zeros((10, 72), np.float32),
    "steps": np.array(0, np.int64),
}


def _update(seed=0):
    rng = np.random.default_rng(seed)
    return {k: (rng.normal(size=v.shape) * 0.01).astype(v.dtype) if v.dtype.kind == "f" else v + 3
            for k, v in MODEL.items()}


def _bomb(elements: int, payload: bytes = b"\x00" * 8) -> bytes:
    """A valid-looking stream: one float32 tensor of ``elements`` zeros-ish, a tiny payload."""
    record = bs.TensorRecord("w", np.dtype("<f4"), (elements,), bs.MODE_QUANT, 0.5, 0, payload)
    big = nnc_fl.Limits(max_tensor_elements=1 << 40, max_total_elements=1 << 40)
    return bs.write_stream([record], limits=big)


def test_a_small_stream_claiming_2_31_elements_is_refused_before_any_allocation():
    data = _bomb(1 << 31, b"\x00" * (((1 << 31) >> 14) - 16 + 1))  # within the elements-per-byte bound
    assert len(data) < 140_000
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(LimitError, match="memory budget"):
        nnc_fl.decode(data)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 5 << 20 and seconds < 1.0
    with pytest.raises(LimitError, match="memory budget"):
        nnc_fl.decode_tensor(data, "w")


def test_a_float_lossless_stream_claiming_2_31_elements_is_refused_before_any_allocation():
    payload = b"\x17\x00\x93\x00" + b"\x00" * (((1 << 31) >> 14) - 16 - 4)  # at the elements-per-byte bound
    record = bs.TensorRecord("w", np.dtype("<f4"), (1 << 31,), bs.MODE_FLOAT_LOSSLESS, payload=payload)
    data = bs.write_stream([record], limits=nnc_fl.Limits(max_tensor_elements=1 << 40, max_total_elements=1 << 40))
    tracemalloc.start()
    with pytest.raises(LimitError, match="memory budget"):
        nnc_fl.decode(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 5 << 20
    one_more = bs.TensorRecord("w", np.dtype("<f4"), ((1 << 31) + 1,), bs.MODE_FLOAT_LOSSLESS, payload=payload)
    with pytest.raises(ValueError, match="elements in a"):
        bs.write_stream([one_more], limits=nnc_fl.Limits(max_tensor_elements=1 << 40, max_total_elements=1 << 40))


def test_the_memory_budget_is_the_callers():
    w = np.ones((1000, 100), np.float32)
    data = nnc_fl.encode({"w": w}, step=0.5)
    need = 1000 * 100 * (4 + 16)
    assert nnc_fl.Limits.for_schema({"w": w}).max_decode_bytes == need
    nnc_fl.decode(data, limits=nnc_fl.Limits(max_decode_bytes=need))
    with pytest.raises(LimitError, match="memory budget"):
        nnc_fl.decode(data, limits=nnc_fl.Limits(max_decode_bytes=need - 1))
    with pytest.raises(LimitError, match="memory budget"):
        nnc_fl.decode_tensor(data, "w", limits=nnc_fl.Limits(max_decode_bytes=need - 1))


def test_expected_schema_is_checked_before_any_payload():
    data = bytearray(nnc_fl.encode(_update(), step=0.001))
    info = nnc_fl.inspect(bytes(data))
    first = info.tensors[0]
    data[first.offset] ^= 0xFF  # a corrupted payload: only a decoder that reads it can notice
    other = {**MODEL, "fc.weight": np.zeros((10, 71), np.float32)}
    with pytest.raises(SchemaError, match=r"fc\.weight"):
        nnc_fl.decode(bytes(data), expect=other)
    with pytest.raises(FormatError, match="CRC"):
        nnc_fl.decode(bytes(data), expect=MODEL)  # the right schema: now the payload is read


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: {k: v for k, v in t.items() if k != "steps"}, "names differ"),
        (lambda t: {**t, "extra": np.zeros(3, np.float32)}, "more than the expected"),
        (lambda t: {**t, "conv.bias": t["conv.bias"].astype(np.float64)}, "dtype"),
        (lambda t: {**t, "fc.weight": np.zeros((10, 73), np.float32)}, "more than the expected|shape"),
        (lambda t: {**t, "conv.weight": np.zeros((8, 27), np.float32)}, "shape"),
    ],
)
def test_streams_of_another_schema_are_schema_errors(change, match):
    data = nnc_fl.encode(change(_update()), step=0.001)
    with pytest.raises(SchemaError, match=match):
        nnc_fl.decode(data, expect=MODEL)
    decoded = nnc_fl.decode(nnc_fl.encode(_update(), step=0.001), expect=MODEL)
    assert {k: (v.shape, v.dtype) for k, v in decoded.items()} == {k: (v.shape, v.dtype) for k, v in MODEL.items()}


def test_limits_for_a_schema_are_exact():
    limits = nnc_fl.Limits.for_schema(MODEL)
    assert (limits.max_tensors, limits.max_tensor_elements, limits.max_total_elements, limits.max_ndim) == (
        4, 720, 216 + 8 + 720 + 1, 4
    )
    assert limits.max_decode_bytes == 4 * (216 + 8 + 720) + 8 + 16 * 720
    nnc_fl.decode(nnc_fl.encode(_update(), step=0.001, limits=limits), limits=limits)
    wider = limits.covering(nnc_fl.DEFAULT_LIMITS)
    assert wider.max_tensors == nnc_fl.DEFAULT_LIMITS.max_tensors and wider.max_decode_bytes == 1 << 30


@pytest.mark.parametrize(
    ("tensors", "limits", "match"),
    [
        ({f"t{i}": np.ones(2, np.float32) for i in range(11)}, nnc_fl.Limits(max_tensors=10), "tensors"),
        ({"x" * 40: np.ones(2, np.float32)}, nnc_fl.Limits(max_name_bytes=39), "longer"),
        ({"w": np.ones((1,) * 5, np.float32)}, nnc_fl.Limits(max_ndim=4), "rank"),
        ({"w": np.ones(101, np.float32)}, nnc_fl.Limits(max_tensor_elements=100), "elements"),
        ({"a": np.ones(60, np.float32), "b": np.ones(60, np.float32)}, nnc_fl.Limits(max_total_elements=100),
         "elements in all"),
    ],
)
def test_the_encoder_refuses_what_the_decoder_would_refuse(tensors, limits, match):
    with pytest.raises(ValueError, match=match):
        nnc_fl.encode(tensors, step=0.5, limits=limits)
    data = nnc_fl.encode(tensors, step=0.5)  # default limits: fine, but a decoder with ``limits``...
    with pytest.raises(LimitError):
        nnc_fl.decode(data, limits=limits)  # ...refuses it, as the encoder said


def test_a_model_with_more_tensors_than_the_default_limit_needs_and_gets_its_own_limits():
    many = {f"layer{i}.bias": np.full(1, i, np.float32) for i in range(nnc_fl.DEFAULT_LIMITS.max_tensors + 1)}
    with pytest.raises(ValueError, match="tensors"):
        nnc_fl.encode(many, lossless=list(many))
    limits = nnc_fl.Limits.for_schema(many)
    data = nnc_fl.encode(many, lossless=list(many), limits=limits)
    assert nnc_fl.decode(data, expect=many)["layer70.bias"][0] == 70
    with pytest.raises(LimitError):
        nnc_fl.decode(data)  # the default limits say what they said to the encoder


def test_float16_near_its_maximum_never_decodes_to_infinity():
    rng = np.random.default_rng(5)
    x = rng.uniform(-65504, 65504, size=4096).astype(np.float16)
    x[:8] = [65504, -65504, 65500, -65490, 65472, 65504, 65000, -65504]
    data = nnc_fl.encode({"h": x}, step=1000.0)
    t = nnc_fl.inspect(data).tensor("h")
    assert t.mode_name == "quant" and t.step <= 1000.0
    out = nnc_fl.decode(data)["h"]
    assert np.all(np.isfinite(out))
    err = np.abs(out.astype(np.float64) - x.astype(np.float64))
    assert err.max() <= t.step / 2 + 64  # half the step used, plus float16's spacing up there (32)


def test_a_stream_whose_reconstruction_overflows_is_refused():
    payload = encode_levels(np.array([70, 1, 0, 2], np.int64), 4, 0).tobytes()
    record = bs.TensorRecord("h", np.dtype("<f2"), (4,), bs.MODE_QUANT, 1000.0, 0, payload)
    with pytest.raises(FormatError, match="overflows float16"):
        nnc_fl.decode(bs.write_stream([record]))


def test_read_fingerprint_checks_the_header_only():
    data = nnc_fl.encode(_update(), step=0.001, fingerprint=b"\x05" * 48)
    assert nnc_fl.read_fingerprint(data) == b"\x05" * 48
    assert nnc_fl.read_fingerprint(nnc_fl.encode(_update(), step=0.001)) is None
    corrupt = bytearray(data)
    corrupt[8] ^= 1
    with pytest.raises(FormatError, match="CRC"):
        nnc_fl.read_fingerprint(bytes(corrupt))
