"""How much of an update inter-round prediction could remove (issue 13, measured before building it).

Inter-round prediction would code ``update - beta * prediction`` with a ``beta`` per tensor, where
the prediction is something both sides hold: the previous global increment, or the node's own
previous update. Its gain is bounded by the share of the update's energy the prediction explains:
with the least-squares ``beta`` of each tensor, ``1 - |u - beta p|^2 / |u|^2``. This runs one
federation (``nnc-fl run``, in-process) with the server's reviewed updates (decoded, as the server
aggregates them) captured, and prints that share for both predictions::

    python -m experiments.predictability -- uc10 --source fashion-mnist --n-train 20000 --rounds 20 --seed 0

The previous global increment is taken as the plain mean of the previous round's reviewed updates
(FedAvg's aggregate for equal weights, before the increment's own quantisation). Tensors of fewer
than ``MIN_ELEMENTS`` elements (biases, normalisation parameters) are left out: a coefficient per
tensor would fit them to noise.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import numpy as np

from nnc_fl import references

#: Smallest tensor counted (a per-tensor coefficient on a handful of values fits noise).
MIN_ELEMENTS = 1000


def explained_energy(update: Mapping[str, np.ndarray], prediction: Mapping[str, np.ndarray]) -> float:
    """Share of ``update``'s energy (over tensors of >= MIN_ELEMENTS float values) that
    ``beta * prediction`` removes, with the least-squares ``beta`` of each tensor."""
    total = residual = 0.0
    for name, u in update.items():
        p = prediction.get(name)
        if p is None or u.size < MIN_ELEMENTS or not np.issubdtype(u.dtype, np.floating):
            continue
        u = u.astype(np.float64).ravel()
        p = p.astype(np.float64).ravel()
        uu, pp, up = float(u @ u), float(p @ p), float(u @ p)
        total += uu
        residual += uu - (up * up / pp if pp > 0 else 0.0)
    return 1.0 - residual / total if total > 0 else 0.0


class PredictionRecorder:
    """Collects, round by round, the explained-energy shares of both predictions."""

    def __init__(self) -> None:
        self.previous_mean: dict[str, np.ndarray] | None = None
        self.previous_own: dict[int, dict[str, np.ndarray]] = {}
        self.by_global: list[float] = []
        self.by_own: list[float] = []

    def record(self, nodes: Sequence[int], deltas: Sequence[Mapping[str, np.ndarray]]) -> None:
        for node, d in zip(nodes, deltas, strict=True):
            if self.previous_mean is not None:
                self.by_global.append(explained_energy(d, self.previous_mean))
            if node in self.previous_own:
                self.by_own.append(explained_energy(d, self.previous_own[node]))
            self.previous_own[node] = {n: np.array(v, np.float64) for n, v in d.items()}
        if deltas:
            self.previous_mean = {n: np.mean([np.asarray(d[n], np.float64) for d in deltas], axis=0)
                                  for n in deltas[0]}

    def report(self) -> str:
        lines = []
        for what, shares in (("previous global increment", self.by_global), ("node's previous update", self.by_own)):
            if shares:
                s = np.asarray(shares)
                lines.append(f"{what}: explains {100 * s.mean():.1f} % of an update's energy on average "
                             f"(median {100 * np.median(s):.1f} %, max {100 * s.max():.1f} %, {s.size} updates)")
            else:
                lines.append(f"{what}: no update had one")
        return "\n".join(lines)


def run(run_args: list[str]) -> PredictionRecorder:
    """Run ``nnc-fl run RUN_ARGS`` with the reviewed updates going through a recorder too."""
    from experiments.cli import main

    recorder = PredictionRecorder()
    review = references.DirectionReference.review

    def recording(self, nodes, deltas, norms):
        recorder.record(nodes, deltas)
        return review(self, nodes, deltas, norms)

    references.DirectionReference.review = recording
    try:
        main(["run", *run_args])
    finally:
        references.DirectionReference.review = review
    return recorder


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["--"] or len(argv) < 2:
        raise SystemExit("usage: python -m experiments.predictability -- TASK [nnc-fl run args]")
    print(run(argv[1:]).report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
