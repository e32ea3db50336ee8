"""Trace and replay the server's direction check (how the false-rejection counts are measured).

``trace OUT.jsonl -- TASK [nnc-fl run args]`` runs one federation (``nnc-fl run``, in-process) with
:class:`nnc_fl.validation.DirectionReference` recording every update's cosine with the direction
but refusing nothing, so the run is the one without the check. ``replay OUT.jsonl ... [--spread S]``
feeds the recorded cosines, round by round, through a fresh reference and lists what it would have
refused (the direction does not depend on the check's verdicts when nothing was refused, so this is
exactly what the check does on that run up to its first refusal)::

    python -m experiments.direction_trace trace /tmp/u14d-s0.jsonl -- uc14a --partition dirichlet --lr 0.01 --seed 0
    python -m experiments.direction_trace replay /tmp/*.jsonl --spread 3.5
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from nnc_fl import validation


def trace(out: str, run_args: list[str]) -> int:
    """Run ``nnc-fl run RUN_ARGS`` with the direction check recording to ``out`` (JSON lines)."""
    from experiments.cli import main

    judge = validation.DirectionReference.judge
    rounds = [0]
    with open(out, "w") as fh:

        def recording(self, nodes, cosines):
            rounds[0] += 1
            for node, c in zip(nodes, cosines, strict=True):
                fh.write(json.dumps({"round": rounds[0], "node": int(node), "cosine": c}) + "\n")
            fh.flush()
            judge(self, nodes, cosines)
            return [None] * len(nodes)

        validation.DirectionReference.judge = recording
        try:
            return main(["run", *run_args])
        finally:
            validation.DirectionReference.judge = judge


def replay(path: str, spread: float) -> list[tuple[int, int, str]]:
    """``(round, node, reason)`` of every update the check at ``spread`` refuses on a trace."""
    by_round: dict[int, list[dict]] = defaultdict(list)
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        by_round[row["round"]].append(row)
    reference = validation.DirectionReference(spread)
    refused = []
    for r in sorted(by_round):
        rows = by_round[r]
        verdicts = reference.judge([row["node"] for row in rows], [row["cosine"] for row in rows])
        refused += [(r, row["node"], v.reason) for row, v in zip(rows, verdicts, strict=True) if v is not None]
    return refused


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["trace"]:
        if len(argv) < 4 or argv[2] != "--":
            raise SystemExit("usage: direction_trace trace OUT.jsonl -- TASK [nnc-fl run args]")
        return trace(argv[1], argv[3:])
    p = argparse.ArgumentParser(prog="python -m experiments.direction_trace replay")
    p.add_argument("traces", nargs="+")
    p.add_argument("--spread", type=float, default=3.5)
    args = p.parse_args(argv[1:] if argv[:1] == ["replay"] else argv)
    for path in args.traces:
        refused = replay(path, args.spread)
        print(f"{Path(path).name}: {len(refused)} refused" + "".join(f"\n  round {r} node {n}: {why}"
                                                                  for r, n, why in refused))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
