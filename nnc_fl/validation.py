"""Checks an uploaded update must pass before it may touch the global model.

Small pure functions over numpy arrays. Each check raises :class:`UpdateRejected` -- and nothing
else -- with a short machine-readable ``code`` (one of :data:`REJECT_CODES`, used to count rejections
per round) and a human-readable ``reason`` for the log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .codecs import UpdateCodec

#: Why an update can be refused, in the order the server checks.
REJECT_CODES = ("protocol", "format", "base", "schema", "nonfinite", "norm", "outlier")

#: ``1 / Phi^-1(3/4)``: makes the MAD a consistent estimator of a normal standard deviation.
_MAD_SCALE = 1.4826


class UpdateRejected(ValueError):
    """An update failed a check; ``code`` names the check, ``reason`` says what was wrong."""

    def __init__(self, code: str, reason: str) -> None:
        if code not in REJECT_CODES:
            raise ValueError(f"unknown rejection code {code!r}")
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def decode_update(codec: UpdateCodec, data: bytes) -> dict[str, np.ndarray]:
    """Decode an uploaded stream, turning any decoder failure into a ``format`` rejection.

    A codec should raise only :class:`nnc_fl.FormatError`; any other exception a hostile stream
    provokes is refused the same way so that it cannot stop the server.
    """
    try:
        tensors = codec.decode(data)
    except Exception as exc:
        raise UpdateRejected("format", f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(tensors, Mapping):
        raise UpdateRejected("format", "decoder returned no tensor mapping")
    return dict(tensors)


def check_schema(tensors: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> None:
    """Refuse unless ``tensors`` has exactly the names, shapes and dtypes of ``reference``."""
    if set(tensors) != set(reference):
        missing = sorted(set(reference) - set(tensors))[:5]
        extra = sorted(set(tensors) - set(reference))[:5]
        raise UpdateRejected("schema", f"tensor names differ (missing {missing}, unexpected {extra})")
    for name, ref in reference.items():
        arr = tensors[name]
        if not isinstance(arr, np.ndarray):
            raise UpdateRejected("schema", f"tensor {name!r} is not an array")
        if arr.shape != ref.shape:
            raise UpdateRejected("schema", f"tensor {name!r} has shape {arr.shape}, expected {ref.shape}")
        if arr.dtype != ref.dtype:
            raise UpdateRejected("schema", f"tensor {name!r} has dtype {arr.dtype}, expected {ref.dtype}")


def check_finite(tensors: Mapping[str, np.ndarray]) -> None:
    """Refuse NaN or infinity in any floating tensor."""
    for name, arr in tensors.items():
        if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
            raise UpdateRejected("nonfinite", f"tensor {name!r} holds NaN or infinity")


def update_norm(tensors: Mapping[str, np.ndarray]) -> float:
    """L2 norm over all floating tensors, accumulated in float64 (integer buffers are ignored)."""
    total = 0.0
    for arr in tensors.values():
        if np.issubdtype(arr.dtype, np.floating):
            flat = arr.astype(np.float64, copy=False).ravel()
            total += float(np.dot(flat, flat))
    return float(np.sqrt(total))


def check_norm_bound(norm: float, max_norm: float | None) -> None:
    """Refuse an update whose norm is not finite or exceeds ``max_norm`` (``None``: no bound)."""
    if not np.isfinite(norm):
        raise UpdateRejected("nonfinite", "update norm is not finite")
    if max_norm is not None and norm > max_norm:
        raise UpdateRejected("norm", f"update norm {norm:.6g} exceeds the bound {max_norm:.6g}")


def outlier_scores(norms: Sequence[float], *, rel_floor: float = 0.1) -> np.ndarray:
    """Robust z-scores ``(n - median) / scale`` of update norms.

    ``scale = max(1.4826 * MAD, rel_floor * median)``; the floor keeps near-identical honest norms
    (MAD close to 0) from producing huge scores.
    """
    arr = np.asarray(norms, dtype=np.float64)
    if arr.size == 0:
        return arr
    med = float(np.median(arr))
    mad = float(np.median(np.abs(arr - med)))
    scale = max(_MAD_SCALE * mad, rel_floor * abs(med), np.finfo(np.float64).tiny)
    return (arr - med) / scale


def outlier_mask(norms: Sequence[float], threshold: float | None, *, min_count: int = 3) -> np.ndarray:
    """Which norms are too large: robust z-score above ``threshold``.

    Only large norms are outliers (a small update cannot blow up the average). With fewer than
    ``min_count`` norms, or ``threshold`` ``None``, nothing is flagged: two updates cannot tell
    which one is the odd one out.
    """
    arr = np.asarray(norms, dtype=np.float64)
    if threshold is None or arr.size < max(min_count, 3):
        return np.zeros(arr.size, dtype=bool)
    return outlier_scores(arr) > threshold


def outlier_rejection(norm: float, score: float, threshold: float) -> UpdateRejected:
    """The ``outlier`` rejection (to raise) for one norm flagged by :func:`outlier_mask`."""
    return UpdateRejected(
        "outlier", f"update norm {norm:.6g} has robust z-score {score:.3g} > threshold {threshold:.3g}"
    )


__all__ = [
    "REJECT_CODES",
    "UpdateRejected",
    "check_finite",
    "check_norm_bound",
    "check_schema",
    "decode_update",
    "outlier_mask",
    "outlier_rejection",
    "outlier_scores",
    "update_norm",
]
