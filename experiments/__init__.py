"""UC10 / UC14A experiments, baseline codecs, benchmarks and the ``nnc-fl`` command line.

Needs the ``experiments`` extra (torch, Flower with its simulation engine, matplotlib, tqdm,
scikit-learn, mlxtend, zstandard): ``pip install torch==2.13.0 && pip install 'nnc-fl[experiments]'``
(torch first, so pip takes the CPU build).
"""

import importlib.util as _util

_NEEDS = {
    "torch": "torch",
    "flwr": "flwr",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "sklearn": "scikit-learn",
    "mlxtend": "mlxtend",
    "zstandard": "zstandard",
}
_missing = [package for module, package in _NEEDS.items() if _util.find_spec(module) is None]
if _missing:  # pragma: no cover - depends on what is installed
    raise ImportError(
        f"the experiments need {', '.join(_missing)}: install the 'experiments' extra, e.g. "
        "pip install torch==2.13.0 && pip install 'nnc-fl[experiments]'"
    )
