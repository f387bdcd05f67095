"""The job store on PostgreSQL through psycopg 3, for coordinators that share a database.

Every table lives in one schema, created on first use (the DDL of concurrent starters is
serialized by an advisory lock). Writers that must read before they write (``save``,
``append_round``) lock the job's row first, so concurrent coordinators get gap-free round
numbers and never change the state of a finished job; a trigger refuses the latter too.
Commits are durable (``synchronous_commit=on``, stated on every connection). Errors carry
only the psycopg class and sqlstate: server messages may echo row values.

Example::

    store = PostgresJobStore("host=db user=insitu dbname=insitu", schema="insitu_jobs")
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import psycopg
from psycopg import sql

from coordinator.jobs.store import (
    COLUMNS,
    FINISHED_STATES,
    JOB_STATES,
    MUTABLE,
    JobRow,
    JobStore,
    check_row,
    check_transition,
    not_found,
    to_row,
)
from insitu.errors import ErrorCode, InsituError

__all__ = ["PostgresJobStore"]

_IDENT: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_DDL: Final = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.jobs (
    job_id text PRIMARY KEY,
    owner text NOT NULL,
    org text NOT NULL,
    code_sha256 text NOT NULL,
    model_name text NOT NULL,
    request bytea NOT NULL,
    run_id bigint NOT NULL CHECK (run_id >= 0),
    state text NOT NULL CHECK (state IN ({states})),
    submitted_at double precision NOT NULL,
    finished_at double precision,
    error text NOT NULL,
    fix text NOT NULL,
    model_version text NOT NULL,
    current_round bigint NOT NULL CHECK (current_round >= 0),
    approvals text NOT NULL,
    extra text NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_submitted ON {s}.jobs (submitted_at, job_id);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON {s}.jobs (owner, submitted_at, job_id);
CREATE INDEX IF NOT EXISTS jobs_running ON {s}.jobs (job_id) WHERE state = 'running';
CREATE TABLE IF NOT EXISTS {s}.job_bundles (
    job_id text PRIMARY KEY REFERENCES {s}.jobs (job_id),
    bundle bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.job_rounds (
    job_id text NOT NULL REFERENCES {s}.jobs (job_id),
    seq bigint NOT NULL CHECK (seq >= 0),
    summary bytea NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE OR REPLACE FUNCTION {s}.finished_is_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'insitu jobs: a finished job cannot change state'
        USING ERRCODE = 'check_violation';
END $$;
CREATE OR REPLACE TRIGGER jobs_finished_is_final BEFORE UPDATE OF state ON {s}.jobs
    FOR EACH ROW WHEN (OLD.state IN ({finished}) AND NEW.state IS DISTINCT FROM OLD.state)
    EXECUTE FUNCTION {s}.finished_is_final();
REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM PUBLIC;
"""

# Built from the store's constant column names, never from input; {s} is the schema.
_SELECT: Final = "SELECT " + ", ".join(COLUMNS) + " FROM {s}.jobs"  # noqa: S608
_INSERT: Final = (
    f"INSERT INTO {{s}}.jobs ({', '.join(COLUMNS)})"  # noqa: S608
    f" VALUES ({', '.join('%s' for _ in COLUMNS)}) ON CONFLICT (job_id) DO NOTHING"
)
_UPDATE: Final = (
    "UPDATE {s}.jobs SET " + ", ".join(f"{c} = %s" for c in MUTABLE) + " WHERE job_id = %s"  # noqa: S608
)


def _unavailable(e: psycopg.Error) -> InsituError:
    # Class and sqlstate only: server messages may echo row values, and connection errors
    # may echo the DSN.
    return InsituError(
        ErrorCode.UNAVAILABLE, f"postgres job store: {type(e).__name__} ({e.sqlstate})"
    )


class PostgresJobStore(JobStore):
    """PostgreSQL backend; every table lives in ``schema``. One connection behind an
    RLock, opened again on the next call after it broke (a call that fails with the
    connection is not retried: its commit may or may not have happened)."""

    def __init__(
        self, dsn: str, *, schema: str = "insitu_jobs", connect_timeout_s: int = 5
    ) -> None:
        if not _IDENT.fullmatch(schema):
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT, "job store schema must be a lowercase SQL identifier"
            )
        self._dsn = dsn
        self._timeout = connect_timeout_s
        self._schema = sql.Identifier(schema)
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._create_schema()

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self._schema)

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

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on the (re)opened connection; psycopg errors become UNAVAILABLE,
        InsituErrors raised inside roll it back and pass through."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    yield conn
            except psycopg.Error as e:
                raise _unavailable(e) from None

    def _create_schema(self) -> None:
        ddl = sql.SQL(_DDL).format(
            s=self._schema,
            states=sql.SQL(", ").join(sql.Literal(s) for s in JOB_STATES),
            finished=sql.SQL(", ").join(sql.Literal(s) for s in sorted(FINISHED_STATES)),
        )
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('insitu_jobs_ddl'))")
            conn.execute(ddl)

    def _lock_job(self, conn: psycopg.Connection[Any], job_id: str) -> str:
        """The job's state, its row locked until the transaction ends; NOT_FOUND if absent."""
        found = conn.execute(
            self._q("SELECT state FROM {s}.jobs WHERE job_id = %s FOR UPDATE"), (job_id,)
        ).fetchone()
        if found is None:
            raise not_found(job_id)
        return str(found[0])

    def insert(self, row: JobRow, bundle: bytes) -> None:
        check_row(row)
        with self._tx() as conn:
            cur = conn.execute(self._q(_INSERT), tuple(getattr(row, c) for c in COLUMNS))
            if cur.rowcount != 1:
                raise InsituError(ErrorCode.ALREADY_EXISTS, f"job {row.job_id} already exists")
            conn.execute(
                self._q("INSERT INTO {s}.job_bundles (job_id, bundle) VALUES (%s, %s)"),
                (row.job_id, bundle),
            )

    def save(self, row: JobRow) -> None:
        check_row(row)
        with self._tx() as conn:
            check_transition(row.job_id, self._lock_job(conn, row.job_id), row.state)
            conn.execute(self._q(_UPDATE), (*(getattr(row, c) for c in MUTABLE), row.job_id))

    def append_round(self, job_id: str, summary: bytes) -> int:
        with self._tx() as conn:
            self._lock_job(conn, job_id)  # serializes appenders of this job across processes
            found = conn.execute(
                self._q("SELECT COALESCE(MAX(seq) + 1, 0) FROM {s}.job_rounds WHERE job_id = %s"),
                (job_id,),
            ).fetchone()
            assert found is not None
            seq = int(found[0])
            conn.execute(
                self._q("INSERT INTO {s}.job_rounds (job_id, seq, summary) VALUES (%s, %s, %s)"),
                (job_id, seq, summary),
            )
            return seq

    def get(self, job_id: str) -> JobRow | None:
        with self._tx() as conn:
            found = conn.execute(self._q(_SELECT + " WHERE job_id = %s"), (job_id,)).fetchone()
        return None if found is None else to_row(found)

    def bundle(self, job_id: str) -> bytes:
        with self._tx() as conn:
            found = conn.execute(
                self._q("SELECT bundle FROM {s}.job_bundles WHERE job_id = %s"), (job_id,)
            ).fetchone()
        if found is None:
            raise not_found(job_id)
        return bytes(found[0])

    def rounds(self, job_id: str) -> list[bytes]:
        with self._tx() as conn:
            if (
                conn.execute(
                    self._q("SELECT 1 FROM {s}.jobs WHERE job_id = %s"), (job_id,)
                ).fetchone()
                is None
            ):
                raise not_found(job_id)
            rows = conn.execute(
                self._q("SELECT summary FROM {s}.job_rounds WHERE job_id = %s ORDER BY seq"),
                (job_id,),
            ).fetchall()
        return [bytes(r[0]) for r in rows]

    def list_jobs(self, owner: str | None = None) -> list[JobRow]:
        with self._tx() as conn:
            if owner is None:
                rows = conn.execute(self._q(_SELECT + " ORDER BY submitted_at, job_id")).fetchall()
            else:
                rows = conn.execute(
                    self._q(_SELECT + " WHERE owner = %s ORDER BY submitted_at, job_id"), (owner,)
                ).fetchall()
        return [to_row(r) for r in rows]

    def interrupt_running(self, *, now: float, error: str) -> list[str]:
        with self._tx() as conn:
            rows = conn.execute(
                self._q(
                    "UPDATE {s}.jobs SET state = 'interrupted', finished_at = %s, error = %s"
                    " WHERE state = 'running' RETURNING job_id"
                ),
                (now, error),
            ).fetchall()
        return sorted(str(r[0]) for r in rows)

    def drop_schema_unsafe(self) -> None:
        """Drop the whole schema (tests only: destroys every job)."""
        with self._tx() as conn:
            conn.execute(self._q("DROP SCHEMA IF EXISTS {s} CASCADE"))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
