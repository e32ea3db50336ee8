"""Public codec API: encode / decode / decode_tensor / inspect.

Validates and converts inputs in Python, then calls the jitted kernels of ``_quantise`` and
``_levels``; the container layout lives in :mod:`nnc_fl.bitstream`, the payloads of the float modes
f16 / int8 / sparse / ternary (written by the baseline codecs of ``experiments/``) in
:mod:`nnc_fl.payloads`. One decoder reads every mode.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping

import numpy as np

from . import bitstream as bs
from . import payloads
from ._floatcoder import decode_float_payload, encode_float_payload
from ._levels import BAD_LEVEL, MAX_LEVEL, SHORT_PAYLOAD, decode_levels, encode_levels, encode_levels_rd
from ._quantise import NOT_FINITE, OK, dequantise, quantise
from .bitstream import DEFAULT_LIMITS, Limits, StreamInfo, TensorInfo
from .errors import FormatError, LimitError, SchemaError
from .steps import check_rd_lambda, check_step_choice, resolve_step

#: Probability rate pair used when the encoder does not search (index into RATE_PAIRS).
DEFAULT_RATE_INDEX = 0


def encode(
    tensors: Mapping[str, np.ndarray],
    *,
    step: float | Mapping[str, float] | None = None,
    qp: int | Mapping[str, int] | None = None,
    rel_step: float | None = None,
    rd_lambda: float = 0.0,
    lossless: Collection[str] = (),
    float_lossless: bool = False,
    fingerprint: bytes | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> bytes:
    """Code named tensors into one self-contained stream.

    Parameters
    ----------
    tensors
        Mapping name -> array (any shape, including 0-d and empty). Float tensors (float16/32/64)
        are quantised; integer and bool tensors are coded exactly.
    step, qp
        Quantisation step for float tensors, as a number, or as NNC QP (see
        :func:`nnc_fl.steps.qp_to_step`); either may be a mapping name -> value, and names missing
        from the mapping use the default policy. With neither, each float tensor gets the default
        policy of :func:`nnc_fl.steps.default_step` (a power of two near rms / 8, finer for 1-d).
        The step is carried as float32.
    rel_step
        Instead of ``step``/``qp``: each float tensor's step is ``rel_step`` times its RMS (divided
        by 4 for 0-d/1-d tensors) -- a rate that follows the update's scale, as FL deltas shrink.
    rd_lambda
        Rate-distortion quantisation: with ``rd_lambda > 0`` a value rounded up may be coded one
        level lower where ``(error / step)**2 + rd_lambda * bits`` is smaller (bits estimated from
        the coder's adaptive contexts). The error then stays below one step instead of half a step;
        0 (the default) is plain rounding. Decoders need nothing: the stream format is the same.
    lossless
        Names of float tensors to code exactly instead of quantising.
    float_lossless
        Code those exact float tensors in mode float-lossless (sign, exponent and mantissa
        entropy coded; about 17 % below the raw bytes for trained fp32 models, FORMAT.md) where
        that is smaller than raw; ``False`` (the default) stores them raw, as decoders that
        predate the mode expect.
    fingerprint
        Optional base-model fingerprint (1..64 bytes) bound into the stream.
    limits
        The limits the stream's decoders enforce: a stream they would refuse is not written.

    Returns
    -------
    bytes
        The stream; see FORMAT.md.

    Raises
    ------
    ValueError
        A tensor holds NaN/Inf, has an unsupported dtype, or its step would give levels beyond
        2**62; the stream would exceed ``limits``. The message names the tensor or the limit.

    A reconstruction never leaves the dtype's finite range: where rounding at the step would
    overflow it (float16 values near 65504 with a coarse step), the tensor's step is halved until
    it does not, which keeps every error within half a step.
    """
    rd_lambda = check_rd_lambda(rd_lambda)
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping name -> array, got {type(tensors).__name__}")
    lossless = set(lossless)
    unknown = lossless - set(tensors)
    if unknown:
        raise ValueError(f"lossless names not among the tensors: {sorted(unknown)}")
    check_step_choice(step, qp, rel_step)
    if not isinstance(float_lossless, bool):
        raise TypeError(f"float_lossless must be a bool, got {float_lossless!r}")
    records = [
        _encode_one(name, value, step, qp, rel_step, rd_lambda, name in lossless, limits, float_lossless)
        for name, value in tensors.items()
    ]
    return bs.write_stream(records, fingerprint, limits=limits)


def _check_memory(tensors: Collection[TensorInfo], limits: Limits) -> None:
    need = bs.decoding_bytes([(t.numel, t.dtype.itemsize) for t in tensors if t.mode != bs.MODE_ZERO])
    need += sum(t.numel * t.dtype.itemsize for t in tensors if t.mode == bs.MODE_ZERO)
    if need > limits.max_decode_bytes:
        raise LimitError(f"decoding needs up to {need} bytes, above the memory budget of {limits.max_decode_bytes}")


def _check_schema(info: StreamInfo, expect: Mapping[str, object]) -> None:
    """Refuse (:class:`SchemaError`) a table whose names, shapes or dtypes are not ``expect``'s."""
    names = [t.name for t in info.tensors]
    if set(names) != set(expect):
        missing = sorted(set(expect) - set(names))[:5]
        extra = sorted(set(names) - set(expect))[:5]
        raise SchemaError(f"tensor names differ (missing {missing}, unexpected {extra})")
    for t in info.tensors:
        ref = expect[t.name]
        shape, dtype = tuple(np.shape(ref)), np.dtype(getattr(ref, "dtype", None))
        if t.shape != shape:
            raise SchemaError(f"tensor {t.name!r} has shape {t.shape}, expected {shape}")
        if t.dtype.newbyteorder("=") != dtype.newbyteorder("="):
            raise SchemaError(f"tensor {t.name!r} has dtype {t.dtype.name}, expected {dtype.name}")


def decode(
    data: bytes | bytearray | memoryview,
    *,
    limits: Limits = DEFAULT_LIMITS,
    expect: Mapping[str, object] | None = None,
) -> dict[str, np.ndarray]:
    """Decode every tensor of a stream, in stream order (same names, shapes and dtypes).

    Parameters
    ----------
    limits
        Bounds on the header, and the memory budget (:attr:`Limits.max_decode_bytes`, 1 GiB by
        default): a stream that needs more memory is refused before anything is allocated.
    expect
        The tensors the stream must describe (any arrays, or objects with ``shape`` and ``dtype``):
        ``limits`` are replaced by theirs (:meth:`Limits.for_schema`, so the budget is exactly
        what they need) and the table is checked against them before any payload is decoded
        (:class:`SchemaError` otherwise).

    Raises :class:`FormatError` for any malformed, truncated, corrupted, unsupported or over-limit
    stream.
    """
    if expect is not None:
        limits = Limits.for_schema(expect)
    try:
        info = bs.read_table(data, limits)
    except LimitError as exc:
        if expect is not None:  # the schema's limits are exact: a larger table is another schema
            raise SchemaError(f"the stream describes more than the expected tensors ({exc})") from exc
        raise
    if expect is not None:
        _check_schema(info, expect)
    _check_memory(info.tensors, limits)
    view = memoryview(data).cast("B")
    return {t.name: _decode_one(view, t) for t in info.tensors}


def decode_tensor(
    data: bytes | bytearray | memoryview,
    name: str,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> np.ndarray:
    """Decode only tensor ``name`` (within ``limits``, its memory budget included); other payloads
    are not read. ``KeyError`` if it is absent."""
    info = bs.read_table(data, limits)
    t = info.tensor(name)
    _check_memory([t], limits)
    return _decode_one(memoryview(data).cast("B"), t)


def read_fingerprint(data: bytes | bytearray | memoryview, *, limits: Limits = DEFAULT_LIMITS) -> bytes | None:
    """The fingerprint a stream carries (``None`` if none), checking the header's integrity only."""
    return bs.read_fingerprint(data, limits)


def inspect(data: bytes | bytearray | memoryview, *, limits: Limits = DEFAULT_LIMITS) -> StreamInfo:
    """The header table of a stream (names, dtypes, shapes, modes, steps, sizes), without decoding.

    ``str(inspect(data))`` is a human-readable table; ``.as_rows()`` gives plain dicts.
    """
    return bs.read_table(data, limits)


# --- encoding one tensor -------------------------------------------------------------------------


def _as_array(name: object, value: object, limits: Limits) -> np.ndarray:
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, got {name!r}")
    if len(name.encode("utf-8")) > limits.max_name_bytes:
        raise ValueError(f"tensor name {name[:40]!r}... is longer than {limits.max_name_bytes} bytes")
    try:
        arr = np.asarray(value)
    except Exception as exc:  # e.g. a torch bfloat16 tensor numpy cannot view
        raise TypeError(f"tensor {name!r}: cannot be converted to a numpy array ({exc})") from exc
    native = arr.dtype.newbyteorder("=")
    if native.newbyteorder("<") not in bs.DTYPE_CODES:
        raise TypeError(f"tensor {name!r}: unsupported dtype {arr.dtype} (bool, int, uint and float16/32/64 are)")
    if arr.ndim > limits.max_ndim:
        raise ValueError(f"tensor {name!r}: rank {arr.ndim} above {limits.max_ndim}")
    if arr.size > limits.max_tensor_elements:
        raise ValueError(f"tensor {name!r}: {arr.size} elements, above the limit {limits.max_tensor_elements}")
    return np.asarray(arr, dtype=native, order="C")


def _cols(shape: tuple[int, ...], numel: int) -> int:
    """Columns of the 2-D scan view: all dimensions after the first (one row for 0-d / 1-d)."""
    return numel // shape[0] if len(shape) >= 2 else numel


def _quantise_within_range(name: str, flat: np.ndarray, s: float, dtype: np.dtype) -> tuple[np.ndarray, float]:
    """Levels of ``flat`` at step ``s``, halving ``s`` while a reconstruction would overflow ``dtype``."""
    top = float(np.finfo(dtype).max)
    while True:
        levels, status = quantise(flat, s, MAX_LEVEL)
        if status != OK:
            why = "holds NaN or Inf values" if status == NOT_FINITE else f"step {s:g} gives levels beyond 2**62"
            raise ValueError(f"tensor {name!r}: {why}")
        if not levels.size or float(np.abs(levels).max()) * s <= top:
            return levels, s
        s = float(np.float32(s / 2))  # rounding up at the edge of the range: a finer step stays inside


def _encode_one(name, value, step, qp, rel_step, rd_lambda, exact, limits, float_lossless=False) -> bs.TensorRecord:
    arr = _as_array(name, value, limits)
    shape, dtype = arr.shape, arr.dtype
    if arr.size == 0:
        return bs.TensorRecord(name, dtype, shape, bs.MODE_ZERO)
    if dtype.kind == "f":
        if exact:
            if not np.isfinite(arr).all():
                raise ValueError(f"tensor {name!r} holds NaN or Inf values")
            # bitwise test: -0.0 is not zero for a lossless tensor
            if not arr.view(f"u{dtype.itemsize}").any():
                return _zero(name, arr)
            if float_lossless:
                payload = encode_float_payload(arr)
                if len(payload) < arr.nbytes:
                    return bs.TensorRecord(name, dtype, shape, bs.MODE_FLOAT_LOSSLESS, payload=payload)
            return _raw(name, arr)
        flat = arr.reshape(-1) if dtype.itemsize >= 4 else arr.reshape(-1).astype(np.float32)  # exact
        levels, s = _quantise_within_range(name, flat, resolve_step(name, arr, step, qp, rel_step), dtype)
        mode = bs.MODE_QUANT
    else:
        if arr.dtype.itemsize == 8 and (arr.max() > MAX_LEVEL or (dtype.kind == "i" and arr.min() < -MAX_LEVEL)):
            return _raw(name, arr)  # beyond what levels carry
        levels, s, mode = arr.reshape(-1).astype(np.int64), None, bs.MODE_INT
    if not levels.any():
        return _zero(name, arr)
    cols = _cols(shape, arr.size)
    if mode == bs.MODE_QUANT and rd_lambda > 0:
        payload = encode_levels_rd(levels, flat, s, rd_lambda, cols, DEFAULT_RATE_INDEX).tobytes()
        if not levels.any():
            return _zero(name, arr)
    else:
        payload = encode_levels(levels, cols, DEFAULT_RATE_INDEX).tobytes()
    if len(payload) >= arr.nbytes:
        return _raw(name, arr)  # never larger than the raw values (and then exact)
    return bs.TensorRecord(name, dtype, shape, mode, s, DEFAULT_RATE_INDEX, payload)


def _zero(name: str, arr: np.ndarray) -> bs.TensorRecord:
    return bs.TensorRecord(name, arr.dtype, arr.shape, bs.MODE_ZERO)


def _raw(name: str, arr: np.ndarray) -> bs.TensorRecord:
    payload = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    return bs.TensorRecord(name, arr.dtype, arr.shape, bs.MODE_RAW, payload=payload)


# --- decoding one tensor -------------------------------------------------------------------------


def _decode_one(view: memoryview, t: TensorInfo) -> np.ndarray:
    native = t.dtype.newbyteorder("=")
    if t.mode == bs.MODE_ZERO:
        return np.zeros(t.shape, native)
    payload = view[t.offset : t.offset + t.length]
    if zlib.crc32(payload) != t.crc32:
        raise FormatError(f"tensor {t.name!r}: payload CRC mismatch (corrupted)")
    if t.zstd:
        payload = bs.unzstd_payload(payload, t)
    if t.mode == bs.MODE_RAW:
        if native.kind == "b" and np.frombuffer(payload, dtype=np.uint8).max(initial=0) > 1:
            raise FormatError(f"tensor {t.name!r}: raw bool bytes must be 0 or 1")
        return np.frombuffer(payload, dtype=t.dtype).astype(native).reshape(t.shape)
    if t.mode in bs.FLOAT_MODES:
        return payloads.decode_payload(payload, t)
    if t.mode == bs.MODE_FLOAT_LOSSLESS:
        return decode_float_payload(payload, native, t.numel, f"tensor {t.name!r}").reshape(t.shape)
    numel = t.numel
    data = np.frombuffer(payload, dtype=np.uint8)
    levels, status = decode_levels(data, numel, _cols(t.shape, numel), t.tools & bs.TOOLS_RATE_MASK)
    if status == BAD_LEVEL:
        raise FormatError(f"tensor {t.name!r}: payload codes a level beyond 2**62")
    if status == SHORT_PAYLOAD:
        raise FormatError(f"tensor {t.name!r}: payload ends before all {numel} elements are coded")
    if t.mode == bs.MODE_QUANT:
        if float(np.abs(levels).max()) * t.step > float(np.finfo(native).max):
            raise FormatError(f"tensor {t.name!r}: a reconstruction overflows {native.name}")
        return dequantise(levels, np.float64(t.step)).astype(native).reshape(t.shape)
    info = np.iinfo(native) if native.kind != "b" else np.iinfo(np.uint8)
    lo, hi = (0, 1) if native.kind == "b" else (info.min, info.max)
    if levels.min() < lo or levels.max() > hi:
        raise FormatError(f"tensor {t.name!r}: coded values out of range for {native.name}")
    return levels.astype(native).reshape(t.shape)
