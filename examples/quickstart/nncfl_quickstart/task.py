"""Model, data and training of the quickstart: a small BatchNorm CNN on scikit-learn's digits.

The digits (1,797 8x8 images) ship inside scikit-learn, so nothing is downloaded. Every node
takes the same held-out test split and its own IID share of the rest.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

TEST_FRACTION = 0.2


class Net(nn.Module):
    """Two conv + BatchNorm blocks and a linear head (6,186 parameters).

    Its ``state_dict`` holds float weights, BatchNorm running statistics (kept off the
    quantisation grid by nnc-fl's default ``lossless`` patterns, their deltas rounded up to 8
    mantissa bits so a variance stays >= 0) and int64 ``num_batches_tracked`` counters (integer
    tensors are always exact).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


def initial_model(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test split of the digits, images scaled to [0, 1], shape (n, 1, 8, 8)."""
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    n_test = int(TEST_FRACTION * len(y))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def train_data(partition: int, partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Node ``partition``'s IID share of the training split."""
    x, y, _, _ = _digits()
    if not 0 <= partition < partitions:
        raise ValueError(f"partition-id {partition} not in 0..{partitions - 1}")
    idx = np.array_split(np.arange(len(y)), partitions)[partition]
    return torch.from_numpy(x[idx]), torch.from_numpy(y[idx])


def test_data() -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x, y = _digits()
    return torch.from_numpy(x), torch.from_numpy(y)


def train(model: Net, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int) -> float:
    """Plain SGD with mini-batches of 32; returns the last batch's loss."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    loss = torch.zeros(())
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(32):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate(model: Net, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy."""
    model.eval()
    logits = model(x)
    return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
