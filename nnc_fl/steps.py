"""How a float tensor's quantisation step is chosen: explicit step, NNC QP, or the default policy;
and the precision exactly coded tensors keep (:func:`round_up_mantissa`)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ._floatcoder import FLOAT_FIELDS
from ._quantise import grid_levels_or, sum_squares
from ._quantise import on_grid as on_grid_kernel

#: NNC's QP density: 2**QP_DENSITY steps per octave.
QP_DENSITY = 2
#: Default policy: the step is the power of two at or below ``rms / DEFAULT_RMS_DIVISOR`` for
#: tensors with two or more dimensions, and four times finer for 0-d and 1-d tensors (biases,
#: norms), which are few but sensitive. A power of two is exactly a QP step (qp = 4 * log2(step)).
DEFAULT_RMS_DIVISOR = 8.0
DEFAULT_SMALL_TENSOR_FACTOR = 4.0
MIN_STEP = 2.0**-60
MAX_STEP = 2.0**60


def qp_to_step(qp: int, qp_density: int = QP_DENSITY) -> float:
    """NNC's quantisation step for ``qp``: ``(k + (qp & (k-1))) * 2**((qp >> qp_density) - qp_density)``.

    ``k = 2**qp_density``; the shift is arithmetic, so negative QPs give small steps
    (``qp_to_step(-65) ≈ 1.335e-5``).
    """
    if isinstance(qp, bool) or not isinstance(qp, (int, np.integer)):
        raise TypeError(f"qp must be an integer, got {qp!r}")
    if not 0 <= qp_density <= 8:
        raise ValueError(f"qp_density must be in [0, 8], got {qp_density}")
    qp = int(qp)
    if not -240 <= qp <= 240:
        raise ValueError(f"qp must be in [-240, 240], got {qp}")
    k = 1 << qp_density
    return float((k + (qp & (k - 1))) * 2.0 ** ((qp >> qp_density) - qp_density))


def _flat(x: np.ndarray) -> np.ndarray:
    """``x`` as a flat contiguous float32/float64 array for the kernels (float16 widened, exactly)."""
    x = np.ascontiguousarray(x).reshape(-1)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return math.sqrt(sum_squares(_flat(x)) / x.size) if x.size else 0.0


def on_grid(x: np.ndarray, grid: float, max_steps: float) -> bool:
    """Whether every value of float tensor ``x`` is an integer multiple of ``grid`` (a power of
    two) of at most ``max_steps`` grid steps in magnitude (one pass, no temporary arrays)."""
    return bool(on_grid_kernel(_grid_input(x, grid, "on_grid"), 1.0 / grid, float(max_steps)))


def coarsest_grid(x: np.ndarray, grid: float) -> float:
    """The largest power-of-two multiple of ``grid`` (a power of two) that every value of float
    tensor ``x``, which lies on ``grid``, is an integer multiple of; ``grid`` itself for an all-zero
    or empty tensor. One pass, no temporary arrays. ``ValueError`` for a non-finite value or one
    beyond 2**62 grid steps."""
    bits = int(grid_levels_or(_grid_input(x, grid, "coarsest_grid"), 1.0 / grid))
    if bits < 0:
        raise ValueError("coarsest_grid: a value is not finite or lies beyond 2**62 grid steps")
    return grid * 2.0 ** ((bits & -bits).bit_length() - 1 if bits else 0)


def coarsest_multiple(x: np.ndarray, grid: float) -> float:
    """The largest integer multiple ``m * grid`` of ``grid`` (a power of two) that every value of
    float tensor ``x``, which lies on ``grid``, is an integer multiple of (``m``: the greatest
    common divisor of its grid levels); ``grid`` itself for an all-zero or empty tensor. A sum of
    streams coded at one step ``k * grid`` lies on ``k * grid`` however odd ``k`` is, where
    :func:`coarsest_grid` sees only its power-of-two factor. ``ValueError`` for a value that is not
    finite, not on the grid, or beyond 2**52 grid steps."""
    flat = _grid_input(x, grid, "coarsest_multiple").astype(np.float64)
    levels = np.rint(flat / grid)
    if not (np.array_equal(levels * grid, flat) and (levels.size == 0 or np.abs(levels).max() <= 2.0**52)):
        raise ValueError("coarsest_multiple: a value is not finite, not on the grid or beyond 2**52 grid steps")
    m = int(np.gcd.reduce(np.abs(levels).astype(np.int64))) if levels.size else 0
    return grid * max(m, 1)


def _grid_input(x: np.ndarray, grid: float, caller: str) -> np.ndarray:
    """``x`` flat for the grid kernels, once ``grid`` is a power of two and ``x`` a float tensor."""
    if not (grid > 0 and math.isfinite(grid) and math.frexp(grid)[0] == 0.5):
        raise ValueError(f"grid step must be a power of two, got {grid!r}")
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{caller} takes a float tensor, got dtype {x.dtype}")
    return _flat(x)


def relative_step(x: np.ndarray, rel_step: float) -> float:
    """``rel_step * rms(x)``, divided by :data:`DEFAULT_SMALL_TENSOR_FACTOR` for 0-d/1-d tensors."""
    rms = _rms(x)
    if rms == 0.0 or not math.isfinite(rms):
        return 1.0  # all-zero tensors code as zero whatever the step; non-finite ones are rejected
    step = rel_step * rms
    if x.ndim < 2:
        step /= DEFAULT_SMALL_TENSOR_FACTOR
    return float(min(max(step, MIN_STEP), MAX_STEP))


#: What ``rel_step`` is relative to: each tensor's RMS, or the RMS of the whole update.
REL_TO = ("tensor", "update")


def check_rel_to(value: object, rel_step: object) -> str:
    """A valid ``rel_to`` for ``rel_step``: ``"tensor"``, or ``"update"`` (which needs ``rel_step``)."""
    if value not in REL_TO:
        raise ValueError(f"rel_to must be one of {', '.join(map(repr, REL_TO))}, got {value!r}")
    if value == "update" and rel_step is None:
        raise ValueError("rel_to='update' scales rel_step: give rel_step too")
    return str(value)


def update_step(arrays: list[np.ndarray], rel_step: float) -> float:
    """``rel_step`` times the RMS of all of ``arrays`` together (one step for all of them: the
    allocation that minimises the update's total squared error for its rate), as a float32."""
    total = sum(sum_squares(_flat(x)) for x in arrays)
    count = sum(x.size for x in arrays)
    rms = math.sqrt(total / count) if count else 0.0
    if rms == 0.0 or not math.isfinite(rms):
        return 1.0  # all zero: coded as zero whatever the step; NaN/Inf: the coder refuses the tensor
    return float(np.float32(min(max(rel_step * rms, MIN_STEP), MAX_STEP)))


def default_step(x: np.ndarray) -> float:
    """The default policy's step for float tensor ``x`` (see :data:`DEFAULT_RMS_DIVISOR`)."""
    step = relative_step(x, 1.0 / DEFAULT_RMS_DIVISOR)
    return float(min(max(2.0 ** math.floor(math.log2(step)), MIN_STEP), MAX_STEP))


def resolve_step(
    name: str,
    x: np.ndarray,
    step: float | Mapping[str, float] | None,
    qp: int | Mapping[str, int] | None,
    rel_step: float | None = None,
) -> float:
    """The step for tensor ``name``: from ``step`` or ``qp`` (a number or a per-name mapping), or
    ``rel_step`` times the tensor's RMS (see :func:`relative_step`), else the default policy.

    A per-name mapping overrides for the names it holds; other names take the one scalar setting
    given (``rel_step``, a scalar ``qp`` or ``step``), else the default policy. The result is
    rounded to float32, the precision the bitstream carries.
    """
    check_step_choice(step, qp, rel_step)
    chosen: float | None = None
    if isinstance(step, Mapping) and step.get(name) is not None:
        chosen = check_step(name, step[name])
    elif isinstance(qp, Mapping) and qp.get(name) is not None:
        chosen = qp_to_step(qp[name])
    elif rel_step is not None:
        chosen = relative_step(x, check_rel_step(rel_step))
    elif step is not None and not isinstance(step, Mapping):
        chosen = check_step(name, step)
    elif qp is not None and not isinstance(qp, Mapping):
        chosen = qp_to_step(qp)
    if chosen is None:
        chosen = default_step(x)
    return float(np.float32(chosen))


def check_step_choice(step: object, qp: object, rel_step: object) -> None:
    """Refuse more than one setting for the same tensors (``ValueError``): at most one of a scalar
    ``step``, a scalar ``qp`` and ``rel_step``, which per-name mappings of ``step`` or ``qp`` may
    override for the names they hold."""
    scalars = [v for v in (step, qp) if v is not None and not isinstance(v, Mapping)]
    if len(scalars) + (rel_step is not None) > 1:
        raise ValueError("give at most one of step, qp and rel_step")


def _bounded(value: object, what: str, low: float, high: float, *, open_low: bool = False) -> float:
    """``value`` as a float in ``[low, high]`` (``(low, high]`` if ``open_low``); else TypeError/ValueError."""
    try:
        r = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, got {value!r}") from None
    if not ((low < r if open_low else low <= r) and r <= high):  # NaN fails too
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise ValueError(f"{what} must be finite and in {interval}, got {value!r}")
    return r


#: ``rel_step`` bounds: below 2**-20 a tensor's levels reach millions of times its RMS (a stream
#: larger than the raw values); above 2**20 every level is zero.
MIN_REL_STEP, MAX_REL_STEP = 2.0**-20, 2.0**20


def check_rel_step(value: object) -> float:
    """A valid ``rel_step``: in [2**-20, 2**20]."""
    return _bounded(value, "rel_step", MIN_REL_STEP, MAX_REL_STEP)


def check_rd_lambda(value: object) -> float:
    """A valid ``rd_lambda``: in [0, 1000]."""
    return _bounded(value, "rd_lambda", 0.0, 1000.0)


def check_step(name: str, value: object) -> float:
    """A valid step for tensor ``name``: in [2**-60, 2**60]."""
    return _bounded(value, f"step for tensor {name!r}", MIN_STEP, MAX_STEP)


def check_lossless_bits(value: object) -> int | None:
    """A valid ``lossless_bits``: ``None`` (exact) or an integer in [1, 52]."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if value.lower() in ("", "none"):
            return None
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"lossless_bits must be an integer, got {value!r}")
    try:
        bits = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"lossless_bits must be an integer, got {value!r}") from None
    if (bits != value and not isinstance(value, str)) or not 1 <= bits <= 52:
        raise ValueError(f"lossless_bits must be an integer in [1, 52] (or None: exact), got {value!r}")
    return bits


def round_up_mantissa(x: np.ndarray, bits: int) -> np.ndarray:
    """``x`` with every finite float rounded towards +inf to ``bits`` mantissa bits (a new array).

    The result is never below ``x`` and less than ``2**-bits`` of ``|x|`` above it (of the dtype's
    smallest normal number for subnormal ``x``, whose mantissa is not relative); its low
    mantissa bits are zero in every value, which mode float-lossless does not send (FORMAT.md,
    ``tz``). Rounding up, never down, keeps a lower bound: a statistic ``old + delta`` that was
    >= 0 (a variance) stays >= 0 when ``delta`` is rounded. Non-finite values, values whose
    rounding would overflow to infinity, dtypes with ``bits`` or fewer mantissa bits and
    non-float tensors are returned as they are, and so is every value with ``bits=None`` (exact).
    """
    x = np.asarray(x)
    bits = check_lossless_bits(bits)
    if bits is None or x.dtype.kind != "f" or x.dtype.itemsize not in FLOAT_FIELDS:
        return x.copy()
    drop = FLOAT_FIELDS[x.dtype.itemsize][1] - bits  # the IEEE fields float-lossless codes
    if drop <= 0:
        return x.copy()
    utype = np.dtype(f"u{x.dtype.itemsize}").type
    u = np.ascontiguousarray(x).view(utype)
    one = utype(1) << utype(drop)
    low_mask = one - utype(1)
    negative = (u >> utype(8 * x.dtype.itemsize - 1)) != 0
    truncated = u & ~low_mask
    # a positive value with dropped bits goes up one unit of the kept precision; a negative value
    # goes up (towards zero) by truncation alone
    rounded = np.where(~negative & ((u & low_mask) != 0), truncated + one, truncated).view(x.dtype)
    keep = ~np.isfinite(rounded) | ~np.isfinite(x)
    return np.where(keep, x, rounded).reshape(x.shape)
