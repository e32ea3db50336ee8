"""CompressedStrategy driven by Strategy.start() over an in-process grid of nnc_mod clients."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
from conftest import LocalGrid, run_federation
from flwr.app import Array, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, Krum, Strategy

import nnc_fl
from nnc_fl import protocol
from nnc_fl.api import is_schema_bound
from nnc_fl.protocol import CodecSpec
from nnc_fl.updates import cast_like
from strategies import BANDWIDTH_FIELDS, CodecSettings, CompressedStrategy, DownlinkSettings, ValidationSettings
from strategies.server_model import ServerModel

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
    strategy = CompressedStrategy(INNER[name](), codec="nnc", codec_params={"step": 0.0005})
    result, _ = run_federation(strategy, make_grid(4), initial_arrays, ROUNDS)

    final = _final(result)
    reference = cast_like(_final(plain), final)  # aggregators may turn int buffers to float
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
    strategy = CompressedStrategy(FedAvg(min_available_nodes=4), codec="npz-test", codec_params={"step": 0.001})
    run_federation(strategy, make_grid(4), initial_arrays, 2)
    assert strategy.model.version == 3 and strategy.bandwidth[-1]["codec"] == "npz-test"


def test_partial_participation_late_joiner_and_keyframes(make_grid, initial_arrays):
    random.seed(7)
    grid = make_grid(5)
    grid.online.discard(105)  # joins later
    inner = FedAvg(fraction_train=0.5, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2)
    # the test app's nodes have far apart optima: late in training their honest updates point every
    # way and the direction check can refuse one (see README, threat model); this test is about
    # chains and keyframes, so it counts every reply as accepted with that check off
    strategy = CompressedStrategy(
        inner, codec_params={"step": 0.001}, validation=ValidationSettings(direction_spread=None)
    )

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
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=3), codec_params={"step": 0.001})

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
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=3), codec_params={"step": 0.001})

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
    strategy = CompressedStrategy(FedAvg(min_available_nodes=4), codec_params={"step": 0.001}, bandwidth_log=path)
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
    codec = CodecSettings("nnc", {"step": 0.001}, schedule=lambda r: {"step": 0.001 * r})
    strategy = CompressedStrategy(FedAvg(min_available_nodes=3), codec)
    run_federation(strategy, grid, initial_arrays, 3)
    train = [m.content[protocol.RECORD_KEY] for m in grid.sent if m.metadata.message_type == "train"]
    steps = [protocol.decode_params(c["codec_params"])["step"] for c in train]
    assert steps == pytest.approx([0.001] * 3 + [0.002] * 3 + [0.003] * 3)


def test_wrapper_basics(caplog):
    inner = FedAvg(fraction_train=0.25)
    strategy = CompressedStrategy(inner, codec_params={"step": 0.01})
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


def _chains(grid) -> list[int]:
    """Number of increments in each delta downlink the grid delivered."""
    out = []
    for m in grid.sent:
        rec = m.content.get(protocol.RECORD_KEY)
        if rec is not None and rec["kind"] == protocol.DELTA:
            out.append(rec["version"] - rec["base_version"])
            assert len(next(iter(m.content.array_records.values()))) == rec["payloads"] <= out[-1]
    return out


def test_nodes_that_missed_rounds_catch_up_with_a_chain_of_increments(make_grid, initial_arrays):
    random.seed(3)
    grid = make_grid(6)
    inner = FedAvg(fraction_train=0.34, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=6)
    strategy = CompressedStrategy(inner, codec_params={"step": 0.05})
    run_federation(strategy, grid, initial_arrays, 8)  # checks bit-identical models every round
    assert max(_chains(grid)) >= 2  # some node skipped rounds and got several increments at once


def test_residual_max_age_reaches_the_nodes(make_grid, initial_arrays):
    random.seed(3)
    grid = make_grid(6)
    inner = FedAvg(fraction_train=0.34, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=6)
    strategy = CompressedStrategy(inner, CodecSettings("nnc", {"step": 0.05}, residual_max_age=1))
    run_federation(strategy, grid, initial_arrays, 4)  # checks bit-identical models every round
    ages = {m.content[protocol.RECORD_KEY]["residual_max_age"] for m in grid.sent if protocol.RECORD_KEY in m.content}
    assert ages == {1}
    assert "residual_max_age=1" in repr(strategy.codec)


def test_train_from_residual_reaches_the_nodes_with_train_messages_only(make_grid, initial_arrays):
    random.seed(3)
    grid = make_grid(6)
    inner = FedAvg(fraction_train=0.5, fraction_evaluate=0.5, min_train_nodes=2, min_available_nodes=6)
    strategy = CompressedStrategy(inner, CodecSettings("nnc", {"step": 0.05}, train_from_residual=True))
    run_federation(strategy, grid, initial_arrays, 4)  # checks bit-identical models every round
    flags = {(m.metadata.message_type, m.content[protocol.RECORD_KEY]["train_from_residual"])
             for m in grid.sent if protocol.RECORD_KEY in m.content}
    assert flags == {("train", True), ("evaluate", False)}


def test_server_model_chains_increments_while_smaller_than_a_keyframe():
    spec = CodecSpec("nnc", {"step": 0.01})
    rng = np.random.default_rng(0)
    model = ServerModel(DownlinkSettings(max_chain=4))
    model.adopt({"w": np.zeros(5000, np.float32), "n": np.zeros((), np.int64)})
    model.acknowledged(7, 1, model.fingerprint)  # node 7 holds the first version
    for _ in range(3):
        target = {"w": model.tensors["w"] + rng.normal(0, 0.01, 5000).astype(np.float32), "n": model.tensors["n"] + 1}
        model.advance(target, spec)
    down, payloads, _ = model.downlink(7, spec, "arrays", 4, bytes(16))
    assert down.kind == protocol.DELTA and down.base_version == 1 and len(payloads) == 3
    for _ in range(3):  # node 7 now lags 6 versions, beyond max_chain: keyframe
        model.advance({"w": model.tensors["w"] + 0.5, "n": model.tensors["n"]}, spec)
    down, payloads, _ = model.downlink(7, spec, "arrays", 5, bytes(16))
    assert down.kind == protocol.KEYFRAME and len(payloads) == 1
    model.acknowledged(7, model.version, model.fingerprint)  # node 7 holds the version before the next
    huge = {"w": rng.normal(0, 100, 5000).astype(np.float32), "n": model.tensors["n"]}
    model.advance(huge, CodecSpec("nnc", {"step": 1e-6}))  # an increment about the model's size
    down, _, _ = model.downlink(7, spec, "arrays", 6, bytes(16))
    increment, keyframe = len(model.increments[model.version].data), len(model._keyframe_payload(spec)[0].data)
    assert increment > model.raw_bytes / 2
    assert down.kind == (protocol.KEYFRAME if keyframe <= increment else protocol.DELTA)  # the cheaper one
    model.advance({"w": huge["w"] * -1.5, "n": model.tensors["n"]}, CodecSpec("nnc", {"step": 1e-6}))
    down, _, _ = model.downlink(7, spec, "arrays", 7, bytes(16))
    assert down.kind == protocol.KEYFRAME  # two such increments cost more than the model


def test_chains_are_bounded_by_max_chain(make_grid, initial_arrays):
    random.seed(3)
    grid = make_grid(6)
    inner = FedAvg(fraction_train=0.34, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=6)
    strategy = CompressedStrategy(inner, codec_params={"step": 0.001}, downlink=DownlinkSettings(max_chain=1))
    run_federation(strategy, grid, initial_arrays, 8)
    assert set(_chains(grid)) <= {1}
    assert sum(r["keyframes"] for r in strategy.bandwidth[1:]) > 0
    with pytest.raises(ValueError, match="max_chain"):
        CompressedStrategy(FedAvg(), downlink=DownlinkSettings(max_chain=0))


def test_downlink_params_set_the_increment_rate(make_grid, initial_arrays):
    import nnc_fl

    strategy = CompressedStrategy(
        FedAvg(min_available_nodes=4),
        codec_params={"step": 0.001},
        downlink=DownlinkSettings({"step": 0.004}, keyframe_grid=None),
    )
    run_federation(strategy, make_grid(4), initial_arrays, 2)
    v = strategy.model.version
    steps = {t.step for t in nnc_fl.inspect(strategy.model.increments[v].data).tensors if t.step is not None}
    assert steps == {np.float32(0.004)}
    # on the keyframe grid, a step is the power-of-two multiple of the tensor's grid step nearest it
    strategy = CompressedStrategy(
        FedAvg(min_available_nodes=4), codec_params={"step": 0.001}, downlink=DownlinkSettings({"step": 0.004})
    )
    run_federation(strategy, make_grid(4), initial_arrays, 2)
    grid = strategy.model.grid
    for t in nnc_fl.inspect(strategy.model.increments[strategy.model.version].data).tensors:
        if t.step is not None:
            ratio = t.step / grid[t.name]
            assert ratio >= 1 and ratio == 2 ** round(np.log2(ratio)) and 0.002 < t.step < 0.008
    with pytest.raises(ValueError):
        CompressedStrategy(FedAvg(), codec_params={"step": 0.001}, downlink=DownlinkSettings({"step": -1.0}))


def test_downlink_error_feedback_makes_the_rounding_average_out():
    spec = CodecSpec("nnc", {"step": 0.1})
    target = {"w": np.array([0.04, -0.13, 0.26, 0.0], np.float32)}
    errors = {}
    for ef in (True, False):
        model = ServerModel(DownlinkSettings(error_feedback=ef))
        model.adopt({"w": np.zeros(4, np.float32)})
        seen = []
        for _ in range(40):
            model.advance(target, spec)
            seen.append(model.tensors["w"].astype(np.float64))
        errors[ef] = np.abs(np.mean(seen, axis=0) - target["w"]).max()
    assert errors[False] >= 0.03  # plain rounding leaves G stuck up to step/2 away
    assert errors[True] < 0.01  # with error feedback the error averages out


def _shared_app(shared) -> ClientApp:
    """The test app's user functions behind ``make_nnc_mod(shared_model=shared)``."""
    from nncfl_testapp import client_app as user

    from clients import make_nnc_mod

    app = ClientApp(mods=[make_nnc_mod(shared_model=shared)])
    app.train()(user.train)
    app.evaluate()(user.evaluate)
    return app


def test_shared_initial_model_replaces_first_contact_keyframes(initial_arrays):
    from nncfl_testapp.task import initial_model

    random.seed(5)
    grid = LocalGrid(_shared_app(lambda context: initial_model()), 6)
    inner = FedAvg(fraction_train=0.5, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=6)
    strategy = CompressedStrategy(inner, codec_params={"step": 0.05},
                                  downlink=DownlinkSettings(shared_initial_model=True, max_chain=32))
    run_federation(strategy, grid, initial_arrays, 6)  # bit-identical models every round
    rows = strategy.bandwidth
    assert sum(r["keyframes"] for r in rows) == 0 and all(r["resyncs"] == 0 for r in rows)
    assert rows[0]["down_bytes"] == 0  # round 1: everybody already holds the initial model
    assert all(r["accepted"] == r["clients"] for r in rows)


def test_node_without_the_shared_model_resyncs_and_gets_a_keyframe(initial_arrays):
    from nncfl_testapp.task import initial_model

    def shared(context):  # node 101 ships another model, node 102 none at all
        pid = context.node_config["partition-id"]
        if pid == 0:
            return {k: v + 1 for k, v in initial_model().items()}
        return None if pid == 1 else initial_model()

    grid = LocalGrid(_shared_app(shared), 4)
    strategy = CompressedStrategy(
        FedAvg(min_available_nodes=4), codec_params={"step": 0.05}, downlink=DownlinkSettings(shared_initial_model=True)
    )
    run_federation(strategy, grid, initial_arrays, 4)
    rows = strategy.bandwidth
    # round 1 sends no payload ("same"); the two nodes without the right model cannot confirm it
    assert rows[0]["resyncs"] == 2 and rows[0]["accepted"] == 2 and rows[0]["down_bytes"] == 0
    assert sum(r["resyncs"] for r in rows) == 2 and sum(r["keyframes"] + r["eval_keyframes"] for r in rows) == 2
    assert rows[-1]["accepted"] == 4


# -- temporal contexts (NNCCodec(temporal=True)) --------------------------------------------------


def _temporal_streams(messages) -> tuple[int, int]:
    """(streams naming a temporal reference, streams naming none) among the payloads of ``messages``."""
    temporal = plain = 0
    for m in messages:
        for record in m.content.array_records.values():
            for name in record:
                if name.startswith(protocol.PAYLOAD_KEY):
                    data = protocol.unpack_payload(record[name])
                    if is_schema_bound(data):
                        continue  # (needs the schema; the tests below use self-contained tables)
                    if nnc_fl.inspect(data).temporal_digest is None:
                        plain += 1
                    else:
                        temporal += 1
    return temporal, plain


def _always_temporal(coded):
    """``nnc_fl.api._settle_temporal`` that keeps every coding with temporal contexts."""
    return [(record, levels) for record, levels, _ in coded]


def test_temporal_contexts_keep_every_node_in_sync(make_grid, initial_arrays, monkeypatch):
    # nodes skip rounds (chains, catch-ups, keyframes): each gets increments it can decode -- the
    # temporal ones when it holds the increment before, plain twins otherwise -- and codes its update
    # against the increment it holds; run_federation checks every node's model bit for bit. (The
    # test app's model is tiny and the tool rarely pays on it: its streams use it wherever they can.)
    monkeypatch.setattr(nnc_fl.api, "_settle_temporal", _always_temporal)
    random.seed(5)
    grid = make_grid(6)
    up = [0, 0]  # uplink streams naming a temporal reference, naming none (counted as they leave)

    def count(reply):
        for i, n in enumerate(_temporal_streams([reply])):
            up[i] += n
        return reply

    grid.tamper.update(dict.fromkeys(grid.contexts, count))
    inner = FedAvg(fraction_train=0.5, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=6)
    strategy = CompressedStrategy(
        inner, codec_params={"rel_step": 1.0, "temporal": True}, validation=ValidationSettings(direction_spread=None)
    )
    run_federation(strategy, grid, initial_arrays, 8)
    rows = strategy.bandwidth
    assert all(r["accepted"] == r["clients"] and r["resyncs"] == 0 and r["rejected"] == 0 for r in rows)
    down_temporal, down_plain = _temporal_streams(m for m in grid.sent if m.metadata.message_type == "train")
    up_temporal, up_plain = up
    assert down_temporal > 0 and up_temporal > 0  # the tool is used on both links ...
    assert down_plain > 0 and up_plain > 0  # ... and left out where a node lacks the reference
    model = strategy.model
    assert model.last_increment is not None and set(model._plain) <= set(model.increments)


def test_temporal_streams_against_another_reference_are_refused_as_base(make_grid, initial_arrays, monkeypatch):
    monkeypatch.setattr(nnc_fl.api, "_settle_temporal", _always_temporal)  # (as above)
    grid = make_grid(3)
    strategy = CompressedStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=3), codec_params={"rel_step": 1.0, "temporal": True}
    )
    recoded = []

    def stale(reply):  # node 101's update, coded again against a reference the server does not hold
        record = reply.content["arrays"]
        data = protocol.unpack_payload(record[protocol.PAYLOAD_KEY])
        info = nnc_fl.inspect(data)
        if info.temporal_digest is None:
            return reply
        held = protocol.tensors_of(grid.contexts[101].state["nnc-fl.increment"])
        decoded = nnc_fl.decode(data, temporal_reference=held)
        other = {k: v + np.float32(0.5) if v.dtype.kind == "f" else v for k, v in held.items()}
        again = nnc_fl.encode(
            decoded, step={t.name: t.step for t in info.tensors if t.step is not None},
            lossless=[t.name for t in info.tensors if t.step is None], fingerprint=info.fingerprint,
            temporal_reference=other,
        )
        record[protocol.PAYLOAD_KEY] = Array(**protocol.pack_payload(again))
        recoded.append(1)
        return reply

    grid.tamper[101] = stale
    run_federation(strategy, grid, initial_arrays, 4)
    rows = strategy.bandwidth
    assert recoded and sum(r["rejected_base"] for r in rows) == len(recoded)
    assert all(r["accepted"] + r["rejected_base"] == r["clients"] for r in rows)
