"""A real Flower simulation (Ray backend, offline) of the compressed test app."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import pytest
from conftest import APP_DIR
from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from strategies import CompressedStrategy

NODES, ROUNDS = 3, 3


@pytest.fixture
def sim_env(tmp_path, monkeypatch):
    """Keep Ray and Flower files under tmp and let Ray workers import the project and the app."""
    short = tempfile.mkdtemp(prefix="nncray", dir="/tmp")  # Ray's socket paths must stay short
    monkeypatch.setenv("RAY_TMPDIR", short)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    root = str(APP_DIR.parent.parent)
    paths = [root, str(APP_DIR), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    yield tmp_path
    shutil.rmtree(short, ignore_errors=True)


@pytest.mark.slow
def test_ray_simulation_compressed_fedavg(sim_env):
    from flwr.simulation import run_simulation
    from nncfl_testapp.client_app import app as client_app
    from nncfl_testapp.task import FingerprintCheck, initial_model, loss, node_data

    log_path = sim_env / "bandwidth.jsonl"
    seen: dict = {}
    check = FingerprintCheck()
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        inner = FedAvg(
            min_train_nodes=NODES,
            min_evaluate_nodes=NODES,
            min_available_nodes=NODES,
            evaluate_metrics_aggr_fn=check,
        )
        strategy = check.strategy = CompressedStrategy(
            inner, codec="nnc", codec_params={"step": 0.002}, bandwidth_log=log_path
        )
        initial = ArrayRecord({k: Array(v) for k, v in initial_model().items()})
        result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=ROUNDS)
        seen["strategy"], seen["result"] = strategy, result

    backend_config = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}}
    run_simulation(
        server_app=server_app, client_app=client_app, num_supernodes=NODES, backend_config=backend_config
    )

    strategy, result = seen["strategy"], seen["result"]
    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert all(r["accepted"] == NODES and r["rejected"] == 0 and r["resyncs"] == 0 for r in rows)
    assert rows[0]["keyframes"] == NODES  # round 1 ships initial_arrays: keyframes for all
    assert all(r["up_bytes"] > 0 and r["up_bytes"] < r["up_raw_bytes"] for r in rows)
    # later rounds: increments only (evaluate delivers G_{v+1}, so the next train message has no payload)
    assert rows[-1]["deltas"] + rows[-1]["eval_deltas"] >= NODES
    assert rows[-1]["keyframes"] == rows[-1]["eval_keyframes"] == 0
    final = {k: a.numpy() for k, a in result.arrays.items()}
    assert final["bn.num_batches_tracked"] == 5 * ROUNDS  # integer buffer survives exactly
    start = initial_model()
    losses = [(loss(start, *node_data(p)), loss(final, *node_data(p))) for p in range(NODES)]
    assert all(np.isfinite(b) and b < a for a, b in losses)
    assert strategy.model.version == ROUNDS + 1
    # every client evaluated exactly the server's G_v (bit-exact fingerprints), every round
    assert (check.checked, check.mismatches) == (NODES * ROUNDS, 0)
    assert set(result.train_metrics_clientapp) == set(range(1, ROUNDS + 1))
    assert result.train_metrics_clientapp[ROUNDS]["nnc-fl.up_bytes"] == rows[-1]["up_bytes"]
