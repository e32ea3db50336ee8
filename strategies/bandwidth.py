"""Per-round bandwidth and timing accounting of :class:`strategies.CompressedStrategy`.

One row per server round. Byte counts are the sizes of the coded model payloads that crossed the
wire (``len`` of each payload ``Array``'s data, counted once per message, so a delta sent to five
nodes counts five times). Flower's own framing, metrics and config records are not counted -- they
are the same with and without compression.

- ``up_bytes`` / ``up_raw_bytes``: train replies that carried a payload (rejected ones included:
  they crossed the wire); raw = 4 bytes x elements of the model the client coded.
- ``down_bytes`` / ``down_raw_bytes``: the models the server sent with train instructions
  (keyframes and deltas; a node that already holds the model gets no payload and counts 0; a chain
  of increments counts all its payloads against one model's raw size).
- ``keyframes`` / ``keyframe_bytes``: how many of those were keyframes (a node's first contact, or a
  node too far behind) and their bytes, included in ``down_bytes``; ``deltas``: how many were
  increments against a model the node holds.
- ``eval_down_bytes``, ``eval_down_raw_bytes``, ``eval_keyframes``, ``eval_keyframe_bytes``,
  ``eval_deltas``: the same
  for the models sent with evaluate instructions. The round's whole downlink is
  ``down_bytes + eval_down_bytes``.
- ``resyncs``: train and evaluate replies asking for a keyframe (the node could not rebuild ``G_v``).
- ``clipped`` / ``weights_capped``: accepted updates whose norm was clipped, or whose weighting
  metric was capped (see :class:`strategies.settings.ValidationSettings`).
- ``rejected_<code>``: refused updates by rejection code (:data:`nnc_fl.validation.REJECT_CODES`);
  ``rejected_nodes``: who was refused why, as ``node:code`` separated by ``;``.
- ``aggregate_failed``: 1 if the inner strategy failed or its aggregate could not be coded; the
  global model then stayed as it was.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nnc_fl import protocol
from nnc_fl.validation import REJECT_CODES

#: Columns of a bandwidth row, in file order.
FIELDS: tuple[str, ...] = (
    "round",
    "version",
    "codec",
    "clients",
    "accepted",
    "rejected",
    "resyncs",
    "failures",
    "up_bytes",
    "up_raw_bytes",
    "down_bytes",
    "down_raw_bytes",
    "keyframes",
    "keyframe_bytes",
    "deltas",
    "eval_down_bytes",
    "eval_down_raw_bytes",
    "eval_keyframes",
    "eval_keyframe_bytes",
    "eval_deltas",
    "encode_s",
    "decode_s",
    "client_encode_s",
    "client_decode_s",
    "clipped",
    "weights_capped",
    "aggregate_failed",
    *(f"rejected_{code}" for code in REJECT_CODES),
    "rejected_nodes",
)

#: Prefix of the bandwidth entries added to the round's train and evaluate ``MetricRecord``s.
METRIC_PREFIX = "nnc-fl."
#: The columns reported in the train metrics (the rest is in the row, at DEBUG and in the log file).
TRAIN_METRICS = ("up_bytes", "up_raw_bytes", "down_bytes", "down_raw_bytes", "keyframes", "accepted", "rejected")
#: The columns reported in the evaluate metrics.
EVALUATE_METRICS = ("eval_down_bytes", "eval_down_raw_bytes", "eval_keyframes")


class RoundStats:
    """One round's traffic and outcome: the arithmetic behind one bandwidth row (:data:`FIELDS`)."""

    def __init__(self, server_round: int, codec: str) -> None:
        self._row: dict[str, Any] = {name: 0 for name in FIELDS}
        self._row.update(round=server_round, codec=codec, rejected_nodes="")
        for name in ("encode_s", "decode_s", "client_encode_s", "client_decode_s"):
            self._row[name] = 0.0

    @property
    def round(self) -> int:
        """The server round."""
        return self._row["round"]

    def __getitem__(self, name: str) -> Any:
        return self._row[name]

    def as_row(self) -> dict[str, Any]:
        """The row as a plain dict, columns in :data:`FIELDS` order."""
        return dict(self._row)

    # -- events --------------------------------------------------------------------------------

    def sent(self, kind: str, sizes: list[int], raw_bytes: int, *, train: bool, encode_s: float) -> None:
        """A downlink message of ``kind`` with payloads of ``sizes`` bytes (``raw_bytes``: fp32 size
        of the model it delivers, 0 without payload) went to one node, to train or to evaluate."""
        prefix = "" if train else "eval_"
        nbytes = sum(sizes)
        self._row[prefix + "down_bytes"] += nbytes
        self._row[prefix + "down_raw_bytes"] += raw_bytes
        self._row[prefix + "keyframes"] += kind == protocol.KEYFRAME
        self._row[prefix + "keyframe_bytes"] += nbytes if kind == protocol.KEYFRAME else 0
        self._row[prefix + "deltas"] += kind == protocol.DELTA
        self._row["encode_s"] += encode_s

    def train_metrics(self) -> dict[str, int]:
        """The round's compact train metrics (the full row is in ``strategy.bandwidth``)."""
        return {METRIC_PREFIX + k: int(self._row[k]) for k in TRAIN_METRICS}

    def evaluate_metrics(self) -> dict[str, int]:
        """The round's compact evaluate metrics: what the evaluate messages carried."""
        return {METRIC_PREFIX + k: int(self._row[k]) for k in EVALUATE_METRICS}

    def line(self) -> str:
        """One compact line for the log."""
        r = self._row
        up = 100.0 * r["up_bytes"] / r["up_raw_bytes"] if r["up_raw_bytes"] else 0.0
        down = 100.0 * r["down_bytes"] / r["down_raw_bytes"] if r["down_raw_bytes"] else 0.0
        text = (f"nnc-fl round {r['round']}: up {r['up_bytes'] / 1e3:.1f} kB ({up:.2f} % of fp32) from "
                f"{r['accepted']}/{r['clients']} accepted, down {r['down_bytes'] / 1e3:.1f} kB ({down:.2f} %), "
                f"{r['keyframes']} keyframes")
        if r["eval_down_raw_bytes"]:
            text += f"; to evaluate {r['eval_down_bytes'] / 1e3:.1f} kB, {r['eval_keyframes']} keyframes"
        extras = [f"{r[k]} {k}" for k in ("rejected", "clipped", "weights_capped", "resyncs", "failures") if r[k]]
        if r["aggregate_failed"]:
            extras.append("aggregation failed")
        return text + (", " + ", ".join(extras) if extras else "")

    def configured(self, clients: int) -> None:
        """``clients`` nodes were asked to train."""
        self._row["clients"] = clients

    def replied(self, opened: Iterable[Any], raw_bytes: int) -> None:
        """The round's train replies after validation (``strategies.uplink.Opened``); ``raw_bytes``
        is the fp32 size of the model, the raw size of every update that carried a payload."""
        opened = list(opened)
        r = self._row
        for o in opened:
            r["up_bytes"] += o.payload_bytes
            r["up_raw_bytes"] += raw_bytes if o.payload_bytes else 0
            r["decode_s"] += o.decode_s
            if o.uplink is not None:
                r["client_encode_s"] += o.uplink.encode_s
                r["client_decode_s"] += o.uplink.decode_s
            r["resyncs"] += o.kind == "resync"
            r["failures"] += o.kind == "error"
            r["clipped"] += o.clipped and o.kind == "update"
            r["weights_capped"] += o.weight_capped and o.kind == "update"
            if o.rejection is not None:
                r["rejected"] += 1
                r["rejected_" + o.rejection.code] += 1
                r["rejected_nodes"] += f"{';' if r['rejected_nodes'] else ''}{o.node_id}:{o.rejection.code}"
        r["accepted"] = sum(o.kind == "update" for o in opened)
        r["failures"] += max(0, r["clients"] - len(opened))  # no reply at all

    def resynced(self) -> None:
        """An evaluate reply asked for a keyframe."""
        self._row["resyncs"] += 1

    def aggregate_failed(self) -> None:
        """The inner strategy failed, or its aggregate was unusable: the model did not move."""
        self._row["aggregate_failed"] = 1

    def advanced(self, encode_s: float, decode_s: float) -> None:
        """The server coded the global increment in ``encode_s`` and decoded it in ``decode_s``."""
        self._row["encode_s"] += encode_s
        self._row["decode_s"] += decode_s

    def closed(self, version: int) -> None:
        """The round's aggregation ended with the model at ``version``."""
        self._row["version"] = version


class BandwidthLog:
    """The rows so far as a CSV (``.csv``) or JSON-lines (any other suffix) file, rewritten whole
    (atomically: a temporary file, then a rename) whenever a row changes, so the file is complete
    up to the last event even if the ServerApp dies mid-round.

    Parameters
    ----------
    path : str or Path or None
        Target file; its parent directory is created. ``None`` keeps rows in memory only. An
        existing file is replaced when the log is created.
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else Path(path)
        self._csv = self.path is not None and self.path.suffix.lower() == ".csv"
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.write_all([])

    def write_all(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the file's rows with ``rows`` (no-op without a path)."""
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            if self._csv:
                writer = csv.writer(fh)
                writer.writerow(FIELDS)
                writer.writerows([row.get(name, "") for name in FIELDS] for row in rows)
            else:
                fh.writelines(json.dumps({name: row.get(name) for name in FIELDS}) + "\n" for row in rows)
        os.replace(tmp, self.path)


__all__ = ["FIELDS", "METRIC_PREFIX", "BandwidthLog", "RoundStats"]
