"""Codec speed at a given rate, one thread, tool by tool.

Run ``python -m experiments.bench_speed`` (or ``nnc-fl bench --speed``).
For one delta (default: the digits MLP ``large``, 1.13 M parameters, :mod:`experiments.deltas`) and
each configuration of :data:`CONFIGS`, the quantisation step is searched (bisection on its log)
until the stream codes at ``--bpp`` bits per parameter (default 1.0, within ``--tolerance``);
then :func:`nnc_fl.encode` and :func:`nnc_fl.decode` are timed in one thread (``threads=1``):
process CPU time (what other tenants of a shared machine take is not counted), best of
``--repeat`` runs after a warm-up, in MB/s of fp32 input. Each configuration's encoder cost is
also given relative to plain coding, measured in the same run.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

import nnc_fl
from experiments.bench_codec import load_delta
from experiments.timing import best_time

#: Keyword arguments of nnc_fl.encode. "default" is what the uplink codes with by default
#: (strategies' "nnc" parameters; rel_to / float_lossless do not apply to a delta coded at one step).
CONFIGS: dict[str, dict] = {
    "plain": {},
    "default": dict(rd_lambda=0.02, schema_bound=True),
    "default+rate": dict(rd_lambda=0.02, schema_bound=True, rate_search=True),
    "default+rows": dict(rd_lambda=0.02, schema_bound=True, row_refs=True),
    "dq": dict(rd_lambda=0.075, schema_bound=True, dq=True),
    "all": dict(rd_lambda=0.075, dq=True, rate_search=True, row_refs=True, schema_bound=True),
    "dq8": dict(rd_lambda=0.075, schema_bound=True, dq=8),
    "all8": dict(rd_lambda=0.075, dq=8, rate_search=True, row_refs=True, schema_bound=True),
}


def bits_per_param(delta: dict[str, np.ndarray], step: float, kwargs: dict) -> float:
    n = sum(x.size for x in delta.values())
    return 8 * len(nnc_fl.encode(delta, step=step, threads=1, **kwargs)) / n


def step_for_rate(delta: dict[str, np.ndarray], kwargs: dict, bpp: float, tolerance: float = 0.02) -> float:
    """A float32 step at which ``delta`` codes at ``bpp`` bits per parameter within ``tolerance``
    (relative), by bisection on the step's log between 2**-12 and 2**4 times the delta's RMS."""
    values = np.concatenate([np.asarray(x, np.float64).ravel() for x in delta.values()])
    rms = float(np.sqrt(np.mean(values**2)))
    lo, hi = math.log2(rms) - 12, math.log2(rms) + 4  # finer steps give more bits
    for _ in range(40):
        mid = (lo + hi) / 2
        step = float(np.float32(2.0**mid))
        rate = bits_per_param(delta, step, kwargs)
        if abs(rate / bpp - 1) <= tolerance:
            return step
        lo, hi = (mid, hi) if rate > bpp else (lo, mid)
    raise RuntimeError(f"no step codes at {bpp} bits/param within {tolerance:.0%} (last {rate:.3f})")


def measure(delta: dict[str, np.ndarray], kwargs: dict, bpp: float, repeat: int, tolerance: float = 0.02) -> dict:
    """One configuration at ``bpp``: its step, rate and one-thread encode / decode speeds."""
    step = step_for_rate(delta, kwargs, bpp, tolerance)
    data = nnc_fl.encode(delta, step=step, threads=1, **kwargs)
    expect = delta if kwargs.get("schema_bound") else None
    raw = 4 * sum(x.size for x in delta.values())
    enc = best_time(lambda: nnc_fl.encode(delta, step=step, threads=1, **kwargs), repeat)
    dec = best_time(lambda: nnc_fl.decode(data, expect=expect, threads=1), repeat)
    return dict(step=step, bpp=8 * len(data) / (raw // 4), enc_mbs=raw / enc / 1e6, dec_mbs=raw / dec / 1e6,
                enc_s=enc, dec_s=dec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delta", default="large", help="a delta of experiments.bench_codec (default: large, 1.13 M)")
    ap.add_argument("--bpp", type=float, default=1.0, help="bits per parameter to code at (default 1.0)")
    ap.add_argument("--tolerance", type=float, default=0.02, help="relative tolerance of the rate (default 0.02)")
    ap.add_argument("--repeat", type=int, default=9, help="timed runs per measurement (best kept)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma list of " + ", ".join(CONFIGS))
    args = ap.parse_args(argv)
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configurations {unknown}; choose from {list(CONFIGS)}")
    delta = load_delta(args.delta)
    n = sum(x.size for x in delta.values())
    print(f"{args.delta}: {n:,} parameters, one thread, process CPU time, best of {args.repeat}")
    print(f"{'configuration':<14} {'step':>10} {'bits/par':>8} {'enc MB/s':>9} {'dec MB/s':>9} {'enc cost':>9}")
    plain = None
    for name in names:
        r = measure(delta, CONFIGS[name], args.bpp, args.repeat, args.tolerance)
        plain = r["enc_s"] if name == "plain" else plain
        cost = f"{r['enc_s'] / plain:8.2f}x" if plain else ""
        speeds = f"{r['enc_mbs']:9.1f} {r['dec_mbs']:9.1f}"
        print(f"{name:<14} {r['step']:10.4g} {r['bpp']:8.3f} {speeds} {cost:>9}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
