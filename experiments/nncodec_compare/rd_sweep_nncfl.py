#!/usr/bin/env python
"""RD sweep of nnc_fl (sizes and errors only, no timing).

    python experiments/nncodec_compare/rd_sweep_nncfl.py DELTAS.npz [--lo 0.125 --hi 8 --per-octave 4] >> rd_curves.jsonl

Steps: RMS(all params) x 2**(k/per_octave) for k covering [lo, hi], the same float step for every
tensor (step=float). Additionally the exact NNCodec QP-grid steps in the same range (so that
rd_lambda=0 can be checked against NNCodec URQ, which must give the identical reconstruction), at
``--qp-density`` (sample both codecs at the same density: a sparser curve's piecewise-linear
interpolation underestimates its bytes between the points, which favours it).
For each step and rd_lambda in LAMBDAS: encode, decode, print one JSON line with bytes and RMSE.
"""
from __future__ import annotations

import argparse, json, math, os, sys

import numpy as np
import nnc_fl

LAMBDAS = [0.0, 0.05, 0.1, 0.2]
#: Coding-tool configurations (label -> nnc_fl.encode keywords), run with --tools.
TOOLS = {
    "nncfl_best": dict(rd_lambda=0.1, rate_search=True, row_refs=True, schema_bound=True),
    "nncfl_dq0.05": dict(rd_lambda=0.05, dq=True, rate_search=True, row_refs=True, schema_bound=True),
    "nncfl_all": dict(rd_lambda=0.075, dq=True, rate_search=True, row_refs=True, schema_bound=True),
    "nncfl_dq0.1": dict(rd_lambda=0.1, dq=True, rate_search=True, row_refs=True, schema_bound=True),
    "nncfl_dq_only": dict(rd_lambda=0.075, dq=True),
    # the same with the 8-state machine (tools bit 7)
    "nncfl_all8": dict(rd_lambda=0.075, dq=8, rate_search=True, row_refs=True, schema_bound=True),
    "nncfl_dq8_0.05": dict(rd_lambda=0.05, dq=8, rate_search=True, row_refs=True, schema_bound=True),
    "nncfl_dq8_0.1": dict(rd_lambda=0.1, dq=8, rate_search=True, row_refs=True, schema_bound=True),
}


def qp_to_step(qp: int, qp_density: int = 2) -> float:
    """NNCodec's step of ``qp`` at ``qp_density`` (2**qp_density steps per octave)."""
    k = 1 << qp_density
    return float((k + (qp & (k - 1))) * 2.0 ** ((qp >> qp_density) - qp_density))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("npz")
    p.add_argument("--lo", type=float, default=0.125)
    p.add_argument("--hi", type=float, default=8.0)
    p.add_argument("--per-octave", type=int, default=4)
    p.add_argument("--lambdas", type=float, nargs="*", default=LAMBDAS)
    p.add_argument("--tools", nargs="*", default=[], help=f"tool configurations to run too: {', '.join(TOOLS)}")
    p.add_argument("--qp-only", action="store_true", help="only the NNCodec QP-grid steps")
    p.add_argument("--qp-density", type=int, default=2, choices=range(1, 6),
                   help="NNCodec QP grid density: 2**D steps per octave (2: NNCodec's default, 4 per octave)")
    a = p.parse_args(argv)
    with np.load(a.npz) as z:
        d = {k: np.ascontiguousarray(z[k]) for k in z.files}
    n = sum(v.size for v in d.values())
    rms = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in d.values()) / n)
    k0 = math.ceil(math.log2(a.lo) * a.per_octave - 1e-9)
    k1 = math.floor(math.log2(a.hi) * a.per_octave + 1e-9)
    steps = [("log", rms * 2.0 ** (k / a.per_octave), None) for k in range(k0, k1 + 1)]
    qd = a.qp_density
    steps += [("qp", qp_to_step(q, qd), q) for q in range(-1024, 1024) if a.lo * rms <= qp_to_step(q, qd) <= a.hi * rms]
    if a.qp_only:
        steps = [s for s in steps if s[0] == "qp"]
    name = os.path.splitext(os.path.basename(a.npz))[0]
    configs = [(f"nncfl_rd{lam:g}", dict(rd_lambda=lam)) for lam in a.lambdas] + [(t, TOOLS[t]) for t in a.tools]
    for label, kwargs in configs:
        lam = kwargs.get("rd_lambda", 0.0)
        for grid, step, qp in steps:
            bs = nnc_fl.encode(d, step=float(step), **kwargs)
            rec = nnc_fl.decode(bs, expect=d if kwargs.get("schema_bound") else None)
            assert list(rec) == list(d)
            se = 0.0
            for k, v in d.items():
                assert rec[k].shape == v.shape
                se += float(np.sum((rec[k].astype(np.float64) - v.astype(np.float64)) ** 2))
            info = nnc_fl.inspect(bs, expect=d if kwargs.get("schema_bound") else None)
            modes = sorted({t.mode for t in info.tensors})
            print(json.dumps({
                "delta": name, "codec": "nnc_fl", "config": label, "rd_lambda": lam,
                "tools": {k: v for k, v in kwargs.items() if k != "rd_lambda"},
                "header_bytes": info.header_bytes,
                "grid": grid, "qp": qp, "qp_density": qd if grid == "qp" else None, "step": step, "step_over_rms": step / rms, "rms_all": rms,
                "num_params": n, "bytes": len(bs), "bits_per_param": 8 * len(bs) / n,
                "rmse": math.sqrt(se / n), "tensor_modes": modes,
            }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
