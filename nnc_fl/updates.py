"""Update arithmetic every party computes the same way: deltas, their application, error feedback.

Model tensors are plain ``Mapping[str, np.ndarray]``. All arithmetic keeps each tensor's dtype, so a
client and the server that apply the same decoded delta to the same base get the same bits.

:func:`code_update` is the one error-feedback path: the client codes its update with it and the
server codes the global increment with it, so both links carry their rounding error into the next
message the same way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ._quantise import all_finite
from .bitstream import DEFAULT_LIMITS, Limits
from .codecs import UpdateCodec

Tensors = Mapping[str, np.ndarray]


def limits_for(model: Tensors) -> Limits:
    """Limits that admit streams of ``model``'s tensors (and whatever the defaults admit)."""
    return Limits.for_schema(model).covering(DEFAULT_LIMITS)


def model_delta(new: Tensors, base: Tensors) -> dict[str, np.ndarray]:
    """``new - base`` per tensor in ``base``'s dtype and order.

    Floating tensors subtract in their own dtype; integer tensors wrap modulo their width (so
    :func:`apply_delta` restores them exactly); booleans use XOR. ``new`` must hold the same names
    and shapes (see :func:`cast_like`).
    """
    out = {}
    for name, b in base.items():
        n = np.asarray(new[name])
        if n.shape != b.shape or n.dtype != b.dtype:
            raise ValueError(f"tensor {name!r}: {n.dtype}{n.shape} vs base {b.dtype}{b.shape}")
        if b.dtype == np.bool_:
            out[name] = np.logical_xor(n, b)
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                out[name] = np.subtract(n, b, dtype=b.dtype)
    return out


def apply_delta(base: Tensors, delta: Tensors) -> dict[str, np.ndarray]:
    """``base + delta`` per tensor, in ``base``'s dtype and order (inverse of :func:`model_delta`)."""
    out = {}
    for name, b in base.items():
        d = np.asarray(delta[name])
        if d.shape != b.shape:
            raise ValueError(f"tensor {name!r}: delta shape {d.shape} vs base {b.shape}")
        if b.dtype == np.bool_:
            out[name] = np.logical_xor(b, d.astype(np.bool_))
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                out[name] = np.add(b, d.astype(b.dtype, copy=False), dtype=b.dtype)
    return out


def cast_like(tensors: Tensors, reference: Tensors) -> dict[str, np.ndarray]:
    """``tensors`` in ``reference``'s names order and dtypes (integers rounded, booleans >= 0.5).

    Aggregators may return float64 (``FedAdam``) or floats for integer buffers (``FedAvg`` on
    ``num_batches_tracked``); this brings them back to the model's dtypes. Raises ``ValueError`` on a
    missing or extra name or a shape mismatch.
    """
    if set(tensors) != set(reference):
        missing, extra = set(reference) - set(tensors), set(tensors) - set(reference)
        raise ValueError(f"tensor names differ: missing {sorted(missing)}, extra {sorted(extra)}")
    out = {}
    for name, ref in reference.items():
        arr = np.asarray(tensors[name])
        if arr.shape != ref.shape:
            raise ValueError(f"tensor {name!r}: shape {arr.shape} vs {ref.shape}")
        if arr.dtype == ref.dtype:
            out[name] = arr
        elif ref.dtype == np.bool_:
            out[name] = arr >= 0.5
        elif np.issubdtype(ref.dtype, np.integer) and not np.issubdtype(arr.dtype, np.integer):
            info = np.iinfo(ref.dtype)
            out[name] = np.clip(np.rint(np.nan_to_num(arr)), info.min, info.max).astype(ref.dtype)
        else:
            out[name] = arr.astype(ref.dtype)
    return out


# -- error feedback -------------------------------------------------------------------------------


def usable_residual(residual: Tensors, model: Tensors) -> dict[str, np.ndarray]:
    """The residual entries that still fit ``model`` (same name, shape and dtype, finite)."""
    out = {}
    for name, r in residual.items():
        m = model.get(name)
        if m is not None and r.shape == m.shape and r.dtype == m.dtype and all_finite(r):
            out[name] = r
    return out


def quantisation_residual(delta: Tensors, decoded: Tensors) -> dict[str, np.ndarray]:
    """Error feedback: ``delta - decoded`` for floating tensors, in ``delta``'s dtype.

    Integer and boolean tensors are coded exactly and carry none; a non-finite residual (diverged
    training) is dropped rather than carried into later rounds.
    """
    out = {}
    for name, d in delta.items():
        if np.issubdtype(d.dtype, np.floating):
            with np.errstate(over="ignore", invalid="ignore"):
                r = np.subtract(d, np.asarray(decoded[name]), dtype=d.dtype)
            if all_finite(r):
                out[name] = r
    return out


def temporal_codec(codec: UpdateCodec) -> bool:
    """Whether ``codec`` codes with temporal contexts (takes ``temporal_reference=``)."""
    return bool(getattr(codec, "temporal", False))


def with_reference(codec: UpdateCodec, reference: Tensors | None) -> dict:
    """The keyword that hands ``reference`` to ``codec.decode``: to a codec that has the
    ``temporal`` setting, whatever its value (its decoder reads temporal streams either way); none
    for other codecs or without a reference (a stream that needs one then fails to decode)."""
    return {"temporal_reference": reference} if reference is not None and hasattr(codec, "temporal") else {}


@dataclass(frozen=True)
class CodedUpdate:
    """A coded delta, what every receiver decodes from it, and the error left for next time."""

    data: bytes
    decoded: dict[str, np.ndarray]
    residual: dict[str, np.ndarray]
    encode_s: float
    decode_s: float


def code_update(
    delta: Tensors,
    codec: UpdateCodec,
    *,
    residual: Tensors | None = None,
    fingerprint: bytes | None = None,
    exact: bool = False,
    limits: Limits | None = None,
    grid: Mapping[str, float] | None = None,
    keep_steps: Mapping[str, float] | None = None,
    temporal_reference: Tensors | None = None,
) -> CodedUpdate:
    """Code ``delta`` plus the usable part of ``residual`` (error feedback) with ``codec``.

    ``decoded`` is what every receiver decodes from the stream (from the codec's
    ``encode_decoded`` where it has one, else by decoding the stream again), and the new residual
    is what the coding lost: ``delta + residual - decoded`` (floating tensors only). With ``residual=None``
    or ``exact=True`` (lossless coding) no feedback is added or kept. ``limits`` (default: covering
    ``delta``'s schema) are the ones the stream's decoders use; ``grid`` is passed to a codec that
    supports anchor grids (see :meth:`nnc_fl.codecs.NNCCodec.encode`), as is ``keep_steps`` (the
    steps of a previous stream, tried first under a budget) to one that takes them: the caller
    gives either only to such a codec. ``temporal_reference`` (the previous update both ends hold)
    goes to a codec with temporal contexts (:func:`temporal_codec`), and is ignored by others.
    Raises ``ValueError`` if the
    codec's own stream does not decode to the same tensor names (a codec bug, never peer input).
    """
    delta = dict(delta)
    feedback = residual is not None and not exact
    if feedback:
        for name, r in usable_residual(residual, delta).items():
            delta[name] = delta[name] + r
    limits = limits if limits is not None else limits_for(delta)
    t0 = time.perf_counter()
    extra = {"grid": grid} if grid else {}
    if keep_steps:
        extra["keep_steps"] = keep_steps
    if temporal_reference is not None and temporal_codec(codec):
        extra["temporal_reference"] = temporal_reference
    joint = getattr(codec, "encode_decoded", None)
    if joint is not None:  # the codec knows its reconstruction: no decoding pass
        data, decoded = joint(delta, fingerprint=fingerprint, exact=exact, limits=limits, **extra)
        t1 = t2 = time.perf_counter()
    else:
        data = codec.encode(delta, fingerprint=fingerprint, exact=exact, limits=limits, **extra)
        t1 = time.perf_counter()
        decoded = dict(codec.decode(data, limits=limits, **with_reference(codec, extra.get("temporal_reference"))))
        t2 = time.perf_counter()
    if set(decoded) != set(delta):
        raise ValueError(f"codec {codec.name!r} did not round-trip the tensor names")
    kept = quantisation_residual(delta, decoded) if feedback else {}
    return CodedUpdate(data, decoded, kept, t1 - t0, t2 - t1)


__all__ = [
    "CodedUpdate",
    "Tensors",
    "apply_delta",
    "cast_like",
    "code_update",
    "limits_for",
    "model_delta",
    "quantisation_residual",
    "temporal_codec",
    "usable_residual",
    "with_reference",
]
