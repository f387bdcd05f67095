"""The tamper matrix, on an export and on the stored SQLite file: each tampering is found
at the right stage and index."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import rfc8785
from audit_support import ORIGIN, make_record

from insitu.audit.checkpoint import Checkpoint, sign_checkpoint
from insitu.audit.errors import VerificationError
from insitu.audit.export import export_store, read_checkpoint_notes
from insitu.audit.log import AuditLog
from insitu.audit.merkle import hash_leaf
from insitu.audit.signing import LocalSigner
from insitu.audit.sqlite_store import SqliteAuditStore
from insitu.audit.verify import verify_export, verify_store

OpenLog = Callable[..., AuditLog]
N = 30  # entries; signed checkpoints at 10, 20 and 30


@pytest.fixture
def built(open_log: OpenLog, tmp_path: Path) -> tuple[Path, str]:
    """A closed log of N entries; returns (db path, trusted note of size N)."""
    log = open_log()
    for i in range(N):
        log.append(make_record(i))
        if (i + 1) % 10 == 0:
            log.checkpoint()
    note = log.checkpoint().note
    log.close()
    return tmp_path / "audit.db", note


def _export(db: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    store = SqliteAuditStore(db)
    try:
        export_store(store, tmp_path / "log.jsonl")
    finally:
        store.close()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    return lines, read_checkpoint_notes(tmp_path / "log.checkpoints.jsonl")


def _edit(line: str, *, fix_leaf: bool) -> str:
    obj = json.loads(line)
    obj["record"]["outcome"] = "denied"
    if fix_leaf:
        obj["leaf_hash"] = hash_leaf(rfc8785.dumps(obj["record"])).hex()
    return json.dumps(obj)


def _forged_line(seq: int) -> str:
    rec = make_record(seq).positioned(seq, "2026-11-21T10:00:00.000000Z").to_dict()
    data = rfc8785.dumps(rec)
    return json.dumps({"leaf_hash": hash_leaf(data).hex(), "record": json.loads(data)})


def _verify(lines: list[str], note: str, key: bytes, notes: list[str]) -> VerificationError:
    with pytest.raises(VerificationError) as ei:
        verify_export(lines, note, key, checkpoint_notes=notes)
    return ei.value


def test_untampered_export_verifies(
    built: tuple[Path, str], tmp_path: Path, signer: LocalSigner
) -> None:
    db, note = built
    lines, notes = _export(db, tmp_path)
    res = verify_export(lines, note, signer.public_key, checkpoint_notes=notes, origin=ORIGIN)
    assert res.size == N and res.checkpoints_checked == 3
    # Reformatting a line (whitespace, key order) changes no content: still verifies.
    lines[5] = json.dumps(json.loads(lines[5]), indent=1).replace("\n", " ")
    verify_export(lines, note, signer.public_key, checkpoint_notes=notes)


# --- on the export ----------------------------------------------------------------------


def test_export_edited_field(built: tuple[Path, str], tmp_path: Path, signer: LocalSigner) -> None:
    lines, notes = _export(built[0], tmp_path)
    lines[13] = _edit(lines[13], fix_leaf=False)
    e = _verify(lines, built[1], signer.public_key, notes)
    assert (e.stage, e.index) == (3, 13) and "modified" in e.reason


def test_export_edited_field_with_recomputed_leaf(
    built: tuple[Path, str], tmp_path: Path, signer: LocalSigner
) -> None:
    lines, notes = _export(built[0], tmp_path)
    lines[13] = _edit(lines[13], fix_leaf=True)
    e = _verify(lines, built[1], signer.public_key, notes)
    # Only signed roots can catch this; they bound it between checkpoints 10 and 20.
    assert e.stage == 4 and e.index_range == (10, 20)


def test_export_deleted_entry(built: tuple[Path, str], tmp_path: Path, signer: LocalSigner) -> None:
    lines, notes = _export(built[0], tmp_path)
    del lines[13]
    e = _verify(lines, built[1], signer.public_key, notes)
    assert (e.stage, e.index) == (3, 13) and "missing" in e.reason


def test_export_swapped_entries(
    built: tuple[Path, str], tmp_path: Path, signer: LocalSigner
) -> None:
    lines, notes = _export(built[0], tmp_path)
    lines[13], lines[14] = lines[14], lines[13]
    e = _verify(lines, built[1], signer.public_key, notes)
    assert (e.stage, e.index) == (3, 13) and "out of order" in e.reason


def test_export_truncated_tail(
    built: tuple[Path, str], tmp_path: Path, signer: LocalSigner
) -> None:
    lines, notes = _export(built[0], tmp_path)
    e = _verify(lines[:27], built[1], signer.public_key, notes)
    assert (e.stage, e.index) == (5, 27) and "truncated" in e.reason
    # Even without the exported checkpoints, the trusted one alone catches it.
    e = _verify(lines[:27], built[1], signer.public_key, [])
    assert (e.stage, e.index) == (5, 27)


def test_export_forged_appended_entry(
    built: tuple[Path, str], tmp_path: Path, signer: LocalSigner
) -> None:
    lines, notes = _export(built[0], tmp_path)
    e = _verify([*lines, _forged_line(N)], built[1], signer.public_key, notes)
    assert (e.stage, e.index) == (5, N) and "not covered" in e.reason


def test_export_checkpoint_signed_by_another_key(
    built: tuple[Path, str], tmp_path: Path, signer: LocalSigner
) -> None:
    lines, notes = _export(built[0], tmp_path)
    mallory = LocalSigner.generate()
    body_cp = Checkpoint(ORIGIN, N, bytes(32))
    forged_trusted = sign_checkpoint(body_cp, ORIGIN, mallory.sign, mallory.public_key)
    e = _verify(lines, forged_trusted, signer.public_key, notes)
    assert e.stage == 1 and "signature" in e.reason
    forged_export = [*notes[:-1], forged_trusted]
    e = _verify(lines, built[1], signer.public_key, forged_export)
    assert e.stage == 2


def test_first_problem_wins(built: tuple[Path, str], tmp_path: Path, signer: LocalSigner) -> None:
    lines, notes = _export(built[0], tmp_path)
    lines[4] = _edit(lines[4], fix_leaf=True)  # caught by roots, in [0, 10)
    del lines[25]  # a later deletion must not hide it
    e = _verify(lines, built[1], signer.public_key, notes)
    assert e.stage == 4 and e.index_range == (0, 10)


# --- on the stored SQLite file --------------------------------------------------------


def _sql(db: Path, *statements: str, params: tuple[object, ...] = ()) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    try:
        for t in (
            "records_no_delete",
            "records_no_update",
            "records_gap_free",
            "checkpoints_no_delete",
        ):
            con.execute(f"DROP TRIGGER IF EXISTS {t}")
        for s in statements:
            con.execute(s, params if "?" in s else ())
    finally:
        con.close()


def _verify_db(db: Path, note: str, key: bytes) -> VerificationError:
    store = SqliteAuditStore(db)
    try:
        with pytest.raises(VerificationError) as ei:
            verify_store(store, note, key)
    finally:
        store.close()
    return ei.value


def _stored(db: Path, seq: int) -> tuple[bytes, bytes]:
    con = sqlite3.connect(db)
    try:
        data, leaf = con.execute(
            "SELECT data, leaf_hash FROM records WHERE seq = ?", (seq,)
        ).fetchone()
    finally:
        con.close()
    return bytes(data), bytes(leaf)


def test_store_untampered_verifies(built: tuple[Path, str], signer: LocalSigner) -> None:
    store = SqliteAuditStore(built[0])
    try:
        assert verify_store(store, built[1], signer.public_key).size == N
    finally:
        store.close()


@pytest.mark.parametrize("fix_leaf", [False, True], ids=["naive", "leaf-recomputed"])
def test_store_edited_field(built: tuple[Path, str], signer: LocalSigner, fix_leaf: bool) -> None:
    db, note = built
    data, _ = _stored(db, 13)
    edited = data.replace(b'"outcome":"success"', b'"outcome":"denied"')
    assert edited != data
    leaf = hash_leaf(edited) if fix_leaf else _stored(db, 13)[1]
    _sql(db, "UPDATE records SET data = ?, leaf_hash = ? WHERE seq = 13", params=(edited, leaf))
    e = _verify_db(db, note, signer.public_key)
    if fix_leaf:
        assert e.stage == 4 and e.index_range == (10, 20)
    else:
        assert (e.stage, e.index) == (3, 13)


def test_store_deleted_entry(built: tuple[Path, str], signer: LocalSigner) -> None:
    _sql(built[0], "DELETE FROM records WHERE seq = 13")
    e = _verify_db(*built, signer.public_key)
    assert (e.stage, e.index) == (3, 13) and "missing" in e.reason


def test_store_swapped_entries(built: tuple[Path, str], signer: LocalSigner) -> None:
    db, note = built
    (d13, l13), (d14, l14) = _stored(db, 13), _stored(db, 14)
    _sql(db, "UPDATE records SET data = ?, leaf_hash = ? WHERE seq = 13", params=(d14, l14))
    _sql(db, "UPDATE records SET data = ?, leaf_hash = ? WHERE seq = 14", params=(d13, l13))
    e = _verify_db(db, note, signer.public_key)
    assert (e.stage, e.index) == (3, 13) and "out of order" in e.reason


def test_store_truncated_tail(built: tuple[Path, str], signer: LocalSigner) -> None:
    _sql(built[0], "DELETE FROM records WHERE seq >= 27", "DELETE FROM checkpoints WHERE size > 20")
    e = _verify_db(*built, signer.public_key)
    assert (e.stage, e.index) == (5, 27)


def test_store_forged_appended_entry(built: tuple[Path, str], signer: LocalSigner) -> None:
    data = rfc8785.dumps(make_record(N).positioned(N, "2026-11-21T10:00:00.000000Z").to_dict())
    _sql(built[0], "INSERT INTO records VALUES (?, ?, ?)", params=(N, hash_leaf(data), data))
    e = _verify_db(*built, signer.public_key)
    assert (e.stage, e.index) == (5, N)


def test_store_checkpoint_signed_by_another_key(
    built: tuple[Path, str], signer: LocalSigner
) -> None:
    mallory = LocalSigner.generate()
    forged = sign_checkpoint(
        Checkpoint(ORIGIN, N, bytes(32)), ORIGIN, mallory.sign, mallory.public_key
    )
    _sql(built[0], "INSERT INTO checkpoints (size, note) VALUES (?, ?)", params=(N, forged))
    e = _verify_db(built[0], built[1], signer.public_key)
    assert e.stage == 2
    e = _verify_db(built[0], forged, signer.public_key)
    assert e.stage == 1
