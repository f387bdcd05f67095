"""The job store contract on SQLite, plus what only the SQLite backend promises."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from job_store_contract import JobStoreContract, job

from coordinator.jobs.store import JobStore, SqliteJobStore, open_job_store
from insitu.errors import ErrorCode, InsituError


class TestSqliteJobStore(JobStoreContract):
    @pytest.fixture(autouse=True)
    def _path(self, tmp_path: Path) -> None:
        self.path = tmp_path / "jobs.db"

    def open_store(self) -> JobStore:
        return SqliteJobStore(self.path)


def test_pragmas_and_permissions(tmp_path: Path) -> None:
    path = tmp_path / "state" / "jobs.db"
    store = SqliteJobStore(path)
    try:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
    finally:
        store.close()


def test_backend_refuses_what_the_api_refuses(tmp_path: Path) -> None:
    """CHECK constraints and the trigger hold even for SQL that bypasses the store."""
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path)
    store.insert(job("a", state="succeeded"), b"b")
    store.insert(job("b"), b"b")
    store.close()
    con = sqlite3.connect(path, isolation_level=None)
    try:
        for sql in (
            "UPDATE jobs SET state = 'running' WHERE job_id = 'a'",
            "UPDATE jobs SET state = 'bogus' WHERE job_id = 'b'",
            "UPDATE jobs SET run_id = -1 WHERE job_id = 'b'",
            "INSERT INTO job_rounds (job_id, seq, summary) VALUES ('a', -1, x'00')",
        ):
            with pytest.raises(sqlite3.IntegrityError):
                con.execute(sql)
    finally:
        con.close()


def test_unwritable_location_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(InsituError) as e:
        SqliteJobStore(blocker / "jobs.db")
    assert e.value.code is ErrorCode.UNAVAILABLE


def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.db")
    store.close()
    with pytest.raises(InsituError) as e:
        store.get("a")
    assert e.value.code is ErrorCode.UNAVAILABLE


def test_open_job_store_without_dsn_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    store = open_job_store(tmp_path)
    try:
        assert isinstance(store, SqliteJobStore)
        assert store.path == tmp_path / "jobs.db" and store.path.is_file()
    finally:
        store.close()
