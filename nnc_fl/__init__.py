"""nnc-fl: NNC-style compression of neural-network updates (numpy + numba only).

Public API (being written -- see FORMAT.md):

- ``encode(tensors, *, step=None, qp=None, lossless=(), fingerprint=None) -> bytes``
- ``decode(data) -> dict[str, np.ndarray]``
- ``decode_tensor(data, name) -> np.ndarray``
- ``inspect(data) -> StreamInfo``
- ``fingerprint(tensors) -> bytes`` (32-byte digest of names, dtypes, shapes and values)
- ``FormatError``
"""

from .errors import FormatError

__all__ = ["FormatError"]
