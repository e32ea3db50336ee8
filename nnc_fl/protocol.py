"""The wire protocol between :class:`strategies.CompressedStrategy` and :func:`clients.nnc_mod`.

Everything both sides must agree on lives here, once: record keys, the custom ``stype`` that marks a
coded payload inside an ``ArrayRecord``, the fields of the protocol ``ConfigRecord``, the version
rules of the downlink and the arithmetic of model deltas. This module knows nothing about Flower: a
"record" here is any ``Mapping`` (Flower's ``ConfigRecord`` is one) and an ``Array`` is anything with
``dtype``/``shape``/``stype``/``data`` attributes.

A message of the protocol carries, besides the user's own records,

- under the model's usual ``ArrayRecord`` key, an ``ArrayRecord`` holding one ``Array`` named
  :data:`PAYLOAD_KEY` whose ``stype`` is :data:`STYPE` (``Array.numpy()`` refuses it, so code that
  forgot to decode fails loudly instead of averaging bytes);
- under :data:`RECORD_KEY`, a ``ConfigRecord`` made by :meth:`Downlink.to_config` (server to client)
  or :meth:`Uplink.to_config` (client to server).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Protocol name and major version; a peer speaking another one is refused.
PROTOCOL = "nnc-fl/1"
#: ``Array.stype`` of a coded payload.
STYPE = "nnc-fl/1"
#: Name of the payload ``Array`` inside its ``ArrayRecord``.
PAYLOAD_KEY = "nnc-fl.payload"
#: ``RecordDict`` key of the protocol ``ConfigRecord`` (both directions).
RECORD_KEY = "nnc-fl"

#: Downlink kinds: the whole model coded exactly, the coded increment ``G_v - G_{v-1}``, or nothing
#: because the node already holds ``G_v``.
KEYFRAME, DELTA, SAME = "keyframe", "delta", "same"
#: Uplink kinds: a coded update, a request for a keyframe instead of an update, a plain
#: acknowledgement (evaluate/query replies: the node now holds ``version``).
UPDATE, RESYNC, ACK = "update", "resync", "ack"

#: Most increments one downlink message may chain (a node further behind gets a keyframe).
MAX_CHAIN = 64
_MAX_PARAMS_CHARS = 4096
_FINGERPRINT_SIZE = 32


class ProtocolError(ValueError):
    """A protocol record or payload ``Array`` is missing, malformed or of another protocol."""


# -- payload <-> Array fields ---------------------------------------------------------------------


def pack_payload(data: bytes) -> dict[str, Any]:
    """Keyword arguments for ``flwr.app.Array`` that carry the coded ``data``.

    Parameters
    ----------
    data : bytes
        A stream produced by an :class:`nnc_fl.codecs.UpdateCodec`.

    Returns
    -------
    dict
        ``dtype="uint8"``, ``shape=(len(data),)``, ``stype=STYPE`` and ``data``; use as
        ``Array(**pack_payload(data))``.
    """
    data = bytes(data)
    return {"dtype": "uint8", "shape": (len(data),), "stype": STYPE, "data": data}


def unpack_payload(array: Any) -> bytes:
    """The coded bytes of a payload ``Array`` made with :func:`pack_payload`.

    Raises
    ------
    ProtocolError
        If ``array`` is not a payload of this protocol (wrong stype, dtype or shape).
    """
    stype = getattr(array, "stype", None)
    if stype != STYPE:
        raise ProtocolError(f"payload stype is {stype!r}, expected {STYPE!r}")
    data = getattr(array, "data", None)
    if not isinstance(data, bytes):
        raise ProtocolError("payload data is not bytes")
    if getattr(array, "dtype", None) != "uint8" or tuple(getattr(array, "shape", ())) != (len(data),):
        raise ProtocolError("payload Array must be uint8 with shape (len(data),)")
    return data


def payload_of(arrays: Mapping[str, Any]) -> bytes:
    """The payload bytes of an ``ArrayRecord`` that holds exactly one payload ``Array``.

    Raises
    ------
    ProtocolError
        If the record does not hold exactly :data:`PAYLOAD_KEY`.
    """
    if list(arrays.keys()) != [PAYLOAD_KEY]:
        raise ProtocolError(f"expected an ArrayRecord holding only {PAYLOAD_KEY!r}")
    return unpack_payload(arrays[PAYLOAD_KEY])


def chain_key(index: int) -> str:
    """Name of the ``index``-th payload ``Array`` of a chained downlink (the first is PAYLOAD_KEY)."""
    return PAYLOAD_KEY if index == 0 else f"{PAYLOAD_KEY}.{index}"


def payloads_of(arrays: Mapping[str, Any], count: int) -> list[bytes]:
    """The ``count`` payloads of a chained downlink, in order (keys :func:`chain_key` 0..count-1).

    Raises
    ------
    ProtocolError
        If ``count`` is outside 1..MAX_CHAIN or the record holds other keys.
    """
    if not 1 <= count <= MAX_CHAIN:
        raise ProtocolError(f"a downlink chains 1..{MAX_CHAIN} payloads, not {count}")
    keys = [chain_key(i) for i in range(count)]
    if list(arrays.keys()) != keys:
        raise ProtocolError(f"expected an ArrayRecord holding exactly {keys}")
    return [unpack_payload(arrays[k]) for k in keys]


# -- codec parameters -----------------------------------------------------------------------------


def encode_params(params: Mapping[str, Any]) -> str:
    """Canonical JSON text of codec parameters (scalars only), for a ``ConfigRecord`` field."""
    for key, value in params.items():
        if not isinstance(key, str) or not isinstance(value, (bool, int, float, str)):
            raise ProtocolError(f"codec parameter {key!r}={value!r} is not a scalar")
    return json.dumps(dict(params), sort_keys=True, allow_nan=False)


def decode_params(text: Any) -> dict[str, bool | int | float | str]:
    """Inverse of :func:`encode_params`; raises :class:`ProtocolError` on anything else."""
    if not isinstance(text, str) or len(text) > _MAX_PARAMS_CHARS:
        raise ProtocolError("codec parameters must be a JSON string of bounded length")
    try:
        params = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"codec parameters are not valid JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise ProtocolError("codec parameters must be a JSON object")
    for key, value in params.items():
        if not isinstance(value, (bool, int, float, str)):
            raise ProtocolError(f"codec parameter {key!r} is not a scalar")
    return params


# -- protocol records -----------------------------------------------------------------------------


def _field(record: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in record:
        raise ProtocolError(f"protocol record lacks field {name!r}")
    value = record[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"protocol field {name!r} has type {type(value).__name__}")
    return value


def _check_protocol(record: Mapping[str, Any]) -> None:
    if not isinstance(record, Mapping):
        raise ProtocolError("protocol record is not a mapping")
    proto = record.get("protocol")
    if proto != PROTOCOL:
        raise ProtocolError(f"peer speaks protocol {proto!r}, expected {PROTOCOL!r}")


def _fingerprint_field(record: Mapping[str, Any], name: str) -> bytes:
    value = _field(record, name, bytes)
    if len(value) not in (0, _FINGERPRINT_SIZE):
        raise ProtocolError(f"protocol field {name!r} must hold {_FINGERPRINT_SIZE} bytes")
    return value


@dataclass(frozen=True)
class Downlink:
    """Server-to-client protocol record.

    ``version``/``fingerprint`` name the model the node holds once it applied the payload;
    ``base_version``/``base_fingerprint`` the model a delta applies to (``-1``/``b""`` for a
    keyframe). A delta chains ``version - base_version`` coded increments, applied in order (see
    :func:`payloads_of`), so a node that missed rounds catches up without a keyframe. ``payload_codec`` decodes the payload; ``codec`` codes the reply (the round's rate).
    ``arrays_key`` is the ``RecordDict`` key under which the user's function expects the model.
    """

    kind: str
    version: int
    fingerprint: bytes
    base_version: int
    base_fingerprint: bytes
    payload_codec: str
    payload_codec_params: str
    codec: str
    codec_params: str
    arrays_key: str
    server_round: int

    def to_config(self) -> dict[str, Any]:
        """Fields for a Flower ``ConfigRecord``."""
        return {"protocol": PROTOCOL, **asdict(self)}

    @classmethod
    def from_config(cls, record: Mapping[str, Any]) -> Downlink:
        """Parse and check a record made by :meth:`to_config`; raises :class:`ProtocolError`."""
        _check_protocol(record)
        kind = _field(record, "kind", str)
        if kind not in (KEYFRAME, DELTA, SAME):
            raise ProtocolError(f"unknown downlink kind {kind!r}")
        out = cls(
            kind=kind,
            version=_field(record, "version", int),
            fingerprint=_fingerprint_field(record, "fingerprint"),
            base_version=_field(record, "base_version", int),
            base_fingerprint=_fingerprint_field(record, "base_fingerprint"),
            payload_codec=_field(record, "payload_codec", str),
            payload_codec_params=_field(record, "payload_codec_params", str),
            codec=_field(record, "codec", str),
            codec_params=_field(record, "codec_params", str),
            arrays_key=_field(record, "arrays_key", str),
            server_round=_field(record, "server_round", int),
        )
        if len(out.fingerprint) != _FINGERPRINT_SIZE:
            raise ProtocolError("downlink fingerprint must hold 32 bytes")
        if kind == DELTA and not 1 <= out.version - out.base_version <= MAX_CHAIN:
            raise ProtocolError(f"a delta must chain 1..{MAX_CHAIN} increments")
        return out


@dataclass(frozen=True)
class Uplink:
    """Client-to-server protocol record.

    ``version``/``fingerprint`` name the model the update was computed against (for ``ack``: the
    model the node now holds; for ``resync``: ``-1``/``b""``). ``codec`` is the codec the client
    used. Timings are the client's own encode/decode seconds; ``reason`` explains a resync.
    """

    kind: str
    version: int
    fingerprint: bytes
    codec: str = ""
    encode_s: float = 0.0
    decode_s: float = 0.0
    reason: str = ""

    def to_config(self) -> dict[str, Any]:
        """Fields for a Flower ``ConfigRecord``."""
        return {"protocol": PROTOCOL, **asdict(self)}

    @classmethod
    def from_config(cls, record: Mapping[str, Any]) -> Uplink:
        """Parse and check a record made by :meth:`to_config`; raises :class:`ProtocolError`."""
        _check_protocol(record)
        kind = _field(record, "kind", str)
        if kind not in (UPDATE, RESYNC, ACK):
            raise ProtocolError(f"unknown uplink kind {kind!r}")
        return cls(
            kind=kind,
            version=_field(record, "version", int),
            fingerprint=_fingerprint_field(record, "fingerprint"),
            codec=_field(record, "codec", str),
            encode_s=float(_field(record, "encode_s", (int, float))),
            decode_s=float(_field(record, "decode_s", (int, float))),
            reason=_field(record, "reason", str)[:500],
        )


# -- version rules --------------------------------------------------------------------------------


def choose_downlink(held_version: int | None, version: int, increments_from: int | None) -> str:
    """Which downlink kind a node holding ``held_version`` (``None``: unknown) gets for ``version``.

    ``increments_from`` is the oldest version ``u`` whose increment ``G_u - G_{u-1}`` the server
    still has together with all later ones (``None``: none). ``SAME`` if the node holds
    ``version``; ``DELTA`` (a chain of increments) if it holds a version in
    ``[increments_from - 1, version)`` within :data:`MAX_CHAIN`; otherwise an exact ``KEYFRAME``.
    """
    if held_version == version:
        return SAME
    if (
        held_version is not None
        and increments_from is not None
        and increments_from - 1 <= held_version < version
        and version - held_version <= MAX_CHAIN
    ):
        return DELTA
    return KEYFRAME


def check_base(down: Downlink, held_version: int | None, held_fingerprint: bytes | None) -> None:
    """Raise :class:`ProtocolError` unless a node holding the given model can apply ``down``."""
    if down.kind == KEYFRAME:
        return
    want_v, want_fp = (down.base_version, down.base_fingerprint)
    if down.kind == SAME:
        want_v, want_fp = down.version, down.fingerprint
    if held_version != want_v or held_fingerprint != want_fp:
        raise ProtocolError(
            f"{down.kind} needs model version {want_v} but the node holds version {held_version}"
            + ("" if held_version != want_v else " with another fingerprint")
        )


# -- delta arithmetic (dtype-preserving, so every party computes the same bits) --------------------


def model_delta(new: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``new - base`` per tensor in ``base``'s dtype and order.

    Floating tensors subtract in their own dtype; integer tensors wrap modulo their width (so
    :func:`apply_delta` restores them exactly); booleans use XOR. ``new`` must hold the same names
    and shapes (see :func:`cast_like`).
    """
    out = {}
    for name, b in base.items():
        n = np.asarray(new[name])
        if n.shape != b.shape or n.dtype != b.dtype:
            raise ValueError(f"tensor {name!r}: {n.dtype}{n.shape} vs base {b.dtype}{b.shape}")
        if b.dtype == np.bool_:
            out[name] = np.logical_xor(n, b)
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                out[name] = np.subtract(n, b, dtype=b.dtype)
    return out


def apply_delta(base: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``base + delta`` per tensor, in ``base``'s dtype and order (inverse of :func:`model_delta`)."""
    out = {}
    for name, b in base.items():
        d = np.asarray(delta[name])
        if d.shape != b.shape:
            raise ValueError(f"tensor {name!r}: delta shape {d.shape} vs base {b.shape}")
        if b.dtype == np.bool_:
            out[name] = np.logical_xor(b, d.astype(np.bool_))
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                out[name] = np.add(b, d.astype(b.dtype, copy=False), dtype=b.dtype)
    return out


def quantisation_residual(
    delta: Mapping[str, np.ndarray], decoded: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Error feedback: ``delta - decoded`` for floating tensors, in ``delta``'s dtype.

    Integer and boolean tensors are coded exactly and carry none; a non-finite residual (diverged
    training) is dropped rather than carried into later rounds.
    """
    out = {}
    for name, d in delta.items():
        if np.issubdtype(d.dtype, np.floating):
            r = (d - np.asarray(decoded[name]).astype(d.dtype)).astype(d.dtype)
            if np.all(np.isfinite(r)):
                out[name] = r
    return out


def cast_like(
    tensors: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``tensors`` in ``reference``'s names order and dtypes (integers rounded, booleans >= 0.5).

    Aggregators may return float64 (``FedAdam``) or floats for integer buffers (``FedAvg`` on
    ``num_batches_tracked``); this brings them back to the model's dtypes. Raises ``ValueError`` on a
    missing or extra name or a shape mismatch.
    """
    if set(tensors) != set(reference):
        missing, extra = set(reference) - set(tensors), set(tensors) - set(reference)
        raise ValueError(f"tensor names differ: missing {sorted(missing)}, extra {sorted(extra)}")
    out = {}
    for name, ref in reference.items():
        arr = np.asarray(tensors[name])
        if arr.shape != ref.shape:
            raise ValueError(f"tensor {name!r}: shape {arr.shape} vs {ref.shape}")
        if arr.dtype == ref.dtype:
            out[name] = arr
        elif ref.dtype == np.bool_:
            out[name] = arr >= 0.5
        elif np.issubdtype(ref.dtype, np.integer) and not np.issubdtype(arr.dtype, np.integer):
            info = np.iinfo(ref.dtype)
            out[name] = np.clip(np.rint(np.nan_to_num(arr)), info.min, info.max).astype(ref.dtype)
        else:
            out[name] = arr.astype(ref.dtype)
    return out


__all__ = [
    "ACK",
    "DELTA",
    "KEYFRAME",
    "PAYLOAD_KEY",
    "PROTOCOL",
    "RECORD_KEY",
    "RESYNC",
    "SAME",
    "STYPE",
    "UPDATE",
    "Downlink",
    "ProtocolError",
    "Uplink",
    "apply_delta",
    "cast_like",
    "check_base",
    "choose_downlink",
    "decode_params",
    "encode_params",
    "model_delta",
    "pack_payload",
    "payload_of",
    "unpack_payload",
]
