"""The one contract every AuditStore backend must pass (subclassed per backend)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from insitu.audit.errors import AuditError, SequenceConflictError
from insitu.audit.merkle import hash_leaf
from insitu.audit.store import AuditStore, StoredEntry


def entry(seq: int) -> StoredEntry:
    data = b'{"seq":%d}' % seq
    return StoredEntry(seq, hash_leaf(data), data)


class StoreContract:
    """Subclasses provide ``make_store``, ``reopen`` and ``raw_execute`` (SQL that bypasses
    the API, to prove the backend itself refuses rewrites)."""

    def make_store(self) -> AuditStore:
        raise NotImplementedError

    def reopen(self, store: AuditStore) -> AuditStore:
        raise NotImplementedError

    def raw_execute(self, store: AuditStore, sql: str) -> None:
        raise NotImplementedError

    @pytest.fixture
    def store(self) -> Iterator[AuditStore]:
        s = self.make_store()
        yield s
        s.close()

    def test_empty(self, store: AuditStore) -> None:
        assert store.size() == 0
        assert list(store.entries()) == [] and list(store.leaf_hashes()) == []
        assert store.checkpoints() == [] and store.latest_checkpoint() is None
        assert store.prune_horizon() == 0 and store.witnessed() == []

    def test_append_and_read_back(self, store: AuditStore) -> None:
        store.append_batch([entry(0), entry(1)])
        store.append_batch([entry(2)])
        assert store.size() == 3
        assert list(store.entries()) == [entry(0), entry(1), entry(2)]
        assert list(store.entries(1, 2)) == [entry(1)]
        assert list(store.leaf_hashes(1)) == [entry(1).leaf_hash, entry(2).leaf_hash]

    def test_seq_is_gap_free_from_zero(self, store: AuditStore) -> None:
        with pytest.raises(SequenceConflictError):
            store.append_batch([entry(1)])
        store.append_batch([entry(0)])
        with pytest.raises(SequenceConflictError):
            store.append_batch([entry(0)])  # a duplicate
        with pytest.raises(SequenceConflictError):
            store.append_batch([entry(2)])  # a gap
        assert store.size() == 1

    def test_rejected_batch_appends_nothing(self, store: AuditStore) -> None:
        with pytest.raises(AuditError):
            store.append_batch([entry(0), entry(2)])
        bad = StoredEntry(1, b"short", b"{}")
        with pytest.raises(AuditError):
            store.append_batch([entry(0), bad])
        assert store.size() == 0

    def test_durable_across_reopen(self, store: AuditStore) -> None:
        store.append_batch([entry(0), entry(1)])
        store.add_checkpoint(2, "note-2")
        store.add_witnessed("site-a", 7, "note-a")
        again = self.reopen(store)
        try:
            assert again.size() == 2 and list(again.entries()) == [entry(0), entry(1)]
            assert [c.note for c in again.checkpoints()] == ["note-2"]
            assert again.witnessed("site-a")[0].size == 7
        finally:
            again.close()

    def test_checkpoints_and_witnessed(self, store: AuditStore) -> None:
        store.add_checkpoint(5, "five")
        store.add_checkpoint(2, "two")
        store.add_checkpoint(5, "five-again")
        assert [(c.size, c.note) for c in store.checkpoints()] == [
            (2, "two"),
            (5, "five"),
            (5, "five-again"),
        ]
        assert store.latest_checkpoint() is not None
        store.add_witnessed("site-a", 1, "a1")
        store.add_witnessed("site-b", 3, "b3")
        store.add_witnessed("site-a", 2, "a2")
        assert [w.note for w in store.witnessed("site-a")] == ["a1", "a2"]
        assert len(store.witnessed()) == 3

    def test_backend_refuses_rewrites(self, store: AuditStore) -> None:
        store.append_batch([entry(0), entry(1)])
        store.add_checkpoint(2, "two")
        store.add_witnessed("site-a", 1, "a1")
        for sql in (
            "UPDATE {t}records SET data = NULL WHERE seq = 0",
            "UPDATE {t}records SET leaf_hash = leaf_hash WHERE seq = 1",
            "DELETE FROM {t}records WHERE seq = 1",
            "UPDATE {t}checkpoints SET note = 'x'",
            "DELETE FROM {t}checkpoints",
            "DELETE FROM {t}witnessed",
            "UPDATE {t}prune_state SET id = 2",
            "DELETE FROM {t}prune_state",
            "INSERT INTO {t}records (seq, leaf_hash, data) VALUES (5, {h}, NULL)",
        ):
            with pytest.raises(Exception):  # noqa: B017 - each backend has its own error type
                self.raw_execute(store, sql)
        assert list(store.entries()) == [entry(0), entry(1)]
        assert [c.note for c in store.checkpoints()] == ["two"]

    def test_prune_keeps_leaf_hashes(self, store: AuditStore) -> None:
        store.append_batch([entry(i) for i in range(5)])
        store.prune_bodies(3)
        assert store.prune_horizon() == 3
        got = list(store.entries())
        assert [e.data for e in got[:3]] == [None, None, None]
        assert got[3:] == [entry(3), entry(4)]
        assert list(store.leaf_hashes()) == [entry(i).leaf_hash for i in range(5)]
        with pytest.raises(AuditError):
            store.prune_bodies(2)  # the horizon never moves back
        with pytest.raises(AuditError):
            store.prune_bodies(6)  # nor past the end
        store.prune_bodies(3)  # idempotent
        # Even below the horizon, a pruned body cannot be put back or changed.
        with pytest.raises(Exception):  # noqa: B017
            self.raw_execute(store, "UPDATE {t}records SET data = {h} WHERE seq = 0")
        with pytest.raises(Exception):  # noqa: B017
            self.raw_execute(store, "UPDATE {t}prune_state SET horizon = 1")
        with pytest.raises(Exception):  # noqa: B017 - bodies above the horizon stay
            self.raw_execute(store, "UPDATE {t}records SET data = NULL WHERE seq = 4")

    def test_concurrent_appenders_stay_gap_free(self, store: AuditStore) -> None:
        errors: list[BaseException] = []

        def worker() -> None:
            done = 0
            while done < 15:
                try:
                    n = store.size()
                    store.append_batch([entry(n), entry(n + 1)])
                    done += 1
                except SequenceConflictError:
                    continue
                except BaseException as e:
                    errors.append(e)
                    return

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert [e.seq for e in store.entries()] == list(range(120))
