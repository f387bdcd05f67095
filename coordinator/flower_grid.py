"""Flower's ``Grid`` over insitu's mTLS session streams.

The coordinator runs a job's ServerApp (FedAvg, FedProx, FedAdam, robust aggregators,
or a user's own) against this Grid. Instructions go down each approved site's session
stream as chunked Flower protobuf; replies come back the same way, are checked (the
sender must be the stream's authenticated node; the update must fit the global model),
and are handed to the strategy. A site whose stream closes has its outstanding messages
answered at once with NODE_UNAVAILABLE; a hung site is dropped at the round timeout.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode as FlwrErrorCode
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.common.serde_utils import error_from_proto, metadata_from_proto, metadata_to_proto
from flwr.proto.message_pb2 import Metadata as ProtoMetadata
from flwr.proto.node_pb2 import NodeInfo
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from coordinator.flower_compat import RunGrid, set_message_id
from coordinator.sessions import SessionRegistry
from coordinator.update_validation import validate_reply
from insitu._proto.v1 import session_pb2
from insitu.errors import ErrorCode, InsituError
from insitu.rpc.chunks import Assembled, split_message
from insitu.telemetry.tracing import inject_to_dict

__all__ = ["GridEvent", "SessionGrid"]

log = logging.getLogger(__name__)


@dataclass
class GridEvent:
    """What the job log and audit need to know about one exchange."""

    kind: str  # "sent" | "reply" | "rejected" | "unavailable" | "timeout"
    site_id: str
    message_type: str
    group_id: str  # the server round (see round_of)
    detail: str = ""
    reply: Message | None = None
    instruction: Message | None = None  # on "sent"


@dataclass
class _Pending:
    site_id: str
    instruction: Message
    round: str
    sent_at: float = field(default_factory=time.monotonic)


def round_of(msg: Message) -> str:
    """The server round an instruction belongs to: Flower's strategies put it in the
    ConfigRecord (``server-round``); some apps use ``group_id``."""
    if msg.metadata.group_id.isdigit():
        return msg.metadata.group_id
    if msg.has_content():
        for rec in msg.content.config_records.values():
            value = rec.get("server-round")
            if isinstance(value, int):
                return str(value)
    return msg.metadata.group_id


class SessionGrid(RunGrid):
    """A Grid whose nodes are the approved, connected sites of one job."""

    def __init__(
        self,
        job_id: str,
        sites: dict[int, str],
        sessions: SessionRegistry,
        *,
        round_timeout_s: float,
        node_wait_s: float,
        max_update_bytes: int,
        on_event: Callable[[GridEvent], None] | None = None,
    ) -> None:
        self.job_id = job_id
        self._sites = dict(sites)  # node id -> site id
        self._node_of = {s: n for n, s in sites.items()}
        self._sessions = sessions
        self.round_timeout_s = round_timeout_s
        self.node_wait_s = node_wait_s
        self.max_update_bytes = max_update_bytes
        self._on_event = on_event or (lambda e: None)
        self._cv = threading.Condition()
        self._pending: dict[str, _Pending] = {}
        self._replies: dict[str, Message] = {}
        self._starved_since: float | None = None
        # Sites whose current session has (re-)approved the job: a site that reconnects
        # mid-job is asked again and sits out rounds until it answers.
        self._ready: set[str] = set(sites.values())

    # -- Grid API ----------------------------------------------------------------------

    def get_node_ids(self) -> Iterable[int]:
        live = [n for n, s in self._sites.items() if self._connected(s) and s in self._ready]
        # FedAvg waits forever for min_available_nodes; put our own deadline on it, counted
        # from the moment no site is left.
        if not live:
            now = time.monotonic()
            self._starved_since = self._starved_since or now
            if now - self._starved_since > self.node_wait_s:
                raise InsituError(
                    ErrorCode.UNAVAILABLE,
                    f"no approved site connected within {self.node_wait_s:g} s",
                )
        else:
            self._starved_since = None
        return live

    def get_nodes(self) -> Iterable[NodeInfo]:
        return [NodeInfo(node_id=n) for n in self.get_node_ids()]

    def _connected(self, site_id: str) -> bool:
        s = self._sessions.get(site_id)
        return s is not None and not s.closed.is_set()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids: list[str] = []
        batch: list[tuple[str, str, Message, bytes, bytes, str]] = []
        encoded: dict[int, bytes] = {}  # a broadcast's content is serialized once
        messages = list(messages)
        # The whole batch is refused before any of it is pending or sent.
        if any(msg.metadata.dst_node_id not in self._sites for msg in messages):
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "message for a node not in this job")
        for msg in messages:
            site_id = self._sites[msg.metadata.dst_node_id]
            message_id = uuid.uuid4().hex
            set_message_id(msg, message_id)
            content = b""
            if msg.has_content():
                key = id(msg.content)
                if key not in encoded:
                    encoded[key] = recorddict_to_proto(msg.content).SerializeToString()
                content = encoded[key]
            meta = metadata_to_proto(msg.metadata).SerializeToString()
            rnd = round_of(msg)
            with self._cv:
                self._pending[message_id] = _Pending(site_id, msg, rnd)
            ids.append(message_id)
            batch.append((message_id, site_id, msg, meta, content, rnd))
        # Every message of the batch is counted as sent before any can be answered, so a
        # fast reply never makes a round look complete while the rest are still going out.
        for _mid, site_id, msg, _meta, _content, rnd in batch:
            self._on_event(
                GridEvent("sent", site_id, msg.metadata.message_type, rnd, instruction=msg)
            )
        trace = inject_to_dict()
        for message_id, site_id, _msg, meta, content, _rnd in batch:
            session = self._sessions.get(site_id)
            if session is None or session.closed.is_set():
                self._fail(
                    message_id,
                    FlwrErrorCode.NODE_UNAVAILABLE,
                    "site is not connected",
                    "unavailable",
                )
                continue
            for chunk in split_message(self.job_id, message_id, meta, content, None, trace=trace):
                session.outbound.put(session_pb2.CoordinatorMessage(task=chunk))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        with self._cv:
            for mid in message_ids:
                reply = self._replies.pop(mid, None)
                if reply is not None:
                    out.append(reply)
        return out

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        ids = set(self.push_messages(messages))
        limit = self.round_timeout_s if timeout is None else min(timeout, self.round_timeout_s)
        deadline = time.monotonic() + limit
        with self._cv:
            while not ids.issubset(self._replies) and time.monotonic() < deadline:
                self._cv.wait(max(0.0, min(0.5, deadline - time.monotonic())))
            late = [m for m in ids if m not in self._replies]
        for mid in late:  # hung sites are dropped for this round
            self._fail(
                mid, FlwrErrorCode.NODE_UNAVAILABLE, "no reply within the round timeout", "timeout"
            )
        return self.pull_messages(ids)

    # -- replies from sessions --------------------------------------------------------------

    def on_reply(self, site_id: str, assembled: Assembled) -> None:
        """A whole reply arrived on ``site_id``'s authenticated stream."""
        with self._cv:
            pending = self._pending.get(assembled.message_id)
        if pending is None or pending.site_id != site_id:
            log.warning("dropped a reply from %s to a message it was not sent", site_id)
            return
        try:
            meta = ProtoMetadata.FromString(assembled.metadata)
            metadata = metadata_from_proto(meta)
        except Exception:
            self._fail(
                assembled.message_id,
                FlwrErrorCode.MESSAGE_UNAVAILABLE,
                "undecodable reply metadata",
                "rejected",
            )
            return
        if (
            metadata.src_node_id != self._node_of[site_id]
            or metadata.reply_to_message_id != assembled.message_id
        ):
            log.warning("dropped a reply from %s claiming another node or message", site_id)
            self._fail(
                assembled.message_id,
                FlwrErrorCode.MESSAGE_UNAVAILABLE,
                "reply identity mismatch",
                "rejected",
            )
            return
        try:
            if assembled.error is not None:
                from flwr.proto.error_pb2 import Error as ProtoError

                reply = Message(
                    error_from_proto(ProtoError.FromString(assembled.error)),
                    reply_to=pending.instruction,
                )
            else:
                content = recorddict_from_proto(
                    ProtoRecordDict.FromString(assembled.content or b"")
                )
                reply = Message(content, reply_to=pending.instruction)
        except Exception:
            self._fail(
                assembled.message_id,
                FlwrErrorCode.MESSAGE_UNAVAILABLE,
                "undecodable reply content",
                "rejected",
            )
            return
        reason = validate_reply(
            pending.instruction,
            reply,
            max_bytes=self.max_update_bytes,
            reply_bytes=len(assembled.content or b""),
        )
        if reason is not None:
            self._fail(
                assembled.message_id,
                FlwrErrorCode.MESSAGE_UNAVAILABLE,
                f"update rejected: {reason}",
                "rejected",
            )
            return
        # Keep the reply id stable so the strategy can match it.
        set_message_id(reply, uuid.uuid4().hex)
        with self._cv:
            if assembled.message_id in self._pending:
                del self._pending[assembled.message_id]
                self._replies[assembled.message_id] = reply
                self._cv.notify_all()
        # Counted under the instruction's phase, never the type the site wrote.
        self._on_event(GridEvent("reply", site_id, pending.instruction.metadata.message_type,
                                 pending.round, reply=reply))

    def has_node(self, node_id: int) -> bool:
        """Whether ``node_id`` is one of this job's sites."""
        return node_id in self._sites

    def has_site(self, site_id: str) -> bool:
        return site_id in self._node_of

    def set_ready(self, site_id: str, ready: bool) -> None:
        with self._cv:
            if ready:
                self._ready.add(site_id)
            else:
                self._ready.discard(site_id)

    def reject(self, site_id: str, message_id: str, reason: str) -> None:
        """A reply from ``site_id`` to ``message_id`` could not be accepted (e.g. too big)."""
        with self._cv:
            pending = self._pending.get(message_id)
        if pending is not None and pending.site_id == site_id:
            self._fail(
                message_id,
                FlwrErrorCode.MESSAGE_UNAVAILABLE,
                f"update rejected: {reason}",
                "rejected",
            )

    def site_disconnected(self, site_id: str) -> None:
        """Answer everything outstanding for ``site_id`` at once (NODE_UNAVAILABLE)."""
        with self._cv:
            mids = [m for m, p in self._pending.items() if p.site_id == site_id]
        for mid in mids:
            self._fail(mid, FlwrErrorCode.NODE_UNAVAILABLE, "site stream closed", "unavailable")

    def _fail(self, message_id: str, code: int, reason: str, kind: str) -> None:
        with self._cv:
            pending = self._pending.pop(message_id, None)
            if pending is None:
                return
            reply = Message(Error(code=code, reason=reason), reply_to=pending.instruction)
            set_message_id(reply, uuid.uuid4().hex)
            self._replies[message_id] = reply
            self._cv.notify_all()
        meta = pending.instruction.metadata
        self._on_event(
            GridEvent(kind, pending.site_id, meta.message_type, pending.round, detail=reason)
        )
