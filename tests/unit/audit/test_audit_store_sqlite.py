from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from store_contract import StoreContract

from insitu.audit.errors import AuditUnavailableError
from insitu.audit.sqlite_store import SqliteAuditStore
from insitu.audit.store import AuditStore


class TestSqliteStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Path) -> None:
        self.path = tmp_path / "audit.db"

    def make_store(self) -> AuditStore:
        return SqliteAuditStore(self.path)

    def reopen(self, store: AuditStore) -> AuditStore:
        store.close()
        return SqliteAuditStore(self.path)

    def raw_execute(self, store: AuditStore, sql: str) -> None:
        con = sqlite3.connect(self.path, isolation_level=None)
        try:
            con.execute(sql.format(t="", h="x'" + "00" * 32 + "'"))
        finally:
            con.close()


def test_pragmas_and_permissions(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    store = SqliteAuditStore(path)
    try:
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert path.stat().st_mode & 0o077 == 0
    finally:
        store.close()


def test_read_only_open(tmp_path: Path) -> None:
    with pytest.raises(AuditUnavailableError):
        SqliteAuditStore(tmp_path / "missing.db", read_only=True)
    SqliteAuditStore(tmp_path / "a.db").close()
    ro = SqliteAuditStore(tmp_path / "a.db", read_only=True)
    try:
        assert ro.size() == 0
        with pytest.raises(AuditUnavailableError):
            ro.add_checkpoint(0, "x")
    finally:
        ro.close()


def test_unwritable_location_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(AuditUnavailableError):
        SqliteAuditStore(tmp_path / "no" / "such" / "dir" / "a.db")
