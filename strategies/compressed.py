"""``CompressedStrategy``: compress every model transfer of any Flower strategy."""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Iterable
from dataclasses import replace
from logging import DEBUG, ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from nnc_fl import protocol
from nnc_fl.codecs import ParamValue
from nnc_fl.fingerprint import FINGERPRINT_SIZE
from nnc_fl.protocol import CodecSpec
from nnc_fl.updates import cast_like
from nnc_fl.validation import REJECT_CODES, UpdateRejected, check_finite, check_nonnegative

from . import uplink as up
from .bandwidth import BandwidthLog, RoundStats
from .server_model import ServerModel
from .settings import Budget, BudgetSchedule, CodecSettings, DownlinkSettings, ValidationSettings, describe, settings_of

#: What a reply says when its ClientApp tried to read the coded model without nnc_mod.
_NO_MOD_SIGNS = (protocol.STYPE, "Unsupported serialization type")
_NO_MOD_HELP = "add nnc_mod to its ClientApp: `from clients import nnc_mod; app = ClientApp(mods=[nnc_mod])`"


def _lacks_mod(msg: Message) -> bool:
    """Whether an error reply shows a ClientApp that read the coded model without ``nnc_mod``."""
    return msg.has_error() and any(sign in str(msg.error.reason) for sign in _NO_MOD_SIGNS)


def _budget_text(budget: Budget | BudgetSchedule, rounds: int) -> str:
    if isinstance(budget, BudgetSchedule):
        mean = budget.mean(max(1, rounds))
        bytes_ = isinstance(budget.smallest, int)
        return f"schedule {budget} (mean {f'{mean:.0f} bytes' if bytes_ else f'{100.0 * mean:.2f} %'})"
    return f"{budget} bytes" if isinstance(budget, int) else f"{100.0 * budget:.2f} %"


def _tensors(arrays: ArrayRecord):
    return protocol.tensors_of(arrays)


def _record(tensors) -> ArrayRecord:
    return protocol.to_record(tensors, ArrayRecord, Array)


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
    codec : str or CodecSettings or None
        Name of a codec registered in :mod:`nnc_fl.codecs` (``None`` means ``"fp32"``: uncompressed,
        same code path), or a :class:`~strategies.settings.CodecSettings` (with a per-round schedule).
    codec_params : mapping, optional
        The named codec's parameters, e.g. ``{"rel_step": 3.0}`` (with a codec name only); without
        them, :data:`strategies.settings.DEFAULT_PARAMS` (for ``"nnc"``:
        ``rel_step=2.0, float_lossless=True, schema_bound=True, lossless_bits=8``), and for the updates only
        :data:`strategies.settings.DEFAULT_UPLINK_PARAMS` (``rel_to="update"``: one step per update;
        ``rd_lambda=0.02``: light rate-distortion rounding).
    downlink : DownlinkSettings, optional
        How the global model reaches the nodes (increment rate, exact coding, error feedback,
        chains, shared initial model).
    validation : ValidationSettings, optional
        What an update must pass before it may touch the global model.
    bandwidth_log : str or Path or None
        Write one row per round to this CSV (``.csv``) or JSON-lines file.
    target_uplink : float or int or BudgetSchedule, optional
        Rate control: a budget per update, a float in (0, 1) as a share of its fp32 size (e.g.
        ``0.005``) or an int as bytes; clients then code every update at the finest common multiple
        of the codec's steps that fits (see :class:`~strategies.settings.CodecSettings`). A
        :class:`~strategies.settings.BudgetSchedule` sets it per round. With a ``CodecSettings``,
        give it there instead.
    target_downlink : float or int, optional
        The same for the global increments (see :class:`~strategies.settings.DownlinkSettings`;
        with a ``DownlinkSettings``, give it there instead as ``target``).
    """

    def __init__(
        self,
        inner: Strategy,
        codec: str | CodecSettings | None = "nnc",
        codec_params: dict[str, ParamValue] | None = None,
        downlink: DownlinkSettings | None = None,
        validation: ValidationSettings | None = None,
        bandwidth_log: str | Path | None = None,
        *,
        target_uplink: Budget | BudgetSchedule | None = None,
        target_downlink: Budget | None = None,
    ) -> None:
        if not isinstance(inner, Strategy):
            raise TypeError(f"inner must be a flwr Strategy, got {type(inner).__name__}")
        if isinstance(codec, CodecSettings):
            if codec_params is not None:
                raise ValueError("give codec parameters inside CodecSettings, not also as codec_params")
            if target_uplink is not None:
                raise ValueError("give target_uplink inside CodecSettings, not also as an argument")
        else:
            codec = CodecSettings("fp32" if codec is None else codec, codec_params, target_uplink=target_uplink)
        if target_downlink is not None:
            if downlink is not None:
                raise ValueError("give target_downlink inside DownlinkSettings (target=...), not also as an argument")
            downlink = DownlinkSettings(target=target_downlink)
        self.inner = inner
        self.codec: CodecSettings = codec
        self.downlink: DownlinkSettings = settings_of(DownlinkSettings, downlink, "downlink")
        self.validation: ValidationSettings = settings_of(ValidationSettings, validation, "validation")
        self.downlink.check_codec(self.codec.spec(1, target=False))  # fail now on bad downlink parameters
        self._budgets_checked = False
        self.model = ServerModel(self.downlink)
        self.checks = up.UplinkChecks(self.validation, getattr(inner, "weighted_by_key", None))
        self._rounds: list[RoundStats] = []
        self._log = BandwidthLog(bandwidth_log)
        self._global: ArrayRecord | None = None
        self._round_spec: dict[int, CodecSpec] = {}
        self._nonces: dict[int, bytes] = {}  # node -> nonce of the train message sent to it this round
        self._accepted_any = False  # whether any node has ever sent a usable update

    # -- pass-through --------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        """Attributes this wrapper does not define come from the inner strategy."""
        inner = self.__dict__.get("inner")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)

    def __repr__(self) -> str:
        """Name the wrapper, its codec and the inner strategy."""
        targets = "".join(f", {k}={v!r}" for k, v in (("target_uplink", self.codec.target_uplink),
                                                        ("target_downlink", self.downlink.target)) if v is not None)
        return (f"CompressedStrategy({self.inner!r}, codec={self.codec.name!r}, params={dict(self.codec.params)}"
                f"{targets})")

    def summary(self) -> None:
        """Log every compression setting, then the inner strategy's summary."""
        log(INFO, "\t├──> Compression (nnc-fl):")
        log(INFO, "\t│\t├── Codec: %s", describe(self.codec))
        log(INFO, "\t│\t├── Downlink: %s", describe(self.downlink))
        log(INFO, "\t│\t├── Validation: %s", describe(self.validation))
        log(INFO, "\t│\t└── Bandwidth log: %s", self._log.path or "-")
        self.inner.summary()

    def start(self, grid: Grid, initial_arrays: ArrayRecord, *args: Any, **kwargs: Any):
        """Flower's :meth:`Strategy.start`, then one summary line of the run's traffic and rejections."""
        result = super().start(grid, initial_arrays, *args, **kwargs)
        log(INFO, "%s", self.run_summary())
        return result

    def run_summary(self) -> str:
        """The whole run in one line: bytes up and down and their share of fp32, keyframes, refusals."""
        rows = self.bandwidth
        total = {k: sum(r[k] for r in rows) for k in ("up_bytes", "up_raw_bytes", "down_bytes", "down_raw_bytes",
                                                      "eval_down_bytes", "eval_down_raw_bytes", "keyframes",
                                                      "eval_keyframes", "rejected", "clipped", "resyncs")}
        down = total["down_bytes"] + total["eval_down_bytes"]
        down_raw = total["down_raw_bytes"] + total["eval_down_raw_bytes"]
        share = lambda a, b: f"{100.0 * a / b:.2f} %" if b else "-"  # noqa: E731
        reasons = {code: sum(r[f"rejected_{code}"] for r in rows) for code in REJECT_CODES}
        why = ", ".join(f"{n} {c}" for c, n in reasons.items() if n)
        up = share(total["up_bytes"], total["up_raw_bytes"])
        if self.codec.target_uplink is not None:
            up += f", budget {_budget_text(self.codec.target_uplink, len(rows))}"
        return (f"nnc-fl: {len(rows)} rounds, up {total['up_bytes'] / 1e6:.3f} MB ({up} of fp32), "
                f"down {down / 1e6:.3f} MB ({share(down, down_raw)}), "
                f"{total['keyframes'] + total['eval_keyframes']} keyframes, {total['rejected']} rejected"
                + (f" ({why})" if why else "") + f", {total['clipped']} clipped, {total['resyncs']} resyncs")

    # -- per-round bookkeeping -------------------------------------------------------------------

    @property
    def bandwidth(self) -> list[dict[str, Any]]:
        """One dict per round (see :mod:`strategies.bandwidth` for the columns)."""
        return [stats.as_row() for stats in self._rounds]

    def spec_for(self, server_round: int) -> CodecSpec:
        """The codec (name and parameters) of the updates of ``server_round``: as its training
        messages carried it once they are sent (with the default parameters, the step follows the
        share of connected nodes the round trains: :func:`strategies.settings.participation_rel_step`),
        else as the settings give it for a round that trains every node."""
        spec = self._round_spec.get(server_round)
        return spec if spec is not None else self.codec.spec(server_round)

    def downlink_spec(self, server_round: int) -> CodecSpec:
        """The codec that codes the global increment of ``server_round`` (the round's codec
        without the uplink budget, the downlink parameters and budget over it)."""
        return self.downlink.spec(self.codec.spec(server_round, target=False))

    def stats(self, server_round: int) -> RoundStats:
        """The statistics of ``server_round`` (created on first use)."""
        if self._rounds and self._rounds[-1].round == server_round:
            return self._rounds[-1]
        stats = RoundStats(server_round, self.spec_for(server_round).name)
        self._rounds.append(stats)
        return stats

    def _flush(self) -> None:
        """Write the bandwidth log as it stands (after each aggregation)."""
        self._log.write_all(self.bandwidth)

    def _sync(self, arrays: ArrayRecord) -> None:
        """Make ``arrays`` the global model ``G_v`` (a new version unless it already is)."""
        if arrays is self._global:
            return
        tensors = _tensors(arrays)
        if not self.model.matches(tensors):
            self.model.adopt(tensors, self.downlink_spec(max(1, len(self._rounds))))
            self.checks.model_replaced()
            log(INFO, "nnc-fl: new global model v%s from outside", self.model.version)
        if not self._budgets_checked:
            self._check_budgets(max(1, len(self._rounds)))
            self._budgets_checked = True
        self._global = arrays

    def _check_budgets(self, server_round: int) -> None:
        """Refuse (``ValueError``) a budget below the smallest stream this model's updates can have:
        its header alone (every tensor zero), which no step can go below."""
        tensors = self.model.tensors
        zeros = {n: np.zeros_like(t) for n, t in tensors.items()}
        checks = (
            ("target_uplink", self.codec.smallest_budget(), self.codec.spec(server_round, target=False),
             protocol.binding(b"\0" * FINGERPRINT_SIZE, b"\0" * protocol.NONCE_SIZE)),
            ("target_downlink", self.downlink.target, self.codec.spec(server_round, target=False).merged(
                self.downlink.params), b"\0" * FINGERPRINT_SIZE),
        )
        for what, budget, spec, fp in checks:
            if budget is None:
                continue
            floor = len(spec.make().encode(zeros, fingerprint=fp))
            allowed = budget if isinstance(budget, int) else math.floor(budget * self.model.raw_bytes)
            if allowed < floor:
                raise ValueError(f"{what}={budget!r} allows {allowed} bytes per message, below the {floor} bytes of "
                                 f"the smallest stream of this model (every tensor zero)")

    def _encode_messages(
        self, messages: Iterable[Message], arrays: ArrayRecord, server_round: int, train: bool
    ) -> list[Message]:
        """Replace the plain model in each outgoing message by its downlink payload."""
        stats = self.stats(server_round)
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
            node = msg.metadata.dst_node_id
            nonce = secrets.token_bytes(protocol.NONCE_SIZE)
            if train:
                self._nonces[node] = nonce
            down, payloads, seconds = self.model.downlink(node, spec, keys[0], server_round, nonce)
            if self.codec.residual_max_age is not None:
                down = replace(down, residual_max_age=self.codec.residual_max_age)
            if train and self.codec.train_from_residual:
                down = replace(down, train_from_residual=True)
            datas = [p.data for p in payloads] or [b""]
            content = RecordDict(dict(msg.content.items()))
            content[keys[0]] = ArrayRecord(
                {protocol.chain_key(i): Array(**protocol.pack_payload(d)) for i, d in enumerate(datas)}
            )
            content[protocol.RECORD_KEY] = ConfigRecord(down.to_config())
            msg.content = content
            # raw: what the node receives, the model once (a chain still delivers one model)
            raw = payloads[0].raw_bytes if payloads else 0
            stats.sent(down.kind, [len(d) for d in datas], raw, train=train, encode_s=seconds)
            out.append(msg)
        return out

    # -- Strategy API ----------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Let the inner strategy configure the round, then code the model per sampled node.

        What each node gets (nothing, a chain of increments or a keyframe) is the server model's
        decision (:meth:`strategies.server_model.ServerModel.downlink`). Codec name and parameters
        travel in the protocol ConfigRecord.
        """
        self._sync(arrays)
        self.spec_for(server_round).make()  # a schedule giving bad parameters fails here, before anything is sent
        nodes = list(grid.get_node_ids())
        self.model.forget_absent(nodes)
        self._nonces.clear()
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        share = min(1.0, len(messages) / len(nodes)) if messages and nodes else None
        self._round_spec[server_round] = self.codec.spec(server_round, share=share)
        out = self._encode_messages(messages, arrays, server_round, train=True)
        self.stats(server_round).configured(len(out))
        return out

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate and reconstruct the replies, aggregate with the inner strategy, code the increment.

        Refused updates are logged with their reason and counted; the round goes on with the rest.
        If nothing is left, or the inner strategy fails on the replies, ``G`` stays unchanged.
        Nothing a client sends raises out of here. Returns ``G_{v+1}`` and the inner metrics plus
        the round's bandwidth entries.
        """
        stats = self.stats(server_round)
        spec = self.spec_for(server_round)
        codec = spec.make()
        replies = list(replies)
        self.model.went_silent(m.metadata.src_node_id for m in replies)
        opened = self.checks.open_all(replies, self.model, codec, self._nonces, threads=os.cpu_count() or 1)
        self._nonces.clear()
        self.checks.review(opened, self.model)
        self._diagnose_missing_mod([o.msg for o in opened if o.kind == "error"], server_round, len(replies))
        up.log_rejections(opened, server_round)
        stats.replied(opened, self.model.raw_bytes)
        accepted = [up.to_plain_reply(o) for o in opened if o.kind == "update"]
        self._accepted_any |= bool(accepted)
        metrics = self._aggregate(server_round, accepted + [o.msg for o in opened if o.kind == "error"], stats)
        stats.closed(self.model.version)
        self._global = _record(self.model.tensors)
        merged = MetricRecord(dict(metrics.items()) if metrics is not None else {})
        for key, value in stats.train_metrics().items():
            merged[key] = value
        self._flush()
        return self._global, merged

    def _diagnose_missing_mod(self, errors: list[Message], server_round: int, replies: int) -> None:
        """Say so when replies show ClientApps without ``nnc_mod``; stop the run if no node has it."""
        lacking = [m for m in errors if _lacks_mod(m)]
        if not lacking:
            return
        nodes = ", ".join(str(m.metadata.src_node_id) for m in lacking[:10])
        log(ERROR, "nnc-fl round %s: %d node(s) (%s) cannot read the compressed model: %s",
            server_round, len(lacking), nodes, _NO_MOD_HELP)
        if len(lacking) == replies and not self._accepted_any:
            raise RuntimeError(f"no node of the federation runs nnc_mod, so none can read the compressed model: "
                               f"{_NO_MOD_HELP}")

    def _aggregate(self, server_round: int, replies: list[Message], stats: RoundStats) -> MetricRecord | None:
        """Inner aggregation and the coded model step; ``G`` unchanged on any failure."""
        if not any(m.has_content() for m in replies):
            log(WARNING, "nnc-fl round %s: no acceptable update; global model unchanged", server_round)
            return None
        try:
            agg, metrics = self.inner.aggregate_train(server_round, replies)
        except Exception as exc:  # noqa: BLE001 -- whatever replies make the inner strategy fail, the run goes on
            log(ERROR, "nnc-fl round %s: inner aggregation failed (%s: %s); global model unchanged",
                server_round, type(exc).__name__, protocol.printable(str(exc), 300))
            stats.aggregate_failed()
            return None
        if agg is None:
            return metrics
        try:
            target = cast_like(_tensors(agg), self.model.tensors)
            check_finite(target)
            check_nonnegative(target, self.validation.nonnegative)
            coded = self.model.advance(target, self.downlink_spec(server_round))
        except (ValueError, TypeError, UpdateRejected) as exc:
            log(ERROR, "nnc-fl round %s: unusable aggregate (%s); global model unchanged",
                server_round, protocol.printable(str(exc), 300))
            stats.aggregate_failed()
            return metrics
        stats.advanced(coded.encode_s, coded.decode_s)
        return metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Let the inner strategy configure evaluation, then code the model per sampled node."""
        self._sync(arrays)
        self.model.forget_absent(grid.get_node_ids())
        messages = list(self.inner.configure_evaluate(server_round, arrays, config, grid))
        return self._encode_messages(messages, arrays, server_round, train=False)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Note which nodes now hold ``G_v``, strip the protocol record, aggregate with the inner strategy.

        Also finishes the round's bandwidth row (written to ``bandwidth_log``).
        """
        plain = []
        replies = list(replies)
        self.model.went_silent(m.metadata.src_node_id for m in replies)
        self._diagnose_missing_mod([m for m in replies if m.has_error()], server_round, len(replies))
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
            if ack is not None and ack.kind == protocol.ACK:
                self.model.acknowledged(node, ack.version, ack.fingerprint)
            else:
                self.model.lost(node)
            if ack is not None and ack.kind == protocol.RESYNC:
                self.stats(server_round).resynced()
                log(WARNING, "nnc-fl round %s: node %s asks for a keyframe (%s)", server_round, node,
                    protocol.printable(ack.reason))
                continue  # the node evaluated nothing; it gets a keyframe next time
            plain.append(up.strip_protocol(msg))
        stats = self.stats(server_round)
        self._flush()
        log(INFO, "%s", stats.line())
        log(DEBUG, "nnc-fl round %s: %s", server_round, stats.as_row())
        try:
            metrics = self.inner.aggregate_evaluate(server_round, plain)
        except Exception as exc:  # noqa: BLE001 -- a client's evaluate reply must not stop the run
            log(ERROR, "nnc-fl round %s: inner evaluate aggregation failed (%s: %s)",
                server_round, type(exc).__name__, protocol.printable(str(exc), 300))
            metrics = None
        if not stats["eval_down_raw_bytes"]:
            return metrics  # no model went out with evaluate instructions
        merged = MetricRecord(dict(metrics.items()) if metrics is not None else {})
        for key, value in stats.evaluate_metrics().items():
            merged[key] = value
        return merged
