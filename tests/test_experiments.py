"""End to end: tiny UC10 / UC14A federations through CompressedStrategy, outputs, determinism, CLI."""

import json

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


def test_shared_initial_model_changes_bytes_not_accuracy(tmp_path):
    base = RunConfig(_tiny("uc10"), rounds=3, fraction=0.67, codec="nnc", codec_params={"rel_step": 2.0})
    shared = RunConfig(**{**base.__dict__, "shared_initial_model": True})
    a, b = run(base), run(shared)
    assert [r["test_accuracy"] for r in a["rounds"]] == [r["test_accuracy"] for r in b["rounds"]]
    assert b["summary"]["keyframes"] == 0 < a["summary"]["keyframes"]
    assert b["summary"]["down_bytes"] < a["summary"]["down_bytes"]
