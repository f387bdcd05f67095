"""The one contract every JobStore backend must pass (subclassed per backend)."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Iterator

import pytest

from coordinator.jobs.store import FINISHED_STATES, JOB_STATES, JobRow, JobStore
from insitu.errors import ErrorCode, InsituError


def job(job_id: str = "job-1", **kw: object) -> JobRow:
    fields: dict[str, object] = {
        "job_id": job_id,
        "owner": "spiffe://test.insitu/user/alice",
        "org": "org-a",
        "code_sha256": "ab" * 32,
        "model_name": "sepsis",
        "request": b"\x0a\x00request\xff",
        "run_id": 7,
        "state": "queued",
        "submitted_at": 1_700_000_000.25,
    }
    fields.update(kw)
    return JobRow(**fields)  # type: ignore[arg-type]


def code_of(info: pytest.ExceptionInfo[InsituError]) -> ErrorCode:
    return info.value.code


class JobStoreContract:
    """Subclasses provide ``open_store``: a new store object on the same file or schema
    each call (so a second call is a reopen, or a second handle while the first is open)."""

    def open_store(self) -> JobStore:
        raise NotImplementedError

    @pytest.fixture
    def store(self) -> Iterator[JobStore]:
        s = self.open_store()
        yield s
        s.close()

    def test_empty(self, store: JobStore) -> None:
        assert store.get("nope") is None
        assert store.list_jobs() == [] and store.list_jobs("someone") == []
        assert store.interrupt_running(now=1.0, error="restart") == []

    def test_every_field_round_trips(self, store: JobStore) -> None:
        bundle = os.urandom(2 * 1024 * 1024)
        row = JobRow(
            job_id="job-ü-1",
            owner="spiffe://test.insitu/user/bob",
            org="org-ß",
            code_sha256="cd" * 32,
            model_name="readmission",
            request=bytes(range(256)) * 3,
            run_id=2**63 - 1,
            state="failed",
            submitted_at=1_733_333_333.123456,
            finished_at=1_733_339_999.987654,
            error="site-a timed out",
            fix="raise round_timeout_s",
            model_version="v3",
            current_round=4,
            approvals='{"site-a": [true, "ok", "spiffe://x"]}',
            extra='{"trace": {"traceparent": "00-ab"}, "epsilon": {"site-a": 1.5}}',
        )
        store.insert(row, bundle)
        assert store.get(row.job_id) == row
        assert store.bundle(row.job_id) == bundle
        assert store.rounds(row.job_id) == []
        zero = job("job-0", run_id=0, request=b"", submitted_at=0.0)
        store.insert(zero, b"")
        assert store.get("job-0") == zero and store.bundle("job-0") == b""

    def test_bad_values_are_refused(self, store: JobStore) -> None:
        for bad in (job(state="done"), job(run_id=2**63), job(run_id=-1)):
            with pytest.raises(InsituError) as e:
                store.insert(bad, b"b")
            assert code_of(e) is ErrorCode.INVALID_ARGUMENT
        assert store.get("job-1") is None and store.list_jobs() == []
        store.insert(job(), b"b")
        for bad in (job(state="Running"), job(current_round=-1)):
            with pytest.raises(InsituError) as e:
                store.save(bad)
            assert code_of(e) is ErrorCode.INVALID_ARGUMENT
        assert store.get("job-1") == job()

    def test_duplicate_insert_keeps_the_original(self, store: JobStore) -> None:
        store.insert(job(), b"first")
        with pytest.raises(InsituError) as e:
            store.insert(job(owner="spiffe://test.insitu/user/mallory", run_id=9), b"second")
        assert code_of(e) is ErrorCode.ALREADY_EXISTS
        assert store.get("job-1") == job()
        assert store.bundle("job-1") == b"first"

    def test_missing_job(self, store: JobStore) -> None:
        for call in (
            lambda: store.save(job("ghost", state="running")),
            lambda: store.append_round("ghost", b"r"),
            lambda: store.bundle("ghost"),
            lambda: store.rounds("ghost"),
        ):
            with pytest.raises(InsituError) as e:
                call()
            assert code_of(e) is ErrorCode.NOT_FOUND
        assert store.list_jobs() == []

    def test_save_overwrites_only_mutable_fields(self, store: JobStore) -> None:
        store.insert(job(), b"b")
        saved = job(
            state="running",
            finished_at=None,
            error="",
            fix="",
            model_version="v1",
            current_round=2,
            approvals='{"site-a": [true, "", ""]}',
            extra='{"epsilon": {"site-a": 0.5}}',
        )
        store.save(saved)
        assert store.get("job-1") == saved
        # Fields fixed at insert are not changed by save.
        store.save(dataclasses.replace(saved, owner="other", run_id=99, request=b"x"))
        assert store.get("job-1") == saved
        # Unfinished states move freely: the state machine is the manager's, not the store's.
        store.save(dataclasses.replace(saved, state="awaiting_approval"))
        assert store.get("job-1") == dataclasses.replace(saved, state="awaiting_approval")

    @pytest.mark.parametrize("final", sorted(FINISHED_STATES))
    def test_finished_jobs_keep_their_state(self, store: JobStore, final: str) -> None:
        store.insert(job(state="running"), b"b")
        done = job(state=final, finished_at=1_700_000_100.5, error="why", fix="how")
        store.save(done)
        for other in JOB_STATES:
            if other == final:
                continue
            with pytest.raises(InsituError) as e:
                store.save(dataclasses.replace(done, state=other, error="changed"))
            assert code_of(e) is ErrorCode.FAILED_PRECONDITION
            assert store.get("job-1") == done
        store.save(done)  # the same state again is idempotent
        again = dataclasses.replace(done, extra='{"note": 1}')
        store.save(again)  # and other fields of a finished job may still change
        assert store.get("job-1") == again

    def test_rounds_in_append_order(self, store: JobStore) -> None:
        store.insert(job("a"), b"b")
        store.insert(job("b"), b"b")
        assert [store.append_round("a", b"a%d" % i) for i in range(3)] == [0, 1, 2]
        assert store.append_round("b", b"b0") == 0  # numbered per job
        assert store.append_round("a", b"\x00" * 10_000) == 3
        assert store.rounds("a") == [b"a0", b"a1", b"a2", b"\x00" * 10_000]
        assert store.rounds("b") == [b"b0"]

    def test_list_jobs_order_and_owner(self, store: JobStore) -> None:
        alice, bob = "spiffe://t/user/alice", "spiffe://t/user/bob"
        rows = [
            job("c", owner=alice, submitted_at=20.0),
            job("b", owner=bob, submitted_at=10.0),
            job("a", owner=alice, submitted_at=20.0),
            job("d", owner=bob, submitted_at=5.5),
        ]
        for r in rows:
            store.insert(r, b"b")
        assert [r.job_id for r in store.list_jobs()] == ["d", "b", "a", "c"]
        assert [r.job_id for r in store.list_jobs(alice)] == ["a", "c"]
        assert [r.job_id for r in store.list_jobs(bob)] == ["d", "b"]
        assert store.list_jobs("spiffe://t/user/carol") == []
        assert store.list_jobs()[0] == rows[3]

    def test_durable_across_reopen(self, store: JobStore) -> None:
        store.insert(job("a", state="running"), b"bundle-a")
        store.append_round("a", b"r0")
        store.save(job("a", state="succeeded", finished_at=30.0, model_version="v2"))
        store.insert(job("b"), b"bundle-b")
        store.close()
        again = self.open_store()
        try:
            assert again.get("a") == job(
                "a", state="succeeded", finished_at=30.0, model_version="v2"
            )
            assert again.bundle("a") == b"bundle-a" and again.rounds("a") == [b"r0"]
            assert [r.job_id for r in again.list_jobs()] == ["a", "b"]
            assert again.append_round("a", b"r1") == 1
        finally:
            again.close()
        third = self.open_store()
        try:
            assert third.rounds("a") == [b"r0", b"r1"]
        finally:
            third.close()

    def test_interrupt_running(self, store: JobStore) -> None:
        for i, state in enumerate(JOB_STATES):
            store.insert(job(f"j{i}-{state}", state=state, error="old"), b"b")
        store.insert(job("z-running", state="running"), b"b")
        before = {r.job_id: r for r in store.list_jobs()}
        ids = store.interrupt_running(now=99.5, error="coordinator restarted")
        assert ids == ["j2-running", "z-running"]
        after = {r.job_id: r for r in store.list_jobs()}
        for job_id, row in before.items():
            if job_id in ids:
                assert after[job_id] == dataclasses.replace(
                    row, state="interrupted", finished_at=99.5, error="coordinator restarted"
                )
            else:
                assert after[job_id] == row
        assert store.interrupt_running(now=100.0, error="again") == []
        assert {r.job_id: r for r in store.list_jobs()} == after

    def test_concurrent_appends_and_saves_lose_nothing(self, store: JobStore) -> None:
        threads_n, per_thread = 8, 20
        store.insert(job(state="running"), b"b")
        for t in range(threads_n):
            store.insert(job(f"own-{t}", state="running"), b"b")
        # Half the threads write through a second store object: across connections too.
        other = self.open_store()
        got: dict[int, bytes] = {}
        saved: list[JobRow] = []
        errors: list[BaseException] = []
        guard = threading.Lock()
        start = threading.Barrier(threads_n)

        def worker(t: int) -> None:
            s = store if t % 2 == 0 else other
            try:
                start.wait()
                for k in range(per_thread):
                    summary = b"t%d-k%d" % (t, k)
                    seq = s.append_round("job-1", summary)
                    row = job(
                        state="running",
                        current_round=t * 1000 + k,
                        error=f"t{t}",
                        extra=json.dumps({"t": t, "k": k}),
                    )
                    s.save(row)
                    s.save(job(f"own-{t}", state="running", current_round=k + 1))
                    with guard:
                        got[seq] = summary if seq not in got else b"DUPLICATE"
                        saved.append(row)
            except BaseException as e:
                errors.append(e)

        workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        other.close()
        assert errors == []
        total = threads_n * per_thread
        assert sorted(got) == list(range(total))
        assert store.rounds("job-1") == [got[i] for i in range(total)]
        assert store.get("job-1") in saved  # one whole save won, not a mix of several
        for t in range(threads_n):
            own = store.get(f"own-{t}")
            assert own is not None and own.current_round == per_thread
