"""Fixtures for foundation integration tests: a real coordinator (in-process, port 0)
over the session's real OpenBao, identities issued by its PKI, and enrolled sites."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from coordinator.server import Coordinator
from coordinator.settings import CoordinatorSettings
from insitu.identity.admin_bootstrap import bootstrap_admin
from insitu.keys import KeyService
from insitu.sdk import Client
from site_node.enrol import enrol
from site_node.session import SiteSession
from site_node.settings import SiteSettings, load_site_settings


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class RunningCoordinator:
    coordinator: Coordinator
    settings: CoordinatorSettings
    admin_dir: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.coordinator.port}"

    @property
    def enrol_target(self) -> str:
        return f"127.0.0.1:{self.coordinator.enrol_port}"

    @property
    def ca_pem(self) -> str:
        assert self.coordinator.credentials is not None
        return self.coordinator.credentials.ca_pem

    def admin(self) -> Client:
        d = self.admin_dir
        return Client(
            self.target,
            d / "cert.pem",
            d / "key.pem",
            d / "ca.pem",
            server_name=self.settings.server_name,
        )


@pytest.fixture
def coordinator_settings(
    tmp_path: Path, trust_domain: str, dev_vault: object
) -> CoordinatorSettings:
    return CoordinatorSettings(
        trust_domain=trust_domain,
        data_dir=tmp_path / "coordinator",
        vault_addr="unused-in-process",
        listen="127.0.0.1:0",
        enrol_listen="127.0.0.1:0",
        heartbeat_interval_ms=300,
        crl_refresh_s=1.0,
        crl_max_stale_s=30.0,
    )


@pytest.fixture
def make_coordinator(
    tmp_path: Path, key_service: KeyService, trust_domain: str
) -> Iterator[Callable[[CoordinatorSettings], RunningCoordinator]]:
    started: list[Coordinator] = []

    def make(settings: CoordinatorSettings) -> RunningCoordinator:
        c = Coordinator(settings, keys=key_service)
        c.start()
        started.append(c)
        admin_dir = tmp_path / f"admin-{len(started)}"
        user = f"admin{len(started)}-{int(time.time() * 1000) % 100000}"
        bootstrap_admin(key_service, trust_domain, user, admin_dir, ttl_seconds=3600)
        return RunningCoordinator(c, settings, admin_dir)

    yield make
    for c in started:
        c.stop(0.5)


@pytest.fixture
def coord(
    make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
    coordinator_settings: CoordinatorSettings,
) -> RunningCoordinator:
    return make_coordinator(coordinator_settings)


@dataclass
class RunningSite:
    settings: SiteSettings
    session: SiteSession
    thread: threading.Thread
    errors: list[BaseException]

    def status(self) -> dict[str, object]:
        p = self.settings.site_dir / "status.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def stop(self) -> None:
        self.session.stop()
        self.thread.join(10)


def enrol_site(rc: RunningCoordinator, site_id: str, site_dir: Path) -> SiteSettings:
    with rc.admin() as admin:
        token = admin.create_join_token(site_id, 600)
    return enrol(
        enrol_target=rc.enrol_target,
        coordinator=rc.target,
        site_id=site_id,
        token=token.token,
        ca_pem=rc.ca_pem,
        site_dir=site_dir,
        trust_domain=rc.settings.trust_domain,
    )


@pytest.fixture
def run_site() -> Iterator[Callable[..., RunningSite]]:
    running: list[RunningSite] = []

    def start(site_dir: Path, **overrides: object) -> RunningSite:
        settings = load_site_settings(
            site_dir, heartbeat_interval_ms=200, backoff_initial_s=0.1, backoff_max_s=1.0
        )
        settings = replace(settings, **overrides) if overrides else settings
        session = SiteSession(settings)
        errors: list[BaseException] = []

        def target() -> None:
            try:
                session.run()
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=target, daemon=True)
        t.start()
        rs = RunningSite(settings, session, t, errors)
        running.append(rs)
        return rs

    yield start
    for rs in running:
        rs.stop()
