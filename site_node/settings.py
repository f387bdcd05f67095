"""The site daemon's one settings object, kept in ``<site-dir>/site.toml``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from insitu.settings import load_settings

__all__ = ["SiteSettings", "load_site_settings"]

SITE_FILE = "site.toml"


@dataclass(frozen=True)
class SiteSettings:
    site_id: str
    trust_domain: str
    coordinator: str  # host:port of the coordinator's mTLS listener
    site_dir: Path
    heartbeat_interval_ms: int = 5_000
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    renew_at_fraction: float = 2 / 3
    # The site API (Predict) for callers inside the site: mTLS, loopback by default.
    api_listen: str = "127.0.0.1:0"
    policy_dir: Path | None = None
    local_policy_dir: Path | None = None
    audit_checkpoint_every_s: float = 60.0
    witness_interval_s: float = 5.0
    metrics_listen: str = "127.0.0.1:0"
    trace_exporter: str = "none"

    @property
    def tls_dir(self) -> Path:
        return self.site_dir / "tls"

    @property
    def server_name(self) -> str:
        return f"coordinator.{self.trust_domain}"


def load_site_settings(site_dir: Path, **overrides: object) -> SiteSettings:
    return load_settings(
        SiteSettings,
        "site",
        file=site_dir / SITE_FILE,
        overrides={"site_dir": str(site_dir), **overrides},
    )
