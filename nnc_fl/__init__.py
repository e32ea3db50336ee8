"""nnc-fl: NNC-style compression of neural-network updates (numpy + numba only).

Public API:

- :func:`encode` / :func:`decode`: named tensors <-> one self-contained stream (FORMAT.md);
  ``encode(..., target_bytes=N)`` meets a byte budget (rate control, :mod:`nnc_fl.rate`)
- :func:`decode_tensor`: one tensor without decoding the others
- :func:`inspect`: the header table, for humans (``str()``) and tools (``.as_rows()``)
- :func:`fingerprint`: 32-byte digest binding an update to the model it applies to
- :func:`qp_to_step`: NNC's QP -> quantisation step
- :func:`read_fingerprint`: the fingerprint a stream carries, checking only its header
- :class:`FormatError`: raised for every malformed, truncated, corrupted or over-limit stream
  (:class:`SchemaError`: a stream describing other tensors than the caller expected;
  :class:`TemporalReferenceError`: a stream with temporal contexts decoded without its reference)
- :func:`temporal_digest`: the digest naming a temporal reference (``encode(temporal_reference=)``);
  :class:`TemporalReference`: one prepared once (digest and checks) for many streams
- :class:`Limits`: the bounds a decoder enforces
"""

from .api import decode, decode_tensor, encode, inspect, read_fingerprint
from .bitstream import DEFAULT_LIMITS, Limits, StreamInfo, TensorInfo
from .errors import FormatError, SchemaError, TemporalReferenceError
from .fingerprint import fingerprint, temporal_digest
from .steps import qp_to_step
from .temporal import TemporalReference

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LIMITS",
    "FormatError",
    "Limits",
    "SchemaError",
    "StreamInfo",
    "TemporalReference",
    "TemporalReferenceError",
    "TensorInfo",
    "decode",
    "decode_tensor",
    "encode",
    "fingerprint",
    "inspect",
    "qp_to_step",
    "read_fingerprint",
    "temporal_digest",
]
