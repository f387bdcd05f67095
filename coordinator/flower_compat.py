"""The two private flwr internals a Grid must touch (flwr 1.41), kept in one place.

A contract test runs FedAvg end to end over :class:`coordinator.flower_grid.SessionGrid`,
so an flwr upgrade that moves either of these fails loudly.
"""

from __future__ import annotations

import hashlib

from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = [
    "SUPERLINK_NODE_ID",
    "RunGrid",
    "node_id_for",
    "set_message_id",
    "set_task_identity",
]


class RunGrid(Grid):
    """The part of Flower's Grid every insitu grid shares: the run it serves, and
    instructions built from the process-global TaskIdentity."""

    _run: Run | None = None

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        assert self._run is not None
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)


def set_message_id(message: Message, message_id: str) -> None:
    """Message ids have no setter; flwr's own grids assign the private field too."""
    message.metadata.__dict__["_message_id"] = message_id


def set_task_identity(run_id: int, task_id: int = 1) -> None:
    """TaskIdentity is process-global: set it before the ServerApp builds messages, and
    run one ServerApp per process at a time."""
    TaskIdentity.task_id = task_id
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID


def node_id_for(spiffe_uri: str) -> int:
    """A stable Flower node id from a SPIFFE id (the same across reconnects)."""
    n = int.from_bytes(hashlib.sha256(spiffe_uri.encode()).digest()[:8], "big") & ((1 << 63) - 1)
    return n or 1
