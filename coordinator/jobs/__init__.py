"""Federated jobs at the coordinator, one concept per module:

- ``submit``: what a submission must be, and the run config its ServerApp gets;
- ``approval``: proposing a job to its sites, and each refusal with its fix;
- ``run``: one approved job's sandboxed ServerApp, then the model checked and signed;
- ``rounds``: grid events turned into round summaries, ε totals, the last global model;
- ``model_check``: the final arrays and the ONNX export checked before signing;
- ``record`` / ``store``: a job and its durable row (SQLite, or PostgreSQL);
- ``manager``: queueing, job slots, routing site traffic, recovery after a restart.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coordinator.jobs.manager import JobManager
    from coordinator.jobs.record import JobRecord
    from coordinator.jobs.settings import JobSettings
    from coordinator.jobs.submit import STRATEGIES, validate_submit

__all__ = ["STRATEGIES", "JobManager", "JobRecord", "JobSettings", "validate_submit"]

# Lazy, so that ``python -m coordinator.jobs.model_check`` (run in a sandbox) imports only
# what it needs, not torch and flwr through the manager.
_HOME = {"JobManager": "manager", "JobRecord": "record", "JobSettings": "settings",
         "STRATEGIES": "submit", "validate_submit": "submit"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"coordinator.jobs.{_HOME[name]}"), name)
