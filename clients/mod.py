"""``nnc_mod``: the client half of nnc-fl, as a Flower client mod.

Incoming: decode the payload the server sent (keyframe, a chain of increments, or nothing), apply it
to the model the node holds, check the fingerprint and hand the user's function a plain ``ArrayRecord`` of ``G_v``.
Outgoing (train): code ``delta = W_trained - G_v + residual``, keep ``residual = delta - deq(Q(delta))``
for the next round and send ``Q(delta)`` tagged with ``v`` and ``F(G_v)``. A node that cannot rebuild
``G_v`` answers with a resync request instead of training; the server then sends a keyframe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode
from flwr.supercore import log

from nnc_fl import FormatError, protocol
from nnc_fl.codecs import UpdateCodec, make_codec
from nnc_fl.fingerprint import fingerprint
from nnc_fl.validation import UpdateRejected, check_schema

from .state import NodeState, load_state, save_model, save_residual, usable_residual


class _Resync(Exception):
    """The node cannot rebuild the model the server describes."""


def _codec(name: str, params_json: str) -> UpdateCodec:
    return make_codec(name, **protocol.decode_params(params_json))


def receive_model(
    down: protocol.Downlink, content: RecordDict, node: NodeState
) -> tuple[dict[str, np.ndarray], float]:
    """Rebuild ``G_v`` from a downlink message and the node's state; returns it and decode seconds.

    Raises
    ------
    _Resync
        If the node does not hold the delta's base, the payload does not decode, or the result's
        fingerprint differs from the server's.
    """
    try:
        protocol.check_base(down, node.version, node.fingerprint)
        if down.kind == protocol.SAME:
            return node.base, 0.0
        record = content.get(down.arrays_key)
        if not isinstance(record, ArrayRecord):
            raise protocol.ProtocolError(f"no ArrayRecord under {down.arrays_key!r}")
        codec = _codec(down.payload_codec, down.payload_codec_params)
        t0 = time.perf_counter()
        if down.kind == protocol.DELTA:  # a chain of increments, applied in order
            model = node.base
            for data in protocol.payloads_of(record, down.version - down.base_version):
                decoded = codec.decode(data)
                check_schema(decoded, model)
                model = protocol.apply_delta(model, decoded)
        else:
            model = dict(codec.decode(protocol.payload_of(record)))
        seconds = time.perf_counter() - t0
    except (protocol.ProtocolError, FormatError, UpdateRejected, ValueError) as exc:
        raise _Resync(str(exc)) from exc
    if fingerprint(model) != down.fingerprint:
        raise _Resync(f"fingerprint of the rebuilt model v{down.version} differs from the server's")
    return model, seconds


def encode_update(
    trained: Mapping[str, np.ndarray],
    model: Mapping[str, np.ndarray],
    residual: Mapping[str, np.ndarray],
    codec: UpdateCodec,
    base_fp: bytes,
) -> tuple[bytes, dict[str, np.ndarray], float, float]:
    """Code ``trained - model + residual``; returns (stream, new residual, encode s, decode s).

    Integer and boolean tensors carry no residual (codecs code them exactly). A non-finite
    residual (diverged training) is dropped rather than carried into later rounds.
    """
    delta = protocol.model_delta(protocol.cast_like(trained, model), model)
    for name, r in usable_residual(residual, model).items():
        delta[name] = delta[name] + r
    t0 = time.perf_counter()
    data = codec.encode(delta, fingerprint=base_fp)
    t1 = time.perf_counter()
    deq = codec.decode(data)
    t2 = time.perf_counter()
    return data, protocol.quantisation_residual(delta, deq), t1 - t0, t2 - t1


def _plain_content(content: RecordDict, key: str, model: Mapping[str, np.ndarray]) -> RecordDict:
    out = RecordDict()
    for k, record in content.items():
        if k != protocol.RECORD_KEY:
            out[k] = record
    out[key] = ArrayRecord({k: Array(np.asarray(v)) for k, v in model.items()})
    return out


def _uplink_record(up: protocol.Uplink) -> ConfigRecord:
    return ConfigRecord(up.to_config())


def _error_reply(msg: Message, reason: str) -> Message:
    log(WARNING, "nnc_mod: %s", reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=f"nnc_mod: {reason}"), reply_to=msg)


def _model_record_key(reply: RecordDict, expected: str) -> str | None:
    keys = list(reply.array_records.keys())
    if len(keys) == 1:
        return keys[0]
    return expected if expected in keys else None


SharedModel = Callable[[Context], "Mapping[str, np.ndarray] | None"]


def make_nnc_mod(shared_model: SharedModel | None = None) -> Mod:
    """The nnc-fl client mod; ``nnc_mod = make_nnc_mod()``.

    ``shared_model(context)`` may return the model the node holds before first contact (e.g. the
    initial weights shipped with the app), for use with ``CompressedStrategy(...,
    shared_initial_model=True)``: the server then starts the node with increments instead of an
    exact keyframe. The model is used only if its fingerprint is the one the server names.
    """

    def nnc_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Flower client mod: decode the coded model for the user's function, code its trained reply.

        Messages without the nnc-fl protocol record pass through untouched. Use as
        ``ClientApp(mods=[nnc_mod])`` together with :class:`strategies.CompressedStrategy`.
        """
        return _run_mod(msg, context, call_next, shared_model)

    return nnc_mod


def _adopt_shared(node: NodeState, down: protocol.Downlink, context: Context, shared_model) -> NodeState:
    """A node without state takes the shared model as the model it holds, if it is the one the
    downlink builds on (a delta's base, or the model itself for "same")."""
    if node.version is not None or shared_model is None or down.kind == protocol.KEYFRAME:
        return node
    version, fp = (down.base_version, down.base_fingerprint)
    if down.kind == protocol.SAME:
        version, fp = down.version, down.fingerprint
    candidate = shared_model(context)
    if candidate is None:
        return node
    candidate = {k: np.asarray(v) for k, v in candidate.items()}
    if fingerprint(candidate) != fp:
        return node
    return NodeState(version, fp, candidate, {})


def _run_mod(msg: Message, context: Context, call_next: ClientAppCallable, shared_model) -> Message:
    if not msg.has_content() or protocol.RECORD_KEY not in msg.content:
        return call_next(msg, context)
    try:
        record = msg.content[protocol.RECORD_KEY]
        down = protocol.Downlink.from_config(record if isinstance(record, ConfigRecord) else {})
        uplink_codec = _codec(down.codec, down.codec_params)
    except (protocol.ProtocolError, ValueError) as exc:
        return _error_reply(msg, f"cannot read the server's instruction: {exc}")
    stored = load_state(context.state)
    node = _adopt_shared(stored, down, context, shared_model)
    try:
        model, decode_s = receive_model(down, msg.content, node)
    except _Resync as exc:
        log(WARNING, "nnc_mod: asking for a keyframe (%s)", exc)
        up = protocol.Uplink(kind=protocol.RESYNC, version=-1, fingerprint=b"", reason=str(exc))
        return Message(RecordDict({protocol.RECORD_KEY: _uplink_record(up)}), reply_to=msg)
    if down.kind != protocol.SAME or stored.version is None:
        save_model(context.state, down.version, down.fingerprint, model)

    msg.content = _plain_content(msg.content, down.arrays_key, model)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
        up = protocol.Uplink(
            kind=protocol.ACK, version=down.version, fingerprint=down.fingerprint, decode_s=decode_s
        )
        reply.content[protocol.RECORD_KEY] = _uplink_record(up)
        return reply

    key = _model_record_key(reply.content, down.arrays_key)
    if key is None:
        return _error_reply(msg, "the train reply must carry exactly one ArrayRecord (the trained model)")
    trained = {k: a.numpy() for k, a in reply.content[key].items()}
    try:
        data, residual, enc_s, dec_s = encode_update(
            trained, model, node.residual, uplink_codec, down.fingerprint
        )
    except ValueError as exc:  # names or shapes differ from the received model
        return _error_reply(msg, f"cannot code the trained model: {exc}")
    save_residual(context.state, residual)
    content = RecordDict()
    for k, rec in reply.content.items():
        content[k] = (
            ArrayRecord({protocol.PAYLOAD_KEY: Array(**protocol.pack_payload(data))}) if k == key else rec
        )
    up = protocol.Uplink(
        kind=protocol.UPDATE,
        version=down.version,
        fingerprint=down.fingerprint,
        codec=uplink_codec.name,
        encode_s=enc_s,
        decode_s=decode_s + dec_s,
    )
    content[protocol.RECORD_KEY] = _uplink_record(up)
    reply.content = content
    return reply


#: The client mod: ``ClientApp(mods=[nnc_mod])``.
nnc_mod = make_nnc_mod()
