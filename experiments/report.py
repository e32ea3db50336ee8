"""Plots and tables of federated runs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator


def _cumulative_bytes(rounds: list[dict]) -> list[float]:
    total, out = 0.0, []
    for r in rounds:
        total += r["up_bytes"] + r["down_bytes"]
        out.append(max(total, 1.0))
    return out


def _accuracy_axes(ax_round, ax_bytes, out: dict[str, Any], label: str) -> None:
    rounds = out["rounds"]
    accuracy = [100 * r["test_accuracy"] for r in rounds]
    ax_round.plot([r["round"] for r in rounds], accuracy, marker="o", ms=3, label=label)
    trained = [r for r in rounds if r["round"] > 0]
    trained_accuracy = [100 * r["test_accuracy"] for r in trained]
    ax_bytes.plot(_cumulative_bytes(trained), trained_accuracy, marker="o", ms=3, label=label)


def _style(ax_round, ax_bytes) -> None:
    ax_round.set(xlabel="round", ylabel="test accuracy (%)", title="accuracy per round")
    ax_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_bytes.set(xscale="log", xlabel="cumulative bytes transmitted (up + down)", ylabel="test accuracy (%)",
                 title="accuracy vs. communication")
    for ax in (ax_round, ax_bytes):
        ax.grid(True, alpha=0.3)


def plot_run(out: dict[str, Any], folder: Path) -> None:
    """accuracy.png (vs round and vs cumulative bytes) and bytes.png (per round, up and down)."""
    s = out["summary"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    _accuracy_axes(a, b, out, s["name"])
    _style(a, b)
    fig.suptitle(f"{s['task'].upper()} on {s['data_source']}: {s['name']}")
    fig.tight_layout()
    fig.savefig(folder / "accuracy.png", dpi=110)
    plt.close(fig)

    trained = [r for r in out["rounds"] if r["round"] > 0]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [r["round"] for r in trained]
    ax.bar([x - 0.2 for x in xs], [max(r["up_bytes"], 1) for r in trained], width=0.4, label="uplink (coded)")
    ax.bar([x + 0.2 for x in xs], [max(r["down_bytes"], 1) for r in trained], width=0.4, label="downlink (coded)")
    ax.plot(xs, [max(r["up_raw_bytes"], 1) for r in trained], "k--", lw=1, label="uplink fp32")
    ax.set(yscale="log", xlabel="round", ylabel="bytes", title=f"bytes per round: {s['name']}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "bytes.png", dpi=110)
    plt.close(fig)


def comparison_table(outs: list[dict[str, Any]], reference: str = "fp32") -> str:
    """Markdown table, one row per run; accuracy difference against the ``reference`` codec."""
    ref = next((o["summary"] for o in outs if o["summary"]["codec"] == reference), None)
    lines = [
        "| codec | final acc. (%) | Δ acc. vs fp32 (pp) | last-3 mean acc. (%) | Δ last-3 (pp) | uplink (% of fp32) "
        "| downlink (% of fp32) | downlink increments (%) | keyframes | total MB | rejected | codec time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outs:
        s = o["summary"]
        delta = "" if ref is None else f"{100 * (s['final_accuracy'] - ref['final_accuracy']):+.2f}"
        delta3 = "" if ref is None else f"{100 * (s['last3_accuracy'] - ref['last3_accuracy']):+.2f}"
        lines.append(
            f"| {s['name']} | {100 * s['final_accuracy']:.2f} | {delta} | {100 * s['last3_accuracy']:.2f} | {delta3} | "
            f"{s['up_pct']:.3f} | {s['down_pct']:.3f} | "
            f"{s['down_pct_increments']:.3f} | {s['keyframes']} | {s['total_bytes'] / 1e6:.3f} | {s['rejected']} | "
            f"{s['encode_s'] + s['decode_s']:.2f} |"
        )
    return "\n".join(lines)


def plot_comparison(outs: list[dict[str, Any]], folder: Path, title: str) -> None:
    """comparison.png: accuracy vs round and vs cumulative bytes, one line per codec."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for o in outs:
        _accuracy_axes(a, b, o, o["summary"]["name"])
    _style(a, b)
    b.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(folder / "comparison.png", dpi=110)
    plt.close(fig)


def _band(ax, xs, values, label: str) -> None:
    """Mean line and a mean ± standard deviation band (sample std over the rows of ``values``)."""
    v = np.asarray(values, dtype=np.float64)
    mean = v.mean(axis=0)
    std = v.std(axis=0, ddof=1) if v.shape[0] > 1 else np.zeros_like(mean)
    (line,) = ax.plot(xs, mean, marker="o", ms=3, label=f"{label} (n={v.shape[0]})")
    ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)


def plot_aggregate(groups: list[list[dict[str, Any]]], folder: Path, title: str) -> None:
    """comparison.png over seeds: accuracy vs round and vs cumulative bytes (up + down, log x), one
    line per group at the mean over its seeds with a band of ± one standard deviation (the bytes
    axis uses the mean cumulative bytes of each round)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for runs in groups:
        label = runs[0]["summary"]["name"]
        n = min(len(o["rounds"]) for o in runs)
        rows = [o["rounds"][:n] for o in runs]
        _band(a, [r["round"] for r in rows[0]], [[100 * r["test_accuracy"] for r in rs] for rs in rows], label)
        trained = [[r for r in rs if r["round"] > 0] for rs in rows]
        if trained[0]:
            x = np.mean([_cumulative_bytes(t) for t in trained], axis=0)
            _band(b, x, [[100 * r["test_accuracy"] for r in t] for t in trained], label)
    _style(a, b)
    b.legend(fontsize=7)
    fig.suptitle(title + "\n(mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(folder / "comparison.png", dpi=110)
    plt.close(fig)
