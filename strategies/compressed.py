"""``CompressedStrategy``: compress every model transfer of any Flower strategy."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError, InconsistentMessageReplies
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from nnc_fl import protocol
from nnc_fl.validation import UpdateRejected, check_finite

from . import uplink as up
from .bandwidth import BandwidthLog, metrics_of, new_row
from .model_state import CodecSpec, ServerModel

CodecSchedule = Callable[[int], Mapping[str, Any]]


def _to_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in arrays.items()}


def _to_record(tensors: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in tensors.items()})


class CompressedStrategy(Strategy):
    """Wrap any Flower strategy so that every model transfer is coded (use with ``nnc_mod``).

    Training replies are decoded, validated and reconstructed into plain ``ArrayRecord``s before the
    inner strategy aggregates them; the inner strategy never sees coded data. The new global model
    is ``G_{v+1} = G_v + deq(Q(A - G_v))`` where ``A`` is the inner aggregate, so server and clients
    hold bit-identical models; that is what :meth:`start` evaluates and returns.

    Parameters
    ----------
    inner : Strategy
        The strategy that samples nodes and aggregates (FedAvg, FedAdam, FedMedian, ...).
    codec : str or None
        Name of a codec registered in :mod:`nnc_fl.codecs`; ``None`` means ``"fp32"`` (uncompressed,
        same code path).
    step, qp : float or int, optional
        Quantiser step size or quantisation parameter, added to ``codec_params``.
    codec_params : mapping, optional
        Further codec parameters (scalars).
    codec_schedule : callable, optional
        ``f(server_round) -> params`` merged over the parameters for that round's uplink and
        downlink, so the server controls the rate per round.
    downlink_params : mapping, optional
        Codec parameters for the downlink increment that override the round's (e.g. a coarser
        ``rel_step``); the uplink keeps the round's parameters.
    downlink_exact : bool
        Code the global increment losslessly (``exact=True``) instead of with the round's rate.
    downlink_error_feedback : bool
        Add the downlink quantisation error of each increment to the next one (server-side error
        feedback), so downlink rounding does not accumulate in the global model.
    max_chain : int
        A node that missed rounds gets up to this many increments chained in one message (while
        they are smaller than the model) instead of an exact keyframe.
    shared_initial_model : bool
        Every node already holds ``initial_arrays`` (e.g. shipped with the app; pair with
        ``clients.make_nnc_mod(shared_model=...)``), so a node's first message is the chain of
        increments since then instead of an exact keyframe. A node that does not hold it (its
        fingerprint differs) asks for a resync and gets a keyframe.
    outlier_threshold : float or None
        Robust z-score (median/MAD over the round's update norms) above which an update is
        refused; ``None`` switches the test off. Needs at least ``outlier_min_count`` updates.
    max_update_norm : float or None
        Absolute bound on an update's L2 norm; ``None`` for no bound.
    bandwidth_log : str or Path or None
        Write one row per round to this CSV (``.csv``) or JSON-lines file.
    """

    def __init__(  # pylint: disable=too-many-arguments
        self,
        inner: Strategy,
        *,
        codec: str | None = "nnc",
        step: float | None = None,
        qp: int | None = None,
        codec_params: Mapping[str, Any] | None = None,
        codec_schedule: CodecSchedule | None = None,
        downlink_params: Mapping[str, Any] | None = None,
        downlink_exact: bool = False,
        downlink_error_feedback: bool = True,
        max_chain: int = 16,
        shared_initial_model: bool = False,
        outlier_threshold: float | None = 10.0,
        outlier_min_count: int = 3,
        max_update_norm: float | None = None,
        bandwidth_log: str | Path | None = None,
    ) -> None:
        if not isinstance(inner, Strategy):
            raise TypeError(f"inner must be a flwr Strategy, got {type(inner).__name__}")
        params = dict(codec_params or {})
        if step is not None:
            params["step"] = float(step)
        if qp is not None:
            params["qp"] = int(qp)
        self.inner = inner
        self.codec = CodecSpec("fp32" if codec is None else codec, params)
        self.codec.make()  # fail now on an unknown codec or bad parameters
        self.codec_schedule = codec_schedule
        self.downlink_params = dict(downlink_params or {})
        self.downlink_spec(1).make()  # fail now on bad downlink parameters
        self.downlink_exact = downlink_exact
        self.outlier_threshold = outlier_threshold
        self.outlier_min_count = outlier_min_count
        self.max_update_norm = max_update_norm
        self.model = ServerModel(max_chain=max_chain, error_feedback=downlink_error_feedback)
        self.shared_initial_model = shared_initial_model
        #: One dict per round (see :mod:`strategies.bandwidth` for the columns).
        self.bandwidth: list[dict[str, Any]] = []
        self._log = BandwidthLog(bandwidth_log)
        self._global: ArrayRecord | None = None
        self._round_spec: dict[int, CodecSpec] = {}
        self._written: set[int] = set()
        self._pending: set[int] = set()  # nodes sent a coded model whose reply is outstanding

    # -- pass-through --------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        """Attributes this wrapper does not define come from the inner strategy."""
        inner = self.__dict__.get("inner")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)

    def __repr__(self) -> str:
        """Name the wrapper, its codec and the inner strategy."""
        return (
            f"CompressedStrategy({self.inner!r}, codec={self.codec.name!r}, params={dict(self.codec.params)})"
        )

    def summary(self) -> None:
        """Log the compression settings, then the inner strategy's summary."""
        log(INFO, "\t├──> Compression (nnc-fl):")
        log(INFO, "\t│\t├── Codec: %s %s", self.codec.name, dict(self.codec.params))
        log(INFO, "\t│\t├── Downlink exact: %s", self.downlink_exact)
        log(INFO, "\t│\t└── Outlier threshold: %s", self.outlier_threshold)
        self.inner.summary()

    # -- round helpers ---------------------------------------------------------------------------

    def spec_for(self, server_round: int) -> CodecSpec:
        """The codec (name and parameters) used in ``server_round``."""
        if self.codec_schedule is None:
            return self.codec
        return CodecSpec(self.codec.name, {**self.codec.params, **self.codec_schedule(server_round)})

    def downlink_spec(self, server_round: int) -> CodecSpec:
        """The codec that codes the global increment of ``server_round``."""
        spec = self.spec_for(server_round)
        if not self.downlink_params:
            return spec
        return CodecSpec(spec.name, {**spec.params, **self.downlink_params})

    def row(self, server_round: int) -> dict[str, Any]:
        """The bandwidth row of ``server_round`` (created on first use)."""
        if self.bandwidth and self.bandwidth[-1]["round"] == server_round:
            return self.bandwidth[-1]
        self._flush()
        row = new_row(server_round, self.spec_for(server_round).name)
        self.bandwidth.append(row)
        return row

    def _flush(self) -> None:
        for row in self.bandwidth:
            if row["round"] not in self._written:
                self._written.add(row["round"])
                self._log.write(row)

    def _sync(self, arrays: ArrayRecord) -> None:
        """Make ``arrays`` the global model ``G_v`` (a new version unless it already is)."""
        if arrays is self._global:
            return
        tensors = _to_numpy(arrays)
        if not self.model.matches(tensors):
            first = self.model.version == 0
            self.model.adopt(tensors)
            if first and self.shared_initial_model:
                self.model.shared_version = self.model.version
            log(INFO, "nnc-fl: new global model v%s from outside; keyframes for all", self.model.version)
        self._global = arrays

    def _encode_messages(
        self, messages: Iterable[Message], arrays: ArrayRecord, server_round: int, train: bool
    ) -> list[Message]:
        """Replace the plain model in each outgoing message by its downlink payload."""
        row = self.row(server_round)
        spec = self.spec_for(server_round)
        out = []
        for msg in messages:
            keys = [
                k
                for k, rec in msg.content.array_records.items()
                if rec is arrays or list(rec.keys()) == list(arrays.keys())
            ]
            if len(keys) != 1:
                out.append(msg)  # the inner strategy sent no model: nothing to code
                continue
            down, payloads, seconds = self.model.downlink(
                msg.metadata.dst_node_id, spec, spec, keys[0], server_round
            )
            datas = [p.data for p in payloads] or [b""]
            content = RecordDict(dict(msg.content.items()))
            content[keys[0]] = ArrayRecord(
                {protocol.chain_key(i): Array(**protocol.pack_payload(d)) for i, d in enumerate(datas)}
            )
            content[protocol.RECORD_KEY] = ConfigRecord(down.to_config())
            msg.content = content
            prefix = "" if train else "eval_"
            row[prefix + "down_bytes"] += sum(len(d) for d in datas)
            # raw: what the node receives, the model once (a chain still delivers one model)
            row[prefix + "down_raw_bytes"] += payloads[0].raw_bytes if payloads else 0
            row["keyframes"] += down.kind == protocol.KEYFRAME
            row["keyframe_bytes"] += sum(len(d) for d in datas) if down.kind == protocol.KEYFRAME else 0
            row["deltas"] += down.kind == protocol.DELTA
            row["encode_s"] += seconds
            self._pending.add(msg.metadata.dst_node_id)
            out.append(msg)
        return out

    def _forget_silent_nodes(self, replies: list[Message]) -> None:
        """Nodes that never answered may or may not have applied the payload: keyframe next time."""
        answered = {m.metadata.src_node_id for m in replies}
        for node in self._pending - answered:
            self.model.mark(node, None)
        self._pending.clear()

    # -- Strategy API ----------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Let the inner strategy configure the round, then code the model per sampled node.

        A node holding ``G_{v-1}`` gets the coded increment, one holding ``G_v`` no payload, any
        other an exact keyframe. Codec name and parameters travel in the protocol ConfigRecord.
        """
        self._sync(arrays)
        self._round_spec[server_round] = spec = self.spec_for(server_round)
        spec.make()  # a schedule giving bad parameters fails here, before anything is sent
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        out = self._encode_messages(messages, arrays, server_round, train=True)
        self.row(server_round)["clients"] = len(out)
        return out

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate and reconstruct the replies, aggregate with the inner strategy, code the increment.

        Refused updates are logged with their reason and counted; the round goes on with the rest.
        If nothing is left, or the inner strategy fails on the replies, ``G`` stays unchanged.
        Returns ``G_{v+1}`` and the inner metrics plus the round's bandwidth entries.
        """
        row = self.row(server_round)
        spec = self._round_spec.get(server_round, self.spec_for(server_round))
        codec = spec.make()
        replies = list(replies)
        self._forget_silent_nodes(replies)
        opened = [up.open_reply(m, self.model, codec, self.max_update_norm) for m in replies]
        up.reject_inconsistent_metrics(opened)
        up.reject_outliers(opened, self.outlier_threshold, self.outlier_min_count)
        for o in opened:
            row["up_bytes"] += o.payload_bytes
            row["up_raw_bytes"] += self.model.raw_bytes if o.payload_bytes else 0
            row["decode_s"] += o.decode_s
            if o.uplink is not None:
                row["client_encode_s"] += o.uplink.encode_s
                row["client_decode_s"] += o.uplink.decode_s
            row["resyncs"] += o.kind == "resync"
            row["failures"] += o.kind == "error"
            if o.rejection is not None:
                up.log_rejection(o, server_round)
                row["rejected"] += 1
                row["rejected_" + o.rejection.code] += 1
        accepted = [up.to_plain_reply(o) for o in opened if o.kind == "update"]
        row["accepted"] = len(accepted)
        row["failures"] += max(0, row["clients"] - len(opened))  # no reply at all
        metrics = self._aggregate(
            server_round, accepted + [o.msg for o in opened if o.kind == "error"], spec, row
        )
        row["version"] = self.model.version
        self._global = _to_record(self.model.tensors)
        merged = MetricRecord(dict(metrics.items()) if metrics is not None else {})
        for key, value in metrics_of(row).items():
            merged[key] = value
        return self._global, merged

    def _aggregate(
        self, server_round: int, replies: list[Message], spec: CodecSpec, row: dict[str, Any]
    ) -> MetricRecord | None:
        """Inner aggregation and the coded model step; ``G`` unchanged on any failure."""
        if not any(m.has_content() for m in replies):
            log(WARNING, "nnc-fl round %s: no acceptable update; global model unchanged", server_round)
            return None
        try:
            agg, metrics = self.inner.aggregate_train(server_round, replies)
        except (InconsistentMessageReplies, AggregationError) as exc:
            log(
                ERROR,
                "nnc-fl round %s: inner aggregation failed (%s); global model unchanged",
                server_round,
                exc,
            )
            row["aggregate_failed"] = 1
            return None
        if agg is None:
            return metrics
        try:
            target = protocol.cast_like(_to_numpy(agg), self.model.tensors)
            check_finite(target)
        except (ValueError, TypeError, UpdateRejected) as exc:
            log(ERROR, "nnc-fl round %s: unusable aggregate (%s); global model unchanged", server_round, exc)
            row["aggregate_failed"] = 1
            return metrics
        enc, dec = self.model.advance(target, self.downlink_spec(server_round), exact=self.downlink_exact)
        row["encode_s"] += enc
        row["decode_s"] += dec
        return metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Let the inner strategy configure evaluation, then code the model per sampled node."""
        self._sync(arrays)
        messages = list(self.inner.configure_evaluate(server_round, arrays, config, grid))
        return self._encode_messages(messages, arrays, server_round, train=False)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Note which nodes now hold ``G_v``, strip the protocol record, aggregate with the inner strategy.

        Also finishes the round's bandwidth row (written to ``bandwidth_log``).
        """
        plain = []
        replies = list(replies)
        self._forget_silent_nodes(replies)
        for msg in replies:
            node = msg.metadata.src_node_id
            record = msg.content.get(protocol.RECORD_KEY) if msg.has_content() else None
            if record is None and not msg.has_error():
                plain.append(msg)  # not a coded exchange: nothing to learn
                continue
            try:
                ack = protocol.Uplink.from_config(record) if isinstance(record, ConfigRecord) else None
            except protocol.ProtocolError:
                ack = None
            ok = (
                ack is not None
                and ack.kind == protocol.ACK
                and (ack.version, ack.fingerprint) == (self.model.version, self.model.fingerprint)
            )
            self.model.mark(node, self.model.version if ok else None)
            if ack is not None and ack.kind == protocol.RESYNC:
                self.row(server_round)["resyncs"] += 1
                log(
                    WARNING,
                    "nnc-fl round %s: node %s asks for a keyframe (%s)",
                    server_round,
                    node,
                    ack.reason,
                )
                continue  # the node evaluated nothing; it gets a keyframe next time
            plain.append(up.strip_protocol(msg))
        self.row(server_round)
        self._flush()
        return self.inner.aggregate_evaluate(server_round, plain)
