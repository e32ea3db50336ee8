"""Temporal contexts on real federated rounds: the same updates and increments coded with and without.

Run ``python -m experiments.bench_temporal`` (or ``nnc-fl bench --temporal``). It runs plain FedAvg
rounds of a UC10 model (``--model``, on ``--source`` data) with ``--per-round`` of ``--clients``
nodes sampled each round (or every node with ``--per-round 0``), and codes, every round,

- each sampled node's update (its trained weights minus the global model) with the default uplink
  setting of ``CompressedStrategy`` (``strategies.settings``), once without a temporal reference
  and once against the last global increment as the nodes hold it -- decoded from its stream --
  where the node holds it (it also took part in the round before, as the wrappers' rule has it;
  ``--all-hold`` pretends every node does);
- the global increment (the mean update) with the default downlink setting (a step per tensor,
  no anchor grid here), without and against the increment before it.

With ``--residual`` each node keeps its error-feedback residual and trains from the global model
plus it, as the wrappers' default does (``train_from_residual``): its update then carries the
residual too (the residual of the coding without the tool, so both codings see the same updates).
The updates are the same both ways (the reference changes only how they are coded), so the byte
counts compare the tool alone; the accuracy of a run with it is the business of ``nnc-fl run``.
Prints per round and in all: bytes, and the change with the tool.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

#: Training settings of the runs (those of ``nnc-fl run uc10``'s defaults).
LOCAL_EPOCHS, BATCH_SIZE, LR = 1, 32, 0.05


def _codecs():
    from nnc_fl.codecs import make_codec
    from strategies.settings import DEFAULT_PARAMS, DEFAULT_UPLINK_PARAMS

    down = {**DEFAULT_PARAMS["nnc"], "temporal": True}
    up = {**down, **DEFAULT_UPLINK_PARAMS["nnc"]}
    return make_codec("nnc", **up), make_codec("nnc", **down)


def _coded_pair(codec, delta, reference, residual):
    """(bytes without, bytes with the reference, decoded without) of ``delta`` (+ the residual)."""
    from nnc_fl.updates import code_update

    plain = code_update(delta, codec, residual=residual)
    if reference is None:
        return len(plain.data), len(plain.data), plain
    temporal = code_update(delta, codec, residual=residual, temporal_reference=reference)
    return len(plain.data), len(temporal.data), plain


def run(args: argparse.Namespace) -> dict[str, int]:
    from experiments.fl_app import Federation, dataset, initial_model, partitions
    from experiments.models import get_weights, set_weights
    from experiments.training import torch_threads, train
    from nnc_fl.updates import apply_delta, model_delta

    fed = Federation(task="uc10", source=args.source, num_clients=args.clients, n_train=args.n_train,
                     model=args.model, seed=args.seed)
    ds, parts = dataset(fed), partitions(fed)
    net = initial_model(fed)
    model = {k: v for k, v in get_weights(net).items()}
    up_codec, down_codec = _codecs()
    rng = np.random.default_rng(args.seed)
    per_round = args.per_round or args.clients
    last_round: dict[int, int] = {}  # node -> the last round it took part in
    residuals: dict[int, dict[str, np.ndarray]] = {}  # node -> its error-feedback residual (--residual)
    increment = None  # the decoded increment of the round before (what the nodes hold)
    server_residual: dict[str, np.ndarray] = {}
    totals = dict.fromkeys(("up", "up_t", "up_ref", "up_ref_t", "inc", "inc_t"), 0)
    print(f"{'round':>5} {'up bytes':>10} {'with':>10} {'change':>8} {'inc bytes':>10} {'with':>10} {'change':>8}")
    for r in range(1, args.rounds + 1):
        nodes = sorted(rng.choice(args.clients, per_round, replace=False).tolist())
        deltas, up, up_t = [], 0, 0
        for node in nodes:
            residual = residuals.get(node, {}) if args.residual else {}
            start = apply_delta(model, {k: residual.get(k, np.zeros_like(v)) for k, v in model.items()})
            set_weights(net, start if residual else model)
            idx = parts[node]
            with torch_threads(1):
                train(net, ds.x_train[idx], ds.y_train[idx], epochs=LOCAL_EPOCHS, batch_size=BATCH_SIZE, lr=LR,
                      seed=r * 1009 + node)
            delta = model_delta({k: v for k, v in get_weights(net).items()}, model)
            holds = increment is not None and (args.all_hold or last_round.get(node) == r - 1)
            a, b, coded = _coded_pair(up_codec, delta, increment if holds else None, {} if args.residual else None)
            if args.residual:
                residuals[node] = coded.residual
            up, up_t = up + a, up_t + b
            if holds:
                totals["up_ref"] += a
                totals["up_ref_t"] += b
            deltas.append(coded.decoded)
            last_round[node] = r
        mean = {k: (np.mean([d[k] for d in deltas], axis=0)).astype(model[k].dtype) if model[k].dtype.kind == "f"
                else deltas[0][k] for k in model}
        a, b, coded = _coded_pair(down_codec, mean, increment, server_residual)
        server_residual = coded.residual
        totals["up"] += up
        totals["up_t"] += up_t
        totals["inc"] += a
        totals["inc_t"] += b
        print(f"{r:5d} {up:10d} {up_t:10d} {100 * (up_t / up - 1):+7.2f}% {a:10d} {b:10d} {100 * (b / a - 1):+7.2f}%",
              flush=True)
        increment = coded.decoded
        model = apply_delta(model, increment)
    t = totals
    print(f"\nall rounds: updates {t['up']} -> {t['up_t']} bytes ({100 * (t['up_t'] / t['up'] - 1):+.2f} %), "
          f"of them the {'every' if args.all_hold else 'holding'} nodes' {t['up_ref']} -> {t['up_ref_t']} "
          f"({100 * (t['up_ref_t'] / max(t['up_ref'], 1) - 1):+.2f} %); increments {t['inc']} -> {t['inc_t']} "
          f"({100 * (t['inc_t'] / t['inc'] - 1):+.2f} %)")
    return totals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.bench_temporal", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--per-round", type=int, default=5, help="nodes sampled each round; 0: all")
    p.add_argument("--all-hold", action="store_true", help="code every update against the last increment")
    p.add_argument("--residual", action="store_true",
                   help="nodes keep an error-feedback residual and train from the model plus it")
    p.add_argument("--model", default="cnn", choices=("cnn", "cnn-bn", "vit"))
    p.add_argument("--source", default="auto", help="uc10 data: auto, fashion-mnist, mnist-5k, digits")
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.clients < 1 or not 0 <= args.per_round <= args.clients:
        p.error("need rounds >= 1, clients >= 1 and 0 <= per-round <= clients")
    t0 = time.perf_counter()
    run(args)
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
