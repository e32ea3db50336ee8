#!/usr/bin/env python
"""Benchmark Fraunhofer HHI NNCodec (PyPI ``nncodec``) on a dict of float32 deltas stored in an .npz.

Run with the NNCodec venv:

    $NNCODEC_PYTHON experiments/nncodec_compare/run_nncodec.py DELTAS.npz --qp -40 [--qp ...]
    $NNCODEC_PYTHON experiments/nncodec_compare/run_nncodec.py DELTAS.npz --rel 0.5 1 2

For every QP it prints one JSON line per quantiser mode:

* ``urq``  -- NNCodec's uniform reconstruction quantiser (``use_dq=False``): plain rounding
             ``level = round(x / step)``, reconstruction ``level * step`` (lambda_scale=0, no RDOQ).
* ``dq``   -- NNCodec's default ``use_dq=True``: 8-state trellis-coded (dependent) quantisation.
             Reconstruction is still ``k * step`` with integer k, but each of the two quantisers
             has spacing 2*step, so at the same QP the error is larger and the rate lower.

Fairness: every tensor (2-D weights AND 1-D biases) is forced to the SAME QP through
``qp_per_tensor``; without it NNCodec would code every 1-D tensor ("unspecified" type) at
``nonweight_qp`` (default -75, step ~ 3.7e-6).  The QP / step / dq_flag each tensor actually used
is read back from the bitstream and reported (``per_tensor``), as is any QP change (NNCodec clips
a QP if levels would overflow int32).

All other options are NNCodec ``nnc.compress`` defaults: qp_density=2, param_opt=True,
row_skipping=False, tca=False, scan_order=0, lambda_scale=0, cabac_unary_length_minus1=10,
no approx_param_base (no incremental / temporal-context coding), no sparsification.

QP -> step (qp_density 2): step = (4 + (qp & 3)) * 2**((qp >> 2) - 2).

Timings: one warm-up, then best of ``--repeats`` (default 3) for encode (``nnc.compress``:
quantisation + CABAC + high-level syntax) and decode (``nnc.decompress``: parsing + CABAC +
dequantisation).  Wall-clock, single process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time

import numpy as np

from nncodec import nnc, nnc_core

QP_DENSITY = 2


def qp_to_step(qp: int, qp_density: int = QP_DENSITY) -> float:
    k = 1 << qp_density
    return float((k + (qp & (k - 1))) * 2.0 ** ((qp >> qp_density) - qp_density))


def nearest_qp(target_step: float, qp_density: int = QP_DENSITY) -> int:
    """QP whose step is nearest to ``target_step`` in log scale."""
    qps = range(-256, 256)
    return min(qps, key=lambda q: abs(math.log(qp_to_step(q, qp_density) / target_step)))


def load_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        out = {}
        for k in z.files:
            a = z[k]
            if a.dtype != np.float32:
                raise SystemExit(f"{k}: dtype {a.dtype}, this benchmark expects float32")
            out[k] = np.ascontiguousarray(a)
    return out


def rms_all(d: dict[str, np.ndarray]) -> float:
    n = sum(v.size for v in d.values())
    return math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in d.values()) / n)


def rmse(d: dict[str, np.ndarray], rec: dict[str, np.ndarray]) -> float:
    n = sum(v.size for v in d.values())
    se = 0.0
    for k, v in d.items():
        r = rec[k]
        if r.shape != v.shape:
            raise RuntimeError(f"{k}: decoded shape {r.shape} != {v.shape}")
        se += float(np.sum((r.astype(np.float64) - v.astype(np.float64)) ** 2))
    return math.sqrt(se / n)


LAMBDA_SCALE = 0.0  # NNCodec default; >0 turns on rate-aware (RDOQ-style) quantisation


def encode(d, qp: int, use_dq: bool) -> bytes:
    return nnc.compress(
        d,
        bitstream_path=None,
        qp=qp,
        qp_density=QP_DENSITY,
        qp_per_tensor={k: qp for k in d},  # same QP for 1-D tensors too (overrides nonweight_qp)
        use_dq=use_dq,
        lambda_scale=LAMBDA_SCALE,
        return_bitstream=True,
        verbose=False,
    )


def decode(bs) -> dict[str, np.ndarray]:
    return nnc.decompress(bytearray(bs))


def bitstream_tensor_info(bs) -> dict[str, dict]:
    """Per-tensor qp / dq_flag / scan_order as coded in the bitstream (levels not dequantised)."""
    model_info = {
        "parameter_type": {}, "parameter_dimensions": {}, "parameter_index": {}, "block_identifier": {},
        "topology_storage_format": None, "topology_compression_format": None,
        "performance_maps": {"mps": {}, "lps": {}},
        "performance_map_flags": {k: {} for k in (
            "mps_sparsification_flag", "lps_sparsification_flag", "mps_pruning_flag", "lps_pruning_flag",
            "mps_unification_flag", "lps_unification_flag",
            "mps_decomposition_performance_map_flag", "lps_decomposition_performance_map_flag")},
    }
    hls_stats: dict = {}
    ad = nnc_core.coder.decode(bytearray(bs), model_info, hls_stats=hls_stats, oob_dict={})
    qpd = int(ad["qp_density"])
    info = {}
    for name in ad["parameters"]:
        q = ad["qp"].get(name)
        info[name] = {
            "shape": list(model_info["parameter_dimensions"].get(name, ())),
            "method": ad["approx_method"].get(name),
            "qp": None if q is None else int(q),
            "step": None if q is None else qp_to_step(int(q), qpd),
            "dq_flag": int(ad["dq_flag"].get(name, 0)),
        }
    return info, qpd, hls_stats.get("ndu_bytes")


def best_time(fn, repeats: int):
    fn()  # warm-up
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run_one(label: str, d, qp: int, use_dq: bool, repeats: int) -> dict:
    snapshot = {k: v.copy() for k, v in d.items()}
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):  # NNCodec prints INFO lines (e.g. QP clipping)
        enc_s, bs = best_time(lambda: encode(d, qp, use_dq), repeats)
        dec_s, rec = best_time(lambda: decode(bs), repeats)
        info, qpd, ndu_bytes = bitstream_tensor_info(bs)
    for k in d:  # the codec must not have touched its input
        assert np.array_equal(d[k], snapshot[k]), f"input {k} modified by NNCodec"
    assert list(rec) == list(d), f"decoded names/order differ: {list(rec)}"
    n = sum(v.size for v in d.values())
    # sanity: every reconstruction is an integer multiple of the tensor's step
    for k, v in rec.items():
        s = info[k]["step"]
        lv = v.astype(np.float64) / s
        assert np.allclose(lv, np.round(lv), atol=1e-3), f"{k}: reconstruction not on the step grid"
    return {
        "codec": "nncodec-2.1.3",
        "mode": label,
        "use_dq": use_dq,
        "lambda_scale": LAMBDA_SCALE,
        "qp_requested": qp,
        "qp_density": qpd,
        "step_requested": qp_to_step(qp),
        "bytes": len(bs),
        "num_params": n,
        "bits_per_param": 8 * len(bs) / n,
        "rmse": rmse(d, rec),
        "encode_s": enc_s,
        "decode_s": dec_s,
        "all_tensors_same_qp": all(t["qp"] == qp for t in info.values()),
        "per_tensor": info,
        "ndu_header_bytes": ndu_bytes,  # per-tensor NDU header bytes as counted by NNCodec's decoder
        "nncodec_stdout": captured.getvalue().strip() or None,
    }


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("npz")
    p.add_argument("--qp", type=int, action="append", default=[], help="NNC QP (qp_density 2); repeatable")
    p.add_argument("--rel", type=float, nargs="*", default=[],
                   help="pick the QP whose step is nearest (log scale) to REL x RMS of all tensors")
    p.add_argument("--mode", choices=("urq", "dq", "both"), default="both")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lambda-scale", type=float, default=0.0,
                   help="NNCodec lambda_scale (default 0 = NNCodec default: no rate term in quantisation)")
    a = p.parse_args(argv)
    global LAMBDA_SCALE
    LAMBDA_SCALE = a.lambda_scale

    d = load_npz(a.npz)
    rms = rms_all(d)
    jobs = [(None, q) for q in a.qp] + [(r, nearest_qp(r * rms)) for r in a.rel]
    if not jobs:
        p.error("give --qp and/or --rel")
    modes = {"urq": [("urq", False)], "dq": [("dq", True)], "both": [("urq", False), ("dq", True)]}[a.mode]
    for rel, qp in jobs:
        for label, use_dq in modes:
            row = run_one(label, d, qp, use_dq, a.repeats)
            row.update({"input": a.npz, "rms_all": rms, "rel_target": rel})
            print(json.dumps(row, default=_jsonable), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
