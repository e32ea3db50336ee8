"""Hostile clients for the experiments: what a malicious node's own ClientApp may send.

Each attack rewrites the trained weights and/or the metrics a client replies with, *before*
``nnc_mod`` codes them -- the attacker runs the plugin like everyone else and knows the model it
received, so its update is well-formed and bound to the right round; only its content lies.
Used by ``nnc-fl run --attack NAME --attacker PARTITION`` to measure how much one hostile client
in a small cohort can move the final accuracy past the server's defences.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from nnc_fl.codecs import name_matches
from nnc_fl.validation import NONNEGATIVE

Weights = dict[str, np.ndarray]
Attack = Callable[[Mapping[str, np.ndarray], Weights, dict], tuple[Weights, dict]]


def _scaled(received: Mapping[str, np.ndarray], trained: Weights, factor: float) -> Weights:
    """``received + factor * (trained - received)`` on floating tensors (others untouched)."""
    out = {}
    for name, w in trained.items():
        if np.issubdtype(w.dtype, np.floating):
            base = np.asarray(received[name], np.float64)
            out[name] = (base + factor * (w.astype(np.float64) - base)).astype(w.dtype)
        else:
            out[name] = w
    return out


def _fill(trained: Weights, value: float) -> Weights:
    return {k: np.full_like(w, value) if np.issubdtype(w.dtype, np.floating) else w for k, w in trained.items()}


def _negative_variances(trained: Weights) -> Weights:
    """Every tensor the server holds non-negative (running variances) negated: a model no honest
    training produces."""
    return {k: -np.abs(w) if name_matches(k, NONNEGATIVE) else w for k, w in trained.items()}


def _with_weight(metrics: dict, value: float) -> dict:
    return {**metrics, "num-examples": value}


ATTACKS: dict[str, Attack] = {
    "sign-flip": lambda g, w, m: (_scaled(g, w, -1.0), m),
    "scale-10": lambda g, w, m: (_scaled(g, w, 10.0), m),
    "scale-1000": lambda g, w, m: (_scaled(g, w, 1000.0), m),
    "nan": lambda g, w, m: (_fill(w, np.nan), m),
    "huge": lambda g, w, m: (_fill(w, 3e38), m),
    "negative-variance": lambda g, w, m: (_negative_variances(w), m),
    "weight-1e6": lambda g, w, m: (w, _with_weight(m, 1e6)),
    "weight-1e6-sign-flip": lambda g, w, m: (_scaled(g, w, -1.0), _with_weight(m, 1e6)),
    "weight-negative-sign-flip": lambda g, w, m: (_scaled(g, w, -1.0), _with_weight(m, -1e6)),
    "weight-nan": lambda g, w, m: (w, _with_weight(m, float("nan"))),
    "weight-zero": lambda g, w, m: (w, _with_weight(m, 0)),
}


def attack(name: str) -> Attack:
    """The attack called ``name`` (``ValueError`` listing the known ones otherwise)."""
    try:
        return ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}") from None


__all__ = ["ATTACKS", "Attack", "attack"]
