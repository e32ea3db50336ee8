"""Trained deltas for the codec benchmark: promised sizes, real training signal, determinism, cache."""

import itertools
import time

import numpy as np
import pytest

from experiments.deltas import DELTA_LAYERS, delta_num_params, trained_delta

SIZES = {"small": 6_010, "medium": 105_546, "large": 1_126_410}


@pytest.mark.parametrize("size, params", SIZES.items())
def test_delta_sizes_and_layout(size, params):
    start = time.perf_counter()
    delta = trained_delta(size)
    assert time.perf_counter() - start < 20.0
    assert delta_num_params(size) == params == sum(v.size for v in delta.values())
    layers = DELTA_LAYERS[size]
    expected = []
    for i, (a, b) in enumerate(itertools.pairwise(layers)):
        expected += [(f"net.{2 * i}.weight", (b, a)), (f"net.{2 * i}.bias", (b,))]
    assert [(k, v.shape) for k, v in delta.items()] == expected
    assert all(v.dtype == np.float32 and np.all(np.isfinite(v)) for v in delta.values())


def test_size_thresholds():
    assert 5_000 < SIZES["small"] < 7_000 and SIZES["medium"] >= 100_000 and SIZES["large"] >= 1_000_000


@pytest.mark.parametrize("size", ["small", "medium"])
def test_delta_is_a_real_training_update(size):
    delta = trained_delta(size)
    flat = np.concatenate([v.ravel() for v in delta.values()])
    # digits pixels that are always 0 get no gradient, so some input weights stay exactly unchanged
    assert np.count_nonzero(flat) > 0.7 * flat.size
    rms = float(np.sqrt(np.mean(flat.astype(np.float64) ** 2)))
    assert 1e-5 < rms < 0.1  # one local epoch: small, non-trivial steps
    assert np.abs(flat).max() > 5 * rms and np.mean(np.abs(flat)) < 0.7 * rms  # heavier-tailed than a Gaussian


def test_deltas_are_deterministic_and_returned_as_fresh_copies():
    a = trained_delta("small", seed=1)
    a["net.0.weight"][:] = 0.0
    b = trained_delta("small", seed=1)
    assert np.any(b["net.0.weight"] != 0.0) and b["net.0.weight"].flags.writeable
    c = trained_delta("small", seed=2)
    assert not np.array_equal(b["net.0.weight"], c["net.0.weight"])


def test_deltas_recompute_identically():
    from experiments import deltas

    cached = trained_delta("small", seed=0)
    recomputed = deltas._delta.__wrapped__("small", 0)
    assert all(np.array_equal(cached[k], v) for k, v in recomputed)


def test_unknown_size():
    with pytest.raises(ValueError, match="unknown delta size"):
        trained_delta("huge")
