#!/usr/bin/env python
"""Equal-RMSE comparison of RD curves from rd_curves.jsonl (written by rd_sweep_nncfl.py / rd_sweep_nncodec.py).

    python experiments/nncodec_compare/rd_compare.py rd_curves.jsonl > RD_RESULTS_tables.md

Curve of a configuration = its operational Pareto front (points not dominated in both bytes and RMSE).
Bytes at a target RMSE: piecewise-linear interpolation of log(bytes) vs log(RMSE) between adjacent
front points (no extrapolation). Envelope of a codec = pointwise minimum of its configurations'
curves (over the configurations whose curve covers that RMSE).
By default nnc_fl points are restricted to the NNCodec QP-grid steps (grid == "qp"), so both codecs
are sampled at exactly the same steps; --ours-grid all also uses the 4-per-octave log grid.
BD-rate (A vs B): mean of log(bytes_A / bytes_B) over a uniform grid in log(RMSE) spanning the
overlap of both curves (or a sub-band), reported as exp(mean) - 1. Negative = A needs fewer bytes.
Robustness variant (--hull): each curve is the lower convex hull in (bytes, MSE) instead of the
Pareto front, and an envelope is the lower convex hull of the union of its configurations' points.
"""
from __future__ import annotations

import argparse, json, math, sys
from collections import defaultdict

import numpy as np

OURS = ["nncfl_rd0", "nncfl_rd0.05", "nncfl_rd0.1", "nncfl_rd0.2"]
THEIRS = ["nncodec_urq_ls0", "nncodec_dq_ls0", "nncodec_dq_ls0.5", "nncodec_dq_ls1", "nncodec_dq_ls2",
          "nncodec_urq_ls1"]
DEFAULT = "nncodec_dq_ls0"
TARGET_BPP = [2.0, 1.0, 0.5, 0.3]  # targets: RMSE at which NNCodec default codes at these bits/param
BAND = (0.3, 1.0)                   # low-rate band for BD-rate, in NNCodec-default bits/param
MAIN = (0.3, 3.0)                   # main BD range, in NNCodec-default bits/param (avoids the all-zero floor)
DELTAS = ["small", "medium", "large"]
ISSUE_RANGES = [(0.1, 4.0), (0.1, 0.5)]  # issue 12: BD-rate of the envelopes over these NNCodec-default bpp


def pareto(pts):
    """pts: list of (bytes, rmse, label). Returns front sorted by bytes asc (rmse strictly desc)."""
    out = []
    for b, e, lab in sorted(pts, key=lambda p: (p[0], p[1])):
        if not out or e < out[-1][1]:
            out.append((b, e, lab))
    return out


def hull(pts):
    """Lower convex hull in (bytes, MSE) of the Pareto front (monotone chain)."""
    f = pareto(pts)
    h = []
    for p in f:
        while len(h) >= 2:
            (x1, y1, _), (x2, y2, _) = h[-2], h[-1]
            x3, y3 = p[0], p[1]
            # keep h[-1] only if it lies strictly below the chord h[-2] -> p (MSE = rmse^2)
            cross = (x2 - x1) * (y3 ** 2 - y1 ** 2) - (y2 ** 2 - y1 ** 2) * (x3 - x1)
            if cross <= 0:
                h.pop()
            else:
                break
        h.append(p)
    return h


class Curve:
    def __init__(self, front):
        f = sorted(front, key=lambda p: p[1])            # by rmse asc -> bytes desc
        self.le = np.log([p[1] for p in f])
        self.lb = np.log([p[0] for p in f])
        self.labels = [p[2] for p in f]
        self.pts = f

    @property
    def rng(self):
        return math.exp(self.le[0]), math.exp(self.le[-1])

    def log_bytes(self, rmse):
        le = np.log(np.atleast_1d(rmse))
        if np.any(le < self.le[0] - 1e-12) or np.any(le > self.le[-1] + 1e-12):
            raise ValueError("outside curve")
        return np.interp(le, self.le, self.lb)

    def bytes_at(self, rmse):
        return float(np.exp(self.log_bytes(rmse))[0])

    def label_at(self, rmse):
        """Configuration(s) of the two front points bracketing rmse."""
        i = int(np.searchsorted(self.le, math.log(rmse)))
        i = min(max(i, 1), len(self.le) - 1)
        a, b = self.labels[i - 1], self.labels[i]
        return a if a == b else f"{a}/{b}"

    def rmse_at_bpp(self, bpp, n):
        """RMSE at which the curve codes at bpp bits/param (interpolated, log-log)."""
        lb = math.log(bpp * n / 8)
        if not (self.lb[-1] <= lb <= self.lb[0]):
            return None
        return float(math.exp(np.interp(lb, self.lb[::-1], self.le[::-1])))


class Envelope:
    """Pointwise minimum of several curves (each used only inside its own RMSE range)."""
    def __init__(self, curves: dict):
        self.curves = curves
        lo = min(c.le[0] for c in curves.values()); hi = max(c.le[-1] for c in curves.values())
        ivs = sorted((c.le[0], c.le[-1]) for c in curves.values())
        reach = ivs[0][1]
        for a0, a1 in ivs[1:]:
            assert a0 <= reach + 1e-12, "union of curve ranges not contiguous"
            reach = max(reach, a1)
        self.le = np.array([lo, hi])

    @property
    def rng(self):
        return math.exp(self.le[0]), math.exp(self.le[-1])

    def _all(self, rmse):
        le = np.log(np.atleast_1d(rmse))
        out = []
        for c in self.curves.values():
            v = np.interp(le, c.le, c.lb)
            v[(le < c.le[0] - 1e-12) | (le > c.le[-1] + 1e-12)] = np.inf
            out.append(v)
        return np.array(out)

    def log_bytes(self, rmse):
        m = self._all(rmse).min(axis=0)
        if not np.all(np.isfinite(m)):
            raise ValueError("outside envelope")
        return m

    def bytes_at(self, rmse):
        return float(np.exp(self.log_bytes(rmse))[0])

    def label_at(self, rmse):
        v = self._all(rmse)[:, 0]
        names = list(self.curves)
        order = np.argsort(v)
        best = names[order[0]]
        # mention the runner-up if within 0.5 %
        if len(order) > 1 and v[order[1]] - v[order[0]] < math.log(1.005):
            best += f" (~{names[order[1]]})"
        return best


def bd(a: Curve, b: Curve, lo=None, hi=None, n=4001):
    l0 = max(a.le[0], b.le[0]); l1 = min(a.le[-1], b.le[-1])
    if lo is not None: l0 = max(l0, math.log(lo))
    if hi is not None: l1 = min(l1, math.log(hi))
    if l1 <= l0:
        return None, None, None
    g = np.exp(np.linspace(l0, l1, n))
    d = a.log_bytes(g) - b.log_bytes(g)
    return 100 * (math.exp(float(np.mean(d))) - 1), math.exp(l0), math.exp(l1)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("jsonl")
    p.add_argument("--hull", action="store_true")
    p.add_argument("--json-out", default=None)
    p.add_argument("--ours-grid", choices=("qp", "all"), default="qp")
    p.add_argument("--extra-ours", nargs="*", default=[], help="extra nnc_fl config labels to add to OURS")
    p.add_argument("--extra-theirs", nargs="*", default=[], help="extra NNCodec config labels to add to THEIRS")
    p.add_argument("--deltas", nargs="*", default=None, help="deltas to compare (default: small medium large)")
    p.add_argument("--ours", nargs="*", default=None, help="replace the nnc_fl config list")
    p.add_argument("--theirs", nargs="*", default=None, help="replace the NNCodec config list")
    a = p.parse_args(argv)
    global DELTAS
    if a.deltas:
        DELTAS = a.deltas
    if a.ours:
        OURS[:] = a.ours
    if a.theirs:
        THEIRS[:] = a.theirs
    mk = hull if a.hull else pareto
    OURS.extend(a.extra_ours); THEIRS.extend(a.extra_theirs)
    rows = [json.loads(l) for l in open(a.jsonl)]
    by = defaultdict(list)
    meta = {}
    for r in rows:
        if r["codec"] == "nnc_fl" and a.ours_grid == "qp" and r["grid"] != "qp":
            continue
        by[(r["delta"], r["config"])].append((r["bytes"], r["rmse"], r["config"]))
        meta[r["delta"]] = (r["num_params"], r["rms_all"])
    summary = {}
    issue_rows = []
    P = print
    P(f"Curve construction: {'lower convex hull in (bytes, MSE)' if a.hull else 'Pareto front'}; "
      "interpolation log(bytes) vs log(RMSE), piecewise linear; "
      f"nnc_fl steps: {'NNCodec QP grid only' if a.ours_grid == 'qp' else 'QP grid + 4/octave log grid'}.\n")
    for delta in DELTAS:
        n, rms = meta[delta]
        curves = {c: Curve(mk(by[(delta, c)])) for c in OURS + THEIRS}
        if a.hull:
            curves["OURS_BEST"] = Curve(mk([q for c in OURS for q in by[(delta, c)]]))
            curves["NNCODEC_BEST"] = Curve(mk([q for c in THEIRS for q in by[(delta, c)]]))
        else:
            curves["OURS_BEST"] = Envelope({c: curves[c] for c in OURS})
            curves["NNCODEC_BEST"] = Envelope({c: curves[c] for c in THEIRS})
        lo = max(c.rng[0] for c in curves.values()); hi = min(c.rng[1] for c in curves.values())
        targets = [curves[DEFAULT].rmse_at_bpp(b, n) for b in TARGET_BPP]
        targets = [t for t in targets if t is not None and lo <= t <= hi]  # those all curves reach
        assert targets, (delta, lo, hi)
        P(f"### {delta} ({n:,} params, RMS {rms:.4e})\n")
        P(f"Overlap of all curves: RMSE {lo:.4e} .. {hi:.4e} ({lo/rms:.3f} .. {hi/rms:.3f} x RMS).\n")
        hdr = "| configuration | " + " | ".join(
            f"RMSE {t:.3e} ({t/rms:.3f}xRMS)" for t in targets) + " | BD vs NNCodec default, full overlap | BD vs default, 0.3-1 bpp band |"
        P(hdr); P("|" + "---|" * (len(targets) + 3))
        band_lo = curves[DEFAULT].rmse_at_bpp(BAND[1], n); band_hi = curves[DEFAULT].rmse_at_bpp(BAND[0], n)
        summary[delta] = {"targets_rmse": targets, "target_bpp_of_default": TARGET_BPP, "overlap": [lo, hi],
                          "band_rmse": [band_lo, band_hi], "bytes": {}, "bd_vs_default": {}}
        for c in OURS + ["OURS_BEST"] + THEIRS + ["NNCODEC_BEST"]:
            bs = [curves[c].bytes_at(t) for t in targets]
            cells = [f"{b:,.0f} ({8*b/n:.3f} bpp)" for b in bs]
            if c == DEFAULT:
                bdf = bdb = "ref"
            else:
                bdf = bd(curves[c], curves[DEFAULT])[0]; bdb = bd(curves[c], curves[DEFAULT], band_lo, band_hi)[0]
                summary[delta]["bd_vs_default"][c] = [bdf, bdb]
                bdf, bdb = f"{bdf:+.2f}%", f"{bdb:+.2f}%"
            summary[delta]["bytes"][c] = bs
            name = f"**{c}**" if c in ("OURS_BEST", "NNCODEC_BEST") else c
            P(f"| {name} | " + " | ".join(cells) + f" | {bdf} | {bdb} |")
        P("")
        ob, nb = curves["OURS_BEST"], curves["NNCODEC_BEST"]
        P("Envelope comparison at the targets (OURS_BEST vs NNCODEC_BEST; which configuration forms each envelope there):\n")
        P("| target RMSE | ours best bytes | from | NNCodec best bytes | from | diff |")
        P("|---|---|---|---|---|---|")
        for t in targets:
            x, y = ob.bytes_at(t), nb.bytes_at(t)
            P(f"| {t:.3e} | {x:,.0f} | {ob.label_at(t)} | {y:,.0f} | {nb.label_at(t)} | {100*(x/y-1):+.2f}% |")
        P("")
        res = {}
        m_lo = curves[DEFAULT].rmse_at_bpp(MAIN[1], n); m_hi = curves[DEFAULT].rmse_at_bpp(MAIN[0], n)
        for (A, B) in [("OURS_BEST", "NNCODEC_BEST"), ("nncfl_rd0.1", DEFAULT), ("OURS_BEST", DEFAULT),
                       ("nncfl_rd0", "nncodec_urq_ls0"), ("nncfl_rd0.1", "nncodec_urq_ls1"),
                       ("nncfl_rd0", "NNCODEC_BEST"), ("nncfl_rd0.05", "NNCODEC_BEST")]:
            if A not in curves or B not in curves:
                continue
            f = bd(curves[A], curves[B]); bnd = bd(curves[A], curves[B], band_lo, band_hi)
            mn = bd(curves[A], curves[B], m_lo, m_hi)
            res[f"{A} vs {B}"] = {"full": f, "band": bnd, "main": mn}
            P(f"- BD-rate {A} vs {B}: main 0.3-3 bpp {mn[0]:+.2f}% (RMSE {mn[1]:.3e}..{mn[2]:.3e}); "
              f"0.3-1 bpp band {bnd[0]:+.2f}% (RMSE {bnd[1]:.3e}..{bnd[2]:.3e}); "
              f"full overlap {f[0]:+.2f}% (RMSE {f[1]:.3e}..{f[2]:.3e})")
        # pointwise extremes of the byte ratio over the common RMSE range
        for (A, B) in [("OURS_BEST", "NNCODEC_BEST"), ("nncfl_rd0.1", DEFAULT)]:
            ca, cb = curves[A], curves[B]
            l0 = max(ca.le[0], cb.le[0]); l1 = min(ca.le[-1], cb.le[-1])
            g = np.exp(np.linspace(l0, l1, 4001))
            r = np.exp(ca.log_bytes(g) - cb.log_bytes(g)) - 1
            bb = np.exp(cb.log_bytes(g)) * 8 / n
            i, j = int(np.argmax(r)), int(np.argmin(r))
            res[f"pointwise {A} vs {B}"] = {"max": [float(r[i]), float(g[i]), float(bb[i])],
                                              "min": [float(r[j]), float(g[j]), float(bb[j])],
                                              "frac_grid_worse": float(np.mean(r > 0))}
            P(f"- pointwise {A} vs {B} over RMSE {g[0]:.3e}..{g[-1]:.3e}: worst for us {100*r[i]:+.2f}% at RMSE "
              f"{g[i]:.3e} ({B} at {bb[i]:.3f} bpp), best for us {100*r[j]:+.2f}% at RMSE {g[j]:.3e} "
              f"({B} at {bb[j]:.3f} bpp); share of the range where we need more bytes: {100*np.mean(r > 0):.1f}%"
              + (f", all of it at {B} >= {bb[r > 0].min():.3f} bpp (RMSE <= {g[r > 0].max():.3e})" if np.any(r > 0) else ""))
        # BD in sub-bands by NNCodec-default bpp, envelope vs envelope
        for lo_b, hi_b in [(0.1, 0.3), (0.3, 0.6), (0.6, 1.0), (1.0, 2.0), (2.0, 3.0)]:
            r1 = curves[DEFAULT].rmse_at_bpp(hi_b, n); r0 = curves[DEFAULT].rmse_at_bpp(lo_b, n)
            if r1 is None or r0 is None:
                continue
            f = bd(ob, nb, r1, r0)
            g = bd(curves["nncfl_rd0.1"], curves[DEFAULT], r1, r0) if "nncfl_rd0.1" in curves else (None,)
            if f[0] is None or g[0] is None:
                continue
            res[f"band {lo_b}-{hi_b}"] = {"best_vs_best": f[0], "rd0.1_vs_default": g[0]}
            P(f"- sub-band NNCodec-default {lo_b}-{hi_b} bpp: OURS_BEST vs NNCODEC_BEST {f[0]:+.2f}%, "
              f"nncfl_rd0.1 vs default {g[0]:+.2f}%")
        for lo_b, hi_b in ISSUE_RANGES:
            r1 = curves[DEFAULT].rmse_at_bpp(hi_b, n) or curves[DEFAULT].rng[0]
            r0 = curves[DEFAULT].rmse_at_bpp(lo_b, n) or curves[DEFAULT].rng[1]
            f = bd(ob, nb, r1, r0)
            res[f"issue {lo_b}-{hi_b}"] = f
            P(f"- issue range NNCodec-default {lo_b}-{hi_b} bpp: OURS_BEST vs NNCODEC_BEST {f[0]:+.2f}% "
              f"(RMSE {f[1]:.3e}..{f[2]:.3e})")
            issue_rows.append((delta, f"{lo_b}-{hi_b}", f[0]))
        summary[delta]["bd"] = res
        P("")
    P("### BD-rate OURS_BEST vs NNCODEC_BEST over the issue's ranges (NNCodec-default bits/param)\n")
    P("| delta | range | BD-rate |")
    P("|---|---|---|")
    for delta, rng, v in issue_rows:
        P(f"| {delta} | {rng} | {v:+.2f}% |")
    if a.json_out:
        json.dump(summary, open(a.json_out, "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())
