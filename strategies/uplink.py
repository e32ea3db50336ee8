"""Server side of the uplink: open, validate and reconstruct the clients' coded train replies."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore import log

from nnc_fl import protocol
from nnc_fl.codecs import UpdateCodec
from nnc_fl.updates import apply_delta
from nnc_fl.validation import (
    UpdateRejected,
    check_finite,
    check_norm_bound,
    check_schema,
    decode_update,
    outlier_mask,
    outlier_rejection,
    outlier_scores,
    update_norm,
)

from .server_model import ServerModel


@dataclass
class Opened:
    """One train reply after :func:`open_reply`."""

    msg: Message
    node_id: int
    kind: str  # "error", "resync", "update" or "rejected"
    uplink: protocol.Uplink | None = None
    payload_bytes: int = 0
    arrays_key: str = ""
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # reconstructed G_v + deq(delta)
    norm: float = 0.0
    rejection: UpdateRejected | None = None
    decode_s: float = 0.0


def _uplink_of(msg: Message) -> protocol.Uplink:
    record = msg.content.get(protocol.RECORD_KEY)
    if not isinstance(record, ConfigRecord):
        raise UpdateRejected("protocol", "reply has no nnc-fl record (is nnc_mod installed on the client?)")
    try:
        return protocol.Uplink.from_config(record)
    except protocol.ProtocolError as exc:
        raise UpdateRejected("protocol", str(exc)) from exc


def _payload_of(msg: Message) -> tuple[str, bytes]:
    keys = list(msg.content.array_records.keys())
    if len(keys) != 1:
        raise UpdateRejected("protocol", f"update must carry exactly one ArrayRecord, found {len(keys)}")
    try:
        return keys[0], protocol.payload_of(msg.content[keys[0]])
    except protocol.ProtocolError as exc:
        raise UpdateRejected("protocol", str(exc)) from exc


def _check_base(up: protocol.Uplink, model: ServerModel) -> None:
    try:
        protocol.check_base(up.version, up.fingerprint, model.version, model.fingerprint)
    except protocol.ProtocolError as exc:
        raise UpdateRejected("base", f"update {exc}") from exc


def open_reply(msg: Message, model: ServerModel, codec: UpdateCodec, max_norm: float | None) -> Opened:
    """Run every per-reply check on a train reply and reconstruct ``G_v + deq(delta)``.

    Never raises for bad client input: a failed check yields ``kind="rejected"`` with its
    :class:`UpdateRejected`. Tells ``model`` what the reply says about the node's model.
    """
    node = msg.metadata.src_node_id
    if msg.has_error():
        model.lost(node)
        return Opened(msg, node, "error")
    out = Opened(msg, node, "rejected")
    try:
        try:
            out.uplink = up = _uplink_of(msg)
        except UpdateRejected:
            model.lost(node)
            raise
        if up.kind == protocol.RESYNC:
            model.lost(node)
            log(WARNING, "nnc-fl: node %s asks for a keyframe (%s)", node, up.reason)
            out.kind = "resync"
            return out
        if up.kind != protocol.UPDATE:
            raise UpdateRejected("protocol", f"train reply of kind {up.kind!r} carries no update")
        out.arrays_key, data = _payload_of(msg)
        out.payload_bytes = len(data)
        try:
            _check_base(up, model)
        except UpdateRejected:
            model.lost(node)
            raise
        model.acknowledged(node, up.version, up.fingerprint)  # it decoded and verified G_v
        if up.codec != codec.name:
            raise UpdateRejected("protocol", f"update coded with {up.codec!r}, round uses {codec.name!r}")
        t0 = time.perf_counter()
        delta = decode_update(codec, data)
        out.decode_s = time.perf_counter() - t0
        check_schema(delta, model.tensors)
        check_finite(delta)
        out.norm = update_norm(delta)
        check_norm_bound(out.norm, max_norm)
        out.tensors = apply_delta(model.tensors, delta)
        check_finite(out.tensors)
        out.kind = "update"
    except UpdateRejected as exc:
        out.rejection = exc
    return out


def reject_outliers(opened: Iterable[Opened], threshold: float | None, min_count: int = 3) -> None:
    """Turn updates whose norm is a robust outlier among the round's accepted ones into rejections."""
    updates = [o for o in opened if o.kind == "update"]
    norms = [o.norm for o in updates]
    mask = outlier_mask(norms, threshold, min_count=min_count)
    if not mask.any():
        return
    scores = outlier_scores(norms)
    for o, bad, score in zip(updates, mask, scores, strict=True):
        if bad:
            o.kind, o.rejection, o.tensors = "rejected", outlier_rejection(o.norm, score, threshold), {}


def _metrics_signature(msg: Message) -> tuple:
    return tuple(
        (name, tuple(sorted((k, isinstance(v, list)) for k, v in record.items())))
        for name, record in sorted(msg.content.metric_records.items())
    )


def reject_inconsistent_metrics(opened: Iterable[Opened]) -> None:
    """Refuse updates whose MetricRecords differ in names or keys from the round's majority.

    Inner strategies refuse a whole round when replies disagree here; one client must not be able
    to cancel everybody's round that way.
    """
    updates = [o for o in opened if o.kind == "update"]
    signatures = [_metrics_signature(o.msg) for o in updates]
    if len(set(signatures)) <= 1:
        return
    majority = max(set(signatures), key=signatures.count)
    for o, sig in zip(updates, signatures, strict=True):
        if sig != majority:
            reason = "metric records differ in names or keys from the other replies of the round"
            o.kind, o.rejection, o.tensors = "rejected", UpdateRejected("schema", reason), {}


def log_rejections(opened: Iterable[Opened], server_round: int) -> None:
    """Log why each refused reply was refused."""
    for o in opened:
        if o.rejection is not None:
            log(WARNING, "nnc-fl round %s: rejected update from node %s (%s)", server_round, o.node_id, o.rejection)


def to_plain_reply(o: Opened) -> Message:
    """Replace the reply's coded content by the reconstructed model, as plain Flower would carry it.

    The protocol record is dropped; the user's other records (metrics, configs) are kept.
    """
    content = RecordDict()
    for key, record in o.msg.content.items():
        if key == protocol.RECORD_KEY:
            continue
        if key == o.arrays_key:
            record = protocol.to_record(o.tensors, ArrayRecord, Array)
        content[key] = record
    o.msg.content = content
    return o.msg


def strip_protocol(msg: Message) -> Message:
    """Remove the protocol record from a (non-train) reply so the inner strategy sees plain content."""
    if msg.has_content() and protocol.RECORD_KEY in msg.content:
        msg.content = RecordDict({k: v for k, v in msg.content.items() if k != protocol.RECORD_KEY})
    return msg
