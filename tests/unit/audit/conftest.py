from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from audit_support import ORIGIN

from insitu.audit.log import AuditLog
from insitu.audit.signing import LocalSigner
from insitu.audit.sqlite_store import SqliteAuditStore


@pytest.fixture
def signer() -> LocalSigner:
    return LocalSigner.generate()


@pytest.fixture
def open_log(tmp_path: Path, signer: LocalSigner) -> Iterator[Callable[..., AuditLog]]:
    """Factory for AuditLogs over a SQLite store in tmp_path; closes them all at the end."""
    logs: list[AuditLog] = []

    def make(db: Path | None = None, **kw: object) -> AuditLog:
        kw.setdefault("checkpoint_every_s", 0)
        kw.setdefault("lifecycle_events", False)
        log = AuditLog(
            SqliteAuditStore(db or tmp_path / "audit.db"),
            origin=ORIGIN,
            signer=signer.sign,
            key_name=ORIGIN,
            public_key=signer.public_key,
            **kw,  # type: ignore[arg-type]
        )
        logs.append(log)
        return log

    yield make
    for log in logs:
        log.close()
