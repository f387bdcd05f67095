"""The dynamic batcher: exact per-request rows, fusion rules, bounded queue, shutdown."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serving_support import Models, reference, rows

from insitu.errors import ErrorCode, InsituError
from site_node.serving import BatchingConfig, DirectRunner, DynamicBatcher, OnnxSession

WAIT = 20.0  # generous upper bound for a result; never a performance assertion


class GatedRunner:
    """A real computation (y = 2x + row sum) that can hold the worker on its first batch,
    so tests can fill the queue deterministically while the worker is busy."""

    def __init__(self, *, gate_first: bool = True) -> None:
        self.batches: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not gate_first:
            self.release.set()

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.batches.append(int(x.shape[0]))
        self.entered.set()
        assert self.release.wait(WAIT)
        return {"y": 2 * x, "s": x.reshape(x.shape[0], -1).sum(axis=1)}


def _x(n: int, value: float, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.full((n, width), value, dtype=np.float32)}


def _check(out: dict[str, np.ndarray], n: int, value: float, width: int = 3) -> None:
    assert out["y"].shape == (n, width)
    assert np.all(out["y"] == 2 * value)
    assert np.all(out["s"] == width * value)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_concurrent_callers_get_exactly_their_rows(models: Models, kind: str) -> None:
    onnx = models.mlp[1] if kind == "mlp" else models.cnn
    shape = (16,) if kind == "mlp" else (1, 8, 8)
    name = "x" if kind == "mlp" else "image"
    session = OnnxSession(onnx, providers=["CPUExecutionProvider"], intra_op_threads=1)
    sizes: list[int] = []
    batcher = DynamicBatcher(
        session.run,
        BatchingConfig(max_batch_size=32, max_queue_delay_us=2000, preferred_batch_sizes=(16,)),
        on_batch=sizes.append,
    )
    requests = [rows(1 + (i * 7) % 13, seed=i, shape=shape) for i in range(120)]
    try:
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(lambda x: batcher.submit({name: x}).result(WAIT), requests))
    finally:
        batcher.close()
    fused = np.concatenate(requests)
    want = next(iter(reference(onnx, {name: fused}).values()))
    offset = 0
    for x, out in zip(requests, results, strict=True):
        (y,) = out.values()
        np.testing.assert_allclose(y, want[offset : offset + len(x)], atol=1e-5, rtol=0)
        offset += len(x)
    assert sum(sizes) == offset  # every row ran exactly once
    assert max(sizes) <= 32


def test_queued_requests_fuse_in_fifo_order_without_splitting() -> None:
    run = GatedRunner()
    b = DynamicBatcher(run, BatchingConfig(max_batch_size=6, max_queue_delay_us=0))
    try:
        first = b.submit(_x(1, 1.0))
        assert run.entered.wait(WAIT)  # the worker now holds the first request
        queued = [
            (b.submit(_x(n, float(v))), n, float(v)) for n, v in ((3, 2), (2, 3), (5, 4), (1, 5))
        ]
        run.release.set()
        _check(first.result(WAIT), 1, 1.0)
        for p, n, v in queued:
            _check(p.result(WAIT), n, v)
    finally:
        b.close()
    # 3+2 fit in 6; 5 would overflow, so it starts the next batch and 1 joins it.
    assert run.batches == [1, 5, 6]


def test_a_preferred_size_dispatches_without_waiting_for_the_delay() -> None:
    run = GatedRunner()
    cfg = BatchingConfig(max_batch_size=64, max_queue_delay_us=10**7, preferred_batch_sizes=(4,))
    b = DynamicBatcher(run, cfg)
    try:
        run.release.set()
        p1 = b.submit(_x(2, 1.0))
        p2 = b.submit(_x(2, 2.0))
        # A 10 s queue delay would make these raise DEADLINE_EXCEEDED after WAIT if the
        # batcher ignored the preferred size.
        _check(p1.result(WAIT / 2), 2, 1.0)
        _check(p2.result(WAIT / 2), 2, 2.0)
    finally:
        b.close()
    assert run.batches == [4]


def test_max_batch_size_dispatches_without_waiting_for_the_delay() -> None:
    run = GatedRunner(gate_first=False)
    b = DynamicBatcher(run, BatchingConfig(max_batch_size=4, max_queue_delay_us=10**7))
    try:
        ps = [b.submit(_x(2, 1.0)), b.submit(_x(2, 2.0))]
        for p, v in zip(ps, (1.0, 2.0), strict=True):
            _check(p.result(WAIT / 2), 2, v)
    finally:
        b.close()
    assert run.batches == [4]


def test_an_oversized_request_runs_alone() -> None:
    run = GatedRunner(gate_first=False)
    b = DynamicBatcher(run, BatchingConfig(max_batch_size=4, max_queue_delay_us=0))
    try:
        _check(b.submit(_x(9, 3.0)).result(WAIT), 9, 3.0)
    finally:
        b.close()
    assert run.batches == [9]


def test_requests_with_different_trailing_shapes_are_not_fused() -> None:
    run = GatedRunner()
    b = DynamicBatcher(run, BatchingConfig(max_batch_size=64, max_queue_delay_us=0))
    try:
        first = b.submit(_x(1, 0.0))
        assert run.entered.wait(WAIT)
        a = b.submit(_x(2, 1.0, width=3))
        c = b.submit(_x(2, 2.0, width=5))
        d = b.submit(_x(2, 3.0, width=3))
        run.release.set()
        first.result(WAIT)
        _check(a.result(WAIT), 2, 1.0, 3)
        _check(c.result(WAIT), 2, 2.0, 5)
        _check(d.result(WAIT), 2, 3.0, 3)
    finally:
        b.close()
    assert run.batches == [1, 4, 2]


def test_a_full_queue_refuses_at_once_and_recovers() -> None:
    run = GatedRunner()
    depth: list[int] = []
    b = DynamicBatcher(
        run, BatchingConfig(max_batch_size=1, max_queue_delay_us=0, max_queue_size=2),
        on_queue_depth=depth.append,
    )  # fmt: skip
    try:
        held = b.submit(_x(1, 0.0))
        assert run.entered.wait(WAIT)
        queued = [b.submit(_x(1, 1.0)), b.submit(_x(1, 2.0))]
        assert b.queue_depth() == 2
        for _ in range(3):  # refused on admission: the caller is not left waiting
            with pytest.raises(InsituError) as e:
                b.submit(_x(1, 9.0))
            assert e.value.code is ErrorCode.RESOURCE_EXHAUSTED
        run.release.set()
        held.result(WAIT)
        for p, v in zip(queued, (1.0, 2.0), strict=True):
            _check(p.result(WAIT), 1, v)
        _check(b.submit(_x(1, 4.0)).result(WAIT), 1, 4.0)  # serving again
    finally:
        b.close()
    assert max(depth) == 2


def test_close_finishes_queued_work_and_refuses_new() -> None:
    run = GatedRunner()
    b = DynamicBatcher(run, BatchingConfig(max_batch_size=1, max_queue_delay_us=0))
    held = b.submit(_x(1, 0.0))
    assert run.entered.wait(WAIT)
    queued = b.submit(_x(1, 1.0))
    closer = threading.Thread(target=b.close)
    closer.start()
    run.release.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    held.result(WAIT)
    _check(queued.result(WAIT), 1, 1.0)
    with pytest.raises(InsituError) as e:
        b.submit(_x(1, 2.0))
    assert e.value.code is ErrorCode.UNAVAILABLE


def test_a_failing_batch_fails_its_requests_and_the_batcher_keeps_serving() -> None:
    calls = {"n": 0}

    def flaky(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("secret row values would be here")
        if calls["n"] == 2:
            return {"y": inputs["x"][:1]}  # wrong number of rows
        return {"y": inputs["x"] * 2}

    b = DynamicBatcher(flaky, BatchingConfig(max_batch_size=8, max_queue_delay_us=0))
    try:
        with pytest.raises(InsituError) as e:
            b.submit(_x(2, 1.0)).result(WAIT)
        assert e.value.code is ErrorCode.INTERNAL and "secret" not in str(e.value)
        with pytest.raises(InsituError) as e:
            b.submit(_x(2, 1.0)).result(WAIT)
        assert e.value.code is ErrorCode.INTERNAL
        assert np.all(b.submit(_x(2, 1.5)).result(WAIT)["y"] == 3.0)
    finally:
        b.close()


def test_result_timeout_is_deadline_exceeded() -> None:
    run = GatedRunner()
    b = DynamicBatcher(run, BatchingConfig(max_batch_size=1, max_queue_delay_us=0))
    try:
        p = b.submit(_x(1, 1.0))
        with pytest.raises(InsituError) as e:
            p.result(timeout=0.01)
        assert e.value.code is ErrorCode.DEADLINE_EXCEEDED
    finally:
        run.release.set()
        b.close()


def test_direct_runner_runs_each_request_alone() -> None:
    run = GatedRunner(gate_first=False)
    sizes: list[int] = []
    d = DirectRunner(run, on_batch=sizes.append)
    _check(d.submit(_x(3, 1.0)).result(), 3, 1.0)
    _check(d.submit(_x(2, 2.0)).result(), 2, 2.0)
    assert run.batches == sizes == [3, 2]
    d.close()
    with pytest.raises(InsituError):
        d.submit(_x(1, 1.0))
