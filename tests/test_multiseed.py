"""Several seeds per codec: aggregate files, mean/std from the per-seed summaries, --jobs that does
not change any number, and re-aggregation of existing run folders (``nnc-fl report``)."""

import json

import numpy as np
import pytest

from experiments import multiseed as M
from experiments.cli import main as cli

CODECS = ["fp32", "stc"]
TINY = ["uc10", "--source", "digits", "--n-train", "240", "--rounds", "2", "--clients", "3", "--fraction", "0.67"]


def _compare(out, jobs):
    assert cli(["compare", *TINY, "--codecs", ",".join(CODECS), "--seeds", "2", "--seed", "3", "--jobs", str(jobs),
                "--out", str(out)]) == 0


def _numbers(out):
    """Per-seed rounds and summaries, minus the wall-clock fields."""
    runs = {}
    for folder in M.find_run_folders([out]):
        run = M.load_run(folder)
        rounds = [{k: v for k, v in r.items() if not k.endswith("_s")} for r in run["rounds"]]
        summary = {k: v for k, v in run["summary"].items() if not k.endswith("_s")}
        runs[str(folder.relative_to(out))] = (rounds, summary)
    return runs


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds-j1")
    _compare(out, jobs=1)
    return out


def test_two_seed_compare_writes_per_seed_runs_and_an_aggregate(sequential):
    folders = sorted(str(f.relative_to(sequential)) for f in M.find_run_folders([sequential]))
    assert folders == ["fp32/seed-3", "fp32/seed-4", "stc-ratio-0.01/seed-3", "stc-ratio-0.01/seed-4"]
    for name in ("comparison.md", "comparison.json", "comparison.png"):
        assert (sequential / name).stat().st_size > 0
    table = (sequential / "comparison.md").read_text()
    assert "2 seeds (3, 4)" in table and "| fp32 | 2 |" in table and "| stc(ratio=0.01) | 2 |" in table
    groups = json.loads((sequential / "comparison.json").read_text())["groups"]
    assert [g["codec"] for g in groups] == CODECS

    for g in groups:  # mean and sample std recomputed from the per-seed summary.json files
        assert g["seeds"] == [3, 4] and g["n"] == 2
        summaries = [json.loads((sequential / f / "summary.json").read_text()) for f in
                     (f"{M.slug(g['name'])}/seed-3", f"{M.slug(g['name'])}/seed-4")]
        for metric in ("final_accuracy", "last3_accuracy", "best_accuracy", "up_pct", "down_pct",
                       "down_pct_increments", "keyframes", "rejected", "total_bytes"):
            values = [float(s[metric]) for s in summaries]
            stat = g["metrics"][metric]
            assert stat["values"] == values, metric
            assert stat["mean"] == pytest.approx(np.mean(values)), metric
            assert stat["std"] == pytest.approx(abs(values[0] - values[1]) / np.sqrt(2)), metric  # ddof=1
        rounds = json.loads((sequential / f"{M.slug(g['name'])}/seed-3/rounds.json").read_text())
        assert summaries[0]["best_accuracy"] == max(r["test_accuracy"] for r in rounds if r["round"] > 0)
        fp32 = [json.loads((sequential / f"fp32/seed-{s}/summary.json").read_text()) for s in (3, 4)]
        diffs = [a["final_accuracy"] - b["final_accuracy"] for a, b in zip(summaries, fp32, strict=True)]
        assert g["metrics"]["delta_final_accuracy"]["mean"] == pytest.approx(np.mean(diffs))
    assert groups[0]["metrics"]["up_pct"]["mean"] > 99 > groups[1]["metrics"]["up_pct"]["mean"]


def test_jobs_do_not_change_any_per_seed_number(sequential, tmp_path):
    _compare(tmp_path, jobs=2)
    assert _numbers(tmp_path) == _numbers(sequential)
    same = lambda p: json.loads(p.read_text())["groups"]  # noqa: E731
    strip = lambda gs: [{k: v for k, v in g.items() if k != "folders"} for g in gs]  # noqa: E731
    assert strip(same(tmp_path / "comparison.json")) == strip(same(sequential / "comparison.json"))


def test_report_reaggregates_existing_runs_without_rerunning(sequential, tmp_path, capsys):
    assert cli(["report", str(sequential), "--out", str(tmp_path)]) == 0
    assert "2 seeds (3, 4)" in capsys.readouterr().out
    assert (tmp_path / "comparison.md").read_text() == (sequential / "comparison.md").read_text()
    assert json.loads((tmp_path / "comparison.json").read_text()) == json.loads(
        (sequential / "comparison.json").read_text())
    # a subset of the folders: only the runs found there
    assert cli(["report", str(sequential / "fp32"), "--out", str(tmp_path / "fp32")]) == 0
    (group,) = json.loads((tmp_path / "fp32" / "comparison.json").read_text())["groups"]
    assert group["name"] == "fp32" and group["n"] == 2
    assert cli(["report", str(tmp_path / "nothing-here")]) == 2


def test_run_with_seeds_writes_one_folder_per_seed(tmp_path):
    assert cli(["run", *TINY[:-6], "--rounds", "1", "--clients", "2", "--fraction", "1", "--codec", "int8-zstd",
                "--seeds", "2", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("seed-*")) == ["seed-0", "seed-1"]
    (group,) = json.loads((tmp_path / "comparison.json").read_text())["groups"]
    assert group["codec"] == "int8-zstd" and group["seeds"] == [0, 1]
    assert "delta_final_accuracy" not in group["metrics"]  # no fp32 group to pair with


def test_bad_seed_and_job_counts_are_refused(capsys):
    assert cli(["compare", *TINY, "--seeds", "0"]) == 2
    assert cli(["run", *TINY, "--jobs", "0"]) == 2
    assert cli(["compare", *TINY, "--jobs", "2", "--backend", "ray"]) == 2
    assert cli(["compare", *TINY, "--codecs", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--seeds must be >= 1" in err and "--jobs must be >= 1" in err and "Ray" in err and "nope" in err


def _fake(seed, codec="fp32", acc=(0.5, 0.6), up=10.0):
    rounds = [{"round": 0, "test_accuracy": 0.1, "up_bytes": 0, "down_bytes": 0}]
    rounds += [{"round": i + 1, "test_accuracy": a, "up_bytes": 100, "down_bytes": 200} for i, a in enumerate(acc)]
    summary = {"name": codec, "codec": codec, "task": "uc10", "data_source": "digits", "parameters": 10,
               "rounds": len(acc), "final_accuracy": acc[-1], "last3_accuracy": float(np.mean(acc)),
               "up_pct": up, "down_pct": 2 * up, "down_pct_increments": up, "keyframes": 1, "rejected": 0,
               "up_bytes": 100, "down_bytes": 200, "total_bytes": 300}
    config = {"federation": {"seed": seed, "task": "uc10", "partition": "iid", "alpha": 0.5, "num_clients": 2},
              "codec": codec, "codec_params": {}, "fraction": 1.0, "rounds": len(acc), "backend": "inprocess"}
    return {"config": config, "rounds": rounds, "summary": summary}


def test_grouping_and_statistics_on_synthetic_runs(tmp_path):
    outs = [_fake(1, acc=(0.5, 0.7)), _fake(0, acc=(0.5, 0.6)), _fake(0, "topk", (0.6, 0.4), 1.0),
            _fake(1, "topk", (0.3, 0.5), 3.0)]
    groups = M.group_runs(outs)
    assert [[M.seed_of(o) for o in g] for g in groups] == [[0, 1], [0, 1]]
    fp32, topk = M.aggregate_groups(groups)
    assert fp32["metrics"]["final_accuracy"]["mean"] == pytest.approx(0.65)
    assert topk["metrics"]["best_accuracy"]["values"] == [0.6, 0.5]  # from rounds.json when not summarised
    assert topk["metrics"]["up_pct"]["std"] == pytest.approx(np.std([1.0, 3.0], ddof=1))
    assert topk["metrics"]["delta_final_accuracy"]["values"] == pytest.approx([-0.2, -0.2])
    assert M.mean_std([2.0]) == (2.0, 0.0)
    with pytest.raises(ValueError, match="same seed occurs twice"):
        M.group_runs([_fake(0), _fake(0)])
    title, table = M.write_aggregate(outs, tmp_path)
    assert "2 seeds (0, 1)" in title and "| topk | 2 | 45.00 ± 7.07 | -20.00 ± 0.00 |" in table
    # bytes to reach an accuracy: fp32's mean final is 0.65, so the first level is 0.55
    levels = M.reach_levels(groups)
    assert levels == pytest.approx([0.55, 0.60, 0.63, 0.64, 0.645])
    assert M.bytes_to_reach(outs[0], 0.55) == 600 and M.bytes_to_reach(outs[2], 0.55) == 300
    assert M.bytes_to_reach(outs[3], 0.55) is None  # never above 0.5
    first = M.reach_stats(groups[1], levels)[0]
    assert (first["reached"], first["n"], first["mean"], first["values"]) == (1, 2, 300.0, [300.0])
    reached = [st["reached"] for st in M.reach_stats(groups[0], levels)]
    assert reached[0] == 2 and reached[2:] == [1, 1, 1]  # above 0.6 only seed 1 (0.7)
    md = (tmp_path / "comparison.md").read_text()
    assert "| topk | 0.000 ± 0.000 (1/2 seeds) |" in md and md.count("not reached (0/2)") == 3
    stats = json.loads((tmp_path / "comparison.json").read_text())["groups"][0]["bytes_to_reach"]
    assert [st["reached"] for st in stats] == reached
    assert M.reach_levels([groups[1]]) == []  # no fp32 group: no levels, no table
    assert (tmp_path / "comparison.png").stat().st_size > 0
