"""The site's differential-privacy budget ledger: every epsilon a dataset spends, for ever.

An append-only SQLite table (``<site-dir>/privacy-ledger.db``, WAL, ``synchronous=FULL``;
triggers refuse UPDATE and DELETE). Balances are folded from the entries, so a crash
leaves either a whole entry or none. The flow for a DP job at a site:

1. :meth:`PrivacyLedger.reserve` before training starts; it refuses (RESOURCE_EXHAUSTED)
   when spent + outstanding reservations + requested would pass the dataset's budget;
2. :meth:`PrivacyLedger.charge` the epsilon the accountant reports *before the update
   leaves the site*; a charge above the job's open reservation is refused, and then the
   update must not be released (an unreleased update spends no privacy);
3. :meth:`PrivacyLedger.release` when the job ends, returning what it did not spend.

A reservation left open by a crash stays counted against the budget (the safe side)
until released; :meth:`PrivacyLedger.open_reservations` lists them, and the site releases
those of jobs the coordinator no longer runs when it reconnects.

Example::

    ledger = open_ledger(site_dir, load_datasets(site_dir))
    ledger.reserve("bcw", job_id, 1.5)
    ledger.charge("bcw", job_id, reply_epsilon)
    ledger.release("bcw", job_id)
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from insitu.errors import ErrorCode, InsituError
from site_node.training.datasets import DatasetRegistry

__all__ = ["LEDGER_FILE", "LedgerEntry", "PrivacyLedger", "open_ledger"]

LEDGER_FILE: Final = "privacy-ledger.db"
_TOLERANCE: Final = 1e-9  # float sums of many small charges must not refuse an exact fit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS privacy_ledger (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    at       TEXT NOT NULL,
    dataset  TEXT NOT NULL,
    job_id   TEXT NOT NULL,
    kind     TEXT NOT NULL CHECK (kind IN ('reserve', 'charge', 'release')),
    epsilon  REAL NOT NULL CHECK (epsilon >= 0),
    budget   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS privacy_ledger_dataset ON privacy_ledger (dataset, seq);
CREATE TRIGGER IF NOT EXISTS privacy_ledger_no_update BEFORE UPDATE ON privacy_ledger
BEGIN SELECT RAISE(ABORT, 'privacy ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS privacy_ledger_no_delete BEFORE DELETE ON privacy_ledger
BEGIN SELECT RAISE(ABORT, 'privacy ledger is append-only'); END;
"""


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    at: str
    dataset: str
    job_id: str
    kind: str  # reserve | charge | release
    epsilon: float
    budget: float  # the dataset's budget when the entry was written


@dataclass(frozen=True)
class _Balance:
    spent: float
    reserved: float  # open reservations of all jobs
    open_by_job: dict[str, float]


def _fold(entries: list[LedgerEntry]) -> _Balance:
    charges: list[float] = []
    open_by_job: dict[str, list[float]] = {}
    for entry in entries:
        if entry.kind == "reserve":
            open_by_job.setdefault(entry.job_id, []).append(entry.epsilon)
        elif entry.kind == "charge":
            charges.append(entry.epsilon)
            open_by_job.setdefault(entry.job_id, []).append(-entry.epsilon)
        else:
            open_by_job[entry.job_id] = []
    open_amounts = {job: max(0.0, math.fsum(v)) for job, v in open_by_job.items()}
    return _Balance(
        spent=math.fsum(charges),
        reserved=math.fsum(open_amounts.values()),
        open_by_job={job: amount for job, amount in open_amounts.items() if amount > 0},
    )


def _check_epsilon(epsilon: float, *, allow_zero: bool) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "epsilon must be a number")
    value = float(epsilon)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, f"epsilon must be finite and > 0, got {value}"
        )
    return value


class PrivacyLedger:
    """Per-dataset epsilon accounting over one SQLite file (safe across processes)."""

    def __init__(self, path: Path, budgets: Mapping[str, float]) -> None:
        self.path = Path(path)
        self._budgets = dict(budgets)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def budget(self, dataset: str) -> float:
        try:
            return self._budgets[dataset]
        except KeyError:
            raise InsituError(
                ErrorCode.NOT_FOUND, f"dataset {dataset!r} has no privacy budget at this site"
            ) from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock before reading balances: two daemons (or threads)
        # can never both see room for the same epsilon.
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _entries(self, db: sqlite3.Connection, dataset: str) -> list[LedgerEntry]:
        rows = db.execute(
            "SELECT seq, at, dataset, job_id, kind, epsilon, budget FROM privacy_ledger "
            "WHERE dataset = ? ORDER BY seq",
            (dataset,),
        ).fetchall()
        return [LedgerEntry(*row) for row in rows]

    def _append(
        self, db: sqlite3.Connection, dataset: str, job_id: str, kind: str, epsilon: float
    ) -> None:
        db.execute(
            "INSERT INTO privacy_ledger (at, dataset, job_id, kind, epsilon, budget) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (datetime.now(UTC).isoformat(), dataset, job_id, kind, epsilon, self.budget(dataset)),
        )

    def reserve(self, dataset: str, job_id: str, epsilon: float) -> None:
        """Set ``epsilon`` aside for ``job_id``, or refuse with the numbers that did not fit."""
        value = _check_epsilon(epsilon, allow_zero=False)
        budget = self.budget(dataset)
        with self._write() as db:
            balance = _fold(self._entries(db, dataset))
            if balance.spent + balance.reserved + value > budget + _TOLERANCE:
                raise InsituError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"dataset {dataset!r} privacy budget exceeded: spent {balance.spent:.6g} + "
                    f"reserved {balance.reserved:.6g} + requested {value:.6g} > budget "
                    f"{budget:.6g}",
                )
            self._append(db, dataset, job_id, "reserve", value)

    def charge(self, dataset: str, job_id: str, epsilon: float) -> None:
        """Record ``epsilon`` actually spent by ``job_id``, out of its open reservation."""
        value = _check_epsilon(epsilon, allow_zero=True)
        with self._write() as db:
            balance = _fold(self._entries(db, dataset))
            available = balance.open_by_job.get(job_id, 0.0)
            if value > available + _TOLERANCE:
                raise InsituError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"dataset {dataset!r} job {job_id!r}: charge {value:.6g} exceeds its open "
                    f"reservation {available:.6g}; the update must not leave the site",
                )
            self._append(db, dataset, job_id, "charge", value)

    def release(self, dataset: str, job_id: str) -> float:
        """Close ``job_id``'s reservation; returns the unspent epsilon given back."""
        with self._write() as db:
            balance = _fold(self._entries(db, dataset))
            unspent = balance.open_by_job.get(job_id, 0.0)
            if job_id in balance.open_by_job:
                self._append(db, dataset, job_id, "release", unspent)
            return unspent

    def _balance(self, dataset: str) -> _Balance:
        with self._lock:
            return _fold(self._entries(self._db, dataset))

    def spent(self, dataset: str) -> float:
        """Epsilon charged to ``dataset`` so far, over all jobs."""
        return self._balance(dataset).spent

    def reserved(self, dataset: str) -> float:
        """Epsilon set aside by open reservations."""
        return self._balance(dataset).reserved

    def remaining(self, dataset: str) -> float:
        """Budget minus spent minus reserved (never below zero)."""
        balance = self._balance(dataset)
        return max(0.0, self.budget(dataset) - balance.spent - balance.reserved)

    def open_reservations(self) -> list[tuple[str, str]]:
        """``(dataset, job_id)`` of every reservation still open, over all datasets: reserved,
        and neither charged in full nor released (a crash can leave one open)."""
        with self._lock:
            datasets = [row[0] for row in self._db.execute(
                "SELECT DISTINCT dataset FROM privacy_ledger ORDER BY dataset").fetchall()]
            return [
                (dataset, job_id)
                for dataset in datasets
                for job_id in sorted(_fold(self._entries(self._db, dataset)).open_by_job)
            ]

    def history(self, dataset: str) -> list[LedgerEntry]:
        """Every entry for ``dataset``, oldest first."""
        with self._lock:
            return self._entries(self._db, dataset)


def open_ledger(site_dir: Path, registry: DatasetRegistry) -> PrivacyLedger:
    """The ledger at ``<site-dir>/privacy-ledger.db`` with the registry's budgets."""
    budgets = {name: ds.epsilon_budget for name, ds in registry.items()}
    return PrivacyLedger(Path(site_dir) / LEDGER_FILE, budgets)
