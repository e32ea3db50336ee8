"""Trace and replay the server's direction and agreement checks (how false-rejection counts are measured).

``trace OUT.jsonl -- TASK [nnc-fl run args]`` runs one federation (``nnc-fl run``, in-process) with
:class:`nnc_fl.references.DirectionReference` and :class:`nnc_fl.references.AgreementReference`
recording every update's cosine with the direction (rows with ``cosine``) and its agreement with
the other updates of its round (rows with ``agreement``) but refusing nothing, so the run is the
one without the checks. ``replay OUT.jsonl ... [--check direction|agreement] [--spread S]`` feeds
the recorded values, round by round, through a fresh reference and lists what it would have
refused (neither reference depends on the checks' verdicts when nothing was refused, so this is
exactly what the check does on that run up to its first refusal)::

    python -m experiments.direction_trace trace /tmp/u14d-s0.jsonl -- uc14a --partition dirichlet --lr 0.01 --seed 0
    python -m experiments.direction_trace replay /tmp/*.jsonl --spread 3.5
    python -m experiments.direction_trace replay /tmp/*.jsonl --check agreement
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from nnc_fl import references

#: check -> (reference class, the field its rows carry)
CHECKS = {
    "direction": (references.DirectionReference, "cosine"),
    "agreement": (references.AgreementReference, "agreement"),
}


def trace(out: str, run_args: list[str]) -> int:
    """Run ``nnc-fl run RUN_ARGS`` with the direction and agreement checks recording to ``out``
    (JSON lines) and refusing nothing."""
    from experiments.cli import main

    saved = {cls: cls.judge for cls, _ in CHECKS.values()}
    with open(out, "w") as fh:

        def recorder(cls, field):
            judge, rounds = saved[cls], [0]

            def recording(self, nodes, values):
                rounds[0] += 1
                for node, value in zip(nodes, values, strict=True):
                    fh.write(json.dumps({"round": rounds[0], "node": int(node), field: value}) + "\n")
                fh.flush()
                judge(self, nodes, values)
                return [None] * len(nodes)

            return recording

        for cls, field in CHECKS.values():
            cls.judge = recorder(cls, field)
        try:
            return main(["run", *run_args])
        finally:
            for cls, judge in saved.items():
                cls.judge = judge


def replay(path: str, spread: float, check: str = "direction") -> list[tuple[int, int, str]]:
    """``(round, node, reason)`` of every update ``check`` at ``spread`` refuses on a trace."""
    cls, field = CHECKS[check]
    by_round: dict[int, list[dict]] = defaultdict(list)
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if field in row:
            by_round[row["round"]].append(row)
    reference = cls(spread)
    refused = []
    for r in sorted(by_round):
        rows = by_round[r]
        verdicts = reference.judge([row["node"] for row in rows], [row[field] for row in rows])
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
    p.add_argument("--check", choices=sorted(CHECKS), default="direction")
    args = p.parse_args(argv[1:] if argv[:1] == ["replay"] else argv)
    for path in args.traces:
        refused = replay(path, args.spread, args.check)
        print(f"{Path(path).name}: {len(refused)} refused" + "".join(f"\n  round {r} node {n}: {why}"
                                                                  for r, n, why in refused))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
