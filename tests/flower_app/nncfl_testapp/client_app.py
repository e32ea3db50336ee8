"""ClientApp: plain Flower train/evaluate functions, compressed by ``nnc_mod``."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients import nnc_mod
from nnc_fl.fingerprint import fingerprint

from . import task

app = ClientApp(mods=[nnc_mod])


def _heterogeneity(context: Context) -> float:
    return float(context.node_config.get("heterogeneity", 0.3))


def _partition(context: Context) -> int:
    return int(context.node_config.get("partition-id", context.node_id % 1000))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train locally on the received model, return the full trained weights (as plain Flower)."""
    model = {k: a.numpy() for k, a in msg.content["arrays"].items()}
    trained, train_loss = task.train(model, _partition(context), _heterogeneity(context))
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in trained.items()}),
            "metrics": MetricRecord({"num-examples": task.EXAMPLES, "train_loss": train_loss}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on local data; also report its fingerprint (see task.fp_metrics)."""
    model = {k: a.numpy() for k, a in msg.content["arrays"].items()}
    x, y = task.node_data(_partition(context), _heterogeneity(context))
    metrics = MetricRecord(
        {
            "num-examples": task.EXAMPLES,
            "eval_loss": task.loss(model, x, y),
            **task.fp_metrics(fingerprint(model)),
        }
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
