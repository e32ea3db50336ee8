"""ValidationSettings.trusted_loss: the server's loss on data it trusts refuses, from the first
round and in a cohort of two, an update that makes the model worse on it."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import recode, run_federation
from flwr.serverapp.strategy import FedAvg

from strategies import CompressedStrategy, ValidationSettings


def _server_loss():
    from nncfl_testapp.task import loss, node_data

    x, y = node_data(99)  # a partition no client holds
    return lambda tensors: loss(tensors, x, y)


def _flip(reply):
    return recode(reply, lambda t: {k: -v if v.dtype.kind == "f" else v for k, v in t.items()})


def _strategy(trusted_loss, tolerance=0.5, nodes=2):
    inner = FedAvg(fraction_evaluate=0.0, min_available_nodes=nodes)
    validation = ValidationSettings(trusted_loss=trusted_loss, trusted_loss_tolerance=tolerance)
    return CompressedStrategy(inner, codec_params={"step": 0.001}, validation=validation)


@pytest.mark.parametrize("size", [2, 3, 5])
def test_a_sign_flipper_is_refused_from_the_first_round_at_any_cohort_size(size, make_grid, initial_arrays):
    trusted = _server_loss()
    clean = _strategy(trusted, nodes=size)
    clean_result, _ = run_federation(clean, make_grid(size), initial_arrays, 4)
    assert all(r["rejected"] == 0 for r in clean.bandwidth)  # honest updates lower the trusted loss

    attacker = 100 + size
    grid = make_grid(size)
    grid.tamper[attacker] = _flip
    strategy = _strategy(trusted, nodes=size)
    result, _ = run_federation(strategy, grid, initial_arrays, 4)
    verdicts = [r["rejected_nodes"] for r in strategy.bandwidth]
    assert verdicts[0] == f"{attacker}:loss"  # the first round: no history needed
    assert all(v in (f"{attacker}:loss", f"{attacker}:direction") for v in verdicts), verdicts  # never an honest node
    final = {k: a.numpy() for k, a in result.arrays.items()}
    initial = trusted({k: a.numpy() for k, a in initial_arrays.items()})
    reference = trusted({k: a.numpy() for k, a in clean_result.arrays.items()})
    assert trusted(final) < reference + 0.1 * (initial - reference)  # the honest nodes' progress

    if size == 2:  # without the check (and the direction check, which needs rounds) it gets through
        inner = FedAvg(fraction_evaluate=0.0, min_available_nodes=2)
        unchecked = CompressedStrategy(inner, codec_params={"step": 0.001},
                                       validation=ValidationSettings(direction_spread=None))
        grid = make_grid(2)
        grid.tamper[attacker] = _flip
        flipped, _ = run_federation(unchecked, grid, initial_arrays, 4)
        assert trusted({k: a.numpy() for k, a in flipped.arrays.items()}) > initial - 0.1 * (initial - reference)


def test_a_loss_function_failing_on_an_update_refuses_it_and_on_the_model_stands_aside(
    make_grid, initial_arrays, caplog
):
    trusted = _server_loss()
    start = trusted({k: a.numpy() for k, a in initial_arrays.items()})

    def picky(tensors):
        value = trusted(tensors)
        if value > 1.5 * start:
            raise RuntimeError("diverged\n[ERROR] forged")
        return value

    grid = make_grid(2)
    grid.tamper[102] = _flip
    strategy = _strategy(picky, tolerance=100.0)
    with caplog.at_level(logging.WARNING):
        run_federation(strategy, grid, initial_arrays, 1)
    assert [r["rejected_nodes"] for r in strategy.bandwidth] == ["102:loss"]
    assert "failed on this update's model (RuntimeError: diverged\\n[ERROR] forged)" in caplog.text  # escaped

    def broken(tensors):
        return float("nan")

    strategy = _strategy(broken)
    with caplog.at_level(logging.WARNING):
        run_federation(strategy, make_grid(2), initial_arrays, 2)
    assert all(r["rejected"] == 0 and r["accepted"] == 2 for r in strategy.bandwidth)
    assert "trusted_loss of the current model failed (loss nan); the check stands aside" in caplog.text


def test_the_loss_function_cannot_write_to_the_models_it_is_shown(make_grid, initial_arrays, caplog):
    trusted = _server_loss()

    def vandal(tensors):
        value = trusted(tensors)
        tensors["fc.weight"][...] = 0.0  # raises: a read-only view
        return value

    strategy = _strategy(vandal)
    with caplog.at_level(logging.WARNING):
        run_federation(strategy, make_grid(2), initial_arrays, 1)  # checks the nodes hold the server's G
    assert "trusted_loss of the current model failed (ValueError: assignment destination is read-only)" in caplog.text
    assert [r["accepted"] for r in strategy.bandwidth] == [2]  # the check stood aside, the round went on
    assert np.any(strategy.model.tensors["fc.weight"] != 0)


def test_the_check_is_off_by_default_and_bounded_below():
    assert ValidationSettings().trusted_loss is None
    for bad in (0, -1.0, float("nan")):
        try:
            ValidationSettings(trusted_loss_tolerance=bad)
        except ValueError as exc:
            assert "trusted_loss_tolerance" in str(exc)
        else:
            raise AssertionError(bad)
    try:
        ValidationSettings(trusted_loss="loss")
    except TypeError as exc:
        assert "callable" in str(exc)
    else:
        raise AssertionError("a string is not a loss function")
    assert np.isfinite(ValidationSettings().trusted_loss_tolerance)
