"""Optional authentication of updates: an HMAC-SHA256 tag under a key the operator provisions per node.

Flower's TLS protects the transport and SuperNode authentication lets the SuperLink know which
node connects; neither tells the ServerApp that an update's *content* comes from a node holding a
given key. With keys provisioned, each node tags its update with
:func:`authentication_tag` (over its key id, the round binding and the whole stream) and the server
refuses a missing or wrong tag.

Key files: a node's key is one file of hex text (at least :data:`MIN_KEY_BYTES` bytes); the server
reads a keyring, one ``key_id hex_key`` pair per line (``#`` starts a comment).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

#: Bytes of an update's authentication tag (HMAC-SHA256).
TAG_SIZE = 32
#: Shortest key accepted (128 bits).
MIN_KEY_BYTES = 16
_MAX_KEY_ID_CHARS = 128


def authentication_tag(key: bytes, key_id: str, binding: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of an update stream under a node's provisioned ``key``.

    Covers the key id, the binding (base model and round nonce, see
    :func:`nnc_fl.protocol.binding`) and the whole stream, so a tag cannot be moved to another
    stream, round or key id.
    """
    mac = hmac.new(bytes(key), digestmod=hashlib.sha256)
    for part in (b"nnc-fl update v1", key_id.encode("utf-8"), bytes(binding), bytes(data)):
        mac.update(len(part).to_bytes(8, "little"))
        mac.update(part)
    return mac.digest()


def tag_matches(tag: bytes, key: bytes, key_id: str, binding: bytes, data: bytes) -> bool:
    """Whether ``tag`` is the right tag, compared in constant time."""
    return hmac.compare_digest(tag, authentication_tag(key, key_id, binding, data))


def check_key(key_id: object, key: object) -> tuple[str, bytes]:
    """A valid ``(key_id, key)`` pair, or ``ValueError``/``TypeError`` saying what is wrong."""
    if not isinstance(key_id, str) or not key_id or len(key_id) > _MAX_KEY_ID_CHARS or not key_id.isprintable():
        raise ValueError(f"key id must be 1..{_MAX_KEY_ID_CHARS} printable characters, got {key_id!r}")
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"key {key_id!r} must be bytes, got {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"key {key_id!r} has {len(key)} bytes; at least {MIN_KEY_BYTES} are needed")
    return key_id, bytes(key)


def _hex_key(text: str, where: str) -> bytes:
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError(f"{where}: the key is not hex text") from None


def read_key_file(path: str | Path) -> bytes:
    """A node's key: the hex text in ``path``."""
    key = _hex_key(Path(path).read_text(encoding="utf-8"), str(path))
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{path}: the key has {len(key)} bytes; at least {MIN_KEY_BYTES} are needed")
    return key


def read_keyring(path: str | Path) -> dict[str, bytes]:
    """The server's keys: ``key_id hex_key`` per line of ``path``; ``#`` comments and blank lines skipped."""
    keys: dict[str, bytes] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected 'key_id hex_key'")
        key_id, key = check_key(parts[0], _hex_key(parts[1], f"{path}:{number}"))
        if key_id in keys:
            raise ValueError(f"{path}:{number}: key id {key_id!r} appears twice")
        keys[key_id] = key
    return keys


__all__ = [
    "MIN_KEY_BYTES",
    "TAG_SIZE",
    "authentication_tag",
    "check_key",
    "read_key_file",
    "read_keyring",
    "tag_matches",
]
