"""nnc-fl: NNC-style compression of neural-network updates (numpy + numba only).

Public API:

- :func:`encode` / :func:`decode`: named tensors <-> one self-contained stream (FORMAT.md)
- :func:`decode_tensor`: one tensor without decoding the others
- :func:`inspect`: the header table, for humans (``str()``) and tools (``.as_rows()``)
- :func:`fingerprint`: 32-byte digest binding an update to the model it applies to
- :func:`qp_to_step`: NNC's QP -> quantisation step
- :class:`FormatError`: raised for every malformed, truncated, corrupted or over-limit stream
- :class:`Limits`: the bounds a decoder enforces
"""

from .api import decode, decode_tensor, encode, inspect
from .bitstream import DEFAULT_LIMITS, Limits, StreamInfo, TensorInfo
from .errors import FormatError
from .fingerprint import fingerprint
from .steps import qp_to_step

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LIMITS",
    "FormatError",
    "Limits",
    "StreamInfo",
    "TensorInfo",
    "decode",
    "decode_tensor",
    "encode",
    "fingerprint",
    "inspect",
    "qp_to_step",
]
