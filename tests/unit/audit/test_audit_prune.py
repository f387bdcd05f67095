"""Retention: refused inside the retention period; otherwise archived, logged, verifiable."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from audit_support import make_record

from insitu.audit.errors import AuditError, RetentionError
from insitu.audit.export import export_lines
from insitu.audit.log import AuditLog
from insitu.audit.prune import prune, verify_archive
from insitu.audit.record import Actor, format_time
from insitu.audit.signing import LocalSigner
from insitu.audit.verify import verify_export

OpenLog = Callable[..., AuditLog]
NOW = datetime(2026, 11, 21, tzinfo=UTC)
OPERATOR = Actor("spiffe://test.insitu/user/ops", "mtls", role="admin")


def _old_log(open_log: OpenLog) -> AuditLog:
    """12 entries from 2024 (two years ago) and 8 from this week."""
    log = open_log()
    for i in range(20):
        when = (
            datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=i)
            if i < 12
            else NOW - timedelta(days=1)
        )
        log.append(make_record(i, time=format_time(when)))
        if i == 5:
            log.checkpoint()
    log.checkpoint()
    return log


def test_prune_inside_retention_is_refused(open_log: OpenLog, tmp_path: Path) -> None:
    log = _old_log(open_log)
    with pytest.raises(RetentionError, match="retention"):
        prune(
            log,
            before=NOW - timedelta(days=30),
            archive_path=tmp_path / "a.json",
            actor=OPERATOR,
            now=NOW,
        )
    with pytest.raises(RetentionError, match="nothing to prune"):
        prune(
            log,
            before=datetime(2023, 1, 1, tzinfo=UTC),
            archive_path=tmp_path / "a.json",
            actor=OPERATOR,
            now=NOW,
        )
    assert log.store.prune_horizon() == 0 and not (tmp_path / "a.json").exists()


def test_prune_archives_logs_and_stays_verifiable(
    open_log: OpenLog, tmp_path: Path, signer: LocalSigner
) -> None:
    log = _old_log(open_log)
    root_before = log.root(20)
    res = prune(
        log,
        before=datetime(2024, 1, 8, tzinfo=UTC),
        archive_path=tmp_path / "a.json",
        actor=OPERATOR,
        now=NOW,
    )
    assert (res.start, res.end) == (0, 7)
    assert verify_archive((tmp_path / "a.json").read_bytes(), signer.public_key) == (0, 7, 20)

    store = log.store
    assert store.prune_horizon() == 7
    assert [e.data is None for e in store.entries(0, 8)] == [True] * 7 + [False]
    assert log.root(20) == root_before  # leaf hashes kept: the tree is unchanged

    prune_rec = json.loads(next(store.entries(20, 21)).data or b"{}")
    assert prune_rec["event_type"] == "audit.prune"
    assert prune_rec["attrs"]["archive.sha256"] == res.archive_sha256
    assert res.checkpoint.size == 21  # the prune itself is checkpointed

    lines = list(export_lines(store))
    assert "pruned_prefix" in lines[0]
    notes = [c.note for c in store.checkpoints()]
    out = verify_export(lines, res.checkpoint.note, signer.public_key, checkpoint_notes=notes)
    assert (out.size, out.pruned) == (21, 7)

    # A second prune continues from the horizon; its archive carries the prefix.
    res2 = prune(
        log,
        before=datetime(2024, 2, 1, tzinfo=UTC),
        archive_path=tmp_path / "b.json",
        actor=OPERATOR,
        now=NOW,
    )
    assert (res2.start, res2.end) == (7, 12)
    assert verify_archive((tmp_path / "b.json").read_bytes(), signer.public_key)[:2] == (7, 12)


def test_tampered_archive_fails(open_log: OpenLog, tmp_path: Path, signer: LocalSigner) -> None:
    log = _old_log(open_log)
    prune(
        log,
        before=datetime(2024, 1, 8, tzinfo=UTC),
        archive_path=tmp_path / "a.json",
        actor=OPERATOR,
        now=NOW,
    )
    a = json.loads((tmp_path / "a.json").read_text())
    a["entries"][2]["record"]["outcome"] = "denied"
    with pytest.raises(AuditError):
        verify_archive(json.dumps(a), signer.public_key)
    with pytest.raises(AuditError):
        verify_archive((tmp_path / "a.json").read_bytes(), LocalSigner.generate().public_key)
