"""A decoder's cost is bounded by what its caller allows, never by what a stream claims; an encoder
never writes what its own decoder refuses, nor a reconstruction outside the dtype's range."""

from __future__ import annotations

import re
import struct
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


@pytest.mark.parametrize("dtype, step", [("<f2", 1000.0), ("<f4", 1e37)])  # (float64 cannot: steps are float32)
def test_a_stream_whose_reconstruction_overflows_is_refused(dtype, step):
    # float16 decodes through int64 levels, float32/64 straight into the output: both are checked
    payload = encode_levels(np.array([70, 1, 0, 2], np.int64), 4, 0).tobytes()
    record = bs.TensorRecord("h", np.dtype(dtype), (4,), bs.MODE_QUANT, step, 0, payload)
    with pytest.raises(FormatError, match=f"overflows {np.dtype(dtype).name}"):
        nnc_fl.decode(bs.write_stream([record]))
    fits = bs.TensorRecord("h", np.dtype(dtype), (4,), bs.MODE_QUANT, step / 100, 0, payload)
    np.testing.assert_array_equal(nnc_fl.decode(bs.write_stream([fits]))["h"],
                                  (np.array([70, 1, 0, 2]) * np.float64(np.float32(step / 100))).astype(dtype))


def test_read_fingerprint_checks_the_header_only():
    data = nnc_fl.encode(_update(), step=0.001, fingerprint=b"\x05" * 48)
    assert nnc_fl.read_fingerprint(data) == b"\x05" * 48
    assert nnc_fl.read_fingerprint(nnc_fl.encode(_update(), step=0.001)) is None
    corrupt = bytearray(data)
    corrupt[8] ^= 1
    with pytest.raises(FormatError, match="CRC"):
        nnc_fl.read_fingerprint(bytes(corrupt))


# --- zstd plain buffers and the float modes' working arrays count against the budget (issue 9) -------


def _zero_frame(prefix: bytes, zeros: int) -> bytes:
    """A zstd frame declaring its size: ``prefix`` as a raw block, then ``zeros`` zero bytes as RLE
    blocks (a few bytes per 128 KiB of content: a decompression bomb that is a valid payload)."""
    out = bytearray(b"\x28\xb5\x2f\xfd\xe0" + struct.pack("<Q", len(prefix) + zeros))
    out += (int(zeros == 0) | (len(prefix) << 3)).to_bytes(3, "little") + prefix
    while zeros > 0:
        chunk = min(zeros, 1 << 17)
        zeros -= chunk
        out += (int(zeros == 0) | (1 << 1) | (chunk << 3)).to_bytes(3, "little") + b"\x00"
    return bytes(out)


def _sparse_bomb(n: int, dtype=np.float32, name="w") -> bs.TensorRecord:
    """Sparse + zstd, every position kept (k = n, every gap and value zero): 5n plain bytes."""
    return _zstd_record(name, dtype, (n,), bs.MODE_SPARSE, _zero_frame(bs_varint(n), 5 * n))


def bs_varint(value: int) -> bytes:
    out = bytearray()
    bs._put_varint(out, value)
    return bytes(out)


def _zstd_record(name, dtype, shape, mode, frame) -> tuple:
    return (name, np.dtype(dtype), shape, mode, frame)


def _zstd_stream(items) -> bytes:
    from streamforge import forge

    return forge(items, zstd=True)


def _peak(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        result = fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return result, peak, time.perf_counter() - t0


def _refused(fn, error=FormatError) -> tuple[str, int, float]:
    """``(reason, tracemalloc peak, seconds)`` of a call that must raise ``error``."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fn()
    except error as exc:
        reason = str(exc)
    else:
        raise AssertionError("not refused")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return reason, peak, time.perf_counter() - t0


def test_a_sparse_zstd_bomb_decodes_within_what_the_estimate_counts():
    # 7 KB for 47 M elements cost 2.1 GB against a 940 MB estimate: the zstd plain buffer and the
    # sparse parser's arrays were not counted. Now the parser allocates only its output, and the
    # estimate counts the plain buffer (from the frame header, before decompressing).
    n = 1 << 22
    data = _zstd_stream([_sparse_bomb(n)])
    assert len(data) < 1000
    outputs, working = nnc_fl.api.decoding_memory(data, nnc_fl.inspect(data).tensors)
    assert (outputs, working) == (4 * n, [5 * n + 4])  # float32 output, 5n + varint(k) plain bytes
    out, peak, _ = _peak(lambda: nnc_fl.decode(data))
    assert not out["w"].any() and out["w"].dtype == np.float32
    assert peak <= outputs + working[0] + (1 << 20)
    limits = nnc_fl.Limits(max_decode_bytes=outputs + working[0] - 1)
    for decode in (lambda: nnc_fl.decode(data, limits=limits), lambda: nnc_fl.decode_tensor(data, "w", limits=limits)):
        reason, peak, _ = _refused(decode, LimitError)
        assert "zstd buffers" in reason and peak < 1 << 20


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_mode_zstd_bombs_stay_within_their_estimate(dtype):
    n = 1 << 21
    ternary = _zero_frame(bs_varint(n) + b"\x00" + struct.pack("<f", 0.01), 2 * ((n + 7) // 8))  # k = n, b = 0
    rows, cols = 1 << 11, 1 << 10
    lowrank = _zero_frame(b"\x01", 4 * (rows + cols))  # rank 1, zero factors
    for item in (_sparse_bomb(n, dtype), _zstd_record("w", dtype, (n,), bs.MODE_TERNARY, ternary),
                 _zstd_record("w", dtype, (n,), bs.MODE_INT8, _zero_frame(struct.pack("<f", 0.01), n)),
                 _zstd_record("w", dtype, (rows, cols), bs.MODE_LOWRANK, lowrank)):
        data = _zstd_stream([item])
        outputs, working = nnc_fl.api.decoding_memory(data, nnc_fl.inspect(data).tensors)
        out, peak, _ = _peak(lambda data=data: nnc_fl.decode(data))
        assert out["w"].dtype == dtype and peak <= outputs + working[0] + (1 << 20), item[3]


def test_a_sparse_zstd_bomb_over_the_budget_is_refused_from_its_frame_header():
    n = 100_000_000  # float64: 800 MB of output and 500 MB of plain payload, above 1 GiB
    data = _zstd_stream([_sparse_bomb(n, np.float64)])
    assert len(data) < 20_000
    for decode in (lambda: nnc_fl.decode(data), lambda: nnc_fl.decode_tensor(data, "w")):
        reason, peak, seconds = _refused(decode, LimitError)
        assert "500000004 of working and zstd buffers" in reason and "memory budget" in reason
        assert peak < 1 << 20 and seconds < 0.5


def test_every_zstd_frame_header_is_read_before_any_frame_is_decompressed():
    n = 1 << 20
    good = [_zstd_record(f"t{i}", np.float32, (n,), bs.MODE_RAW, _zero_frame(b"", 4 * n)) for i in range(8)]
    no_size = __import__("zstandard").ZstdCompressor(write_content_size=False).compress(bytes(4 * n))
    hostile = {
        "does not declare its content size": no_size,
        "needs 4194304": _zero_frame(b"", 4 * n + 1),
        "exactly one frame": _zero_frame(b"", 4 * n) + _zero_frame(b"", 4 * n),  # many frames in one payload
        "exactly one frame|frame header": _zero_frame(b"", 4 * n) + b"\x50\x2a\x4d\x18\x00\x00\x00\x00",
        "needs dictionary": b"\x28\xb5\x2f\xfd\xe1\x07" + _zero_frame(b"", 4 * n)[5:],
    }
    for reason, frame in hostile.items():
        data = _zstd_stream([*good, _zstd_record("last", np.float32, (n,), bs.MODE_RAW, frame)])
        got, peak, _ = _refused(lambda data=data: nnc_fl.decode(data))
        assert re.search(reason, got) and "tensor 'last'" in got, got
        assert peak < 1 << 20, reason  # no frame was decompressed (each is 4 MB)
    data = _zstd_stream(good)
    assert all(not a.any() for a in nnc_fl.decode(data).values())


def test_tensors_decode_in_fewer_threads_when_the_budget_does_not_cover_them_at_once():
    n = 1 << 19
    items = [_zstd_record(f"t{i}", np.float32, (n,), bs.MODE_RAW, _zero_frame(b"", 4 * n)) for i in range(4)]
    data = _zstd_stream(items)
    outputs, working = nnc_fl.api.decoding_memory(data, nnc_fl.inspect(data).tensors)
    assert (outputs, working) == (16 * n, [4 * n] * 4)
    tensors = nnc_fl.inspect(data).tensors
    for budget, threads in ((outputs + 4 * n, 1), (outputs + 8 * n, 2), (outputs + 16 * n, 4), (1 << 40, 4)):
        assert nnc_fl.api._check_memory(data, tensors, nnc_fl.Limits(max_decode_bytes=budget), 4) == threads
        decoded = nnc_fl.decode(data, limits=nnc_fl.Limits(max_decode_bytes=budget), threads=4)
        assert list(decoded) == [f"t{i}" for i in range(4)]


def test_the_float_modes_working_arrays_fit_the_schema_budget():
    # Limits.for_schema gives each tensor 16 bytes per element of working memory: every valid
    # payload of the float modes, zstd plain buffer included, needs less.
    from experiments.baselines import Int8ZstdCodec, PowerSGDCodec, STCCodec, TopKCodec

    rng = np.random.default_rng(3)
    model = {"a": rng.normal(size=(40, 30)).astype(np.float32), "b": rng.normal(size=(2, 700)).astype(np.float64),
             "c": rng.normal(size=5).astype(np.float16)}
    for codec in (Int8ZstdCodec(), PowerSGDCodec(rank=1), STCCodec(ratio=1.0), TopKCodec(ratio=1.0)):
        for zstd in (False, True):
            data = codec.encode(model)
            if not zstd:
                data = bs.write_stream([bs.TensorRecord(t.name, t.dtype, t.shape, t.mode, payload=payload)
                                        for t, payload in _plain_payloads(data)])
            tensors = nnc_fl.inspect(data).tensors
            _, working = nnc_fl.api.decoding_memory(data, tensors)
            assert all(w <= bs.WORK_BYTES_PER_ELEMENT * t.numel for t, w in zip(tensors, working, strict=True))
            nnc_fl.decode(data, expect=model)


def _plain_payloads(data):
    info = nnc_fl.inspect(data)
    for t in info.tensors:
        payload = data[t.offset : t.offset + t.length]
        yield t, (bs.unzstd_payload(payload, t) if t.zstd else payload)
