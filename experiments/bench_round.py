"""Plugin time of one federated round on a ResNet-18-sized model (11.7 M parameters, 46.8 MB fp32).

Run ``python -m experiments.bench_round`` (or ``nnc-fl bench --round``). It builds a model with
the exact tensor shapes of torchvision's ResNet-18 ``state_dict`` (BatchNorm buffers included;
random weights, no torchvision needed), makes ``--clients`` trained models from it (weights plus a
Laplace update of ~1 % of their RMS, a typical FedAvg delta), and times, on this machine, each step
the plugin adds to a round at the default setting (:data:`strategies.settings.DEFAULT_PARAMS`):

- client: the node's ``send`` (delta, error feedback, encode with the encoder's reconstruction,
  residual);
- server: opening every reply (binding check, schema-first decode, validation), one by one and
  with the cohort decoded in parallel threads (numba kernels release the GIL);
- server: coding the global increment (``ServerModel.advance``: encode, apply, grid check,
  fingerprint) and a keyframe;
- the model fingerprint (SHA-256).

Speeds are MB/s of fp32 model bytes; best of ``--repeat`` after a warm-up. Plugin time per update
= client encode + server open + increment encode / clients.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from nnc_fl.protocol import CodecSpec


def resnet18_shapes(num_classes: int = 1000) -> OrderedDict[str, tuple[tuple[int, ...], str]]:
    """Names, shapes and dtypes of torchvision's ResNet-18 ``state_dict``."""
    shapes: OrderedDict[str, tuple[tuple[int, ...], str]] = OrderedDict()

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = ((c,), "float32")
        shapes[f"{prefix}.num_batches_tracked"] = ((), "int64")

    shapes["conv1.weight"] = ((64, 3, 7, 7), "float32")
    bn("bn1", 64)
    cin = 64
    for layer, cout in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            first_in = cin if block == 0 else cout
            shapes[f"{p}.conv1.weight"] = ((cout, first_in, 3, 3), "float32")
            bn(f"{p}.bn1", cout)
            shapes[f"{p}.conv2.weight"] = ((cout, cout, 3, 3), "float32")
            bn(f"{p}.bn2", cout)
            if block == 0 and cin != cout:
                shapes[f"{p}.downsample.0.weight"] = ((cout, cin, 1, 1), "float32")
                bn(f"{p}.downsample.1", cout)
        cin = cout
    shapes["fc.weight"] = ((num_classes, 512), "float32")
    shapes["fc.bias"] = ((num_classes,), "float32")
    return shapes


def make_model(seed: int = 0) -> dict[str, np.ndarray]:
    """A ResNet-18-shaped model with He-scaled random weights and plausible BatchNorm buffers."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (shape, dtype) in resnet18_shapes().items():
        if dtype == "int64":
            out[name] = np.array(0, np.int64)
        elif name.endswith("running_var") or (name.endswith(".weight") and len(shape) == 1):
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif len(shape) == 1:
            out[name] = (0.01 * rng.standard_normal(shape)).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            out[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return out


def trained(model: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """``model`` after a pretend local epoch: every float tensor moved by ~1 % of its RMS."""
    rng = np.random.default_rng(1000 + seed)
    out = {}
    for name, v in model.items():
        if v.dtype.kind == "f":
            rms = float(np.sqrt(np.mean(v.astype(np.float64) ** 2))) or 1.0
            out[name] = (v + rng.laplace(scale=0.01 * rms, size=v.shape)).astype(np.float32)
        else:
            out[name] = v + 10
    return out


def _best(fn, repeat: int, setup=None) -> float:
    """Best wall time of ``fn(setup())`` (``fn()`` without ``setup``) over ``repeat`` runs after a
    warm-up run (numba kernels loaded, caches filled); ``setup`` is not timed."""
    times = []
    for i in range(repeat + 1):
        args = () if setup is None else (setup(),)
        t0 = time.perf_counter()
        fn(*args)
        if i:
            times.append(time.perf_counter() - t0)
    return min(times)


def _number(text: str) -> float | bool | str:
    """A ``--param`` value: a number, a boolean, else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text)
    except ValueError:
        return text


def default_specs(overrides: dict[str, float | int | bool | str]) -> tuple[CodecSpec, CodecSpec]:
    """The codecs of the updates and of the global increment at the default setting, taken from
    ``CompressedStrategy(inner)`` itself (``spec_for`` / ``downlink_spec``: the increments without
    the uplink-only parameters), each with ``overrides`` over it."""
    from flwr.serverapp.strategy import FedAvg

    from strategies import CompressedStrategy

    strategy = CompressedStrategy(FedAvg())
    return strategy.spec_for(1).merged(overrides), strategy.downlink_spec(1).merged(overrides)


def main(argv: list[str] | None = None) -> int:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from clients.state import NodeState
    from nnc_fl import protocol
    from nnc_fl.fingerprint import fingerprint
    from nnc_fl.updates import cast_like
    from strategies.server_model import ServerModel
    from strategies.settings import DownlinkSettings, ValidationSettings
    from strategies.uplink import UplinkChecks

    ap = argparse.ArgumentParser(prog="nnc-fl bench --round", description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads decoding the cohort")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a codec parameter over the default setting (e.g. rd_lambda=0), for same-run comparisons")
    a = ap.parse_args(argv)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0

    model = make_model()
    mb = 4 * sum(v.size for v in model.values()) / 1e6
    spec, down = default_specs({k: _number(v) for k, v in (p.split("=", 1) for p in a.param)})
    server = ServerModel(DownlinkSettings())
    server.adopt(model, down)
    model = server.tensors
    nonce = bytes(16)
    codec = spec.make()
    clients = [trained(model, i) for i in range(a.clients)]
    print(f"ResNet-18-shaped model: {sum(v.size for v in model.values()):,} values, {mb:.1f} MB fp32, "
          f"{len(model)} tensors; codec {spec.name} {dict(spec.params)} (increments {dict(down.params)}); "
          f"{a.clients} clients; "
          f"{os.cpu_count()} cores")

    def node_state():
        node = NodeState(RecordDict())
        node.hold(server.version, server.fingerprint, model)
        return node

    def send_all():
        return [node_state().send(t, codec, nonce) for t in clients]

    coded = send_all()
    t_send = _best(send_all, a.repeat) / a.clients

    def reply(i: int) -> Message:
        up = protocol.Uplink(kind=protocol.UPDATE, version=server.version, fingerprint=server.fingerprint,
                             codec=codec.name)
        content = RecordDict({
            "arrays": ArrayRecord({protocol.PAYLOAD_KEY: Array(**protocol.pack_payload(coded[i].data))}),
            "metrics": MetricRecord({"num-examples": 100}),
            protocol.RECORD_KEY: ConfigRecord(up.to_config()),
        })
        msg = Message(content=content, dst_node_id=1, message_type="train")
        msg.metadata.__dict__["_src_node_id"] = 100 + i
        return msg

    checks = UplinkChecks(ValidationSettings(), "num-examples")

    def open_all(threads: int):
        replies = [reply(i) for i in range(a.clients)]
        opened = checks.open_all(replies, server, codec, {100 + i: nonce for i in range(a.clients)}, threads=threads)
        assert all(o.kind == "update" for o in opened), [o.rejection for o in opened]
        return opened

    t_open = _best(lambda: open_all(1), a.repeat) / a.clients
    t_open_par = _best(lambda: open_all(a.threads), a.repeat) / a.clients

    def review(opened):
        checks.review(opened, server)
        assert all(o.kind == "update" for o in opened), [o.rejection for o in opened]

    t_review = _best(review, a.repeat, setup=lambda: open_all(a.threads)) / a.clients
    target = cast_like({k: np.mean([c[k] for c in clients], axis=0) for k in model}, model)

    def adopted():
        s = ServerModel(DownlinkSettings())
        s.adopt(model, down)
        return s

    t_adv = _best(lambda s: s.advance(target, down), a.repeat, setup=adopted)
    t_key = _best(lambda: codec.encode(model, exact=True, grid=server.grid), a.repeat)
    t_fp = _best(lambda: fingerprint(model), a.repeat)
    sizes = [len(c.data) for c in coded]
    per_update = t_send + t_open_par + t_review + t_adv / a.clients
    rows = [
        ("client send (delta, encode, residual)", t_send),
        ("server open one reply (check, decode, validate)", t_open),
        (f"server open, cohort in {a.threads} threads (per reply)", t_open_par),
        ("server review (scale, direction, agreement, G + delta)", t_review),
        ("server increment (encode, apply, fingerprint)", t_adv),
        ("keyframe encode", t_key),
        ("fingerprint", t_fp),
    ]
    for label, t in rows:
        print(f"  {label:<52} {t:7.3f} s  {mb / t:7.0f} MB/s")
    print(f"  update size {np.mean(sizes) / 1e3:.0f} kB ({100 * np.mean(sizes) / (mb * 1e6):.2f} % of fp32)")
    print(f"plugin time per update (send + open + review + increment / clients): {per_update:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
