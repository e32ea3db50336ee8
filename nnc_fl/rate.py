"""Rate control: the encoder picks one common step multiplier so that a stream meets a byte budget.

``nnc_fl.encode(tensors, target_bytes=N)`` (and ``NNCCodec(target_bytes=N)`` /
``NNCCodec(target_fraction=f)``) scale every quantised tensor's step -- the one ``step``, ``qp``,
``rel_step`` or the default policy gives, called the *reference* step -- by one factor ``2**e``, and
search ``e`` on the coder's own output: every candidate is coded in full and its exact stream size
measured, so the result is the real size, rd/DQ/rate-search/row-reference tools included. Only the
per-tensor steps change, and they are signalled in the stream as always: the format is the same
and decoders need nothing.

The result is the stream of the *finest* multiplier found whose size is at most the budget,
searched until it is within :data:`RTOL` below the budget (or the multiplier is pinned to
:data:`E_TOL` octaves, or :data:`MAX_EVALS` codings were made):

- a budget below the smallest stream the coder can write (every quantised tensor zero: header,
  exact tensors) gives that smallest stream (the coarsest step that still changes anything);
- a budget above the stream at the finest step searched (:data:`FINEST_OCTAVES` below the
  reference) gives that stream (tensors whose coding would exceed their raw size go raw, exact).

The search (:func:`fit_budget`) interpolates the logarithm of the size linearly in ``e`` between a
too-large and a fitting multiplier, falling back to bisection when that does not halve the bracket;
it usually codes the tensors 3-7 times. Sizes are not strictly monotone in the step (adaptive
contexts, RD choices), so the search never assumes more than a bracket it has measured.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

#: Stop once the fitting stream is within this fraction below the budget.
RTOL = 0.01
#: Stop once the multiplier's exponent is pinned to this many octaves.
E_TOL = 2.0**-10
#: At most this many codings per stream (a bound on the encoder's time, whatever the sizes do).
MAX_EVALS = 24
#: The finest multiplier searched is ``2**-FINEST_OCTAVES`` times the reference step.
FINEST_OCTAVES = 16.0
#: Largest jump (octaves) of one step while the budget is not bracketed yet.
MAX_JUMP = 8.0
#: Steps kept from a previous stream (``encode(..., keep_steps=...)``) are used while the stream at
#: them lies within this fraction below the budget.
KEEP_WITHIN = 0.2


def check_target_bytes(value: object) -> int:
    """A valid byte budget: an integer >= 1 (``TypeError``/``ValueError`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"target_bytes must be an integer number of bytes, got {value!r}")
    if int(value) < 1:
        raise ValueError(f"target_bytes must be at least 1, got {value!r}")
    return int(value)


def check_target_fraction(value: object) -> float:
    """A valid budget as a fraction of the fp32 size: a number in (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"target_fraction must be a number in (0, 1), got {value!r}")
    f = float(value)
    if not 0.0 < f < 1.0:  # NaN fails too
        raise ValueError(f"target_fraction must be in (0, 1) (a share of the fp32 size), got {value!r}")
    return f


def check_keep_within(value: object, *, allow_off: bool = False) -> float:
    """A valid window for kept steps (``encode(..., keep_within=)``): a fraction in (0, 1); with
    ``allow_off`` (a codec parameter) also 0, which turns keeping steps off."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (0 <= value < 1 if allow_off else 0 < value < 1)  # NaN fails too
    ):
        bounds = "[0, 1)" if allow_off else "(0, 1)"
        raise ValueError(f"keep_within must be a fraction in {bounds}, got {value!r}")
    return float(value)


@dataclass
class Fit(Generic[T]):
    """The outcome of :func:`fit_budget`: the exponent chosen, its size and result, codings made."""

    e: float
    size: int
    result: T
    evals: int


def fit_budget(
    size_of: Callable[[float], tuple[int, T]],
    target: int,
    lo: float,
    hi: float,
    start: float = 0.0,
    *,
    rtol: float = RTOL,
    e_tol: float = E_TOL,
    max_evals: int = MAX_EVALS,
) -> Fit[T]:
    """The smallest ``e`` in ``[lo, hi]`` found whose ``size_of(e)[0] <= target``.

    ``size_of(e)`` returns ``(size, result)``; sizes should fall as ``e`` grows (coarser steps),
    roughly. Starts at ``start`` and returns the fitting point of smallest ``e`` evaluated; when
    nothing fits (even at ``hi``), the point of largest ``e`` evaluated (``hi``: the smallest
    stream); when everything fits down to ``lo``, ``lo``.
    """
    if not lo <= hi:
        raise ValueError(f"empty search interval [{lo}, {hi}]")
    fit: tuple[float, int, T] | None = None  # finest fitting point
    big: tuple[float, int, T] | None = None  # coarsest point above the budget
    history: list[tuple[float, float]] = []  # (e, log size) in evaluation order
    widths: list[float] = []
    log_t = math.log(max(target, 1))
    e = min(max(start, lo), hi)
    evals = 0
    jump = 0.0  # the last move outside a bracket
    while True:
        size, result = size_of(e)
        evals += 1
        history.append((e, math.log(max(size, 1))))
        if size <= target:
            if fit is None or e < fit[0]:
                fit = (e, size, result)
        elif big is None or e > big[0]:
            big = (e, size, result)
        if evals >= max_evals or (fit is not None and fit[1] >= (1.0 - rtol) * target):
            break
        if big is None or fit is None:
            jump = _jump(history, log_t, jump)
        if big is None:  # everything so far fits: finer
            if fit[0] <= lo:  # type: ignore[index]
                break
            e = max(lo, fit[0] - jump)  # type: ignore[index]
        elif fit is None:  # everything so far is too large: coarser
            if big[0] >= hi:
                break
            e = min(hi, big[0] + jump)
        else:
            a, b = big[0], fit[0]
            if b - a <= e_tol:
                break
            widths.append(b - a)
            la, lb = math.log(big[1]), math.log(max(fit[1], 1))
            t = (la - log_t) / (la - lb) if la > lb else 0.5
            if len(widths) >= 3 and widths[-1] > 0.5 * widths[-3]:
                t = 0.5  # interpolation is stalling at one end: bisect
            e = a + min(max(t, 0.05), 0.95) * (b - a)
    if fit is None and big[0] < hi:  # type: ignore[index]
        size, result = size_of(hi)  # out of codings before a fit: the smallest stream, if that fits
        evals += 1
        if size <= target:
            fit = (hi, size, result)
    if fit is not None:
        return Fit(fit[0], fit[1], fit[2], evals)
    return Fit(big[0], big[1], big[2], evals)  # type: ignore[index]


def _jump(history: list[tuple[float, float]], log_t: float, last: float) -> float:
    """Octaves to move, outside a bracket, for the log size to reach ``log_t``: from the slope of
    the last two points (assumed -ln 2 per octave, i.e. size ~ 1/step, without two usable ones);
    at least twice the ``last`` move when that did not change the size (a stair: steps on a grid)."""
    e1, l1 = history[-1]
    slope = -math.log(2.0)
    flat = False
    if len(history) >= 2:
        e0, l0 = history[-2]
        flat = l1 == l0
        if e1 != e0 and not flat:
            slope = min(max((l1 - l0) / (e1 - e0), -4.0), -0.1)
    jump = abs((log_t - l1) / slope)
    if flat:
        jump = max(jump, 2.0 * last)
    return min(max(jump, 2.0**-6), MAX_JUMP)


__all__ = [
    "E_TOL",
    "FINEST_OCTAVES",
    "KEEP_WITHIN",
    "MAX_EVALS",
    "RTOL",
    "Fit",
    "check_keep_within",
    "check_target_bytes",
    "check_target_fraction",
    "fit_budget",
]
