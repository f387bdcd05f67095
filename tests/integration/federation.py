"""A small real federation for training tests: a coordinator, enrolled site daemons with
the breast-cancer dataset registered, the demo app's code approved, and an ml_engineer."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from insitu.apps.breast_cancer.data import write_site_csvs
from insitu.flower.bundle import app_from_module, code_hash, pack_app
from insitu.identity.credentials import Credentials, build_csr, generate_private_key, key_to_pem
from insitu.identity.spiffe import SpiffeId
from insitu.keys import KeyService
from insitu.sdk import Client
from site_node.approvals import ApprovedCode
from site_node.daemon import SiteDaemon
from site_node.settings import SiteSettings, load_site_settings
from tests.integration.conftest import RunningCoordinator, enrol_site, wait_for

APP = "insitu.apps.breast_cancer"
HOSTILE = Path(__file__).resolve().parents[1] / "apps" / "hostile"
SITES = ("hospital-a", "hospital-b", "hospital-c")


@dataclass
class Federation:
    coord: RunningCoordinator
    settings: dict[str, SiteSettings]
    engineer: Client
    code_sha256: str
    signing_key: bytes
    daemons: dict[str, SiteDaemon] = field(default_factory=dict)
    threads: dict[str, threading.Thread] = field(default_factory=dict)

    def start_site(self, site: str) -> SiteDaemon:
        d = SiteDaemon(self.settings[site])
        t = threading.Thread(target=d.run, daemon=True)
        t.start()
        self.daemons[site], self.threads[site] = d, t
        return d

    def stop_site(self, site: str) -> None:
        self.daemons.pop(site).stop()
        self.threads.pop(site).join(20)

    def close(self) -> None:
        self.engineer.close()
        for site in list(self.daemons):
            self.stop_site(site)

    def audit_events(self, event: str) -> list[bytes]:
        store = self.coord.coordinator.audit_log.store
        needle = f'"{event}"'.encode()
        return [e.data for e in store.entries() if e.data and needle in e.data]


def user_client(rc: RunningCoordinator, keys: KeyService, name: str, d: Path) -> Client:
    sid = SpiffeId.user(rc.settings.trust_domain, name)
    key = generate_private_key()
    cert = keys.sign_csr("user", build_csr(key, sid), uri_sans=[sid.uri], ttl_seconds=3600)
    Credentials(key_to_pem(key), cert.cert_pem, cert.chain_pem, keys.ca_bundle_pem()).save(d)
    return Client(
        rc.target,
        d / "cert.pem",
        d / "key.pem",
        d / "ca.pem",
        server_name=rc.settings.server_name,
        timeout=30,
    )


def start_federation(
    rc: RunningCoordinator,
    keys: KeyService,
    tmp: Path,
    *,
    sites: tuple[str, ...] = SITES,
    approve: Callable[[str], bool] = lambda s: True,
    run: Callable[[str], bool] = lambda s: True,
    epsilon_budget: float = 10.0,
    **site_settings: object,
) -> Federation:
    csvs = write_site_csvs(tmp / "data", SITES, seed=0)
    bundle_hash = code_hash(pack_app(app_from_module(APP)))
    settings = {}
    for site in sites:
        s = enrol_site(rc, site, tmp / site)
        (s.site_dir / "datasets.toml").write_text(
            f'[datasets.bcw]\npath = "{csvs[site]}"\nformat = "csv"\nlabel = "target"\n'
            f'purposes = ["research"]\nepsilon_budget = {epsilon_budget}\n'
        )
        if approve(site):
            ApprovedCode(s.site_dir).approve(bundle_hash, "test")
        settings[site] = _fast_settings(s.site_dir, **site_settings)
    return _start(rc, keys, tmp, settings, bundle_hash, run)


def _fast_settings(site_dir: Path, **extra: object) -> SiteSettings:
    return load_site_settings(
        site_dir, heartbeat_interval_ms=300, backoff_initial_s=0.1, backoff_max_s=1.0, **extra
    )


def _start(
    rc: RunningCoordinator,
    keys: KeyService,
    tmp: Path,
    settings: dict[str, SiteSettings],
    bundle_hash: str,
    run: Callable[[str], bool] = lambda s: True,
) -> Federation:
    """An ml_engineer (eve), and the daemons of the sites ``run`` picks, connected."""
    with rc.admin() as admin:
        admin.grant_role(f"spiffe://{rc.settings.trust_domain}/user/eve", "ml_engineer", org="acme")
    eng = user_client(rc, keys, "eve", tmp / "eve")
    fed = Federation(rc, settings, eng, bundle_hash, keys.public_key("model-signing"))
    for site in settings:
        if run(site):
            fed.start_site(site)
    n = sum(1 for s in settings if run(s))
    with rc.admin() as admin:
        wait_for(lambda: sum(x.connected for x in admin.list_sites()) == n, what="sites")
    return fed


def start_app_federation(
    rc: RunningCoordinator,
    keys: KeyService,
    tmp: Path,
    app: Path,
    *,
    rows: str,
    other: str = "secret,target\n1,1\n",
    dataset_extra: str = "",
    sites: tuple[str, ...] = ("hospital-a", "hospital-b"),
    epsilon_budget: float = 100.0,
) -> Federation:
    """Sites that each register ``records-<letter>`` (the CSV ``rows``) and ``other`` (a
    dataset no job is granted), plus ``dataset_extra`` TOML lines in ``records-*``; ``app``
    is approved everywhere and the daemons are running."""
    bundle_hash = code_hash(pack_app(app))
    settings = {}
    for site in sites:
        s = enrol_site(rc, site, tmp / site)
        data = tmp / "data" / site
        data.mkdir(parents=True)
        (data / "records.csv").write_text(rows)
        (data / "other.csv").write_text(other)
        (s.site_dir / "datasets.toml").write_text(
            f'[datasets.records-{site[-1]}]\npath = "{data / "records.csv"}"\nformat = "csv"\n'
            f'label = "x1"\npurposes = ["research"]\nepsilon_budget = {epsilon_budget}\n'
            f"{dataset_extra}\n"
            f'[datasets.other]\npath = "{data / "other.csv"}"\nformat = "csv"\n'
            'label = "target"\npurposes = ["research"]\nepsilon_budget = 10.0\n'
        )
        ApprovedCode(s.site_dir).approve(bundle_hash, "test app")
        settings[site] = _fast_settings(s.site_dir)
    return _start(rc, keys, tmp, settings, bundle_hash)
