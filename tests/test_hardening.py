"""Regression tests of the server's hardening: nothing a client sends raises out of the strategy,
the weighting metric is checked, peer text cannot flood or forge the log, updates can be
authenticated, the bandwidth log survives a crash, silent and departed nodes are handled."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
from conftest import LocalGrid, forge_raw, run_federation, summary_text
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from clients import make_nnc_mod
from nnc_fl import protocol
from strategies import CompressedStrategy, DownlinkSettings, ValidationSettings

KEYS = {f"node-{i}": bytes([i]) * 32 for i in range(4)}


def _strategy(nodes: int, **validation) -> CompressedStrategy:
    inner = FedAvg(fraction_evaluate=0.0, min_available_nodes=nodes)
    return CompressedStrategy(inner, codec_params={"step": 0.001}, validation=ValidationSettings(**validation))


def _weight(value):
    def tamper(reply):
        reply.content["metrics"] = MetricRecord({**reply.content["metrics"], "num-examples": value})
        return reply

    return tamper


def _final(result):
    return {k: a.numpy() for k, a in result.arrays.items()}


@pytest.mark.parametrize("value", [0, -5, float("nan"), float("inf")])
def test_bad_weights_are_rejected_even_when_every_client_sends_them(value, make_grid, initial_arrays):
    grid = make_grid(2)
    for node in grid.contexts:
        grid.tamper[node] = _weight(value)
    strategy = _strategy(2)
    run_federation(strategy, grid, initial_arrays, 2)  # FedAvg would divide by zero
    assert all(r["rejected_weight"] == 2 and r["accepted"] == 0 for r in strategy.bandwidth)
    assert strategy.model.version == 1


class _Exploding(FedAvg):
    def aggregate_train(self, server_round, replies):
        raise ZeroDivisionError("division by zero")


def test_a_failing_inner_strategy_ends_the_round_with_the_model_unchanged(make_grid, initial_arrays, caplog):
    inner = _Exploding(fraction_evaluate=0.0, min_available_nodes=2)
    strategy = CompressedStrategy(inner, codec_params={"step": 0.001}, downlink=DownlinkSettings(keyframe_grid=None))
    result, _ = run_federation(strategy, make_grid(2), initial_arrays, 3)
    assert [r["aggregate_failed"] for r in strategy.bandwidth] == [1, 1, 1]
    assert strategy.model.version == 1
    for k, v in _final(result).items():
        np.testing.assert_array_equal(v, initial_arrays[k].numpy())
    assert "inner aggregation failed (ZeroDivisionError" in caplog.text


class _NegativeBias(FedAvg):
    """Aggregates like FedAvg, then drives ``fc.bias`` below zero (as a server-side optimiser with
    momentum could drive a running variance)."""

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        tensors = {k: a.numpy() for k, a in arrays.items()}
        tensors["fc.bias"] = tensors["fc.bias"] - 100.0
        return ArrayRecord({k: Array(v) for k, v in tensors.items()}), metrics


def test_an_aggregate_outside_the_valid_range_leaves_the_model_unchanged(make_grid, initial_arrays, caplog):
    initial = {k: a.numpy() for k, a in initial_arrays.items()}
    initial["fc.bias"] = np.abs(initial["fc.bias"]) + 1.0  # a valid model: no negative entry
    inner = _NegativeBias(fraction_evaluate=0.0, min_available_nodes=2)
    strategy = CompressedStrategy(inner, codec_params={"step": 0.001},
                                  validation=ValidationSettings(nonnegative="fc.bias"))
    result, _ = run_federation(strategy, make_grid(2), ArrayRecord({k: Array(v) for k, v in initial.items()}), 2)
    rows = strategy.bandwidth
    assert [r["aggregate_failed"] for r in rows] == [1, 1] and all(r["rejected_range"] == 0 for r in rows)
    assert strategy.model.version == 1
    np.testing.assert_array_equal(_final(result)["fc.bias"], initial["fc.bias"])
    assert "unusable aggregate (range: tensor 'fc.bias' must not be negative" in caplog.text


def test_a_huge_finite_update_in_a_cohort_of_two_is_refused(make_grid, initial_arrays):
    grid = make_grid(2)
    grid.tamper[102] = lambda r: forge_raw(r, 3e38)
    strategy = _strategy(2)
    run_federation(strategy, grid, initial_arrays, 2)
    assert [r["rejected_norm"] for r in strategy.bandwidth] == [1, 1]
    assert strategy.model.version == 3  # the honest update still moved the model


def test_peer_text_is_bounded_and_escaped_in_the_log(make_grid, initial_arrays, caplog):
    def resync_with_a_story(reply):
        up = protocol.Uplink(kind=protocol.RESYNC, version=-1, fingerprint=b"",
                             reason="lost\n[ERROR] flwr: forged line \x1b[31m" + "x" * 900)
        reply.content = type(reply.content)({protocol.RECORD_KEY: ConfigRecord(up.to_config())})
        return reply

    grid = make_grid(2)
    grid.tamper[102] = resync_with_a_story
    run_federation(_strategy(2), grid, initial_arrays, 1)
    lines = [r.getMessage() for r in caplog.records if "asks for a keyframe" in r.getMessage()]
    assert lines and all("\n" not in line and "\x1b" not in line and len(line) < 300 for line in lines)
    assert "\\n[ERROR]" in lines[0]


def test_oversized_text_fields_are_refused_as_protocol_errors(make_grid, initial_arrays):
    def huge_codec_name(reply):
        record = dict(reply.content[protocol.RECORD_KEY])
        record["codec"] = "n" * (16 << 20)
        reply.content[protocol.RECORD_KEY] = ConfigRecord(record)
        return reply

    grid = make_grid(2)
    grid.tamper[102] = huge_codec_name
    strategy = _strategy(2)
    run_federation(strategy, grid, initial_arrays, 1)
    assert strategy.bandwidth[0]["rejected_protocol"] == 1


def _keyed_app(key_of):
    from nncfl_testapp import client_app as user

    def mod(msg, context, call_next):
        return make_nnc_mod(auth_key=key_of(context))(msg, context, call_next)

    app = ClientApp(mods=[mod])
    app.train()(user.train)
    app.evaluate()(user.evaluate)
    return app


def test_authenticated_updates(initial_arrays):
    def key_of(context):
        pid = context.node_config["partition-id"]
        if pid == 1:
            return None  # no key
        if pid == 2:
            return "node-2", b"\x99" * 32  # a wrong key
        if pid == 3:
            return "node-0", KEYS["node-0"]  # another node's key id
        return "node-0", KEYS["node-0"]

    grid = LocalGrid(_keyed_app(key_of), 4)
    strategy = _strategy(4, auth_keys=KEYS)
    run_federation(strategy, grid, initial_arrays, 2)
    for row in strategy.bandwidth:
        assert row["accepted"] == 1 and row["rejected_auth"] == 3, row
    # node-0's key id serves whichever of its two users authenticated first, the other never
    owners = [n for n in (101, 104) if f"{n}:" not in strategy.bandwidth[0]["rejected_nodes"]]
    assert len(owners) == 1 and all(f"{owners[0]}:" not in r["rejected_nodes"] for r in strategy.bandwidth)


def test_node_keys_from_node_config_and_keyring_file(tmp_path, initial_arrays):
    keyring = tmp_path / "keyring.txt"
    keyring.write_text("# operator's keys\n" + "".join(f"{k} {v.hex()}\n" for k, v in KEYS.items()))
    for i, key in enumerate(KEYS.values()):
        (tmp_path / f"node-{i}.key").write_text(key.hex())
    grid = LocalGrid(_keyed_app(lambda context: None), 4)
    for node, context in grid.contexts.items():
        i = node - 101
        context.node_config.update({"nnc-fl-key-id": f"node-{i}", "nnc-fl-key-file": str(tmp_path / f"node-{i}.key")})
    strategy = _strategy(4, auth_keys=str(keyring))
    run_federation(strategy, grid, initial_arrays, 2)
    assert all(r["accepted"] == 4 and r["rejected"] == 0 for r in strategy.bandwidth)
    assert KEYS["node-0"].hex() not in repr(strategy.validation)


def test_keys_are_never_logged(caplog):
    strategy = _strategy(2, auth_keys=KEYS)
    text = summary_text(strategy, caplog)
    assert "auth_keys=<4 keys: node-0, node-1, node-2, node-3>" in text
    assert all(k.hex() not in text for k in KEYS.values())


class _FailingEvaluate(FedAvg):
    def configure_evaluate(self, server_round, arrays, config, grid):
        if server_round == 2:
            raise RuntimeError("the ServerApp dies")
        return super().configure_evaluate(server_round, arrays, config, grid)


def test_the_bandwidth_log_is_complete_up_to_a_crash(tmp_path, make_grid, initial_arrays):
    path = tmp_path / "bw.jsonl"
    strategy = CompressedStrategy(_FailingEvaluate(min_available_nodes=2), codec_params={"step": 0.001},
                                  bandwidth_log=path)
    with pytest.raises(RuntimeError, match="dies"):
        run_federation(strategy, make_grid(2), initial_arrays, 3)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and rows[1]["accepted"] == 2


def test_a_silent_node_costs_one_timeout_and_gets_a_keyframe(make_grid, initial_arrays):
    grid = make_grid(3)
    seen_timeouts = []
    send = grid.send_and_receive

    def send_and_receive(messages, *, timeout=None):
        seen_timeouts.append(timeout)
        return send(messages, timeout=timeout)

    grid.send_and_receive = send_and_receive
    grid.drop.add(103)  # it never answers in round 1
    strategy = _strategy(3)

    def back(server_round):
        if server_round == 1:
            grid.drop.clear()

    random.seed(0)
    strategy.start(grid=grid, initial_arrays=initial_arrays, num_rounds=2, timeout=30.0,
                   evaluate_fn=lambda r, a: back(r))
    assert set(seen_timeouts) == {30.0}  # Strategy.start hands the round timeout to the grid
    rows = strategy.bandwidth
    assert rows[0]["failures"] == 1 and rows[0]["accepted"] == 2
    assert rows[1]["accepted"] == 3
    round2 = [m for m in grid.sent if m.metadata.message_type == "train"][-3:]
    kinds = {m.metadata.dst_node_id: protocol.Downlink.from_config(m.content[protocol.RECORD_KEY]).kind
             for m in round2}
    assert kinds[103] == protocol.KEYFRAME  # the silent node may or may not hold v1: it gets G_v whole
    # the others get whichever is smaller (this model is tiny: its keyframe may be)
    assert rows[1]["keyframes"] == sum(k == protocol.KEYFRAME for k in kinds.values())


def test_departed_nodes_are_forgotten(make_grid, initial_arrays):
    grid = make_grid(3)
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=2), codec_params={"step": 0.001})

    def leave(server_round):
        if server_round == 1:
            grid.online.discard(103)

    run_federation(strategy, grid, initial_arrays, 3, on_round=leave)
    assert set(strategy.model.node_versions) == {101, 102}


def test_evaluate_keyframes_count_in_the_downlink(make_grid, initial_arrays):
    grid = make_grid(3)
    # exact keyframes: on this tiny model a grid keyframe can be smaller than one increment
    strategy = CompressedStrategy(FedAvg(fraction_train=0.67, min_available_nodes=3), codec_params={"step": 0.001},
                                  downlink=DownlinkSettings(keyframe_grid=None))
    random.seed(4)
    run_federation(strategy, grid, initial_arrays, 2)
    first = strategy.bandwidth[0]
    assert first["keyframes"] == 2 and first["eval_keyframes"] == 1  # the node that only evaluates
    assert 0 < first["eval_keyframe_bytes"] <= first["eval_down_bytes"]
    assert first["keyframe_bytes"] <= first["down_bytes"]


def test_per_round_metrics_equal_the_bandwidth_rows(make_grid, initial_arrays):
    strategy = CompressedStrategy(FedAvg(fraction_train=0.67, min_available_nodes=3), codec_params={"step": 0.001})
    random.seed(4)
    result, _ = run_federation(strategy, make_grid(3), initial_arrays, 2)
    for row in strategy.bandwidth:
        train = result.train_metrics_clientapp[row["round"]]
        evaluate = result.evaluate_metrics_clientapp[row["round"]]
        assert {k: train[f"nnc-fl.{k}"] for k in ("up_bytes", "down_bytes", "keyframes", "accepted")} == {
            k: row[k] for k in ("up_bytes", "down_bytes", "keyframes", "accepted")}
        assert evaluate["nnc-fl.eval_down_bytes"] == row["eval_down_bytes"] > 0
        assert len([k for k in train if k.startswith("nnc-fl.")]) <= 8  # one compact line per round


def test_a_server_without_nnc_mod_on_its_clients_says_so_and_stops(initial_arrays, caplog):
    from nncfl_testapp import client_app as user

    plain = ClientApp()  # the user's functions, no nnc_mod: reading the coded model raises
    plain.train()(user.train)
    plain.evaluate()(user.evaluate)
    strategy = CompressedStrategy(FedAvg(min_available_nodes=2), codec_params={"step": 0.001})
    with pytest.raises(RuntimeError, match="nnc_mod"):
        strategy.start(grid=LocalGrid(plain, 2), initial_arrays=initial_arrays, num_rounds=2)
    assert "ClientApp(mods=[nnc_mod])" in caplog.text


def test_the_run_ends_with_one_summary_line(make_grid, initial_arrays, caplog):
    strategy = _strategy(2)
    with caplog.at_level(logging.INFO, logger="flwr"):
        run_federation(strategy, make_grid(2), initial_arrays, 2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("nnc-fl: 2 rounds")]
    assert len(lines) == 1 and "of fp32" in lines[0] and "keyframes" in lines[0]
