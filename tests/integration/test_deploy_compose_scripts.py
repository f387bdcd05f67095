"""The compose demo's scripts and the image's probe, run for real against a coordinator on
loopback (no Docker here): federation-init.sh issues the admin identity and one join token
per site, site-entrypoint.sh enrols a site and runs it, and insitu-probe reports both
healthy, and reports failure when they are not."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from insitu.keys import DevVault
from tests.integration.conftest import RunningCoordinator

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose"
PROBE = REPO / "deploy" / "docker" / "insitu_probe.py"


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("insitu_probe_it", PROBE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(**extra: str) -> dict[str, str]:
    # The venv's console scripts (insitu, insitu-site) as the image has them on PATH.
    return {"PATH": f"{Path(sys.executable).parent}:{os.defpath}", "HOME": "/nonexistent", **extra}


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def site_process() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def test_compose_bring_up_scripts_enrol_and_run_a_site(
    coord: RunningCoordinator,
    dev_vault: DevVault,
    tmp_path: Path,
    probe: ModuleType,
    site_process: list[subprocess.Popen[str]],
) -> None:
    td = coord.settings.trust_domain
    bao_init = tmp_path / "bao-init"
    bao_init.mkdir(mode=0o700)
    (bao_init / "root-token").write_text(dev_vault.root_token + "\n")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(coord.ca_pem)
    join = tmp_path / "join"
    sites = ["compose-a", "compose-b"]
    init_env = _env(
        TRUST_DOMAIN=td,
        VAULT_ADDR=dev_vault.address,
        COORDINATOR=coord.target,
        BAO_INIT_DIR=str(bao_init),
        CA_FILE=str(ca_file),
        ADMIN_DIR=str(tmp_path / "admin"),
        JOIN_DIR=str(join),
        SITES=" ".join(sites),
        ADMIN_USER=f"compose-admin-{os.getpid()}",
    )
    script = str(COMPOSE / "federation-init.sh")
    first = subprocess.run(
        ["bash", script], env=init_env, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0, first.stderr[-3000:]
    tokens = {s: (join / s / "token").read_text().strip() for s in sites}
    for site, token in tokens.items():
        assert len(token) >= 20, site
        assert token not in first.stdout + first.stderr  # tokens go to files, not logs
        assert (join / site / "token").stat().st_mode & 0o077 == 0
        assert (join / site / "ca.pem").read_text() == coord.ca_pem
    # Run again: fresh, unused tokens are kept (no needless minting).
    again = subprocess.run(
        ["bash", script], env=init_env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "join token for" not in again.stderr
    assert {s: (join / s / "token").read_text().strip() for s in sites} == tokens

    # The site container's entrypoint: enrol with the token, then exec the daemon.
    site_dir = tmp_path / "site-a-data"
    site_dir.mkdir()
    proc = subprocess.Popen(
        ["bash", str(COMPOSE / "site-entrypoint.sh")],
        env=_env(
            SITE_ID=sites[0],
            TRUST_DOMAIN=td,
            COORDINATOR=coord.target,
            ENROL_ADDRESS=coord.enrol_target,
            SITE_DIR=str(site_dir),
            JOIN_DIR=str(join / sites[0]),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    site_process.append(proc)

    def connected() -> bool:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        status = site_dir / "status.json"
        return status.exists() and json.loads(status.read_text()).get("connected") is True

    _wait(connected, "the site's session")
    assert probe.main(["site", "--site-dir", str(site_dir), "--check", "live"]) == 0
    assert probe.main(["site", "--site-dir", str(site_dir), "--check", "ready"]) == 0
    # The coordinator probe: TLS health on the enrolment listener, with the pinned name.
    ca = coord.settings.data_dir / "ca.pem"
    ok = ["coordinator", "--address", coord.enrol_target, "--ca-file", str(ca)]
    assert probe.main([*ok, "--server-name", coord.settings.server_name]) == 0
    assert probe.main([*ok, "--server-name", "impostor.example.org"]) == 1

    # SIGTERM ends the daemon cleanly; the status then says disconnected: not ready.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert probe.main(["site", "--site-dir", str(site_dir), "--check", "ready"]) == 1
    # A restarted container skips enrolment (the token is spent) and runs at once.
    assert (site_dir / "tls" / "cert.pem").exists()


def test_coordinator_probe_fails_when_the_coordinator_is_gone(
    make_coordinator: Callable[..., RunningCoordinator],
    coordinator_settings: object,
    probe: ModuleType,
) -> None:
    rc = make_coordinator(coordinator_settings)
    argv = [
        "coordinator",
        "--address",
        rc.enrol_target,
        "--ca-file",
        str(rc.settings.data_dir / "ca.pem"),
        "--server-name",
        rc.settings.server_name,
        "--timeout",
        "2",
    ]
    assert probe.main(argv) == 0
    rc.coordinator.stop(0.2)
    assert probe.main(argv) == 1
