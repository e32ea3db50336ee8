"""nnc_fl.updates: delta arithmetic in every dtype, and the one error-feedback path."""

from __future__ import annotations

import numpy as np
import pytest

from nnc_fl.updates import apply_delta, cast_like, model_delta


def test_delta_arithmetic_is_exact_for_every_dtype():
    rng = np.random.default_rng(0)
    base = {
        "w": rng.standard_normal((3, 4)).astype(np.float32),
        "h": rng.standard_normal(5).astype(np.float16),
        "n": np.array(7, np.int64),
        "u": np.array([250, 3], np.uint8),
        "m": np.array([True, False, True]),
    }
    new = {
        "w": base["w"] + 1,
        "h": base["h"] * 2,
        "n": np.array(12, np.int64),
        "u": np.array([2, 255], np.uint8),  # wraps modulo 256
        "m": np.array([False, False, True]),
    }
    delta = model_delta(new, base)
    assert {k: v.dtype for k, v in delta.items()} == {k: v.dtype for k, v in base.items()}
    back = apply_delta(base, delta)
    for name in ("n", "u", "m"):
        np.testing.assert_array_equal(back[name], new[name])
    np.testing.assert_allclose(back["w"], new["w"], rtol=1e-6)


def test_cast_like_restores_model_dtypes_and_order():
    ref = {"a": np.zeros(2, np.float32), "n": np.array(0, np.int64), "m": np.zeros(2, bool)}
    agg = {"m": np.array([0.7, 0.2]), "n": np.array(4.6), "a": np.array([1.0, 2.0])}
    out = cast_like(agg, ref)
    assert list(out) == ["a", "n", "m"]
    assert out["a"].dtype == np.float32 and out["n"] == 5 and out["n"].dtype == np.int64
    np.testing.assert_array_equal(out["m"], [True, False])
    with pytest.raises(ValueError, match="names"):
        cast_like({"a": agg["a"]}, ref)
    with pytest.raises(ValueError, match="shape"):
        cast_like({**agg, "a": np.zeros(3)}, ref)
