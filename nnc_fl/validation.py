"""Checks an uploaded update must pass before it may touch the global model.

Small functions over numpy arrays. Each check raises :class:`UpdateRejected` -- and nothing
else -- with a short machine-readable ``code`` (one of :data:`REJECT_CODES`, used to count rejections
per round) and a human-readable ``reason`` for the log.

The checks that look across rounds (scale, direction, agreement) learn what honest updates look
like: they live in :mod:`nnc_fl.references`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .codecs import UpdateCodec, name_matches
from .errors import SchemaError, TemporalReferenceError
from .updates import with_reference

#: Why an update can be refused, in the order the server checks: the reply's protocol record, its
#: authentication tag, the model and round it is bound to, the stream's tensor table, the payloads,
#: the values (finite, then within their range), the weighting metric; then, across the round's
#: updates, scale, direction, agreement, outliers; last (opt-in), the loss on the server's trusted data.
REJECT_CODES = (
    "protocol",
    "auth",
    "base",
    "replay",
    "schema",
    "format",
    "nonfinite",
    "range",
    "weight",
    "norm",
    "direction",
    "agreement",
    "outlier",
    "loss",
)

#: ``1 / Phi^-1(3/4)``: makes the MAD a consistent estimator of a normal standard deviation.
MAD_SCALE = 1.4826


class UpdateRejected(ValueError):
    """An update failed a check; ``code`` names the check, ``reason`` says what was wrong."""

    def __init__(self, code: str, reason: str) -> None:
        if code not in REJECT_CODES:
            raise ValueError(f"unknown rejection code {code!r}")
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def decode_update(
    codec: UpdateCodec,
    data: bytes,
    expect: Mapping[str, np.ndarray] | None = None,
    temporal_reference: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Decode an uploaded stream, turning a table that does not describe ``expect`` into a
    ``schema`` rejection (before any payload is decoded), a stream coded against another temporal
    reference than ``temporal_reference`` (the last global increment) into ``base``, and any
    decoder failure into ``format``.

    A codec should raise only :class:`nnc_fl.FormatError`; any other exception a hostile stream
    provokes is refused the same way so that it cannot stop the server.
    """
    kw = {} if expect is None else {"expect": expect}
    kw.update(with_reference(codec, temporal_reference))
    try:
        tensors = codec.decode(data, **kw)
    except SchemaError as exc:
        raise UpdateRejected("schema", str(exc)) from exc
    except TemporalReferenceError as exc:
        raise UpdateRejected("base", str(exc)) from exc
    except Exception as exc:  # hostile input must never escape as a crash
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


#: Tensors that must hold no negative value in any usable model: the running variances of
#: normalisation layers (PyTorch ``running_var``, Keras ``moving_variance``). One negative entry
#: makes ``sqrt(var + eps)`` NaN and every prediction of the model meaningless.
NONNEGATIVE = ("*running_var", "*moving_variance")


def check_nonnegative(tensors: Mapping[str, np.ndarray], patterns: Sequence[str] = NONNEGATIVE) -> None:
    """Refuse a model (not a delta) in which a tensor whose name matches one of the ``fnmatch``
    ``patterns`` holds a negative value (``range``).

    A sign-flipping client sends ``G - (W - G)``: where training raised a BatchNorm variance by more
    than it was, the flipped variance is negative, and a global model averaged from it can be too.
    """
    for name, arr in tensors.items():
        if name_matches(name, patterns) and np.issubdtype(arr.dtype, np.number):
            low = arr.min(initial=0)
            if low < 0:
                raise UpdateRejected("range",
                                     f"tensor {name!r} must not be negative (a variance), holds {float(low):.6g}")


def update_norm(tensors: Mapping[str, np.ndarray]) -> float:
    """L2 norm over all floating tensors, accumulated in float64 (integer buffers are ignored)."""
    total = 0.0
    for arr in tensors.values():
        if np.issubdtype(arr.dtype, np.floating):
            flat = arr.astype(np.float64, copy=False).ravel()
            total += float(np.dot(flat, flat))
    return float(np.sqrt(total))


def split_statistics(
    tensors: Mapping[str, np.ndarray], patterns: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(trained, statistics)``: the tensors whose names match none of the ``fnmatch``
    ``patterns``, and those that match one (the same arrays, not copies)."""
    trained: dict[str, np.ndarray] = {}
    statistics: dict[str, np.ndarray] = {}
    for name, arr in tensors.items():
        part = statistics if name_matches(name, patterns) else trained
        part[name] = arr
    return trained, statistics


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
    scale = max(MAD_SCALE * mad, rel_floor * abs(med), np.finfo(np.float64).tiny)
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


def loss_bound(reference: float, tolerance: float) -> float:
    """The largest loss on the server's trusted data an update's model may have when the current
    model's is ``reference``: ``(1 + tolerance) * reference`` (cf. Zeno, FLTrust).

    The defence that needs no history: from the first round and in a cohort of two, a sign-flipped
    update raises the loss by about what an honest one lowers it, and near convergence by many
    times the current loss.
    """
    return reference + tolerance * abs(reference)


def check_trusted_loss(loss: float, reference: float, tolerance: float) -> None:
    """Refuse (``loss``) an update whose model's trusted loss is not finite or above
    :func:`loss_bound`."""
    if not math.isfinite(loss):
        raise UpdateRejected("loss", f"the loss on the server's trusted data is {loss!r}")
    bound = loss_bound(reference, tolerance)
    if loss > bound:
        raise UpdateRejected("loss", f"the loss on the server's trusted data rises to {loss:.6g} from "
                                     f"{reference:.6g} (above {bound:.6g})")


# -- the weighting metric --------------------------------------------------------------------------


def check_weight(value: object, key: str) -> float:
    """A reply's weighting metric (e.g. ``num-examples``) as a float: a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UpdateRejected("weight", f"metric {key!r} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise UpdateRejected("weight", f"metric {key!r} must be finite and > 0, got {value!r}")
    return float(value)


def cap_weights(weights: Sequence[float], previous: Sequence[float | None], ratio: float) -> np.ndarray:
    """Each weight capped at ``ratio`` times the median of the *other* weights of the round, and at
    ``ratio`` times what the same node was credited with before (``previous[i]``, ``None``: new node).

    A client can thus claim at most ``ratio`` times the others' weight: in a cohort of two it
    cannot buy more than ``ratio / (1 + ratio)`` of the aggregate, and a tiny claim only lowers its
    own share. A single weight is capped by its history only.
    """
    w = np.asarray(weights, dtype=np.float64)
    out = w.copy()
    for i in range(w.size):
        others = np.delete(w, i)
        if others.size:
            out[i] = min(out[i], ratio * float(np.median(others)))
        if previous[i] is not None:
            out[i] = min(out[i], ratio * float(previous[i]))
    return out


__all__ = [
    "MAD_SCALE",
    "NONNEGATIVE",
    "REJECT_CODES",
    "UpdateRejected",
    "cap_weights",
    "check_finite",
    "check_nonnegative",
    "check_norm_bound",
    "check_schema",
    "check_trusted_loss",
    "check_weight",
    "decode_update",
    "loss_bound",
    "outlier_mask",
    "outlier_rejection",
    "outlier_scores",
    "split_statistics",
    "update_norm",
]
