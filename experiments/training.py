"""Plain, deterministic local training and evaluation on numpy arrays.

``train`` shuffles with a numpy generator seeded by ``seed`` and runs inside a forked torch RNG
seeded the same way, so two calls with the same model state, data and arguments produce the same
weights (on the same machine and thread count; :func:`torch_threads` pins the latter).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam")


@dataclass
class TrainResult:
    """What one call of :func:`train` did.

    Attributes
    ----------
    epoch_losses : list of float
        Mean training loss of each epoch (over samples).
    num_examples : int
        Training set size.
    num_steps : int
        Optimizer steps taken.
    """

    epoch_losses: list[float] = field(default_factory=list)
    num_examples: int = 0
    num_steps: int = 0


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(n)``, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_xy(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if len(x) == 0:
        raise ValueError("no samples")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    return xt, yt


def _make_optimizer(model: nn.Module, optimizer: str, lr: float, momentum: float, weight_decay: float):
    if optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 0.01,
    seed: int = 0,
    *,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> TrainResult:
    """Train ``model`` in place with mini-batch cross-entropy.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits.
    x, y : numpy.ndarray
        Inputs (float32-convertible) and int labels.
    epochs, batch_size : int
        Passes over the data and mini-batch size (the last batch of an epoch may be smaller).
    lr : float
        Learning rate.
    seed : int
        Seeds the per-epoch shuffles and any randomness inside the model.
    optimizer : {"sgd", "adam"}
        SGD with ``momentum`` (default) or Adam; a fresh optimizer each call, as in FedAvg clients.
    momentum, weight_decay : float
        Optimizer settings (``momentum`` only for SGD).

    Returns
    -------
    TrainResult
    """
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs}, {batch_size}")
    xt, yt = _check_xy(x, y)
    opt = _make_optimizer(model, optimizer, lr, momentum, weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    result = TrainResult(num_examples=len(xt))
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(len(xt)))
            total = 0.0
            for start in range(0, len(xt), batch_size):
                batch = order[start : start + batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xt[batch]), yt[batch])
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(batch)
                result.num_steps += 1
            result.epoch_losses.append(total / len(xt))
    return result


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on ``(x, y)`` (eval mode, no gradients).

    Returns
    -------
    loss, accuracy : float
    """
    xt, yt = _check_xy(x, y)
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    try:
        for start in range(0, len(xt), batch_size):
            logits = model(xt[start : start + batch_size])
            target = yt[start : start + batch_size]
            loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(dim=1) == target).sum())
    finally:
        model.train(was_training)
    return loss_sum / len(xt), correct / len(xt)


__all__ = ["OPTIMIZERS", "TrainResult", "evaluate", "torch_threads", "train"]
