"""Client partitions: every sample exactly once, no empty client, determinism, Dirichlet label skew."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.partition import (
    dirichlet_partition,
    iid_partition,
    label_counts,
    label_skew,
)


def _labels(n=2000, classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


def _assert_exact_cover(parts, n, min_size=1):
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(n)), "every sample exactly once"
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts), "sorted int64 indices"
    assert min(len(p) for p in parts) >= min_size


def test_iid_partition_is_an_even_exact_cover():
    labels = _labels(1003)
    parts = iid_partition(labels, 10, seed=1)
    _assert_exact_cover(parts, 1003)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_partition_is_deterministic_per_seed():
    labels = _labels(500)
    a, b, c = iid_partition(labels, 5, 3), iid_partition(labels, 5, 3), iid_partition(labels, 5, 4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    classes=st.integers(1, 12),
    clients=st.integers(1, 20),
    alpha=st.sampled_from([0.01, 0.1, 0.5, 1.0, 100.0]),
    seed=st.integers(0, 2**32 - 1),
    min_size=st.integers(1, 5),
)
def test_dirichlet_partition_is_an_exact_cover_with_no_small_client(n, classes, clients, alpha, seed, min_size):
    if clients * min_size > n:
        with pytest.raises(ValueError, match="cannot give"):
            dirichlet_partition(_labels(n, classes, seed % 1000), clients, alpha, seed, min_size=min_size)
        return
    labels = _labels(n, classes, seed % 1000)
    parts = dirichlet_partition(labels, clients, alpha, seed, min_size=min_size)
    assert len(parts) == clients
    _assert_exact_cover(parts, n, min_size)
    again = dirichlet_partition(labels, clients, alpha, seed, min_size=min_size)
    assert all(np.array_equal(x, y) for x, y in zip(parts, again, strict=True))


def test_rebalancing_when_no_draw_satisfies_min_size():
    labels = _labels(100, 10)
    parts = dirichlet_partition(labels, 10, alpha=0.01, seed=0, min_size=8, max_draws=1)
    _assert_exact_cover(parts, 100, min_size=8)


def test_small_alpha_skews_labels_far_more_than_large_alpha():
    labels = _labels(3000)
    skewed = label_skew(labels, dirichlet_partition(labels, 10, alpha=0.1, seed=0))
    near_iid = label_skew(labels, dirichlet_partition(labels, 10, alpha=100.0, seed=0))
    iid = label_skew(labels, iid_partition(labels, 10, seed=0))
    assert skewed > 0.5 and near_iid < 0.15 and iid < 0.15
    assert skewed > 4 * near_iid


def test_small_alpha_gives_each_client_few_dominant_classes():
    labels = _labels(3000)
    counts = label_counts(labels, dirichlet_partition(labels, 10, alpha=0.1, seed=2), 10)
    top2_share = np.sort(counts, axis=1)[:, -2:].sum(axis=1) / counts.sum(axis=1)
    assert np.median(top2_share) > 0.6


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"num_clients": 0}, "positive integer"),
        ({"num_clients": 11}, "cannot give"),
        ({"num_clients": 2, "alpha": 0.0}, "alpha"),
        ({"num_clients": 2, "alpha": float("nan")}, "alpha"),
        ({"num_clients": 2, "min_size": 0}, "min_size"),
    ],
)
def test_bad_arguments_are_named(kwargs, reason):
    labels = np.arange(10) % 3
    with pytest.raises(ValueError, match=reason):
        dirichlet_partition(labels, **{"alpha": 1.0, **kwargs})


def test_labels_must_be_1d_integers():
    with pytest.raises(ValueError, match="integers"):
        iid_partition(np.zeros(5), 2)
    with pytest.raises(ValueError, match="one-dimensional"):
        iid_partition(np.zeros((5, 2), dtype=int), 2)
