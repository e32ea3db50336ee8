"""numba kernel that finds where a zstd frame's blocks end, without decompressing them.

A zstd payload of the container must be exactly one frame (FORMAT.md, "zstd payloads"). The
decoder checks that from the block headers (RFC 8878, section 3.1.1.2: 3 bytes each, little-endian:
bit 0 last block, bits 1-2 type, bits 3-23 size) before any frame of the stream is decompressed, so
a payload of several frames, or a frame followed by other bytes, costs nothing to refuse. The
kernel reads untrusted bytes and checks every index itself.
"""

from __future__ import annotations

import numpy as np

from ._jit import jit

#: The block headers run past the end of the payload.
SHORT = -1
#: A block of the reserved type 3.
RESERVED = -2
#: A block larger than zstd's Block_Maximum_Size (128 KiB).
TOO_BIG = -3

BLOCK_MAX = 1 << 17
_RAW, _RLE, _RESERVED = 0, 1, 3


@jit
def blocks_end(buf, pos):
    """Position after the last block of the blocks starting at ``pos``, or a negative error code."""
    end = buf.size
    while True:
        if pos + 3 > end:
            return SHORT
        header = np.int64(buf[pos]) | (np.int64(buf[pos + 1]) << 8) | (np.int64(buf[pos + 2]) << 16)
        kind = (header >> 1) & 3
        size = header >> 3
        if kind == _RESERVED:
            return RESERVED
        if size > BLOCK_MAX:
            return TOO_BIG
        pos += 3 + (1 if kind == _RLE else size)
        if header & 1:
            return pos if pos <= end else SHORT
