"""Watch any ServerApp's Flower strategy without changing the app.

A user's ServerApp calls ``strategy.start(...)`` and may keep the result to itself. The
coordinator still needs each round's aggregated metrics (for ``watch_job``) and the final
arrays (for the model registry). :func:`observe_strategies` patches
``Strategy.start`` for the duration of a ``with`` block so every strategy started inside
reports to a callback, whatever subclass the app picked::

    events: list[RoundEvent] = []
    with observe_strategies(events.append) as results:
        server_app(grid, context)
    final_arrays = results[-1].arrays

It patches a class attribute, so use it in a process that runs one ServerApp (DESIGN.md
already requires that because of Flower's process-global ``TaskIdentity``).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Result, Strategy

__all__ = ["RoundEvent", "observe_strategies"]

_lock = threading.Lock()


@dataclass(frozen=True)
class RoundEvent:
    """One aggregation step of a running strategy."""

    server_round: int
    phase: Literal["train", "evaluate"]
    replies: int  # replies handed to the aggregator (errors included)
    failures: int  # replies that carried an error
    metrics: MetricRecord | None
    arrays: ArrayRecord | None  # the new global arrays (train phase only)


@contextmanager
def observe_strategies(
    on_round: Callable[[RoundEvent], None] | None = None,
) -> Iterator[list[Result]]:
    """Report every aggregation of every strategy started inside the block.

    Yields a list that receives each strategy's final :class:`Result` as it returns.
    """
    results: list[Result] = []
    with _lock:
        original = Strategy.start

        @functools.wraps(original)
        def start(self: Strategy, *args: Any, **kwargs: Any) -> Result:
            if on_round is not None:
                _wrap_aggregators(self, on_round)
            result = original(self, *args, **kwargs)
            results.append(result)
            return result

        Strategy.start = start  # type: ignore[method-assign]
    try:
        yield results
    finally:
        with _lock:
            Strategy.start = original  # type: ignore[method-assign]


def _wrap_aggregators(strategy: Strategy, on_round: Callable[[RoundEvent], None]) -> None:
    # Instance attributes shadow the (possibly overridden) class methods, so this works
    # for FedAvg, FedProx, FedAdam, FedMedian, ... alike.
    train = strategy.aggregate_train
    evaluate = strategy.aggregate_evaluate

    def aggregate_train(
        server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = train(server_round, replies)
        on_round(
            RoundEvent(server_round, "train", len(replies), _failures(replies), metrics, arrays)
        )
        return arrays, metrics

    def aggregate_evaluate(server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        metrics = evaluate(server_round, replies)
        on_round(
            RoundEvent(server_round, "evaluate", len(replies), _failures(replies), metrics, None)
        )
        return metrics

    strategy.aggregate_train = aggregate_train  # type: ignore[method-assign]
    strategy.aggregate_evaluate = aggregate_evaluate  # type: ignore[method-assign]


def _failures(replies: list[Message]) -> int:
    return sum(1 for reply in replies if reply.has_error())
