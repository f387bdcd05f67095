"""A Triton-like dynamic batcher for one loaded model version (thread-based).

Requests wait in a bounded FIFO queue. A worker thread takes the oldest request and
gathers more until the batch holds ``max_batch_size`` rows, or exactly one of the
``preferred_batch_sizes``, or ``max_queue_delay_us`` has passed since that oldest request
arrived; then it concatenates the rows, runs the model once and hands every request
exactly its own rows back. Requests are never split; one larger than ``max_batch_size``
runs alone. Only requests whose non-batch dimensions agree are fused.

A full queue refuses at once with RESOURCE_EXHAUSTED, so memory stays bounded by
``max_queue_size`` requests and callers never hang on admission. :class:`DirectRunner`
has the same interface without batching (``batching.enabled: false``, and benchmarks).

Example::

    batcher = DynamicBatcher(session.run, config.batching, name="mlp/3")
    outputs = batcher.submit({"x": rows}).result(timeout=5.0)
    batcher.close()
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np

from insitu.errors import ErrorCode, InsituError
from site_node.serving.config import BatchingConfig

__all__ = ["Batcher", "DirectRunner", "DynamicBatcher", "Pending", "Runner"]

log = logging.getLogger(__name__)

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
Arrays = dict[str, np.ndarray]


class Pending:
    """The future of one submitted request."""

    __slots__ = ("_done", "_error", "_result", "enqueued", "inputs", "key", "rows")

    def __init__(self, inputs: Mapping[str, np.ndarray]) -> None:
        self.inputs = dict(inputs)
        first = next(iter(self.inputs.values()))
        self.rows = int(first.shape[0])
        # Requests fuse only when every input agrees on dtype and non-batch dims.
        self.key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(self.inputs.items()))
        self.enqueued = time.monotonic()
        self._done = threading.Event()
        self._result: Arrays | None = None
        self._error: InsituError | None = None

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> Arrays:
        """The request's own output rows; raises the batch's error, or DEADLINE_EXCEEDED."""
        if not self._done.wait(timeout):
            raise InsituError(ErrorCode.DEADLINE_EXCEEDED, "prediction did not finish in time")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _resolve(self, result: Arrays | None, error: InsituError | None) -> None:
        self._result, self._error = result, error
        self._done.set()


class Batcher(Protocol):
    def submit(self, inputs: Mapping[str, np.ndarray]) -> Pending: ...

    def close(self) -> None: ...


def _run_batch(run: Runner, batch: list[Pending]) -> None:
    """Run ``batch`` as one model call and resolve each request with its own rows."""
    try:
        if len(batch) == 1:
            fused: Mapping[str, np.ndarray] = batch[0].inputs
        else:
            fused = {n: np.concatenate([p.inputs[n] for p in batch]) for n in batch[0].inputs}
        outputs = run(fused)
        total = sum(p.rows for p in batch)
        for name, out in outputs.items():
            if out.ndim == 0 or out.shape[0] != total:
                raise InsituError(
                    ErrorCode.INTERNAL, f"output '{name}' has {out.shape} rows for {total} inputs"
                )
    except InsituError as e:
        for p in batch:
            p._resolve(None, e)
        return
    except Exception:
        log.exception("inference failed for a batch of %d requests", len(batch))
        err = InsituError(ErrorCode.INTERNAL, "inference failed")
        for p in batch:
            p._resolve(None, err)
        return
    offset = 0
    for p in batch:
        p._resolve({n: o[offset : offset + p.rows] for n, o in outputs.items()}, None)
        offset += p.rows


class DirectRunner:
    """No batching: each request runs on the caller's thread, alone."""

    def __init__(self, run: Runner, *, on_batch: Callable[[int], None] | None = None) -> None:
        self._run = run
        self._on_batch = on_batch
        self._closed = False

    def submit(self, inputs: Mapping[str, np.ndarray]) -> Pending:
        if self._closed:
            raise InsituError(ErrorCode.UNAVAILABLE, "model version is unloading")
        p = Pending(inputs)
        if self._on_batch is not None:
            self._on_batch(p.rows)
        _run_batch(self._run, [p])
        return p

    def close(self) -> None:
        self._closed = True


class DynamicBatcher:
    """Fuses concurrent requests into batches on one worker thread (see module doc)."""

    def __init__(
        self,
        run: Runner,
        config: BatchingConfig,
        *,
        name: str = "batcher",
        on_batch: Callable[[int], None] | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self._max_rows = config.max_batch_size
        self._delay = config.max_queue_delay_us / 1e6
        self._preferred = frozenset(config.preferred_batch_sizes)
        self._capacity = config.max_queue_size
        self._on_batch = on_batch
        self._on_depth = on_queue_depth
        self._queue: collections.deque[Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._worker.start()

    def submit(self, inputs: Mapping[str, np.ndarray]) -> Pending:
        """Queue one request; raises RESOURCE_EXHAUSTED at once if the queue is full."""
        p = Pending(inputs)
        with self._cond:
            if self._closed:
                raise InsituError(ErrorCode.UNAVAILABLE, "model version is unloading")
            if len(self._queue) >= self._capacity:
                raise InsituError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"inference queue is full ({self._capacity} requests waiting)",
                )
            self._queue.append(p)
            depth = len(self._queue)
            self._cond.notify()
        self._depth(depth)
        return p

    def queue_depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new requests, finish the queued ones, and stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout)
        with self._cond:  # only if the worker is stuck: never leave a caller waiting
            left = list(self._queue)
            self._queue.clear()
        for p in left:
            p._resolve(None, InsituError(ErrorCode.UNAVAILABLE, "model version unloaded"))

    # -- worker ------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed and drained
                batch = self._gather()
                depth = len(self._queue)
            self._depth(depth)
            if self._on_batch is not None:
                self._on_batch(sum(p.rows for p in batch))
            _run_batch(self._run, batch)

    def _gather(self) -> list[Pending]:
        """Wait (lock held) until a batch is due, then take it off the queue."""
        deadline = self._queue[0].enqueued + self._delay
        while not self._closed:
            rows = self._fusable_rows()
            if rows >= self._max_rows or rows in self._preferred:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
        return self._take()

    def _fusable_rows(self) -> int:
        key = self._queue[0].key
        rows = 0
        for p in self._queue:
            if p.key == key:
                rows += p.rows
                if rows >= self._max_rows:
                    break
        return rows

    def _take(self) -> list[Pending]:
        head = self._queue.popleft()
        batch, rows, kept = [head], head.rows, []
        while self._queue and rows < self._max_rows:
            p = self._queue.popleft()
            if p.key == head.key and rows + p.rows <= self._max_rows:
                batch.append(p)
                rows += p.rows
            elif p.key == head.key:
                kept.append(p)
                break  # FIFO: a request that does not fit goes first next time
            else:
                kept.append(p)
        self._queue.extendleft(reversed(kept))
        return batch

    def _depth(self, depth: int) -> None:
        if self._on_depth is not None:
            self._on_depth(depth)
