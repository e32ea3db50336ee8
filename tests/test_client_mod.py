"""nnc_mod called directly with hand-built server messages and a fake ``call_next``."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from clients import nnc_mod
from clients.state import NodeState
from nnc_fl import protocol
from nnc_fl.codecs import make_codec
from nnc_fl.fingerprint import fingerprint
from nnc_fl.updates import model_delta

STEP = 0.01
NONCE = bytes(range(16))
G1 = {"w": np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6), "n": np.array(3, np.int64)}


def _record(tensors):
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in tensors.items()})


def _numpy(record):
    return {k: a.numpy() for k, a in record.items()}


def _message(kind, model, version, *, base=None, base_version=-1, codec="nnc", mtype="train", payload=None,
             residual_max_age=-1, train_from_residual=False):
    c = make_codec("nnc", step=STEP)
    if payload is None:
        if kind == protocol.KEYFRAME:
            payload = c.encode(model, exact=True)
        elif kind == protocol.DELTA:
            payload = c.encode(model_delta(model, base), exact=True)
        else:
            payload = b""
    fp = fingerprint(model)
    down = protocol.Downlink(
        kind=kind,
        version=version,
        fingerprint=fp,
        base_version=base_version if kind == protocol.DELTA else (version if kind == protocol.SAME else -1),
        base_fingerprint=fingerprint(base)
        if kind == protocol.DELTA
        else (fp if kind == protocol.SAME else b""),
        payload_codec="nnc",
        payload_codec_params="{}",
        codec=codec,
        codec_params=protocol.encode_params({"step": STEP}) if codec == "nnc" else "{}",
        arrays_key="arrays",
        server_round=1,
        nonce=NONCE,
        tensors=len(model),
        elements=sum(np.asarray(v).size for v in model.values()),
        residual_max_age=residual_max_age,
        train_from_residual=train_from_residual,
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord({protocol.PAYLOAD_KEY: Array(**protocol.pack_payload(payload))}),
            "config": ConfigRecord({"lr": 0.1}),
            protocol.RECORD_KEY: ConfigRecord(down.to_config()),
        }
    )
    return Message(content=content, dst_node_id=7, message_type=mtype)


class User:
    """A fake user function: records what it saw, returns ``model + shift``."""

    def __init__(self, shift=0.0137, keys=None, error=False):
        self.seen, self.shift, self.keys, self.error = [], shift, keys, error

    def __call__(self, msg: Message, context: Context) -> Message:
        self.seen.append(msg)
        if self.error:
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="boom"), reply_to=msg)
        if msg.metadata.message_type == "evaluate":
            return Message(
                RecordDict({"metrics": MetricRecord({"num-examples": 5, "loss": 1.0})}), reply_to=msg
            )
        model = _numpy(msg.content["arrays"])
        trained = {
            k: (v + self.shift).astype(v.dtype) if v.dtype.kind == "f" else v + 1 for k, v in model.items()
        }
        if self.keys is not None:
            trained = {k: trained[k] for k in self.keys}
        content = RecordDict({"arrays": _record(trained), "metrics": MetricRecord({"num-examples": 5})})
        return Message(content, reply_to=msg)


@pytest.fixture
def context():
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def _decode_reply(reply):
    up = protocol.Uplink.from_config(reply.content[protocol.RECORD_KEY])
    return up, make_codec("nnc").decode(protocol.payload_of(reply.content["arrays"]))


def test_messages_without_protocol_record_pass_through_with_one_warning(context, caplog):
    msg = Message(RecordDict({"arrays": _record(G1)}), dst_node_id=7, message_type="train")
    user = User()
    reply = nnc_mod(msg, context, user)
    assert user.seen[0] is msg and protocol.RECORD_KEY not in reply.content
    assert not any(k.startswith("nnc-fl.") and k != "nnc-fl.warned-plain" for k in context.state)
    nnc_mod(Message(RecordDict({"arrays": _record(G1)}), dst_node_id=7, message_type="train"), context, User())
    warnings = [r for r in caplog.records if "uncompressed model" in r.getMessage()]
    assert len(warnings) == 1 and "CompressedStrategy" in warnings[0].getMessage()


def test_keyframe_gives_the_user_the_plain_model_and_codes_the_reply(context):
    user = User()
    reply = nnc_mod(_message(protocol.KEYFRAME, G1, 1), context, user)

    seen = user.seen[0].content
    assert protocol.RECORD_KEY not in seen and seen["config"]["lr"] == 0.1
    plain = _numpy(seen["arrays"])
    assert fingerprint(plain) == fingerprint(G1)  # bit-exact, dtypes and order kept
    up, delta = _decode_reply(reply)
    assert (up.kind, up.version, up.fingerprint, up.codec) == (protocol.UPDATE, 1, fingerprint(G1), "nnc")
    assert reply.content["arrays"][protocol.PAYLOAD_KEY].stype == protocol.STYPE
    assert reply.content["metrics"]["num-examples"] == 5
    assert delta["n"] == 1  # the integer buffer's increment, exact
    np.testing.assert_allclose(delta["w"], 0.0137, atol=STEP / 2 + 1e-7)
    state = NodeState(context.state)
    assert (state.version, state.fingerprint) == (1, fingerprint(G1))
    np.testing.assert_allclose(state.residual["w"], 0.0137 - delta["w"], atol=1e-6)  # error feedback
    assert "n" not in state.residual


def test_error_feedback_carries_the_residual_into_the_next_update(context):
    nnc_mod(_message(protocol.KEYFRAME, G1, 1), context, User())
    residual = NodeState(context.state).residual["w"].copy()
    g2 = {"w": (G1["w"] + 0.05).astype(np.float32), "n": np.array(4, np.int64)}
    reply = nnc_mod(_message(protocol.DELTA, g2, 2, base=G1, base_version=1), context, User(shift=0.02))
    _, delta = _decode_reply(reply)
    new_residual = NodeState(context.state).residual["w"]
    np.testing.assert_allclose(delta["w"] + new_residual, 0.02 + residual, atol=1e-6)
    assert np.max(np.abs(new_residual)) <= STEP / 2 + 1e-6


@pytest.mark.parametrize(("max_age", "kept"), [(-1, True), (3, True), (2, False), (0, False)])
def test_a_residual_older_than_the_servers_limit_is_dropped(context, max_age, kept):
    nnc_mod(_message(protocol.KEYFRAME, G1, 1), context, User())  # residual made against version 1
    residual = NodeState(context.state).residual["w"].copy()
    assert NodeState(context.state).residual_version == 1 and np.abs(residual).max() > 0
    g4 = {"w": (G1["w"] + 0.05).astype(np.float32), "n": np.array(4, np.int64)}
    message = _message(protocol.KEYFRAME, g4, 4, residual_max_age=max_age)  # three versions later
    _, delta = _decode_reply(nnc_mod(message, context, User(shift=0.02)))
    state = NodeState(context.state)
    carried = residual if kept else 0.0
    np.testing.assert_allclose(delta["w"] + state.residual["w"], 0.02 + carried, atol=1e-6)
    assert state.residual_version == 4


@pytest.mark.parametrize(("max_age", "kept"), [(-1, True), (2, False)])
def test_training_from_the_residual_starts_there_and_adds_it_once(context, max_age, kept):
    nnc_mod(_message(protocol.KEYFRAME, G1, 1), context, User())  # residual made against version 1
    residual = NodeState(context.state).residual["w"].copy()
    assert np.abs(residual).max() > 0
    g4 = {"w": (G1["w"] + 0.05).astype(np.float32), "n": np.array(4, np.int64)}
    user = User(shift=0.02)
    message = _message(protocol.KEYFRAME, g4, 4, residual_max_age=max_age, train_from_residual=True)
    _, delta = _decode_reply(nnc_mod(message, context, user))
    carried = residual if kept else 0.0
    seen = _numpy(user.seen[0].content["arrays"])
    np.testing.assert_array_equal(seen["w"], (g4["w"] + carried).astype(np.float32))  # the start: G_v + residual
    assert seen["n"] == 4  # integer tensors carry no residual
    state = NodeState(context.state)
    # what the node codes is trained - G_v, which holds the residual once (not twice)
    np.testing.assert_allclose(delta["w"] + state.residual["w"], 0.02 + carried, atol=1e-6)
    assert state.residual_version == 4 and np.max(np.abs(state.residual["w"])) <= STEP / 2 + 1e-6


def test_evaluation_never_starts_from_the_residual(context):
    nnc_mod(_message(protocol.KEYFRAME, G1, 1), context, User())
    user = User()
    nnc_mod(_message(protocol.SAME, G1, 1, mtype="evaluate", train_from_residual=True), context, user)
    assert fingerprint(_numpy(user.seen[0].content["arrays"])) == fingerprint(G1)


def test_same_reuses_the_stored_model(context):
    nnc_mod(_message(protocol.KEYFRAME, G1, 1, mtype="evaluate"), context, User())
    user = User()
    nnc_mod(_message(protocol.SAME, G1, 1), context, user)
    assert fingerprint(_numpy(user.seen[0].content["arrays"])) == fingerprint(G1)


@pytest.mark.parametrize(
    "message",
    [
        lambda: _message(protocol.DELTA, G1, 2, base={**G1, "n": np.array(0, np.int64)}, base_version=1),
        lambda: _message(protocol.SAME, G1, 1),
        lambda: _message(
            protocol.KEYFRAME, G1, 1, payload=make_codec("nnc").encode({**G1, "n": np.array(9)}, exact=True)
        ),
        lambda: _message(protocol.KEYFRAME, G1, 1, payload=b"not a stream"),
    ],
    ids=["delta-without-base", "same-without-model", "fingerprint-mismatch", "corrupt-keyframe"],
)
def test_node_that_cannot_rebuild_the_model_asks_for_a_keyframe(message, context):
    user = User()
    reply = nnc_mod(message(), context, user)
    assert not user.seen
    up = protocol.Uplink.from_config(reply.content[protocol.RECORD_KEY])
    assert up.kind == protocol.RESYNC and up.reason
    assert list(reply.content.keys()) == [protocol.RECORD_KEY]


def test_evaluate_reply_is_acknowledged(context):
    reply = nnc_mod(_message(protocol.KEYFRAME, G1, 1, mtype="evaluate"), context, User())
    up = protocol.Uplink.from_config(reply.content[protocol.RECORD_KEY])
    assert (up.kind, up.version, up.fingerprint) == (protocol.ACK, 1, fingerprint(G1))
    assert reply.content["metrics"]["loss"] == 1.0


def test_user_errors_and_bad_replies(context):
    reply = nnc_mod(_message(protocol.KEYFRAME, G1, 1), context, User(error=True))
    assert reply.has_error() and reply.error.reason == "boom"
    reply = nnc_mod(_message(protocol.KEYFRAME, G1, 1), context, User(keys=["w"]))
    assert reply.has_error() and reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert "names differ" in reply.error.reason
    reply = nnc_mod(_message(protocol.KEYFRAME, G1, 1, codec="no-such-codec"), context, User())
    assert reply.has_error() and "no-such-codec" in reply.error.reason


def test_forgetting_the_mod_fails_loudly(context):
    msg = _message(protocol.KEYFRAME, G1, 1)
    with pytest.raises(TypeError, match="nnc-fl/1"):
        User()(msg, context)


@pytest.mark.parametrize("temporal", [False, True])
def test_a_node_keeps_the_last_increment_only_for_a_codec_with_temporal_contexts(temporal):
    # the decoded increment is the next temporal stream's reference: a model-sized record in the
    # node's state, kept after a chain of increments and only where the codec can use it
    state = RecordDict()
    node = NodeState(state)
    node.hold(1, fingerprint(G1), G1)
    g2 = {"w": (G1["w"] + np.float32(0.25)).astype(np.float32), "n": np.array(4, np.int64)}
    payload = make_codec("nnc", step=STEP).encode(model_delta(g2, G1), exact=True)
    down = protocol.Downlink(
        kind=protocol.DELTA, version=2, fingerprint=fingerprint(g2), base_version=1, base_fingerprint=fingerprint(G1),
        payload_codec="nnc", payload_codec_params=protocol.encode_params({"temporal": True}) if temporal else "{}",
        codec="nnc", codec_params="{}", arrays_key="arrays", server_round=2, nonce=NONCE, tensors=2, elements=25,
    )
    content = RecordDict({"arrays": ArrayRecord({protocol.PAYLOAD_KEY: Array(**protocol.pack_payload(payload))})})
    model, _ = node.receive(down, content)
    assert fingerprint(model) == fingerprint(g2)
    reloaded = NodeState(state)  # as the next message reads it
    assert ("nnc-fl.increment" in state) == temporal
    if temporal:
        reference = reloaded.temporal_reference()
        assert reference is not None and np.array_equal(reference["w"], model_delta(g2, G1)["w"])
    else:
        assert reloaded.temporal_reference() is None
