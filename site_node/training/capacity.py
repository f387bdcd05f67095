"""The site's budget for concurrent job workers: how many at once, their memory in total,
and which GPU each holds.

A job the site approved asks for a slot with what it needs (its memory ceiling, whether
it wants a GPU). It runs at once if the budget has room, else it waits in a FIFO queue:
the head of the queue is served first and nothing overtakes it, so a large job is never
starved by a stream of small ones. A GPU index is held by one job at a time. A job whose
need is above the whole budget is refused before it is approved (:meth:`CapacityBudget.check`,
naming the setting), since it could never run. A job that wants a GPU at a site that
grants none runs on the CPU, as it always has.

Example::

    capacity = JobCapacity(CapacityBudget(max_jobs=2, total_memory_mb=8192, gpus=(0,)))
    ticket = capacity.request("job-1", JobNeed(memory_mb=2048, gpu=True))
    grant = ticket.wait()          # Grant(memory_mb=2048, gpu=0); None if it left the queue
    ...                            # run the job's worker
    capacity.release(ticket)       # its slot, memory and GPU go to the next queued job
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from insitu.errors import ErrorCode, InsituError

__all__ = ["CapacityBudget", "Grant", "JobCapacity", "JobNeed", "JobSlot", "Ticket"]

TicketState = Literal["queued", "running", "released"]
NO_GPU: Final = "none"


def _positive_int(value: object, setting: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InsituError(ErrorCode.CONFIG, f"{setting} must be an integer > 0, got {value!r}")


@dataclass(frozen=True)
class CapacityBudget:
    """What all of a site's job workers may hold together (``site.toml``:
    ``job_max_concurrent``, ``job_total_memory_mb``, ``job_gpus``)."""

    max_jobs: int
    total_memory_mb: int
    gpus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _positive_int(self.max_jobs, "job_max_concurrent")
        _positive_int(self.total_memory_mb, "job_total_memory_mb")
        if len(set(self.gpus)) != len(self.gpus):
            raise InsituError(ErrorCode.CONFIG, f"job_gpus lists an index twice: {self.gpus}")

    def check(self, need: JobNeed) -> None:
        """Refuse (RESOURCE_EXHAUSTED, naming the setting) a need that no amount of waiting
        could meet: memory above ``job_total_memory_mb``."""
        if need.memory_mb > self.total_memory_mb:
            raise InsituError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"job needs memory_mb {need.memory_mb}, more than this site's "
                f"job_total_memory_mb {self.total_memory_mb} for all jobs together",
            )


@dataclass(frozen=True)
class JobNeed:
    """What one job's worker holds while it runs."""

    memory_mb: int
    gpu: bool = False  # wants a GPU (granted one only where the site has any)


@dataclass(frozen=True)
class Grant:
    """The resources a running job holds."""

    memory_mb: int
    gpu: int | None  # the GPU index it holds alone, or None (CPU)


@dataclass(frozen=True)
class JobSlot:
    """One job as ``insitu-site status`` shows it."""

    job_id: str
    state: Literal["running", "queued"]
    memory_mb: int  # held when running, waited for when queued
    gpu: str  # running: the index held, or "none"; queued: "wanted" or "none"
    queue_position: int = 0  # 1 for the head of the queue; 0 when running


class Ticket:
    """One job's place: queued, then running (holding a :class:`Grant`), then released."""

    def __init__(self, job_id: str, need: JobNeed) -> None:
        self.job_id = job_id
        self.need = need
        self.state: TicketState = "queued"
        self.grant: Grant | None = None
        self._decided = threading.Event()  # granted, or released before it was

    def wait(self, timeout: float | None = None) -> Grant | None:
        """Block until the job holds its resources (returns the :class:`Grant`) or left the
        queue without them (None). With ``timeout``, None also when it is still queued."""
        self._decided.wait(timeout)
        return self.grant


class JobCapacity:
    """Thread-safe. ``on_change`` is called (outside the lock) after every grant, queueing
    and release, e.g. to rewrite the site's status file."""

    def __init__(
        self, budget: CapacityBudget, on_change: Callable[[], None] | None = None
    ) -> None:
        self.budget = budget
        self._on_change = on_change or (lambda: None)
        self._lock = threading.Lock()
        self._queue: collections.deque[Ticket] = collections.deque()
        self._running: list[Ticket] = []
        self._free_gpus: list[int] = list(budget.gpus)

    def _effective(self, need: JobNeed) -> JobNeed:
        # A site without GPUs runs a GPU app on the CPU (the approval says so).
        return need if need.gpu and self.budget.gpus else JobNeed(need.memory_mb, gpu=False)

    def request(self, job_id: str, need: JobNeed) -> Ticket:
        """Queue ``job_id`` for ``need`` (refused as :meth:`CapacityBudget.check` refuses);
        it is granted at once when the budget has room and no job waits before it."""
        self.budget.check(need)
        ticket = Ticket(job_id, self._effective(need))
        with self._lock:
            self._queue.append(ticket)
            self._dispatch()
        self._on_change()
        return ticket

    def withdraw(self, ticket: Ticket) -> bool:
        """Take ``ticket`` out of the queue if it still waits there (True: it never got its
        resources, and now never will); a running job keeps them until :meth:`release`."""
        return self._leave(ticket, only_queued=True) == "queued"

    def release(self, ticket: Ticket) -> TicketState:
        """Return what ``ticket`` holds (or take it out of the queue) and serve the queue.
        Returns the state it was in; releasing twice does nothing."""
        return self._leave(ticket, only_queued=False)

    def _leave(self, ticket: Ticket, *, only_queued: bool) -> TicketState:
        with self._lock:
            was = ticket.state
            if was == "released" or (only_queued and was != "queued"):
                return was
            if was == "queued":
                self._queue.remove(ticket)
            else:
                self._running.remove(ticket)
                assert ticket.grant is not None
                if ticket.grant.gpu is not None:
                    self._free_gpus.append(ticket.grant.gpu)
                    self._free_gpus.sort(key=self.budget.gpus.index)
            ticket.state = "released"
            ticket._decided.set()
            self._dispatch()  # freed resources, or a new head of the queue
        self._on_change()
        return was

    def slots(self) -> list[JobSlot]:
        """Running jobs with what they hold, then queued jobs in order with what they need."""
        with self._lock:
            running = [
                JobSlot(t.job_id, "running", g.memory_mb, NO_GPU if g.gpu is None else str(g.gpu))
                for t in self._running if (g := t.grant) is not None
            ]
            queued = [
                JobSlot(t.job_id, "queued", t.need.memory_mb, "wanted" if t.need.gpu else NO_GPU,
                        queue_position=i)
                for i, t in enumerate(self._queue, start=1)
            ]
        return running + queued

    def _fits(self, need: JobNeed) -> bool:
        used = sum(t.need.memory_mb for t in self._running)
        return (
            len(self._running) < self.budget.max_jobs
            and used + need.memory_mb <= self.budget.total_memory_mb
            and (not need.gpu or bool(self._free_gpus))
        )

    def _dispatch(self) -> None:
        # Strict FIFO: only the head may start; a job behind it waits even if it would fit.
        while self._queue and self._fits(self._queue[0].need):
            ticket = self._queue.popleft()
            gpu = self._free_gpus.pop(0) if ticket.need.gpu else None
            ticket.grant = Grant(ticket.need.memory_mb, gpu)
            ticket.state = "running"
            self._running.append(ticket)
            ticket._decided.set()
