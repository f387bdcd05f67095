"""AuditLog: durable, gap-free, group-committed appends; checkpoints; fail-closed."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from audit_support import ORIGIN, make_record

from insitu.audit.checkpoint import verify_checkpoint
from insitu.audit.errors import (
    AuditError,
    AuditUnavailableError,
    RecordInvalidError,
    RootMismatchError,
    SignatureError,
)
from insitu.audit.log import AuditLog
from insitu.audit.merkle import hash_leaf, verify_consistency, verify_inclusion
from insitu.audit.record import parse_record
from insitu.audit.signing import LocalSigner
from insitu.audit.sqlite_store import SqliteAuditStore

OpenLog = Callable[..., AuditLog]


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_concurrent_appends_are_gap_free_and_durable(open_log: OpenLog, tmp_path: Path) -> None:
    log = open_log()
    seqs: list[int] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        for i in range(40):
            s = log.append(make_record(w * 100 + i))
            with lock:
                seqs.append(s)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(240)) and log.size == 240
    log.close()

    store = SqliteAuditStore(tmp_path / "audit.db")
    try:
        for e in store.entries():
            assert e.data is not None and hash_leaf(e.data) == e.leaf_hash
            rec = parse_record(e.data)  # stored bytes are canonical and schema-valid
            assert rec["seq"] == e.seq
        # close() took a final checkpoint covering everything
        latest = store.latest_checkpoint()
        assert latest is not None and latest.size == 240
    finally:
        store.close()


def test_checkpoint_and_proofs(open_log: OpenLog, signer: LocalSigner) -> None:
    log = open_log()
    for i in range(13):
        log.append(make_record(i))
    cp1 = log.checkpoint()
    assert log.checkpoint() is cp1  # nothing new: no new signature
    assert verify_checkpoint(cp1.note, ORIGIN, signer.public_key, origin=ORIGIN) == cp1.checkpoint
    for i in range(13, 20):
        log.append(make_record(i))
    cp2 = log.checkpoint()
    assert (cp1.size, cp2.size) == (13, 20)
    for idx in (0, 7, 12):
        verify_inclusion(log.leaf_hash(idx), idx, 13, log.inclusion_proof(idx, 13), cp1.root)
        verify_inclusion(log.leaf_hash(idx), idx, 20, log.inclusion_proof(idx, 20), cp2.root)
    verify_consistency(13, 20, log.consistency_proof(13, 20), cp1.root, cp2.root)
    assert log.latest_checkpoint() is cp2


def test_checkpoint_every_n_entries(open_log: OpenLog) -> None:
    log = open_log(checkpoint_every_n=5)
    for i in range(12):
        log.append(make_record(i))
    wait_until(
        lambda: (c := log.latest_checkpoint()) is not None and c.size >= 10, "checkpoint at N"
    )


def test_checkpoint_every_t_seconds(open_log: OpenLog) -> None:
    log = open_log(checkpoint_every_n=10_000, checkpoint_every_s=0.1)
    log.append(make_record())
    wait_until(
        lambda: (c := log.latest_checkpoint()) is not None and c.size == 1, "timed checkpoint"
    )


def test_lifecycle_events(open_log: OpenLog, tmp_path: Path) -> None:
    log = open_log(lifecycle_events=True)
    log.append(make_record())
    log.close()
    store = SqliteAuditStore(tmp_path / "audit.db")
    try:
        kinds = [json.loads(e.data or b"{}")["event_type"] for e in store.entries()]
    finally:
        store.close()
    assert kinds == ["audit.start", "rpc.request", "audit.stop"]


def test_invalid_records_are_refused(open_log: OpenLog) -> None:
    log = open_log()
    with pytest.raises(RecordInvalidError):
        log.append(make_record().positioned(0))  # seq is the log's to assign
    with pytest.raises(RecordInvalidError):
        log.append(make_record(outcome="perhaps"))
    assert log.size == 0


def test_store_failure_fails_closed_then_recovers(open_log: OpenLog) -> None:
    log = open_log()
    log.append(make_record(0))
    conn = log.store._conn  # type: ignore[attr-defined]
    conn.execute("PRAGMA query_only = ON")  # the disk refuses writes from now on
    with pytest.raises(AuditUnavailableError) as ei:
        log.append(make_record(1))
    assert ei.value.code.value == "audit_unavailable"
    conn.execute("PRAGMA query_only = OFF")
    assert log.append(make_record(2)) == 1  # no gap left by the failed append
    assert log.size == 2


def test_closed_log_refuses_appends(open_log: OpenLog) -> None:
    log = open_log()
    log.close()
    with pytest.raises(AuditUnavailableError):
        log.append(make_record())


def test_two_writers_on_one_store_resync(open_log: OpenLog, tmp_path: Path) -> None:
    a, b = open_log(), open_log()
    for i in range(5):
        a.append(make_record(i))
        b.append(make_record(100 + i))
    assert b.size == 10
    a.append(make_record(99))
    assert a.size == 11 and a.root(10) == b.root(10)
    a.close()
    b.close()
    again = open_log()
    assert again.size == 11


def _tamper(db: Path, *sql: str) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("DROP TRIGGER IF EXISTS records_no_delete")
        con.execute("DROP TRIGGER IF EXISTS records_no_update")
        for s in sql:
            con.execute(s)
    finally:
        con.close()


def test_reopen_refuses_a_truncated_store(open_log: OpenLog, tmp_path: Path) -> None:
    log = open_log()
    for i in range(10):
        log.append(make_record(i))
    log.close()
    _tamper(tmp_path / "audit.db", "DELETE FROM records WHERE seq >= 8")
    with pytest.raises(AuditError, match="lost or removed"):
        open_log()


def test_reopen_refuses_a_rewritten_store(open_log: OpenLog, tmp_path: Path) -> None:
    log = open_log()
    for i in range(10):
        log.append(make_record(i))
    log.close()
    _tamper(tmp_path / "audit.db", "UPDATE records SET leaf_hash = zeroblob(32) WHERE seq = 3")
    with pytest.raises(RootMismatchError):
        open_log()


def test_reopen_with_another_key_is_refused(tmp_path: Path, signer: LocalSigner) -> None:
    db = tmp_path / "audit.db"
    log = AuditLog(
        SqliteAuditStore(db),
        origin=ORIGIN,
        signer=signer.sign,
        key_name=ORIGIN,
        public_key=signer.public_key,
        lifecycle_events=False,
    )
    log.append(make_record())
    log.close()
    other = LocalSigner.generate()
    with pytest.raises(SignatureError):
        AuditLog(
            SqliteAuditStore(db),
            origin=ORIGIN,
            signer=other.sign,
            key_name=ORIGIN,
            public_key=other.public_key,
        )
