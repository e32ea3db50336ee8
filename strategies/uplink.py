"""Server side of the uplink: open, validate and reconstruct the clients' coded train replies.

:meth:`UplinkChecks.open` runs the checks of one reply, cheapest and most fundamental first -- the
protocol record, the authentication tag, the model and round the stream is bound to, the stream's
tensor table against the model's schema (before a single payload is decoded, so a small stream
cannot make the server allocate what it claims), the payloads, finite values, the weighting metric
-- and :meth:`UplinkChecks.review` the checks across the round's updates: scale against the norm
the honest updates have had, direction against the consensus of recently accepted updates, robust outliers.
Nothing a client sends raises out of here: every failure is an :class:`UpdateRejected` with a code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore import log

from nnc_fl import protocol
from nnc_fl.auth import tag_matches
from nnc_fl.codecs import UpdateCodec
from nnc_fl.references import AgreementReference, DirectionReference, NormReference
from nnc_fl.updates import apply_delta
from nnc_fl.validation import (
    UpdateRejected,
    cap_weights,
    check_finite,
    check_nonnegative,
    check_norm_bound,
    check_schema,
    check_trusted_loss,
    check_weight,
    decode_update,
    outlier_mask,
    outlier_rejection,
    outlier_scores,
    split_statistics,
    update_norm,
)

from .server_model import ServerModel
from .settings import ValidationSettings


@dataclass
class Opened:
    """One train reply after :meth:`UplinkChecks.open`."""

    msg: Message
    node_id: int
    kind: str  # "error", "resync", "update" or "rejected" ("pending": prechecked, not decoded yet)
    uplink: protocol.Uplink | None = None
    payload_bytes: int = 0
    arrays_key: str = ""
    delta: dict[str, np.ndarray] = field(default_factory=dict)  # the decoded update
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # reconstructed G_v + delta
    norm: float = 0.0  # of the trained tensors (without the statistics)
    stats_norm: float = 0.0  # of the statistics (running means and variances)
    weight: float | None = None  # the weighting metric, as credited
    clipped: bool = False
    weight_capped: bool = False
    rejection: UpdateRejected | None = None
    decode_s: float = 0.0
    data: bytes = b""  # the stream, between the checks of its record and its decoding

    def reject(self, rejection: UpdateRejected) -> None:
        """Refuse this update after it was opened (a cohort check)."""
        self.kind, self.rejection, self.delta, self.tensors = "rejected", rejection, {}, {}


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


def _check_binding(codec: UpdateCodec, data: bytes, expected: bytes) -> None:
    """The stream itself (not only its protocol record) must name ``G_v`` and this round's nonce."""
    try:
        carried = codec.fingerprint_of(data)
    except Exception as exc:
        raise UpdateRejected("format", f"{type(exc).__name__}: {protocol.printable(exc)}") from exc
    if carried is None or len(carried) != len(expected):
        raise UpdateRejected("base", "the stream does not carry the model and round it was computed for")
    size = len(expected) - protocol.NONCE_SIZE
    if carried[size:] != expected[size:]:
        raise UpdateRejected("replay", "the stream answers another message (a replayed or copied update)")
    if carried[:size] != expected[:size]:
        raise UpdateRejected("base", "the stream was computed against another model than the current one")


def _one_metric_record(msg: Message, key: str) -> MetricRecord:
    records = list(msg.content.metric_records.values())
    if len(records) != 1:
        raise UpdateRejected("weight", f"expected one MetricRecord holding {key!r}, found {len(records)} records")
    if key not in records[0]:
        raise UpdateRejected("weight", f"the MetricRecord lacks the weighting metric {key!r}")
    return records[0]


def _read_only(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Views the operator's function cannot write through (the server's model, an update's)."""
    views = {}
    for name, value in tensors.items():
        view = np.asarray(value).view()
        view.flags.writeable = False
        views[name] = view
    return views


class UplinkChecks:
    """Every check a train reply must pass, and what the server learns across rounds to check them.

    ``weight_key`` is the metric the inner strategy weights updates by (``None``: it weights by
    none); it must be a finite number > 0 in every reply, and is capped (see
    :func:`nnc_fl.validation.cap_weights`).
    """

    def __init__(self, settings: ValidationSettings, weight_key: str | None) -> None:
        self.settings = settings
        self.weight_key = weight_key
        self.norms = NormReference()
        self.stats_norms = NormReference()
        spread = settings.direction_spread
        self.direction = DirectionReference(spread) if spread is not None else None
        spread = settings.agreement_spread
        self.agreement = AgreementReference(spread) if spread is not None else None
        self._weights: dict[int, float] = {}  # node -> weight it was credited with last time
        self._key_owner: dict[str, int] = {}  # key id -> the node that authenticated with it

    # -- one reply -------------------------------------------------------------------------------

    def open_all(
        self,
        replies: list[Message],
        model: ServerModel,
        codec: UpdateCodec,
        nonces: Mapping[int, bytes],
        threads: int = 1,
    ) -> list[Opened]:
        """:meth:`open` every reply (``nonces``: node -> the nonce sent to it); the checks that read
        peer records run in order, the payload decoding and value checks in ``threads`` threads
        (the codec's kernels release the GIL), results in reply order."""
        opened = [self._precheck(m, model, codec, nonces.get(m.metadata.src_node_id)) for m in replies]
        todo = [o for o in opened if o.kind == "pending"]
        if threads > 1 and len(todo) > 1:
            with ThreadPoolExecutor(min(threads, len(todo))) as pool:
                list(pool.map(lambda o: self._decode(o, model, codec), todo))
        else:
            for o in todo:
                self._decode(o, model, codec)
        return opened

    def open(self, msg: Message, model: ServerModel, codec: UpdateCodec, nonce: bytes | None) -> Opened:
        """Run every per-reply check on a train reply; ``nonce`` is the one sent to that node.

        Never raises for bad client input: a failed check yields ``kind="rejected"`` with its
        :class:`UpdateRejected`. Tells ``model`` what the reply says about the node's model.
        """
        out = self._precheck(msg, model, codec, nonce)
        if out.kind == "pending":
            self._decode(out, model, codec)
        return out

    def _precheck(self, msg: Message, model: ServerModel, codec: UpdateCodec, nonce: bytes | None) -> Opened:
        """The checks up to the payload: ``kind="pending"`` (with the stream kept) if they pass."""
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
                log(WARNING, "nnc-fl: node %s asks for a keyframe (%s)", node, protocol.printable(up.reason))
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
                raise UpdateRejected(
                    "protocol", f"update coded with {protocol.printable(up.codec)}, round uses {codec.name!r}"
                )
            if nonce is None:
                raise UpdateRejected("replay", "no train message of this round went to this node")
            expected = protocol.binding(model.fingerprint, nonce)
            self._check_auth(node, up, expected, data)
            _check_binding(codec, data, expected)
            if self.weight_key is not None:
                out.weight = check_weight(_one_metric_record(msg, self.weight_key)[self.weight_key], self.weight_key)
            out.data, out.kind = data, "pending"
        except UpdateRejected as exc:
            out.rejection = exc
        return out

    def _decode(self, out: Opened, model: ServerModel, codec: UpdateCodec) -> None:
        """Decode a prechecked stream against the model's schema and check its values."""
        try:
            t0 = time.perf_counter()
            delta = decode_update(codec, out.data, expect=model.tensors, temporal_reference=model.last_increment)
            out.decode_s = time.perf_counter() - t0
            check_schema(delta, model.tensors)
            check_finite(delta)
            self.measure(out, delta)
        except UpdateRejected as exc:
            out.kind, out.rejection = "rejected", exc
        out.data = b""

    def measure(self, out: Opened, delta: dict[str, np.ndarray]) -> None:
        """Make ``delta`` (decoded, finite) ``out``'s update: its norms, of the trained tensors and of
        the statistics apart, and the absolute bound on the whole (``UpdateRejected``)."""
        trained, statistics = split_statistics(delta, self.settings.statistics)
        out.norm, out.stats_norm = update_norm(trained), update_norm(statistics)
        check_norm_bound(math.hypot(out.norm, out.stats_norm), self.settings.max_update_norm)
        out.delta, out.kind = delta, "update"

    def _check_auth(self, node: int, up: protocol.Uplink, binding: bytes, data: bytes) -> None:
        keys = self.settings.auth_keys
        if keys is None:
            return
        key = keys.get(up.key_id)
        if key is None or not up.tag:
            raise UpdateRejected("auth", f"no valid key id or tag (key id {protocol.printable(up.key_id)})")
        if not tag_matches(up.tag, key, up.key_id, binding, data):
            raise UpdateRejected("auth", f"wrong authentication tag for key id {up.key_id!r}")
        owner = self._key_owner.setdefault(up.key_id, node)
        if owner != node:
            raise UpdateRejected("auth", f"key id {up.key_id!r} belongs to node {owner}")

    # -- the round's updates together -----------------------------------------------------------

    def review(self, opened: list[Opened], model: ServerModel) -> None:
        """The checks across the round's updates, then the reconstruction ``G_v + delta`` of the
        accepted ones (and the weighting metric as credited)."""
        s = self.settings
        updates = [o for o in opened if o.kind == "update"]
        self._check_scale(updates, self.norms, "norm")
        self._check_scale([o for o in updates if o.kind == "update"], self.stats_norms, "stats_norm")
        updates = [o for o in updates if o.kind == "update"]
        trained = {id(o): split_statistics(o.delta, s.statistics)[0] for o in updates}  # after any clipping
        for test in (self.direction, self.agreement):
            if test is not None and updates:
                verdicts = test.review([o.node_id for o in updates], [trained[id(o)] for o in updates],
                                       [o.norm for o in updates])
                for o, rejection in zip(updates, verdicts, strict=True):
                    if rejection is not None:
                        o.reject(rejection)
                updates = [o for o in updates if o.kind == "update"]
        mask = outlier_mask([o.norm for o in updates], s.outlier_threshold, min_count=s.outlier_min_count)
        if mask.any():
            scores = outlier_scores([o.norm for o in updates])
            for o, bad, score in zip(updates, mask, scores, strict=True):
                if bad:
                    o.reject(outlier_rejection(o.norm, score, s.outlier_threshold))
            updates = [o for o in updates if o.kind == "update"]
        for o in updates:
            o.tensors = apply_delta(model.tensors, o.delta)
            try:
                check_finite(o.tensors)
                check_nonnegative(o.tensors, s.nonnegative)
            except UpdateRejected as exc:
                o.reject(exc)
        updates = [o for o in updates if o.kind == "update"]
        if s.trusted_loss is not None and updates:
            self._check_trusted_loss(updates, model)
            updates = [o for o in updates if o.kind == "update"]
        self._credit_weights(updates)
        _common_metrics(updates, self.weight_key)
        self.norms.record([o.norm for o in updates])
        self.stats_norms.record([o.stats_norm for o in updates])
        if self.direction is not None:
            self.direction.record([trained[id(o)] for o in updates], [o.norm for o in updates])

    def _check_scale(self, updates: list[Opened], reference: NormReference, attr: str) -> None:
        """Refuse or clip each update whose norm (``attr``: of the trained tensors, or of the
        statistics) is beyond the ratios of ``reference``'s honest level."""
        s = self.settings
        level = reference.level([getattr(o, attr) for o in updates])
        if level is None:
            return
        what = "update norm" if attr == "norm" else "norm of the update's running statistics"
        for o in updates:
            norm = getattr(o, attr)
            if s.norm_reject_ratio is not None and norm > s.norm_reject_ratio * level:
                o.reject(UpdateRejected("norm", f"{what} {norm:.6g} exceeds {s.norm_reject_ratio:g}x the "
                                                f"norm of honest updates ({level:.6g})"))
            elif s.norm_clip_ratio is not None and norm > s.norm_clip_ratio * level:
                _clip(o, s.norm_clip_ratio * level, attr, s.statistics)

    def _check_trusted_loss(self, updates: list[Opened], model: ServerModel) -> None:
        """Each reconstructed model's loss on the server's trusted data against the current one's."""
        s = self.settings
        try:
            reference = float(s.trusted_loss(_read_only(model.tensors)))
        except Exception as exc:  # noqa: BLE001 -- the operator's function; the round goes on without it
            reference, why = float("nan"), f"{type(exc).__name__}: {protocol.printable(str(exc), 200)}"
        else:
            why = f"loss {reference!r}"
        if not math.isfinite(reference):
            log(WARNING, "nnc-fl: trusted_loss of the current model failed (%s); the check stands aside this round",
                why)
            return
        for o in updates:
            try:
                check_trusted_loss(float(s.trusted_loss(_read_only(o.tensors))), reference, s.trusted_loss_tolerance)
            except UpdateRejected as exc:
                o.reject(exc)
            except Exception as exc:  # noqa: BLE001 -- whatever this update's model makes the function do
                o.reject(UpdateRejected("loss", f"trusted_loss failed on this update's model ({type(exc).__name__}: "
                                                f"{protocol.printable(str(exc), 200)})"))

    def _credit_weights(self, updates: list[Opened]) -> None:
        """Cap the weighting metric of the accepted updates (:func:`cap_weights`), then the round's
        dissenter's (:meth:`AgreementReference.dissenter`) at ``dissent_weight_ratio`` times the
        others' median. A node's history is its claim as capped by the first rule, so a node that
        dissents in several rounds is not credited less and less."""
        s = self.settings
        if self.weight_key is None or not updates or (s.weight_ratio is None and s.dissent_weight_ratio is None):
            return
        claims = [o.weight for o in updates]
        if s.weight_ratio is None:
            capped = np.asarray(claims, dtype=np.float64)
        else:
            capped = cap_weights(claims, [self._weights.get(o.node_id) for o in updates], s.weight_ratio)
        credited = capped.copy()
        if s.dissent_weight_ratio is not None and self.agreement is not None and len(updates) > 1:
            dissenter = self.agreement.dissenter([o.node_id for o in updates])
            for i, o in enumerate(updates):
                if o.node_id == dissenter:
                    credited[i] = min(credited[i], s.dissent_weight_ratio * float(np.median(np.delete(capped, i))))
        for o, c, w in zip(updates, capped, credited, strict=True):
            self._weights[o.node_id] = float(c)
            if w < o.weight:
                o.weight, o.weight_capped = float(w), True

    # -- what the model did ------------------------------------------------------------------------

    def model_replaced(self) -> None:
        """The global model was replaced from outside: forget its direction and the agreements."""
        if self.direction is not None:
            self.direction.reset()
        if self.agreement is not None:
            self.agreement.reset()


def _clip(o: Opened, bound: float, attr: str, statistics: tuple[str, ...]) -> None:
    """Scale the floating tensors of one part of an update (``attr``: ``"norm"``, the trained
    tensors; ``"stats_norm"``, the statistics) so that part's norm is ``bound`` (norm clipping).
    Scaling a statistics delta by less than one keeps a variance between its old and new values."""
    scale = bound / getattr(o, attr)
    trained, stats = split_statistics(o.delta, statistics)
    part = trained if attr == "norm" else stats
    o.delta = {k: v * v.dtype.type(scale) if k in part and np.issubdtype(v.dtype, np.floating) else v
               for k, v in o.delta.items()}
    setattr(o, attr, bound)
    o.clipped = True


def _common_metrics(updates: list[Opened], weight_key: str | None) -> None:
    """Give every accepted reply the same metric records and keys: those all of them carry, with the
    same kind of value (scalar or list). One client's extra, missing or odd metric can thus change
    what the metrics aggregate to at most, and cannot make the inner strategy refuse the round.
    A capped weighting metric becomes what the server credits."""
    if not updates:
        return
    names = set.intersection(*(set(o.msg.content.metric_records) for o in updates))
    kinds: dict[tuple[str, str], set[bool]] = {}
    counts: dict[tuple[str, str], int] = {}
    for o in updates:
        for name in names:
            for key, value in o.msg.content[name].items():
                kinds.setdefault((name, key), set()).add(isinstance(value, list))
                counts[(name, key)] = counts.get((name, key), 0) + 1
    keep = {nk for nk, k in kinds.items() if len(k) == 1 and counts[nk] == len(updates)}
    for o in updates:
        content = RecordDict()
        for name, record in o.msg.content.items():
            if isinstance(record, MetricRecord):
                if name not in names:
                    continue
                record = MetricRecord({k: v for k, v in record.items() if (name, k) in keep})
                if o.weight_capped and weight_key in record:
                    record[weight_key] = o.weight
            content[name] = record
        o.msg.content = content


def log_rejections(opened: Iterable[Opened], server_round: int) -> None:
    """Log why each refused reply was refused (peer text escaped and cut short)."""
    for o in opened:
        if o.rejection is not None:
            log(
                WARNING,
                "nnc-fl round %s: rejected update from node %s (%s)",
                server_round,
                o.node_id,
                protocol.printable(str(o.rejection), 300),
            )


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
