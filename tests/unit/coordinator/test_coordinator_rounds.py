"""Round bookkeeping at the coordinator: a round is summarized once, with every site's
answer, even when a site answers before the rest of the broadcast has gone out; a site's
error reply names the site and the catalog rule, never the site's own words."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.proto.error_pb2 import Error as ProtoError
from flwr.proto.message_pb2 import Metadata as ProtoMetadata
from flwr.supercore.task_identity import TaskIdentity

from coordinator.flower_grid import SessionGrid
from coordinator.jobs import JobRecord
from coordinator.jobs.rounds import RoundTracker
from insitu._proto.v1 import session_pb2
from insitu.flower.refusals import SiteRefusal
from insitu.rpc.chunks import Assembled

SITES = {101: "hospital-a", 102: "hospital-b", 103: "hospital-c"}


class _AnsweringSession:
    """A site session that answers each instruction at once, on the sender's thread,
    with an error reply: the fastest possible site."""

    def __init__(self, site: str, node: int, grid: list[SessionGrid]) -> None:
        self.site, self.node, self.grid = site, node, grid
        self.closed = threading.Event()
        self.outbound = self

    def put(self, msg: session_pb2.CoordinatorMessage) -> None:
        chunk = msg.task
        if not chunk.last:
            return
        meta = ProtoMetadata(run_id=7, message_id=uuid.uuid4().hex, src_node_id=self.node,
                             reply_to_message_id=chunk.message_id, message_type="train")
        error = ProtoError(code=SiteRefusal.METRIC_KEY_UNDECLARED, reason="CANARY row 1,2,3")
        self.grid[0].on_reply(self.site, Assembled(chunk.job_id, chunk.message_id,
                                                   meta.SerializeToString(), None,
                                                   error.SerializeToString()))


class _Sessions(dict[str, Any]):
    pass


def test_a_round_is_summarized_once_with_every_site_even_when_answers_race_the_broadcast(
) -> None:
    holder: list[SessionGrid] = []
    sessions = _Sessions({s: _AnsweringSession(s, n, holder) for n, s in SITES.items()})
    job = JobRecord("j1", "owner", "0" * 64, b"", [(s, "d") for s in SITES.values()], 1,
                    "fedavg", {}, 1, 60, session_pb2.DpSettings(), "research", "m")
    tracker = RoundTracker(job, threading.Condition(), lambda event, attrs: None)
    grid = SessionGrid("j1", SITES, sessions, round_timeout_s=5, node_wait_s=1,  # type: ignore[arg-type]
                       max_update_bytes=1 << 20, on_event=tracker.on_event)
    holder.append(grid)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1
    content = RecordDict({"config": ConfigRecord({"server-round": 1})})
    grid.push_messages([Message(content, dst_node_id=n, message_type="train") for n in SITES])
    assert len(job.history) == 1, [list(h.sites_failed) for h in job.history]
    summary = job.history[0]
    assert sorted(summary.sites_failed) == sorted(SITES.values()) and not summary.sites_ok
    assert sorted(summary.site_errors) == [f"{s}: metric key not declared"
                                           for s in sorted(SITES.values())]
    assert "CANARY" not in str(summary)
