"""Real trained model updates (deltas) for the codec benchmark, computed in seconds, offline.

Each delta is what a federated client sends after one round of FedAvg-style local training:

1. an MLP is initialised from ``seed`` and trained centrally for :data:`GLOBAL_EPOCHS` epochs on
   scikit-learn's digits (1 797 x 64, pixel values / 16) -- the *global model* of some round;
2. a client holding a quarter of the data (an IID shard, drawn from ``seed``) trains it locally for
   :data:`LOCAL_EPOCHS` epoch(s);
3. the delta is ``local - global``, tensor by tensor, in state_dict order (weights and biases).

Sizes (all parameters, float32):

========  =====================  ==========
size      layers                 parameters
========  =====================  ==========
small     64 -> 80 -> 10                6 010
medium    64 -> 320 -> 256 -> 10      105 546
large     64 -> 1024 -> 1024 -> 10  1 126 410
========  =====================  ==========

Training runs on one torch thread so the result does not depend on the machine's core count;
results are cached in-process, and every call returns fresh copies.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from functools import lru_cache

import numpy as np

from .models import get_weights, make_model
from .partition import iid_partition
from .training import torch_threads, train

#: Layer widths of each delta size.
DELTA_LAYERS: dict[str, tuple[int, ...]] = {
    "small": (64, 80, 10),
    "medium": (64, 320, 256, 10),
    "large": (64, 1024, 1024, 10),
}

GLOBAL_EPOCHS = 2
LOCAL_EPOCHS = 1
NUM_CLIENTS = 4
BATCH_SIZE = 32
LEARNING_RATE = 0.05


def delta_num_params(size: str) -> int:
    """Number of scalars in ``trained_delta(size)``: 6 010, 105 546 or 1 126 410."""
    layers = _layers(size)
    return sum(a * b + b for a, b in itertools.pairwise(layers))


def _layers(size: str) -> tuple[int, ...]:
    try:
        return DELTA_LAYERS[size]
    except KeyError:
        raise ValueError(f"unknown delta size {size!r}; choose one of {', '.join(DELTA_LAYERS)}") from None


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


@lru_cache(maxsize=16)
def _delta(size: str, seed: int) -> tuple[tuple[str, np.ndarray], ...]:
    layers = _layers(size)
    x, y = _digits()
    with torch_threads(1):
        model = make_model("mlp", num_classes=layers[-1], seed=seed, sizes=layers)
        train(model, x, y, epochs=GLOBAL_EPOCHS, batch_size=BATCH_SIZE, lr=LEARNING_RATE, seed=seed)
        before = get_weights(model)
        shard = iid_partition(y, NUM_CLIENTS, seed=seed)[0]
        train(model, x[shard], y[shard], epochs=LOCAL_EPOCHS, batch_size=BATCH_SIZE, lr=LEARNING_RATE, seed=seed + 1)
        after = get_weights(model)
    out = []
    for name, old in before.items():
        diff = (after[name] - old).astype(np.float32)
        diff.setflags(write=False)
        out.append((name, diff))
    return tuple(out)


def trained_delta(size: str = "small", seed: int = 0) -> OrderedDict[str, np.ndarray]:
    """A real FL update of a digits MLP: local weights minus global weights after one local epoch.

    Parameters
    ----------
    size : {"small", "medium", "large"}
        6 010, 105 546 or 1 126 410 parameters (see the module docstring).
    seed : int
        Seeds initialisation, global training, the client's shard and local training.

    Returns
    -------
    OrderedDict of str to numpy.ndarray
        float32 tensors in state_dict order (``net.0.weight``, ``net.0.bias``, ...), fresh copies.
    """
    return OrderedDict((name, value.copy()) for name, value in _delta(size, int(seed)))


__all__ = ["DELTA_LAYERS", "delta_num_params", "trained_delta"]
