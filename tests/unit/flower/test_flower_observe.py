"""observe_strategies: per-round events and final results from any strategy, then unpatched."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, Strategy
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from insitu.flower import RoundEvent, observe_strategies


class EchoGrid(Grid):
    """Node ``n`` answers train with arrays filled with ``n``; node 3 always fails."""

    def set_run(self, run: Run) -> None:
        pass

    @property
    def run(self) -> Run:
        return Run.create_empty(1)

    def create_message(self, *args: object, **kwargs: object) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return [1, 2, 3]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            node = message.metadata.dst_node_id
            if node == 3:
                replies.append(Message(Error(code=5, reason="node unavailable"), reply_to=message))
                continue
            metrics = MetricRecord({"num-examples": 10, "score": float(node)})
            content = RecordDict({"metrics": metrics})
            if message.metadata.message_type == "train":
                content["arrays"] = ArrayRecord([np.full(3, float(node), dtype=np.float32)])
            replies.append(Message(content, reply_to=message))
        return replies


def _run(strategy: Strategy) -> tuple[list[RoundEvent], list[object]]:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    events: list[RoundEvent] = []
    with observe_strategies(events.append) as results:
        strategy.start(
            grid=EchoGrid(),
            initial_arrays=ArrayRecord([np.zeros(3, dtype=np.float32)]),
            num_rounds=2,
        )
    return events, list(results)


def test_rounds_and_final_arrays_are_reported() -> None:
    events, results = _run(FedAvg(min_available_nodes=3))
    assert [(e.server_round, e.phase) for e in events] == [
        (1, "train"), (1, "evaluate"), (2, "train"), (2, "evaluate")
    ]
    assert all(e.replies == 3 and e.failures == 1 for e in events)
    train = events[0]
    assert train.arrays is not None
    np.testing.assert_allclose(next(iter(train.arrays.values())).numpy(), [1.5, 1.5, 1.5])
    assert events[1].metrics is not None and events[1].metrics["score"] == 1.5
    (result,) = results
    np.testing.assert_allclose(next(iter(result.arrays.values())).numpy(), [1.5] * 3)  # type: ignore[attr-defined]


def test_works_for_other_strategies_and_unpatches() -> None:
    original = Strategy.start
    events, _results = _run(FedMedian(min_available_nodes=3))
    assert len(events) == 4
    assert Strategy.start is original
    # Outside the block nothing is reported any more.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    FedAvg(min_available_nodes=3).start(
        grid=EchoGrid(), initial_arrays=ArrayRecord([np.zeros(3, dtype=np.float32)]), num_rounds=1
    )
    assert len(events) == 4
