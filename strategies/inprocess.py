"""A deterministic in-process Flower Grid: the ServerApp's strategy talks to real ClientApps here.

Node ``i`` (id ``NODE_ID_BASE + i``) holds data partition ``i`` and a persistent ``Context``, as a
SuperNode would. Messages are deep-copied in both directions so nothing is shared across the "wire".
Unlike Flower's Ray simulation (random node ids, replies in completion order), node ids, sampling
and reply order are fixed here, so a seeded experiment gives the same bytes and accuracy every run.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

NODE_ID_BASE = 1001


def _ensure_task_identity() -> None:
    """Messages built outside a Flower runtime need a run/node/task identity: set one if unset."""
    try:
        _ = TaskIdentity.run_id  # raises RuntimeError when no runtime has set it
    except RuntimeError:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0


class InProcessGrid(Grid):
    """Route each message to ``app`` with the destination node's own ``Context``."""

    def __init__(
        self, app: ClientApp, num_nodes: int, run_config: dict | None = None, node_id_base: int = NODE_ID_BASE
    ) -> None:
        _ensure_task_identity()
        self.app = app
        self.contexts = {
            node_id_base + i: Context(
                run_id=1,
                node_id=node_id_base + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for i in range(num_nodes)
        }

    def set_run(self, run) -> None:  # not used by Strategy.start
        pass

    @property
    def run(self):  # not used by Strategy.start
        raise NotImplementedError("InProcessGrid has no Run object")

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.contexts)

    def push_messages(self, messages):
        raise NotImplementedError("use send_and_receive")

    def pull_messages(self, message_ids):
        raise NotImplementedError("use send_and_receive")

    def deliver(self, message: Message) -> Message:
        """One round trip to the destination node (deep copies both ways). An exception of the
        ClientApp comes back as an error reply, as Flower's runtime reports it."""
        node = message.metadata.dst_node_id
        try:
            reply = self.app(copy.deepcopy(message), self.contexts[node])
        except Exception as exc:  # noqa: BLE001 -- a node's failure is its reply, not the server's crash
            reason = str(type(exc)) + ":<'" + str(exc) + "'>"
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
        return copy.deepcopy(reply)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        ordered = sorted(messages, key=lambda m: m.metadata.dst_node_id)
        return [self.deliver(m) for m in ordered]
