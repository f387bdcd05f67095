"""kill -9 of the coordinator in the middle of a job, then a restart on the same data
directory: the job is ``interrupted`` (its last global model kept unsigned), the audit log
verifies with ``insitu-audit``, and every site stops that job's worker and releases its ε
reservation when it says hello again, audited."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.settings import CoordinatorSettings
from insitu._proto.v1 import jobs_pb2
from insitu.identity.admin_bootstrap import bootstrap_admin
from insitu.keys import KeyService
from insitu.sdk import Client
from tests.integration.conftest import wait_for
from tests.integration.federation import APP, SITES, Federation, start_federation

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class CoordinatorProcess:
    """A real ``insitu-coordinator serve`` process; duck-types RunningCoordinator for the
    federation helpers (target, enrol_target, ca_pem, settings, admin())."""

    settings: CoordinatorSettings
    config: Path
    admin_dir: Path
    ca_pem: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return self.settings.listen

    @property
    def enrol_target(self) -> str:
        return self.settings.enrol_listen

    def admin(self) -> Client:
        d = self.admin_dir
        return Client(self.target, d / "cert.pem", d / "key.pem", d / "ca.pem",
                      server_name=self.settings.server_name, timeout=30)

    def start(self) -> None:
        log = (self.config.parent / "coordinator.log").open("ab")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "insitu-coordinator"), "serve", "--config",
             str(self.config)],
            stdout=log, stderr=log, start_new_session=True,
        )

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", int(self.target.split(":")[1])), 1):
                    return True
            except OSError:
                return False

        wait_for(up, timeout=60, what="the coordinator's listener")

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)


@pytest.fixture
def coordinator_process(
    tmp_path: Path, trust_domain: str, dev_vault: object, key_service: KeyService
) -> Iterator[CoordinatorProcess]:
    token = tmp_path / "vault-token"
    token.write_text(dev_vault.root_token)  # type: ignore[attr-defined]
    token.chmod(0o600)
    listen, enrol = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    data_dir = tmp_path / "coordinator"
    config = tmp_path / "coordinator.toml"
    config.write_text(
        "[coordinator]\n"
        f'trust_domain = "{trust_domain}"\n'
        f'data_dir = "{data_dir}"\n'
        f'vault_addr = "{dev_vault.address}"\n'  # type: ignore[attr-defined]
        f'vault_token_file = "{token}"\n'
        f'listen = "{listen}"\nenrol_listen = "{enrol}"\n'
        "heartbeat_interval_ms = 300\ncrl_refresh_s = 1.0\njob_approval_timeout_s = 30\n"
        "audit_checkpoint_every_s = 0.5\n"
    )
    settings = CoordinatorSettings(
        trust_domain=trust_domain, data_dir=data_dir, vault_addr="-", listen=listen,
        enrol_listen=enrol,
    )
    admin_dir = tmp_path / "admin"
    bootstrap_admin(key_service, trust_domain, "restart-admin", admin_dir, ttl_seconds=3600)
    cp = CoordinatorProcess(settings, config, admin_dir, key_service.ca_bundle_pem())
    cp.start()
    yield cp
    cp.stop()


def _processes_naming(text: str) -> list[int]:
    """Processes whose command line names ``text`` (a job's workers bind its app dir)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(pid))
    return found


def _site_events(fed: Federation, site: str, event: str) -> list[bytes]:
    store = fed.daemons[site].audit_log.store
    return [e.data for e in store.entries() if e.data and f'"{event}"'.encode() in e.data]


def test_kill_9_mid_job_interrupts_it_and_sites_reconcile(
    coordinator_process: CoordinatorProcess, key_service: KeyService, tmp_path: Path
) -> None:
    cp = coordinator_process
    fed = start_federation(cp, key_service, tmp_path, epsilon_budget=1000.0)  # type: ignore[arg-type]
    try:
        job = fed.engineer.submit_job(
            APP, {s: "bcw" for s in SITES}, rounds=200, model_name="restart",
            run_config={"local-epochs": 1}, dp_noise_multiplier=1.0, dp_epsilon=500.0,
        )
        wait_for(lambda: fed.engineer.get_job(job.job_id).current_round >= 2, timeout=180,
                 what="two rounds")
        site_dirs = {s: str(fed.settings[s].site_dir / "jobs" / job.job_id) for s in SITES}
        for site, d in site_dirs.items():
            assert _processes_naming(d), f"{site} has no worker for the job"
            assert fed.daemons[site].ledger.reserved("bcw") > 0
        before = fed.engineer.get_job(job.job_id)
        assert before.state == jobs_pb2.JOB_STATE_RUNNING

        cp.kill9()
        cp.start()

        # The job is interrupted, with its reason; its last global model stays unsigned.
        after = fed.engineer.get_job(job.job_id)
        assert after.state == jobs_pb2.JOB_STATE_INTERRUPTED, after
        assert "coordinator stopped" in after.error and after.fix
        assert [r.round for r in after.history][:2] == [1, 1]  # rounds survived the restart
        assert (cp.settings.data_dir / "jobs" / job.job_id / "last_aggregate.npz").stat().st_size
        assert not fed.engineer.list_models()

        # Each site, on hello, stops the job's worker and releases its reservation, audited.
        for site, d in site_dirs.items():
            wait_for(lambda d=d: not _processes_naming(d), timeout=60,  # type: ignore[misc]
                     what=f"{site}'s worker to stop")
            wait_for(lambda site=site: fed.daemons[site].ledger.reserved("bcw") == 0,  # type: ignore[misc]
                     timeout=30, what=f"{site}'s reservation released")
            events = _site_events(fed, site, "job.reconciled")
            assert events and job.job_id.encode() in events[0], site
        # Nothing of the job runs at the coordinator either (its ServerApp died with it).
        assert not _processes_naming(str(cp.settings.data_dir / "jobs" / job.job_id))

        # A new job runs after the restart.
        again = fed.engineer.submit_job(APP, {s: "bcw" for s in SITES}, rounds=1,
                                        model_name="restart", run_config={"local-epochs": 1})
        final = list(fed.engineer.watch_job(again.job_id, timeout=300))[-1].snapshot
        assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error
    finally:
        fed.close()
        cp.stop()

    # insitu-audit verify passes on the coordinator's log (its latest signed checkpoint).
    db = cp.settings.data_dir / "audit.db"
    pub = tmp_path / "audit.pub"
    pub.write_text(base64.b64encode(key_service.public_key("audit-signing")).decode())
    cli = [str(Path(sys.executable).parent / "insitu-audit")]
    cpf = tmp_path / "audit.checkpoint"
    r = subprocess.run([*cli, "checkpoint", "--db", str(db)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cpf.write_bytes(r.stdout)
    r = subprocess.run(
        [*cli, "verify", "--db", str(db), "--checkpoint", str(cpf), "--pubkey", str(pub),
         "--key-name", "insitu-audit"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout + r.stderr
    from insitu.audit.sqlite_store import SqliteAuditStore

    store = SqliteAuditStore(db)
    try:
        interrupted = [e.data for e in store.entries()
                       if e.data and b'"job.interrupted"' in e.data]
    finally:
        store.close()
    assert len(interrupted) == 1 and job.job_id.encode() in interrupted[0]
