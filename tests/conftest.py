"""Shared fixtures for the Flower integration tests: an in-process grid, a stand-in codec, reply tools."""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
APP_DIR = Path(__file__).parent / "flower_app"
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.supercore.task_identity import TaskIdentity

from nnc_fl import FormatError, protocol
from nnc_fl import bitstream as bs
from nnc_fl.codecs import make_codec, register_codec, registered_codecs
from strategies.inprocess import InProcessGrid

# -- a stand-in codec: npz container, optional uniform quantiser, carries NaN -------------------------


class NpzCodec:
    """``np.savez_compressed`` of the tensors; floats rounded to ``step`` unless ``exact``."""

    name = "npz-test"

    def __init__(self, step: float | None = None) -> None:
        self.step = step

    def encode(self, tensors, *, fingerprint=None, exact=False, limits=None) -> bytes:
        arrays = {"__names__": np.array(list(tensors), dtype=np.str_)}
        if fingerprint is not None:
            arrays["__fingerprint__"] = np.frombuffer(fingerprint, np.uint8)
        for i, value in enumerate(tensors.values()):
            arr = np.asarray(value)
            if self.step and not exact and np.issubdtype(arr.dtype, np.floating):
                arr = (np.rint(arr / self.step) * self.step).astype(arr.dtype)
            arrays[f"t{i}"] = arr
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    def decode(self, data: bytes, *, expect=None, limits=None) -> dict[str, np.ndarray]:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                names = [str(n) for n in npz["__names__"]]
                return {n: npz[f"t{i}"] for i, n in enumerate(names)}
        except Exception as exc:
            raise FormatError(f"npz-test: {exc}") from exc

    def fingerprint_of(self, data: bytes) -> bytes | None:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                return npz["__fingerprint__"].tobytes() if "__fingerprint__" in npz.files else None
        except Exception as exc:
            raise FormatError(f"npz-test: {exc}") from exc

    def params(self):
        return {} if self.step is None else {"step": self.step}


if NpzCodec.name not in registered_codecs():
    register_codec(NpzCodec.name, NpzCodec)


# -- an in-process grid that routes messages to ClientApps with per-node Context ----------------------


ReplyHook = Callable[[Message], Message]


class LocalGrid(InProcessGrid):
    """The experiments' in-process grid (node ids 101..), plus what tests need: ``online`` limits
    which nodes exist, ``tamper[node_id]`` rewrites that node's train replies, ``drop`` loses them
    (after the node processed the message), ``sent`` logs every message."""

    def __init__(self, app, num_nodes: int) -> None:
        super().__init__(app, num_nodes, node_id_base=101)
        self.online = set(self.contexts)
        self.tamper: dict[int, ReplyHook] = {}
        self.drop: set[int] = set()
        self.sent: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.online)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            self.sent.append(msg)
            reply = self.deliver(msg)
            node = msg.metadata.dst_node_id
            train = msg.metadata.message_type == "train"
            if node in self.drop and train:
                continue
            if node in self.tamper and train and reply.has_content():
                reply = self.tamper[node](reply)
            replies.append(reply)
        return replies

    def node_model(self, node: int) -> tuple[int | None, bytes | None]:
        """(version, fingerprint) the node's nnc_mod state says it holds."""
        meta = self.contexts[node].state.get("nnc-fl.meta")
        if meta is None:
            return None, None
        return meta["version"], meta["fingerprint"]


@pytest.fixture(autouse=True)
def _task_identity():
    """Messages built outside a Flower runtime need a run/node/task identity."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    yield


@pytest.fixture
def client_app():
    from nncfl_testapp.client_app import app

    return app


@pytest.fixture
def make_grid(client_app):
    return lambda n=4: LocalGrid(client_app, n)


@pytest.fixture
def initial_arrays():
    from nncfl_testapp.task import initial_model

    return ArrayRecord({k: Array(v) for k, v in initial_model().items()})


# -- tools to forge hostile replies ---------------------------------------------------------------


def reply_payload(reply: Message) -> tuple[str, bytes]:
    """(ArrayRecord key, payload bytes) of a coded train reply."""
    key = next(iter(reply.content.array_records))
    return key, protocol.payload_of(reply.content[key])


def set_payload(reply: Message, data: bytes) -> Message:
    key, _ = reply_payload(reply)
    reply.content[key] = ArrayRecord({protocol.PAYLOAD_KEY: Array(**protocol.pack_payload(data))})
    return reply


def recode(
    reply: Message,
    fn: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
    codec: str = "nnc",
    fingerprint: bytes | None = None,
    **params,
) -> Message:
    """Decode the reply's update, transform it with ``fn`` and re-encode it (a forging client).

    A client knows the model and round it answers: the forged stream carries their binding, unless
    ``fingerprint`` says otherwise."""
    c = make_codec(codec, **params)
    _, data = reply_payload(reply)
    binding = fingerprint if fingerprint is not None else c.fingerprint_of(data)
    return set_payload(reply, c.encode(dict(fn(c.decode(data))), fingerprint=binding))


def forge_raw(reply: Message, value: float) -> Message:
    """A hand-made stream (properly bound to its round) whose float tensors all hold ``value`` in
    raw mode -- NaN or a huge finite number, which the nnc encoder itself refuses to write."""
    c = make_codec("nnc")
    _, data = reply_payload(reply)
    records = []
    for name, v in c.decode(data).items():
        if v.dtype.kind == "f":
            v = np.full(v.shape, value, v.dtype)
        payload = v.astype(v.dtype.newbyteorder("<")).tobytes()
        records.append(bs.TensorRecord(name, v.dtype, v.shape, bs.MODE_RAW, payload=payload))
    return set_payload(reply, bs.write_stream(records, c.fingerprint_of(data)))


def set_uplink(reply: Message, **changes) -> Message:
    record = dict(reply.content[protocol.RECORD_KEY])
    record.update(changes)
    reply.content[protocol.RECORD_KEY] = ConfigRecord(record)
    return reply


# -- running a federation in-process and checking the bit-exact invariant -----------------------------


def node_base(grid: LocalGrid, node: int) -> dict[str, np.ndarray]:
    from clients.state import NodeState

    return NodeState(grid.contexts[node].state).base


def run_federation(strategy, grid: LocalGrid, initial_arrays, rounds: int, on_round=None):
    """``strategy.start`` on ``grid``; after every round check that every node holding version v
    holds exactly the server's G_v (bits, dtypes, order). Returns (result, history by version)."""
    from nnc_fl.fingerprint import fingerprint

    history: dict[int, dict[str, np.ndarray]] = {}
    from strategies.server_model import ServerModel

    # G_1: initial_arrays as the server adopts them (rounded onto the keyframe grid, if any)
    adopted = ServerModel(strategy.downlink)
    adopted.adopt({k: a.numpy() for k, a in initial_arrays.items()}, strategy.downlink_spec(1))
    first_model = adopted.tensors

    def after_round(server_round, arrays):
        if server_round == 0:
            return None
        model = strategy.model
        history.setdefault(1, first_model)
        history[model.version] = {k: v.copy() for k, v in model.tensors.items()}
        plain = {k: a.numpy() for k, a in arrays.items()}
        assert fingerprint(plain) == model.fingerprint  # start() holds G_v, not the raw aggregate
        for node in grid.contexts:
            version, fp = grid.node_model(node)
            if version is None:
                continue
            assert version in history, (node, version)
            expected = history[version]
            base = node_base(grid, node)
            assert list(base) == list(expected)
            for name, value in expected.items():
                assert base[name].dtype == value.dtype and np.array_equal(base[name], value), (node, name)
            assert fp == fingerprint(expected)
        if on_round is not None:
            on_round(server_round)
        return None

    result = strategy.start(
        grid=grid, initial_arrays=initial_arrays, num_rounds=rounds, evaluate_fn=after_round
    )
    return result, history


def summary_text(strategy, caplog) -> str:
    """What ``strategy.summary()`` logs at INFO on Flower's logger (the CLI tests quiet it)."""
    logger = logging.getLogger("flwr")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="flwr"):
            strategy.summary()
    finally:
        logger.removeHandler(caplog.handler)
    return caplog.text
