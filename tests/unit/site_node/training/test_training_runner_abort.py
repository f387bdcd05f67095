"""ClientAppRunner.abort: the worker is killed now, even mid-message, and never restarted
(the site stops a job's worker at JobEnd or when a Welcome no longer lists the job)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _training_support import PROBE_APP, make_task

from insitu.errors import ErrorCode, InsituError
from insitu.flower import read_app
from insitu.sandbox import HostLauncher
from site_node.training import ClientAppRunner, build_node_config
from site_node.training.runner import DEFAULT_LIMITS, worker_env

RUN_ID, NODE_ID = 4243, 78


@pytest.fixture
def probe(tmp_path: Path) -> Iterator[ClientAppRunner]:
    runner = ClientAppRunner(
        PROBE_APP, "probe.client_app:app",
        build_node_config(0, 1, "probe-data", tmp_path / "probe.csv", device="cpu"),
        RUN_ID, NODE_ID, run_config=read_app(PROBE_APP).run_config({}), timeout_s=60,
        launcher=HostLauncher(DEFAULT_LIMITS, worker_env(), PROBE_APP),
    )
    yield runner
    runner.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_abort_kills_the_worker_mid_message_and_refuses_further_messages(
    probe: ClientAppRunner,
) -> None:
    probe.handle(make_task("query", run_id=RUN_ID, dst_node_id=NODE_ID))
    pid = probe.pid
    assert pid is not None and _alive(pid)
    errors: list[InsituError] = []

    def hang() -> None:
        try:
            probe.handle(make_task("query.hang", run_id=RUN_ID, dst_node_id=NODE_ID))
        except InsituError as e:
            errors.append(e)

    t = threading.Thread(target=hang)
    t.start()
    time.sleep(0.5)  # the hang message is in the worker
    started = time.monotonic()
    probe.abort()
    t.join(10)
    assert not t.is_alive() and time.monotonic() - started < 10
    assert errors and errors[0].code is ErrorCode.UNAVAILABLE
    assert not _alive(pid)
    with pytest.raises(InsituError) as closed:
        probe.handle(make_task("query", run_id=RUN_ID, dst_node_id=NODE_ID))
    assert closed.value.code is ErrorCode.FAILED_PRECONDITION
    assert probe.pid is None and probe.starts == 1  # never restarted
