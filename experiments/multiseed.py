"""Several seeds per codec: run them (optionally in parallel processes), aggregate, re-aggregate.

A *group* is a set of runs that differ only in the federation's seed (same task, data, federation,
rounds and codec). :func:`aggregate` summarises a group from its runs' ``summary.json`` /
``rounds.json``: for each metric of :data:`SEED_METRICS` the per-seed values, their mean and their
sample standard deviation (``ddof=1``; 0 for a single seed). Differences to the ``fp32`` reference
are paired by seed. :func:`run_many` runs a list of configurations, in this process or in up to
``jobs`` worker processes; every run pins torch to one thread, so the bytes and accuracies of a run
do not depend on ``jobs`` (or on which worker ran it). ``nnc-fl report DIR...``
(:func:`load_runs` + :func:`write_aggregate`) re-aggregates existing run folders without rerunning.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Per-run numbers aggregated over seeds (``best_accuracy``: the best test accuracy of any round).
SEED_METRICS = (
    "final_accuracy",
    "last3_accuracy",
    "best_accuracy",
    "up_pct",
    "down_pct",
    "down_pct_increments",
    "keyframes",
    "rejected",
    "up_bytes",
    "down_bytes",
    "total_bytes",
)
#: Accuracy metrics (fractions in the files, percent in the tables).
ACCURACY_METRICS = ("final_accuracy", "last3_accuracy", "best_accuracy")

Out = dict[str, Any]  # a run: {"config", "rounds", "summary"} as runner.run returns and writes it


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def slug(text: str) -> str:
    """A folder name for a run name: alphanumerics and ``.-_`` kept, anything else ``-``."""
    return "".join(c if c.isalnum() or c in ".-_" else "-" for c in text).strip("-")


def run_one(cfg, out_dir: Path | None, progress: Callable | None = None) -> Out:
    """One run on one torch thread (so the numbers do not depend on the process that runs it)."""
    from .runner import run
    from .training import torch_threads

    with torch_threads(1):
        return run(cfg, out_dir, progress)


#: Modules the worker processes' fork server imports once: the run's own, the digits loader, and
#: the part of torch its optimisers import lazily on first use.
WORKER_PRELOAD = ("experiments.runner", "experiments.multiseed", "sklearn.datasets", "torch._dynamo")


def _worker_init() -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    import torch

    torch.set_num_threads(1)
    try:
        from .cli import _quiet_flower

        _quiet_flower()
    except ImportError:  # pragma: no cover - Flower's logger moved
        pass


def _worker(cfg, out_dir: Path | None) -> Out:
    return run_one(cfg, out_dir)


def _with_folder(out: Out, folder: Path | None) -> Out:
    return {**out, "folder": "" if folder is None else str(folder)}


def run_many(
    tasks: Sequence[tuple[Any, Path | None]],
    jobs: int = 1,
    run_in_process: Callable[[Any, Path | None], Out] | None = None,
    done: Callable[[int, Out], None] | None = None,
) -> list[Out]:
    """Run ``(config, out_dir)`` tasks; return their outputs in task order.

    ``jobs == 1`` runs them one after the other in this process (with ``run_in_process``, default
    :func:`run_one`); ``jobs > 1`` in up to ``jobs`` worker processes (forked from a clean fork server,
    so no thread pool is inherited), each with one torch thread. ``done(index, out)`` is called as runs finish.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    outs: list[Out | None] = [None] * len(tasks)
    if jobs == 1 or len(tasks) <= 1:
        runner = run_in_process or run_one
        for i, (cfg, out_dir) in enumerate(tasks):
            outs[i] = _with_folder(runner(cfg, out_dir), out_dir)
            if done is not None:
                done(i, outs[i])
        return outs  # type: ignore[return-value]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # forkserver: every worker is forked from one clean single-threaded server process (no thread
    # pool inherited, unlike fork) that imported the heavy modules once (unlike spawn, ~10 s each)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WORKER_PRELOAD))
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=context, initializer=_worker_init) as pool:
        futures = {pool.submit(_worker, cfg, out_dir): i for i, (cfg, out_dir) in enumerate(tasks)}
        for future in as_completed(futures):
            i = futures[future]
            outs[i] = _with_folder(future.result(), tasks[i][1])
            if done is not None:
                done(i, outs[i])
    return outs  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Loading existing runs
# --------------------------------------------------------------------------------------------


def load_run(folder: str | Path) -> Out:
    """A run folder written by :func:`experiments.runner.write_run`, as ``run`` returned it."""
    folder = Path(folder)
    return {
        "config": json.loads((folder / "config.json").read_text()),
        "rounds": json.loads((folder / "rounds.json").read_text()),
        "summary": json.loads((folder / "summary.json").read_text()),
        "folder": str(folder),
    }


def find_run_folders(dirs: Iterable[str | Path]) -> list[Path]:
    """Every folder under ``dirs`` (themselves included) holding a run: summary, rounds and config."""
    found: list[Path] = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise ValueError(f"{d} is not a folder")
        for summary in sorted(d.rglob("summary.json")):
            folder = summary.parent
            if (folder / "rounds.json").is_file() and (folder / "config.json").is_file() and folder not in found:
                found.append(folder)
    return found


def load_runs(dirs: Iterable[str | Path]) -> list[Out]:
    """The runs under ``dirs`` (see :func:`find_run_folders`); ``ValueError`` if there are none."""
    dirs = list(dirs)
    folders = find_run_folders(dirs)
    if not folders:
        raise ValueError(f"no run folders (summary.json + rounds.json + config.json) under {', '.join(map(str, dirs))}")
    return [load_run(f) for f in folders]


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


def seed_of(out: Out) -> int:
    return int(out["config"]["federation"]["seed"])


def group_key(out: Out) -> str:
    """What runs of one group share: the whole configuration but the seed (and the backend)."""
    cfg = json.loads(json.dumps(out["config"], default=str))
    cfg["federation"].pop("seed", None)
    cfg.pop("backend", None)
    return json.dumps(cfg, sort_keys=True)


def group_runs(outs: Iterable[Out]) -> list[list[Out]]:
    """Runs grouped by :func:`group_key`, groups in order of first appearance, runs by seed.

    ``ValueError`` if a group holds one seed twice (two copies of the same run)."""
    groups: dict[str, list[Out]] = {}
    for o in outs:
        groups.setdefault(group_key(o), []).append(o)
    result = []
    for runs in groups.values():
        runs = sorted(runs, key=seed_of)
        seeds = [seed_of(o) for o in runs]
        if len(set(seeds)) != len(seeds):
            where = ", ".join(str(o.get("folder", "?")) for o in runs)
            raise ValueError(f"{runs[0]['summary']['name']}: the same seed occurs twice ({where})")
        result.append(runs)
    return result


def best_accuracy(out: Out) -> float:
    """The best test accuracy of any trained round (``summary['best_accuracy']`` if present)."""
    if "best_accuracy" in out["summary"]:
        return float(out["summary"]["best_accuracy"])
    trained = [r["test_accuracy"] for r in out["rounds"] if r["round"] > 0]
    return float(max(trained)) if trained else float("nan")


def metric_value(out: Out, metric: str) -> float:
    return best_accuracy(out) if metric == "best_accuracy" else float(out["summary"][metric])


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0.0 for one value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def aggregate(runs: Sequence[Out], reference: Sequence[Out] | None = None) -> dict[str, Any]:
    """Mean and standard deviation over the seeds of one group, for each of :data:`SEED_METRICS`.

    With ``reference`` (the fp32 group), ``delta_<accuracy metric>`` holds the paired differences
    ``run - reference`` of the seeds both groups have.
    """
    s0 = runs[0]["summary"]
    agg: dict[str, Any] = {
        "name": s0["name"],
        "codec": s0["codec"],
        "codec_params": s0.get("codec_params", {}),
        "task": s0["task"],
        "data_source": s0["data_source"],
        "parameters": s0["parameters"],
        "rounds": s0["rounds"],
        "seeds": [seed_of(o) for o in runs],
        "n": len(runs),
        "folders": [o.get("folder", "") for o in runs],
        "metrics": {},
    }
    for metric in SEED_METRICS:
        values = [metric_value(o, metric) for o in runs]
        mean, std = mean_std(values)
        agg["metrics"][metric] = {"mean": mean, "std": std, "values": values}
    if reference is not None:
        ref = {seed_of(o): o for o in reference}
        paired = [o for o in runs if seed_of(o) in ref]
        for metric in ACCURACY_METRICS:
            diffs = [metric_value(o, metric) - metric_value(ref[seed_of(o)], metric) for o in paired]
            mean, std = mean_std(diffs)
            agg["metrics"][f"delta_{metric}"] = {
                "mean": mean, "std": std, "values": diffs, "seeds": [seed_of(o) for o in paired],
            }
    return agg


def aggregate_groups(groups: Sequence[Sequence[Out]], reference: str = "fp32") -> list[dict[str, Any]]:
    """:func:`aggregate` of each group, paired against the first group whose codec is ``reference``."""
    ref = next((g for g in groups if g[0]["summary"]["codec"] == reference), None)
    return [aggregate(g, ref) for g in groups]


def _pm(stat: dict[str, float], scale: float = 1.0, digits: int = 2, sign: bool = False) -> str:
    mean, std = scale * stat["mean"], scale * stat["std"]
    if math.isnan(mean):
        return ""
    return f"{mean:{'+' if sign else ''}.{digits}f} ± {std:.{digits}f}"


def aggregate_table(aggs: Sequence[dict[str, Any]]) -> str:
    """Markdown table, one row per group: mean ± standard deviation over the seeds."""
    lines = [
        "| codec | seeds | final acc. (%) | Δ final vs fp32 (pp) | last-3 acc. (%) | Δ last-3 (pp) | best acc. (%) "
        "| uplink (% of fp32) | downlink (% of fp32) | downlink increments (%) | keyframes | rejected | total MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in aggs:
        m = a["metrics"]
        none = {"mean": float("nan"), "std": float("nan")}
        lines.append(
            f"| {a['name']} | {a['n']} | {_pm(m['final_accuracy'], 100)} | "
            f"{_pm(m.get('delta_final_accuracy', none), 100, sign=True)} | {_pm(m['last3_accuracy'], 100)} | "
            f"{_pm(m.get('delta_last3_accuracy', none), 100, sign=True)} | {_pm(m['best_accuracy'], 100)} | "
            f"{_pm(m['up_pct'], digits=3)} | {_pm(m['down_pct'], digits=3)} | "
            f"{_pm(m['down_pct_increments'], digits=3)} | {_pm(m['keyframes'], digits=1)} | "
            f"{_pm(m['rejected'], digits=1)} | {_pm(m['total_bytes'], 1e-6, digits=3)} |"
        )
    return "\n".join(lines)


#: Accuracy levels of the bytes-to-accuracy table: pp below the reference's mean final accuracy.
REACH_BELOW_REFERENCE = (10.0, 5.0, 2.0, 1.0, 0.5)


def bytes_to_reach(out: Out, accuracy: float) -> float | None:
    """Bytes sent up and down until the end of the first trained round whose test accuracy is at least
    ``accuracy`` (a fraction); None if no round of the run reaches it."""
    total = 0.0
    for r in out["rounds"]:
        total += r["up_bytes"] + r["down_bytes"]
        if r["round"] > 0 and r["test_accuracy"] >= accuracy:
            return total
    return None


def reach_levels(groups: Sequence[Sequence[Out]], reference: str = "fp32") -> list[float]:
    """The accuracy levels (fractions) of :func:`reach_table`: :data:`REACH_BELOW_REFERENCE` below the
    mean final accuracy of the ``reference`` group; none without that group."""
    ref = next((g for g in groups if g[0]["summary"]["codec"] == reference), None)
    if ref is None:
        return []
    top = mean_std([metric_value(o, "final_accuracy") for o in ref])[0]
    return [top - pp / 100 for pp in REACH_BELOW_REFERENCE]


def reach_stats(group: Sequence[Out], levels: Sequence[float]) -> list[dict[str, Any]]:
    """Per level: mean and std of the bytes to reach it over the seeds that reach it, and how many do."""
    stats = []
    for level in levels:
        reached = [b for b in (bytes_to_reach(o, level) for o in group) if b is not None]
        mean, std = mean_std(reached)
        stats.append({"accuracy": level, "mean": mean, "std": std, "reached": len(reached), "n": len(group),
                      "values": reached})
    return stats


def reach_table(aggs: Sequence[dict[str, Any]], levels: Sequence[float]) -> str:
    """Markdown table: per group (its ``bytes_to_reach``, from :func:`reach_stats`) and level, the MB
    (up + down) until a round first reaches the level, mean ± std over the seeds that reach it, with
    how many of the seeds do."""
    if not levels:
        return ""
    head = " | ".join(f"{100 * lv:.2f} % ({pp:g} pp below)" for lv, pp in zip(levels, REACH_BELOW_REFERENCE,
                                                                             strict=True))
    lines = [f"| codec | {head} |", "|---|" + "---:|" * len(levels)]
    for a in aggs:
        cells = []
        for st in a["bytes_to_reach"]:
            if st["reached"] == 0:
                cells.append(f"not reached (0/{st['n']})")
                continue
            seeds = "" if st["reached"] == st["n"] else f" ({st['reached']}/{st['n']} seeds)"
            cells.append(f"{_pm(st, 1e-6, digits=3)}{seeds}")
        lines.append(f"| {a['name']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def title_of(groups: Sequence[Sequence[Out]]) -> str:
    """A one-line description of the federation of the first group, with the seeds of all."""
    cfg = groups[0][0]["config"]
    fed, s0 = cfg["federation"], groups[0][0]["summary"]
    seeds = sorted({seed_of(o) for g in groups for o in g})
    part = fed["partition"] if fed["partition"] == "iid" else f"Dirichlet α={fed['alpha']:g}"
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"
    return (f"{s0['task'].upper()} on {s0['data_source']} ({s0['parameters']} parameters), {fed['num_clients']} "
            f"clients, fraction {cfg['fraction']:g}, {part}, {cfg['rounds']} rounds, {seed_text}")


def write_aggregate(outs: Sequence[Out], folder: str | Path, title: str | None = None) -> tuple[str, str]:
    """Group ``outs`` by configuration and write ``comparison.md``, ``comparison.json`` and
    ``comparison.png`` (bands: mean ± standard deviation over seeds) to ``folder``.

    Returns ``(title, table)``.
    """
    from .report import plot_aggregate

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    groups = group_runs(outs)
    aggs = aggregate_groups(groups)
    title = title or title_of(groups)
    table = aggregate_table(aggs)
    note = ("mean ± sample standard deviation (ddof = 1) over the seeds; Δ columns: differences to fp32 "
            "paired by seed")
    levels = reach_levels(groups)
    for g, a in zip(groups, aggs, strict=True):
        a["bytes_to_reach"] = reach_stats(g, levels)
    reach = reach_table(aggs, levels)
    if reach:
        reach = ("MB sent (up + down) until a round first reaches the accuracy, mean ± std over the seeds "
                 f"that reach it (levels below fp32's mean final accuracy):\n\n{reach}\n\n")
    (folder / "comparison.md").write_text(f"{title}\n\n{table}\n\n{note}\n\n{reach}")
    (folder / "comparison.json").write_text(json.dumps(
        {"title": title, "std": "sample (ddof=1)", "groups": aggs}, indent=2, default=str))
    plot_aggregate(groups, folder, title)
    return title, table


__all__ = [
    "ACCURACY_METRICS",
    "SEED_METRICS",
    "aggregate",
    "aggregate_groups",
    "aggregate_table",
    "best_accuracy",
    "bytes_to_reach",
    "find_run_folders",
    "group_runs",
    "load_run",
    "load_runs",
    "mean_std",
    "reach_levels",
    "reach_stats",
    "reach_table",
    "run_many",
    "run_one",
    "slug",
    "write_aggregate",
]
