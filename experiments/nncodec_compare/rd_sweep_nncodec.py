#!/usr/bin/env python
"""RD sweep of NNCodec 2.1.3 (sizes and errors only, no timing).

    $NNCODEC_PYTHON experiments/nncodec_compare/rd_sweep_nncodec.py DELTAS.npz [--lo 0.125 --hi 8] >> rd_curves.jsonl

For every QP (``--qp-density``, default 2: four per octave) whose step lies in [lo, hi] x RMS(all params), and every configuration
in CONFIGS, encode once with every tensor forced to that QP (qp_per_tensor, as run_nncodec.py),
decode, and print one JSON line: bytes and RMSE of the decoded reconstruction vs the input.
All other nnc.compress options are NNCodec defaults.
"""
from __future__ import annotations

import argparse, contextlib, io, json, os, sys

import numpy as np
from nncodec import nnc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_nncodec import QP_DENSITY, qp_to_step, load_npz, rms_all, rmse, bitstream_tensor_info  # noqa: E402

# (label, use_dq, lambda_scale)
CONFIGS = [
    ("nncodec_urq_ls0", False, 0.0),
    ("nncodec_dq_ls0", True, 0.0),      # NNCodec default
    ("nncodec_dq_ls0.5", True, 0.5),
    ("nncodec_dq_ls1", True, 1.0),
    ("nncodec_dq_ls2", True, 2.0),
    ("nncodec_urq_ls1", False, 1.0),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("npz")
    p.add_argument("--lo", type=float, default=0.125)
    p.add_argument("--hi", type=float, default=8.0)
    p.add_argument("--configs", nargs="*", default=None, help="subset of config labels")
    p.add_argument("--qp-stride", type=int, default=1, help="every n-th QP only (2: half the density)")
    p.add_argument("--qp-density", type=int, default=QP_DENSITY, choices=range(1, 6),
                   help="2**D QPs per octave (2: NNCodec's default, 4 per octave)")
    p.add_argument("--extra", nargs="*", default=[], metavar="dq:LS|urq:LS",
                   help="run (only) these extra configurations, e.g. dq:0.75 dq:1.5")
    a = p.parse_args(argv)
    d = load_npz(a.npz)
    n = sum(v.size for v in d.values())
    rms = rms_all(d)
    qd = a.qp_density
    qps = [q for q in range(-1024, 1024) if a.lo * rms <= qp_to_step(q, qd) <= a.hi * rms and q % a.qp_stride == 0]
    name = os.path.splitext(os.path.basename(a.npz))[0]
    configs = CONFIGS
    if a.extra:
        configs = [(f"nncodec_{m}_ls{float(v):g}", m == "dq", float(v)) for m, v in (e.split(":") for e in a.extra)]
    for label, use_dq, ls in configs:
        if a.configs and label not in a.configs:
            continue
        for qp in qps:
            snap = {k: v.copy() for k, v in d.items()}
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                bs = nnc.compress(d, bitstream_path=None, qp=qp, qp_density=qd,
                                  qp_per_tensor={k: qp for k in d}, use_dq=use_dq, lambda_scale=ls,
                                  return_bitstream=True, verbose=False)
                rec = nnc.decompress(bytearray(bs))
                info, qpd, _ = bitstream_tensor_info(bs)
            for k in d:
                assert np.array_equal(d[k], snap[k]), f"input {k} modified"
            assert list(rec) == list(d)
            for k, v in rec.items():  # reconstruction on the tensor's step grid
                lv = v.astype(np.float64) / info[k]["step"]
                assert np.allclose(lv, np.round(lv), atol=1e-3), k
            print(json.dumps({
                "delta": name, "codec": "nncodec-2.1.3", "config": label, "use_dq": use_dq,
                "lambda_scale": ls, "qp": qp, "qp_density": qpd, "step": qp_to_step(qp, qd),
                "step_over_rms": qp_to_step(qp, qd) / rms, "rms_all": rms, "num_params": n,
                "bytes": len(bs), "bits_per_param": 8 * len(bs) / n, "rmse": rmse(d, rec),
                "all_tensors_same_qp": all(t["qp"] == qp for t in info.values()),
                "all_dq_flag": sorted({t["dq_flag"] for t in info.values()}),
                "nncodec_stdout": out.getvalue().strip() or None,
            }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
