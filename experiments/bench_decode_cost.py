"""What a hostile upload costs the decoder and the server, now and before the hardening (issue 9).

Run ``python -m experiments.bench_decode_cost``. It builds hostile streams for a UC10-sized model
(``make_model("cnn", num_classes=10)``, 151,466 parameters) and measures, for each, the time, the
time per input byte and the memory (peak RSS growth, and tracemalloc's peak, which sees what goes
through Python's allocators: Python objects, numpy and numba arrays) of

- ``decode``: :func:`nnc_fl.decode` with its default limits (and memory budget);
- ``decode(expect)``: :func:`nnc_fl.decode` with ``expect=`` the model (after only);
- ``server``: the server's whole per-reply path on a hand-built Flower train reply carrying the
  stream -- :meth:`strategies.uplink.UplinkChecks.open` (after), ``strategies.uplink.open_reply``
  (before: it decoded the stream, then compared the result with the model).

"Before" is the code at commit ``720d7ea`` (``--before-rev``), checked out in a temporary git
worktree (``--before-path``, removed afterwards unless it existed) and run in a subprocess with
``PYTHONPATH`` pointing at it; its ``decode()`` has no ``expect`` nor memory budget, and it knows
neither the float modes nor the zstd flag. Every measurement runs in a subprocess capped by
``RLIMIT_AS`` (``--memory-cap-gb``), after a warm-up that loads the numba kernels, so a decoder that
tries to allocate more fails with ``MemoryError`` instead of taking the machine down.

Streams (all carry the binding fingerprint the server expects, so they reach the decoder):

- ``huge-24k`` / ``huge-131k``: one float32 tensor of ``(P + 16) * 2**14`` elements -- the most
  FORMAT.md's elements-per-payload-byte bound allows -- for a ``P``-byte payload of 0xFF bytes
  (``P`` = 24,000; 131,056 gives 2**31 elements): a context-coded zero costs ~1/709 bit, so the old
  decoder really decodes ~5,700 elements per payload byte;
- ``schema-huge``: the model's table with ``fc1.weight`` declared 96 x 4,098,730 (same 24 KB
  payload), the other tensors an honest update;
- ``schema-transposed``: an honest update with ``fc1.weight`` coded as 1024 x 96;
- ``honest``: an honest update (default step policy);
- ``zstd-lie``: the model as raw + zstd, ``fc1.weight``'s frame declaring 2**40 bytes;
- ``zstd-sparse-47M``: one float32 tensor of 47,000,000 elements, sparse + zstd with every position
  kept (k = n, all zero): 7 KB that decompress to 235 MB, within the default limits and budget;
- ``zstd-sparse-model``: the same for every tensor of the model (a valid all-zero update);
- ``zstd-sparse-47M-f64`` / ``zstd-ternary-47M-f64``: 47,000,000 float64 elements, sparse (k = n)
  or ternary (k = n, Golomb parameter 0) + zstd, all zero: valid, 376 MB of output;
- ``zstd-6x64MB-two-frames``: six raw float32 tensors of 16 Mi elements, each a 64 MB zero zstd
  frame, the last payload two such frames (a payload must be one frame).

Targets checked: a hostile upload (``huge-24k`` and the other hostile streams up to 24 KB) must cost
the server < 50 MB and < 0.1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NONCE = bytes(range(16))
PAYLOAD_24K = 24_000
PAYLOAD_2_31 = (1 << 31 >> 14) - 16  # 131,056 bytes: (P + 16) << 14 == 2**31
TARGET_MB, TARGET_S = 50, 0.1


# ---------------------------------------------------------------------------------------------------
# Building the streams (current code)
# ---------------------------------------------------------------------------------------------------


def build_streams() -> dict:
    """The model, its binding fingerprint and the streams, as plain data for the subprocesses."""
    import numpy as np

    import nnc_fl
    from experiments.fuzz import RawEntry, RawStream, _zero_frame, parse, varint
    from experiments.models import get_weights, make_model
    from nnc_fl import bitstream as bs
    from nnc_fl import protocol
    from nnc_fl.codecs import NNCCodec

    weights = dict(get_weights(make_model("cnn", num_classes=10)))
    binding = protocol.binding(nnc_fl.fingerprint(weights), NONCE)
    rng = np.random.default_rng(9)
    delta = {k: (rng.laplace(size=v.shape) * 0.003).astype(v.dtype) for k, v in weights.items()}
    codec = NNCCodec()
    honest = codec.encode(delta, fingerprint=binding)

    def quant_entry(name: bytes, dims: list[int], payload: bytes) -> RawEntry:
        return RawEntry(name, 11, dims, bs.MODE_QUANT, step=np.float32(1e-3).tobytes(), tools=0, payload=payload)

    def one(dims: list[int], payload: bytes) -> bytes:
        return RawStream([quant_entry(b"fc1.weight", dims, payload)], binding, False).serialise()

    streams = {}
    streams["huge-24k"] = one([(PAYLOAD_24K + 16) << 14], b"\xff" * PAYLOAD_24K)
    streams["huge-131k"] = one([(PAYLOAD_2_31 + 16) << 14], b"\xff" * PAYLOAD_2_31)
    s = parse(honest)
    fc1 = next(e for e in s.entries if e.name == b"fc1.weight")
    cols = ((PAYLOAD_24K + 16) << 14) // 96
    fc1.dims, fc1.payload, fc1.mode, fc1.step, fc1.tools = [96, cols], b"\xff" * PAYLOAD_24K, bs.MODE_QUANT, \
        np.float32(1e-3).tobytes(), 0
    streams["schema-huge"] = s.serialise()
    transposed = {k: (v.reshape(v.shape[::-1]) if k == "fc1.weight" else v) for k, v in delta.items()}
    streams["schema-transposed"] = codec.encode(transposed, fingerprint=binding)
    streams["honest"] = honest
    raw = [RawEntry(k.encode(), 11, list(v.shape), bs.MODE_RAW, payload=_zero_frame(b"", v.size * 4))
           for k, v in weights.items()]
    lie = next(e for e in raw if e.name == b"fc1.weight")
    lie.payload = b"\x28\xb5\x2f\xfd\xe0" + (1 << 40).to_bytes(8, "little") + (1 | (8 << 3)).to_bytes(3, "little") \
        + bytes(8)
    streams["zstd-lie"] = RawStream(raw, binding, True).serialise()
    n = 47_000_000
    bomb = RawEntry(b"fc1.weight", 11, [n], bs.MODE_SPARSE, payload=_zero_frame(varint(n), 5 * n))
    streams["zstd-sparse-47M"] = RawStream([bomb], binding, True).serialise()
    sparse = [RawEntry(k.encode(), 11, list(v.shape), bs.MODE_SPARSE, payload=_zero_frame(varint(v.size), 5 * v.size))
              for k, v in weights.items()]
    streams["zstd-sparse-model"] = RawStream(sparse, binding, True).serialise()
    bomb64 = RawEntry(b"fc1.weight", 12, [n], bs.MODE_SPARSE, payload=_zero_frame(varint(n), 5 * n))
    streams["zstd-sparse-47M-f64"] = RawStream([bomb64], binding, True).serialise()
    ternary = RawEntry(b"fc1.weight", 12, [n], bs.MODE_TERNARY,
                       payload=_zero_frame(varint(n) + b"\x00" + np.float32(0.01).tobytes(), 2 * ((n + 7) // 8)))
    streams["zstd-ternary-47M-f64"] = RawStream([ternary], binding, True).serialise()
    m = 16 << 20  # 64 MB plain per frame
    frames = [RawEntry(f"t{i}".encode(), 11, [m], bs.MODE_RAW, payload=_zero_frame(b"", 4 * m)) for i in range(6)]
    frames[-1].payload = _zero_frame(b"", 4 * m) + _zero_frame(b"", 4 * m)  # two frames in one payload
    streams["zstd-6x64MB-two-frames"] = RawStream(frames, binding, True).serialise()
    for name in ("honest", "zstd-sparse-model"):
        nnc_fl.decode(streams[name], expect=weights)  # the valid ones are valid
    warm = [honest, codec.encode({"x": np.ones((3, 4), np.float32)}),
            bs.write_stream([bs.TensorRecord("t", np.dtype("<f4"), (8,), bs.MODE_SPARSE, payload=varint(0))],
                            zstd_level=1)]
    return {"weights": weights, "nonce": NONCE, "streams": streams, "warm": warm}


# ---------------------------------------------------------------------------------------------------
# Measuring, in a subprocess that imports whichever nnc_fl PYTHONPATH points at
# ---------------------------------------------------------------------------------------------------


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


def _outcome(value) -> str:
    if hasattr(value, "kind") and hasattr(value, "rejection"):  # an Opened reply (either version)
        rejection = value.rejection
        return value.kind + (f" ({rejection.code}: {rejection.reason[:70]})" if rejection is not None else "")
    return "ok"


def _run(fn) -> tuple[str, float]:
    t0 = time.perf_counter()
    try:
        outcome = _outcome(fn())
    except MemoryError:
        outcome = "MemoryError"
    except Exception as exc:  # noqa: BLE001 - a benchmark of hostile input reports what it got
        outcome = f"{type(exc).__name__}: {str(exc)[:90]}"
    return outcome, time.perf_counter() - t0


def measure(fn, heavy_after: float = 3.0) -> dict:
    """Outcome, time (median of up to 5 runs for fast calls), peak RSS growth, tracemalloc peak."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak-RSS mark
        base = _status_mb("VmRSS:")
    except OSError:
        base = float("nan")
    outcome, seconds = _run(fn)
    growth = _status_mb("VmHWM:") - base
    times = [seconds]
    while seconds < 0.5 and len(times) < 5:
        times.append(_run(fn)[1])
    traced = None
    if seconds < heavy_after:
        tracemalloc.start()
        _run(fn)
        traced = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return {"outcome": outcome, "seconds": sorted(times)[len(times) // 2], "rss_mb": round(growth, 1),
            "traced_mb": None if traced is None else round(traced, 2)}


def _server_path(weights, nonce):
    """``(make_reply(data), open(msg))`` for this version's server."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from nnc_fl import protocol
    from nnc_fl.codecs import NNCCodec

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    codec = NNCCodec()
    import strategies.uplink as uplink

    if hasattr(uplink, "UplinkChecks"):  # after
        from strategies.server_model import ServerModel
        from strategies.settings import ValidationSettings

        model = ServerModel()
        checks = uplink.UplinkChecks(ValidationSettings(), "num-examples")

        def open_(msg):
            return checks.open(msg, model, codec, nonce)
    else:  # before (720d7ea)
        from strategies.model_state import ServerModel

        model = ServerModel()

        def open_(msg):
            return uplink.open_reply(msg, model, codec, None)

    model.adopt(weights)
    train = Message(content=RecordDict(), dst_node_id=7, message_type="train", group_id="1")

    def make_reply(data: bytes):
        record = protocol.Uplink(kind=protocol.UPDATE, version=model.version, fingerprint=model.fingerprint,
                                 codec=codec.name)
        content = RecordDict({
            "arrays": ArrayRecord({protocol.PAYLOAD_KEY: Array(**protocol.pack_payload(data))}),
            protocol.RECORD_KEY: ConfigRecord(record.to_config()),
            "metrics": MetricRecord({"num-examples": 64}),
        })
        return Message(content, reply_to=train)

    return make_reply, open_


def measure_main(spec_path: str, names: list[str]) -> None:
    """Subprocess entry: measure ``names`` of the streams in ``spec_path``; JSON lines on stdout."""
    import inspect

    import nnc_fl

    spec = pickle.loads(Path(spec_path).read_bytes())
    weights, streams = spec["weights"], spec["streams"]
    has_expect = "expect" in inspect.signature(nnc_fl.decode).parameters
    make_reply, open_ = _server_path(weights, spec["nonce"])
    for data in spec["warm"]:  # load the numba kernels, import zstandard, build the Flower objects
        for _ in range(2):
            _run(lambda data=data: nnc_fl.decode(data))
            _run(lambda data=data: open_(make_reply(data)))
    for name in names:
        data = streams[name]
        rows = {"decode": measure(lambda data=data: nnc_fl.decode(data))}
        if has_expect:
            rows["decode(expect)"] = measure(lambda data=data: nnc_fl.decode(data, expect=weights))
        msg = make_reply(data)
        rows["server"] = measure(lambda msg=msg: open_(msg))
        print(json.dumps({"stream": name, "bytes": len(data), "rows": rows}), flush=True)


def _subprocess(pythonpath: Path, spec: Path, name: str, cap_gb: float, timeout: float) -> dict:
    code = (
        "import importlib.util, sys; "
        f"s = importlib.util.spec_from_file_location('_bench_runner', {str(Path(__file__).resolve())!r}); "
        "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
        f"m.measure_main({str(spec)!r}, [{name!r}])"
    )
    cap = int(cap_gb * 2**30)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    # a fixed mmap threshold: glibc then maps every large array afresh, so the peak RSS sees it even
    # after the warm-up freed memory (the dynamic threshold would serve it from already resident heap)
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "FLWR_TELEMETRY_ENABLED": "0",
           "MALLOC_MMAP_THRESHOLD_": "131072"}
    t0 = time.time()
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=spec.parent, capture_output=True, text=True,
                             timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return {"error": f"killed after {timeout:g} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        return {"error": f"exit {out.returncode} after {time.time() - t0:.1f} s: {out.stderr.strip()[-300:]}"}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def _cell(row: dict | None, nbytes: int) -> list[str]:
    if row is None:
        return ["n/a", "", "", "", ""]
    traced = "" if row["traced_mb"] is None else f"{row['traced_mb']:.2f}"
    return [row["outcome"][:58], f"{row['seconds'] * 1e3:.2f}", f"{row['seconds'] / nbytes * 1e6:.3f}",
            f"{row['rss_mb']:.1f}", traced]


def table(results: dict) -> str:
    head = ["stream", "bytes", "path", "before: outcome", "ms", "µs/B", "RSS MB", "tm MB",
            "after: outcome", "ms", "µs/B", "RSS MB", "tm MB"]
    rows = []
    for name, res in results.items():
        after, before = res.get("after", {}), res.get("before", {})
        nbytes = after.get("bytes") or before.get("bytes") or 1
        for path in ("decode", "decode(expect)", "server"):
            b = before.get("rows", {}).get(path) if "rows" in before else None
            a = after.get("rows", {}).get(path) if "rows" in after else None
            bc = _cell(b, nbytes) if "error" not in before else [before["error"][:58], "", "", "", ""]
            ac = _cell(a, nbytes) if "error" not in after else [after["error"][:58], "", "", "", ""]
            rows.append([name, str(nbytes), path, *bc, *ac])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), "-+-".join("-" * w for w in widths)] + [fmt.format(*r) for r in rows])


def targets(results: dict) -> list[str]:
    lines = []
    for name, res in results.items():
        if name == "honest" or "rows" not in res.get("after", {}):
            continue
        row = res["after"]["rows"]["server"]
        mb = max(row["rss_mb"], row["traced_mb"] or 0.0)
        ok = mb < TARGET_MB and row["seconds"] < TARGET_S
        lines.append(f"{'PASS' if ok else 'FAIL'}  server path, {name} ({res['after']['bytes']} bytes): "
                     f"{row['seconds'] * 1e3:.2f} ms, {mb:.1f} MB (target < {TARGET_S * 1e3:.0f} ms, < {TARGET_MB} MB)"
                     f" -> {row['outcome'][:70]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.bench_decode_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--before-rev", default="720d7ea")
    p.add_argument("--before-path", default="/tmp/before-720")
    p.add_argument("--skip-before", action="store_true")
    p.add_argument("--memory-cap-gb", type=float, default=12.0, help="RLIMIT_AS of each measuring subprocess")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per measuring subprocess")
    p.add_argument("--only", nargs="*", help="measure only these streams")
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args(argv)
    spec_data = build_streams()
    names = args.only or list(spec_data["streams"])
    before = Path(args.before_path)
    made_worktree = False
    if not args.skip_before and not before.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(before), args.before_rev],
                       check=True, capture_output=True)
        made_worktree = True
    results: dict = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            spec = Path(tmp) / "spec.pkl"
            spec.write_bytes(pickle.dumps(spec_data))
            for name in names:
                res = results[name] = {}
                res["after"] = _subprocess(REPO, spec, name, args.memory_cap_gb, args.timeout)
                if not args.skip_before:
                    res["before"] = _subprocess(before, spec, name, args.memory_cap_gb, args.timeout)
                print(f"measured {name}", file=sys.stderr, flush=True)
    finally:
        if made_worktree:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(before)], check=False)
    print(f"decode cost of hostile streams, UC10 model (151,466 parameters); before = {args.before_rev}, after = "
          "this tree; ms = median of up to 5 runs (one if > 0.5 s); µs/B = time per stream byte; RSS MB = peak "
          "RSS growth; tm MB = tracemalloc peak (blank: the call took > 3 s, not repeated under tracemalloc); "
          f"each stream measured in a fresh subprocess capped at {args.memory_cap_gb:g} GB of address space")
    print(table(results))
    print()
    print("\n".join(targets(results)))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
