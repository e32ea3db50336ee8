"""CompressedStrategy's settings: grouped, validated at construction, all logged by summary()."""

from __future__ import annotations

import pytest
from conftest import summary_text
from flwr.serverapp.strategy import FedAvg

from nnc_fl import protocol
from strategies import CodecSettings, CompressedStrategy, DownlinkSettings, ValidationSettings


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
