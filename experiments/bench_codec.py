"""Codec benchmark on real trained updates: size, bits per parameter, RMSE, speed vs baselines.

Run ``python -m experiments.bench_codec`` (``--quick`` for a short run). For each delta of
:mod:`experiments.deltas` (a digits MLP after one local epoch: ~6 k, ~100 k and ~1.1 M parameters)
and each quantisation step, it prints one table row per method, all measured in this run:

- ``nnc``: :func:`nnc_fl.encode` (quantise + context-adaptive arithmetic coding), full container;
- ``nnc-rd0.1``: the same with rate-distortion quantisation (``rd_lambda=0.1``): fewer bytes at a
  higher RMSE (compare along the RD curve, not within one step);
- ``fp32+zstd19``: the raw float32 delta through zstd level 19 (lossless reference);
- ``levels+zstd19`` / ``levels+lzma``: the *same* quantisation levels (so the same RMSE), each tensor's
  levels in the narrowest integer type that holds them, concatenated, through zstd-19 and through lzma
  at its best preset (0-9, plain and extreme; the smallest output is kept).

- the coding tools of :func:`nnc_fl.encode`, each alone on top of ``rd_lambda=0.1`` and together
  (:data:`TOOL_CONFIGS`): ``+rate`` (rate-pair search), ``+rows`` (row references), ``+schema``
  (schema-bound table), ``+dq`` (dependent quantisation; at the same step it has a lower RMSE, so
  compare along the RD curve), ``best`` (rate + rows + schema) and ``all`` (``best`` + dq).

Deltas: the digits MLPs ``small`` / ``medium`` / ``large`` and the families of
:func:`experiments.deltas.family_delta` (``tiny`` MLP, ``gru``, ``vit`` transformer encoder, ``cnn``).
With ``--equal-rmse`` the summary also gives, per step, each tool configuration's bytes at the RMSE
of plain rounding (interpolated on its own RD curve, steps ``rms * 2**(k/4)``) over the best of
levels + zstd-19 / lzma at that step.

Speeds are fp32 input bytes per second of one thread (``--threads`` to change it), best of
``--repeat`` runs after a warm-up (numba kernels are cached and compiled before timing).
"""

from __future__ import annotations

import argparse
import lzma
import math
import time
from collections.abc import Callable

import numpy as np
import zstandard

import nnc_fl
from experiments.deltas import FAMILIES, family_delta, trained_delta
from experiments.timing import best_time
from nnc_fl._quantise import quantise


def _levels(delta: dict[str, np.ndarray], step: float) -> dict[str, np.ndarray]:
    """The levels nnc_fl.encode codes (same rounding, same float32 step)."""
    s = float(np.float32(step))
    out = {}
    for name, x in delta.items():
        q, status = quantise(np.ascontiguousarray(x, np.float32).reshape(-1), s, 1 << 62)
        assert status == 0
        out[name] = q
    return out


#: Tool configurations benchmarked beside plain coding (keyword arguments of nnc_fl.encode).
TOOL_CONFIGS: dict[str, dict] = {
    "+rate": dict(rd_lambda=0.1, rate_search=True),
    "+rows": dict(rd_lambda=0.1, row_refs=True),
    "+schema": dict(rd_lambda=0.1, schema_bound=True),
    "+dq": dict(rd_lambda=0.075, dq=True),
    "best": dict(rd_lambda=0.1, rate_search=True, row_refs=True, schema_bound=True),
    "all": dict(rd_lambda=0.075, dq=True, rate_search=True, row_refs=True, schema_bound=True),
}


def _wall_time(fn: Callable[[], object], repeat: int) -> float:
    return best_time(fn, repeat, time.perf_counter)


def load_delta(name: str) -> dict[str, np.ndarray]:
    """A digits-MLP delta (small / medium / large) or a family delta (tiny / gru / vit / cnn)."""
    return dict(family_delta(name) if name in FAMILIES else trained_delta(name))


def _rmse(delta: dict[str, np.ndarray], decoded: dict[str, np.ndarray]) -> float:
    err = np.concatenate([(decoded[k].astype(np.float64) - delta[k]).ravel() for k in delta])
    return float(np.sqrt(np.mean(err**2)))


def _run_config(delta, step, kwargs, repeat, timing, raw, threads=1) -> dict:
    data = nnc_fl.encode(delta, step=step, **kwargs)
    expect = delta if kwargs.get("schema_bound") else None
    rmse = _rmse(delta, nnc_fl.decode(data, expect=expect))
    if not timing:
        return dict(bytes=len(data), rmse=rmse, enc_mbs=math.nan, dec_mbs=math.nan)
    enc_s = _wall_time(lambda: nnc_fl.encode(delta, step=step, threads=threads, **kwargs), repeat)
    dec_s = _wall_time(lambda: nnc_fl.decode(data, expect=expect, threads=threads), repeat)
    return dict(bytes=len(data), rmse=rmse, enc_mbs=raw / enc_s / 1e6, dec_mbs=raw / dec_s / 1e6)


def rd_curve(delta: dict[str, np.ndarray], kwargs: dict, rms: float, per_octave: int = 4) -> np.ndarray:
    """``[(log RMSE, log bytes)]`` of one configuration over steps ``rms * 2**(k / per_octave)``
    from 1/32 to 8 x rms, sorted by RMSE (its Pareto front)."""
    pts = []
    for k in range(-5 * per_octave, 3 * per_octave + 1):
        step = float(np.float32(rms * 2.0 ** (k / per_octave)))
        data = nnc_fl.encode(delta, step=step, **kwargs)
        expect = delta if kwargs.get("schema_bound") else None
        e = _rmse(delta, nnc_fl.decode(data, expect=expect))
        if e > 0:
            pts.append((e, len(data)))
    front = []
    for e, b in sorted(pts, key=lambda p: (p[1], p[0])):
        if not front or e < front[-1][0]:
            front.append((e, b))
    front.sort()
    return np.log(np.array(front, dtype=np.float64))


def bytes_at(curve: np.ndarray, rmse: float) -> float:
    """Bytes of a curve at ``rmse`` (log-log interpolation; NaN outside it)."""
    le = math.log(rmse)
    if not curve[0, 0] <= le <= curve[-1, 0]:
        return math.nan
    return float(np.exp(np.interp(le, curve[:, 0], curve[:, 1])))


def _narrow_bytes(levels: dict[str, np.ndarray]) -> bytes:
    parts = []
    for q in levels.values():
        m = int(np.abs(q).max()) if q.size else 0
        dt = np.int8 if m < 128 else np.int16 if m < 32768 else np.int32 if m < 2**31 else np.int64
        parts.append(q.astype(dt).tobytes())
    return b"".join(parts)


def _lzma_best(data: bytes) -> bytes:
    candidates = [lzma.compress(data, preset=p) for p in range(10)]
    candidates += [lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)]
    return min(candidates, key=len)


def bench_one(delta: dict[str, np.ndarray], step: float, repeat: int, timing: bool, threads: int = 1) -> list[dict]:
    """All methods on one delta at one step (timed in ``threads`` threads); returns one dict per method."""
    n = sum(x.size for x in delta.values())
    raw = 4 * n
    rows = []
    data = nnc_fl.encode(delta, step=step)
    decoded = nnc_fl.decode(data)
    err = np.concatenate([(decoded[k].astype(np.float64) - delta[k]).ravel() for k in delta])
    rmse = float(np.sqrt(np.mean(err**2)))
    enc_s = _wall_time(lambda: nnc_fl.encode(delta, step=step, threads=threads), repeat) if timing else math.nan
    dec_s = _wall_time(lambda: nnc_fl.decode(data, threads=threads), repeat) if timing else math.nan
    rows.append(dict(method="nnc", bytes=len(data), rmse=rmse, enc_mbs=raw / enc_s / 1e6, dec_mbs=raw / dec_s / 1e6))
    rd = nnc_fl.encode(delta, step=step, rd_lambda=0.1)
    rd_out = nnc_fl.decode(rd)
    rd_err = np.concatenate([(rd_out[k].astype(np.float64) - delta[k]).ravel() for k in delta])
    rd_enc_s = _wall_time(lambda: nnc_fl.encode(delta, step=step, rd_lambda=0.1, threads=threads), repeat) \
        if timing else math.nan
    rd_dec_s = _wall_time(lambda: nnc_fl.decode(rd, threads=threads), repeat) if timing else math.nan
    rows.append(dict(method="nnc-rd0.1", bytes=len(rd), rmse=float(np.sqrt(np.mean(rd_err**2))),
                     enc_mbs=raw / rd_enc_s / 1e6, dec_mbs=raw / rd_dec_s / 1e6))
    for name, kwargs in TOOL_CONFIGS.items():
        rows.append(dict(method=name, **_run_config(delta, step, kwargs, repeat, timing, raw, threads)))

    flat = np.concatenate([np.asarray(x, np.float32).ravel() for x in delta.values()]).tobytes()
    z = zstandard.ZstdCompressor(level=19)
    rows.append(dict(method="fp32+zstd19", bytes=len(z.compress(flat)), rmse=0.0))

    levels = _levels(delta, step)
    narrow = _narrow_bytes(levels)
    rows.append(dict(method="levels+zstd19", bytes=len(z.compress(narrow)), rmse=rmse))
    rows.append(dict(method="levels+lzma", bytes=len(_lzma_best(narrow)), rmse=rmse))
    for r in rows:
        r.update(step=step, params=n, bpp=8 * r["bytes"] / n, pct_of_fp32=100 * r["bytes"] / raw)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="small,medium,large,tiny,gru,vit,cnn",
                    help="comma list of small, medium, large (digits MLPs) and tiny, gru, vit, cnn (families)")
    ap.add_argument("--rel-steps", default="0.35,0.5,1,2", help="steps as multiples of the delta's RMS")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (best kept)")
    ap.add_argument("--quick", action="store_true", help="small and medium only, 2 repeats")
    ap.add_argument("--threads", type=int, default=1, help="threads of the timed encodes and decodes (default 1)")
    ap.add_argument("--equal-rmse", action="store_true",
                    help="also compare each tool configuration with levels + zstd/lzma at equal RMSE (RD sweeps)")
    args = ap.parse_args(argv)
    sizes = ["small", "medium"] if args.quick else args.sizes.split(",")
    repeat = 2 if args.quick else args.repeat

    header = (f"{'delta':>8} {'params':>9} {'step':>9} {'method':<14} {'bytes':>9} {'bits/par':>8} {'%fp32':>7} "
              f"{'RMSE':>9} {'enc MB/s':>9} {'dec MB/s':>9}")
    print(header)
    print("-" * len(header))
    summary = []
    equal = []
    for size in sizes:
        delta = load_delta(size)
        all_values = np.concatenate([x.ravel() for x in delta.values()]).astype(np.float64)
        rms = float(np.sqrt(np.mean(all_values**2)))
        curves = {name: rd_curve(delta, kw, rms) for name, kw in TOOL_CONFIGS.items()} if args.equal_rmse else {}
        for rel in (float(r) for r in args.rel_steps.split(",")):
            step = float(np.float32(rel * rms))
            rows = bench_one(delta, step, repeat, timing=True, threads=args.threads)
            for r in rows:
                speed = "" if "enc_mbs" not in r else f"{r['enc_mbs']:9.1f} {r['dec_mbs']:9.1f}"
                print(
                    f"{size:>8} {r['params']:9d} {step:9.3g} {r['method']:<14} {r['bytes']:9d} "
                    f"{r['bpp']:8.3f} {r['pct_of_fp32']:7.3f} {r['rmse']:9.3g} {speed}"
                )
            ours = rows[0]["bytes"]
            best_generic = min(r["bytes"] for r in rows if r["method"].startswith("levels+"))
            first = rows[0]
            summary.append((size, first["params"], step, first["bpp"], ours / best_generic, first["enc_mbs"],
                            first["dec_mbs"]))
            if curves:
                ratios = {name: bytes_at(c, first["rmse"]) / best_generic for name, c in curves.items()}
                equal.append((size, step, first["bpp"], ratios))
        print()
    print("nnc size / best of (levels+zstd19, levels+lzma), same levels so equal RMSE:")
    for size, n, step, bpp, ratio, enc, dec in summary:
        print(f"  {size:>7} ({n} params) step {step:.3g}: {bpp:.3f} bits/param, ratio {ratio:.3f}, "
              f"enc {enc:.0f} MB/s, dec {dec:.0f} MB/s")
    if equal:
        print("\ntool configurations at the RMSE of plain rounding, bytes / best of (levels+zstd19, levels+lzma):")
        for size, step, bpp, ratios in equal:
            cells = "  ".join(f"{name} {r:.3f}" for name, r in ratios.items())
            print(f"  {size:>7} step {step:.3g} ({bpp:.2f} bits/param plain): {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
