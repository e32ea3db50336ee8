#!/usr/bin/env python
"""RD sweep of nnc_fl (sizes and errors only, no timing).

    python experiments/nncodec_compare/rd_sweep_nncfl.py DELTAS.npz [--lo 0.125 --hi 8 --per-octave 4] >> rd_curves.jsonl

Steps: RMS(all params) x 2**(k/per_octave) for k covering [lo, hi], the same float step for every
tensor (step=float). Additionally the exact NNCodec QP-grid steps in the same range (so that
rd_lambda=0 can be checked against NNCodec URQ, which must give the identical reconstruction).
For each step and rd_lambda in LAMBDAS: encode, decode, print one JSON line with bytes and RMSE.
"""
from __future__ import annotations

import argparse, json, math, os, sys

import numpy as np
import nnc_fl

LAMBDAS = [0.0, 0.05, 0.1, 0.2]


def qp_to_step(qp: int) -> float:
    return float((4 + (qp & 3)) * 2.0 ** ((qp >> 2) - 2))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("npz")
    p.add_argument("--lo", type=float, default=0.125)
    p.add_argument("--hi", type=float, default=8.0)
    p.add_argument("--per-octave", type=int, default=4)
    p.add_argument("--lambdas", type=float, nargs="*", default=LAMBDAS)
    a = p.parse_args(argv)
    with np.load(a.npz) as z:
        d = {k: np.ascontiguousarray(z[k]) for k in z.files}
    n = sum(v.size for v in d.values())
    rms = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in d.values()) / n)
    k0 = math.ceil(math.log2(a.lo) * a.per_octave - 1e-9)
    k1 = math.floor(math.log2(a.hi) * a.per_octave + 1e-9)
    steps = [("log", rms * 2.0 ** (k / a.per_octave), None) for k in range(k0, k1 + 1)]
    steps += [("qp", qp_to_step(q), q) for q in range(-256, 256) if a.lo * rms <= qp_to_step(q) <= a.hi * rms]
    name = os.path.splitext(os.path.basename(a.npz))[0]
    for lam in a.lambdas:
        for grid, step, qp in steps:
            bs = nnc_fl.encode(d, step=float(step), rd_lambda=lam)
            rec = nnc_fl.decode(bs)
            assert list(rec) == list(d)
            se = 0.0
            for k, v in d.items():
                assert rec[k].shape == v.shape
                se += float(np.sum((rec[k].astype(np.float64) - v.astype(np.float64)) ** 2))
            modes = sorted({t.mode for t in nnc_fl.inspect(bs).tensors})
            print(json.dumps({
                "delta": name, "codec": "nnc_fl", "config": f"nncfl_rd{lam:g}", "rd_lambda": lam,
                "grid": grid, "qp": qp, "step": step, "step_over_rms": step / rms, "rms_all": rms,
                "num_params": n, "bytes": len(bs), "bits_per_param": 8 * len(bs) / n,
                "rmse": math.sqrt(se / n), "tensor_modes": modes,
            }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
