"""ClientApp: plain Flower train/evaluate functions; ``nnc_mod`` does all the coding."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients import nnc_mod

from . import task

torch.set_num_threads(1)
app = ClientApp(mods=[nnc_mod])


def _model(msg: Message) -> task.Net:
    model = task.Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train on this node's partition; reply with the full trained weights, as in plain Flower."""
    model = _model(msg)
    pid, parts = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    x, y = task.train_data(pid, parts)
    server_round = int(msg.content["config"]["server-round"])
    cfg = context.run_config
    loss = task.train(model, x, y, int(cfg["local-epochs"]), float(cfg["lr"]), seed=1000 * server_round + pid)
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"num-examples": len(y), "train_loss": loss}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the shared test split."""
    loss, acc = task.evaluate(_model(msg), *task.test_data())
    metrics = MetricRecord({"num-examples": len(task.test_data()[1]), "eval_loss": loss, "eval_acc": acc})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
