"""``nnc-fl``: run the UC10 / UC14A experiments, compare codecs, benchmark the codec, inspect streams."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

#: Codecs of ``nnc-fl compare`` (name, uplink parameters, downlink parameters): the fp32 reference,
#: ours at three rates, the classic baselines, then scaled sign, QSGD and PowerSGD-style low rank.
COMPARE_CODECS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("fp32", {}, {}),
    ("nnc", {}, {}),  # the default setting (CompressedStrategy(inner) without parameters)
    ("nnc", {"rel_step": 3.0, "rd_lambda": 0.05}, {}),
    ("nnc", {"rel_step": 4.0, "rd_lambda": 0.05}, {}),
    ("fp16", {}, {}),
    ("int8-zstd", {}, {}),
    ("topk", {"ratio": 0.01}, {}),
    ("stc", {"ratio": 0.01}, {}),
    ("zstd", {}, {}),
    ("sign", {}, {}),
    ("qsgd", {"levels": 2, "norm": "max"}, {}),
    ("powersgd", {"rank": 2}, {}),
]
#: ``nnc-fl run``'s codec when none is given.
DEFAULT_CODEC = ("nnc", {}, {})  # CompressedStrategy's default setting (strategies.settings.DEFAULT_PARAMS)


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(value.lower(), value)


def _federation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", choices=["uc10", "uc14a"], help="uc10: image classification; uc14a: pneumonia X-rays")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--clients", type=int, default=10, help="number of federated nodes")
    p.add_argument("--fraction", type=float, default=0.5, help="fraction of nodes trained per round")
    p.add_argument("--partition", choices=["iid", "dirichlet"], default="iid")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (non-IID)")
    p.add_argument("--source", default="auto", help="uc10: auto, fashion-mnist, mnist-5k, digits")
    p.add_argument("--n-train", type=int, default=None, help="subsample the training set")
    p.add_argument("--model", choices=["cnn", "cnn-bn", "vit"], default="cnn",
                   help="cnn; cnn-bn: with BatchNorm; vit: a small transformer (LayerNorm, attention)")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0, help="the (first) seed")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="run every codec with seeds SEED, SEED+1, ..., SEED+N-1 and aggregate (mean ± std)")
    p.add_argument("--jobs", type=int, default=1, metavar="J",
                   help="run up to J runs at once, each in its own process with one torch thread")
    p.add_argument("--attack", default="", help="one hostile client: sign-flip, scale-10, scale-1000, nan, huge, "
                   "negative-variance, weight-1e6, weight-1e6-sign-flip, weight-negative-sign-flip, weight-nan, "
                   "weight-zero")
    p.add_argument("--attacker", type=int, default=0, help="partition id of the hostile client")
    p.add_argument("--trusted-examples", type=int, default=0, metavar="N",
                   help="the server holds N training examples back and refuses updates that raise its loss on "
                        "them (ValidationSettings.trusted_loss); default 0: off")
    p.add_argument("--trusted-tolerance", type=float, default=3.0,
                   help="how much an update may raise the trusted loss, in multiples of the current loss "
                        "(3: up to 4x)")
    p.add_argument("--backend", choices=["inprocess", "ray"], default="inprocess",
                   help="inprocess: deterministic; ray: Flower's simulation engine")
    p.add_argument("--keyframe-grid", type=lambda v: None if v == "none" else int(v), default=5,
                   help="keyframes on an anchor grid of rms * 2**-N (default 5); 'none': exact fp32 keyframes")
    p.add_argument("--initial-grid", type=int, default=None, metavar="N",
                   help="round the initial model onto a coarser grid of rms * 2**-N (random initialisations: "
                        "cheaper keyframes; default: the anchor grid)")
    p.add_argument("--shared-initial-model", action="store_true",
                   help="clients rebuild the initial model from the seed: no first-contact keyframes")
    p.add_argument("--residual-max-age", type=int, default=None, metavar="K",
                   help="clients drop error-feedback residuals made more than K versions ago (default: keep)")
    p.add_argument("--train-from-residual", action=argparse.BooleanOptionalAction, default=None,
                   help="clients train from the global model plus their error-feedback residual "
                        "(CodecSettings.train_from_residual; default: on for nnc, off for the baselines)")
    p.add_argument("--server-momentum", type=float, default=0.0, metavar="BETA",
                   help="aggregate with Flower's FedAvgM at this server momentum (server learning rate 1) "
                        "instead of FedAvg; default 0: FedAvg")
    p.add_argument("--server-adam", type=float, default=0.0, metavar="ETA",
                   help="aggregate with Flower's FedAdam at this server learning rate (beta_1 0.9, beta_2 0.99, "
                        "tau 1e-3) instead of FedAvg; default 0: FedAvg")
    p.add_argument("--aggregator", choices=AGGREGATOR_CHOICES, default="fedavg",
                   help="the inner strategy's rule: FedAvg (default), FedMedian, FedTrimmedAvg (beta 0.2) or "
                        "Krum (one hostile node assumed), each inside the same wrapper")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/<task>-...)")


#: runner.AGGREGATORS' names (the runner imports Flower and torch; the parser does not)
AGGREGATOR_CHOICES = ("fedavg", "median", "trimmed-mean", "krum")


def _federation(a: argparse.Namespace, seed: int | None = None):
    from .fl_app import Federation

    return Federation(
        task=a.task, source=a.source, num_clients=a.clients, partition=a.partition, alpha=a.alpha,
        seed=a.seed if seed is None else seed,
        n_train=a.n_train, model=a.model, local_epochs=a.local_epochs, batch_size=a.batch_size, lr=a.lr,
        attack=a.attack, attacker=a.attacker, trusted_examples=a.trusted_examples,
    )


def _default_out(a: argparse.Namespace, kind: str) -> Path:
    part = a.partition if a.partition == "iid" else f"dir{a.alpha:g}"
    seeds = f"s{a.seed}" if a.seeds == 1 else f"s{a.seed}-{a.seed + a.seeds - 1}"
    return Path("runs") / f"{kind}-{a.task}-{part}-c{a.clients}-f{a.fraction:g}-r{a.rounds}-{seeds}"


def _run_with_progress(cfg, out_dir):
    from tqdm import tqdm

    from .multiseed import run_one

    seed = f" seed {cfg.federation.seed}"
    bar = tqdm(total=cfg.rounds + 1, desc=f"{cfg.federation.task} {cfg.name()}{seed}", unit="round", leave=True)

    def progress(server_round, metrics):
        bar.set_postfix(acc=f"{100 * metrics['test_accuracy']:.2f}%")
        bar.update(1)

    try:
        return run_one(cfg, out_dir, progress)
    finally:
        bar.close()


def _check_seeds_jobs(a: argparse.Namespace) -> None:
    if a.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {a.seeds}")
    if a.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {a.jobs}")
    if a.jobs > 1 and a.backend == "ray":
        raise ValueError("--jobs > 1 runs the in-process backend in worker processes; Ray runs its own")


def _run_tasks(tasks, jobs: int):
    """Run ``(config, folder)`` tasks, with progress bars in this process or a line per finished run."""
    from .multiseed import run_many

    def done(i, out):
        s = out["summary"]
        print(f"[{i + 1}/{len(tasks)}] {s['name']} seed {tasks[i][0].federation.seed}: final accuracy "
              f"{100 * s['final_accuracy']:.2f} %, uplink {s['up_pct']:.3f} %, {s['wall_s']:.0f} s", flush=True)

    return run_many(tasks, jobs, run_in_process=_run_with_progress, done=done if jobs > 1 else None)


def _write_seed_aggregate(outs, out_dir: Path) -> None:
    from .multiseed import write_aggregate

    title, table = write_aggregate(outs, out_dir)
    print(f"\n{title}\n\n{table}\n\nmean ± sample std over {len(outs)} runs; "
          f"written: {out_dir}/comparison.md, comparison.json, comparison.png")


def _print_rounds(out: dict[str, Any]) -> None:
    print(f"\n{'round':>5} {'clients':>7} {'up bytes':>10} {'up %':>7} {'down bytes':>11} {'down %':>7} "
          f"{'rej':>4} {'acc %':>7}")
    for r in out["rounds"]:
        print(f"{r['round']:5d} {r['clients']:7d} {r['up_bytes']:10d} {r['up_pct']:7.3f} {r['down_bytes']:11d} "
              f"{r['down_pct']:7.3f} {r['rejected']:4d} {100 * r['test_accuracy']:7.2f}")
    s = out["summary"]
    print(f"\n{s['task']} on {s['data_source']} ({s['parameters']} parameters), codec {s['name']}: final accuracy "
          f"{100 * s['final_accuracy']:.2f} %, uplink {s['up_pct']:.3f} % and downlink {s['down_pct']:.3f} % of fp32 "
          f"({s['down_pct_increments']:.3f} % for increments, {s['keyframes']} keyframes), "
          f"{s['total_bytes'] / 1e6:.3f} MB in all, {s['wall_s']:.0f} s")


def _single_budget(text: str) -> float | int:
    """A rate-control budget without a schedule (the downlink's)."""
    value = _budget(text)
    if isinstance(value, str):
        raise argparse.ArgumentTypeError(f"a schedule is for --target-uplink only, got {text!r}")
    return value


def _budget(text: str) -> float | int | str:
    """A rate-control budget: an integer is bytes, a number a fraction of the fp32 size, and a text
    with ``x`` or ``,`` a budget schedule (``0.01x4,0.00375``: :class:`strategies.BudgetSchedule`)."""
    if "x" in text or "," in text:
        from strategies.settings import BudgetSchedule

        try:
            return str(BudgetSchedule.parse(text))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.005, bytes such as 3000 or a schedule such "
                                         f"as 0.01x4,0.00375, got {text!r}") from None


def cmd_run(a: argparse.Namespace) -> int:
    from strategies.settings import check_budget

    from .runner import RunConfig

    if not isinstance(a.target_uplink, str):  # a schedule was checked when parsed
        check_budget(a.target_uplink, "--target-uplink")  # refused before any data is loaded
    check_budget(a.target_downlink, "--target-downlink")
    default = a.codec == DEFAULT_CODEC[0] and not a.param and not a.down_param
    params = dict(DEFAULT_CODEC[1]) if default else {}
    params.update(dict(a.param or []))
    down = dict(DEFAULT_CODEC[2]) if default else {}
    down.update(dict(a.down_param or []))
    _check_seeds_jobs(a)
    cfgs = [
        RunConfig(_federation(a, seed), rounds=a.rounds, fraction=a.fraction, codec=a.codec, codec_params=params,
                  downlink_params=down, shared_initial_model=a.shared_initial_model,
                  keyframe_grid=a.keyframe_grid, initial_grid=a.initial_grid,
                  residual_max_age=a.residual_max_age, train_from_residual=a.train_from_residual,
                  backend=a.backend,
                  target_uplink=a.target_uplink, target_downlink=a.target_downlink,
                  trusted_tolerance=a.trusted_tolerance, server_momentum=a.server_momentum, server_adam=a.server_adam,
                  aggregator=a.aggregator)
        for seed in range(a.seed, a.seed + a.seeds)
    ]
    out_dir = a.out or _default_out(a, f"run-{a.codec}")
    if a.seeds == 1:
        out = _run_with_progress(cfgs[0], out_dir)
        _print_rounds(out)
        print(f"results: {out_dir}/ (rounds.csv, rounds.json, summary.json, config.json, accuracy.png, bytes.png)")
        return 0
    outs = _run_tasks([(cfg, out_dir / f"seed-{cfg.federation.seed}") for cfg in cfgs], a.jobs)
    _write_seed_aggregate(outs, out_dir)
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from .multiseed import slug
    from .report import comparison_table, plot_comparison
    from .runner import RunConfig

    _check_seeds_jobs(a)
    out_dir = a.out or _default_out(a, "compare")
    wanted = [c for c in a.codecs.split(",") if c]
    known = {c[0] for c in COMPARE_CODECS}
    if set(wanted) - known:
        raise ValueError(f"unknown codec(s) {', '.join(sorted(set(wanted) - known))} for compare; "
                         f"choose from {', '.join(dict.fromkeys(c[0] for c in COMPARE_CODECS))}")
    selected = [c for c in COMPARE_CODECS if not wanted or c[0] in wanted]
    tasks = []
    for codec, params, down in selected:
        for seed in range(a.seed, a.seed + a.seeds):
            cfg = RunConfig(_federation(a, seed), rounds=a.rounds, fraction=a.fraction, codec=codec,
                            codec_params=params, downlink_params=down, shared_initial_model=a.shared_initial_model,
                            keyframe_grid=a.keyframe_grid, initial_grid=a.initial_grid,
                            residual_max_age=a.residual_max_age, train_from_residual=a.train_from_residual,
                            backend=a.backend, trusted_tolerance=a.trusted_tolerance,
                            server_momentum=a.server_momentum, server_adam=a.server_adam, aggregator=a.aggregator)
            sub = out_dir / slug(cfg.name())
            tasks.append((cfg, sub if a.seeds == 1 else sub / f"seed-{seed}"))
    outs = _run_tasks(tasks, a.jobs)
    if a.seeds > 1:
        _write_seed_aggregate(outs, out_dir)
        return 0
    table = comparison_table(outs)
    s0 = outs[0]["summary"]
    part = a.partition if a.partition == "iid" else f"Dirichlet α={a.alpha:g}"
    title = (f"{a.task.upper()} on {s0['data_source']} ({s0['parameters']} parameters), {a.clients} clients, "
             f"fraction {a.fraction:g}, {part}, {a.rounds} rounds, seed {a.seed}")
    (out_dir / "comparison.md").write_text(f"{title}\n\n{table}\n")
    (out_dir / "comparison.json").write_text(json.dumps([o["summary"] for o in outs], indent=2, default=str))
    plot_comparison(outs, out_dir, title)
    print(f"\n{title}\n\n{table}\n\nwritten: {out_dir}/comparison.md, comparison.png")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    if a.round:  # plugin time of one round on a ResNet-18-sized model
        from .bench_round import main as round_main

        return round_main(a.bench_args)
    if a.speed:  # one-thread speed of each tool configuration at a given rate
        from .bench_speed import main as speed_main

        return speed_main(a.bench_args)
    if a.temporal:
        from .bench_temporal import main as temporal_main

        return temporal_main(a.bench_args)
    from .bench_codec import main

    return main(a.bench_args)


def cmd_report(a: argparse.Namespace) -> int:
    from .multiseed import load_runs

    # groups in the order compare runs them (its codec list), others after them by name
    rank = {(c, json.dumps(p, sort_keys=True)): i for i, (c, p, _) in enumerate(COMPARE_CODECS)}
    outs = sorted(load_runs(a.dirs), key=lambda o: (
        rank.get((o["summary"]["codec"], json.dumps(o["summary"].get("codec_params", {}), sort_keys=True)),
                 len(rank)),
        o["summary"]["name"],
    ))
    _write_seed_aggregate(outs, a.out or Path(a.dirs[0]))
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    import nnc_fl

    info = nnc_fl.inspect(Path(a.file).read_bytes())
    print(json.dumps(info.as_rows(), indent=2) if a.json else info)
    return 0


def _quiet_flower() -> None:
    """Flower logs every round at INFO; the progress bar and the final table say it better."""
    import logging

    from flwr.supercore.logger import FLOWER_LOGGER  # sets the level on import: import it first

    FLOWER_LOGGER.setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    _quiet_flower()
    ap = argparse.ArgumentParser(prog="nnc-fl", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="one federated run with one codec")
    _federation_args(p)
    p.add_argument("--codec", default=DEFAULT_CODEC[0],
                   help="nnc, fp32, fp16, int8-zstd, topk, stc, zstd, sign, qsgd, powersgd")
    p.add_argument("--param", type=_param, action="append", metavar="KEY=VALUE",
                   help="codec parameter, e.g. rel_step=4, step=0.001, qp=-40, ratio=0.01, levels=2, rank=2 "
                   "(repeatable)")
    p.add_argument("--down-param", type=_param, action="append", metavar="KEY=VALUE",
                   help="codec parameter for the downlink increment only, e.g. rel_step=8 (repeatable)")
    p.add_argument("--target-uplink", type=_budget, default=None, metavar="BUDGET",
                   help="rate control: budget per update, a fraction of its fp32 size (e.g. 0.005) or bytes "
                   "(an integer), or a schedule BUDGETxROUNDS,...,BUDGET (e.g. 0.01x4,0.00375: 1 %% for rounds "
                   "1-4, then 0.375 %%); the codec's steps (--param) are scaled to meet it")
    p.add_argument("--target-downlink", type=_single_budget, default=None, metavar="BUDGET",
                   help="rate control of the global increments, as --target-uplink")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("compare", help="the same federation with each codec; one table and plot")
    _federation_args(p)
    p.add_argument("--codecs", default="", help="comma list to restrict (default: all)")
    p.set_defaults(fn=cmd_compare)

    p = sub.add_parser("report", help="re-aggregate existing run folders (mean ± std over seeds), no rerun")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folders searched for run folders (recursively)")
    p.add_argument("--out", type=Path, default=None, help="where comparison.md/json/png go (default: the first DIR)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("bench", add_help=False,
                       help="codec benchmark on real trained deltas (experiments.bench_codec); "
                       "'bench --round': plugin time per round on a ResNet-18-sized model (experiments.bench_round); "
                       "'bench --speed': one-thread speed of each coding tool (experiments.bench_speed); "
                       "'bench --temporal': temporal contexts on FedAvg rounds (experiments.bench_temporal)")
    p.add_argument("--round", action="store_true", help="the round benchmark (experiments.bench_round)")
    p.add_argument("--speed", action="store_true", help="the speed benchmark (experiments.bench_speed)")
    p.add_argument("--temporal", action="store_true", help="temporal contexts (experiments.bench_temporal)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("inspect", help="print the header table of an nnc-fl stream")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_inspect)

    a, extra = ap.parse_known_args(argv)
    if a.command == "bench":  # the benchmark scripts parse their own options
        a.bench_args = [*extra, *a.bench_args]
    elif extra:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return a.fn(a)
    except (ValueError, OSError) as exc:
        print(f"nnc-fl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
