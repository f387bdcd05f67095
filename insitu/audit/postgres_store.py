"""The HA audit store: PostgreSQL through psycopg 3.

Appenders from any number of processes serialize on a transaction-scoped advisory lock,
check that the batch starts at the current size, insert, and commit (durable with the
default ``synchronous_commit=on``, which the connection states explicitly). The schema is
created on first use. Triggers refuse UPDATE, DELETE and TRUNCATE (the one allowed update
nulls a body below the prune horizon), and, when an application role is named, that role
gets only SELECT and INSERT: UPDATE, DELETE and TRUNCATE are revoked from it, so only the
owner role (an operator, for ``insitu-audit prune``) can prune.

Example::

    store = PostgresAuditStore("host=127.0.0.1 user=postgres dbname=insitu",
                               schema="audit_coordinator", app_role="insitu_app")
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from insitu.audit.errors import AuditError, AuditUnavailableError, SequenceConflictError
from insitu.audit.sqlite_store import check_batch
from insitu.audit.store import AuditStore, StoredCheckpoint, StoredEntry, WitnessedNote

__all__ = ["PostgresAuditStore"]

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_PAGE = 10_000

_DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.records (
    seq bigint PRIMARY KEY CHECK (seq >= 0),
    leaf_hash bytea NOT NULL CHECK (octet_length(leaf_hash) = 32),
    data bytea
);
CREATE TABLE IF NOT EXISTS {s}.checkpoints (
    id bigserial PRIMARY KEY,
    size bigint NOT NULL CHECK (size >= 0),
    note text NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.witnessed (
    id bigserial PRIMARY KEY,
    origin text NOT NULL,
    size bigint NOT NULL CHECK (size >= 0),
    note text NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.prune_state (
    id int PRIMARY KEY CHECK (id = 1),
    horizon bigint NOT NULL CHECK (horizon >= 0)
);
INSERT INTO {s}.prune_state (id, horizon) VALUES (1, 0) ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION {s}.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'insitu audit: % on %.% refused (append-only)',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE OR REPLACE FUNCTION {s}.records_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.seq IS DISTINCT FROM (SELECT COALESCE(MAX(seq) + 1, 0) FROM {s}.records) THEN
            RAISE EXCEPTION 'insitu audit: seq must be gap-free' USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.seq = OLD.seq AND NEW.leaf_hash = OLD.leaf_hash
       AND NEW.data IS NULL
       AND OLD.seq < (SELECT horizon FROM {s}.prune_state WHERE id = 1) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'insitu audit: % on %.% refused (append-only)',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE OR REPLACE FUNCTION {s}.prune_state_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.id = OLD.id AND NEW.horizon >= OLD.horizon THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'insitu audit: prune horizon only moves forward'
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE OR REPLACE TRIGGER records_guard BEFORE INSERT OR UPDATE OR DELETE ON {s}.records
    FOR EACH ROW EXECUTE FUNCTION {s}.records_guard();
CREATE OR REPLACE TRIGGER records_no_truncate BEFORE TRUNCATE ON {s}.records
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change();
CREATE OR REPLACE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON {s}.checkpoints
    FOR EACH ROW EXECUTE FUNCTION {s}.refuse_change();
CREATE OR REPLACE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON {s}.checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change();
CREATE OR REPLACE TRIGGER witnessed_append_only BEFORE UPDATE OR DELETE ON {s}.witnessed
    FOR EACH ROW EXECUTE FUNCTION {s}.refuse_change();
CREATE OR REPLACE TRIGGER witnessed_no_truncate BEFORE TRUNCATE ON {s}.witnessed
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change();
CREATE OR REPLACE TRIGGER prune_state_guard BEFORE UPDATE OR DELETE ON {s}.prune_state
    FOR EACH ROW EXECUTE FUNCTION {s}.prune_state_guard();
CREATE OR REPLACE TRIGGER prune_state_no_truncate BEFORE TRUNCATE ON {s}.prune_state
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change();
REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM PUBLIC;
"""

_GRANTS = """
GRANT USAGE ON SCHEMA {s} TO {r};
GRANT SELECT, INSERT ON {s}.records, {s}.checkpoints, {s}.witnessed TO {r};
GRANT SELECT ON {s}.prune_state TO {r};
GRANT USAGE ON SEQUENCE {s}.checkpoints_id_seq, {s}.witnessed_id_seq TO {r};
REVOKE UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA {s} FROM {r};
"""


def _ident(name: str, what: str) -> sql.Identifier:
    if not _IDENT.fullmatch(name):
        raise AuditError(f"{what} must be a lowercase SQL identifier")
    return sql.Identifier(name)


def _unavailable(e: psycopg.Error) -> AuditUnavailableError:
    # sqlstate and class only: server messages may echo row values.
    return AuditUnavailableError(f"postgres audit store: {type(e).__name__} ({e.sqlstate})")


class PostgresAuditStore(AuditStore):
    """PostgreSQL backend; every table lives in ``schema`` (one schema per log)."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "insitu_audit",
        app_role: str | None = None,
        create: bool = True,
        connect_timeout_s: int = 5,
    ) -> None:
        self._dsn = dsn
        self._timeout = connect_timeout_s
        self._schema = _ident(schema, "schema")
        self._role = None if app_role is None else _ident(app_role, "app role")
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._lock_key = f"insitu_audit:{schema}"
        if create:
            self.create_schema()

    def _q(self, text: str) -> sql.Composed:
        if self._role is None:
            return sql.SQL(text).format(s=self._schema)
        return sql.SQL(text).format(s=self._schema, r=self._role)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = psycopg.connect(
                    self._dsn, autocommit=True, connect_timeout=self._timeout
                )
                self._conn.execute("SET synchronous_commit = on")
            except psycopg.Error as e:
                raise _unavailable(e) from None
        return self._conn

    def create_schema(self) -> None:
        """Create tables, triggers and grants (idempotent; serialized across processes)."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext('insitu_audit_ddl'))")
                    conn.execute(self._q(_DDL))
                    if self._role is not None:
                        conn.execute(self._q(_GRANTS))
            except psycopg.Error as e:
                raise _unavailable(e) from None

    def _size(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(self._q("SELECT COALESCE(MAX(seq) + 1, 0) FROM {s}.records")).fetchone()
        assert row is not None
        return int(row[0])

    def size(self) -> int:
        with self._lock:
            try:
                return self._size(self._connection())
            except psycopg.Error as e:
                raise _unavailable(e) from None

    def append_batch(self, entries: Sequence[StoredEntry]) -> None:
        if not entries:
            return
        check_batch(entries)
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._lock_key,))
                    size = self._size(conn)
                    if entries[0].seq != size:
                        raise SequenceConflictError(entries[0].seq, size)
                    with conn.cursor() as cur:
                        cur.executemany(
                            self._q(
                                "INSERT INTO {s}.records (seq, leaf_hash, data) VALUES (%s, %s, %s)"
                            ),
                            [(e.seq, e.leaf_hash, e.data) for e in entries],
                        )
            except psycopg.Error as e:
                raise _unavailable(e) from None

    def _rows(self, query: str, start: int, end: int | None) -> Iterator[tuple[Any, ...]]:
        pos = start
        while end is None or pos < end:
            hi = pos + _PAGE if end is None else min(end, pos + _PAGE)
            with self._lock:
                try:
                    rows = self._connection().execute(self._q(query), (pos, hi)).fetchall()
                except psycopg.Error as e:
                    raise _unavailable(e) from None
            yield from rows
            if len(rows) < hi - pos:
                return
            pos = hi

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[StoredEntry]:
        q = "SELECT seq, leaf_hash, data FROM {s}.records WHERE seq >= %s AND seq < %s ORDER BY seq"
        for seq, lh, data in self._rows(q, start, end):
            yield StoredEntry(int(seq), bytes(lh), None if data is None else bytes(data))

    def leaf_hashes(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        q = "SELECT leaf_hash FROM {s}.records WHERE seq >= %s AND seq < %s ORDER BY seq"
        for (lh,) in self._rows(q, start, end):
            yield bytes(lh)

    def _write(self, query: str, params: tuple[Any, ...]) -> None:
        with self._lock:
            try:
                with self._connection().transaction() as tx:
                    tx.connection.execute(self._q(query), params)
            except psycopg.Error as e:
                raise _unavailable(e) from None

    def _read(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._connection().execute(self._q(query), params).fetchall()
            except psycopg.Error as e:
                raise _unavailable(e) from None

    def add_checkpoint(self, size: int, note: str) -> None:
        self._write("INSERT INTO {s}.checkpoints (size, note) VALUES (%s, %s)", (size, note))

    def checkpoints(self) -> list[StoredCheckpoint]:
        rows = self._read("SELECT size, note FROM {s}.checkpoints ORDER BY size, id")
        return [StoredCheckpoint(int(s), str(n)) for s, n in rows]

    def add_witnessed(self, origin: str, size: int, note: str) -> None:
        self._write(
            "INSERT INTO {s}.witnessed (origin, size, note) VALUES (%s, %s, %s)",
            (origin, size, note),
        )

    def witnessed(self, origin: str | None = None) -> list[WitnessedNote]:
        if origin is None:
            rows = self._read("SELECT origin, size, note FROM {s}.witnessed ORDER BY id")
        else:
            rows = self._read(
                "SELECT origin, size, note FROM {s}.witnessed WHERE origin = %s ORDER BY id",
                (origin,),
            )
        return [WitnessedNote(str(o), int(s), str(n)) for o, s, n in rows]

    def prune_horizon(self) -> int:
        return int(self._read("SELECT horizon FROM {s}.prune_state WHERE id = 1")[0][0])

    def prune_bodies(self, before_seq: int) -> None:
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._lock_key,))
                    row = conn.execute(
                        self._q("SELECT horizon FROM {s}.prune_state WHERE id = 1")
                    ).fetchone()
                    assert row is not None
                    horizon, size = int(row[0]), self._size(conn)
                    if not horizon <= before_seq <= size:
                        raise AuditError(
                            f"prune horizon {before_seq} must be within [{horizon}, {size}]"
                        )
                    conn.execute(
                        self._q("UPDATE {s}.prune_state SET horizon = %s WHERE id = 1"),
                        (before_seq,),
                    )
                    conn.execute(
                        self._q(
                            "UPDATE {s}.records SET data = NULL WHERE seq < %s AND data IS NOT NULL"
                        ),
                        (before_seq,),
                    )
            except psycopg.Error as e:
                raise _unavailable(e) from None

    def drop_schema_unsafe(self) -> None:
        """Drop the whole schema (tests only: destroys the log). Owner role required."""
        with self._lock:
            try:
                self._connection().execute(self._q("DROP SCHEMA IF EXISTS {s} CASCADE"))
            except psycopg.Error as e:
                raise _unavailable(e) from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
