"""The embedded audit store: SQLite in WAL mode with ``synchronous=FULL``.

A commit in WAL mode with ``synchronous=FULL`` fsyncs the write-ahead log before it
returns, so an acknowledged batch survives ``kill -9`` and power loss. Group commit
(many appenders, one transaction) happens one level up, in
:class:`insitu.audit.log.AuditLog`'s writer thread; this store commits whatever batch it
is given in one ``BEGIN IMMEDIATE`` transaction. Triggers refuse UPDATE and DELETE (the
one allowed update nulls a body below the prune horizon) and any insert that would leave
a gap in ``seq``. Triggers are guard rails against bugs, not against someone who can
write the file: that is what the Merkle tree and signed checkpoints are for.

Example::

    with SqliteAuditStore(Path("audit.db")) as store:
        print(store.size())
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from insitu.audit.errors import AuditError, AuditUnavailableError, SequenceConflictError
from insitu.audit.store import AuditStore, StoredCheckpoint, StoredEntry, WitnessedNote

__all__ = ["SqliteAuditStore"]

_PAGE = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY CHECK (seq >= 0),
    leaf_hash BLOB NOT NULL CHECK (length(leaf_hash) = 32),
    data BLOB
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    size INTEGER NOT NULL CHECK (size >= 0),
    note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS witnessed (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    origin TEXT NOT NULL,
    size INTEGER NOT NULL CHECK (size >= 0),
    note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS prune_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    horizon INTEGER NOT NULL CHECK (horizon >= 0)
);
INSERT OR IGNORE INTO prune_state (id, horizon) VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS records_gap_free BEFORE INSERT ON records
    WHEN NEW.seq IS NOT (SELECT COALESCE(MAX(seq) + 1, 0) FROM records)
    BEGIN SELECT RAISE(ABORT, 'audit seq must be gap-free'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
    WHEN NOT (NEW.seq = OLD.seq AND NEW.leaf_hash = OLD.leaf_hash AND NEW.data IS NULL
              AND OLD.seq < (SELECT horizon FROM prune_state WHERE id = 1))
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS witnessed_no_update BEFORE UPDATE ON witnessed
    BEGIN SELECT RAISE(ABORT, 'witnessed notes are append-only'); END;
CREATE TRIGGER IF NOT EXISTS witnessed_no_delete BEFORE DELETE ON witnessed
    BEGIN SELECT RAISE(ABORT, 'witnessed notes are append-only'); END;
CREATE TRIGGER IF NOT EXISTS prune_state_forward BEFORE UPDATE ON prune_state
    WHEN NEW.id IS NOT OLD.id OR NEW.horizon < OLD.horizon
    BEGIN SELECT RAISE(ABORT, 'prune horizon only moves forward'); END;
CREATE TRIGGER IF NOT EXISTS prune_state_no_delete BEFORE DELETE ON prune_state
    BEGIN SELECT RAISE(ABORT, 'prune state cannot be deleted'); END;
"""


def _unavailable(e: sqlite3.Error) -> AuditUnavailableError:
    return AuditUnavailableError(f"sqlite audit store: {type(e).__name__}: {e}")


def check_batch(entries: Sequence[StoredEntry]) -> None:
    """Shared precondition of every backend: consecutive seqs and 32-byte leaf hashes."""
    for prev, cur in itertools.pairwise(entries):
        if cur.seq != prev.seq + 1:
            raise AuditError(f"batch seqs are not consecutive at {prev.seq} -> {cur.seq}")
    for e in entries:
        if len(e.leaf_hash) != 32 or e.data is None:
            raise AuditError(f"entry {e.seq} needs a 32-byte leaf hash and a body")


class SqliteAuditStore(AuditStore):
    """SQLite backend. One connection guarded by a lock; WAL lets other processes read."""

    def __init__(
        self, path: Path | str, *, busy_timeout_s: float = 10.0, read_only: bool = False
    ) -> None:
        self.path = Path(path)
        try:
            if read_only:
                if not self.path.is_file():
                    raise AuditUnavailableError(f"sqlite audit store: {self.path} does not exist")
                self._conn = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=busy_timeout_s,
                )
                self._conn.execute("SELECT COUNT(*) FROM prune_state").fetchone()
            else:
                self._open_writable(busy_timeout_s)
        except sqlite3.Error as e:
            raise _unavailable(e) from None
        except OSError as e:
            raise AuditUnavailableError(f"sqlite audit store: cannot open: {e.strerror}") from None
        self._lock = threading.RLock()

    def _open_writable(self, busy_timeout_s: float) -> None:
        # Records hold pseudonymized data: readable by the owner only.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._conn = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
        )
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise AuditUnavailableError(f"sqlite audit store: journal_mode is {mode}, not wal")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA secure_delete=ON")  # pruned bodies are zeroed on disk
        self._conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")

    def _size_locked(self) -> int:
        return int(
            self._conn.execute("SELECT COALESCE(MAX(seq) + 1, 0) FROM records").fetchone()[0]
        )

    def size(self) -> int:
        with self._lock:
            try:
                return self._size_locked()
            except sqlite3.Error as e:
                raise _unavailable(e) from None

    def append_batch(self, entries: Sequence[StoredEntry]) -> None:
        if not entries:
            return
        check_batch(entries)
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    size = self._size_locked()
                    if entries[0].seq != size:
                        raise SequenceConflictError(entries[0].seq, size)
                    self._conn.executemany(
                        "INSERT INTO records (seq, leaf_hash, data) VALUES (?, ?, ?)",
                        [(e.seq, e.leaf_hash, e.data) for e in entries],
                    )
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise _unavailable(e) from None

    def _page(self, sql: str, start: int, end: int | None) -> Iterator[Any]:
        pos = start
        while end is None or pos < end:
            hi = pos + _PAGE if end is None else min(end, pos + _PAGE)
            with self._lock:
                try:
                    rows = self._conn.execute(sql, (pos, hi)).fetchall()
                except sqlite3.Error as e:
                    raise _unavailable(e) from None
            yield from rows
            if len(rows) < hi - pos:
                return
            pos = hi

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[StoredEntry]:
        sql = "SELECT seq, leaf_hash, data FROM records WHERE seq >= ? AND seq < ? ORDER BY seq"
        for seq, lh, data in self._page(sql, start, end):
            yield StoredEntry(int(seq), bytes(lh), None if data is None else bytes(data))

    def leaf_hashes(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        sql = "SELECT leaf_hash FROM records WHERE seq >= ? AND seq < ? ORDER BY seq"
        for (lh,) in self._page(sql, start, end):
            yield bytes(lh)

    def _insert(self, sql: str, params: tuple[object, ...]) -> None:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute(sql, params)
                self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise _unavailable(e) from None

    def add_checkpoint(self, size: int, note: str) -> None:
        self._insert("INSERT INTO checkpoints (size, note) VALUES (?, ?)", (size, note))

    def checkpoints(self) -> list[StoredCheckpoint]:
        with self._lock:
            try:
                rows = self._conn.execute(
                    "SELECT size, note FROM checkpoints ORDER BY size, id"
                ).fetchall()
            except sqlite3.Error as e:
                raise _unavailable(e) from None
        return [StoredCheckpoint(int(s), str(n)) for s, n in rows]

    def add_witnessed(self, origin: str, size: int, note: str) -> None:
        self._insert(
            "INSERT INTO witnessed (origin, size, note) VALUES (?, ?, ?)", (origin, size, note)
        )

    def witnessed(self, origin: str | None = None) -> list[WitnessedNote]:
        sql = "SELECT origin, size, note FROM witnessed"
        params: tuple[object, ...] = ()
        if origin is not None:
            sql += " WHERE origin = ?"
            params = (origin,)
        with self._lock:
            try:
                rows = self._conn.execute(sql + " ORDER BY id", params).fetchall()
            except sqlite3.Error as e:
                raise _unavailable(e) from None
        return [WitnessedNote(str(o), int(s), str(n)) for o, s, n in rows]

    def prune_horizon(self) -> int:
        with self._lock:
            try:
                row = self._conn.execute("SELECT horizon FROM prune_state WHERE id = 1").fetchone()
            except sqlite3.Error as e:
                raise _unavailable(e) from None
        return int(row[0])

    def prune_bodies(self, before_seq: int) -> None:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    horizon = int(
                        self._conn.execute(
                            "SELECT horizon FROM prune_state WHERE id = 1"
                        ).fetchone()[0]
                    )
                    size = self._size_locked()
                    if not horizon <= before_seq <= size:
                        raise AuditError(
                            f"prune horizon {before_seq} must be within [{horizon}, {size}]"
                        )
                    self._conn.execute(
                        "UPDATE prune_state SET horizon = ? WHERE id = 1", (before_seq,)
                    )
                    self._conn.execute(
                        "UPDATE records SET data = NULL WHERE seq < ? AND data IS NOT NULL",
                        (before_seq,),
                    )
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise _unavailable(e) from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()
