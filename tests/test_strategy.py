"""CompressedStrategy driven by Strategy.start() over an in-process grid of nnc_mod clients."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
from flwr.app import RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, Krum, Strategy

from nnc_fl import protocol
from strategies import BANDWIDTH_FIELDS, CompressedStrategy

from conftest import LocalGrid, run_federation

ROUNDS = 3


def _plain_app() -> ClientApp:
    """The same user functions without nnc_mod: plain Flower."""
    from nncfl_testapp import client_app as user

    app = ClientApp()
    app.train()(user.train)
    app.evaluate()(user.evaluate)
    return app


def _final(result) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in result.arrays.items()}


def _mean_loss(model) -> float:
    from nncfl_testapp.task import loss, node_data

    return float(np.mean([loss(model, *node_data(p)) for p in range(4)]))


INNER = {
    "FedAvg": lambda: FedAvg(min_available_nodes=4),
    "FedAdam": lambda: FedAdam(min_available_nodes=4, eta=0.05, eta_l=0.05),
    "FedMedian": lambda: FedMedian(min_available_nodes=4),
    "FedProx": lambda: FedProx(min_available_nodes=4, proximal_mu=0.1),
    "Krum": lambda: Krum(min_available_nodes=4, num_malicious_nodes=1),
}


@pytest.mark.parametrize("name", list(INNER))
def test_drop_in_for_inner_strategies(name, make_grid, initial_arrays):
    random.seed(1)
    plain = INNER[name]().start(
        grid=LocalGrid(_plain_app(), 4), initial_arrays=initial_arrays, num_rounds=ROUNDS
    )
    random.seed(1)
    strategy = CompressedStrategy(INNER[name](), codec="nnc", step=0.0005)
    result, _ = run_federation(strategy, make_grid(4), initial_arrays, ROUNDS)

    final = _final(result)
    reference = protocol.cast_like(_final(plain), final)  # aggregators may turn int buffers to float
    assert final["bn.num_batches_tracked"].dtype == np.int64
    for key, value in reference.items():
        np.testing.assert_allclose(final[key], value, atol=0.02)
    start_loss, plain_loss = (
        _mean_loss({k: a.numpy() for k, a in initial_arrays.items()}),
        _mean_loss(_final(plain)),
    )
    assert plain_loss < start_loss and _mean_loss(final) < start_loss
    assert _mean_loss(final) <= 1.05 * plain_loss
    rows = strategy.bandwidth
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert all(r["accepted"] == 4 and r["rejected"] == 0 for r in rows)
    assert rows[0]["keyframes"] == 4 and rows[1]["keyframes"] == 0  # round 1 ships initial_arrays
    assert all(r["up_bytes"] < r["up_raw_bytes"] for r in rows)
    metrics = result.train_metrics_clientapp[ROUNDS]
    assert metrics["nnc-fl.up_bytes"] == rows[-1]["up_bytes"] and "train_loss" in metrics


def test_uncompressed_baseline_runs_the_same_path(make_grid, initial_arrays):
    random.seed(2)
    plain = FedAvg(min_available_nodes=4).start(
        grid=LocalGrid(_plain_app(), 4), initial_arrays=initial_arrays, num_rounds=ROUNDS
    )
    random.seed(2)
    strategy = CompressedStrategy(FedAvg(min_available_nodes=4), codec=None)
    result, _ = run_federation(strategy, make_grid(4), initial_arrays, ROUNDS)
    for key, value in _final(plain).items():
        np.testing.assert_allclose(_final(result)[key], value, rtol=1e-5, atol=1e-6)
    assert {r["codec"] for r in strategy.bandwidth} == {"fp32"}
    assert all(r["up_bytes"] >= r["up_raw_bytes"] for r in strategy.bandwidth)


def test_any_registered_codec_name_works(make_grid, initial_arrays):
    strategy = CompressedStrategy(FedAvg(min_available_nodes=4), codec="npz-test", step=0.001)
    result, _ = run_federation(strategy, make_grid(4), initial_arrays, 2)
    assert strategy.model.version == 3 and strategy.bandwidth[-1]["codec"] == "npz-test"


def test_partial_participation_late_joiner_and_keyframes(make_grid, initial_arrays):
    random.seed(7)
    grid = make_grid(5)
    grid.online.discard(105)  # joins later
    inner = FedAvg(fraction_train=0.5, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2)
    strategy = CompressedStrategy(inner, step=0.001)

    def join(server_round):
        if server_round == 2:
            grid.online.add(105)

    run_federation(strategy, grid, initial_arrays, 8, on_round=join)
    rows = strategy.bandwidth
    assert all(r["accepted"] == r["clients"] >= 2 and r["resyncs"] == 0 for r in rows)
    assert sum(r["keyframes"] for r in rows[1:]) > 0  # nodes that skipped rounds or joined late
    assert sum(r["deltas"] for r in rows) > 0  # nodes that took part in consecutive rounds
    assert grid.node_model(105)[0] is not None  # the late joiner was brought in by a keyframe
    sent_to_105 = [m for m in grid.sent if m.metadata.dst_node_id == 105]
    assert sent_to_105[0].content[protocol.RECORD_KEY]["kind"] == protocol.KEYFRAME


def test_node_that_lost_its_state_asks_for_a_keyframe(make_grid, initial_arrays):
    grid = make_grid(3)
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=3), step=0.001)

    def lose_state(server_round):
        if server_round == 2:
            grid.contexts[101].state = RecordDict()

    run_federation(strategy, grid, initial_arrays, 4, on_round=lose_state)
    rows = strategy.bandwidth
    assert rows[2]["resyncs"] == 1 and rows[2]["accepted"] == 2 and rows[2]["rejected"] == 0
    assert rows[3]["keyframes"] == 1 and rows[3]["accepted"] == 3
    assert grid.node_model(101)[0] == strategy.model.version - 1  # back in sync


def test_node_whose_reply_was_lost_gets_a_keyframe(make_grid, initial_arrays):
    grid = make_grid(3)
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=3), step=0.001)

    def lose_reply(server_round):
        if server_round == 1:
            grid.drop.add(101)
        elif server_round == 2:
            grid.drop.clear()

    run_federation(strategy, grid, initial_arrays, 3, on_round=lose_reply)
    rows = strategy.bandwidth
    assert rows[1]["failures"] == 1 and rows[1]["accepted"] == 2
    assert rows[2]["keyframes"] == 1 and rows[2]["resyncs"] == 0 and rows[2]["accepted"] == 3


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_bandwidth_log_file(tmp_path, suffix, make_grid, initial_arrays):
    path = tmp_path / "logs" / f"bw{suffix}"
    strategy = CompressedStrategy(FedAvg(min_available_nodes=4), step=0.001, bandwidth_log=path)
    run_federation(strategy, make_grid(4), initial_arrays, 2)
    if suffix == ".csv":
        rows = list(csv.DictReader(path.open()))
        assert tuple(rows[0]) == BANDWIDTH_FIELDS
        assert [int(r["up_bytes"]) for r in rows] == [r["up_bytes"] for r in strategy.bandwidth]
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows == strategy.bandwidth
    assert all(r["eval_down_bytes"] > 0 for r in strategy.bandwidth)  # evaluation ships the model too


def test_codec_schedule_sets_the_rate_per_round(make_grid, initial_arrays):
    grid = make_grid(3)
    strategy = CompressedStrategy(
        FedAvg(min_available_nodes=3), step=0.001, codec_schedule=lambda r: {"step": 0.001 * r}
    )
    run_federation(strategy, grid, initial_arrays, 3)
    train = [m.content[protocol.RECORD_KEY] for m in grid.sent if m.metadata.message_type == "train"]
    steps = [protocol.decode_params(c["codec_params"])["step"] for c in train]
    assert steps == pytest.approx([0.001] * 3 + [0.002] * 3 + [0.003] * 3)


def test_wrapper_basics(caplog):
    inner = FedAvg(fraction_train=0.25)
    strategy = CompressedStrategy(inner, step=0.01)
    assert isinstance(strategy, Strategy)
    assert strategy.fraction_train == 0.25 and strategy.inner is inner  # attribute pass-through
    assert "nnc" in repr(strategy)
    with pytest.raises(ValueError, match="unknown codec"):
        CompressedStrategy(inner, codec="nope")
    with pytest.raises(ValueError, match="bad parameters"):
        CompressedStrategy(inner, codec="nnc", codec_params={"colour": 3})
    with pytest.raises(TypeError):
        CompressedStrategy(object())
    with pytest.raises(AttributeError):
        _ = strategy.no_such_attribute
