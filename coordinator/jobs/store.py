"""The coordinator's durable record of jobs: one row per job, its app bundle, and the
serialized summary of every finished round, behind one :class:`JobStore` contract.

Two backends pass the same contract suite: :class:`SqliteJobStore` (one coordinator, a
file next to its other state) and ``coordinator.jobs.postgres_store.PostgresJobStore``
(coordinators that share a database). :func:`open_job_store` picks one from settings.

Example::

    store = open_job_store(Path("/var/lib/insitu"))  # SQLite at /var/lib/insitu/jobs.db
    store.insert(row, bundle)
    seq = store.append_round(row.job_id, summary.SerializeToString())
    store.save(dataclasses.replace(row, state="succeeded", finished_at=time.time()))
"""

from __future__ import annotations

import abc
import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from insitu.errors import ErrorCode, InsituError

__all__ = [
    "FINISHED_STATES",
    "JOB_STATES",
    "JobRow",
    "JobStore",
    "SqliteJobStore",
    "open_job_store",
]

JOB_STATES: Final = (
    "queued",
    "awaiting_approval",
    "running",
    "succeeded",
    "failed",
    "refused",
    "cancelled",
    "interrupted",
)
FINISHED_STATES: Final = frozenset({"succeeded", "failed", "refused", "cancelled", "interrupted"})
_MAX_RUN_ID: Final = 2**63 - 1


@dataclass(frozen=True)
class JobRow:
    """One job as stored. ``approvals`` and ``extra`` are JSON text the store never reads."""

    job_id: str
    owner: str  # SPIFFE id of the submitter
    org: str
    code_sha256: str
    model_name: str
    request: bytes  # the SubmitJobRequest serialized without its app_bundle
    run_id: int  # 63-bit non-negative
    state: str  # one of JOB_STATES
    submitted_at: float  # unix seconds
    finished_at: float | None = None
    error: str = ""
    fix: str = ""
    model_version: str = ""
    current_round: int = 0
    approvals: str = "{}"
    extra: str = "{}"


# The order of JobRow's fields: every backend selects its columns in this order.
COLUMNS: Final = (
    "job_id",
    "owner",
    "org",
    "code_sha256",
    "model_name",
    "request",
    "run_id",
    "state",
    "submitted_at",
    "finished_at",
    "error",
    "fix",
    "model_version",
    "current_round",
    "approvals",
    "extra",
)
# What save() may overwrite; everything else is fixed at insert.
MUTABLE: Final = (
    "state",
    "finished_at",
    "error",
    "fix",
    "model_version",
    "current_round",
    "approvals",
    "extra",
)


def check_row(row: JobRow) -> None:
    """INVALID_ARGUMENT unless ``row`` holds values every backend can store faithfully."""
    if row.state not in JOB_STATES:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"job state {row.state!r} is not known")
    if not 0 <= row.run_id <= _MAX_RUN_ID:
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, "job run_id must be a non-negative 63-bit integer"
        )
    if row.current_round < 0:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "job current_round must be non-negative")


def check_transition(job_id: str, stored: str, new: str) -> None:
    """FAILED_PRECONDITION when a finished job would change state (same state is a no-op)."""
    if stored in FINISHED_STATES and new != stored:
        raise InsituError(
            ErrorCode.FAILED_PRECONDITION, f"job {job_id} is {stored}; it cannot become {new}"
        )


def not_found(job_id: str) -> InsituError:
    return InsituError(ErrorCode.NOT_FOUND, f"job {job_id} not found")


def to_row(values: tuple[Any, ...]) -> JobRow:
    """A JobRow from one row selected as ``COLUMNS`` (bytes-like and numbers normalized)."""
    v = values
    return JobRow(
        job_id=str(v[0]),
        owner=str(v[1]),
        org=str(v[2]),
        code_sha256=str(v[3]),
        model_name=str(v[4]),
        request=bytes(v[5]),
        run_id=int(v[6]),
        state=str(v[7]),
        submitted_at=float(v[8]),
        finished_at=None if v[9] is None else float(v[9]),
        error=str(v[10]),
        fix=str(v[11]),
        model_version=str(v[12]),
        current_round=int(v[13]),
        approvals=str(v[14]),
        extra=str(v[15]),
    )


class JobStore(abc.ABC):
    """The durable record of jobs. Every method is thread-safe, and every write is one
    transaction that is durable when the method returns."""

    @abc.abstractmethod
    def insert(self, row: JobRow, bundle: bytes) -> None:
        """Store a new job and its app bundle together.

        MUST raise ALREADY_EXISTS (keeping the stored job) when ``row.job_id`` exists, and
        INVALID_ARGUMENT for a state outside JOB_STATES or a run_id outside [0, 2**63).
        """

    @abc.abstractmethod
    def save(self, row: JobRow) -> None:
        """Overwrite the mutable fields (``MUTABLE``) of an existing job; the others are
        fixed at insert and ignored here.

        MUST raise NOT_FOUND when the job is absent, INVALID_ARGUMENT for an unknown
        state, and FAILED_PRECONDITION (changing nothing) when a finished job would change
        state. Saving a finished job in its own state again is allowed. The store does not
        otherwise judge transitions: that is the job manager's state machine.
        """

    @abc.abstractmethod
    def append_round(self, job_id: str, summary: bytes) -> int:
        """Append one serialized RoundSummary; return its sequence number (0, 1, ...).

        MUST raise NOT_FOUND when the job is absent. Concurrent appenders (threads or
        processes) get distinct, gap-free numbers.
        """

    @abc.abstractmethod
    def get(self, job_id: str) -> JobRow | None:
        """The stored job, or None."""

    @abc.abstractmethod
    def bundle(self, job_id: str) -> bytes:
        """The app bundle stored with the job. MUST raise NOT_FOUND when absent."""

    @abc.abstractmethod
    def rounds(self, job_id: str) -> list[bytes]:
        """Every appended summary, in append order. MUST raise NOT_FOUND when absent."""

    @abc.abstractmethod
    def list_jobs(self, owner: str | None = None) -> list[JobRow]:
        """Every job (of ``owner`` when given), ordered by submitted_at, then job_id."""

    @abc.abstractmethod
    def interrupt_running(self, *, now: float, error: str) -> list[str]:
        """In one transaction, mark every running job interrupted, with ``finished_at=now``
        and ``error``; return their ids, sorted. Jobs in other states are untouched."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection. Nothing may be called on the store afterwards."""


_STATE_LIST: Final = ", ".join(f"'{s}'" for s in JOB_STATES)
_FINISHED_LIST: Final = ", ".join(f"'{s}'" for s in sorted(FINISHED_STATES))

_SQLITE_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS jobs (
  job_id TEXT PRIMARY KEY,
  owner TEXT NOT NULL,
  org TEXT NOT NULL,
  code_sha256 TEXT NOT NULL,
  model_name TEXT NOT NULL,
  request BLOB NOT NULL,
  run_id INTEGER NOT NULL CHECK (run_id >= 0),
  state TEXT NOT NULL CHECK (state IN ({_STATE_LIST})),
  submitted_at REAL NOT NULL,
  finished_at REAL,
  error TEXT NOT NULL,
  fix TEXT NOT NULL,
  model_version TEXT NOT NULL,
  current_round INTEGER NOT NULL CHECK (current_round >= 0),
  approvals TEXT NOT NULL,
  extra TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_submitted ON jobs(submitted_at, job_id);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs(owner, submitted_at, job_id);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);
CREATE TABLE IF NOT EXISTS job_bundles (
  job_id TEXT PRIMARY KEY REFERENCES jobs(job_id),
  bundle BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS job_rounds (
  job_id TEXT NOT NULL REFERENCES jobs(job_id),
  seq INTEGER NOT NULL CHECK (seq >= 0),
  summary BLOB NOT NULL,
  PRIMARY KEY (job_id, seq)
);
CREATE TRIGGER IF NOT EXISTS jobs_finished_is_final BEFORE UPDATE OF state ON jobs
  WHEN OLD.state IN ({_FINISHED_LIST}) AND NEW.state IS NOT OLD.state
  BEGIN SELECT RAISE(ABORT, 'a finished job cannot change state'); END;
"""

# Built from the constant column names above, never from input.
_SELECT: Final = "SELECT " + ", ".join(COLUMNS) + " FROM jobs"  # noqa: S608
_INSERT: Final = (
    f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"  # noqa: S608
    " ON CONFLICT (job_id) DO NOTHING"
)
_UPDATE: Final = (
    "UPDATE jobs SET " + ", ".join(f"{c} = ?" for c in MUTABLE) + " WHERE job_id = ?"  # noqa: S608
)


def _sqlite_unavailable(e: sqlite3.Error) -> InsituError:
    # Class and SQLite result code only, as the PostgreSQL store reports its errors.
    code = getattr(e, "sqlite_errorname", None)
    detail = type(e).__name__ if code is None else f"{type(e).__name__} ({code})"
    return InsituError(ErrorCode.UNAVAILABLE, f"sqlite job store: {detail}")


class SqliteJobStore(JobStore):
    """SQLite backend: one connection behind an RLock, WAL with ``synchronous=FULL`` (a
    commit fsyncs the log before it returns). The file is created 0600."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            if not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, mode=0o700)
                self.path.parent.chmod(0o700)  # whatever the umask
            # Jobs name their owners and carry their code: readable by this user only.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=busy_timeout_s
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(f"BEGIN IMMEDIATE;{_SQLITE_SCHEMA}COMMIT;")
        except sqlite3.Error as e:
            raise _sqlite_unavailable(e) from None
        except OSError as e:
            raise InsituError(
                ErrorCode.UNAVAILABLE, f"sqlite job store: cannot open: {e.strerror}"
            ) from None

    @contextmanager
    def _tx(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction, rolled back on any exception. Writers take the write lock up
        front (IMMEDIATE); readers (``BEGIN``) read one snapshot and block no one."""
        with self._lock:
            try:
                self._db.execute(begin)
                try:
                    yield self._db
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                raise _sqlite_unavailable(e) from None

    def _exists(self, db: sqlite3.Connection, job_id: str) -> bool:
        return db.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone() is not None

    def insert(self, row: JobRow, bundle: bytes) -> None:
        check_row(row)
        with self._tx() as db:
            cur = db.execute(_INSERT, tuple(getattr(row, c) for c in COLUMNS))
            if cur.rowcount != 1:
                raise InsituError(ErrorCode.ALREADY_EXISTS, f"job {row.job_id} already exists")
            db.execute(
                "INSERT INTO job_bundles (job_id, bundle) VALUES (?, ?)", (row.job_id, bundle)
            )

    def save(self, row: JobRow) -> None:
        check_row(row)
        with self._tx() as db:
            found = db.execute("SELECT state FROM jobs WHERE job_id = ?", (row.job_id,)).fetchone()
            if found is None:
                raise not_found(row.job_id)
            check_transition(row.job_id, str(found[0]), row.state)
            db.execute(_UPDATE, (*(getattr(row, c) for c in MUTABLE), row.job_id))

    def append_round(self, job_id: str, summary: bytes) -> int:
        with self._tx() as db:
            if not self._exists(db, job_id):
                raise not_found(job_id)
            (seq,) = db.execute(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM job_rounds WHERE job_id = ?", (job_id,)
            ).fetchone()
            db.execute(
                "INSERT INTO job_rounds (job_id, seq, summary) VALUES (?, ?, ?)",
                (job_id, seq, summary),
            )
            return int(seq)

    def get(self, job_id: str) -> JobRow | None:
        with self._tx("BEGIN") as db:
            found = db.execute(f"{_SELECT} WHERE job_id = ?", (job_id,)).fetchone()
        return None if found is None else to_row(found)

    def bundle(self, job_id: str) -> bytes:
        with self._tx("BEGIN") as db:
            found = db.execute(
                "SELECT bundle FROM job_bundles WHERE job_id = ?", (job_id,)
            ).fetchone()
        if found is None:
            raise not_found(job_id)
        return bytes(found[0])

    def rounds(self, job_id: str) -> list[bytes]:
        with self._tx("BEGIN") as db:
            if not self._exists(db, job_id):
                raise not_found(job_id)
            rows = db.execute(
                "SELECT summary FROM job_rounds WHERE job_id = ? ORDER BY seq", (job_id,)
            ).fetchall()
        return [bytes(r[0]) for r in rows]

    def list_jobs(self, owner: str | None = None) -> list[JobRow]:
        with self._tx("BEGIN") as db:
            if owner is None:
                rows = db.execute(f"{_SELECT} ORDER BY submitted_at, job_id").fetchall()
            else:
                rows = db.execute(
                    f"{_SELECT} WHERE owner = ? ORDER BY submitted_at, job_id", (owner,)
                ).fetchall()
        return [to_row(r) for r in rows]

    def interrupt_running(self, *, now: float, error: str) -> list[str]:
        with self._tx() as db:
            ids = db.execute(
                "UPDATE jobs SET state = 'interrupted', finished_at = ?, error = ?"
                " WHERE state = 'running' RETURNING job_id",
                (now, error),
            ).fetchall()
        return sorted(str(r[0]) for r in ids)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_job_store(data_dir: Path, dsn: str = "") -> JobStore:
    """The configured store: SQLite at ``data_dir / "jobs.db"``, or PostgreSQL at ``dsn``."""
    if not dsn:
        return SqliteJobStore(data_dir / "jobs.db")
    # Imported here so that a SQLite-only coordinator never loads psycopg.
    from coordinator.jobs.postgres_store import PostgresJobStore

    return PostgresJobStore(dsn)
