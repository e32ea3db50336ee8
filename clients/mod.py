"""``nnc_mod``: the client half of nnc-fl, as a Flower client mod.

Three steps per message that carries the nnc-fl protocol record:

1. **receive**: rebuild ``G_v`` from the payload (keyframe, chain of increments, or nothing) and the
   model the node holds, check its fingerprint (:meth:`clients.state.NodeState.receive`); a node
   that cannot answers with a resync request instead of calling the user's function;
2. call the user's function with a plain ``ArrayRecord`` of ``G_v``, as plain Flower would (of
   ``G_v + residual`` for a train message when the server asks for ``train_from_residual``);
3. **send**: for a train reply, code ``W_trained - G_v + residual`` (``W_trained - G_v`` when the
   training started from the residual) and keep the new residual
   (:meth:`clients.state.NodeState.send`); any reply says which model the node now holds.

Messages without the protocol record pass through untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode
from flwr.supercore import log

from nnc_fl import protocol
from nnc_fl.auth import authentication_tag, check_key, read_key_file
from nnc_fl.codecs import UpdateCodec

from .state import NodeState, Resync

SharedModel = Callable[[Context], "Mapping[str, np.ndarray] | None"]
AuthKey = tuple[str, bytes]
#: ``node_config`` keys naming a node's authentication key: its id, and a file of hex text.
KEY_ID_CONFIG, KEY_FILE_CONFIG = "nnc-fl-key-id", "nnc-fl-key-file"


def _auth_key(context: Context, explicit: AuthKey | None) -> AuthKey | None:
    """The node's key: given to :func:`make_nnc_mod`, or named in its ``node_config``."""
    if explicit is not None:
        return explicit
    key_id, path = context.node_config.get(KEY_ID_CONFIG), context.node_config.get(KEY_FILE_CONFIG)
    if key_id is None and path is None:
        return None
    if key_id is None or path is None:
        raise ValueError(f"node_config needs both {KEY_ID_CONFIG!r} and {KEY_FILE_CONFIG!r}")
    return check_key(str(key_id), read_key_file(str(path)))


def _uplink_record(up: protocol.Uplink) -> ConfigRecord:
    return ConfigRecord(up.to_config())


def _error_reply(msg: Message, reason: str) -> Message:
    log(WARNING, "nnc_mod: %s", reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=f"nnc_mod: {reason}"), reply_to=msg)


def _plain_content(content: RecordDict, key: str, model: Mapping[str, np.ndarray]) -> RecordDict:
    out = RecordDict()
    for k, record in content.items():
        if k != protocol.RECORD_KEY:
            out[k] = record
    out[key] = protocol.to_record(model, ArrayRecord, Array)
    return out


def _model_record_key(reply: RecordDict, expected: str) -> str | None:
    keys = list(reply.array_records.keys())
    if len(keys) == 1:
        return keys[0]
    return expected if expected in keys else None


def make_nnc_mod(shared_model: SharedModel | None = None, auth_key: AuthKey | None = None) -> Mod:
    """The nnc-fl client mod; ``nnc_mod = make_nnc_mod()``.

    ``shared_model(context)`` may return the model the node holds before first contact (e.g. the
    initial weights shipped with the app), for use with ``CompressedStrategy(...,
    downlink=DownlinkSettings(shared_initial_model=True))``: the server then starts the node with
    increments instead of a keyframe. The model is used only if its fingerprint is the one the
    server names.

    ``auth_key = (key_id, key)`` tags every update for a server that requires authentication
    (``ValidationSettings(auth_keys=...)``); without it, a node whose ``node_config`` names
    ``nnc-fl-key-id`` and ``nnc-fl-key-file`` (hex text) uses that key.
    """
    if auth_key is not None:
        auth_key = check_key(*auth_key)

    def nnc_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Flower client mod: decode the coded model for the user's function, code its trained reply.

        Messages without the nnc-fl protocol record pass through untouched. Use as
        ``ClientApp(mods=[nnc_mod])`` together with :class:`strategies.CompressedStrategy`.
        """
        return _run_mod(msg, context, call_next, shared_model, auth_key)

    return nnc_mod


#: ``context.state`` key of the flag that this node already warned about an uncompressed server.
_WARNED_KEY = "nnc-fl.warned-plain"


def _warn_plain_once(msg: Message, context: Context) -> None:
    """A plain model from the server: nnc_mod has nothing to do. Say so once per node."""
    if not msg.has_content() or not msg.content.array_records or _WARNED_KEY in context.state:
        return
    context.state[_WARNED_KEY] = ConfigRecord({"warned": True})
    log(WARNING, "nnc_mod: the server sent an uncompressed model (no nnc-fl record): wrap the ServerApp's strategy "
                 "in strategies.CompressedStrategy to compress the transfers; passing messages through unchanged")


def _run_mod(msg: Message, context: Context, call_next: ClientAppCallable, shared_model, auth_key) -> Message:
    if not msg.has_content() or protocol.RECORD_KEY not in msg.content:
        _warn_plain_once(msg, context)
        return call_next(msg, context)
    try:
        record = msg.content[protocol.RECORD_KEY]
        down = protocol.Downlink.from_config(record if isinstance(record, ConfigRecord) else {})
        uplink_codec = protocol.CodecSpec.from_wire(down.codec, down.codec_params).make()
    except (protocol.ProtocolError, ValueError) as exc:
        return _error_reply(msg, f"cannot read the server's instruction: {exc}")
    try:
        key = _auth_key(context, auth_key)
    except (OSError, ValueError, TypeError) as exc:
        return _error_reply(msg, f"cannot read this node's authentication key: {exc}")
    node = NodeState(context.state)
    if shared_model is not None:
        node.adopt_shared(down, lambda: shared_model(context))

    # 1. receive G_v
    try:
        model, decode_s = node.receive(down, msg.content)
    except Resync as exc:
        log(WARNING, "nnc_mod: asking for a keyframe (%s)", exc)
        up = protocol.Uplink(kind=protocol.RESYNC, version=-1, fingerprint=b"", reason=str(exc))
        return Message(RecordDict({protocol.RECORD_KEY: _uplink_record(up)}), reply_to=msg)

    # 2. the user's function, on the plain model (a train message: plus the residual, if asked)
    train = msg.metadata.message_type.split(".")[0] == MessageType.TRAIN
    from_residual = train and down.train_from_residual
    start = node.training_start(down.residual_max_age) if from_residual else model
    msg.content = _plain_content(msg.content, down.arrays_key, start)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply

    # 3. send: an acknowledgement, or the coded update
    if not train:
        up = protocol.Uplink(kind=protocol.ACK, version=down.version, fingerprint=down.fingerprint, decode_s=decode_s)
        reply.content[protocol.RECORD_KEY] = _uplink_record(up)
        return reply
    return _coded_reply(msg, reply, node, down, uplink_codec, decode_s, key, residual_in_model=from_residual)


def _coded_reply(
    msg: Message,
    reply: Message,
    node: NodeState,
    down: protocol.Downlink,
    codec: UpdateCodec,
    decode_s: float,
    key: AuthKey | None,
    *,
    residual_in_model: bool = False,
) -> Message:
    """Replace the trained model in the user's train reply by its coded update (tagged with ``key``)."""
    record_key = _model_record_key(reply.content, down.arrays_key)
    if record_key is None:
        return _error_reply(msg, "the train reply must carry exactly one ArrayRecord (the trained model)")
    try:
        coded = node.send(
            protocol.tensors_of(reply.content[record_key]), codec, down.nonce, down.residual_max_age,
            residual_in_model=residual_in_model,
        )
    except ValueError as exc:  # names or shapes differ from the received model
        return _error_reply(msg, f"cannot code the trained model: {exc}")
    payload = ArrayRecord({protocol.PAYLOAD_KEY: Array(**protocol.pack_payload(coded.data))})
    content = RecordDict()
    for k, rec in reply.content.items():
        content[k] = payload if k == record_key else rec
    key_id, tag = "", b""
    if key is not None:
        key_id = key[0]
        tag = authentication_tag(key[1], key_id, protocol.binding(down.fingerprint, down.nonce), coded.data)
    up = protocol.Uplink(
        kind=protocol.UPDATE,
        version=down.version,
        fingerprint=down.fingerprint,
        codec=codec.name,
        encode_s=coded.encode_s,
        decode_s=decode_s + coded.decode_s,
        key_id=key_id,
        tag=tag,
    )
    content[protocol.RECORD_KEY] = _uplink_record(up)
    reply.content = content
    return reply


#: The client mod: ``ClientApp(mods=[nnc_mod])``.
nnc_mod = make_nnc_mod()
