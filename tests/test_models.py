"""Models, weight transfer and training: parameter counts, determinism, training that learns."""

from collections import OrderedDict

import numpy as np
import pytest
import torch

from experiments.data import load_uc10, load_uc14a
from experiments.models import (
    MLP,
    count_parameters,
    get_weights,
    make_model,
    set_weights,
)
from experiments.training import evaluate, torch_threads, train


@pytest.mark.parametrize(
    "kind, classes, params",
    [("cnn", 10, 151_466), ("cnn", 2, 150_690), ("cnn-bn", 10, 151_658), ("cnn-bn", 2, 150_882)],
)
def test_cnn_parameter_counts(kind, classes, params):
    model = make_model(kind, classes)
    assert count_parameters(model) == params >= 100_000
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, classes)


def test_the_transformer_has_layernorms_and_attention():
    model = make_model("vit", 10)
    names = list(get_weights(model))
    assert count_parameters(model) == 72_074 and model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert any("self_attn.in_proj_weight" in n for n in names) and any(n.endswith("norm1.weight") for n in names)


def test_batchnorm_variant_has_integer_buffers():
    weights = get_weights(make_model("cnn-bn", 10))
    ints = [k for k, v in weights.items() if v.dtype == np.int64]
    assert ints == ["bn1.num_batches_tracked", "bn2.num_batches_tracked"]
    assert sum(v.size for v in weights.values()) == 151_658 + 194


def test_init_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = (get_weights(make_model("cnn", 10, seed=s)) for s in (5, 5, 6))
    assert torch.rand(1) == before
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])


def test_weights_round_trip_in_state_dict_order():
    model = make_model("cnn-bn", 2, seed=1)
    weights = get_weights(model)
    assert list(weights) == list(model.state_dict())
    weights["fc2.bias"][:] = 7.0  # a copy: the model is unchanged
    assert not torch.all(model.fc2.bias == 7.0)
    other = make_model("cnn-bn", 2, seed=2)
    set_weights(other, weights)
    assert all(np.array_equal(v, get_weights(other)[k]) for k, v in weights.items())


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda w: w.pop("fc2.bias"), "missing"),
        (lambda w: w.__setitem__("extra", np.zeros(1, np.float32)), "unexpected"),
        (lambda w: w.__setitem__("fc2.bias", np.zeros(3, np.float32)), "shape"),
        (lambda w: w.__setitem__("fc2.bias", np.zeros(10, np.float64)), "dtype"),
    ],
)
def test_set_weights_names_the_mismatch(edit, reason):
    model = make_model("cnn", 10)
    weights = OrderedDict(get_weights(model))
    edit(weights)
    with pytest.raises(ValueError, match=reason):
        set_weights(model, weights)


def test_mlp_and_bad_kinds():
    model = make_model("mlp", 10, sizes=(64, 80, 10))
    assert isinstance(model, MLP) and count_parameters(model) == 6010
    with pytest.raises(ValueError, match="unknown model kind"):
        make_model("resnet")
    with pytest.raises(ValueError, match="num_classes"):
        make_model("mlp", 2, sizes=(64, 10))


def test_training_improves_accuracy_and_is_deterministic():
    ds = load_uc10("digits").subset(400, 200, seed=0)
    results = []
    with torch_threads(1):
        for _ in range(2):
            model = make_model("cnn", 10, seed=0)
            _, acc0 = evaluate(model, ds.x_test, ds.y_test)
            run = train(model, ds.x_train, ds.y_train, epochs=2, batch_size=32, lr=0.05, seed=0)
            _, acc1 = evaluate(model, ds.x_test, ds.y_test)
            results.append((get_weights(model), acc1))
    assert acc0 < 0.3 and acc1 > 0.6
    assert run.num_examples == 400 and run.num_steps == 2 * 13 and run.epoch_losses[1] < run.epoch_losses[0]
    assert all(np.array_equal(results[0][0][k], results[1][0][k]) for k in results[0][0])


def test_training_on_the_medical_task_beats_chance():
    ds = load_uc14a().subset(400, 200, seed=0)
    model = make_model("cnn-bn", 2, seed=0)
    with torch_threads(1):
        train(model, ds.x_train, ds.y_train, epochs=3, batch_size=32, lr=0.05, seed=0, optimizer="adam")
        loss, acc = evaluate(model, ds.x_test, ds.y_test)
    assert acc > 0.65 and np.isfinite(loss)
    assert get_weights(model)["bn1.num_batches_tracked"] == 3 * 13


def test_evaluate_restores_mode_and_checks_inputs():
    model = make_model("cnn", 10)
    model.train()
    evaluate(model, np.zeros((2, 1, 28, 28), np.float32), np.zeros(2, np.int64))
    assert model.training
    with pytest.raises(ValueError, match="samples"):
        evaluate(model, np.zeros((2, 1, 28, 28), np.float32), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="optimizer"):
        train(model, np.zeros((2, 1, 28, 28), np.float32), np.zeros(2, np.int64), optimizer="rmsprop")
