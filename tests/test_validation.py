"""nnc_fl.validation: each check raises UpdateRejected with its own code and a clear reason."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnc_fl
from nnc_fl import FormatError
from nnc_fl import references as refs
from nnc_fl import validation as v
from nnc_fl.codecs import make_codec

REF = {"w": np.zeros((2, 3), np.float32), "n": np.array(0, np.int64)}


def _rejected(code: str):
    return pytest.raises(v.UpdateRejected, match=f"^{code}: ")


def test_rejection_carries_code_and_reason():
    exc = v.UpdateRejected("schema", "tensor 'w' has shape (3,)")
    assert (exc.code, exc.reason) == ("schema", "tensor 'w' has shape (3,)")
    with pytest.raises(ValueError):
        v.UpdateRejected("nope", "x")


def test_decode_update_turns_any_decoder_failure_into_format():
    codec = make_codec("nnc", step=0.01)
    data = bytearray(codec.encode({"w": np.ones((2, 3), np.float32)}))
    assert set(v.decode_update(codec, bytes(data))) == {"w"}
    data[len(data) // 2] ^= 0xFF
    with _rejected("format"):
        v.decode_update(codec, bytes(data))

    class Broken:
        name = "broken"

        def decode(self, data):
            raise ZeroDivisionError("boom")

    with _rejected("format") as info:
        v.decode_update(Broken(), b"")
    assert "ZeroDivisionError" in info.value.reason
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert issubclass(FormatError, ValueError)


@pytest.mark.parametrize(
    "tensors",
    [
        {"w": np.zeros((2, 3), np.float32)},
        {**REF, "extra": np.zeros(1, np.float32)},
        {**REF, "w": np.zeros((3, 2), np.float32)},
        {**REF, "w": np.zeros((2, 3), np.float64)},
        {**REF, "n": np.array(0, np.int32)},
    ],
)
def test_check_schema(tensors):
    v.check_schema(REF, REF)
    with _rejected("schema"):
        v.check_schema(tensors, REF)


def test_check_finite_ignores_integers():
    v.check_finite(REF)
    for bad in (np.nan, np.inf, -np.inf):
        with _rejected("nonfinite"):
            v.check_finite({**REF, "w": np.full((2, 3), bad, np.float32)})


def test_check_nonnegative_refuses_a_negative_running_variance_only():
    model = {
        "bn.running_var": np.array([0.0, 0.5, 2.0], np.float32),
        "bn.running_mean": np.array([-1.0, 0.0, 1.0], np.float32),  # a mean may be negative
        "block.norm.moving_variance": np.ones(2, np.float64),
        "bn.num_batches_tracked": np.array(-1, np.int64),  # not a variance: not checked
    }
    v.check_nonnegative(model)
    for name in ("bn.running_var", "block.norm.moving_variance"):
        bad = {**model, name: model[name].copy()}
        bad[name][-1] = -1e-3
        with _rejected("range") as info:
            v.check_nonnegative(bad)
        assert name in info.value.reason and "-0.001" in info.value.reason
    v.check_nonnegative({**model, "bn.running_var": -model["bn.running_var"] - 1}, patterns=())  # switched off
    with _rejected("range"):
        v.check_nonnegative({"scale": np.array([-2.0])}, patterns=("scale",))
    v.check_nonnegative({"bn.running_var": np.zeros(0, np.float32)})  # empty tensor


def test_trusted_loss_may_rise_by_a_multiple_of_the_current_loss():
    assert v.loss_bound(2.0, 3.0) == pytest.approx(8.0)
    v.check_trusted_loss(0.2, 0.05, 3.0)  # exactly at the bound
    with _rejected("loss") as info:
        v.check_trusted_loss(0.21, 0.05, 3.0)
    assert "rises to 0.21 from 0.05 (above 0.2)" in info.value.reason
    for bad in (float("nan"), float("inf")):
        with _rejected("loss"):
            v.check_trusted_loss(bad, 0.05, 3.0)


def test_update_norm_uses_float_tensors_only():
    t = {"w": np.full((2, 2), 3.0, np.float32), "n": np.array(10**12, np.int64)}
    assert v.update_norm(t) == pytest.approx(6.0)


def test_norm_bound():
    v.check_norm_bound(1.0, None)
    v.check_norm_bound(1.0, 2.0)
    with _rejected("norm"):
        v.check_norm_bound(3.0, 2.0)
    with _rejected("nonfinite"):
        v.check_norm_bound(float("inf"), None)


def test_outlier_mask_flags_a_scaled_update_only():
    honest = [1.0, 1.3, 0.8, 1.1, 1.6]
    mask = v.outlier_mask([*honest, 1000.0], threshold=10.0)
    assert mask.tolist() == [False] * 5 + [True]
    assert not v.outlier_mask([*honest, 3.0], threshold=10.0).any()  # heterogeneity is fine


def test_outlier_mask_edge_cases():
    assert not v.outlier_mask([1.0, 1000.0], threshold=10.0).any()  # two norms cannot tell
    assert not v.outlier_mask([1.0, 1.0, 1000.0], threshold=None).any()  # switched off
    assert v.outlier_mask([1.0, 1.0, 1.0, 1000.0], threshold=10.0).tolist() == [False] * 3 + [True]
    same = v.outlier_mask([2.0, 2.0, 2.0 + 1e-9], threshold=10.0)  # MAD = 0: the floor keeps it sane
    assert not same.any()
    assert v.outlier_mask([], threshold=10.0).size == 0


def test_outlier_rejection_reason():
    exc = v.outlier_rejection(1000.0, 9000.0, 10.0)
    assert exc.code == "outlier" and "1000" in exc.reason


# -- the direction check across rounds ------------------------------------------------------------


def _direction_run(cosine_of, rounds=20, nodes=10, cohort=5, seed=0, spread=3.5):
    """Feed a DirectionReference ``rounds`` rounds of ``cohort`` sampled nodes whose cosines come
    from ``cosine_of(node, rng)``; the (round, node) pairs it refused."""
    rng = np.random.default_rng(seed)
    ref = refs.DirectionReference(spread)
    refused = []
    for r in range(rounds):
        sampled = [int(n) for n in rng.choice(nodes, cohort, replace=False)]
        verdicts = ref.judge(sampled, [float(np.clip(cosine_of(n, rng), -1, 1)) for n in sampled])
        refused += [(r, n) for n, x in zip(sampled, verdicts, strict=True) if x is not None]
        assert all(x is None or x.code == "direction" for x in verdicts)
    return refused


@pytest.mark.parametrize("seed", range(5))
def test_direction_check_stands_aside_where_honest_nodes_disagree(seed):
    # label-skewed nodes (as measured on UC14A two-class Dirichlet): node means from -0.35 to
    # +0.25, single updates scattered by ~0.45 around them
    means = np.linspace(-0.35, 0.25, 10)
    assert _direction_run(lambda n, rng: means[n] + 0.45 * rng.standard_normal(), seed=seed) == []


@pytest.mark.parametrize("seed", range(5))
def test_direction_check_refuses_a_sign_flipper_among_agreeing_nodes(seed):
    # UC10-like: honest updates agree with the consensus (+0.15 +- 0.05); node 0 sends -update
    def cos(n, rng):
        c = 0.15 + 0.05 * rng.standard_normal()
        return -c if n == 0 else c

    refused = _direction_run(cos, seed=seed)
    assert refused and {n for _, n in refused} == {0}


@pytest.mark.parametrize("seed", range(5))
def test_direction_check_stands_aside_when_a_minority_of_nodes_points_the_other_way(seed):
    # UC14A two-class Dirichlet, measured (seed 0 with 200 examples held back): 8 nodes at +0.5, two
    # holding the other class at -0.5 -- each alone looks like a flipper, two are a pattern. Until
    # the second one has been seen, the first is a lone dissenter and may be refused.
    seen: dict[int, int] = {}

    def cos(n, rng):
        seen.setdefault(n, len(seen))
        return (-0.5 if n in (3, 7) else 0.5) + 0.1 * rng.standard_normal()

    rng = np.random.default_rng(seed)
    ref = refs.DirectionReference(3.5)
    both_seen = None
    for r in range(20):
        sampled = [int(n) for n in rng.choice(10, 5, replace=False)]
        verdicts = ref.judge(sampled, [cos(n, rng) for n in sampled])
        refused = {n for n, x in zip(sampled, verdicts, strict=True) if x is not None}
        assert refused <= {3, 7}
        if both_seen is not None and r > both_seen:
            assert not refused, (r, refused)
        if both_seen is None and 3 in seen and 7 in seen:
            both_seen = r
    flipper = _direction_run(lambda n, rng: (-0.5 if n == 3 else 0.5) + 0.1 * rng.standard_normal(), seed=seed)
    assert flipper and {n for _, n in flipper} == {3}


@pytest.mark.parametrize("seed", range(5))
def test_direction_check_stands_aside_where_updates_oscillate(seed):
    # a small federation near its optimum (measured: digits BatchNorm CNN, 4 nodes, cohorts of 2,
    # trained tensors): every node's updates point against the recent direction (means -0.13 to
    # -0.25); the direction then says nothing about any node, however far below the rest it lies
    means = [-0.25, -0.15, -0.15, -0.6]
    assert _direction_run(lambda n, rng: means[n] + 0.1 * rng.standard_normal(), nodes=4, cohort=2, seed=seed) == []


@pytest.mark.parametrize("seed", range(5))
def test_direction_check_spares_a_node_barely_below_zero(seed):
    # UC10 BatchNorm Dirichlet 0.5, seed 1, trained tensors (measured): nine nodes close together
    # at small positive means, one label-skewed node at -0.07 over 11 rounds, which the check
    # refused at its former floor of 0.05; a flipper there would sit near -0.03, out of reach anyway
    means = np.r_[np.linspace(0.0, 0.05, 9), -0.07]
    assert _direction_run(lambda n, rng: means[n] + 0.03 * rng.standard_normal(), seed=seed) == []


def test_direction_check_needs_other_nodes_and_rounds_before_judging():
    ref = refs.DirectionReference(3.5)
    assert ref.judge([1, 2], [None, None]) == [None, None]  # no direction yet
    for _ in range(5):  # two nodes only: no yardstick, however far apart
        assert ref.judge([1, 2], [0.9, -0.9]) == [None, None]
    assert ref.threshold(1) is None


def test_direction_counts_each_update_once_whatever_its_size():
    a = {"w": np.array([1.0, 0.0], np.float32), "steps": np.array([3], np.int64)}
    b = {"w": np.array([0.0, 1000.0], np.float32), "steps": np.array([5], np.int64)}
    ref = refs.DirectionReference(3.5)
    ref.record([a, b], [1.0, 1000.0])
    ca, cb = ref.cosines([a, b], [1.0, 1000.0])
    assert ca == pytest.approx(cb) == pytest.approx(2**-0.5)
    ref.record([], [])  # a round without accepted updates leaves it as it was
    assert ref.cosines([a], [1.0]) == [pytest.approx(ca)]
    ref.reset()
    assert ref.cosines([a], [1.0]) == [None]


# -- agreement with the other updates of the same round --------------------------------------------


def test_agreements_are_cosines_with_the_sum_of_the_others_unit_vectors():
    rng = np.random.default_rng(0)
    deltas = [{"w": rng.standard_normal((6, 5)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32),
               "n": np.array(3, np.int64)} for _ in range(4)]
    norms = [v.update_norm(d) for d in deltas]
    flat = [np.concatenate([d["w"].ravel(), d["b"]]).astype(np.float64) for d in deltas]
    got = refs.agreements(deltas, norms)
    for i in range(4):
        rest = sum(flat[j] / np.linalg.norm(flat[j]) for j in range(4) if j != i)
        assert got[i] == pytest.approx(flat[i] @ rest / (np.linalg.norm(flat[i]) * np.linalg.norm(rest)), abs=1e-6)
    pair = refs.agreements(deltas[:2], norms[:2])
    assert pair[0] == pytest.approx(refs.cosine(deltas[0], deltas[1], norms[0], norms[1])) == pytest.approx(pair[1])


def test_agreements_of_huge_finite_updates_stay_finite():
    big, ones = {"w": np.full(1000, 3e38, np.float32)}, {"w": np.ones(1000, np.float32)}
    out = refs.agreements([big, ones, ones], [v.update_norm(big), v.update_norm(ones), v.update_norm(ones)])
    assert out == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)


def test_agreements_skip_zero_and_lonely_updates():
    d = {"w": np.ones(3, np.float32)}
    zero = {"w": np.zeros(3, np.float32)}
    assert refs.agreements([d], [v.update_norm(d)]) == [None]
    assert refs.agreements([d, zero], [v.update_norm(d), 0.0]) == [None, None]
    # two identical updates and their negative: for either of the first two the others cancel out
    neg = {"w": -np.ones(3, np.float32)}
    out = refs.agreements([d, d, neg], [v.update_norm(d)] * 3)
    assert out[:2] == [None, None] and out[2] == pytest.approx(-1.0)


def _agreement_run(pair_cosine, rounds=20, nodes=4, cohort=2, seed=0, spread=3.5):
    """Feed an AgreementReference ``rounds`` rounds of ``cohort`` sampled nodes, each round's
    agreement from ``pair_cosine(sampled, rng)``; the (round, node) pairs it refused."""
    rng = np.random.default_rng(seed)
    ref = refs.AgreementReference(spread)
    refused = []
    for r in range(rounds):
        sampled = [int(n) for n in rng.choice(nodes, cohort, replace=False)]
        verdicts = ref.judge(sampled, pair_cosine(sampled, rng))
        refused += [(r, n) for n, x in zip(sampled, verdicts, strict=True) if x is not None]
        assert all(x is None or x.code == "agreement" for x in verdicts)
    return refused


@pytest.mark.parametrize("seed", range(5))
def test_agreement_refuses_a_flipper_whose_partners_agree_among_themselves(seed):
    # digits BatchNorm CNN, 4 nodes in cohorts of 2 (measured): honest pairs +0.00 to +0.60, pairs
    # with the flipper -0.23 to +0.02; node 0 flips
    def pair(sampled, rng):
        c = abs(0.12 + 0.1 * rng.standard_normal())
        c = -c if 0 in sampled else c
        return [c, c]

    refused = _agreement_run(pair, seed=seed)
    assert refused and {n for _, n in refused} == {0}
    assert _agreement_run(lambda s, rng: [abs(0.12 + 0.1 * rng.standard_normal())] * 2, seed=seed) == []


@pytest.mark.parametrize("seed", range(5))
def test_agreement_stands_aside_where_honest_nodes_disagree(seed):
    # two-class label skew: nodes 0-4 hold one class, 5-9 the other; pairs across classes disagree
    def pair(sampled, rng):
        a, b = sampled
        c = (0.5 if (a < 5) == (b < 5) else -0.4) + 0.15 * rng.standard_normal()
        return [c, c]

    assert _agreement_run(pair, nodes=10, seed=seed) == []


def test_agreement_rarely_refuses_label_skewed_nodes_in_cohorts_of_two():
    # 4 nodes, two classes (nodes 0-1 and 2-3), cohorts of two: pairs of a class agree (+0.5),
    # pairs across disagree (-0.4); every node is a minority of one class. Simulated over 100
    # federations of 20 rounds: runs with a refusal at all (measured: 4; 7 without min_values).
    def pair(sampled, rng):
        a, b = sampled
        c = (0.5 if (a < 2) == (b < 2) else -0.4) + 0.15 * rng.standard_normal()
        return [c, c]

    assert sum(bool(_agreement_run(pair, seed=seed)) for seed in range(100)) <= 5


def _dissenters(pair_cosine, rounds=20, nodes=4, seed=0):
    """Like :func:`_agreement_run` with a reference that never refuses: per round, the sampled
    nodes and ``AgreementReference.dissenter`` of them after the round is recorded."""
    rng = np.random.default_rng(seed)
    ref = refs.AgreementReference(1e9)  # only the records matter here
    out = []
    for _ in range(rounds):
        sampled = [int(n) for n in rng.choice(nodes, 2, replace=False)]
        ref.judge(sampled, pair_cosine(sampled, rng))
        out.append((sampled, ref.dissenter(sampled)))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_the_dissenter_is_the_flipper_once_rounds_without_it_show_the_others_agree(seed):
    # the digits BatchNorm cohorts of two above: node 0 flips
    def pair(sampled, rng):
        c = abs(0.12 + 0.1 * rng.standard_normal())
        return [-c, -c] if 0 in sampled else [c, c]

    rounds = _dissenters(pair, seed=seed)
    assert rounds[0][1] is None  # round 1: the partners' agreements are equal, nothing tells them apart
    with_flipper = [d for sampled, d in rounds if 0 in sampled]
    seen_alone = next(i for i, (sampled, _) in enumerate(rounds) if 0 not in sampled)
    # from the first round it sat out, the flipper is the dissenter of every round it is in, never its partner
    assert all(d == 0 for sampled, d in rounds[seen_alone:] if 0 in sampled), rounds
    assert 0 in with_flipper
    honest = _dissenters(lambda s, rng: [abs(0.12 + 0.1 * rng.standard_normal())] * 2, seed=seed)
    assert all(d is None for _, d in honest)


def test_dissents_needs_records_on_both_sides():
    ref = refs.AgreementReference(3.5)
    assert not ref.dissents(7) and ref.dissenter([7]) is None  # never seen
    ref.judge([1, 2], [-0.5, -0.5])
    assert ref.dissenter([1, 2]) is None  # no round without either of them yet
    ref.judge([2, 3], [0.4, 0.4])
    assert ref.dissenter([2, 3]) is None  # node 2 averages -0.05 but no round without it exists
    ref.judge([3, 4], [0.4, 0.4])
    assert ref.dissents(1) and ref.dissents(2) and not ref.dissents(3) and not ref.dissents(4)
    assert ref.dissenter([1, 2]) == 1  # the lower mean of the two (-0.5 against -0.05)
    assert ref.dissenter([3, 4]) is None
    ref.reset()
    assert not ref.dissents(1)


_ROUND = st.lists(st.tuples(st.integers(0, 6), st.one_of(st.none(), st.floats(-1, 1))), min_size=1, max_size=5,
                  unique_by=lambda t: t[0])


@settings(max_examples=200, deadline=None)
@given(rounds=st.lists(_ROUND, min_size=1, max_size=30), check=st.sampled_from(["direction", "agreement"]))
def test_node_tests_take_any_sequence_of_rounds(rounds, check):
    """Whatever values arrive, in whatever rounds: one verdict per node of the round, ``None`` or
    the check's own code, never an exception."""
    ref = refs.DirectionReference(3.5) if check == "direction" else refs.AgreementReference(3.5)
    for r in rounds:
        nodes, values = [n for n, _ in r], [x for _, x in r]
        verdicts = ref.judge(nodes, values)
        assert len(verdicts) == len(nodes)
        assert all(x is None or x.code == check for x in verdicts)
        if check == "agreement":
            assert all(ref.dissents(n) in (True, False) for n in range(8))
            assert ref.dissenter(nodes) in (None, *nodes)


def test_an_update_coded_against_another_temporal_reference_is_refused_as_base():
    codec = make_codec("nnc", rel_step=1.0, temporal=True)
    rng = np.random.default_rng(0)
    held = {"w": rng.normal(size=(64, 64)).astype(np.float32)}
    update = {"w": (held["w"] + 0.3 * rng.normal(size=(64, 64))).astype(np.float32)}
    data = codec.encode(update, temporal_reference=held)
    assert nnc_fl.inspect(data).temporal_digest is not None
    assert v.decode_update(codec, data, expect=update, temporal_reference=held)["w"].shape == (64, 64)
    for other in (None, {"w": held["w"] * 2}):
        with _rejected("base"):
            v.decode_update(codec, data, expect=update, temporal_reference=other)
    # a codec without temporal contexts is never handed a reference (its decode does not take one)
    plain = make_codec("fp32")
    assert v.decode_update(plain, plain.encode(update), temporal_reference=held)["w"].shape == (64, 64)
