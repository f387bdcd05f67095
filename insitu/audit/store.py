"""The audit store contract: what every backend (SQLite, PostgreSQL) MUST guarantee.

A store holds three append-only things: the log entries (``seq``, leaf hash, canonical
record bytes), the log's own signed checkpoints, and *witnessed* notes (checkpoints of
other logs, or of this log cosigned by others). One contract-test class in
``tests/unit/audit/store_contract.py`` is run against every backend.

Example::

    store = SqliteAuditStore(Path("audit.db"))
    store.append_batch([StoredEntry(0, leaf_hash, data)])
    assert store.size() == 1
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator, Sequence

__all__ = ["AuditStore", "StoredCheckpoint", "StoredEntry", "WitnessedNote"]


@dataclasses.dataclass(frozen=True)
class StoredEntry:
    """One log entry. ``data`` is None once the entry's body has been pruned."""

    seq: int
    leaf_hash: bytes
    data: bytes | None


@dataclasses.dataclass(frozen=True)
class StoredCheckpoint:
    size: int
    note: str


@dataclasses.dataclass(frozen=True)
class WitnessedNote:
    origin: str
    size: int
    note: str


class AuditStore(abc.ABC):
    """Durable, append-only storage for one audit log.

    Every implementation MUST:

    - be append-only: there is no API to update or delete an entry, a checkpoint or a
      witnessed note, and the backend SHOULD refuse such writes from anyone else too
      (triggers, revoked privileges);
    - keep ``seq`` gap-free, starting at 0: ``append_batch`` refuses any batch whose
      first seq is not the current ``size()`` or whose seqs are not consecutive;
    - append a batch atomically: all of it or none of it becomes visible;
    - be durable before returning: once ``append_batch`` (or ``add_checkpoint``,
      ``add_witnessed``) returns, the data survives a crash or power loss;
    - be safe to call from several threads;
    - keep every leaf hash forever; ``prune_bodies`` may drop only the record bytes of
      entries below a horizon that never decreases.
    """

    @abc.abstractmethod
    def size(self) -> int:
        """Number of entries (the next seq to append)."""

    @abc.abstractmethod
    def append_batch(self, entries: Sequence[StoredEntry]) -> None:
        """Atomically and durably append ``entries``.

        MUST raise :class:`~insitu.audit.errors.SequenceConflictError` (and append
        nothing) when ``entries[0].seq != size()``, and InvalidProofError/ValueError-like
        audit errors when seqs are not consecutive or a leaf hash is not 32 bytes.
        """

    @abc.abstractmethod
    def entries(self, start: int = 0, end: int | None = None) -> Iterator[StoredEntry]:
        """Entries with ``start <= seq < end`` in seq order (``end`` None: to the end)."""

    @abc.abstractmethod
    def leaf_hashes(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Leaf hashes of ``[start, end)`` in seq order (cheap: no record bytes)."""

    @abc.abstractmethod
    def add_checkpoint(self, size: int, note: str) -> None:
        """Durably record a signed checkpoint of this log. Same size twice is allowed."""

    @abc.abstractmethod
    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every stored checkpoint, by increasing size (then insertion order)."""

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        cps = self.checkpoints()
        return cps[-1] if cps else None

    @abc.abstractmethod
    def add_witnessed(self, origin: str, size: int, note: str) -> None:
        """Durably record a note witnessed from (or cosigned by) another party."""

    @abc.abstractmethod
    def witnessed(self, origin: str | None = None) -> list[WitnessedNote]:
        """Witnessed notes, optionally of one origin, in insertion order."""

    @abc.abstractmethod
    def prune_horizon(self) -> int:
        """Entries below this seq have had their bodies pruned (0: none)."""

    @abc.abstractmethod
    def prune_bodies(self, before_seq: int) -> None:
        """Drop record bytes of entries with seq < ``before_seq``; keep their leaf hashes.

        MUST refuse a horizon beyond ``size()`` or below the current horizon. Callers
        archive the bodies first (see :mod:`insitu.audit.prune`).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. The store is unusable afterwards."""

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
