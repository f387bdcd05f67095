"""The site daemon's one settings object, kept in ``<site-dir>/site.toml``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from insitu.errors import ErrorCode, InsituError
from insitu.sandbox.limits import Limits
from insitu.settings import load_settings
from site_node.egress import EgressBounds
from site_node.training.capacity import CapacityBudget

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
    # Job code runs in a bubblewrap sandbox. Only this flag runs it unsandboxed (as the
    # daemon's user, with its files and network); every such job start is audited.
    unsafe_unsandboxed_jobs: bool = False
    # Ceilings for one job worker; an app may request less in [tool.insitu.resources].
    job_memory_mb: int = 8192
    job_cpu_seconds: int = 86_400
    job_processes: int = 256
    job_open_files: int = 1024
    job_scratch_mb: int = 1024
    job_message_timeout_s: float = 600.0
    job_gpus: tuple[int, ...] = ()  # GPU indices jobs may be granted (each to one job at a time)
    # The budget of all job workers together: how many run at once, and their memory ceilings
    # summed (default 4 x job_memory_mb). An approved job beyond it waits in a FIFO queue.
    job_max_concurrent: int = 2
    job_total_memory_mb: int | None = None
    # The egress contract's bounds on one reply's metric and config records.
    egress_max_entries: int = 64
    egress_max_list_length: int = 64
    egress_max_record_bytes: int = 16 * 1024

    @property
    def tls_dir(self) -> Path:
        return self.site_dir / "tls"

    @property
    def server_name(self) -> str:
        return f"coordinator.{self.trust_domain}"

    def job_limits(self) -> Limits:
        """The site's ceilings for one job worker."""
        return Limits(
            memory_mb=self.job_memory_mb,
            cpu_seconds=self.job_cpu_seconds,
            processes=self.job_processes,
            open_files=self.job_open_files,
            scratch_mb=self.job_scratch_mb,
            message_timeout_s=self.job_message_timeout_s,
        )

    def job_capacity(self) -> CapacityBudget:
        """The site's budget for concurrent job workers."""
        total = self.job_total_memory_mb
        return CapacityBudget(
            max_jobs=self.job_max_concurrent,
            total_memory_mb=4 * self.job_memory_mb if total is None else total,
            gpus=self.job_gpus,
        )

    def egress_bounds(self) -> EgressBounds:
        return EgressBounds(
            max_entries=self.egress_max_entries,
            max_list_length=self.egress_max_list_length,
            max_record_bytes=self.egress_max_record_bytes,
        )


def load_site_settings(site_dir: Path, **overrides: object) -> SiteSettings:
    """Load and check ``<site-dir>/site.toml``; a bad job limit, job budget, GPU index or
    egress bound fails here, naming the file and the field."""
    file = site_dir / SITE_FILE
    settings = load_settings(
        SiteSettings, "site", file=file, overrides={"site_dir": str(site_dir), **overrides}
    )
    try:
        settings.job_limits()
        settings.egress_bounds()
        settings.job_capacity()
    except InsituError as err:
        raise InsituError(ErrorCode.CONFIG, f"{file} [site]: {err.detail}") from None
    for gpu in settings.job_gpus:
        if gpu < 0:
            raise InsituError(ErrorCode.CONFIG, f"{file} [site]: job_gpus entries must be >= 0")
    return settings
