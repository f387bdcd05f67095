"""What the coordinator allows a job: slots, limits, and its ServerApp's sandbox."""

from __future__ import annotations

from dataclasses import dataclass, field

from insitu.sandbox import Limits

__all__ = ["JobSettings"]


@dataclass(frozen=True)
class JobSettings:
    approval_timeout_s: float = 60.0
    node_wait_s: float = 60.0
    max_update_bytes: int = 512 * 1024 * 1024
    max_rounds: int = 1000
    max_concurrent_jobs: int = 4  # jobs past this wait, queued
    unsafe_unsandboxed_serverapps: bool = False
    job_max_wall_s: float = 86_400.0  # a job's ServerApp is stopped past this
    serverapp_limits: Limits = field(default_factory=lambda: Limits(
        memory_mb=16_384, cpu_seconds=86_400, processes=256, open_files=1024, scratch_mb=1024,
        message_timeout_s=86_400.0))
