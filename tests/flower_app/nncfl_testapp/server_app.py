"""ServerApp: FedAvg wrapped in CompressedStrategy; writes bandwidth rows and a result summary."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from nnc_fl.fingerprint import fingerprint
from strategies import CompressedStrategy

from . import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the compressed federation; run config keys are in this app's pyproject.toml."""
    cfg = context.run_config
    nodes = int(cfg.get("min-nodes", 2))
    check = task.FingerprintCheck()
    inner = FedAvg(
        evaluate_metrics_aggr_fn=check,
        fraction_train=float(cfg.get("fraction-train", 1.0)),
        min_train_nodes=nodes,
        min_evaluate_nodes=nodes,
        min_available_nodes=nodes,
    )
    codec = str(cfg.get("codec", "nnc"))
    strategy = CompressedStrategy(
        inner,
        codec=codec,
        codec_params={"step": float(cfg.get("step", 0.002))} if codec == "nnc" else None,
        bandwidth_log=str(cfg.get("bandwidth-log", "")) or None,
    )
    check.strategy = strategy
    initial = ArrayRecord({k: Array(v) for k, v in task.initial_model().items()})
    result = strategy.start(
        grid=grid, initial_arrays=initial, num_rounds=int(cfg.get("num-server-rounds", 3))
    )
    if cfg.get("result-path"):
        final = {k: a.numpy() for k, a in result.arrays.items()}
        summary = {
            "version": strategy.model.version,
            "fingerprint": fingerprint(final).hex(),
            "server_fingerprint": strategy.model.fingerprint.hex(),
            "rounds": len(strategy.bandwidth),
            "fingerprints_checked": check.checked,
            "fingerprint_mismatches": check.mismatches,
        }
        Path(str(cfg["result-path"])).write_text(json.dumps(summary), encoding="utf-8")
