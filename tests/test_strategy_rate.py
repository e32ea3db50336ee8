"""CompressedStrategy(..., target_uplink=, target_downlink=): budgets set by the server, obeyed by the clients."""

from __future__ import annotations

import pytest
from conftest import run_federation, summary_text
from flwr.serverapp.strategy import FedAvg

import nnc_fl
from nnc_fl import protocol
from strategies import BudgetSchedule, CodecSettings, CompressedStrategy, DownlinkSettings
from strategies.settings import BUDGET_DOWNLINK_PARAMS, DEFAULT_PARAMS, DEFAULT_UPLINK_PARAMS


@pytest.mark.parametrize("bad", [0, -3, 0.0, 1.0, 1.5, 2000.0, -0.1, float("nan"), float("inf"), True, "0.01"])
def test_impossible_budgets_are_refused_at_construction(bad):
    with pytest.raises((TypeError, ValueError), match="target_uplink"):
        CompressedStrategy(FedAvg(), target_uplink=bad)
    with pytest.raises((TypeError, ValueError), match="target_downlink"):
        CompressedStrategy(FedAvg(), target_downlink=bad)
    with pytest.raises((TypeError, ValueError), match="target_uplink"):
        CodecSettings("nnc", target_uplink=bad)


def test_budgets_need_a_codec_with_rate_control_and_one_place():
    with pytest.raises(ValueError, match="rate control"):
        CompressedStrategy(FedAvg(), codec="fp32", target_uplink=0.01)
    with pytest.raises(ValueError, match="rate control"):
        CompressedStrategy(FedAvg(), codec=None, target_downlink=0.01)
    with pytest.raises(ValueError, match="exact"):
        DownlinkSettings(exact=True, target=0.01)
    with pytest.raises(ValueError, match="inside CodecSettings"):
        CompressedStrategy(FedAvg(), CodecSettings("nnc"), target_uplink=0.01)
    with pytest.raises(ValueError, match="inside DownlinkSettings"):
        CompressedStrategy(FedAvg(), downlink=DownlinkSettings(), target_downlink=0.01)


def test_budgets_travel_as_codec_parameters_each_link_its_own():
    default = CompressedStrategy(FedAvg())
    assert not {"target_fraction", "target_bytes"} & set(default.spec_for(1).params)
    assert not {"target_fraction", "target_bytes"} & set(default.downlink_spec(1).params)
    s = CompressedStrategy(FedAvg(), target_uplink=0.005, target_downlink=2000)
    uplink = {**DEFAULT_PARAMS["nnc"], **DEFAULT_UPLINK_PARAMS["nnc"]}
    assert dict(s.spec_for(1).params) == {**uplink, "target_fraction": 0.005}
    assert dict(s.downlink_spec(1).params) == {**DEFAULT_PARAMS["nnc"], **BUDGET_DOWNLINK_PARAMS["nnc"],
                                               "target_bytes": 2000}
    only_up = CompressedStrategy(FedAvg(), target_uplink=3000)
    assert "target_bytes" not in only_up.downlink_spec(1).params  # the uplink budget is not the downlink's
    grouped = CompressedStrategy(FedAvg(), CodecSettings("nnc", {"rel_step": 3.0}, target_uplink=0.01),
                                 downlink=DownlinkSettings({"rel_step": 4.0}, target=0.02))
    assert dict(grouped.spec_for(2).params) == {"rel_step": 3.0, "target_fraction": 0.01}
    assert dict(grouped.downlink_spec(2).params) == {"rel_step": 4.0, "rel_to": "update", "keep_within": 0.2,
                                                     "target_fraction": 0.02}
    assert "target_uplink=0.01" in repr(grouped) and "target_downlink=0.02" in repr(grouped)


def test_budgeted_increments_default_to_one_kept_step_unless_told_otherwise():
    assert BUDGET_DOWNLINK_PARAMS["nnc"] == {"rel_to": "update", "keep_within": 0.2}
    unbudgeted = CompressedStrategy(FedAvg())
    assert not {"rel_to", "keep_within"} & set(unbudgeted.downlink_spec(1).params)
    told = CompressedStrategy(FedAvg(), downlink=DownlinkSettings({"rel_to": "tensor", "keep_within": 0}, target=0.01))
    assert dict(told.downlink_spec(1).params) == {**DEFAULT_PARAMS["nnc"], "rel_to": "tensor", "keep_within": 0,
                                                  "target_fraction": 0.01}
    in_round = CompressedStrategy(FedAvg(), CodecSettings("nnc", {"rel_step": 2.0, "keep_within": 0.5}),
                                  target_downlink=0.01)
    assert dict(in_round.downlink_spec(1).params) == {"rel_step": 2.0, "keep_within": 0.5, "rel_to": "update",
                                                      "target_fraction": 0.01}
    absolute = CompressedStrategy(FedAvg(), CodecSettings("nnc", {"step": 1e-3}), target_downlink=0.01)
    assert dict(absolute.downlink_spec(1).params) == {"step": 1e-3, "keep_within": 0.2, "target_fraction": 0.01}
    absolute.downlink_spec(1).make()  # rel_to="update" needs a rel_step: not added to an absolute step


def test_summary_logs_the_budgets(caplog):
    strategy = CompressedStrategy(FedAvg(), target_uplink=0.005, target_downlink=4096)
    text = summary_text(strategy, caplog)
    assert "target_uplink=0.005" in text and "target=4096" in text


@pytest.mark.parametrize("grid", [None, 5])
def test_every_update_and_increment_meets_its_budget(make_grid, initial_arrays, grid):
    up, down = 0.25, 0.2
    strategy = CompressedStrategy(FedAvg(min_available_nodes=4), target_uplink=up,
                                  downlink=DownlinkSettings(keyframe_grid=grid, target=down))
    sent_grid = make_grid(4)
    run_federation(strategy, sent_grid, initial_arrays, 3)
    raw = strategy.model.raw_bytes
    rows = strategy.bandwidth
    assert all(r["accepted"] == 4 for r in rows)
    for r in rows:  # each of the round's 4 updates is within the budget, so is their sum
        assert 0.9 * up * r["up_raw_bytes"] <= r["up_bytes"] <= up * r["up_raw_bytes"]
    for payload in strategy.model.increments.values():
        assert len(payload.data) <= down * raw
        assert payload.spec.params["target_fraction"] == down
    if grid is None:
        floor = 1 - BUDGET_DOWNLINK_PARAMS["nnc"]["keep_within"] - 0.01  # kept steps land up to 20 % below
        assert all(len(p.data) >= floor * down * raw for p in strategy.model.increments.values())
    train = [m.content[protocol.RECORD_KEY] for m in sent_grid.sent if m.metadata.message_type == "train"]
    assert {protocol.decode_params(c["codec_params"])["target_fraction"] for c in train} == {up}
    inc = strategy.model.increments[strategy.model.version]
    assert nnc_fl.decode(inc.data, expect=strategy.model.tensors)  # an ordinary (schema-bound) stream


def test_a_budget_below_the_smallest_stream_stops_the_run_before_anything_is_sent(make_grid, initial_arrays):
    grid = make_grid(4)
    strategy = CompressedStrategy(FedAvg(min_available_nodes=4), target_uplink=0.01)  # 12 bytes
    with pytest.raises(ValueError, match="smallest stream"):
        strategy.start(grid=grid, initial_arrays=initial_arrays, num_rounds=1)
    assert not [m for m in grid.sent if m.metadata.message_type == "train"]


@pytest.mark.parametrize("bad", [
    "", "0.01x0", "0.01x4,", "x4", "0.01,0.02x3", "2.0x3", "0.01x2,3000", "nanx3", "0.01x1.5", "0.01x4" * 200,
    "0.01x1," * 64 + "0.01",
])
def test_impossible_budget_schedules_are_refused(bad):
    with pytest.raises(ValueError):
        BudgetSchedule.parse(bad)


@pytest.mark.parametrize("segments", [(), "0.01x4", ((0.01, None), (0.02, None)), ((0.01, True),), ((0.01,),),
                                      ((0.01, 3), (1.5, None))])
def test_impossible_budget_segments_are_refused(segments):
    with pytest.raises(ValueError):
        BudgetSchedule(segments)


def test_a_budget_schedule_sets_each_rounds_uplink_budget():
    s = BudgetSchedule.parse(" 0.01x4, 0.00375")
    assert s.segments == ((0.01, 4), (0.00375, None)) and str(s) == "0.01x4,0.00375"
    assert [s(r) for r in (1, 4, 5, 20, 10**6)] == [0.01, 0.01, 0.00375, 0.00375, 0.00375]
    assert s.mean(20) == pytest.approx(0.005) and s.smallest == 0.00375
    closed = BudgetSchedule(((3000, 2), (1000, 1)))  # the last budget holds after the schedule ends
    assert [closed(r) for r in (1, 2, 3, 4, 9)] == [3000, 3000, 1000, 1000, 1000]
    strategy = CompressedStrategy(FedAvg(), target_uplink=s)
    assert strategy.spec_for(4).params["target_fraction"] == 0.01
    assert strategy.spec_for(5).params["target_fraction"] == 0.00375
    assert "target_fraction" not in strategy.downlink_spec(1).params  # the uplink's only
    with pytest.raises(ValueError, match="rate control"):
        CompressedStrategy(FedAvg(), codec="fp32", target_uplink=s)


def test_every_update_meets_its_rounds_scheduled_budget(make_grid, initial_arrays, caplog):
    schedule = BudgetSchedule(((0.3, 1), (0.15, None)))
    strategy = CompressedStrategy(FedAvg(min_available_nodes=4), target_uplink=schedule)
    run_federation(strategy, make_grid(4), initial_arrays, 3)
    rows = strategy.bandwidth
    assert [r["accepted"] for r in rows] == [4, 4, 4]
    for r in rows:
        budget = schedule(r["round"])
        assert 0.9 * budget * r["up_raw_bytes"] <= r["up_bytes"] <= budget * r["up_raw_bytes"]
    assert rows[0]["up_bytes"] > 1.5 * rows[1]["up_bytes"]
    assert "budget schedule 0.3x1,0.15 (mean 20.00 %)" in strategy.run_summary()
    assert "target_uplink=BudgetSchedule('0.3x1,0.15')" in summary_text(strategy, caplog)
    in_bytes = CompressedStrategy(FedAvg(min_available_nodes=4), target_uplink=BudgetSchedule(((4000, 1), (2000, 2))))
    run_federation(in_bytes, make_grid(4), initial_arrays, 2)
    assert "budget schedule 4000x1,2000x2 (mean 3000 bytes)" in in_bytes.run_summary()


def test_a_schedule_whose_smallest_budget_is_below_the_smallest_stream_stops_the_run(make_grid, initial_arrays):
    grid = make_grid(4)
    strategy = CompressedStrategy(FedAvg(min_available_nodes=4), target_uplink=BudgetSchedule(((0.5, 2), (0.01, None))))
    with pytest.raises(ValueError, match="smallest stream"):
        strategy.start(grid=grid, initial_arrays=initial_arrays, num_rounds=1)
    assert not [m for m in grid.sent if m.metadata.message_type == "train"]
