"""The UC10 / UC14A federation as Flower apps: a ClientApp with ``nnc_mod`` and a server evaluator.

The client functions are plain Flower: they receive the global model as an ``ArrayRecord``, train on
their partition and reply with the full trained weights; ``nnc_mod`` does all the coding. Data and
partitions are loaded once per process (the same in a Ray actor or in-process).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from clients import make_nnc_mod

from .attacks import attack
from .baselines import register_baselines
from .data import ImageDataset, load_dataset
from .models import get_weights, make_model, set_weights
from .partition import dirichlet_partition, iid_partition
from .training import evaluate, torch_threads, train


@dataclass(frozen=True)
class Federation:
    """Everything a node needs to rebuild its data and model: hashable, so it keys the caches."""

    task: str = "uc10"
    source: str = "auto"
    num_clients: int = 10
    partition: str = "iid"  # or "dirichlet"
    alpha: float = 0.5
    seed: int = 0
    n_train: int | None = None  # subsample the training set (None: all)
    n_test: int | None = None
    model: str = "cnn"
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    attack: str = ""  # a hostile client (experiments.attacks), or none
    attacker: int = 0  # the partition whose node runs the attack
    #: training examples the server holds back as its trusted data (ValidationSettings.trusted_loss);
    #: the clients share the rest
    trusted_examples: int = 0


@lru_cache(maxsize=4)
def dataset(fed: Federation) -> ImageDataset:
    """The federation's data set (subsampled as configured), loaded once per process."""
    ds = load_dataset(fed.task, fed.source)
    if fed.n_train is not None or fed.n_test is not None:
        ds = ds.subset(fed.n_train, fed.n_test, seed=fed.seed)
    return ds


def _trusted_split(fed: Federation) -> tuple[np.ndarray, np.ndarray]:
    """``(server, clients)``: index arrays into the training set; the server's ``trusted_examples``
    drawn at random (seeded), the clients' the rest."""
    n = len(dataset(fed).y_train)
    if not 0 <= fed.trusted_examples < n:
        raise ValueError(f"trusted_examples must be in [0, {n}), got {fed.trusted_examples}")
    order = np.random.default_rng([fed.seed, 7]).permutation(n)
    return np.sort(order[: fed.trusted_examples]), np.sort(order[fed.trusted_examples:])


@lru_cache(maxsize=4)
def partitions(fed: Federation) -> tuple[np.ndarray, ...]:
    """Index arrays into the training set, one per client (without the server's trusted examples)."""
    rest = _trusted_split(fed)[1] if fed.trusted_examples else np.arange(len(dataset(fed).y_train))
    y = dataset(fed).y_train[rest]
    if fed.partition == "iid":
        parts = iid_partition(y, fed.num_clients, seed=fed.seed)
    elif fed.partition == "dirichlet":
        parts = dirichlet_partition(y, fed.num_clients, fed.alpha, seed=fed.seed)
    else:
        raise ValueError(f"unknown partition {fed.partition!r}; choose 'iid' or 'dirichlet'")
    return tuple(rest[p] for p in parts)


def initial_model(fed: Federation) -> torch.nn.Module:
    return make_model(fed.model, num_classes=dataset(fed).num_classes, seed=fed.seed)


def baselines_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Register the baseline codecs in the process running the ClientApp (a Ray worker, say), so
    nnc_mod can build them even where the package's entry points are not installed."""
    register_baselines()
    return call_next(msg, context)


def make_client_app(fed: Federation, shared_initial_model: bool = False) -> ClientApp:
    """A ClientApp training on partition ``node_config['partition-id']``, compressed by nnc_mod.

    With ``shared_initial_model`` the node rebuilds the initial model from the federation's seed
    (as if shipped with the app), so the server can start it with increments instead of a keyframe.
    """
    shared = (lambda context: get_weights(initial_model(fed))) if shared_initial_model else None
    app = ClientApp(mods=[baselines_mod, make_nnc_mod(shared_model=shared)])

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        idx = partitions(fed)[pid]
        ds = dataset(fed)
        model = initial_model(fed)
        set_weights(model, {k: a.numpy() for k, a in msg.content["arrays"].items()})
        server_round = int(msg.content["config"]["server-round"]) if "config" in msg.content else 0
        with torch_threads(1):
            result = train(
                model, ds.x_train[idx], ds.y_train[idx], epochs=fed.local_epochs,
                batch_size=fed.batch_size, lr=fed.lr, seed=fed.seed * 100_003 + server_round * 1009 + pid,
            )
        weights = get_weights(model)
        metrics = {"num-examples": len(idx), "train_loss": float(result.epoch_losses[-1])}
        if fed.attack and pid == fed.attacker:
            received = {k: a.numpy() for k, a in msg.content["arrays"].items()}
            weights, metrics = attack(fed.attack)(received, weights, metrics)
        content = RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}),
            "metrics": MetricRecord(metrics),
        })
        return Message(content=content, reply_to=msg)

    return app


def trusted_loss(fed: Federation):
    """``loss(tensors) -> float``: cross-entropy on the server's ``trusted_examples`` (for
    ``ValidationSettings.trusted_loss``)."""
    if not fed.trusted_examples:
        raise ValueError("the federation holds no trusted examples (trusted_examples=0)")
    idx = _trusted_split(fed)[0]

    def loss(tensors) -> float:
        ds = dataset(fed)
        model = initial_model(fed)
        set_weights(model, dict(tensors))
        with torch_threads(1):
            return float(evaluate(model, ds.x_train[idx], ds.y_train[idx])[0])

    return loss


def central_evaluator(fed: Federation):
    """``evaluate_fn(server_round, arrays) -> MetricRecord`` on the held-out test set."""

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        ds = dataset(fed)
        model = initial_model(fed)
        set_weights(model, {k: a.numpy() for k, a in arrays.items()})
        loss, acc = evaluate(model, ds.x_test, ds.y_test)
        return MetricRecord({"test_loss": float(loss), "test_accuracy": float(acc)})

    return evaluate_fn
