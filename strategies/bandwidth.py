"""Per-round bandwidth and timing accounting of :class:`strategies.CompressedStrategy`.

One row per server round. Byte counts are the sizes of the coded model payloads that crossed the
wire (``len`` of each payload ``Array``'s data, counted once per message, so a delta sent to five
nodes counts five times). Flower's own framing, metrics and config records are not counted -- they
are the same with and without compression.

- ``up_bytes`` / ``up_raw_bytes``: train replies that carried a payload (rejected ones included:
  they crossed the wire); raw = 4 bytes x elements of the model the client coded.
- ``down_bytes`` / ``down_raw_bytes``: train instructions of the round (keyframes and deltas; a node
  that already holds the model gets no payload and counts 0; a chain of increments counts all its
  payloads against one model's raw size).
- ``keyframes`` / ``keyframe_bytes``: how many of those were exact keyframes (a node's first contact,
  or a node too far behind) and their bytes, included in ``down_bytes``.
- ``eval_down_bytes`` / ``eval_down_raw_bytes``: evaluate instructions of the same round, which ship
  the new model the same way. Total downlink of a round = ``down_bytes + eval_down_bytes``.
- ``resyncs``: train and evaluate replies asking for a keyframe (the node could not rebuild ``G_v``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

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
    "eval_down_bytes",
    "eval_down_raw_bytes",
    "keyframes",
    "keyframe_bytes",
    "deltas",
    "encode_s",
    "decode_s",
    "client_encode_s",
    "client_decode_s",
    "aggregate_failed",
    *(f"rejected_{code}" for code in REJECT_CODES),
)

#: Prefix of the bandwidth entries added to the round's train ``MetricRecord``.
METRIC_PREFIX = "nnc-fl."


def raw_nbytes(tensors: Mapping[str, np.ndarray]) -> int:
    """fp32 size of ``tensors``: 4 bytes per element."""
    return 4 * sum(int(np.asarray(t).size) for t in tensors.values())


def new_row(server_round: int, codec: str) -> dict[str, Any]:
    """An all-zero row for ``server_round``."""
    row: dict[str, Any] = {name: 0 for name in FIELDS}
    row.update(round=server_round, codec=codec, encode_s=0.0, decode_s=0.0)
    row.update(client_encode_s=0.0, client_decode_s=0.0)
    return row


def metrics_of(row: Mapping[str, Any]) -> dict[str, int | float]:
    """The numeric entries of ``row`` under :data:`METRIC_PREFIX` (for a ``MetricRecord``)."""
    return {
        METRIC_PREFIX + k: (float(v) if isinstance(v, float) else int(v))
        for k, v in row.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "round"
    }


class BandwidthLog:
    """Appends finished rows to a CSV (``.csv``) or JSON-lines (any other suffix) file.

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
            with self.path.open("w", newline="", encoding="utf-8") as fh:
                if self._csv:
                    csv.writer(fh).writerow(FIELDS)

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one finished row (no-op without a path)."""
        if self.path is None:
            return
        with self.path.open("a", newline="", encoding="utf-8") as fh:
            if self._csv:
                csv.writer(fh).writerow([row.get(name, "") for name in FIELDS])
            else:
                fh.write(json.dumps({name: row.get(name) for name in FIELDS}) + "\n")


__all__ = ["FIELDS", "METRIC_PREFIX", "BandwidthLog", "metrics_of", "new_row", "raw_nbytes"]
