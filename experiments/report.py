"""Plots and tables of federated runs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

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
