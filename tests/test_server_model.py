"""strategies.server_model: the downlink decision, in one place."""

from __future__ import annotations

import numpy as np
import pytest

from nnc_fl import inspect
from nnc_fl import protocol as p
from nnc_fl.fingerprint import fingerprint
from nnc_fl.protocol import CodecSpec
from nnc_fl.steps import coarsest_grid
from nnc_fl.updates import apply_delta
from strategies import DownlinkSettings
from strategies.server_model import ServerModel, anchor_grid, choose_downlink


@pytest.mark.parametrize(
    ("held", "increments_from", "kind"),
    [
        (5, 5, p.SAME),
        (4, 5, p.DELTA),
        (4, None, p.KEYFRAME),
        (3, 5, p.KEYFRAME),  # needs G_4 - G_3, which the server no longer has
        (3, 4, p.DELTA),  # chain of two increments
        (0, 1, p.DELTA),
        (None, 1, p.KEYFRAME),
        (6, 1, p.KEYFRAME),  # a node claiming a future version
    ],
)
def test_version_rule(held, increments_from, kind):
    assert choose_downlink(held, 5, increments_from) == kind


def test_chain_longer_than_the_limit_gets_a_keyframe():
    v = p.MAX_CHAIN + 10
    assert choose_downlink(v - p.MAX_CHAIN, v, 1) == p.DELTA
    assert choose_downlink(v - p.MAX_CHAIN - 1, v, 1) == p.KEYFRAME


# -- catch-up increments: G_v - G_u as one exact increment ----------------------------------------


def _bn_model(rng) -> dict[str, np.ndarray]:
    return {
        "conv.weight": rng.normal(0, 0.1, (32, 16, 3, 3)).astype(np.float32),
        "bn.running_var": rng.uniform(0.5, 1.5, 32).astype(np.float32),
        "bn.num_batches_tracked": np.array(0, np.int64),
        "fc.weight": rng.normal(0, 0.05, (10, 512)).astype(np.float32),
    }


def _advance_rounds(model: ServerModel, spec: CodecSpec, rng, rounds, noise: float = 0.001) -> None:
    """FL-like rounds: a drift shared across rounds (times each of ``rounds`` if it is a list of
    scales, e.g. shrinking as late rounds do) plus noise; BatchNorm statistics move too."""
    scales = [1.0] * rounds if isinstance(rounds, int) else rounds
    drift = {n: rng.normal(0, 0.004, t.shape).astype(np.float32) for n, t in model.tensors.items()}
    for scale in scales:
        target = {}
        for name, t in model.tensors.items():
            if t.dtype == np.int64:
                target[name] = t + 10
            elif name == "bn.running_var":
                target[name] = (t * 0.9 + 0.1 * rng.uniform(0.5, 1.5, t.shape)).astype(np.float32)
            else:
                target[name] = t + scale * drift[name] + rng.normal(0, noise, t.shape).astype(np.float32)
        model.advance(target, spec)


def _rebuild(base: dict[str, np.ndarray], down, payloads) -> dict[str, np.ndarray]:
    """What a node holding ``base`` makes of the downlink (as clients.state does)."""
    codec = CodecSpec.from_wire(down.payload_codec, down.payload_codec_params).make()
    model = base
    for payload in payloads:
        model = apply_delta(model, codec.decode(payload.data, expect=model))
    return model


@pytest.mark.parametrize("catch_up", [True, False])
def test_a_node_that_missed_rounds_gets_the_cheaper_of_chain_and_catch_up(catch_up):
    spec = CodecSpec("nnc", {"rel_step": 2.0, "float_lossless": True})
    rng = np.random.default_rng(1)
    model = ServerModel(DownlinkSettings(catch_up=catch_up))
    model.adopt(_bn_model(rng), spec)
    held = dict(model.tensors)
    model.acknowledged(7, model.version, model.fingerprint)
    _advance_rounds(model, spec, rng, 4)
    chain_bytes = sum(len(model.increments[u].data) for u in range(2, 6))
    down, payloads, _ = model.downlink(7, spec, "arrays", 5, bytes(16))
    assert down.kind == p.DELTA and (down.base_version, down.version) == (1, 5)
    assert down.payloads == len(payloads) == (1 if catch_up else 4)
    sent = sum(len(x.data) for x in payloads)
    if catch_up:
        assert sent < 0.8 * chain_bytes  # the summed drift codes in fewer bits than four increments
    else:
        assert sent == chain_bytes
    rebuilt = _rebuild(held, down, payloads)
    assert fingerprint(rebuilt) == down.fingerprint == model.fingerprint  # exact, BN statistics included
    assert down == p.Downlink.from_config(down.to_config())


def test_a_zero_initialised_bias_keeps_its_grid_as_it_grows(caplog):
    # a zero tensor's grid holds twice the model's largest value (before: 2**-24, which a BatchNorm
    # bias left above 0.25, with a warning, exact keyframes and no catch-ups from then on)
    spec = CodecSpec("nnc", {"rel_step": 2.0, "float_lossless": True})
    rng = np.random.default_rng(4)
    tensors = _bn_model(rng)
    tensors["bn.bias"] = np.zeros(32, np.float32)
    tensors["bn.weight"] = np.ones(32, np.float32)
    model = ServerModel(DownlinkSettings())
    model.adopt(tensors, spec)
    assert model.grid["bn.bias"] == 2.0**-21  # 2**22 steps of it: 2.0, twice bn.weight's 1.0
    bits = DownlinkSettings().keyframe_grid
    assert model.grid["conv.weight"] == anchor_grid(tensors, ["conv.weight"], bits)["conv.weight"]  # as before
    model.acknowledged(7, model.version, model.fingerprint)
    held = dict(model.tensors)
    for shift in (0.2, 0.4, 0.6):  # past 0.25
        target = dict(model.tensors)
        target["bn.bias"] = (model.tensors["bn.bias"] + rng.normal(shift, 0.01, 32)).astype(np.float32)
        model.advance(target, spec)
    assert np.abs(model.tensors["bn.bias"]).max() > 1.0
    assert "bn.bias" in model.grid and "left its anchor grid" not in caplog.text
    down, payloads, _ = model.downlink(7, spec, "arrays", 4, bytes(16))
    assert down.kind == p.DELTA and down.payloads == len(payloads) == 1  # one exact catch-up
    assert fingerprint(_rebuild(held, down, payloads)) == model.fingerprint


def test_catch_ups_need_the_anchor_grid():
    """Without the grid, sums of float32 increments are not exact: chains only."""
    spec = CodecSpec("nnc", {"rel_step": 2.0})
    rng = np.random.default_rng(2)
    model = ServerModel(DownlinkSettings(keyframe_grid=None))
    model.adopt(_bn_model(rng), spec)
    model.acknowledged(7, model.version, model.fingerprint)
    _advance_rounds(model, spec, rng, 3)
    down, payloads, _ = model.downlink(7, spec, "arrays", 4, bytes(16))
    assert down.kind == p.DELTA and down.payloads == len(payloads) == 3


def test_catch_ups_of_many_nodes_stay_exact_and_are_reused():
    spec = CodecSpec("nnc", {"rel_step": 2.0, "float_lossless": True})
    rng = np.random.default_rng(3)
    model = ServerModel(DownlinkSettings())
    model.adopt(_bn_model(rng), spec)
    held = {}
    for node in range(6):  # node k last saw version k + 1
        held[node] = (model.version, dict(model.tensors))
        model.acknowledged(node, model.version, model.fingerprint)
        _advance_rounds(model, spec, rng, 1)
    for node in range(6):
        down, payloads, _ = model.downlink(node, spec, "arrays", 9, bytes(16))
        assert down.base_version == held[node][0]
        assert fingerprint(_rebuild(held[node][1], down, payloads)) == model.fingerprint
        _, payloads_again, _ = model.downlink(node, spec, "arrays", 9, bytes(16))
        assert [x.data for x in payloads_again] == [x.data for x in payloads]  # cached per version


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"payloads": 0}, "cannot carry 0"),
        ({"payloads": 4}, "cannot carry 4"),  # more payloads than versions
        ({"kind": p.KEYFRAME, "payloads": 2}, "keyframe downlink cannot carry 2"),
        ({"kind": p.SAME, "payloads": 1}, "same downlink cannot carry 1"),
        ({"residual_max_age": -2}, "residual_max_age"),
        ({"residual_max_age": 1 << 31}, "residual_max_age"),
        ({"residual_max_age": 1.5}, "residual_max_age"),
        ({"train_from_residual": 1}, "train_from_residual"),
        ({"train_from_residual": "yes"}, "train_from_residual"),
    ],
)
def test_downlink_payload_count_is_bounded(change, message):
    fields = dict(kind=p.DELTA, version=5, fingerprint=bytes(32), base_version=2, base_fingerprint=bytes(32),
                  payload_codec="nnc", payload_codec_params="{}", codec="nnc", codec_params="{}",
                  arrays_key="arrays", server_round=5, nonce=bytes(p.NONCE_SIZE), tensors=1, elements=1)
    record = {**p.Downlink(**fields).to_config(), **change}
    with pytest.raises(p.ProtocolError, match=message):
        p.Downlink.from_config(record)


def test_train_from_residual_is_optional_on_the_wire():
    fields = dict(kind=p.KEYFRAME, version=1, fingerprint=bytes(32), base_version=-1, base_fingerprint=b"",
                  payload_codec="nnc", payload_codec_params="{}", codec="nnc", codec_params="{}",
                  arrays_key="arrays", server_round=1, nonce=bytes(p.NONCE_SIZE), tensors=1, elements=1)
    record = p.Downlink(**fields, train_from_residual=True).to_config()
    assert p.Downlink.from_config(record).train_from_residual is True
    del record["train_from_residual"]  # a server that predates the field
    assert p.Downlink.from_config(record).train_from_residual is False


# -- coarse initial grid: cheaper keyframes for randomly initialised models ----------------------


def _random_init(rng) -> dict[str, np.ndarray]:
    return {
        "conv.weight": rng.uniform(-0.2, 0.2, (32, 16, 3, 3)).astype(np.float32),
        "conv.bias": rng.uniform(-0.1, 0.1, 32).astype(np.float32),
        "bn.weight": np.ones(32, np.float32),
        "fc.weight": rng.uniform(-0.05, 0.05, (10, 512)).astype(np.float32),
    }


def test_initial_grid_rounds_the_first_model_coarser_and_feeds_the_rounding_back():
    spec = CodecSpec("nnc", {"rel_step": 2.0, "float_lossless": True})
    given = _random_init(np.random.default_rng(4))
    sizes, models = {}, {}
    for bits in (None, 2):
        model = ServerModel(DownlinkSettings(initial_grid=bits))
        model.adopt(given, spec)
        down, payloads, _ = model.downlink(1, spec, "arrays", 1, bytes(16))
        assert down.kind == p.KEYFRAME
        codec = CodecSpec.from_wire(down.payload_codec, down.payload_codec_params).make()
        assert fingerprint(codec.decode(payloads[0].data)) == model.fingerprint  # the node holds exactly G_v
        sizes[bits], models[bits] = len(payloads[0].data), model
    coarse = models[2]
    for name in ("conv.weight", "fc.weight"):
        t = given[name].astype(np.float64)
        step = coarsest_grid(coarse.tensors[name], coarse.grid[name])
        assert step >= 2**2 * coarse.grid[name]  # 5 - 2 bits coarser than the anchor grid
        assert np.sqrt(np.mean(t**2)) / 8 < step <= np.sqrt(np.mean(t**2)) / 4
        np.testing.assert_array_equal(coarse._residual[name], given[name] - coarse.tensors[name])
    assert np.array_equal(coarse.tensors["bn.weight"], given["bn.weight"])  # ones lie on any grid
    assert sizes[2] < 0.75 * sizes[None]
    assert models[None]._residual == {}  # the anchor grid alone: rounding below the codec's precision


def test_initial_grid_rounding_is_restored_by_the_increments():
    """A pretrained initial model that the coarse grid moved comes back through error feedback."""
    spec = CodecSpec("nnc", {"rel_step": 0.5, "float_lossless": True})
    given = _random_init(np.random.default_rng(5))
    model = ServerModel(DownlinkSettings(initial_grid=0))
    model.adopt(given, spec)
    err0 = max(float(np.abs(model.tensors[n] - given[n]).max()) for n in ("conv.weight", "fc.weight"))
    for _ in range(6):
        model.advance(dict(model.tensors), spec)  # the nodes (which hold G_v) send no change
    err = max(float(np.abs(model.tensors[n] - given[n]).max()) for n in ("conv.weight", "fc.weight"))
    assert err < err0 / 4


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"initial_grid": 6}, ValueError), ({"initial_grid": 2, "keyframe_grid": None}, ValueError),
     ({"initial_grid": -1}, ValueError), ({"initial_grid": 2.0}, TypeError), ({"initial_grid": True}, TypeError)],
)
def test_initial_grid_is_bounded(kwargs, error):
    with pytest.raises(error, match="initial_grid"):
        DownlinkSettings(**kwargs)


def _increment_steps(model: ServerModel, version: int) -> dict[str, float]:
    info = inspect(model.increments[version].data, expect=model.tensors)
    return {t.name: t.step for t in info.tensors if t.step is not None}


def _budgeted_catch_up(keep_within: float):
    params = {"rel_step": 2.0, "rel_to": "update", "float_lossless": True, "target_fraction": 0.025}
    spec = CodecSpec("nnc", {**params, "keep_within": keep_within} if keep_within else params)
    rng = np.random.default_rng(4)
    model = ServerModel(DownlinkSettings(error_feedback=False))
    model.adopt(_bn_model(rng), spec)
    held = dict(model.tensors)
    model.acknowledged(7, model.version, model.fingerprint)
    _advance_rounds(model, spec, rng, [1.0, 0.93, 0.87], noise=0.0005)
    assert all(len(model.increments[u].data) <= 0.025 * model.raw_bytes for u in (2, 3, 4))
    down, payloads, _ = model.downlink(7, spec, "arrays", 4, bytes(16))
    assert down.kind == p.DELTA and down.payloads == 1  # the catch-up
    assert fingerprint(_rebuild(held, down, payloads)) == model.fingerprint
    steps = [_increment_steps(model, u) for u in (2, 3, 4)]
    catch_up = inspect(payloads[0].data, expect=model.tensors)
    steps.append({t.name: t.step for t in catch_up.tensors if t.name in steps[0]})
    return steps, len(payloads[0].data), sum(len(model.increments[u].data) for u in (2, 3, 4)), model.grid


def test_budgeted_increments_keep_their_steps_so_catch_ups_stay_cheap():
    """Under a downlink budget each increment picks its own step multiple of the anchor grid; a sum
    of increments at different multiples lies only on their common divisor's grid, which costs
    the catch-up bits. Keeping the last increment's steps while the budget allows avoids that."""
    searched, searched_catch_up, _, _ = _budgeted_catch_up(0.0)
    kept, kept_catch_up, kept_chain, grid = _budgeted_catch_up(0.3)
    assert searched[0] != searched[1] != searched[2]
    assert kept[0] == kept[1] == kept[2] == searched[0]
    assert kept[3] == kept[0]  # the catch-up codes at the increments' step ...
    assert kept[0]["conv.weight"] == 7 * grid["conv.weight"]  # ... an odd multiple of the grid here
    assert kept_catch_up < 0.5 * kept_chain
    assert kept_catch_up < 0.8 * searched_catch_up


# -- temporal contexts: increments coded against the one before, plain twins for the others -------


def _rebuild_temporal(base, reference, down, payloads):
    """As clients.state does: each increment decoded with the one before as its temporal reference."""
    codec = CodecSpec.from_wire(down.payload_codec, down.payload_codec_params).make()
    model = base
    for payload in payloads:
        decoded = codec.decode(payload.data, expect=model, temporal_reference=reference)
        model, reference = apply_delta(model, decoded), decoded
    return model, reference


@pytest.mark.parametrize("catch_up", [True, False])
def test_temporal_increments_reach_nodes_with_and_without_the_reference(catch_up):
    spec = CodecSpec("nnc", {"rel_step": 2.0, "float_lossless": True, "schema_bound": True, "temporal": True})
    rng = np.random.default_rng(6)
    model = ServerModel(DownlinkSettings(catch_up=catch_up))
    model.adopt(_bn_model(rng), spec)
    nodes = {}  # node -> (model, the increment it holds or None)

    def sync(node):
        down, payloads, _ = model.downlink(node, spec, "arrays", model.version, bytes(16))
        if down.kind == p.KEYFRAME:
            nodes[node] = (model.tensors, None)
        elif down.kind == p.DELTA:
            rebuilt, increment = _rebuild_temporal(*nodes[node], down, payloads)
            assert fingerprint(rebuilt) == model.fingerprint
            nodes[node] = (rebuilt, increment if len(payloads) == down.version - down.base_version else None)
        model.acknowledged(node, model.version, model.fingerprint)
        return down, payloads

    sync(1), sync(3)  # keyframes
    _advance_rounds(model, spec, rng, 1)  # increment 2: nothing before it to reference
    assert 2 not in model._plain
    sync(1), sync(3)  # chain [2]: nodes 1 and 3 now hold increment 2
    sync(2)  # keyframe at version 2: node 2 holds no increment
    _advance_rounds(model, spec, rng, 1)  # increment 3: coded against increment 2, with a plain twin
    digest = inspect(model.increments[3].data, expect=model.tensors).temporal_digest
    assert digest is not None and model._plain[3] is not None
    assert inspect(model._plain[3].data, expect=model.tensors).temporal_digest is None
    _, to_1 = sync(1)
    _, to_2 = sync(2)
    sync(3)
    assert to_1[0].data == model.increments[3].data and to_2[0].data == model._plain[3].data
    assert len(to_2[0].data) > len(to_1[0].data)  # the reference pays
    _advance_rounds(model, spec, rng, 2)  # node 3 misses two rounds: a chain (4 against its 3, then 5) or a catch-up
    down, payloads = sync(3)
    assert down.kind == p.DELTA and len(payloads) == (1 if catch_up else 2)
    if not catch_up:
        assert [x.data for x in payloads] == [model.increments[4].data, model.increments[5].data]


def test_the_last_increment_is_the_uplink_reference_and_adopt_clears_it():
    spec = CodecSpec("nnc", {"rel_step": 2.0, "temporal": True})
    rng = np.random.default_rng(7)
    model = ServerModel(DownlinkSettings())
    model.adopt(_bn_model(rng), spec)
    assert model.last_increment is None
    before = dict(model.tensors)
    _advance_rounds(model, spec, rng, 1)
    assert fingerprint(apply_delta(before, model.last_increment)) == model.fingerprint
    model.adopt(_bn_model(rng), spec)
    assert model.last_increment is None and not model._plain and not model.increments
