"""Write the benchmark's real deltas (experiments.deltas) to small.npz / medium.npz / large.npz."""

import sys
from pathlib import Path

import numpy as np

from experiments.deltas import trained_delta

out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
for size in ("small", "medium", "large"):
    np.savez(out / f"{size}.npz", **trained_delta(size))
