"""Write the benchmark's real deltas to NAME.npz: the digits MLPs (experiments.deltas.trained_delta:
small, medium, large) and the families of experiments.deltas.family_delta (tiny, gru, vit, cnn).

    python export_deltas.py OUTDIR [NAME ...]
"""

import sys
from pathlib import Path

import numpy as np

from experiments.deltas import FAMILIES, family_delta, trained_delta

out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
names = sys.argv[2:] or ["small", "medium", "large", *FAMILIES]
for name in names:
    delta = family_delta(name) if name in FAMILIES else trained_delta(name)
    np.savez(out / f"{name}.npz", **delta)
