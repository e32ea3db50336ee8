"""Rate control (nnc_fl.rate): the encoder meets a byte budget by scaling every step by one factor."""

import math

import numpy as np
import pytest

import nnc_fl
from nnc_fl import bitstream as bs
from nnc_fl.codecs import NNCCodec, make_codec
from nnc_fl.rate import FINEST_OCTAVES, MAX_EVALS, RTOL, fit_budget
from nnc_fl.steps import relative_step

#: A stream lands within this fraction below its budget (the search stops at RTOL; a little more
#: for the cases where the multiplier is pinned first).
LANDING = 0.03


def _synthetic(seed=0):
    """UC10-CNN-like shapes: conv kernels, an outer-product-structured dense layer, biases, a counter."""
    rng = np.random.default_rng(seed)
    fc = rng.normal(size=(128, 1)) * rng.normal(size=(1, 1600)) * 1e-3 + rng.laplace(scale=2e-4, size=(128, 1600))
    return {
        "conv1.weight": rng.laplace(scale=3e-3, size=(32, 1, 3, 3)).astype(np.float32),
        "conv1.bias": rng.normal(scale=1e-3, size=32).astype(np.float32),
        "conv2.weight": rng.laplace(scale=1e-3, size=(64, 32, 3, 3)).astype(np.float32),
        "fc.weight": fc.astype(np.float32),
        "fc.bias": rng.normal(scale=1e-3, size=128).astype(np.float32),
        "bn.num_batches_tracked": np.array(7),
    }


def _raw(tensors):
    return 4 * sum(int(np.size(v)) for v in tensors.values())


def _real():
    deltas = pytest.importorskip("experiments.deltas")
    return dict(deltas.trained_delta("medium", seed=0))


def _rmse(a, b):
    squares = sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in a)
    return math.sqrt(squares / sum(v.size for v in a.values()))


@pytest.mark.parametrize("source", ["synthetic", "real"])
@pytest.mark.parametrize("fraction", [0.002, 0.005, 0.01, 0.05])
def test_size_lands_just_below_the_budget(source, fraction):
    d = _synthetic() if source == "synthetic" else _real()
    target = int(fraction * _raw(d))
    data, decoded = nnc_fl.encode(d, rel_step=2.0, target_bytes=target, return_decoded=True)
    assert (1 - LANDING) * target <= len(data) <= target
    out = nnc_fl.decode(data)
    assert all(np.array_equal(out[k], decoded[k]) for k in d)


@pytest.mark.parametrize("kw", [{"rd_lambda": 0.05}, {"dq": True, "rd_lambda": 0.05}, {"schema_bound": True},
                                {"rate_search": True, "row_refs": True}, {"qp": -40}, {}])
def test_every_tool_and_step_setting_meets_the_budget(kw):
    d = _synthetic(1)
    target = int(0.01 * _raw(d))
    data = nnc_fl.encode(d, target_bytes=target, **kw)
    assert (1 - LANDING) * target <= len(data) <= target
    nnc_fl.decode(data, expect=d)


def test_deterministic_and_independent_of_threads():
    d = _synthetic(2)
    target = int(0.005 * _raw(d))
    a = nnc_fl.encode(d, rel_step=2.0, target_bytes=target, threads=1)
    assert nnc_fl.encode(d, rel_step=2.0, target_bytes=target, threads=1) == a
    assert nnc_fl.encode(d, rel_step=2.0, target_bytes=target, threads=3) == a


def test_larger_budgets_give_larger_streams_and_finer_steps():
    d = _synthetic(3)
    sizes, steps, errors = [], [], []
    for target in (int(_raw(d) * 0.002 * 1.3**i) for i in range(12)):
        data = nnc_fl.encode(d, rel_step=2.0, target_bytes=target)
        sizes.append(len(data))
        steps.append(nnc_fl.inspect(data).tensor("fc.weight").step)
        errors.append(_rmse(d, nnc_fl.decode(data)))
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert steps == sorted(steps, reverse=True)
    assert errors == sorted(errors, reverse=True)


def test_the_steps_keep_their_ratios():
    """One common multiplier: the step ratios between tensors are those of the reference steps."""
    d = _synthetic(4)
    info = nnc_fl.inspect(nnc_fl.encode(d, rel_step=2.0, target_bytes=int(0.01 * _raw(d))))
    m = [info.tensor(n).step / relative_step(d[n], 2.0) for n in ("conv1.weight", "conv2.weight", "fc.weight")]
    assert max(m) / min(m) == pytest.approx(1.0, rel=1e-6)


def test_tiny_budget_gives_the_smallest_stream():
    d = _synthetic(5)
    data = nnc_fl.encode(d, rel_step=2.0, target_bytes=1)
    info = nnc_fl.inspect(data)
    assert all(t.mode == bs.MODE_ZERO for t in info.tensors if t.dtype.kind == "f")
    zeros = {k: (np.zeros_like(v) if v.dtype.kind == "f" else v) for k, v in d.items()}
    assert len(data) == len(nnc_fl.encode(zeros))
    assert np.array_equal(nnc_fl.decode(data)["bn.num_batches_tracked"], d["bn.num_batches_tracked"])


def test_huge_budget_is_no_worse_than_the_finest_step():
    d = _synthetic(6)
    data = nnc_fl.encode(d, rel_step=2.0, target_bytes=100 * _raw(d))
    out = nnc_fl.decode(data)
    for t in nnc_fl.inspect(data).tensors:
        if t.dtype.kind != "f":
            continue
        finest = relative_step(d[t.name], 2.0) * 2.0**-FINEST_OCTAVES
        if t.mode == bs.MODE_RAW:
            assert np.array_equal(out[t.name], d[t.name])
        else:
            assert t.step <= finest * (1 + 1e-6)
            ulp = float(np.spacing(np.abs(d[t.name]).max()))  # the reconstruction's cast to float32
            assert np.max(np.abs(out[t.name].astype(np.float64) - d[t.name])) <= t.step / 2 + ulp


def test_budget_between_the_extremes_of_a_one_value_tensor():
    d = {"w": np.full((50, 50), 1e-3, np.float32)}
    for target in (1, 60, 200, 10**6):
        data = nnc_fl.encode(d, target_bytes=target)
        assert len(data) <= max(target, len(nnc_fl.encode({"w": np.zeros((50, 50), np.float32)})))


def test_nothing_to_scale_codes_once():
    d = {"n": np.arange(10), "z": np.zeros(5, np.float32), "e": np.ones(3, np.float32)}
    data = nnc_fl.encode(d, target_bytes=10, lossless=["e"])
    out = nnc_fl.decode(data)
    assert all(np.array_equal(out[k], d[k]) for k in d)


def test_grid_steps_are_integer_multiples_and_keep_the_model_on_the_grid():
    d = _synthetic(7)
    grid = {"conv2.weight": 2.0**-14, "fc.weight": 2.0**-15}
    rng = np.random.default_rng(7)
    model = {n: (np.rint(rng.normal(scale=0.05, size=d[n].shape) / g) * g).astype(np.float32) for n, g in grid.items()}
    for fraction in (0.003, 0.01, 0.05):
        target = int(fraction * _raw(d))
        data, decoded = nnc_fl.encode(d, rel_step=2.0, grid=grid, target_bytes=target, return_decoded=True)
        assert len(data) <= target
        info = nnc_fl.inspect(data)
        for name, g in grid.items():
            n = info.tensor(name).step / g
            assert n == int(n) and n >= 1
            moved = model[name] + decoded[name]
            assert np.array_equal(np.rint(moved.astype(np.float64) / g) * g, moved)


def _steps_of(data) -> dict[str, float]:
    return {t.name: t.step for t in nnc_fl.inspect(data).tensors if t.step is not None}


def test_kept_steps_are_used_while_the_stream_lies_within_the_window_below_the_budget():
    d = _synthetic(9)
    target = int(0.01 * _raw(d))
    first = nnc_fl.encode(d, rel_step=2.0, target_bytes=target)
    kept = _steps_of(first)
    used = 0
    for scale in (0.9, 0.95, 0.97, 0.99, 1.0):  # slightly smaller updates: at the kept steps they still fit
        scaled = {n: v * scale if v.dtype.kind == "f" else v for n, v in d.items()}
        at_kept = nnc_fl.encode(scaled, step=kept)
        data = nnc_fl.encode(scaled, rel_step=2.0, target_bytes=target, keep_steps=kept, keep_within=0.2)
        if 0.8 * target <= len(at_kept) <= target:
            assert data == at_kept and _steps_of(data) == kept
            used += 1
        else:  # searched again, for the middle of the window
            assert (0.9 - LANDING) * target <= len(data) <= 0.9 * target
    assert used >= 3
    # a much smaller update lands far below the budget at the kept steps: searched again, finer
    small = {n: v * 0.5 if v.dtype.kind == "f" else v for n, v in d.items()}
    data = nnc_fl.encode(small, rel_step=2.0, target_bytes=target, keep_steps=kept, keep_within=0.2)
    assert (0.9 - LANDING) * target <= len(data) <= 0.9 * target
    assert all(_steps_of(data)[n] < kept[n] for n in kept)
    # and a larger one would exceed it: searched again, coarser, within the budget
    big = {n: v * 1.5 if v.dtype.kind == "f" else v for n, v in d.items()}
    data = nnc_fl.encode(big, rel_step=2.0, target_bytes=target, keep_steps=kept, keep_within=0.2)
    assert (0.9 - LANDING) * target <= len(data) <= 0.9 * target
    assert all(_steps_of(data)[n] > kept[n] for n in kept)


def test_a_tensor_without_a_kept_step_takes_the_others_median_ratio():
    d = _synthetic(10)
    target = int(0.01 * _raw(d))
    kept = _steps_of(nnc_fl.encode(d, rel_step=2.0, rel_to="update", target_bytes=target))
    partial = {n: s for n, s in kept.items() if n != "fc.bias"}
    full = nnc_fl.encode(d, rel_step=2.0, rel_to="update", target_bytes=target, keep_steps=kept, keep_within=0.5)
    again = nnc_fl.encode(d, rel_step=2.0, rel_to="update", target_bytes=target, keep_steps=partial, keep_within=0.5)
    assert again == full  # one step per update: the median ratio restores the missing tensor's step


def test_kept_steps_far_too_fine_for_the_update_are_searched_instead():
    d = _synthetic(12)
    target = int(0.01 * _raw(d))
    tiny = {n: 1e-30 for n in ("conv1.weight", "conv1.bias", "conv2.weight", "fc.weight", "fc.bias")}
    data = nnc_fl.encode(d, rel_step=2.0, target_bytes=target, keep_steps=tiny, keep_within=0.5)
    assert data == nnc_fl.encode(d, rel_step=2.0, target_bytes=target)  # ignored: the search as without them


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"keep_steps": {"fc.weight": 1e-3}}, ValueError),  # without a budget
        ({"target_bytes": 500, "keep_steps": [1e-3]}, TypeError),
        ({"target_bytes": 500, "keep_steps": {"fc.weight": 0.0}}, ValueError),
        ({"target_bytes": 500, "keep_steps": {"fc.weight": float("nan")}}, ValueError),
        ({"target_bytes": 500, "keep_steps": {"fc.weight": "1e-3"}}, ValueError),
        ({"target_bytes": 500, "keep_steps": {"fc.weight": 1e-3}, "keep_within": 1.0}, ValueError),
        ({"target_bytes": 500, "keep_steps": {"fc.weight": 1e-3}, "keep_within": 0}, ValueError),
        ({"target_bytes": 500, "keep_within": float("nan")}, ValueError),  # checked without steps too
        ({"keep_within": 2}, ValueError),
    ],
)
def test_bad_kept_steps_are_refused(kwargs, error):
    with pytest.raises(error):
        nnc_fl.encode(_synthetic(), **kwargs)


def test_codec_keeps_steps_only_with_a_budget_and_a_window():
    d = _synthetic(11)
    with pytest.raises(ValueError, match="keep_within"):
        NNCCodec(keep_within=1.0)
    codec = make_codec("nnc", rel_step=2.0, target_fraction=0.01, keep_within=0.25)
    assert codec.params() == {"rel_step": 2.0, "target_fraction": 0.01, "keep_within": 0.25}
    assert make_codec("nnc", **codec.params()).params() == codec.params()
    kept = _steps_of(codec.encode(d))
    off = make_codec("nnc", rel_step=2.0, target_fraction=0.01)
    scaled = {n: v * 0.98 if v.dtype.kind == "f" else v for n, v in d.items()}
    assert off.encode(scaled, keep_steps=kept) == off.encode(scaled)  # keep_within=0: not used
    unbudgeted = make_codec("nnc", rel_step=2.0, keep_within=0.25)
    assert unbudgeted.encode(scaled, keep_steps=kept) == unbudgeted.encode(scaled)


@pytest.mark.parametrize("bad", [0, -5, 1.5, 100.0, True, "100"])
def test_bad_byte_budgets_are_refused(bad):
    with pytest.raises((TypeError, ValueError)):
        nnc_fl.encode(_synthetic(), target_bytes=bad)


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, 1.5, -0.1, float("nan"), float("inf"), True, "0.01"])
def test_bad_fractions_are_refused(bad):
    with pytest.raises((TypeError, ValueError)):
        NNCCodec(target_fraction=bad)
    with pytest.raises(ValueError):
        make_codec("nnc", target_fraction=bad)


def test_non_finite_tensors_are_still_refused():
    d = _synthetic()
    d["fc.bias"] = d["fc.bias"].copy()
    d["fc.bias"][3] = np.nan
    with pytest.raises(ValueError, match=r"fc\.bias"):
        nnc_fl.encode(d, target_bytes=1000)


def test_codec_budget_as_fraction_or_bytes():
    d = _synthetic(8)
    with pytest.raises(ValueError):
        NNCCodec(target_bytes=100, target_fraction=0.01)
    codec = make_codec("nnc", rel_step=2.0, target_fraction=0.01)
    assert codec.params() == {"rel_step": 2.0, "target_fraction": 0.01}
    assert make_codec("nnc", **codec.params()).params() == codec.params()
    data, decoded = codec.encode_decoded(d)
    assert (1 - LANDING) * 0.01 * _raw(d) <= len(data) <= 0.01 * _raw(d)
    assert all(np.array_equal(decoded[k], v) for k, v in codec.decode(data).items())
    by_bytes = make_codec("nnc", rel_step=2.0, target_bytes=len(data))
    assert len(by_bytes.encode(d)) <= len(data)
    exact = codec.encode(d, exact=True)  # keyframes: exact whatever the budget
    assert all(np.array_equal(v, d[k]) for k, v in codec.decode(exact).items())


# -- the search itself -------------------------------------------------------------------------


def _counting(fn):
    calls = []

    def size_of(e):
        calls.append(e)
        return fn(e), e

    return size_of, calls


@pytest.mark.parametrize("target", [1, 10, 1000, 12345, 10**6, 10**9])
def test_fit_budget_on_a_smooth_curve(target):
    size_of, calls = _counting(lambda e: int(1e5 * 2.0 ** (-1.7 * e)) + 20)
    fit = fit_budget(size_of, target, -16, 20)
    assert fit.evals == len(calls) <= MAX_EVALS
    if target < 20 + 1:  # below the floor: the coarsest point
        assert fit.e == 20 and fit.size > target
    elif target >= 1e5 * 2**(1.7 * 16):  # above the ceiling: the finest point
        assert fit.e == -16
    else:
        assert (1 - RTOL) * target <= fit.size <= target or fit.size <= target
        assert fit.size <= target


def test_fit_budget_on_a_staircase_terminates_on_the_finest_fitting_stair():
    def stairs(e):
        return 1000 * 2 ** -math.floor(e)  # one size per octave

    size_of, calls = _counting(stairs)
    fit = fit_budget(size_of, 700, -16, 16)
    assert fit.size == 500 and 0 < fit.e <= 1 + 2**-9
    assert len(calls) <= MAX_EVALS


@pytest.mark.parametrize("width", [0.25, 0.6, 1.0, 3.0])
def test_fit_budget_crosses_a_wide_stair_just_above_the_budget(width):
    """A budget a hair below the size at the start, on stairs wider than creeping steps cover (an
    increment's steps near its anchor grid): the search must still come back within the budget."""
    size_of, calls = _counting(lambda e: int(1000 * 2.0 ** -math.floor(e / width)))
    fit = fit_budget(size_of, 998, -16, 16)
    assert fit.size <= 998 and len(calls) <= MAX_EVALS + 1


def test_fit_budget_falls_back_to_the_coarsest_point_when_out_of_codings():
    size_of, calls = _counting(lambda e: 10 if e >= 15 else 1000)
    fit = fit_budget(size_of, 500, -16, 16, max_evals=3)
    assert fit.size == 10 and fit.e == 16 and len(calls) == 4


def test_fit_budget_never_returns_an_oversized_point_when_one_fits():
    rng = np.random.default_rng(0)
    noise = {}

    def bumpy(e):  # falling with local bumps
        return int(1e4 * 2.0**-e * (1 + 0.2 * noise.setdefault(e, rng.random())))

    for target in (300, 3000, 9000, 30000):
        fit = fit_budget(lambda e: (bumpy(e), None), target, -8, 12)
        assert fit.size <= target


def test_fit_budget_refuses_an_empty_interval():
    with pytest.raises(ValueError):
        fit_budget(lambda e: (1, None), 10, 1.0, 0.0)
