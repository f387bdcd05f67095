"""The coordinator's own check of every site update before a strategy sees it (defense in
depth behind each site's egress contract: a compromised site skips that)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from coordinator.update_validation import validate_reply

CANARY = "CANARY-Jane-Doe-MRN-123"


def _instruction() -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    arrays = ArrayRecord({"w": Array(np.zeros((2, 3), np.float32))})
    m = Message(RecordDict({"arrays": arrays}), dst_node_id=5, message_type="train")
    m.metadata.__dict__["_message_id"] = "m1"
    return m


def _reply(ins: Message, content: RecordDict) -> Message:
    return Message(content, reply_to=ins)


def _arrays(value: np.ndarray) -> ArrayRecord:
    return ArrayRecord({"w": Array(value)})


@pytest.mark.parametrize(("content", "needle"), [
    (RecordDict({"arrays": _arrays(np.full((2, 3), np.nan, np.float32))}), "non-finite"),
    (RecordDict({"arrays": _arrays(np.zeros((3, 2), np.float32))}), "shape"),
    (RecordDict({"arrays": _arrays(np.zeros((2, 3), np.float64))}), "dtype"),
    (RecordDict({"arrays": ArrayRecord({CANARY: Array(np.zeros((2, 3), np.float32))})}),
     "instruction's tensors"),
    (RecordDict({CANARY: _arrays(np.zeros((2, 3), np.float32))}), "not part of the instruction"),
    (RecordDict({"arrays": _arrays(np.zeros((2, 3), np.float32)),
                 "metrics": MetricRecord({CANARY: float("inf")})}), "not finite"),
])
def test_bad_updates_are_rejected_without_echoing_site_chosen_names(
    content: RecordDict, needle: str
) -> None:
    ins = _instruction()
    reason = validate_reply(ins, _reply(ins, content), max_bytes=1 << 20, reply_bytes=100)
    assert reason is not None and needle in reason
    assert CANARY not in reason


def test_a_good_update_and_an_error_reply_pass_and_size_is_bounded() -> None:
    ins = _instruction()
    good = _reply(ins, RecordDict({"arrays": _arrays(np.ones((2, 3), np.float32))}))
    assert validate_reply(ins, good, max_bytes=1 << 20, reply_bytes=100) is None
    assert validate_reply(ins, Message(Error(code=2, reason="x"), reply_to=ins),
                          max_bytes=1, reply_bytes=100) is None
    assert "exceeds" in (validate_reply(ins, good, max_bytes=10, reply_bytes=100) or "")
