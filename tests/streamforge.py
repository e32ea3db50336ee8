"""Hand-made nnc-fl streams for hostile tests: any table fields and payload bytes, with valid CRCs.

Independent of ``nnc_fl.bitstream.write_stream`` (which refuses records the reader would reject), so a
test can say exactly which field lies.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import zstandard

from nnc_fl import bitstream as bs


def varint(value: int) -> bytes:
    out = bytearray()
    bs._put_varint(out, value)
    return bytes(out)


def forge(items, *, zstd: bool = False, fingerprint: bytes | None = None, flags: int | None = None) -> bytes:
    """A stream of ``items`` = ``(name, dtype, shape, mode, payload)`` (payload stored as given; None
    for mode zero), with valid header and payload CRCs. ``zstd`` sets flag bit 1 (payloads are not
    compressed here: pass :func:`zframe` output)."""
    table = bytearray()
    if flags is None:
        flags = (bs.FLAG_ZSTD if zstd else 0) | (bs.FLAG_FINGERPRINT if fingerprint else 0)
    if fingerprint:
        table += bytes([len(fingerprint)]) + fingerprint
    table += varint(len(items))
    for name, dtype, shape, mode, payload in items:
        raw_name = name if isinstance(name, bytes) else name.encode()
        table += varint(len(raw_name)) + raw_name
        table += bytes([bs.DTYPE_CODES[np.dtype(dtype).newbyteorder("<")], len(shape)])
        for d in shape:
            table += varint(d)
        table.append(mode)
        if payload is not None:
            table += varint(len(payload)) + struct.pack("<I", zlib.crc32(payload))
    head = bytearray(bs.MAGIC) + bytes([bs.VERSION, flags]) + varint(len(table)) + table
    head += struct.pack("<I", zlib.crc32(head))
    return bytes(head) + b"".join(p for *_, p in items if p is not None)


def items_of(data: bytes) -> list[tuple]:
    """The ``(name, dtype, shape, mode, payload)`` items of a valid stream with no quant/int tensors."""
    info = bs.read_table(data)
    return [
        (t.name, t.dtype, t.shape, t.mode, None if t.mode == bs.MODE_ZERO else data[t.offset : t.offset + t.length])
        for t in info.tensors
    ]


def zframe(plain: bytes, level: int = 1) -> bytes:
    """One zstd frame of ``plain`` declaring its content size."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(plain)


def zframe_declaring(size: int, content: bytes = b"") -> bytes:
    """A hand-made zstd frame header declaring ``size`` bytes (8-byte field), then ``content`` as
    one raw last block: a lying frame, e.g. a decompression bomb's header."""
    block = (1 | (len(content) << 3)).to_bytes(3, "little")
    return b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + struct.pack("<Q", size) + block + content
