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
``sign``      ternary + zstd   scaled sign (EF-signSGD, Karimireddy et al., ICML 2019): every
                               non-zero element ``+-mean |x|``; ~1 bit per element
``qsgd``      int8 + zstd      QSGD (Alistarh et al., NeurIPS 2017): ``scale = ||x|| / s`` (max
                               norm by default, or L2), levels in ``[-s, s]`` by unbiased
                               stochastic rounding, seeded by the tensor
``powersgd``  lowrank          PowerSGD-style rank-r factors ``P``, ``Q`` (float32) of the tensor
                               viewed as ``shape[0]`` x rest (Vogels et al., NeurIPS 2019); tensors
                               of rank < 2 raw
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

import hashlib
import math
from collections.abc import Mapping

import numpy as np

from nnc_fl import bitstream as bs
from nnc_fl import decode, inspect, read_fingerprint
from nnc_fl.codecs import ParamValue, register_codec
from nnc_fl.errors import FormatError
from nnc_fl.payloads import (
    golomb_parameter,
    lowrank_fits,
    lowrank_product,
    lowrank_view,
    pack_f16,
    pack_int8,
    pack_lowrank,
    pack_sparse,
    pack_ternary,
)

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


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return value


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


def scaled_sign(name: str, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """``(positions, negative, scale)`` of scaled sign: every non-zero element becomes ``+-scale``,
    ``scale = mean |x|`` over all elements (float32), so the reconstruction ``scale * sign(x)`` has the
    L1 norm of ``x`` (EF-signSGD, Karimireddy et al., ICML 2019); exact zeros stay 0.
    """
    _require_finite(name, arr, "sign")
    flat = arr.reshape(-1)
    with np.errstate(over="ignore"):
        scale = np.float32(np.mean(np.abs(flat.astype(np.float64))))
    idx = np.flatnonzero(flat)
    return idx, flat[idx] < 0, scale


def tensor_seed(name: str, arr: np.ndarray) -> int:
    """A 64-bit seed derived from a tensor's name, dtype, shape and bytes (SHA-256): the same tensor
    always gets the same random numbers, a different one (next round's update) others."""
    h = hashlib.sha256()
    h.update(name.encode("utf-8"))
    h.update(arr.dtype.newbyteorder("<").str.encode())
    h.update(np.asarray(arr.shape, dtype="<i8").tobytes())
    h.update(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    return int.from_bytes(h.digest()[:8], "little")


QSGD_NORMS = ("l2", "max")


def qsgd_levels(name: str, arr: np.ndarray, levels: int, norm: str = "l2") -> tuple[np.float32, np.ndarray]:
    """``(scale, levels)`` of QSGD (Alistarh et al., NeurIPS 2017) with ``s = levels`` levels.

    ``scale = ||x|| / s`` (float32; ``norm`` "l2" as in the paper's analysis, or "max"); each
    ``|x_i| / scale`` is rounded down or up at random with the probability that makes the rounding
    unbiased, from a generator seeded by :func:`tensor_seed` (deterministic: same tensor, same
    levels); levels are clipped to ``[-s, s]`` and carry the sign of ``x_i``.
    """
    _require_finite(name, arr, "qsgd")
    flat = arr.reshape(-1).astype(np.float64)
    mag = np.abs(flat)
    peak = float(np.max(mag, initial=0.0))
    if peak == 0.0:
        return np.float32(0.0), np.zeros(flat.size, dtype=np.int8)
    size = peak * math.sqrt(float(np.sum(np.square(mag / peak)))) if norm == "l2" else peak
    with np.errstate(over="ignore"):
        scale = np.float32(size / levels)
    if scale == 0 or not np.isfinite(scale):
        return scale, np.zeros(flat.size, dtype=np.int8)
    ratio = mag / np.float64(scale)
    lower = np.floor(ratio)
    up = np.random.default_rng(tensor_seed(name, arr)).random(flat.size) < (ratio - lower)
    q = np.minimum(lower + up, levels)
    return scale, (np.sign(flat) * q).astype(np.int8)


def int8_fits(scale: np.float32, dtype: np.dtype) -> bool:
    """Whether an int8 payload with ``scale`` decodes within ``dtype`` (the decoder's check)."""
    return bool(np.isfinite(scale)) and 127.0 * float(scale) <= float(np.finfo(dtype).max)


def lowrank_factors(name: str, arr: np.ndarray, rank: int, iterations: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(P, Q)``, float32, with ``P @ Q.T`` a rank-``rank`` approximation of ``arr`` viewed as a matrix
    (``shape[0]`` rows): PowerSGD's power step (Vogels et al., NeurIPS 2019) from a fixed start.

    ``Q`` starts as standard normal numbers from a generator seeded by the matrix shape and rank
    (the same start every call: the codec is stateless); each iteration computes ``P = orth(M Q)``
    (reduced QR) and ``Q = M.T P``. So ``P Q.T = P P.T M``, the projection of ``M`` on ``span(P)``.
    """
    _require_finite(name, arr, "powersgd")
    rows, cols = lowrank_view(arr.shape)
    m = arr.reshape(rows, cols).astype(np.float64)
    q = np.random.default_rng((rows, cols, rank)).standard_normal((cols, rank))
    p = np.zeros((rows, rank))
    for _ in range(iterations):
        p = np.linalg.qr(m @ q, mode="reduced")[0]
        q = m.T @ p
    with np.errstate(over="ignore"):
        return p.astype(np.float32), q.astype(np.float32)


# --------------------------------------------------------------------------------------------
# The codecs
# --------------------------------------------------------------------------------------------


def _raw_record(name: str, arr: np.ndarray) -> bs.TensorRecord:
    payload = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    return bs.TensorRecord(name, arr.dtype, arr.shape, bs.MODE_RAW, payload=payload)


class _BaselineCodec:
    """Shared encode/decode: float tensors go through :meth:`_payload` in the codec's mode,
    everything else is stored exactly (raw; empty tensors as mode zero)."""

    name: str = ""
    _mode: int = bs.MODE_RAW  # the mode of (non-empty) floating-point tensors
    _zstd_level: int | None = None

    def _payload(self, name: str, arr: np.ndarray) -> bytes:
        """The payload of a non-empty float tensor in the codec's mode (its lossy transform)."""
        raise NotImplementedError

    def _record(self, name: str, arr: np.ndarray) -> bs.TensorRecord:
        """The record of a non-empty float tensor: :meth:`_payload` in the codec's mode (codecs that
        send some tensors raw override this)."""
        return bs.TensorRecord(name, arr.dtype, arr.shape, self._mode, payload=self._payload(name, arr))

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
                records.append(self._record(name, arr))
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


class SignCodec(_BaselineCodec):
    """Scaled sign (signSGD with error feedback): per tensor ``mean |x|`` and one sign bit per element.

    Carried by the ternary mode with every non-zero element kept (``+-mu``, ``mu = mean |x|``) and
    the zstd flag: the positions' Golomb code is then (nearly) all zero bits, which zstd at
    ``level`` squeezes to a few bytes, so the cost is ~1 bit per element. The error feedback of
    EF-signSGD is the client wrapper's residual.
    """

    name = "sign"
    _mode = bs.MODE_TERNARY

    def __init__(self, *, level: int = 3) -> None:
        self._zstd_level = _check_level(level)

    def _record(self, name: str, arr: np.ndarray) -> bs.TensorRecord:
        positions, negative, scale = scaled_sign(name, arr)
        if not (np.isfinite(scale) and float(scale) <= float(np.finfo(arr.dtype).max)):
            return _raw_record(name, arr)  # (a float32 mean rounded past the dtype's largest value)
        payload = pack_ternary(positions, negative, scale, golomb_parameter(positions.size, arr.size))
        return bs.TensorRecord(name, arr.dtype, arr.shape, bs.MODE_TERNARY, payload=payload)

    def params(self) -> dict[str, ParamValue]:
        return {"level": self._zstd_level}


class QSGDCodec(_BaselineCodec):
    """QSGD: per tensor ``||x|| / s`` and unbiased stochastically rounded levels in ``[-s, s]`` as int8,
    compressed by zstd at ``level``. ``levels`` is ``s`` (1..127), ``norm`` "max" (default) or "l2".

    One norm per tensor: the int8 mode has one scale per tensor, so QSGD's buckets are not
    expressible. With the paper's L2 norm over a whole tensor of ~10^5 elements, ``|x_i| / scale``
    is tiny and the random rounding's variance huge (on the medium delta of experiments.deltas, 8
    levels give an error 3.2x the update's norm); in a small digits federation such updates failed
    the server's norm check and the model stayed at chance. The max norm has far less variance (an
    error of 1.2x the norm at 2 levels, 0.7x at 4, on the same delta) at a few bits per element;
    it is the default.

    The random rounding is deterministic: its generator is seeded from the tensor itself
    (:func:`tensor_seed`), so the codec stays stateless and the same update gives the same bytes.
    A tensor whose scale would overflow its dtype at the decoder's int8 bound is sent raw.
    """

    name = "qsgd"
    _mode = bs.MODE_INT8

    def __init__(self, *, levels: int = 2, norm: str = "max", level: int = 3) -> None:
        self.levels = _check_int("levels", levels, 1, 127)
        if norm not in QSGD_NORMS:
            raise ValueError(f"norm must be one of {', '.join(QSGD_NORMS)}, got {norm!r}")
        self.norm = norm
        self._zstd_level = _check_level(level)

    def _record(self, name: str, arr: np.ndarray) -> bs.TensorRecord:
        scale, levels = qsgd_levels(name, arr, self.levels, self.norm)
        if not int8_fits(scale, arr.dtype):
            return _raw_record(name, arr)
        return bs.TensorRecord(name, arr.dtype, arr.shape, bs.MODE_INT8, payload=pack_int8(scale, levels))

    def params(self) -> dict[str, ParamValue]:
        return {"levels": self.levels, "norm": self.norm, "level": self._zstd_level}


class PowerSGDCodec(_BaselineCodec):
    """PowerSGD-style low rank: each float tensor of rank >= 2, viewed as ``shape[0]`` x the rest,
    becomes rank-``rank`` factors ``P``, ``Q`` (float32, mode lowrank), computed by
    :func:`lowrank_factors` with ``iterations`` power steps.

    PowerSGD (Vogels et al., 2019) keeps ``Q`` from one step to the next (warm start) and keeps an
    error-feedback memory. A codec must be stateless and deterministic, so here every call starts
    from the same seeded random ``Q`` (more iterations make up for the missing warm start), and the
    client wrapper's error feedback (``delta - decode(encode(delta))`` carried to the next round)
    plays the role of PowerSGD's memory. Tensors of rank < 2 (biases, norms' weights) and those
    whose factors would not be smaller than the tensor are sent raw (exact float32), as in PowerSGD.
    """

    name = "powersgd"
    _mode = bs.MODE_LOWRANK

    def __init__(self, *, rank: int = 2, iterations: int = 2) -> None:
        self.rank = _check_int("rank", rank, 1, bs.MAX_LOWRANK_RANK)
        self.iterations = _check_int("iterations", iterations, 1, 16)

    def _record(self, name: str, arr: np.ndarray) -> bs.TensorRecord:
        _require_finite(name, arr, self.name)  # (like every lossy codec, also for what goes raw)
        if arr.ndim < 2:
            return _raw_record(name, arr)
        rows, cols = lowrank_view(arr.shape)
        rank = min(self.rank, rows, cols)
        if not lowrank_fits(arr.shape, rank):
            return _raw_record(name, arr)
        p, q = lowrank_factors(name, arr, rank, self.iterations)
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
            return _raw_record(name, arr)  # factors beyond float32 (float64 tensors near their limit)
        if float(np.max(np.abs(lowrank_product(p, q)), initial=0.0)) > float(np.finfo(arr.dtype).max):
            return _raw_record(name, arr)  # the decoder would refuse the reconstruction's range
        return bs.TensorRecord(name, arr.dtype, arr.shape, bs.MODE_LOWRANK, payload=pack_lowrank(p, q))

    def params(self) -> dict[str, ParamValue]:
        return {"rank": self.rank, "iterations": self.iterations}


BASELINE_CODECS = {
    cls.name: cls
    for cls in (ZstdCodec, Fp16Codec, Int8ZstdCodec, TopKCodec, STCCodec, SignCodec, QSGDCodec, PowerSGDCodec)
}


def register_baselines() -> None:
    """Register the baseline codecs with :func:`nnc_fl.codecs.make_codec` (again: a no-op)."""
    for name, cls in BASELINE_CODECS.items():
        register_codec(name, cls)


__all__ = [
    "BASELINE_CODECS",
    "QSGD_NORMS",
    "Fp16Codec",
    "Int8ZstdCodec",
    "PowerSGDCodec",
    "QSGDCodec",
    "STCCodec",
    "SignCodec",
    "TopKCodec",
    "ZstdCodec",
    "int8_fits",
    "int8_levels",
    "int8_scale",
    "lowrank_factors",
    "qsgd_levels",
    "register_baselines",
    "scaled_sign",
    "sparsity_k",
    "stc",
    "tensor_seed",
    "topk",
    "topk_indices",
]
