"""Per-node state of ``nnc_mod`` kept in Flower's ``context.state``.

A ``RecordDict`` can hold only ``ArrayRecord``, ``MetricRecord`` and ``ConfigRecord``; the node keeps

- ``nnc-fl.base`` (``ArrayRecord``): the global model ``G_v`` it holds, bit-exact;
- ``nnc-fl.residual`` (``ArrayRecord``): the error-feedback residual of its floating tensors;
- ``nnc-fl.meta`` (``ConfigRecord``): ``version`` (int) and ``fingerprint`` (32 bytes) of ``G_v``.

Flower persists ``context.state`` per node and run, in simulation and deployment alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

BASE_KEY = "nnc-fl.base"
RESIDUAL_KEY = "nnc-fl.residual"
META_KEY = "nnc-fl.meta"


@dataclass
class NodeState:
    """What a node remembers between rounds."""

    version: int | None = None
    fingerprint: bytes | None = None
    base: dict[str, np.ndarray] = field(default_factory=dict)
    residual: dict[str, np.ndarray] = field(default_factory=dict)


def _to_record(tensors: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in tensors.items()})


def load_state(state: RecordDict) -> NodeState:
    """Read the node's state; a missing or damaged entry reads as "holds nothing"."""
    meta = state.get(META_KEY)
    base = state.get(BASE_KEY)
    if not isinstance(meta, ConfigRecord) or not isinstance(base, ArrayRecord):
        return NodeState()
    version, fp = meta.get("version"), meta.get("fingerprint")
    if not isinstance(version, int) or not isinstance(fp, bytes):
        return NodeState()
    residual = state.get(RESIDUAL_KEY)
    res = {k: a.numpy() for k, a in residual.items()} if isinstance(residual, ArrayRecord) else {}
    return NodeState(version, fp, {k: a.numpy() for k, a in base.items()}, res)


def save_model(
    state: RecordDict, version: int, fingerprint: bytes, tensors: Mapping[str, np.ndarray]
) -> None:
    """Remember ``tensors`` as the model ``version`` with ``fingerprint``."""
    state[BASE_KEY] = _to_record(tensors)
    state[META_KEY] = ConfigRecord({"version": int(version), "fingerprint": bytes(fingerprint)})


def save_residual(state: RecordDict, residual: Mapping[str, np.ndarray]) -> None:
    """Remember the error-feedback residual (replacing the previous one)."""
    state[RESIDUAL_KEY] = _to_record(residual)


def usable_residual(
    residual: Mapping[str, np.ndarray], model: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The residual entries that still fit ``model`` (same name, shape and dtype, finite)."""
    out = {}
    for name, r in residual.items():
        m = model.get(name)
        if m is not None and r.shape == m.shape and r.dtype == m.dtype and np.all(np.isfinite(r)):
            out[name] = r
    return out
