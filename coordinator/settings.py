"""The coordinator's one settings object (file → env INSITU_COORDINATOR_* → flags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from insitu.authz.bundle import default_policy_dir
from insitu.errors import ErrorCode, InsituError

__all__ = ["CoordinatorSettings", "default_policy_dir"]


@dataclass(frozen=True)
class CoordinatorSettings:
    trust_domain: str
    data_dir: Path
    vault_addr: str
    # AppRole credentials (production) or a token file (dev only); never the value inline.
    vault_role_id_file: Path | None = None
    vault_secret_id_file: Path | None = None
    vault_token_file: Path | None = None
    listen: str = "127.0.0.1:7443"
    enrol_listen: str = "127.0.0.1:7444"
    site_cert_ttl_s: int = 8 * 3600
    service_cert_ttl_s: int = 24 * 3600
    token_max_ttl_s: int = 7 * 24 * 3600
    heartbeat_interval_ms: int = 5_000
    crl_refresh_s: float = 15.0
    crl_max_stale_s: float = 300.0
    advertise_host: str = "127.0.0.1"
    # Cedar policies (schema + *.cedar); an invalid set denies everything and says why.
    policy_dir: Path | None = None
    audit_checkpoint_every_n: int = 1000
    audit_checkpoint_every_s: float = 60.0
    job_approval_timeout_s: float = 60.0
    max_update_bytes: int = 512 * 1024 * 1024
    witness_interval_s: float = 5.0
    # Prometheus /metrics (loopback unless a non-loopback host is named on purpose).
    metrics_listen: str = "127.0.0.1:0"
    trace_exporter: str = "none"  # none | console | file:<path> | otlp:<endpoint>
    # Each job's ServerApp runs in a bubblewrap sandbox (no token, keys, data or network).
    # Only this flag runs it in the coordinator's own process; every such job is audited.
    unsafe_unsandboxed_serverapps: bool = False
    serverapp_memory_mb: int = 16_384
    serverapp_cpu_seconds: int = 86_400
    job_max_wall_s: float = 86_400.0  # a job whose ServerApp runs longer is stopped, failed
    max_concurrent_jobs: int = 4  # jobs past this wait in the queue (`insitu job list`)
    # Job records, rounds and outcomes: SQLite under data_dir, or this PostgreSQL DSN.
    job_store_dsn: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.max_concurrent_jobs <= 64:
            raise InsituError(ErrorCode.CONFIG,
                              "[coordinator] max_concurrent_jobs must be between 1 and 64")
        if self.job_max_wall_s <= 0:
            raise InsituError(ErrorCode.CONFIG, "[coordinator] job_max_wall_s must be > 0")

    @property
    def server_name(self) -> str:
        """The DNS SAN clients pin: only Vault's `service` role may issue it."""
        return f"coordinator.{self.trust_domain}"
