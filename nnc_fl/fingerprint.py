"""Model fingerprints: bind an update to the exact model it applies to."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

FINGERPRINT_SIZE = 32
#: Bytes of a temporal reference's digest (its fingerprint's first bytes; nnc_fl.bitstream).
TEMPORAL_DIGEST_SIZE = 8


def fingerprint(tensors: Mapping[str, np.ndarray]) -> bytes:
    """SHA-256 over the ordered tensor names, dtypes, shapes and little-endian values.

    Two models have the same fingerprint exactly when they hold the same names in the same order,
    with the same dtypes, shapes and bit patterns. 32 bytes.
    """
    h = hashlib.sha256(b"nnc-fl model v1\0")
    for name, value in tensors.items():
        arr = np.asarray(value)
        le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        meta = f"{name}\0{le.dtype.str}\0{','.join(map(str, arr.shape))}\0".encode()
        h.update(len(meta).to_bytes(4, "little"))
        h.update(meta)
        h.update(np.ascontiguousarray(le).tobytes())
    return h.digest()


def temporal_digest(reference: Mapping[str, np.ndarray]) -> bytes:
    """The digest a stream with temporal contexts carries to name its reference: the first
    :data:`TEMPORAL_DIGEST_SIZE` bytes of :func:`fingerprint` (names, order, dtypes, shapes, bits)."""
    return fingerprint(reference)[:TEMPORAL_DIGEST_SIZE]
