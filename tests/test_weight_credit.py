"""What the server credits a reply's weighting metric (``num-examples`` for FedAvg) with.

A claim is capped at ``weight_ratio`` times the others' median (and the node's own history); the
round's node whose updates point against the others' (``AgreementReference.dissenter``) at
``dissent_weight_ratio`` times the others' median: a sign flipper that also buys weight in a cohort
of two (measured: 80 % of one round's aggregate, a 4 pp slip of the digits BatchNorm federation in
its last round) gets half its partner's weight before its record stands out far enough to be
refused.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict

from strategies import ValidationSettings
from strategies.uplink import Opened, UplinkChecks

MODEL = SimpleNamespace(tensors={"w": np.zeros((32, 16), np.float32)})
#: four nodes in cohorts of two, every pair in turn
COHORTS = [(0, 1), (2, 3), (0, 2), (1, 3), (0, 3), (1, 2)] * 3


def _round(checks, rng, nodes, claims, flipper=None):
    """One round: each node's update is a common direction plus noise (the flipper sends its
    negative) with its claimed weight; the accepted ``Opened`` replies."""
    direction = rng.standard_normal((32, 16))
    opened = []
    for node in nodes:
        delta = {"w": (0.01 * (direction + 0.5 * rng.standard_normal((32, 16)))).astype(np.float32)}
        if node == flipper:
            delta = {"w": -delta["w"]}
        msg = Message(content=RecordDict({"metrics": MetricRecord({"num-examples": claims[node]})}),
                      dst_node_id=node, message_type="train")
        o = Opened(msg, node, "pending", weight=float(claims[node]))
        checks.measure(o, delta)
        opened.append(o)
    checks.review(opened, MODEL)
    return [o for o in opened if o.kind == "update"]


@pytest.mark.parametrize("seed", range(3))
def test_a_flipper_that_buys_weight_gets_half_its_partners_weight_once_it_dissents(seed):
    rng = np.random.default_rng(seed)
    checks = UplinkChecks(ValidationSettings(), "num-examples")
    claims = {0: 1e6, 1: 10, 2: 10, 3: 10}
    credited = []
    for r, nodes in enumerate(COHORTS):
        for o in _round(checks, rng, nodes, claims, flipper=0):
            if o.node_id == 0:
                credited.append((r, o.weight))
    assert credited and all(w <= 40.0 for _, w in credited)  # weight_ratio 4 from the first round
    # from round 3 on (round 2 was the first without it): half its partner's weight, every round
    # alike (its history is the claim as capped by weight_ratio, so the credit does not keep halving)
    assert all(w == 5.0 for r, w in credited if r >= 2), credited
    assert sum(r >= 2 for r, _ in credited) >= 2  # accepted more than once there (not refused at once)


def test_without_the_dissent_cap_the_flipper_keeps_four_times_its_partner():
    rng = np.random.default_rng(0)
    checks = UplinkChecks(ValidationSettings(dissent_weight_ratio=None), "num-examples")
    claims = {0: 1e6, 1: 10, 2: 10, 3: 10}
    weights = [o.weight for r, nodes in enumerate(COHORTS[:3]) for o in _round(checks, rng, nodes, claims, 0)
               if o.node_id == 0]
    assert weights == [40.0, 40.0]


@pytest.mark.parametrize("seed", range(3))
def test_honest_nodes_keep_the_weight_they_claim(seed):
    # unequal data, all agreeing: nobody dissents, every claim within 4x the others' stands
    rng = np.random.default_rng(seed)
    checks = UplinkChecks(ValidationSettings(), "num-examples")
    claims = {0: 30, 1: 10, 2: 20, 3: 10}
    for nodes in COHORTS:
        for o in _round(checks, rng, nodes, claims):
            assert o.weight == claims[o.node_id] and not o.weight_capped


def test_the_dissent_cap_is_validated():
    assert ValidationSettings(dissent_weight_ratio=None).dissent_weight_ratio is None
    for bad in (0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="dissent_weight_ratio"):
            ValidationSettings(dissent_weight_ratio=bad)
