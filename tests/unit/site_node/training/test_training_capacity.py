"""The site's budget for concurrent job workers: FIFO order, memory summed, a GPU held by
one job at a time, resources returned on release, and a need above the whole budget
refused naming the setting."""

from __future__ import annotations

import threading

import pytest

from insitu.errors import ErrorCode, InsituError
from site_node.training.capacity import CapacityBudget, Grant, JobCapacity, JobNeed, JobSlot


def _cap(max_jobs: int = 2, memory: int = 8192, gpus: tuple[int, ...] = ()) -> JobCapacity:
    return JobCapacity(CapacityBudget(max_jobs=max_jobs, total_memory_mb=memory, gpus=gpus))


def test_jobs_beyond_the_concurrency_limit_wait_and_start_in_fifo_order() -> None:
    cap = _cap(max_jobs=1)
    a, b, c = (cap.request(j, JobNeed(100)) for j in ("a", "b", "c"))
    assert (a.state, b.state, c.state) == ("running", "queued", "queued")
    assert b.wait(timeout=0) is None
    cap.release(a)
    assert (b.state, c.state) == ("running", "queued")
    cap.release(b)
    assert c.state == "running" and c.wait(timeout=0) == Grant(100, None)


def test_memory_is_summed_over_running_jobs() -> None:
    cap = _cap(max_jobs=10, memory=3000)
    a = cap.request("a", JobNeed(2000))
    b = cap.request("b", JobNeed(1000))
    c = cap.request("c", JobNeed(1))
    assert (a.state, b.state, c.state) == ("running", "running", "queued")
    cap.release(b)
    assert c.state == "running"


def test_the_head_of_the_queue_is_not_overtaken() -> None:
    cap = _cap(max_jobs=10, memory=3000)
    cap.request("a", JobNeed(2000))
    big = cap.request("big", JobNeed(2000))
    small = cap.request("small", JobNeed(500))  # would fit, but waits behind "big"
    assert (big.state, small.state) == ("queued", "queued")
    assert [s.job_id for s in cap.slots() if s.state == "queued"] == ["big", "small"]


def test_a_gpu_is_held_by_one_job_at_a_time() -> None:
    cap = _cap(max_jobs=4, gpus=(2, 5))
    a = cap.request("a", JobNeed(100, gpu=True))
    b = cap.request("b", JobNeed(100, gpu=True))
    c = cap.request("c", JobNeed(100, gpu=True))
    cpu = cap.request("cpu", JobNeed(100))  # behind c in the queue: FIFO
    assert a.wait(0) == Grant(100, 2) and b.wait(0) == Grant(100, 5)
    assert c.state == "queued" and cpu.state == "queued"
    cap.release(b)
    assert c.wait(0) == Grant(100, 5) and cpu.wait(0) == Grant(100, None)
    held = [s.gpu for s in cap.slots() if s.state == "running"]
    assert sorted(held) == ["2", "5", "none"]


def test_a_gpu_job_runs_on_cpu_where_the_site_grants_none() -> None:
    t = _cap().request("a", JobNeed(100, gpu=True))
    assert t.wait(0) == Grant(100, None)


def test_release_returns_slot_memory_and_gpu_and_is_idempotent() -> None:
    cap = _cap(max_jobs=1, memory=1000, gpus=(0,))
    a = cap.request("a", JobNeed(1000, gpu=True))
    b = cap.request("b", JobNeed(1000, gpu=True))
    assert cap.release(a) == "running"
    assert cap.release(a) == "released"
    assert b.wait(0) == Grant(1000, 0)
    assert cap.release(b) == "running"
    assert cap.slots() == []
    again = cap.request("c", JobNeed(1000, gpu=True))
    assert again.wait(0) == Grant(1000, 0)


def test_withdraw_takes_only_a_queued_job_out_and_wakes_its_waiter() -> None:
    cap = _cap(max_jobs=1)
    a = cap.request("a", JobNeed(100))
    b = cap.request("b", JobNeed(100))
    got: list[Grant | None] = []
    waiter = threading.Thread(target=lambda: got.append(b.wait()))
    waiter.start()
    assert cap.withdraw(a) is False and a.state == "running"  # a running job keeps its slot
    assert cap.withdraw(b) is True and b.state == "released"
    waiter.join(5)
    assert got == [None]
    assert cap.withdraw(b) is False


def test_a_need_above_the_whole_budget_is_refused_naming_the_setting() -> None:
    cap = _cap(memory=4096)
    with pytest.raises(InsituError) as err:
        cap.request("huge", JobNeed(8192))
    assert err.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert "job_total_memory_mb 4096" in err.value.detail and "8192" in err.value.detail
    assert cap.slots() == []


def test_slots_show_what_running_jobs_hold_and_queued_ones_wait_for() -> None:
    changes: list[int] = []
    cap = JobCapacity(CapacityBudget(1, 4096, (0,)), on_change=lambda: changes.append(1))
    cap.request("a", JobNeed(1024, gpu=True))
    cap.request("b", JobNeed(2048, gpu=True))
    cap.request("c", JobNeed(512))
    assert cap.slots() == [
        JobSlot("a", "running", 1024, "0"),
        JobSlot("b", "queued", 2048, "wanted", queue_position=1),
        JobSlot("c", "queued", 512, "none", queue_position=2),
    ]
    assert len(changes) == 3


@pytest.mark.parametrize(("budget", "needle"), [
    ({"max_jobs": 0, "total_memory_mb": 1}, "job_max_concurrent must be an integer > 0"),
    ({"max_jobs": 1, "total_memory_mb": -5}, "job_total_memory_mb must be an integer > 0"),
    ({"max_jobs": True, "total_memory_mb": 1}, "job_max_concurrent"),
    ({"max_jobs": 1, "total_memory_mb": 1, "gpus": (0, 0)}, "job_gpus lists an index twice"),
])
def test_a_bad_budget_is_a_config_error_naming_the_setting(
    budget: dict[str, object], needle: str
) -> None:
    with pytest.raises(InsituError) as err:
        CapacityBudget(**budget)  # type: ignore[arg-type]
    assert err.value.code is ErrorCode.CONFIG and needle in err.value.detail
