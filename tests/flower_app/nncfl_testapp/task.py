"""A torch-free model and local training: least-squares regression with an integer buffer.

The model looks like a small torch ``state_dict``: two float32 tensors and a BatchNorm-style
``num_batches_tracked`` int64 counter (integer tensors must survive compression exactly).
"""

from __future__ import annotations

import numpy as np

IN, OUT, EXAMPLES, LOCAL_STEPS, LR = 24, 12, 64, 5, 0.05


def initial_model(seed: int = 0) -> dict[str, np.ndarray]:
    """The starting global model."""
    rng = np.random.default_rng(seed)
    return {
        "fc.weight": (0.1 * rng.standard_normal((OUT, IN))).astype(np.float32),
        "fc.bias": np.zeros(OUT, np.float32),
        "bn.num_batches_tracked": np.array(0, dtype=np.int64),
    }


def node_data(partition: int, heterogeneity: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Non-IID local data of one node: its own true weights, a shared part plus ``heterogeneity``
    times a node-specific one."""
    rng = np.random.default_rng(1000 + partition)
    shared = np.random.default_rng(7).standard_normal((OUT, IN))
    w_true = shared + heterogeneity * rng.standard_normal((OUT, IN))
    x = rng.standard_normal((EXAMPLES, IN)).astype(np.float32)
    y = (x @ w_true.T + 0.05 * rng.standard_normal((EXAMPLES, OUT))).astype(np.float32)
    return x, y


def loss(model: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error."""
    pred = x @ model["fc.weight"].T + model["fc.bias"]
    return float(np.mean((pred - y) ** 2))


def train(
    model: dict[str, np.ndarray], partition: int, heterogeneity: float = 0.3
) -> tuple[dict[str, np.ndarray], float]:
    """A few full-batch gradient steps; deterministic for a given model and partition."""
    x, y = node_data(partition, heterogeneity)
    w, b = model["fc.weight"].copy(), model["fc.bias"].copy()
    for _ in range(LOCAL_STEPS):
        err = x @ w.T + b - y
        w -= np.float32(LR) * (2.0 / len(x) * err.T @ x).astype(np.float32)
        b -= np.float32(LR) * (2.0 / len(x) * err.sum(axis=0)).astype(np.float32)
    out = {
        "fc.weight": w,
        "fc.bias": b,
        "bn.num_batches_tracked": np.asarray(model["bn.num_batches_tracked"] + LOCAL_STEPS),
    }
    return out, loss(out, x, y)


def fp_metrics(fp: bytes) -> dict[str, int]:
    """The first 48 bits of a model fingerprint as two metric-safe 24-bit integers."""
    return {"fp-a": int.from_bytes(fp[:3], "big"), "fp-b": int.from_bytes(fp[3:6], "big")}


class FingerprintCheck:
    """Evaluate-metrics aggregator counting clients whose model differs from the server's ``G_v``.

    Set :attr:`strategy` to the ``CompressedStrategy`` before the run.
    """

    def __init__(self) -> None:
        self.strategy = None
        self.checked = 0
        self.mismatches = 0

    def __call__(self, records, weighted_by_key: str):
        from flwr.app import MetricRecord

        want = fp_metrics(self.strategy.model.fingerprint)
        losses, weights = [], []
        for record in records:
            metrics = next(iter(record.metric_records.values()))
            self.checked += 1
            self.mismatches += {k: metrics[k] for k in want} != want
            losses.append(float(metrics["eval_loss"]))
            weights.append(float(metrics[weighted_by_key]))
        return MetricRecord(
            {"eval_loss": float(np.average(losses, weights=weights)), "fp-mismatch": self.mismatches}
        )
