"""ServerApp: FedAvg wrapped in CompressedStrategy (the nnc codec with its default parameters)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from strategies import CompressedStrategy

from . import task

torch.set_num_threads(1)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the compressed federation; run-config keys are in this app's pyproject.toml."""
    cfg = context.run_config
    nodes = int(cfg["min-nodes"])
    out = Path(str(cfg["out-dir"])) if cfg["out-dir"] else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    inner = FedAvg(
        fraction_train=float(cfg["fraction-train"]),
        min_train_nodes=nodes,
        min_evaluate_nodes=nodes,
        min_available_nodes=nodes,
    )
    strategy = CompressedStrategy(inner, bandwidth_log=out / "bandwidth.jsonl" if out else None)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(task.initial_model().state_dict()),
        num_rounds=int(cfg["num-server-rounds"]),
    )
    model = task.Net()
    model.load_state_dict(result.arrays.to_torch_state_dict())
    loss, acc = task.evaluate(model, *task.test_data())
    print(f"final global model: test accuracy {acc:.3f}, loss {loss:.3f}; {strategy.run_summary()}")
    if out is not None:
        summary = {"rounds": len(strategy.bandwidth), "test_accuracy": acc, "test_loss": loss}
        (out / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
