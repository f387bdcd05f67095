"""Flower's Grid over site session streams: instructions go out chunked on the right
site's stream, every instruction is answered (by the site, by a rejection, at once when
the site is gone, or at the round timeout), and a reply is taken only from the site it
was sent to, for the node that site is."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode as FlwrErrorCode
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.common.serde_utils import metadata_from_proto
from flwr.proto.error_pb2 import Error as ProtoError
from flwr.proto.message_pb2 import Metadata as ProtoMetadata
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from coordinator.flower_compat import set_task_identity
from coordinator.flower_grid import GridEvent, SessionGrid, round_of
from coordinator.sessions import Session, SessionRegistry
from insitu._proto.v1 import session_pb2
from insitu.errors import ErrorCode, InsituError
from insitu.rpc.chunks import CHUNK_BYTES, Assembled, Reassembler

RUN_ID = 7
A, B, C = "hospital-a", "hospital-b", "hospital-c"
NODES = {101: A, 102: B, 103: C}
NODE = {s: n for n, s in NODES.items()}


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    set_task_identity(RUN_ID)  # messages take their run and source node from it


@pytest.fixture
def registry() -> SessionRegistry:
    return SessionRegistry()


@pytest.fixture
def events() -> list[GridEvent]:
    return []


def _connect(registry: SessionRegistry, *sites: str) -> dict[str, Session]:
    return {s: registry.open(s, 1, datetime.now(UTC) + timedelta(days=1)) for s in sites}


def _grid(
    registry: SessionRegistry,
    events: list[GridEvent],
    sites: dict[int, str] | None = None,
    **kw: float,
) -> SessionGrid:
    return SessionGrid(
        "job-1",
        NODES if sites is None else sites,
        registry,
        round_timeout_s=kw.get("round_timeout_s", 5.0),
        node_wait_s=kw.get("node_wait_s", 5.0),
        max_update_bytes=int(kw.get("max_update_bytes", 64 << 20)),
        on_event=events.append,
    )


def _weights(n: int = 6) -> np.ndarray:
    return np.arange(n, dtype=np.float32)


def _train(site: str, rnd: int = 1, weights: np.ndarray | None = None) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(_weights() if weights is None else weights)}),
            "config": ConfigRecord({"server-round": rnd}),
        }
    )
    return Message(content, dst_node_id=NODE[site], message_type="train")


def _drain(session: Session) -> list[session_pb2.CoordinatorMessage]:
    out = []
    while not session.outbound.empty():
        out.append(session.outbound.get_nowait())
    return out


def _assemble(session: Session) -> list[Assembled]:
    """What the site's end of the stream puts back together from its outbound."""
    ra = Reassembler(1 << 30)
    done = []
    for m in _drain(session):
        assert m.WhichOneof("body") == "task"
        got = ra.add(m.task)
        if got is not None:
            done.append(got)
    return done


def _reply(
    message_id: str,
    *,
    node: int,
    reply_to: str | None = None,
    content: RecordDict | None = None,
    error: ProtoError | None = None,
    message_type: str = "train",
) -> Assembled:
    """A reply as a site sends it: its own node as the source, the instruction's id."""
    meta = ProtoMetadata(
        run_id=RUN_ID,
        message_id=uuid.uuid4().hex,
        src_node_id=node,
        reply_to_message_id=message_id if reply_to is None else reply_to,
        message_type=message_type,
    )
    if error is not None:
        return Assembled(
            "job-1", message_id, meta.SerializeToString(), None, error.SerializeToString()
        )
    if content is None:
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(_weights() + 1)}),
                "metrics": MetricRecord({"num-examples": 10, "loss": 0.25}),
            }
        )
    return Assembled(
        "job-1",
        message_id,
        meta.SerializeToString(),
        recorddict_to_proto(content).SerializeToString(),
        None,
    )


def _kinds(events: list[GridEvent]) -> list[tuple[str, str]]:
    return [(e.kind, e.site_id) for e in events]


# -- sending ----------------------------------------------------------------------------


def test_each_instruction_goes_chunked_to_its_own_site_s_stream(
    registry: SessionRegistry, events: list[GridEvent]
) -> None:
    sessions = _connect(registry, A, B, C)
    grid = _grid(registry, events)
    big = np.arange(CHUNK_BYTES // 2, dtype=np.float32)  # 2 MiB of content: several chunks
    msgs = [_train(A, weights=big), _train(B)]
    ids = list(grid.push_messages(msgs))
    assert len(set(ids)) == 2
    assert sessions[C].outbound.empty()

    raw_a = _drain(sessions[A])
    assert len(raw_a) > 1
    assert [m.task.seq for m in raw_a] == list(range(len(raw_a)))
    assert [m.task.last for m in raw_a] == [False] * (len(raw_a) - 1) + [True]
    assert {(m.task.job_id, m.task.message_id) for m in raw_a} == {("job-1", ids[0])}
    for m in raw_a:
        sessions[A].outbound.put(m)

    for site, mid, expected in ((A, ids[0], big), (B, ids[1], _weights())):
        [got] = _assemble(sessions[site])
        assert got.message_id == mid and got.error is None
        meta = metadata_from_proto(ProtoMetadata.FromString(got.metadata))
        assert (meta.message_id, meta.dst_node_id, meta.run_id) == (mid, NODE[site], RUN_ID)
        assert meta.message_type == "train"
        content = recorddict_from_proto(ProtoRecordDict.FromString(got.content or b""))
        np.testing.assert_array_equal(content.array_records["arrays"]["w"].numpy(), expected)
        assert content.config_records["config"]["server-round"] == 1
    # The instruction itself now carries the id it went out with.
    assert [m.metadata.message_id for m in msgs] == ids


def test_a_broadcast_of_one_content_reaches_every_site(
    registry: SessionRegistry, events: list[GridEvent]
) -> None:
    sessions = _connect(registry, A, B)
    grid = _grid(registry, events, {101: A, 102: B})
    content = RecordDict({"arrays": ArrayRecord({"w": Array(_weights())})})
    ids = list(
        grid.push_messages(
            [Message(content, dst_node_id=NODE[s], message_type="train") for s in (A, B)]
        )
    )
    for site, mid in zip((A, B), ids, strict=True):
        [got] = _assemble(sessions[site])
        assert got.message_id == mid
        back = recorddict_from_proto(ProtoRecordDict.FromString(got.content or b""))
        np.testing.assert_array_equal(back.array_records["arrays"]["w"].numpy(), _weights())


def test_a_message_for_a_node_outside_the_job_is_refused(
    registry: SessionRegistry, events: list[GridEvent]
) -> None:
    sessions = _connect(registry, A)
    grid = _grid(registry, events, {101: A})
    with pytest.raises(InsituError) as err:
        grid.push_messages([Message(RecordDict(), dst_node_id=999, message_type="train")])
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert sessions[A].outbound.empty() and events == []


def test_a_refused_batch_leaves_nothing_pending(
    registry: SessionRegistry, events: list[GridEvent]
) -> None:
    sessions = _connect(registry, A)
    grid = _grid(registry, events, {101: A})
    with pytest.raises(InsituError):
        grid.push_messages(
            [_train(A), Message(RecordDict(), dst_node_id=999, message_type="train")]
        )
    assert sessions[A].outbound.empty()
    grid.site_disconnected(A)
    assert events == []


@pytest.mark.parametrize("how", ["never connected", "stream closed"])
def test_an_unconnected_site_is_answered_at_once(
    registry: SessionRegistry, events: list[GridEvent], how: str
) -> None:
    sessions = _connect(registry, A, B)
    if how == "stream closed":
        sessions[B].close("gone")
    else:
        registry.remove(sessions[B])
    grid = _grid(registry, events, {101: A, 102: B})
    ids = list(grid.push_messages([_train(A), _train(B)]))
    # Every message is counted as sent before any is answered.
    assert _kinds(events) == [("sent", A), ("sent", B), ("unavailable", B)]
    assert events[2].detail == "site is not connected"
    assert list(grid.pull_messages([ids[0]])) == []  # A has not answered yet
    [reply] = grid.pull_messages([ids[1]])
    assert reply.has_error() and reply.error.code == FlwrErrorCode.NODE_UNAVAILABLE
    assert reply.metadata.reply_to_message_id == ids[1]
    assert reply.metadata.src_node_id == NODE[B]
    assert len(_assemble(sessions[A])) == 1


def test_sent_events_carry_the_instruction_and_its_round(
    registry: SessionRegistry, events: list[GridEvent]
) -> None:
    _connect(registry, A, B)
    grid = _grid(registry, events, {101: A, 102: B})
    msgs = [
        _train(A, rnd=3),
        Message(RecordDict(), dst_node_id=NODE[B], message_type="evaluate", group_id="4"),
    ]
    grid.push_messages(msgs)
    assert [(e.kind, e.site_id, e.message_type, e.group_id) for e in events] == [
        ("sent", A, "train", "3"),
        ("sent", B, "evaluate", "4"),
    ]
    assert [e.instruction for e in events] == msgs
    assert all(e.reply is None for e in events)


def test_round_of() -> None:
    cfg = RecordDict({"config": ConfigRecord({"server-round": 5})})
    assert round_of(Message(cfg, dst_node_id=1, message_type="train")) == "5"
    assert round_of(Message(cfg, dst_node_id=1, message_type="train", group_id="9")) == "9"
    assert (
        round_of(Message(RecordDict(), dst_node_id=1, message_type="train", group_id="warmup"))
        == "warmup"
    )


# -- replies --------------------------------------------------------------------------


def test_a_valid_reply_is_delivered_once(
    registry: SessionRegistry, events: list[GridEvent]
) -> None:
    _connect(registry, A)
    grid = _grid(registry, events, {101: A})
    [mid] = grid.push_messages([_train(A, rnd=2)])
    assert list(grid.pull_messages([mid])) == []
    grid.on_reply(A, _reply(mid, node=NODE[A]))
    assert [(e.kind, e.site_id, e.message_type, e.group_id) for e in events] == [
        ("sent", A, "train", "2"),
        ("reply", A, "train", "2"),
    ]
    [reply] = grid.pull_messages([mid])
    assert events[1].reply is reply
    assert not reply.has_error()
    assert reply.metadata.reply_to_message_id == mid
    assert reply.metadata.src_node_id == NODE[A]
    assert reply.metadata.message_id and reply.metadata.message_id != mid
    np.testing.assert_array_equal(
        reply.content.array_records["arrays"]["w"].numpy(), _weights() + 1
    )
    assert reply.content.metric_records["metrics"]["loss"] == 0.25
    assert list(grid.pull_messages([mid])) == []  # handed over once
    grid.on_reply(A, _reply(mid, node=NODE[A]))  # a duplicate is dropped
    assert len(events) == 2 and list(grid.pull_messages([mid])) == []


def test_a_site_s_error_reply_is_delivered_as_its_error(
    registry: SessionRegistry, events: list[GridEvent]
) -> None:
    _connect(registry, A)
    grid = _grid(registry, events, {101: A})
    [mid] = grid.push_messages([_train(A)])
    grid.on_reply(A, _reply(mid, node=NODE[A], error=ProtoError(code=42, reason="nope")))
    [reply] = grid.pull_messages([mid])
    assert reply.has_error() and reply.error.code == 42
    assert _kinds(events) == [("sent", A), ("reply", A)]


@pytest.mark.parametrize("case", ["wrong site", "unknown message"])
def test_a_reply_to_a_message_the_site_was_not_sent_is_dropped(
    registry: SessionRegistry, events: list[GridEvent], case: str
) -> None:
    _connect(registry, A, B)
    grid = _grid(registry, events, {101: A, 102: B})
    [mid] = grid.push_messages([_train(A)])
    if case == "wrong site":
        grid.on_reply(B, _reply(mid, node=NODE[B]))
    else:
        grid.on_reply(A, _reply("f" * 32, node=NODE[A]))
    assert _kinds(events) == [("sent", A)]
    assert list(grid.pull_messages([mid])) == []
    # The instruction is still A's to answer.
    grid.on_reply(A, _reply(mid, node=NODE[A]))
    [reply] = grid.pull_messages([mid])
    assert not reply.has_error()


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("claims another node", "reply identity mismatch"),
        ("answers another message", "reply identity mismatch"),
        ("undecodable metadata", "undecodable reply metadata"),
        ("undecodable content", "undecodable reply content"),
        ("wrong shape", "update rejected: arrays.w: shape (3,) != (6,)"),
        ("too big", "update rejected: update of"),
    ],
)
def test_a_bad_reply_is_rejected_and_answers_the_instruction(
    registry: SessionRegistry, events: list[GridEvent], case: str, detail: str
) -> None:
    _connect(registry, A, B)
    grid = _grid(
        registry, events, {101: A, 102: B}, max_update_bytes=64 if case == "too big" else 64 << 20
    )
    [mid] = grid.push_messages([_train(A)])
    good = _reply(mid, node=NODE[A])
    bad = {
        "claims another node": _reply(mid, node=NODE[B]),
        "answers another message": _reply(mid, node=NODE[A], reply_to="0" * 32),
        "undecodable metadata": Assembled("job-1", mid, b"\xff\xff\xff", good.content, None),
        "undecodable content": Assembled("job-1", mid, good.metadata, b"\xff\xff\xff", None),
        "wrong shape": _reply(
            mid,
            node=NODE[A],
            content=RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(3, np.float32))})}),
        ),
        "too big": good,
    }[case]
    grid.on_reply(A, bad)
    assert _kinds(events) == [("sent", A), ("rejected", A)]
    assert events[1].detail.startswith(detail)
    [reply] = grid.pull_messages([mid])
    assert reply.has_error() and reply.error.code == FlwrErrorCode.MESSAGE_UNAVAILABLE
    assert reply.error.reason.startswith(detail)
    grid.on_reply(A, good)  # too late: the instruction was answered
    assert len(events) == 2 and list(grid.pull_messages([mid])) == []


def test_a_reply_is_counted_under_the_instruction_s_phase(
    registry: SessionRegistry, events: list[GridEvent]
) -> None:
    _connect(registry, A)
    grid = _grid(registry, events, {101: A})
    [mid] = grid.push_messages([_train(A)])
    grid.on_reply(A, _reply(mid, node=NODE[A], message_type="evaluate"))
    # Counted as the train reply it answers (or rejected as one): never as an evaluate.
    assert [e.message_type for e in events] == ["train", "train"]


def test_reject_answers_only_the_site_s_own_instruction(
    registry: SessionRegistry, events: list[GridEvent]
) -> None:
    _connect(registry, A, B)
    grid = _grid(registry, events, {101: A, 102: B})
    [mid] = grid.push_messages([_train(A)])
    grid.reject(B, mid, "not yours")
    grid.reject(A, "f" * 32, "unknown")
    assert _kinds(events) == [("sent", A)]
    grid.reject(A, mid, "message of 9 bytes exceeds 1")
    assert _kinds(events) == [("sent", A), ("rejected", A)]
    [reply] = grid.pull_messages([mid])
    assert reply.error.code == FlwrErrorCode.MESSAGE_UNAVAILABLE
    assert reply.error.reason == "update rejected: message of 9 bytes exceeds 1"


def test_a_closed_stream_answers_everything_outstanding_for_its_site(
    registry: SessionRegistry, events: list[GridEvent]
) -> None:
    _connect(registry, A, B)
    grid = _grid(registry, events, {101: A, 102: B})
    ids = list(grid.push_messages([_train(A), _train(B), _train(A, rnd=2)]))
    grid.site_disconnected(A)
    assert _kinds(events)[3:] == [("unavailable", A), ("unavailable", A)]
    assert {e.detail for e in events[3:]} == {"site stream closed"}
    replies = list(grid.pull_messages(ids))
    assert len(replies) == 2
    assert {r.metadata.reply_to_message_id for r in replies} == {ids[0], ids[2]}
    assert all(r.error.code == FlwrErrorCode.NODE_UNAVAILABLE for r in replies)
    grid.on_reply(B, _reply(ids[1], node=NODE[B]))  # B is still in the round
    assert len(list(grid.pull_messages([ids[1]]))) == 1
    grid.site_disconnected(A)  # nothing left: nothing more happens
    assert len(events) == 6


# -- send_and_receive -----------------------------------------------------------------------


def _answer_for(site: str, session: Session, grid: SessionGrid) -> threading.Thread:
    """A site that answers the first instruction on its stream."""

    def run() -> None:
        ra = Reassembler(1 << 30)
        while True:
            m = session.outbound.get(timeout=5)
            done = ra.add(m.task)
            if done is not None:
                grid.on_reply(site, _reply(done.message_id, node=NODE[site]))
                return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_send_and_receive_drops_a_hung_site_at_the_round_timeout(
    registry: SessionRegistry, events: list[GridEvent]
) -> None:
    sessions = _connect(registry, A, B)
    grid = _grid(registry, events, {101: A, 102: B}, round_timeout_s=0.2)
    answering = _answer_for(A, sessions[A], grid)
    start = time.monotonic()
    replies = list(grid.send_and_receive([_train(A), _train(B)]))
    assert time.monotonic() - start < 2
    answering.join(1)
    by_node = {r.metadata.src_node_id: r for r in replies}
    assert set(by_node) == {NODE[A], NODE[B]}
    assert not by_node[NODE[A]].has_error()
    late = by_node[NODE[B]]
    assert late.error.code == FlwrErrorCode.NODE_UNAVAILABLE
    assert late.error.reason == "no reply within the round timeout"
    assert [e.kind for e in events if e.site_id == B] == ["sent", "timeout"]
    assert [e.kind for e in events if e.site_id == A] == ["sent", "reply"]
    # A reply after the timeout finds nothing to answer.
    grid.on_reply(B, _reply(late.metadata.reply_to_message_id, node=NODE[B]))
    assert len(events) == 4


def test_send_and_receive_honours_a_shorter_timeout(
    registry: SessionRegistry, events: list[GridEvent]
) -> None:
    _connect(registry, A)
    grid = _grid(registry, events, {101: A}, round_timeout_s=60)
    start = time.monotonic()
    [reply] = grid.send_and_receive([_train(A)], timeout=0.1)
    assert time.monotonic() - start < 2
    assert reply.error.code == FlwrErrorCode.NODE_UNAVAILABLE
    assert [e.kind for e in events] == ["sent", "timeout"]


# -- nodes ------------------------------------------------------------------------------


def test_only_connected_and_ready_sites_are_nodes(
    registry: SessionRegistry, events: list[GridEvent]
) -> None:
    sessions = _connect(registry, A, B)
    grid = _grid(registry, events)
    grid.set_ready(B, False)  # reconnected, has not approved again yet
    assert list(grid.get_node_ids()) == [NODE[A]]
    assert [n.node_id for n in grid.get_nodes()] == [NODE[A]]
    grid.set_ready(B, True)
    assert sorted(grid.get_node_ids()) == [NODE[A], NODE[B]]
    _connect(registry, C)
    sessions[A].close("gone")
    assert sorted(grid.get_node_ids()) == [NODE[B], NODE[C]]
    assert grid.has_node(NODE[C]) and not grid.has_node(999)
    assert grid.has_site(C) and not grid.has_site("hospital-z")


def test_no_node_within_node_wait_is_unavailable(
    registry: SessionRegistry, events: list[GridEvent]
) -> None:
    grid = _grid(registry, events, {101: A}, node_wait_s=0.05)
    assert list(grid.get_node_ids()) == []  # the wait starts now
    time.sleep(0.1)
    with pytest.raises(InsituError) as err:
        grid.get_node_ids()
    assert err.value.code is ErrorCode.UNAVAILABLE
    assert "no approved site connected" in err.value.detail
    _connect(registry, A)
    assert list(grid.get_node_ids()) == [NODE[A]]  # and the clock resets


def test_a_site_that_connects_in_time_is_waited_for(
    registry: SessionRegistry, events: list[GridEvent]
) -> None:
    grid = _grid(registry, events, {101: A}, node_wait_s=5)
    assert list(grid.get_node_ids()) == []
    time.sleep(0.05)
    assert list(grid.get_node_ids()) == []  # still within node_wait_s
    _connect(registry, A)
    assert list(grid.get_node_ids()) == [NODE[A]]


def test_the_wait_counts_from_when_no_site_is_left(
    registry: SessionRegistry, events: list[GridEvent]
) -> None:
    sessions = _connect(registry, A)  # B never connects
    grid = _grid(registry, events, {101: A, 102: B}, node_wait_s=0.05)
    assert list(grid.get_node_ids()) == [NODE[A]]
    time.sleep(0.1)
    assert list(grid.get_node_ids()) == [NODE[A]]
    sessions[A].close("restarting")
    assert list(grid.get_node_ids()) == []  # A has been gone for no time at all


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    for t in set(threading.enumerate()) - before:
        t.join(2)
