"""A site and its coordinator agree on which jobs run, with real processes: a real
coordinator over OpenBao, a real site daemon, job workers in bubblewrap.

- A re-proposal of a running job (the coordinator after a reconnect) rejoins it: no second
  worker process, the same worker answers.
- A job beyond ``job_max_concurrent`` waits with no worker process, shown as queued in
  ``insitu-site status``, and runs when the running one ends.
- A Welcome that omits a job the site holds stops its worker (the process is gone) and
  releases its ε reservation, audited as ``job.reconciled``; the session stays up.

The proposals and tasks are delivered to the daemon's own inbound routing, as its session
stream does: these jobs are not the coordinator's (so its Welcome on reconnect never lists
them, whatever it runs), and the coordinator ignores the decisions and replies the site
sends it. The reconnect itself is real: the coordinator drops the site's session.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.serde import message_to_proto
from flwr.supercore.task_identity import TaskIdentity
from typer.testing import CliRunner

from coordinator.settings import CoordinatorSettings
from insitu._proto.v1 import session_pb2
from insitu.flower.bundle import pack_app
from insitu.keys import KeyService
from insitu.rpc.chunks import split_message
from site_node.cli import app as site_cli
from site_node.daemon import SiteDaemon
from site_node.training.jobs import RECONCILED_REASON
from tests.integration.conftest import RunningCoordinator, wait_for
from tests.integration.federation import HOSTILE, Federation, start_app_federation

SITE = "hospital-a"
DP = "dp = { clip_norm = 1.0, noise_multiplier = 1.1, delta = 1e-5 }\n"
ROWS = "x1,x2,x3,x4,note\n1.5,2.5,3.5,4.5,a\n0.1,0.2,0.3,0.4,b\n"
RUN_ID = 4711


@pytest.fixture
def fed(
    make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
    coordinator_settings: CoordinatorSettings,
    key_service: KeyService,
    tmp_path: Path,
) -> Iterator[Federation]:
    rc = make_coordinator(coordinator_settings)
    f = start_app_federation(rc, key_service, tmp_path, HOSTILE, rows=ROWS, dataset_extra=DP,
                             sites=(SITE,))
    # One job worker at a time at this site; sandboxed (the default).
    f.stop_site(SITE)
    f.settings[SITE] = replace(f.settings[SITE], job_max_concurrent=1)
    f.start_site(SITE)
    with rc.admin() as admin:
        wait_for(lambda: any(s.connected for s in admin.list_sites()), what="the site")
    yield f
    f.close()


# -- driving the daemon as its session stream does ----------------------------------------

def _deliver(daemon: SiteDaemon, msg: session_pb2.CoordinatorMessage) -> None:
    assert daemon.session.on_inbound is not None
    daemon.session.on_inbound(msg)


def _propose(daemon: SiteDaemon, job_id: str, dataset: str = "records-a") -> None:
    _deliver(daemon, session_pb2.CoordinatorMessage(job_proposal=session_pb2.JobProposal(
        job_id=job_id, code_sha256=_code(daemon), app_bundle=pack_app(HOSTILE),
        dataset=dataset, rounds=3, owner="spiffe://t/user/eve", purpose="research",
        partition_id=1, num_partitions=2, run_id=RUN_ID,
    )))


def _code(daemon: SiteDaemon) -> str:
    (digest,) = daemon.approvals.hashes()
    return digest


def _task(daemon: SiteDaemon, job_id: str) -> None:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, 0, 0
    arrays = ArrayRecord({"w": Array(np.zeros((4, 3), np.float32)),
                          "b": Array(np.zeros(3, np.float32))})
    msg = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}),
                  dst_node_id=daemon.jobs.node_id, message_type="train", group_id="1")
    message_id = uuid.uuid4().hex
    msg.metadata.__dict__["_message_id"] = message_id  # no setter in flwr
    proto = message_to_proto(msg)
    for chunk in split_message(job_id, message_id, proto.metadata.SerializeToString(),
                               proto.content.SerializeToString(), None):
        _deliver(daemon, session_pb2.CoordinatorMessage(task=chunk))


def _audited(daemon: SiteDaemon, event: str, job_id: str) -> list[dict[str, Any]]:
    out = []
    for entry in daemon.audit_log.store.entries():
        if entry.data and f'"{event}"'.encode() in entry.data:
            record = json.loads(entry.data)
            if record["event_type"] == event and record["attrs"].get("job_id") == job_id:
                out.append(record["attrs"])
    return out


def _replies_made(daemon: SiteDaemon, job_id: str) -> int:
    return sum(1 for a in _audited(daemon, "job.message", job_id) if a["direction"] == "out")


def _workers(marker: Path | None = None) -> list[int]:
    """Live job worker sandboxes this process started (bwrap, our direct child), only
    those that mount ``marker`` (a job's app folder) when given."""
    me, pids = str(os.getpid()), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if fields[1] != me or fields[0] == "Z" or b"site_node.training.worker" not in cmdline:
            continue
        if marker is None or str(marker.resolve()).encode() in cmdline:
            pids.append(int(proc.name))
    return sorted(pids)


def _app_dir(fed: Federation, job_id: str) -> Path:
    return fed.settings[SITE].site_dir / "jobs" / job_id / "app"


def _status(fed: Federation) -> dict[str, Any]:
    return json.loads((fed.settings[SITE].site_dir / "status.json").read_text())  # type: ignore[no-any-return]


# -- the tests --------------------------------------------------------------------------

@pytest.mark.slow
def test_a_reproposal_adds_no_worker_and_a_queued_job_has_none_until_its_slot(
    fed: Federation,
) -> None:
    daemon = fed.daemons[SITE]
    first, second = f"first-{uuid.uuid4().hex[:8]}", f"second-{uuid.uuid4().hex[:8]}"
    _propose(daemon, first)
    wait_for(lambda: _audited(daemon, "job.approve", first), what="the approval")
    _task(daemon, first)
    wait_for(lambda: _replies_made(daemon, first) == 1, timeout=120, what="a first reply")
    (pid,) = _workers(_app_dir(fed, first))
    assert _audited(daemon, "job.start", first)[0]["sandbox"] == "bubblewrap"

    # The coordinator proposes the running job again (as after a reconnect).
    _propose(daemon, first)
    wait_for(lambda: _audited(daemon, "job.rejoin", first), what="the rejoin")
    _task(daemon, first)
    wait_for(lambda: _replies_made(daemon, first) == 2, timeout=120, what="a second reply")
    assert _workers() == [pid]  # the same worker answered; no second one exists
    assert len(_audited(daemon, "job.start", first)) == 1

    # A second job waits for the one slot, with its instruction, and no process.
    _propose(daemon, second, dataset="other")
    wait_for(lambda: _audited(daemon, "job.queued", second), what="the queued job")
    assert _audited(daemon, "job.approve", second)[0]["reason"].startswith("approved; queued")
    _task(daemon, second)
    wait_for(lambda: [j["state"] for j in _status(fed)["jobs"]] == ["running", "queued"],
             what="status to show both jobs")
    shown = CliRunner().invoke(site_cli, ["status", "--site-dir",
                                          str(fed.settings[SITE].site_dir)])
    assert shown.exit_code == 0, shown.output
    assert f"{first}  running  holds memory_mb=1024 gpu=none" in shown.output
    assert f"{second}  queued #1  waits for memory_mb=1024 and no GPU" in shown.output
    assert _workers(_app_dir(fed, second)) == [] and _replies_made(daemon, second) == 0

    # The running job ends: its worker goes, the queued one starts and answers.
    _deliver(daemon, session_pb2.CoordinatorMessage(
        job_end=session_pb2.JobEnd(job_id=first, outcome="succeeded")))
    wait_for(lambda: _replies_made(daemon, second) == 1, timeout=120, what="the queued reply")
    wait_for(lambda: not _workers(_app_dir(fed, first)), what="the ended job's worker to go")
    assert len(_workers(_app_dir(fed, second))) == 1
    wait_for(lambda: [(j["job_id"], j["state"]) for j in _status(fed)["jobs"]]
             == [(second, "running")], what="status to show the second job running")


@pytest.mark.slow
def test_a_welcome_that_omits_a_held_job_stops_its_worker_and_releases_its_epsilon(
    fed: Federation,
) -> None:
    daemon = fed.daemons[SITE]
    job = f"orphan-{uuid.uuid4().hex[:8]}"
    _propose(daemon, job)
    wait_for(lambda: _audited(daemon, "job.approve", job), what="the approval")
    _task(daemon, job)
    wait_for(lambda: _replies_made(daemon, job) == 1, timeout=120, what="a reply")
    assert len(_workers(_app_dir(fed, job))) == 1
    assert ("records-a", job) in daemon.ledger.open_reservations()
    assert job in daemon.jobs.active_job_ids()  # what the next Hello reports
    connects = _status(fed)["connects"]

    # The coordinator drops the session; the site reconnects, and the new Welcome does not
    # list the job (the coordinator does not run it).
    session = fed.coord.coordinator.sessions.get(SITE)
    assert session is not None
    session.close("dropped by the test")
    wait_for(lambda: _audited(daemon, "job.reconciled", job), what="the reconcile")

    wait_for(lambda: not _workers(_app_dir(fed, job)), what="the worker process to go")
    assert ("records-a", job) not in daemon.ledger.open_reservations()
    history = [e for e in daemon.ledger.history("records-a") if e.job_id == job]
    assert history[0].kind == "reserve" and history[-1].kind == "release"
    (audit,) = _audited(daemon, "job.reconciled", job)
    assert audit["dataset"] == "records-a" and audit["reason"] == RECONCILED_REASON
    assert float(audit["released_epsilon"]) == pytest.approx(history[-1].epsilon)
    assert float(audit["released_epsilon"]) > 0
    assert job not in daemon.jobs.active_job_ids()
    wait_for(lambda: _status(fed)["connected"] and _status(fed)["connects"] == connects + 1,
             what="the session to be up again")
    assert _status(fed)["jobs"] == []
