"""CompressedStrategy's settings: grouped, validated at construction, all logged by summary()."""

from __future__ import annotations

import json
import math

import pytest
from conftest import summary_text
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg

from nnc_fl import protocol
from strategies import CodecSettings, CompressedStrategy, DownlinkSettings, ValidationSettings
from strategies.settings import participation_rel_step


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: CodecSettings("nope"), ValueError, "unknown codec"),
        (lambda: CodecSettings("nnc", {"colour": 3}), ValueError, "bad parameters"),
        (lambda: CodecSettings("nnc", {"rel_step": 1e-30}), ValueError, "rel_step"),
        (lambda: CodecSettings("nnc", {"step": 0.1, "qp": -4}), ValueError, "at most one"),
        (lambda: CodecSettings("nnc", [("step", 1)]), TypeError, "mapping"),
        (lambda: CodecSettings("nnc", schedule=3), TypeError, "schedule"),
        (lambda: CodecSettings("nnc", residual_max_age=-1), ValueError, "residual_max_age"),
        (lambda: CodecSettings("nnc", residual_max_age=True), ValueError, "residual_max_age"),
        (lambda: CodecSettings("nnc", residual_max_age=2.0), ValueError, "residual_max_age"),
        (lambda: CodecSettings("nnc", train_from_residual=1), TypeError, "train_from_residual"),
        (lambda: DownlinkSettings(max_chain=0), ValueError, "max_chain"),
        (lambda: DownlinkSettings(max_chain=protocol.MAX_CHAIN + 1), ValueError, "max_chain"),
        (lambda: DownlinkSettings(max_chain=2.5), TypeError, "max_chain"),
        (lambda: ValidationSettings(outlier_threshold=-1), ValueError, "outlier_threshold"),
        (lambda: ValidationSettings(outlier_threshold=float("nan")), ValueError, "outlier_threshold"),
        (lambda: ValidationSettings(max_update_norm=0), ValueError, "max_update_norm"),
        (lambda: ValidationSettings(outlier_min_count=2), ValueError, "outlier_min_count"),
        (lambda: ValidationSettings(nonnegative=3), TypeError, "nonnegative"),
        (lambda: ValidationSettings(nonnegative=["*var", None]), TypeError, "nonnegative"),
    ],
)
def test_impossible_settings_are_refused_at_construction(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_nonnegative_patterns_read_as_a_comma_separated_string_or_a_list():
    assert ValidationSettings().nonnegative == ("*running_var", "*moving_variance")
    assert ValidationSettings(nonnegative=" a.var , *scale").nonnegative == ("a.var", "*scale")
    assert ValidationSettings(nonnegative=["a.var"]).nonnegative == ("a.var",)
    assert ValidationSettings(nonnegative="").nonnegative == ()


def test_settings_are_frozen_and_their_params_immutable():
    codec = CodecSettings("nnc", {"rel_step": 3.0})
    with pytest.raises(AttributeError):
        codec.name = "fp32"
    with pytest.raises(TypeError):
        codec.params["rel_step"] = 1.0


def test_the_drop_in_and_the_grouped_form_build_the_same_strategy():
    a = CompressedStrategy(FedAvg(), "nnc", {"rel_step": 3.0})
    b = CompressedStrategy(FedAvg(), CodecSettings("nnc", {"rel_step": 3.0}))
    assert a.spec_for(1) == b.spec_for(1)
    with pytest.raises(ValueError, match="inside CodecSettings"):
        CompressedStrategy(FedAvg(), CodecSettings("nnc"), {"rel_step": 3.0})
    with pytest.raises(TypeError, match="DownlinkSettings"):
        CompressedStrategy(FedAvg(), downlink={"exact": True})


def test_schedule_and_downlink_params_merge_over_the_codec_params():
    codec = CodecSettings("nnc", {"rel_step": 3.0, "rd_lambda": 0.05}, schedule=lambda r: {"rel_step": float(r)})
    strategy = CompressedStrategy(FedAvg(), codec, downlink=DownlinkSettings({"rel_step": 8.0}))
    assert dict(strategy.spec_for(2).params) == {"rel_step": 2.0, "rd_lambda": 0.05}
    assert dict(strategy.downlink_spec(2).params) == {"rel_step": 8.0, "rd_lambda": 0.05}


def test_summary_logs_every_setting(caplog):
    strategy = CompressedStrategy(
        FedAvg(),
        CodecSettings("nnc", {"rel_step": 3.0}),
        downlink=DownlinkSettings({"rel_step": 4.0}, max_chain=7),
        validation=ValidationSettings(outlier_threshold=12.5, max_update_norm=3.0),
    )
    text = summary_text(strategy, caplog)
    for setting in (CodecSettings, DownlinkSettings, ValidationSettings):
        for name in setting.__dataclass_fields__:
            assert f"{name}=" in text, name
    assert "max_chain=7" in text and "outlier_threshold=12.5" in text and "'rel_step': 4.0" in text


def test_the_drop_in_default_compresses_with_the_measured_setting():
    measured = {"rel_step": 2.0, "float_lossless": True, "schema_bound": True, "lossless_bits": 8}
    default = CompressedStrategy(FedAvg())
    # one step per update (rel_to="update") and light rate-distortion rounding for the updates; the
    # increments keep a step per tensor and round to nearest
    uplink_only = {"rel_to": "update", "rd_lambda": 0.02}
    assert dict(default.spec_for(1).params) == {**measured, **uplink_only}
    assert dict(default.downlink_spec(1).params) == measured
    # the same with a budget, which travels with the updates only
    budget = CompressedStrategy(FedAvg(), target_uplink=0.005)
    assert dict(budget.spec_for(1).params) == {**measured, **uplink_only, "target_fraction": 0.005}
    assert dict(budget.downlink_spec(1).params) == measured
    # parameters given (even the same ones): exactly those
    given = CompressedStrategy(FedAvg(), "nnc", {"rel_step": 2.0, "float_lossless": True}, target_uplink=0.005)
    assert "rel_to" not in given.spec_for(1).params
    # a schedule may still change the uplink's rel_to
    tensor = CompressedStrategy(FedAvg(), CodecSettings("nnc", schedule=lambda r: {"rel_to": "tensor"},
                                                        target_uplink=0.005))
    assert tensor.spec_for(3).params["rel_to"] == "tensor"
    assert dict(CompressedStrategy(FedAvg(), "nnc", {}).spec_for(1).params) == {}  # the codec's own default
    assert dict(CompressedStrategy(FedAvg(), None).spec_for(1).params) == {}  # fp32


def test_nnc_nodes_train_from_their_residual_unless_told_otherwise():
    assert CompressedStrategy(FedAvg()).codec.train_from_residual is True
    assert CompressedStrategy(FedAvg(), "nnc", {"step": 0.01}).codec.train_from_residual is True
    assert CodecSettings("nnc", train_from_residual=False).train_from_residual is False
    # the baselines keep the error feedback they were published with; fp32 has no residual at all
    assert CodecSettings("topk", {"ratio": 0.01}).train_from_residual is False
    assert CompressedStrategy(FedAvg(), None).codec.train_from_residual is False
    assert CodecSettings("sign", train_from_residual=True).train_from_residual is True


def test_participation_rel_step_is_log_linear_between_the_measured_ends():
    assert participation_rel_step(1.0) == participation_rel_step(0.5) == 2.0
    assert participation_rel_step(0.1) == participation_rel_step(0.01) == 1.2
    mid = participation_rel_step(math.sqrt(0.05))  # halfway between 0.1 and 0.5 in log
    assert mid == pytest.approx(1.6, abs=1e-3)
    steps = [participation_rel_step(s) for s in (0.05, 0.1, 0.2, 0.3, 0.5, 0.9)]
    assert steps == sorted(steps)
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="share"):
            participation_rel_step(bad)


@pytest.mark.parametrize(("nodes", "fraction", "step"), [(4, 0.5, 2.0), (20, 0.1, 1.2), (10, 0.2, 1.545)])
def test_a_cross_device_round_gets_a_finer_default_uplink_step(make_grid, initial_arrays, nodes, fraction, step):
    """The share of the connected nodes a round trains sets the default updates' step; the
    increments, and parameters a user gave, are left alone."""
    for given, expected in ((None, step), ({"rel_step": 3.0}, 3.0)):
        strategy = CompressedStrategy(FedAvg(fraction_train=fraction, fraction_evaluate=0.0,
                                             min_available_nodes=nodes), "nnc", given)
        grid = make_grid(nodes)
        messages = strategy.configure_train(1, initial_arrays, ConfigRecord(), grid)
        assert len(list(messages)) == max(2, round(fraction * nodes))
        assert strategy.spec_for(1).params["rel_step"] == expected
        assert strategy.downlink_spec(1).params["rel_step"] == (2.0 if given is None else 3.0)
        record = protocol.Downlink.from_config(dict(messages[0].content[protocol.RECORD_KEY]))
        assert json.loads(record.codec_params)["rel_step"] == expected  # what the node codes with
