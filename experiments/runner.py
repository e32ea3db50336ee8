"""One federated run: a Flower strategy wrapped by CompressedStrategy over the UC10 / UC14A clients.

Outputs in ``out_dir``: ``config.json`` (the run's configuration), ``rounds.csv`` and ``rounds.json``
(one row per round: coded and raw bytes up and down, clients, rejected, test accuracy and loss,
encode/decode seconds), ``summary.json`` and the plots of :mod:`experiments.report`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg, Krum

from strategies import BudgetSchedule, CodecSettings, CompressedStrategy, DownlinkSettings, ValidationSettings
from strategies.inprocess import InProcessGrid

from .baselines import register_baselines
from .fl_app import Federation, central_evaluator, dataset, initial_model, make_client_app, trusted_loss
from .models import count_parameters

ROUND_FIELDS = (
    "round", "clients", "rejected", "keyframes", "keyframe_bytes", "up_bytes", "up_raw_bytes", "down_bytes",
    "down_raw_bytes",
    "up_pct", "down_pct", "test_accuracy", "test_loss", "encode_s", "decode_s", "client_encode_s",
    "client_decode_s", "clipped", "weights_capped", "aggregate_failed", "rejected_nodes",
)


#: the inner strategies a run can aggregate with (Flower's own, inside the same wrapper): the
#: weighted mean, the coordinate-wise median, the mean without the top and bottom 20 % of each
#: coordinate, and Krum (the update closest to its neighbours; one hostile node assumed)
AGGREGATORS = {
    "fedavg": FedAvg,
    "median": FedMedian,
    "trimmed-mean": lambda **kw: FedTrimmedAvg(**kw, beta=0.2),
    "krum": lambda **kw: Krum(**kw, num_malicious_nodes=1),
}


@dataclass
class RunConfig:
    """A federated run: the federation, the rounds, and the codec on the wire."""

    federation: Federation = field(default_factory=Federation)
    rounds: int = 10
    fraction: float = 0.5
    codec: str = "nnc"
    codec_params: dict[str, Any] = field(default_factory=dict)
    downlink_params: dict[str, Any] = field(default_factory=dict)
    #: clients hold the initial model already (built from the same seed): no first-contact keyframes
    shared_initial_model: bool = False
    #: compressed keyframes on an anchor grid of rms * 2**-keyframe_grid (None: exact fp32 keyframes)
    keyframe_grid: int | None = 5
    #: the initial model rounded onto a coarser grid of rms * 2**-initial_grid (None: the anchor grid)
    initial_grid: int | None = None
    #: clients drop error-feedback residuals older than this many versions (None: keep them)
    residual_max_age: int | None = None
    #: nodes train from the global model plus their residual (CodecSettings.train_from_residual;
    #: None: the codec's default)
    train_from_residual: bool | None = None
    backend: str = "inprocess"  # or "ray" (Flower's simulation engine; sampling not repeatable)
    label: str = ""
    #: rate control: a budget per update / per global increment (float in (0, 1): share of fp32;
    #: int: bytes; for the uplink also a schedule's text, strategies.BudgetSchedule), see
    #: CompressedStrategy; None: none
    target_uplink: float | int | str | None = None
    target_downlink: float | int | None = None
    #: with federation.trusted_examples: ValidationSettings.trusted_loss_tolerance
    trusted_tolerance: float = 3.0
    #: > 0: the inner strategy is Flower's FedAvgM with this server momentum (server learning rate
    #: 1); 0: FedAvg
    server_momentum: float = 0.0
    #: > 0: the inner strategy is Flower's FedAdam with this server learning rate (``eta``; its other
    #: parameters at Flower's defaults: beta_1 0.9, beta_2 0.99, tau 1e-3); 0: FedAvg
    server_adam: float = 0.0
    #: the inner strategy's aggregation rule (one of AGGREGATORS); robust rules for hostile clients
    aggregator: str = "fedavg"

    def __post_init__(self) -> None:
        m = self.server_momentum
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m < 1.0:
            raise ValueError(f"server_momentum must be a number in [0, 1), got {m!r}")
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {', '.join(AGGREGATORS)}, got {self.aggregator!r}")
        if m and self.aggregator != "fedavg":
            raise ValueError("server_momentum is FedAvgM's: it needs aggregator 'fedavg'")
        eta = self.server_adam
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (math.isfinite(eta) and 0 <= eta <= 10):
            raise ValueError(f"server_adam must be a server learning rate in [0, 10] (0: off), got {eta!r}")
        if eta and (m or self.aggregator != "fedavg"):
            raise ValueError("server_adam is FedAdam's: it excludes server_momentum and needs aggregator 'fedavg'")

    def name(self) -> str:
        if self.label:
            return self.label
        params = ",".join(f"{k}={v}" for k, v in sorted(self.codec_params.items()))
        down = ",".join(f"{k}={v}" for k, v in sorted(self.downlink_params.items()))
        name = f"{self.codec}({params})" if params else self.codec
        name = f"{name} down({down})" if down else name
        if self.target_uplink is not None:
            name = f"{name} target-up={self.target_uplink}"
        if self.target_downlink is not None:
            name = f"{name} target-down={self.target_downlink}"
        if self.keyframe_grid is None:
            name = f"{name} exact-keyframes"
        if self.initial_grid is not None:
            name = f"{name} initial-grid={self.initial_grid}"
        if self.residual_max_age is not None:
            name = f"{name} residual-age<={self.residual_max_age}"
        if self.train_from_residual is not None:
            name = f"{name} {'' if self.train_from_residual else 'no-'}train-from-residual"
        if self.federation.trusted_examples:
            name = f"{name} trusted={self.federation.trusted_examples}x{self.trusted_tolerance:g}"
        if self.server_momentum:
            name = f"{name} fedavgm={self.server_momentum:g}"
        if self.server_adam:
            name = f"{name} fedadam={self.server_adam:g}"
        if self.aggregator != "fedavg":
            name = f"{name} {self.aggregator}"
        return f"{name} shared-init" if self.shared_initial_model else name

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _server_fn(cfg: RunConfig, sink: dict[str, Any], progress=None):
    fed = cfg.federation
    evaluate = central_evaluator(fed)

    def evaluate_fn(server_round: int, arrays: ArrayRecord):
        metrics = evaluate(server_round, arrays)
        if progress is not None:
            progress(server_round, dict(metrics))
        return metrics

    def main(grid: Grid, context: Context) -> None:
        random.seed(fed.seed)  # Flower's node sampling uses the random module
        model = initial_model(fed)
        sampling = dict(fraction_train=cfg.fraction, fraction_evaluate=0.0, min_available_nodes=fed.num_clients)
        if cfg.server_momentum:
            inner = FedAvgM(**sampling, server_learning_rate=1.0, server_momentum=cfg.server_momentum)
        elif cfg.server_adam:
            inner = FedAdam(**sampling, eta=cfg.server_adam)
        else:
            inner = AGGREGATORS[cfg.aggregator](**sampling)
        downlink = DownlinkSettings(params=cfg.downlink_params, shared_initial_model=cfg.shared_initial_model,
                                    keyframe_grid=cfg.keyframe_grid, initial_grid=cfg.initial_grid,
                                    target=cfg.target_downlink)
        # no parameters: the strategy's default setting (what CompressedStrategy(inner) codes with)
        target = cfg.target_uplink
        codec = CodecSettings(cfg.codec, cfg.codec_params or None,
                              target_uplink=BudgetSchedule.parse(target) if isinstance(target, str) else target,
                              residual_max_age=cfg.residual_max_age, train_from_residual=cfg.train_from_residual)
        validation = None
        if fed.trusted_examples:
            validation = ValidationSettings(trusted_loss=trusted_loss(fed),
                                            trusted_loss_tolerance=cfg.trusted_tolerance)
        strategy = CompressedStrategy(inner, codec=codec, downlink=downlink, validation=validation)
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=cfg.rounds,
            evaluate_fn=evaluate_fn,
        )
        sink["bandwidth"] = strategy.bandwidth
        sink["evaluation"] = {int(r): dict(m) for r, m in result.evaluate_metrics_serverapp.items()}

    return main


def _run_inprocess(cfg: RunConfig, sink: dict[str, Any], progress=None) -> None:
    grid = InProcessGrid(make_client_app(cfg.federation, cfg.shared_initial_model), cfg.federation.num_clients)
    _server_fn(cfg, sink, progress)(grid, Context(run_id=1, node_id=0, node_config={}, state=None, run_config={}))


def _run_ray(cfg: RunConfig, sink: dict[str, Any], progress=None) -> None:
    from flwr.simulation import run_simulation

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    tmp = tempfile.mkdtemp(prefix="nnc-fl-ray-")
    os.environ.setdefault("RAY_TMPDIR", tmp)
    os.environ.setdefault("FLWR_HOME", os.path.join(tmp, "flwr"))
    server = ServerApp()
    server.main()(_server_fn(cfg, sink, progress))
    run_simulation(
        server_app=server,
        client_app=make_client_app(cfg.federation, cfg.shared_initial_model),
        num_supernodes=cfg.federation.num_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}},
    )


def run(cfg: RunConfig, out_dir: str | Path | None = None, progress=None) -> dict[str, Any]:
    """Run the federation; return ``{"config", "rounds", "summary"}`` and write them to ``out_dir``.

    ``progress(server_round, metrics)`` is called after each central evaluation (round 0 included).
    """
    register_baselines()  # the server side builds cfg.codec by name (clients: fl_app.baselines_mod)
    torch.manual_seed(cfg.federation.seed)
    np.random.seed(cfg.federation.seed)
    sink: dict[str, Any] = {}
    t0 = time.perf_counter()
    if cfg.backend == "inprocess":
        _run_inprocess(cfg, sink, progress)
    elif cfg.backend == "ray":
        _run_ray(cfg, sink, progress)
    else:
        raise ValueError(f"unknown backend {cfg.backend!r}; choose 'inprocess' or 'ray'")
    seconds = time.perf_counter() - t0
    rounds = _round_rows(sink.get("bandwidth", []), sink.get("evaluation", {}))
    summary = _summarise(cfg, rounds, seconds)
    out = {"config": cfg.to_json(), "rounds": rounds, "summary": summary}
    if out_dir is not None:
        write_run(out, Path(out_dir))
    return out


def _round_rows(bandwidth: list[dict], evaluation: dict[int, dict]) -> list[dict[str, Any]]:
    rows = []
    for b in bandwidth:
        r = int(b["round"])
        ev = evaluation.get(r, {})
        row = {k: b.get(k, 0) for k in ROUND_FIELDS if k in b}
        row["rejected_nodes"] = b.get("rejected_nodes", "")
        row["round"] = r
        row["up_pct"] = 100.0 * b["up_bytes"] / b["up_raw_bytes"] if b.get("up_raw_bytes") else 0.0
        row["down_pct"] = 100.0 * b["down_bytes"] / b["down_raw_bytes"] if b.get("down_raw_bytes") else 0.0
        row["test_accuracy"] = ev.get("test_accuracy", float("nan"))
        row["test_loss"] = ev.get("test_loss", float("nan"))
        rows.append({k: row.get(k, 0) for k in ROUND_FIELDS})
    # the model before any training (round 0), for the accuracy curves
    if 0 in evaluation:
        rows.insert(0, {**{k: 0 for k in ROUND_FIELDS}, "rejected_nodes": "",
                        "test_accuracy": evaluation[0]["test_accuracy"], "test_loss": evaluation[0]["test_loss"]})
    return rows


def _summarise(cfg: RunConfig, rounds: list[dict], seconds: float) -> dict[str, Any]:
    trained = [r for r in rounds if r["round"] > 0]
    up = sum(r["up_bytes"] for r in trained)
    up_raw = sum(r["up_raw_bytes"] for r in trained)
    down = sum(r["down_bytes"] for r in trained)
    down_raw = sum(r["down_raw_bytes"] for r in trained)
    fed = cfg.federation
    ds = dataset(fed)
    model_raw = 4 * sum(int(t.numel()) for t in initial_model(fed).state_dict().values())
    # increments only: without the exact keyframes of a node's first contact (or long absence)
    inc_bytes = down - sum(r["keyframe_bytes"] for r in trained)
    inc_raw = down_raw - model_raw * sum(r["keyframes"] for r in trained)
    return {
        "name": cfg.name(),
        "codec": cfg.codec,
        "codec_params": cfg.codec_params,
        "task": fed.task,
        "data_source": ds.source,
        "parameters": count_parameters(initial_model(fed)),
        "rounds": len(trained),
        "final_accuracy": trained[-1]["test_accuracy"] if trained else float("nan"),
        # round-to-round noise is ~0.5 pp on these runs: the mean of the last 3 rounds compares better
        "last3_accuracy": float(np.mean([r["test_accuracy"] for r in trained[-3:]])) if trained else float("nan"),
        "best_accuracy": float(max(r["test_accuracy"] for r in trained)) if trained else float("nan"),
        "up_bytes": up,
        "down_bytes": down,
        "total_bytes": up + down,
        "up_pct": 100.0 * up / up_raw if up_raw else 0.0,
        "down_pct": 100.0 * down / down_raw if down_raw else 0.0,
        "down_pct_increments": 100.0 * inc_bytes / inc_raw if inc_raw > 0 else 0.0,
        "keyframes": sum(r["keyframes"] for r in trained),
        "rejected": sum(r["rejected"] for r in trained),
        "rejected_nodes": ";".join(f"r{r['round']}:{r['rejected_nodes']}" for r in trained if r["rejected_nodes"]),
        "aggregate_failed": sum(r["aggregate_failed"] for r in trained),
        "encode_s": sum(r["encode_s"] + r["client_encode_s"] for r in trained),
        "decode_s": sum(r["decode_s"] + r["client_decode_s"] for r in trained),
        "wall_s": seconds,
    }


def write_run(out: dict[str, Any], folder: Path) -> None:
    """config.json, rounds.csv, rounds.json, summary.json and the run's plots."""
    from .report import plot_run

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(out["config"], indent=2, default=str))
    (folder / "rounds.json").write_text(json.dumps(out["rounds"], indent=2))
    (folder / "summary.json").write_text(json.dumps(out["summary"], indent=2, default=str))
    with open(folder / "rounds.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=ROUND_FIELDS)
        w.writeheader()
        w.writerows(out["rounds"])
    plot_run(out, folder)
