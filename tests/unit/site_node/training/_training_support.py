"""Helpers for the site training runtime tests: hand-built Flower instruction messages."""

from __future__ import annotations

import uuid
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.supercore.task_identity import TaskIdentity

REPO = Path(__file__).resolve().parents[4]
PROBE_APP = REPO / "tests" / "apps" / "runner_probe"
COORDINATOR_NODE = 0


def make_task(
    message_type: str,
    *,
    run_id: int,
    dst_node_id: int,
    content: RecordDict | None = None,
    message_id: str | None = None,
    raw_message_type: str | None = None,
) -> bytes:
    """Serialize an instruction message the way the coordinator's Grid will."""
    # Flower stamps run/src node from the process-global TaskIdentity (DESIGN.md).
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = COORDINATOR_NODE
    TaskIdentity.task_id = 0
    message = Message(
        content if content is not None else RecordDict({"config": ConfigRecord({"x": 1})}),
        dst_node_id=dst_node_id,
        message_type=message_type,
        group_id="1",
    )
    message.metadata.__dict__["_message_id"] = (  # no setter in flwr
        uuid.uuid4().hex if message_id is None else message_id
    )
    proto = message_to_proto(message)
    if raw_message_type is not None:  # what a hostile peer could send; flwr would refuse it
        proto.metadata.message_type = raw_message_type
    return proto.SerializeToString()


def decode(data: bytes) -> Message:
    return message_from_proto(ProtoMessage.FromString(data))
