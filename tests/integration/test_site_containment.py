"""Issue #11 must-holds, with real processes and the sandbox on: an approved hostile
ClientApp tries every route out of a site and each attempt fails inside the sandbox or
is refused at egress and audited; the canary reaches neither the coordinator, the test's
loopback listener, nor a file outside scratch. Without bubblewrap, jobs are refused with
the fix named; with ``unsafe_unsandboxed_jobs`` they run and their start is audited."""

from __future__ import annotations

import json
import logging
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from coordinator.settings import CoordinatorSettings
from insitu.keys import KeyService
from insitu.sdk import InsituRpcError
from tests.integration.conftest import RunningCoordinator, wait_for
from tests.integration.federation import (
    APP,
    HOSTILE,
    Federation,
    start_app_federation,
    start_federation,
    user_client,
)

SUCCEEDED, REFUSED = 3, 5


class Listener:
    """A loopback TCP listener that records every byte anyone sends it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while chunk := conn.recv(4096):
                    self.received += chunk

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def hostile_fed(
    make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
    coordinator_settings: CoordinatorSettings,
    key_service: KeyService,
    tmp_path: Path,
) -> Iterator[tuple[Federation, str]]:
    rc = make_coordinator(replace(coordinator_settings, job_approval_timeout_s=30))
    canary = f"CANARY-{uuid.uuid4().hex[:12]}"
    fed = start_app_federation(
        rc, key_service, tmp_path, HOSTILE,
        rows="x1,x2,x3,x4,note\n1.5,2.5,3.5,4.5," + canary + "\n0.1,0.2,0.3,0.4,plain\n",
        other=f"secret,target\n{canary}-other,1\n",
    )
    yield fed, canary
    fed.close()


def _lingering(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.mark.slow
def test_hostile_app_gets_nothing_out_of_a_site(
    hostile_fed: tuple[Federation, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fed, canary = hostile_fed
    caplog.set_level(logging.INFO)
    listener = Listener()
    a = fed.settings["hospital-a"].site_dir
    marker = f"insitu-linger-{uuid.uuid4().hex[:8]}"
    outside = [tmp_path / "exfil.txt", Path(f"/tmp/{marker}.txt")]
    approvals_before = (a / "approvals" / "approvals.jsonl").read_bytes()
    try:
        job = fed.engineer.submit_job(
            HOSTILE, {"hospital-a": "records-a", "hospital-b": "records-b"}, rounds=4,
            model_name="hostile", min_sites=2,
            run_config={
                "mode": "hostile",
                "canary": canary, "listener-port": listener.port, "marker": marker,
                "site-dir": str(a), "data-dir": str(tmp_path / "data" / "hospital-a"),
                "write-dir": str(tmp_path),
            },
        )
        events = list(fed.engineer.watch_job(job.job_id, timeout=300))
    finally:
        listener.close()
    final = events[-1].snapshot
    assert final.state == SUCCEEDED, final.error

    # 1) Inside the sandbox every attempt failed (the site's own log says which).
    attempts = [r.getMessage() for r in caplog.records if "ATTEMPT" in r.getMessage()]
    assert len(attempts) >= 16, attempts
    # Writes to the sandbox's own /tmp and scratch succeed: both are private tmpfs mounts,
    # gone with the sandbox (checked below: nothing appears on the host).
    private = ("scratch-ok", f"/tmp/{marker}.txt")
    assert not [x for x in attempts if "LEAKED" in x and not any(p in x for p in private)
                ], attempts
    assert any("scratch-ok" in x and "LEAKED" in x for x in attempts)

    # 2) Nothing reached the listener, no file outside scratch, approvals untouched,
    #    and no process outlived the job.
    assert listener.connections == 0 and canary.encode() not in listener.received
    assert not [p for p in outside if p.exists()]
    assert (a / "approvals" / "approvals.jsonl").read_bytes() == approvals_before
    wait_for(lambda: not _lingering(marker), timeout=20, what="sandboxed processes to end")

    # 3) Every egress route was refused, answered at once, and named for the engineer.
    rounds = [e.round for e in events if e.HasField("round")]
    errors = {err for r in rounds for err in r.site_errors}
    for why in ("ClientApp raised an exception", "metric key not declared",
                "arrays do not match the instruction", "metrics exceed the site's bounds",
                "job worker exceeded a sandbox resource limit",
                "metric or config value is not a number"):
        assert f"hospital-a: {why}" in errors, errors
    assert all(r.sites_ok == ["hospital-b"] for r in rounds if r.round <= 3)
    assert any("hospital-a" in r.sites_ok for r in rounds if r.round == 4)  # worker restarted

    # 4) The site audited each refusal with route and rule, never the payload.
    site_log = [e.data for e in fed.daemons["hospital-a"].audit_log.store.entries() if e.data]
    refusals = [json.loads(d) for d in site_log
                if b'"job.reply_refused"' in d or b'"egress.refused"' in d]
    assert len(refusals) >= 6, refusals
    rules = json.dumps(refusals)
    for rule in ("reason replaced", "key not declared", "arrays differ", "list longer",
                 "sandbox resource limit", "text or bytes"):
        assert rule in rules, rule
    assert all(canary.encode() not in d for d in site_log)

    # 5) The canary is nowhere at the coordinator: audit log, job record, model registry.
    coord_log = [e.data for e in fed.coord.coordinator.audit_log.store.entries() if e.data]
    assert all(canary.encode() not in d for d in coord_log)
    assert canary not in str(final) and canary not in str(events)
    for f in fed.coord.coordinator.registry.root.rglob("*"):
        if f.is_file():
            assert canary.encode() not in f.read_bytes(), f
    coordinator_records = [r.getMessage() for r in caplog.records
                           if r.name.startswith(("coordinator", "insitu"))]
    assert not [m for m in coordinator_records if canary in m]


@pytest.fixture
def two_sites(
    make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
    coordinator_settings: CoordinatorSettings,
    key_service: KeyService,
    tmp_path: Path,
) -> Callable[..., Federation]:
    feds: list[Federation] = []

    def start(**site_overrides: object) -> Federation:
        rc = make_coordinator(replace(coordinator_settings, job_approval_timeout_s=30))
        fed = start_federation(rc, key_service, tmp_path, sites=("hospital-a", "hospital-b"),
                               run=lambda s: False)
        for site in list(fed.settings):
            fed.settings[site] = replace(fed.settings[site], **site_overrides)
            fed.start_site(site)
        with rc.admin() as admin:
            wait_for(lambda: sum(x.connected for x in admin.list_sites()) == 2, what="sites")
        feds.append(fed)
        return fed

    yield start  # type: ignore[misc]
    for f in feds:
        f.close()


@pytest.mark.slow
def test_without_bubblewrap_jobs_are_refused_naming_the_fix(
    two_sites: Callable[..., Federation], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fed = two_sites()
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no bwrap (and no prlimit) on PATH
    job = fed.engineer.submit_job(APP, {"hospital-a": "bcw", "hospital-b": "bcw"}, rounds=1,
                                  model_name="nosandbox", run_config={"local-epochs": 1})
    final = list(fed.engineer.watch_job(job.job_id, timeout=120))[-1].snapshot
    assert final.state == REFUSED
    refusals = fed.audit_events("job.refuse") or []
    site_log = [e.data for e in fed.daemons["hospital-a"].audit_log.store.entries() if e.data]
    refused = [json.loads(d) for d in site_log if b'"job.refuse"' in d]
    assert refused, refusals
    text = json.dumps(refused)
    assert "bwrap is not on PATH" in text and "apt-get install bubblewrap" in text
    assert "unsafe_unsandboxed_jobs" in text


@pytest.mark.slow
def test_unsafe_unsandboxed_jobs_run_and_every_start_is_audited(
    two_sites: Callable[..., Federation],
) -> None:
    fed = two_sites(unsafe_unsandboxed_jobs=True)
    job = fed.engineer.submit_job(APP, {"hospital-a": "bcw", "hospital-b": "bcw"}, rounds=1,
                                  model_name="unsafe", run_config={"local-epochs": 1})
    final = list(fed.engineer.watch_job(job.job_id, timeout=300))[-1].snapshot
    assert final.state == SUCCEEDED, final.error
    for site, daemon in fed.daemons.items():
        log = [e.data for e in daemon.audit_log.store.entries() if e.data]
        assert any(b"site.sandbox_disabled" in d for d in log), site
        starts = [json.loads(d) for d in log if b"job.start_unsandboxed" in d]
        assert len(starts) == 1 and job.job_id in json.dumps(starts), site
        status = json.loads((fed.settings[site].site_dir / "status.json").read_text())
        assert status["sandbox"] == "off (unsafe_unsandboxed_jobs)"
        assert status["unsandboxed_job_starts"] == 1


HOSTILE_SERVER = Path(__file__).resolve().parents[1] / "apps" / "hostile_server"


@pytest.mark.slow
def test_hostile_serverapp_gets_nothing_out_of_the_coordinator(
    make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
    coordinator_settings: CoordinatorSettings,
    key_service: KeyService,
    dev_vault: object,
    tmp_path: Path,
) -> None:
    rc = make_coordinator(replace(coordinator_settings, job_approval_timeout_s=30))
    fed = start_app_federation(rc, key_service, tmp_path, HOSTILE_SERVER, rows="x1,x2\n1,2\n")
    vault = dev_vault.address.removeprefix("http://")  # type: ignore[attr-defined]
    try:
        job = fed.engineer.submit_job(
            HOSTILE_SERVER, {"hospital-a": "records-a", "hospital-b": "records-b"}, rounds=1,
            model_name="stolen",
            run_config={"coordinator-dir": str(rc.settings.data_dir), "vault-addr": vault},
        )
        final = list(fed.engineer.watch_job(job.job_id, timeout=120))[-1].snapshot
    finally:
        fed.close()
    assert final.state == 4, final  # FAILED: no model
    log = (rc.settings.data_dir / "jobs" / job.job_id / "serverapp.log").read_text()
    attempts = [line for line in log.splitlines() if "ATTEMPT" in line]
    assert len(attempts) >= 10, log[-3000:]
    assert not [a for a in attempts if "LEAKED" in a], attempts
    refused = [json.loads(e) for e in fed.audit_events("job.serverapp_refused")]
    rules = json.dumps(refused)
    assert "node outside the job" in rules and "another run" in rules
    assert not (rc.coordinator.registry.root / "stolen").exists()  # nothing signed
    assert dev_vault.root_token not in log  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_hanging_serverapp_is_stopped_at_the_wall_clock_limit_and_the_next_job_runs(
    make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
    coordinator_settings: CoordinatorSettings,
    key_service: KeyService,
    tmp_path: Path,
) -> None:
    rc = make_coordinator(replace(coordinator_settings, job_approval_timeout_s=30,
                                  job_max_wall_s=10.0))
    fed = start_app_federation(rc, key_service, tmp_path, HOSTILE_SERVER, rows="x1,x2\n1,2\n")
    targets = {"hospital-a": "records-a", "hospital-b": "records-b"}
    try:
        hung = fed.engineer.submit_job(HOSTILE_SERVER, targets, rounds=1, model_name="hung",
                                       run_config={"mode": "hang"})
        after = fed.engineer.submit_job(HOSTILE_SERVER, targets, rounds=1, model_name="after",
                                        run_config={"coordinator-dir": "/nonexistent",
                                                    "vault-addr": "127.0.0.1:9"})
        final = list(fed.engineer.watch_job(hung.job_id, timeout=120))[-1].snapshot
        nxt = list(fed.engineer.watch_job(after.job_id, timeout=120))[-1].snapshot
    finally:
        fed.close()
    assert final.state == 4 and "wall-clock limit of 10 s" in final.error, final
    log = (rc.settings.data_dir / "jobs" / hung.job_id / "serverapp.log").read_text()
    assert "hanging on purpose" in log  # the ServerApp's own output is kept
    assert nxt.state == 4 and "no site completed" in nxt.error  # the next job ran to its end


@pytest.mark.slow
def test_cancel_stops_a_running_job_only_for_its_owner_and_only_once(
    make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
    coordinator_settings: CoordinatorSettings,
    key_service: KeyService,
    tmp_path: Path,
) -> None:
    rc = make_coordinator(replace(coordinator_settings, job_approval_timeout_s=30))
    fed = start_app_federation(rc, key_service, tmp_path, HOSTILE_SERVER, rows="x1,x2\n1,2\n")
    with rc.admin() as admin:
        admin.grant_role(f"spiffe://{rc.settings.trust_domain}/user/mallory", "ml_engineer",
                         org="acme")
    mallory = user_client(rc, key_service, "mallory", tmp_path / "mallory")
    try:
        job = fed.engineer.submit_job(HOSTILE_SERVER, {"hospital-a": "records-a",
                                                       "hospital-b": "records-b"},
                                      rounds=1, model_name="hang", run_config={"mode": "hang"})
        log_path = rc.settings.data_dir / "jobs" / job.job_id / "serverapp.log"
        wait_for(lambda: log_path.exists() and "hanging on purpose" in log_path.read_text(),
                 timeout=60, what="the ServerApp to run")
        with pytest.raises(InsituRpcError) as denied:
            mallory.cancel_job(job.job_id)
        assert denied.value.code.name == "PERMISSION_DENIED"
        fed.engineer.cancel_job(job.job_id)
        final = list(fed.engineer.watch_job(job.job_id, timeout=60))[-1].snapshot
        assert final.state == 6 and "cancelled" in final.error  # CANCELLED
        with pytest.raises(InsituRpcError) as again:
            fed.engineer.cancel_job(job.job_id)
        assert again.value.code.name == "FAILED_PRECONDITION"
        assert "already finished (cancelled)" in str(again.value)
        assert fed.audit_events("job.cancel")
    finally:
        mallory.close()
        fed.close()
