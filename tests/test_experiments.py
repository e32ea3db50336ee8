"""End to end: tiny UC10 / UC14A federations through CompressedStrategy, outputs, determinism, CLI."""

import argparse
import json

import numpy as np
import pytest

from experiments.cli import main as cli
from experiments.fl_app import Federation
from experiments.runner import ROUND_FIELDS, RunConfig, run


def _tiny(task: str, **kw) -> Federation:
    source = "digits" if task == "uc10" else "auto"
    return Federation(task=task, source=source, num_clients=3, n_train=240, n_test=120, seed=1, **kw)


@pytest.mark.parametrize("task", ["uc10", "uc14a"])
def test_tiny_run_writes_all_outputs_and_is_repeatable(task, tmp_path):
    cfg = RunConfig(_tiny(task), rounds=2, fraction=0.67, codec="nnc", codec_params={"rel_step": 2.0})
    out = run(cfg, tmp_path / "a")
    for name in ("config.json", "rounds.csv", "rounds.json", "summary.json", "accuracy.png", "bytes.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    rounds = out["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and set(rounds[1]) == set(ROUND_FIELDS)
    assert all(r["clients"] == 2 and 0 < r["up_bytes"] < r["up_raw_bytes"] for r in rounds[1:])
    assert rounds[1]["keyframes"] == 2  # first contact
    s = out["summary"]
    assert s["task"] == task and 0.0 <= s["final_accuracy"] <= 1.0 and s["up_pct"] < 20
    again = run(cfg, tmp_path / "b")
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]  # noqa: E731
    assert strip(again["rounds"]) == strip(rounds)  # same seed: same bytes and accuracy
    assert json.loads((tmp_path / "a" / "config.json").read_text())["codec_params"] == {"rel_step": 2.0}


def test_uncompressed_baseline_goes_through_the_same_path(tmp_path):
    out = run(RunConfig(_tiny("uc10"), rounds=1, fraction=1.0, codec="fp32"), tmp_path)
    r = out["rounds"][1]
    assert r["clients"] == 3 and r["up_bytes"] >= r["up_raw_bytes"]  # raw floats plus the container


def test_cli_compare_writes_a_table_and_plot(tmp_path, capsys):
    code = cli(["compare", "uc14a", "--rounds", "1", "--clients", "3", "--fraction", "1", "--n-train", "200",
                "--codecs", "fp32,topk", "--out", str(tmp_path)])
    assert code == 0
    table = (tmp_path / "comparison.md").read_text()
    assert "| fp32 |" in table and "| topk(ratio=0.01) |" in table
    assert (tmp_path / "comparison.png").stat().st_size > 0
    assert "comparison.md" in capsys.readouterr().out


def test_cli_rejects_bad_codec_parameters(capsys):
    assert cli(["run", "uc10", "--source", "digits", "--rounds", "1", "--param", "nonsense=1"]) == 2
    assert "bad parameters for codec 'nnc'" in capsys.readouterr().err


def test_cli_target_uplink_meets_the_budget_per_round(tmp_path, capsys):
    assert cli(["run", "uc10", "--source", "digits", "--rounds", "1", "--target-uplink", "1.5"]) == 2
    assert "fraction of the fp32 size" in capsys.readouterr().err
    code = cli(["run", "uc10", "--source", "digits", "--clients", "3", "--fraction", "1", "--n-train", "240",
                "--rounds", "2", "--target-uplink", "0.01", "--target-downlink", "0.02", "--out", str(tmp_path)])
    assert code == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["target_uplink"], config["target_downlink"]) == (0.01, 0.02)
    rounds = json.loads((tmp_path / "rounds.json").read_text())[1:]
    assert all(0.9 * r["up_raw_bytes"] * 0.01 <= r["up_bytes"] <= r["up_raw_bytes"] * 0.01 for r in rounds)


def test_cli_target_uplink_takes_a_schedule(tmp_path, capsys):
    for bad, why in ((["--target-uplink", "0.01x0,0.005"], "rounds must be an integer"),
                     (["--target-downlink", "0.01x2,0.005"], "--target-uplink only")):
        with pytest.raises(SystemExit) as exc:
            cli(["run", "uc10", "--rounds", "1", *bad])
        assert exc.value.code == 2 and why in capsys.readouterr().err
    code = cli(["run", "uc10", "--source", "digits", "--clients", "3", "--fraction", "1", "--n-train", "240",
                "--rounds", "3", "--target-uplink", "0.02x1,0.01", "--out", str(tmp_path)])
    assert code == 0
    assert json.loads((tmp_path / "config.json").read_text())["target_uplink"] == "0.02x1,0.01"
    rounds = json.loads((tmp_path / "rounds.json").read_text())[1:]
    for r, b in zip(rounds, [0.02, 0.01, 0.01], strict=True):
        assert 0.9 * r["up_raw_bytes"] * b <= r["up_bytes"] <= r["up_raw_bytes"] * b
    assert "target-up=0.02x1,0.01" in json.loads((tmp_path / "summary.json").read_text())["name"]


def test_shared_initial_model_changes_bytes_not_accuracy(tmp_path):
    # the shared model is kept exactly as given: compare with exact keyframes (no anchor grid)
    base = RunConfig(_tiny("uc10"), rounds=3, fraction=0.67, codec="nnc", codec_params={"rel_step": 2.0},
                     keyframe_grid=None)
    shared = RunConfig(**{**base.__dict__, "shared_initial_model": True})
    a, b = run(base), run(shared)
    assert [r["test_accuracy"] for r in a["rounds"]] == [r["test_accuracy"] for r in b["rounds"]]
    assert b["summary"]["keyframes"] == 0 < a["summary"]["keyframes"]
    assert b["summary"]["down_bytes"] < a["summary"]["down_bytes"]


def test_server_momentum_aggregates_with_fedavgm_behind_the_same_wrapper(tmp_path):
    base = RunConfig(_tiny("uc10"), rounds=3, fraction=1.0, codec="nnc", codec_params={"rel_step": 2.0})
    momentum = RunConfig(**{**base.__dict__, "server_momentum": 0.9})
    a, b = run(base), run(momentum, tmp_path)
    # FedAvgM's first step is FedAvg's (its momentum buffer starts empty); later ones differ
    assert a["rounds"][1]["test_loss"] == b["rounds"][1]["test_loss"]
    assert a["rounds"][3]["test_loss"] != b["rounds"][3]["test_loss"]
    assert all(r["clients"] == 3 and r["rejected"] == 0 and r["aggregate_failed"] == 0 for r in b["rounds"][1:])
    assert "fedavgm=0.9" in momentum.name()
    assert json.loads((tmp_path / "config.json").read_text())["server_momentum"] == 0.9
    for bad in (1.0, -0.1, True, float("nan")):
        with pytest.raises(ValueError, match="server_momentum"):
            RunConfig(_tiny("uc10"), server_momentum=bad)


def test_server_adam_aggregates_with_fedadam_behind_the_same_wrapper(tmp_path):
    base = RunConfig(_tiny("uc10"), rounds=2, fraction=1.0, codec="nnc", codec_params={"rel_step": 2.0})
    adam = RunConfig(**{**base.__dict__, "server_adam": 0.01})
    a, b = run(base), run(adam, tmp_path)
    assert a["rounds"][1]["test_loss"] != b["rounds"][1]["test_loss"]  # Adam's first step is not FedAvg's
    assert all(r["clients"] == 3 and r["rejected"] == 0 and r["aggregate_failed"] == 0 for r in b["rounds"][1:])
    assert "fedadam=0.01" in adam.name()
    assert json.loads((tmp_path / "config.json").read_text())["server_adam"] == 0.01
    for bad in (-0.1, 11.0, True, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="server_adam"):
            RunConfig(_tiny("uc10"), server_adam=bad)
    with pytest.raises(ValueError, match="excludes server_momentum"):
        RunConfig(_tiny("uc10"), server_adam=0.01, server_momentum=0.5)
    with pytest.raises(ValueError, match="needs aggregator 'fedavg'"):
        RunConfig(_tiny("uc10"), server_adam=0.01, aggregator="median")


def test_robust_aggregators_run_inside_the_same_wrapper(tmp_path):
    from experiments.cli import AGGREGATOR_CHOICES
    from experiments.runner import AGGREGATORS

    # five nodes: the trimmed mean drops one update per coordinate at each end (beta 0.2)
    fed = Federation(task="uc10", source="digits", num_clients=5, n_train=400, n_test=120, seed=1)
    base = RunConfig(fed, rounds=2, fraction=1.0, codec="nnc", codec_params={"rel_step": 2.0})
    fedavg = run(base)
    for name in ("median", "trimmed-mean", "krum"):
        cfg = RunConfig(**{**base.__dict__, "aggregator": name})
        out = run(cfg, tmp_path / name)
        assert all(r["clients"] == 5 and r["rejected"] == 0 and r["aggregate_failed"] == 0
                   for r in out["rounds"][1:]), name
        # another rule, another model: the first round's loss differs from FedAvg's
        assert out["rounds"][1]["test_loss"] != fedavg["rounds"][1]["test_loss"], name
        assert name in cfg.name()
        assert json.loads((tmp_path / name / "config.json").read_text())["aggregator"] == name
    with pytest.raises(ValueError, match="aggregator must be one of"):
        RunConfig(_tiny("uc10"), aggregator="mean")
    with pytest.raises(ValueError, match="needs aggregator 'fedavg'"):
        RunConfig(_tiny("uc10"), aggregator="median", server_momentum=0.5)
    # the command line offers exactly the rules the runner knows
    assert set(AGGREGATOR_CHOICES) == set(AGGREGATORS)


@pytest.mark.parametrize(("model", "lr", "params"), [
    ("cnn-bn", 0.05, {"rel_step": 3.0}), ("cnn-bn", 0.05, None), ("vit", 0.005, {"rel_step": 3.0})])
def test_batchnorm_and_attention_models_train_compressed_and_statistics_stay_valid(model, lr, params):
    """BatchNorm running statistics are coded exactly (or, by default, rounded up to 8 mantissa
    bits), so no variance goes negative and every node holds the server's model bit for bit; the
    LayerNorm/attention model trains through the same path."""
    from conftest import LocalGrid, run_federation
    from flwr.app import Array, ArrayRecord
    from flwr.serverapp.strategy import FedAvg

    from experiments.fl_app import central_evaluator, initial_model, make_client_app
    from strategies import CompressedStrategy

    fed = _tiny("uc10", model=model, lr=lr)
    grid = LocalGrid(make_client_app(fed), fed.num_clients)
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=3), "nnc", params)
    evaluate = central_evaluator(fed)
    losses = []

    def check(server_round):
        model_now = strategy.model.tensors
        for name, value in model_now.items():
            if name.endswith("running_var"):
                assert value.min() > 0, (server_round, name)
        record = ArrayRecord({k: Array(np.array(v)) for k, v in model_now.items()})
        losses.append(evaluate(server_round, record)["test_loss"])

    # run_federation also checks, every round, that each node holds exactly the server's model
    run_federation(strategy, grid, ArrayRecord(initial_model(fed).state_dict()), 3, on_round=check)
    for context in grid.contexts.values():
        base = context.state["nnc-fl.base"]
        assert all(base[k].numpy().min() > 0 for k in base if k.endswith("running_var"))
    assert losses[-1] < losses[0]
    rows = strategy.bandwidth
    assert all(r["accepted"] == 3 and 0 < r["up_bytes"] < 0.1 * r["up_raw_bytes"] for r in rows)


def test_float_lossless_keyframes_travel_smaller_and_change_nothing_else(tmp_path):
    # the codec parameter reaches the clients through the round's config; exact keyframes (no
    # anchor grid) stay exact
    params = {"rel_step": 2.0}
    raw = run(RunConfig(_tiny("uc10"), rounds=2, fraction=0.67, codec="nnc", codec_params=params,
                        keyframe_grid=None), tmp_path / "a")
    coded = run(RunConfig(_tiny("uc10"), rounds=2, fraction=0.67, codec="nnc", keyframe_grid=None,
                          codec_params={**params, "float_lossless": True}), tmp_path / "b")
    a, b = raw["rounds"][1], coded["rounds"][1]
    assert a["keyframes"] == b["keyframes"] == 2
    assert b["keyframe_bytes"] < 0.9 * a["keyframe_bytes"]
    assert [r["test_accuracy"] for r in coded["rounds"]] == [r["test_accuracy"] for r in raw["rounds"]]
    assert [r["up_bytes"] for r in coded["rounds"]] == [r["up_bytes"] for r in raw["rounds"]]


def test_coarse_initial_grid_makes_first_contact_keyframes_smaller(tmp_path):
    """End to end with BatchNorm: the nodes hold what the server holds (no resync, nothing refused)."""
    cfg = dict(rounds=3, fraction=0.67, codec="nnc")
    fed = _tiny("uc10", model="cnn-bn")
    anchor = run(RunConfig(fed, **cfg), tmp_path / "a")
    coarse = run(RunConfig(fed, initial_grid=0, **cfg), tmp_path / "b")
    a, b = anchor["rounds"], coarse["rounds"]
    assert a[1]["keyframes"] == b[1]["keyframes"] == 2
    assert b[1]["keyframe_bytes"] < 0.6 * a[1]["keyframe_bytes"]
    assert b[1]["test_accuracy"] != a[1]["test_accuracy"] or b[1]["up_bytes"] != a[1]["up_bytes"]
    for r in b[1:]:
        assert r["rejected"] == 0 and r["aggregate_failed"] == 0 and r["clients"] == 2
    assert coarse["summary"]["name"].endswith("initial-grid=0")


def test_lossless_benchmark_rows():
    import numpy as np

    from experiments.bench_lossless import bench_model

    rng = np.random.default_rng(0)
    weights = {"w": (rng.normal(size=(64, 100)) * 0.05).astype(np.float32), "n": np.array(3, np.int64)}
    rows = {r["method"]: r for r in bench_model(weights, repeat=1)}
    assert set(rows) == {"float-lossless", "raw", "zstd-19", "lzma", "planes+zstd-19", "grid-5 keyframe"}
    assert rows["float-lossless"]["bytes"] < min(rows[m]["bytes"] for m in ("zstd-19", "lzma", "raw"))
    assert rows["float-lossless"]["full"] == "0/1"
    # a keyframe on the grid (a power of two at or below rms / 32): ~8 bits per Gaussian weight (its
    # check compared the decoded bytes with the gridded model's)
    assert rows["grid-5 keyframe"]["pct"] < 0.35 * rows["float-lossless"]["pct"]


def test_direction_trace_records_a_run_and_replays_what_the_check_refuses(tmp_path):
    from experiments import direction_trace

    out = tmp_path / "trace.jsonl"
    code = direction_trace.main(["trace", str(out), "--", "uc10", "--source", "digits", "--clients", "3",
                                 "--fraction", "1", "--n-train", "120", "--rounds", "3", "--attack", "sign-flip",
                                 "--out", str(tmp_path / "run")])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    cosines = [r for r in rows if "cosine" in r]
    agreements = [r for r in rows if "agreement" in r]
    assert {r["round"] for r in cosines} == {1, 2, 3} and len(cosines) == 9 and len(agreements) == 9
    assert all(r["cosine"] is None for r in cosines if r["round"] == 1)  # no direction before round 1's updates
    flipper_agrees = [r["agreement"] for r in agreements if r["node"] == 1001]
    assert flipper_agrees and all(a < 0 for a in flipper_agrees)  # the flipper (node 1001) against its cohort
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["rejected"] == 0  # recorded, not refused
    # a replay is the check on those cosines: a flipper among agreeing nodes is refused, nobody else
    flip = tmp_path / "flip.jsonl"
    flip.write_text("".join(json.dumps({"round": r, "node": n, "cosine": (-0.2 if n == 0 else 0.2 + 0.01 * n)})
                            + "\n" for r in range(1, 8) for n in range(5)))
    refused = direction_trace.replay(str(flip), 3.5)
    assert refused and {n for _, n, _ in refused} == {0}
    assert "point against the federation's recent direction" in refused[0][2]
    # the agreement check replays the same way on its own rows
    pairs = tmp_path / "pairs.jsonl"
    rng = np.random.default_rng(0)
    pairs.write_text("".join(json.dumps({"round": r, "node": int(n), "agreement": (-1 if n == 0 else 1) * 0.2})
                             + "\n" for r in range(1, 15) for n in sorted(rng.choice(4, 2, replace=False))))
    refused = direction_trace.replay(str(pairs), 3.5, "agreement")
    assert refused and {n for _, n, _ in refused} == {0}
    assert "other updates of their rounds" in refused[0][2]


def test_an_update_with_a_negative_running_variance_is_refused(tmp_path):
    """A sign-flipped BatchNorm update, ``G - (W - G)``, has a negative running variance wherever
    training raised it by more than it was (seen from round 2 of the 4-node digits runs); a global
    model averaged from it would output NaN. Such updates are refused as ``range``."""
    fed = _tiny("uc10", model="cnn-bn", attack="negative-variance", attacker=0)
    out = run(RunConfig(fed, rounds=2, fraction=1.0, codec="nnc"), tmp_path)
    rounds = out["rounds"][1:]
    assert [r["rejected_nodes"].split(":")[-1] for r in rounds] == ["range", "range"]
    assert all(r["clients"] == 3 and r["rejected"] == 1 and r["aggregate_failed"] == 0 for r in rounds)
    assert rounds[-1]["test_accuracy"] > 0.5  # the honest nodes' model, not a NaN one


def test_predictability_measures_the_energy_a_prediction_explains(tmp_path, capsys):
    import numpy as np

    from experiments import predictability

    rng = np.random.default_rng(0)
    p = {"w": rng.normal(size=(40, 50)), "b": rng.normal(size=3)}
    noise = rng.normal(size=(40, 50))
    # a scaled copy is explained entirely, whatever the scale's sign; orthogonal noise not at all
    assert predictability.explained_energy({"w": -3.0 * p["w"]}, p) == pytest.approx(1.0)
    orth = noise - (noise.ravel() @ p["w"].ravel()) / (p["w"].ravel() @ p["w"].ravel()) * p["w"]
    assert predictability.explained_energy({"w": orth}, p) == pytest.approx(0.0, abs=1e-12)
    half = {"w": p["w"] / np.linalg.norm(p["w"]) + orth / np.linalg.norm(orth), "b": 100 * p["b"]}
    assert predictability.explained_energy(half, p) == pytest.approx(0.5)  # "b" is too small to count
    assert predictability.explained_energy({"w": np.zeros((40, 50))}, p) == 0.0
    # the recorder pairs an update with the previous round's mean and with the node's own last update
    rec = predictability.PredictionRecorder()
    rec.record([1, 2], [{"w": p["w"]}, {"w": p["w"]}])
    rec.record([1], [{"w": 2 * p["w"]}])
    assert rec.by_global == pytest.approx([1.0]) and rec.by_own == pytest.approx([1.0])
    assert "explains 100.0 %" in rec.report()
    # end to end on a tiny federation: one share per update that had a prediction
    code = predictability.main(["--", "uc10", "--source", "digits", "--clients", "3", "--fraction", "1",
                                "--n-train", "120", "--rounds", "3", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0 and "previous global increment: explains" in out and ", 6 updates)" in out
    assert "node's previous update: explains" in out


def test_round_benchmark_codes_updates_and_increments_as_the_default_strategy_does():
    from flwr.serverapp.strategy import FedAvg

    from experiments.bench_round import default_specs
    from strategies import CompressedStrategy

    strategy = CompressedStrategy(FedAvg())
    up, down = default_specs({})
    assert (up, down) == (strategy.spec_for(1), strategy.downlink_spec(1))
    assert up.params["rel_to"] == "update" and "rel_to" not in down.params  # uplink-only default
    up, down = default_specs({"rd_lambda": 0.05})
    assert up.params["rd_lambda"] == down.params["rd_lambda"] == 0.05


def test_bench_speed_codes_each_configuration_at_the_rate_asked(capsys):
    from experiments import bench_speed
    from experiments.bench_codec import load_delta

    delta = load_delta("small")
    for name in ("plain", "dq"):
        step = bench_speed.step_for_rate(delta, bench_speed.CONFIGS[name], 1.0, 0.03)
        assert abs(bench_speed.bits_per_param(delta, step, bench_speed.CONFIGS[name]) - 1.0) <= 0.03
    from experiments.cli import main as cli_main

    assert cli_main(["bench", "--speed", "--delta", "small", "--repeat", "1", "--configs", "plain,default"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [r[0] for r in rows] == ["plain", "default"]
    assert all(abs(float(r[2]) - 1.0) <= 0.02 and float(r[3]) > 0 and float(r[4]) > 0 for r in rows)
    with pytest.raises(SystemExit):
        bench_speed.main(["--configs", "plain,nonsense"])


def test_bench_temporal_codes_the_same_rounds_both_ways_and_never_larger(capsys):
    from experiments import bench_temporal
    from experiments.cli import main as cli_main

    args = ["--source", "digits", "--n-train", "600", "--rounds", "3", "--clients", "4", "--per-round", "0"]
    assert cli_main(["bench", "--temporal", *args]) == 0
    out = capsys.readouterr().out
    assert "increments" in out and len([line for line in out.splitlines() if line[:5].strip().isdigit()]) == 3
    totals = bench_temporal.run(argparse.Namespace(
        source="digits", n_train=600, rounds=3, clients=4, per_round=0, all_hold=False, residual=False, model="cnn",
        seed=0))
    assert totals["up_t"] <= totals["up"] and totals["inc_t"] <= totals["inc"]  # the tool never adds bytes
    assert totals["inc_t"] < totals["inc"]  # consecutive increments of a training run agree: it pays
    assert totals["up_ref"] > 0  # every node took part in every round, so each held the last increment
    with pytest.raises(SystemExit):
        bench_temporal.main(["--per-round", "9", "--clients", "4"])
