"""Running statistics (BatchNorm means and variances) are judged apart from the trained tensors.

Their deltas follow each node's data, not the loss, and in a BatchNorm CNN they are most of an
update's norm: measured on the whole update, they hid a scaled or sign-flipped set of weights, and
under label skew their back-and-forth made honest nodes look like flippers to the direction check.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict

from nnc_fl.validation import split_statistics
from strategies import ValidationSettings
from strategies.uplink import Opened, UplinkChecks

SHAPES = {"conv.weight": (16, 8), "bn.weight": (16,), "bn.running_mean": (16,), "bn.running_var": (16,)}
MODEL = SimpleNamespace(tensors={
    "conv.weight": np.zeros((16, 8), np.float32),
    "bn.weight": np.ones(16, np.float32),
    "bn.running_mean": np.zeros(16, np.float32),
    "bn.running_var": np.ones(16, np.float32),
    "bn.num_batches_tracked": np.array(0, np.int64),
})


def _delta(rng, trained=0.01, stats=1.0, direction=None):
    """An update whose trained tensors are small (``direction`` plus noise) and whose statistics
    are large and random (a variance that only grows, so it stays >= 0)."""
    d = {}
    for name, shape in SHAPES.items():
        if "running" in name:
            v = stats * rng.standard_normal(shape)
            d[name] = np.abs(v).astype(np.float32) if name.endswith("var") else v.astype(np.float32)
        else:
            base = direction[name] if direction is not None else 0
            d[name] = (trained * (base + 0.3 * rng.standard_normal(shape))).astype(np.float32)
    d["bn.num_batches_tracked"] = np.array(10, np.int64)
    return d


def _review(checks, deltas, nodes=None):
    opened = []
    for i, delta in enumerate(deltas):
        node = nodes[i] if nodes is not None else i + 1
        msg = Message(content=RecordDict({"metrics": MetricRecord({"num-examples": 10})}), dst_node_id=node,
                      message_type="train")
        o = Opened(msg, node, "pending", weight=10.0)
        checks.measure(o, delta)
        opened.append(o)
    checks.review(opened, MODEL)
    return opened


def _refusals(checks, rng, cohorts, direction_of, flipper):
    """Run ``checks`` over rounds whose cohorts are ``cohorts`` (lists of node ids), every honest
    update following ``direction_of(round)`` and ``flipper`` sending its negative; the rejection
    codes per refused node."""
    refused: dict[int, set[str]] = {}
    for r, nodes in enumerate(cohorts):
        deltas = []
        for node in nodes:
            d = _delta(rng, direction=direction_of(r))
            if node == flipper:
                d = {k: -v if k in direction_of(r) else v for k, v in d.items()}
            deltas.append(d)
        for o in _review(checks, deltas, nodes):
            if o.kind == "rejected":
                refused.setdefault(o.node_id, set()).add(o.rejection.code)
    return refused


def test_the_norms_are_measured_apart():
    rng = np.random.default_rng(0)
    delta = _delta(rng)
    o = _review(UplinkChecks(ValidationSettings(), "num-examples"), [delta])[0]
    trained, stats = split_statistics(delta, ValidationSettings().statistics)
    assert set(stats) == {"bn.running_mean", "bn.running_var"}
    assert "bn.num_batches_tracked" in trained  # an integer counter: exact, ignored by the norms
    assert o.norm == pytest.approx(np.sqrt(sum(float(np.sum(trained[k].astype(np.float64) ** 2))
                                               for k in ("conv.weight", "bn.weight"))))
    assert o.stats_norm == pytest.approx(np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in stats.values())))
    assert o.stats_norm > 10 * o.norm


@pytest.mark.parametrize("statistics", [None, ""])
def test_statistics_no_longer_hide_scaled_weights(statistics):
    """Two honest updates whose norm is mostly statistics, then one whose trained tensors are 100x
    theirs: on the whole update's norm it looked honest (~1.5x); on the trained tensors it is
    refused. With ``statistics=""`` (everything judged together, as before) it gets through."""
    settings = ValidationSettings() if statistics is None else ValidationSettings(statistics=statistics)
    checks = UplinkChecks(settings, "num-examples")
    rng = np.random.default_rng(1)
    _review(checks, [_delta(rng), _delta(rng)])
    hostile = _delta(rng)
    for name in ("conv.weight", "bn.weight"):
        hostile[name] *= 100
    out = _review(checks, [_delta(rng), hostile])
    if statistics is None:
        assert out[0].kind == "update" and out[1].kind == "rejected"
        assert out[1].rejection.code == "norm" and "update norm" in str(out[1].rejection)
    else:
        assert [o.kind for o in out] == ["update", "update"] and not out[1].clipped


def test_statistics_have_a_scale_of_their_own():
    checks = UplinkChecks(ValidationSettings(), "num-examples")
    rng = np.random.default_rng(2)
    _review(checks, [_delta(rng), _delta(rng)])
    big, huge = _delta(rng), _delta(rng)
    for name in ("bn.running_mean", "bn.running_var"):
        big[name] *= 8  # beyond the clipping ratio (4x), within the refusal ratio (25x)
        huge[name] *= 100
    weights_before = big["conv.weight"].copy()
    honest, clipped = _review(checks, [_delta(rng), big])
    assert honest.kind == "update" and not honest.clipped
    assert clipped.kind == "update" and clipped.clipped
    np.testing.assert_array_equal(clipped.delta["conv.weight"], weights_before)  # trained part untouched
    assert clipped.stats_norm < np.linalg.norm(np.concatenate([big["bn.running_mean"], big["bn.running_var"]]))
    assert clipped.delta["bn.running_var"].min() >= 0  # a shrunk variance delta keeps the variance >= 0
    honest, refused = _review(checks, [_delta(rng), huge])
    assert honest.kind == "update" and not honest.clipped
    assert refused.kind == "rejected" and refused.rejection.code == "norm"
    assert "running statistics" in str(refused.rejection)


@pytest.mark.parametrize("statistics", [None, ""])
def test_statistics_swinging_back_and_forth_do_not_hide_a_flipper(statistics):
    """Five nodes whose trained tensors agree and whose statistics are large and random, plus one
    flipping its trained tensors: the flipper is refused by direction and no honest node is. Judged
    with the statistics (``statistics=""``), the flipper's cosines drown in their noise."""
    rng = np.random.default_rng(3)
    direction = {n: rng.standard_normal(s) for n, s in SHAPES.items() if "running" not in n}
    settings = ValidationSettings() if statistics is None else ValidationSettings(statistics=statistics)
    checks = UplinkChecks(settings, "num-examples")
    cohorts = [[1 + (r + k) % 6 for k in range(4)] for r in range(8)]
    refused = _refusals(checks, rng, cohorts, lambda r: direction, flipper=6)
    assert refused == ({6: {"direction"}} if statistics is None else {})


def test_statistics_patterns_are_checked():
    assert ValidationSettings(statistics="*.rm, *.rv").statistics == ("*.rm", "*.rv")
    with pytest.raises(TypeError, match="statistics"):
        ValidationSettings(statistics=3)


def test_a_flipper_in_an_oscillating_small_federation_is_refused_by_agreement():
    """Four nodes in cohorts of two whose updates alternate in sign from round to round (a model
    oscillating about its optimum, as the digits BatchNorm CNN does): their cosine with the recent
    direction is negative for everyone, so the direction check stands aside; the updates of one
    round still agree, and the flipper, whose update points against its partner's, is refused as
    ``agreement`` -- and no honest node is refused."""
    rng = np.random.default_rng(4)
    direction = {n: rng.standard_normal(s) for n, s in SHAPES.items() if "running" not in n}
    checks = UplinkChecks(ValidationSettings(), "num-examples")
    cohorts = [[int(n) + 1 for n in rng.choice(4, 2, replace=False)] for _ in range(20)]
    flipped = {k: -v for k, v in direction.items()}
    refused = _refusals(checks, rng, cohorts, lambda r: direction if r % 2 == 0 else flipped, flipper=4)
    assert refused == {4: {"agreement"}}
