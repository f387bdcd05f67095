"""Issue #3 fail closed at the RPC layer: with the coordinator's audit store unwritable,
every RPC is refused with UNAVAILABLE and no handler side effect happens."""

from __future__ import annotations

import sqlite3

import grpc
import pytest

from insitu.sdk import Unavailable
from tests.integration.conftest import RunningCoordinator


def test_unwritable_audit_store_refuses_every_call(coord: RunningCoordinator) -> None:
    c = coord.coordinator
    with coord.admin() as admin:
        admin.list_sites()
    tokens_before = c.store.count_unused_tokens()
    store = c.audit_log.store
    # Swap the store's connection for a read-only one on the same file: SQLite itself
    # refuses every write ("attempt to write a readonly database").
    path = store.path  # type: ignore[attr-defined]
    writable = store._conn  # type: ignore[attr-defined]
    store._conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,  # type: ignore[attr-defined]
                                  isolation_level=None, check_same_thread=False)
    try:
        with coord.admin() as admin:
            for call in (lambda: admin.create_join_token("hospital-q", 600),
                         lambda: admin.list_sites(),
                         lambda: admin.health(),
                         lambda: admin.revoke_site("hospital-q")):
                with pytest.raises(Unavailable) as e:
                    call()
                assert e.value.code == grpc.StatusCode.UNAVAILABLE
                assert "audit" in e.value.details
        assert c.store.count_unused_tokens() == tokens_before  # no token was minted
    finally:
        store._conn.close()  # type: ignore[attr-defined]
        store._conn = writable  # type: ignore[attr-defined]
