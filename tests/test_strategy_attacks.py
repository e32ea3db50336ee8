"""Broken or malicious updates are refused with a reason; the round goes on with the honest ones."""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import recode, reply_payload, run_federation, set_payload, set_uplink
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from nnc_fl import protocol
from strategies import CompressedStrategy, DownlinkSettings, ValidationSettings

HONEST, ATTACKER, ROUNDS, STEP = 4, 105, 3, 0.001


def _flip(reply: Message) -> Message:
    _, data = reply_payload(reply)
    data = bytearray(data)
    for i in range(len(data) // 3, len(data) // 3 + 8):
        data[i] ^= 0x5A
    return set_payload(reply, bytes(data))


def _truncate(reply: Message) -> Message:
    _, data = reply_payload(reply)
    return set_payload(reply, data[: len(data) // 2])


def _scale(t):
    return {k: v * 1000 if v.dtype.kind == "f" else v for k, v in t.items()}


def _no_record(reply: Message) -> Message:
    del reply.content[protocol.RECORD_KEY]
    return reply


def _plain_arrays(reply: Message) -> Message:  # what a client without nnc_mod would send
    key, _ = reply_payload(reply)
    reply.content[key] = ArrayRecord({"fc.weight": Array(np.zeros((12, 24), np.float32))})
    return reply


def _odd_metrics(reply: Message) -> Message:
    reply.content["metrics"] = MetricRecord({"num-examples": 64, "something_else": 1.0})
    return reply


ATTACKS = {
    "corrupt-bytes": ("nnc", _flip, "format"),
    "truncated": ("nnc", _truncate, "format"),
    "wrong-version": (
        "nnc",
        lambda r: set_uplink(r, version=r.content[protocol.RECORD_KEY]["version"] - 1),
        "base",
    ),
    "wrong-fingerprint": ("nnc", lambda r: set_uplink(r, fingerprint=bytes(32)), "base"),
    "wrong-shape": ("nnc", lambda r: recode(r, lambda t: {**t, "fc.weight": t["fc.weight"][:-1]}), "schema"),
    "wrong-dtype": (
        "nnc",
        lambda r: recode(r, lambda t: {**t, "fc.bias": t["fc.bias"].astype(np.float64)}),
        "schema",
    ),
    "missing-tensor": (
        "nnc",
        lambda r: recode(r, lambda t: {k: v for k, v in t.items() if k != "fc.bias"}),
        "schema",
    ),
    "nan": (
        "npz-test",
        lambda r: recode(r, lambda t: {**t, "fc.bias": t["fc.bias"] * np.nan}, codec="npz-test"),
        "nonfinite",
    ),
    "scaled-1000x": ("nnc", lambda r: recode(r, _scale), "norm"),
    "no-protocol-record": ("nnc", _no_record, "protocol"),
    "uncoded-arrays": ("nnc", _plain_arrays, "protocol"),
}


def _run(codec: str, make_grid, initial_arrays, attack=None, attacker_online=True):
    random.seed(3)
    grid = make_grid(HONEST + 1)
    if not attacker_online:
        grid.online.discard(ATTACKER)
    if attack is not None:
        grid.tamper[ATTACKER] = attack
    strategy = CompressedStrategy(FedAvg(min_available_nodes=HONEST), codec=codec, codec_params={"step": STEP})
    result, _ = run_federation(strategy, grid, initial_arrays, ROUNDS)
    return strategy, {k: a.numpy() for k, a in result.arrays.items()}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_bad_update_is_rejected_and_round_completes(name, make_grid, initial_arrays, caplog):
    codec, attack, code = ATTACKS[name]
    strategy, final = _run(codec, make_grid, initial_arrays, attack)
    _, honest = _run(codec, make_grid, initial_arrays, attacker_online=False)

    for row in strategy.bandwidth:
        assert row["rejected"] == 1 and row[f"rejected_{code}"] == 1, row
        assert row["accepted"] == HONEST
    assert strategy.model.version == ROUNDS + 1  # every round advanced with the honest updates
    assert f"rejected update from node {ATTACKER} ({code}:" in caplog.text
    for key, value in honest.items():
        assert np.all(np.isfinite(final[key]))
        # equal up to downlink rounding: sums in another order may round an element to a neighbour step
        np.testing.assert_allclose(final[key], value, rtol=0, atol=ROUNDS * STEP)


def test_every_update_rejected_keeps_the_model(make_grid, initial_arrays):
    grid = make_grid(3)
    for node in grid.contexts:
        grid.tamper[node] = _flip
    strategy = CompressedStrategy(
        FedAvg(min_available_nodes=3), codec_params={"step": 0.001}, downlink=DownlinkSettings(keyframe_grid=None)
    )
    result, _ = run_federation(strategy, grid, initial_arrays, 2)
    assert strategy.model.version == 1 and [r["rejected_format"] for r in strategy.bandwidth] == [3, 3]
    for key, value in initial_arrays.items():
        np.testing.assert_array_equal(result.arrays[key].numpy(), value.numpy())
    assert result.train_metrics_clientapp[2]["nnc-fl.accepted"] == 0


def test_scale_checks_can_be_switched_off_and_the_outlier_test_on(make_grid, initial_arrays):
    grid = make_grid(4)
    grid.tamper[104] = lambda r: recode(r, _scale)
    strategy = CompressedStrategy(
        FedAvg(min_available_nodes=4),
        codec_params={"step": 0.001},
        validation=ValidationSettings(norm_clip_ratio=None, norm_reject_ratio=None, direction_spread=None),
    )
    run_federation(strategy, grid, initial_arrays, 1)
    assert strategy.bandwidth[0]["rejected"] == 0
    grid = make_grid(4)
    grid.tamper[104] = lambda r: recode(r, _scale)
    strategy = CompressedStrategy(
        FedAvg(min_available_nodes=4),
        codec_params={"step": 0.001},
        validation=ValidationSettings(
            norm_clip_ratio=None, norm_reject_ratio=None, direction_spread=None, outlier_threshold=10.0
        ),
    )
    run_federation(strategy, grid, initial_arrays, 1)
    assert strategy.bandwidth[0]["rejected_outlier"] == 1


def test_odd_metrics_reject_nobody_and_drop_out_of_the_aggregate(make_grid, initial_arrays):
    strategy, _ = _run("nnc", make_grid, initial_arrays, _odd_metrics)
    assert all(r["rejected"] == 0 and r["accepted"] == HONEST + 1 for r in strategy.bandwidth)
    assert strategy.model.version == ROUNDS + 1


def test_norm_bound(make_grid, initial_arrays):
    strategy = CompressedStrategy(
        FedAvg(min_available_nodes=3), codec_params={"step": 0.001}, validation=ValidationSettings(max_update_norm=1e-9)
    )
    run_federation(strategy, make_grid(3), initial_arrays, 1)
    assert strategy.bandwidth[0]["rejected_norm"] == 3 and strategy.model.version == 1
