"""The wire protocol between :class:`strategies.CompressedStrategy` and :func:`clients.nnc_mod`.

Everything both sides must agree on lives here, once: record keys, the custom ``stype`` that marks a
coded payload inside an ``ArrayRecord``, the fields of the protocol ``ConfigRecord``, the codec
spec, and which model a message needs. This module does not import Flower: a "record" here is any
``Mapping`` (Flower's ``ConfigRecord`` is one) and an ``Array`` is anything with
``dtype``/``shape``/``stype``/``data`` attributes.

A message of the protocol carries, besides the user's own records,

- under the model's usual ``ArrayRecord`` key, an ``ArrayRecord`` holding one ``Array`` named
  :data:`PAYLOAD_KEY` whose ``stype`` is :data:`STYPE` (``Array.numpy()`` refuses it, so code that
  forgot to decode fails loudly instead of averaging bytes);
- under :data:`RECORD_KEY`, a ``ConfigRecord`` made by :meth:`Downlink.to_config` (server to client)
  or :meth:`Uplink.to_config` (client to server).

The arithmetic of updates (deltas, error feedback) lives in :mod:`nnc_fl.updates`; which message a
node gets is the server's policy (``strategies.server_model``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np

from .auth import TAG_SIZE
from .codecs import ParamValue, UpdateCodec, make_codec
from .fingerprint import FINGERPRINT_SIZE

R = TypeVar("R")

#: Protocol name and major version; a peer speaking another one is refused (3: downlink records
#: carry ``payloads``, so one payload may span several versions; see FORMAT.md, "Protocol records").
PROTOCOL = "nnc-fl/3"
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

#: Most increments one downlink message may chain: the bound a node enforces when it reads one.
MAX_CHAIN = 64
#: Largest ``residual_max_age`` a downlink may name (versions).
MAX_RESIDUAL_AGE = 1 << 30
_MAX_PARAMS_CHARS = 4096
#: Longest text field a peer's record may hold (codec names, keys, reasons); longer is refused.
MAX_TEXT_CHARS = 1024
#: Bytes of the fresh random value the server puts in every downlink message; the node's update
#: must carry it (see :func:`binding`), so an update cannot be replayed in another round or by
#: another node.
NONCE_SIZE = 16
#: Largest model (tensors, elements in all) a downlink may announce.
MAX_MODEL_TENSORS, MAX_MODEL_ELEMENTS = 1 << 24, 1 << 40


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
        raise ProtocolError(f"payload stype is {printable(stype)}, expected {STYPE!r}")
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


@dataclass(frozen=True)
class CodecSpec:
    """A codec name and its parameters: what the server tells a client to code with.

    Both sides build the codec from it with :meth:`make`; on the wire it travels as the name and
    :attr:`params_json`.
    """

    name: str
    params: Mapping[str, ParamValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CodecSpec):
            return NotImplemented
        return (self.name, self.params_json) == (other.name, other.params_json)

    def __hash__(self) -> int:
        return hash((self.name, self.params_json))

    @property
    def params_json(self) -> str:
        """Canonical JSON text of :attr:`params`."""
        return encode_params(self.params)

    @classmethod
    def from_wire(cls, name: str, params_json: str) -> CodecSpec:
        """The spec a peer sent as a name and :attr:`params_json` (:class:`ProtocolError` if malformed)."""
        return cls(name, decode_params(params_json))

    def make(self) -> UpdateCodec:
        """Build the codec (``ValueError`` for an unknown name or bad parameters)."""
        return make_codec(self.name, **self.params)

    def merged(self, params: Mapping[str, ParamValue] | None) -> CodecSpec:
        """This codec with ``params`` overriding its own (itself if there are none)."""
        return CodecSpec(self.name, {**self.params, **params}) if params else self


# -- protocol records -----------------------------------------------------------------------------


def printable(value: object, limit: int = 120) -> str:
    """``value`` as a short, single-line, escaped text for a log line (peer text is never logged raw).

    Control characters and non-ASCII are escaped (``repr`` style) and the result is cut at ``limit``
    characters, so a peer cannot forge log lines or flood the log.
    """
    text = value if isinstance(value, str) else repr(value)
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in escaped)
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


def _field(record: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in record:
        raise ProtocolError(f"protocol record lacks field {name!r}")
    value = record[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"protocol field {name!r} has type {type(value).__name__}")
    if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
        raise ProtocolError(f"protocol field {name!r} holds {len(value)} characters, more than {MAX_TEXT_CHARS}")
    return value


def _check_protocol(record: Mapping[str, Any]) -> None:
    if not isinstance(record, Mapping):
        raise ProtocolError("protocol record is not a mapping")
    proto = record.get("protocol")
    if proto != PROTOCOL:
        raise ProtocolError(f"peer speaks protocol {printable(proto)}, expected {PROTOCOL!r}")


def _bytes_field(record: Mapping[str, Any], name: str, sizes: tuple[int, ...]) -> bytes:
    value = _field(record, name, bytes)
    if len(value) not in sizes:
        raise ProtocolError(f"protocol field {name!r} must hold {' or '.join(map(str, sizes))} bytes")
    return value


def _fingerprint_field(record: Mapping[str, Any], name: str) -> bytes:
    return _bytes_field(record, name, (0, FINGERPRINT_SIZE))


@dataclass(frozen=True)
class Downlink:
    """Server-to-client protocol record.

    ``version``/``fingerprint`` name the model the node holds once it applied the payload;
    ``base_version``/``base_fingerprint`` the model a delta applies to (``-1``/``b""`` for a
    keyframe). A delta carries ``payloads`` coded increments (1 .. ``version - base_version``),
    applied in order (see :func:`payloads_of`): one per version (a chain), or fewer, each spanning
    several versions (a catch-up), so a node that missed rounds catches up without a keyframe.
    ``payload_codec`` decodes the payload; ``codec`` codes the reply (the round's rate).
    ``arrays_key`` is the ``RecordDict`` key under which the user's function expects the model.
    ``nonce`` is fresh per message: a train reply binds its update to it (:func:`binding`).
    ``tensors`` and ``elements`` say how large the model is, so a node can size its decoder's
    limits for a keyframe (at most :data:`MAX_MODEL_TENSORS` and :data:`MAX_MODEL_ELEMENTS`).
    ``residual_max_age``: a node drops its error-feedback residual when it was made against a model
    more than this many versions older than ``version`` (``-1``: it keeps it).
    ``train_from_residual``: for a train message, the node's training starts from ``G_v`` plus its
    (kept) residual instead of ``G_v``, and the update it codes (``trained - G_v``) then holds the
    residual already (:meth:`clients.state.NodeState.training_start`). Optional on the wire
    (absent: ``False``), so peers that predate it still understand each other.
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
    nonce: bytes
    tensors: int
    elements: int
    payloads: int = -1
    residual_max_age: int = -1
    train_from_residual: bool = False

    def __post_init__(self) -> None:
        if self.payloads == -1:  # default: what the kind implies (one increment per version)
            implied = {KEYFRAME: 1, SAME: 0}.get(self.kind, self.version - self.base_version)
            object.__setattr__(self, "payloads", implied)

    def to_config(self) -> dict[str, Any]:
        """Fields for a Flower ``ConfigRecord``."""
        return {"protocol": PROTOCOL, **asdict(self)}

    @property
    def base(self) -> tuple[int, bytes] | None:
        """``(version, fingerprint)`` of the model a node must hold to apply this message
        (``None`` for a keyframe, which needs none)."""
        if self.kind == KEYFRAME:
            return None
        if self.kind == SAME:
            return self.version, self.fingerprint
        return self.base_version, self.base_fingerprint

    @property
    def chain_length(self) -> int:
        """How many payloads the message carries."""
        return self.payloads

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
            nonce=_bytes_field(record, "nonce", (NONCE_SIZE,)),
            tensors=_field(record, "tensors", int),
            elements=_field(record, "elements", int),
            payloads=_field(record, "payloads", int),
            residual_max_age=_field(record, "residual_max_age", int),
            train_from_residual="train_from_residual" in record and _field(record, "train_from_residual", bool),
        )
        if not (0 <= out.tensors <= MAX_MODEL_TENSORS and 0 <= out.elements <= MAX_MODEL_ELEMENTS):
            raise ProtocolError(f"a model of {out.tensors} tensors and {out.elements} elements is beyond the bounds")
        if len(out.fingerprint) != FINGERPRINT_SIZE:
            raise ProtocolError("downlink fingerprint must hold 32 bytes")
        if kind == DELTA and not 1 <= out.version - out.base_version <= MAX_CHAIN:
            raise ProtocolError(f"a delta must span 1..{MAX_CHAIN} versions")
        if kind == DELTA and not 1 <= out.payloads <= out.version - out.base_version:
            span = out.version - out.base_version
            raise ProtocolError(f"a delta over {span} versions cannot carry {out.payloads} payloads")
        if kind != DELTA and out.payloads != {KEYFRAME: 1, SAME: 0}[kind]:
            raise ProtocolError(f"a {kind} downlink cannot carry {out.payloads} payloads")
        if not -1 <= out.residual_max_age <= MAX_RESIDUAL_AGE:
            raise ProtocolError(f"residual_max_age must be in -1..{MAX_RESIDUAL_AGE}, not {out.residual_max_age}")
        return out


@dataclass(frozen=True)
class Uplink:
    """Client-to-server protocol record.

    ``version``/``fingerprint`` name the model the update was computed against (for ``ack``: the
    model the node now holds; for ``resync``: ``-1``/``b""``). ``codec`` is the codec the client
    used. Timings are the client's own encode/decode seconds; ``reason`` explains a resync.
    ``key_id`` and ``tag`` authenticate an update when the operator provisioned keys
    (:func:`nnc_fl.auth.authentication_tag`; empty otherwise).
    """

    kind: str
    version: int
    fingerprint: bytes
    codec: str = ""
    encode_s: float = 0.0
    decode_s: float = 0.0
    reason: str = ""
    key_id: str = ""
    tag: bytes = b""

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
            reason=_field(record, "reason", str),
            key_id=_field(record, "key_id", str),
            tag=_bytes_field(record, "tag", (0, TAG_SIZE)),
        )


# -- the model a message needs -------------------------------------------------------------------


def check_base(version: int | None, fingerprint: bytes | None, want_version: int, want_fingerprint: bytes) -> None:
    """Raise :class:`ProtocolError` unless ``(version, fingerprint)`` names the model wanted.

    Both sides use it: a node checks it holds the base of a downlink (:attr:`Downlink.base`), the
    server checks an update was computed against its current model.
    """
    if version != want_version or fingerprint != want_fingerprint:
        raise ProtocolError(
            f"needs model version {want_version} but the peer holds version {version}"
            + ("" if version != want_version else " with another fingerprint")
        )


# -- binding an update to its round ------------------------------------------------------------------


def binding(fingerprint: bytes, nonce: bytes) -> bytes:
    """What a node's update stream carries in its fingerprint field: the base model's fingerprint
    followed by the nonce of the message it answers (48 bytes).

    The server refuses a stream whose binding is not ``(G_v, the nonce it sent that node)``, so a
    stale or copied stream is refused even when its protocol record is relabelled.
    """
    if len(fingerprint) != FINGERPRINT_SIZE or len(nonce) != NONCE_SIZE:
        raise ValueError(f"binding needs a {FINGERPRINT_SIZE}-byte fingerprint and a {NONCE_SIZE}-byte nonce")
    return bytes(fingerprint) + bytes(nonce)


# -- named tensors <-> Flower ArrayRecord -----------------------------------------------------------


def tensors_of(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The numpy tensors of a Flower ``ArrayRecord`` (any mapping of objects with ``.numpy()``)."""
    return {name: array.numpy() for name, array in record.items()}


def to_record(tensors: Mapping[str, np.ndarray], record_type: Callable[[dict], R], array_type: Callable) -> R:
    """Named numpy tensors as a Flower ``ArrayRecord``, in order.

    Called as ``to_record(tensors, ArrayRecord, Array)`` with Flower's classes (``nnc_fl`` itself
    does not import Flower).
    """
    return record_type({name: array_type(np.asarray(value)) for name, value in tensors.items()})


__all__ = [
    "ACK",
    "DELTA",
    "KEYFRAME",
    "MAX_CHAIN",
    "MAX_RESIDUAL_AGE",
    "MAX_TEXT_CHARS",
    "NONCE_SIZE",
    "PAYLOAD_KEY",
    "PROTOCOL",
    "RECORD_KEY",
    "RESYNC",
    "SAME",
    "STYPE",
    "UPDATE",
    "CodecSpec",
    "Downlink",
    "ProtocolError",
    "Uplink",
    "binding",
    "chain_key",
    "check_base",
    "decode_params",
    "encode_params",
    "pack_payload",
    "payload_of",
    "payloads_of",
    "printable",
    "tensors_of",
    "to_record",
    "unpack_payload",
]
