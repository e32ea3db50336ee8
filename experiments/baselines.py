"""Classic federated-learning update codecs, the baselines the NNC codec is measured against.

Each class implements :class:`nnc_fl.codecs.UpdateCodec` and writes the one nnc-fl stream format
(FORMAT.md): this module holds only the lossy transforms; the payload layouts, their bounds checks
and the decoder are :mod:`nnc_fl.payloads` and :func:`nnc_fl.decode`.

============  ===============  ============================================================
name          mode (+ zstd)    what it sends for each floating-point tensor
============  ===============  ============================================================
``zstd``      raw + zstd       the exact bytes (lossless reference)
``fp16``      f16              IEEE half precision (round to nearest even; beyond +-65504: +-inf)
``int8-zstd`` int8 + zstd      8-bit uniform quantisation, ``scale = max|x| / 127`` (float32)
``topk``      sparse + zstd    the ``k = ceil(ratio * n)`` largest magnitudes (DGC-style
                               sparsification): positions as gaps, values as float32
``stc``       ternary          sparse ternary compression (Sattler et al., IEEE TNNLS 2019): the
                               top-k set to ``+-mu`` with ``mu = mean |top-k values|``; positions
                               Golomb-coded with the paper's parameter, one sign bit per value
============  ===============  ============================================================

"+ zstd" is the stream's flag bit 1: every raw and float-mode payload is one zstd frame (``level``).
Integer and bool tensors, and every tensor when ``encode(..., exact=True)``, are stored raw (exact);
empty tensors as mode zero. ``topk`` and ``stc`` keep at most the non-zero entries (zeros are never
"kept"); ties between equal magnitudes go to the lower flat index. Error feedback (residual
accumulation) is not done here: the client wrapper keeps ``delta - decode(encode(delta))``, so the
codecs are stateless and deterministic. A codec's ``decode`` accepts only streams of its own kind.

The codecs are registered with :func:`nnc_fl.codecs.make_codec` by :func:`register_baselines`, and
declared as entry points (group ``nnc_fl.codecs``, see pyproject.toml), so a process that never
imported this module still finds them by name when the package is installed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from nnc_fl import bitstream as bs
from nnc_fl import decode, inspect, read_fingerprint
from nnc_fl.codecs import ParamValue, register_codec
from nnc_fl.errors import FormatError
from nnc_fl.payloads import golomb_parameter, pack_f16, pack_int8, pack_sparse, pack_ternary

# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _check_tensor(name: object, value: object) -> tuple[str, np.ndarray]:
    """Validate one input tensor; return it as a C-contiguous array of native byte order (the
    container refuses what its limits do not admit when the stream is written)."""
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, got {type(name).__name__}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"tensor name {name!r} is not valid UTF-8: {exc}") from exc
    arr = np.asarray(value)
    native = arr.dtype.newbyteorder("=")
    if native.newbyteorder("<") not in bs.DTYPE_CODES:
        raise ValueError(f"tensor {name!r} has unsupported dtype {arr.dtype}")
    return name, np.asarray(arr, dtype=native, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)


def _require_finite(name: str, arr: np.ndarray, codec: str) -> None:
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"tensor {name!r} has non-finite values, which codec {codec!r} cannot represent")


def _check_level(level: object) -> int:
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= bs.MAX_ZSTD_LEVEL:
        raise ValueError(f"zstd level must be an integer in 1..{bs.MAX_ZSTD_LEVEL}, got {level!r}")
    return level


def _check_ratio(ratio: object) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}")
    return float(ratio)


# --------------------------------------------------------------------------------------------
# The lossy transforms
# --------------------------------------------------------------------------------------------


def int8_scale(arr: np.ndarray) -> np.float32:
    """The per-tensor step of the ``int8-zstd`` codec: ``max|x| / 127`` rounded to float32."""
    peak = float(np.max(np.abs(arr), initial=0.0))
    with np.errstate(over="ignore"):
        scale = np.float32(peak / 127.0)
    return scale


def int8_levels(name: str, arr: np.ndarray) -> tuple[np.float32, np.ndarray]:
    """``(scale, levels)``: ``rint(x / scale)`` clipped to [-127, 127] (all 0 when ``scale`` is 0)."""
    _require_finite(name, arr, "int8-zstd")
    scale = int8_scale(arr)
    if not np.isfinite(scale):
        raise ValueError(f"tensor {name!r}: max |x| is beyond float32, no int8 scale fits")
    if scale == 0:
        return scale, np.zeros(arr.size, dtype=np.int8)
    q = np.clip(np.rint(arr.reshape(-1).astype(np.float64) / np.float64(scale)), -127, 127)
    return scale, q.astype(np.int8)


def sparsity_k(n: int, ratio: float) -> int:
    """How many entries ``topk`` / ``stc`` aim to keep of ``n``: ``ceil(ratio * n)``, at most ``n``."""
    return min(n, math.ceil(ratio * n))


def topk_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Sorted flat indices of the ``k`` largest ``|values|`` among the non-zero ones.

    Ties at the threshold go to the lower index, so the choice is unique. Fewer than ``k``
    indices come back when fewer than ``k`` entries are non-zero.
    """
    mag = np.abs(values.reshape(-1))
    nonzero = np.count_nonzero(mag)
    if k >= nonzero:
        return np.flatnonzero(mag)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    threshold = np.partition(mag, mag.size - k)[mag.size - k]
    above = np.flatnonzero(mag > threshold)
    at = np.flatnonzero(mag == threshold)[: k - above.size]
    return np.sort(np.concatenate([above, at]))


def topk(name: str, arr: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, float32 values)`` of the top-k entries of ``arr`` (``k = ceil(ratio * n)``)."""
    _require_finite(name, arr, "topk")
    flat = arr.reshape(-1)
    idx = topk_indices(flat, sparsity_k(flat.size, ratio))
    values = flat[idx].astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"tensor {name!r}: kept values overflow float32")
    return idx, values


def stc(name: str, arr: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """``(positions, negative, mu)``: the top-k entries become ``+-mu``, ``mu = mean |kept|`` (float32)."""
    _require_finite(name, arr, "stc")
    flat = arr.reshape(-1)
    idx = topk_indices(flat, sparsity_k(flat.size, ratio))
    kept = flat[idx].astype(np.float64)
    mu = np.float32(np.mean(np.abs(kept))) if idx.size else np.float32(0.0)
    if not np.isfinite(mu):
        raise ValueError(f"tensor {name!r}: mean magnitude overflows float32")
    return idx, kept < 0, mu


# --------------------------------------------------------------------------------------------
# The codecs
# --------------------------------------------------------------------------------------------


class _BaselineCodec:
    """Shared encode/decode: float tensors go through :meth:`_payload` in the codec's mode,
    everything else is stored exactly (raw; empty tensors as mode zero)."""

    name: str = ""
    _mode: int = bs.MODE_RAW  # the mode of (non-empty) floating-point tensors
    _zstd_level: int | None = None

    def _payload(self, name: str, arr: np.ndarray) -> bytes:
        """The payload of a non-empty float tensor in the codec's mode (its lossy transform)."""
        raise NotImplementedError

    def encode(
        self,
        tensors: Mapping[str, np.ndarray],
        *,
        fingerprint: bytes | None = None,
        exact: bool = False,
        limits: bs.Limits | None = None,
    ) -> bytes:
        """Code ``tensors`` (names, order, dtypes and shapes kept); ``exact=True`` codes every tensor losslessly.

        Raises ``TypeError`` for a non-mapping or non-str names, ``ValueError`` for unsupported
        dtypes, limits exceeded, a bad fingerprint or (lossy codecs) non-finite float values.
        """
        if not isinstance(tensors, Mapping):
            raise TypeError(f"tensors must be a mapping of name to array, got {type(tensors).__name__}")
        records = []
        for raw_name, value in tensors.items():
            name, arr = _check_tensor(raw_name, value)
            if arr.size == 0:
                records.append(bs.TensorRecord(name, arr.dtype, arr.shape, bs.MODE_ZERO))
            elif exact or arr.dtype.kind != "f" or self._mode == bs.MODE_RAW:
                payload = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
                records.append(bs.TensorRecord(name, arr.dtype, arr.shape, bs.MODE_RAW, payload=payload))
            else:
                records.append(
                    bs.TensorRecord(name, arr.dtype, arr.shape, self._mode, payload=self._payload(name, arr))
                )
        return bs.write_stream(records, fingerprint, limits=limits or bs.DEFAULT_LIMITS, zstd_level=self._zstd_level)

    def decode(
        self, data: bytes, *, expect: Mapping[str, np.ndarray] | None = None, limits: bs.Limits | None = None
    ) -> dict[str, np.ndarray]:
        """Inverse of :meth:`encode`; raises :class:`nnc_fl.FormatError` (only) for malformed input,
        including a valid nnc-fl stream this codec does not write (other modes, zstd flag differing).
        With ``expect``, as :func:`nnc_fl.decode`: the table must describe those tensors."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise FormatError(f"expected bytes, got {type(data).__name__}")
        limits = bs.Limits.for_schema(expect) if expect is not None else (limits or bs.DEFAULT_LIMITS)
        info = inspect(data, limits=limits)
        zstd = self._zstd_level is not None
        if info.zstd != zstd:
            raise FormatError(f"codec {self.name!r} streams {'must' if zstd else 'must not'} be zstd-compressed")
        for t in info.tensors:
            allowed = (
                (bs.MODE_ZERO, bs.MODE_RAW, self._mode)
                if t.dtype.kind == "f"
                else (bs.MODE_ZERO, bs.MODE_RAW, bs.MODE_INT)
            )
            if t.mode not in allowed:
                raise FormatError(f"tensor {t.name!r}: mode {t.mode_name!r} is not allowed in a {self.name!r} stream")
        return decode(data, expect=expect, limits=limits)

    def fingerprint_of(self, data: bytes) -> bytes | None:
        """The fingerprint the stream carries (its header checked only)."""
        return read_fingerprint(data)

    def params(self) -> dict[str, ParamValue]:
        """Settings that rebuild this codec with :func:`nnc_fl.codecs.make_codec`."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class ZstdCodec(_BaselineCodec):
    """Lossless: the tensors' bytes, zstd-compressed at ``level``."""

    name = "zstd"

    def __init__(self, *, level: int = 3) -> None:
        self._zstd_level = _check_level(level)

    def params(self) -> dict[str, ParamValue]:
        return {"level": self._zstd_level}


class Fp16Codec(_BaselineCodec):
    """Floating-point tensors as IEEE float16 (no entropy coding); others exact."""

    name = "fp16"
    _mode = bs.MODE_F16

    def _payload(self, name: str, arr: np.ndarray) -> bytes:
        return pack_f16(arr.astype(np.float16))


class Int8ZstdCodec(_BaselineCodec):
    """Per-tensor uniform 8-bit quantisation (``scale = max|x| / 127``), then zstd at ``level``."""

    name = "int8-zstd"
    _mode = bs.MODE_INT8

    def __init__(self, *, level: int = 3) -> None:
        self._zstd_level = _check_level(level)

    def _payload(self, name: str, arr: np.ndarray) -> bytes:
        return pack_int8(*int8_levels(name, arr))

    def params(self) -> dict[str, ParamValue]:
        return {"level": self._zstd_level}


class TopKCodec(_BaselineCodec):
    """Top-k sparsification per tensor (``k = ceil(ratio * n)``): varint gaps + float32 values, zstd."""

    name = "topk"
    _mode = bs.MODE_SPARSE

    def __init__(self, *, ratio: float = 0.01, level: int = 3) -> None:
        self.ratio = _check_ratio(ratio)
        self._zstd_level = _check_level(level)

    def _payload(self, name: str, arr: np.ndarray) -> bytes:
        return pack_sparse(*topk(name, arr, self.ratio))

    def params(self) -> dict[str, ParamValue]:
        return {"ratio": self.ratio, "level": self._zstd_level}


class STCCodec(_BaselineCodec):
    """Sparse ternary compression per tensor: top-k -> +-mu, Golomb-coded positions, sign bits."""

    name = "stc"
    _mode = bs.MODE_TERNARY

    def __init__(self, *, ratio: float = 0.01) -> None:
        self.ratio = _check_ratio(ratio)

    def _payload(self, name: str, arr: np.ndarray) -> bytes:
        positions, negative, mu = stc(name, arr, self.ratio)
        return pack_ternary(positions, negative, mu, golomb_parameter(positions.size, arr.size))

    def params(self) -> dict[str, ParamValue]:
        return {"ratio": self.ratio}


BASELINE_CODECS = {cls.name: cls for cls in (ZstdCodec, Fp16Codec, Int8ZstdCodec, TopKCodec, STCCodec)}


def register_baselines() -> None:
    """Register the baseline codecs with :func:`nnc_fl.codecs.make_codec` (again: a no-op)."""
    for name, cls in BASELINE_CODECS.items():
        register_codec(name, cls)


__all__ = [
    "BASELINE_CODECS",
    "Fp16Codec",
    "Int8ZstdCodec",
    "STCCodec",
    "TopKCodec",
    "ZstdCodec",
    "int8_levels",
    "int8_scale",
    "register_baselines",
    "sparsity_k",
    "stc",
    "topk",
    "topk_indices",
]
