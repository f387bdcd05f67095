"""Running one approved job: its ServerApp in a sandbox over a SessionGrid of the sites
that approved, then the final model checked, signed and registered.

The coordinator alone talks to Vault, signs, audits and registers; the ServerApp and the
ONNX Runtime load of its export each run in their own bubblewrap sandbox.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.supercore.run import Run

from coordinator.flower_compat import node_id_for
from coordinator.flower_grid import SessionGrid
from coordinator.jobs.model_check import OnnxSignature, check_final_arrays, check_onnx
from coordinator.jobs.record import JobRecord
from coordinator.jobs.rounds import RoundTracker
from coordinator.jobs.settings import JobSettings
from coordinator.jobs.submit import serverapp_run_config
from coordinator.registry import ModelRegistry, arrays_to_npz
from coordinator.serverapp import run_serverapp_sandboxed
from coordinator.sessions import SessionRegistry
from insitu.errors import ErrorCode, InsituError
from insitu.flower.bundle import unpack_app
from insitu.identity.spiffe import SpiffeId
from insitu.sandbox import Launcher, SandboxSpec, launcher_for, sandbox_env

__all__ = ["JobRunner", "job_dir"]

AuditFn = Callable[[str, dict[str, Any]], None]
_ESCAPE_HATCH = "unsafe_unsandboxed_serverapps to true in the coordinator's [coordinator]"


def job_dir(data_dir: Path, job_id: str) -> Path:
    """Where a job's unpacked app, ServerApp log and last unsigned aggregate live."""
    return data_dir / "jobs" / job_id


@dataclass
class JobRunner:
    """Runs approved jobs; one instance serves every job slot (it holds no job state)."""

    sessions: SessionRegistry
    registry: ModelRegistry
    data_dir: Path
    trust_domain: str
    audit: AuditFn
    settings: JobSettings

    def _launcher(self, ro: dict[Path, str], cwd: Path) -> Launcher:
        """A sandbox with only ``ro`` mounted (read-only) besides the runtime; no network."""
        spec = SandboxSpec(limits=self.settings.serverapp_limits, ro=ro,
                           env=sandbox_env(os.environ))
        return launcher_for(spec, unsafe=self.settings.unsafe_unsandboxed_serverapps,
                            host_cwd=cwd, escape_hatch=_ESCAPE_HATCH)

    def run(
        self,
        job: JobRecord,
        approved: list[str],
        tracker: RoundTracker,
        attach: Callable[[SessionGrid], None],
    ) -> str:
        """Run ``job`` on the ``approved`` sites; return the registered model version.

        ``attach`` receives the job's grid before the ServerApp starts (session traffic is
        routed to it). Raises :class:`InsituError` (or ServerAppCancelled) on failure."""
        root = job_dir(self.data_dir, job.job_id)
        layout = unpack_app(job.bundle, root / "app")
        sites = {node_id_for(SpiffeId.site(self.trust_domain, s).uri): s for s in approved}
        grid = SessionGrid(
            job.job_id, sites, self.sessions,
            round_timeout_s=job.round_timeout_s, node_wait_s=self.settings.node_wait_s,
            max_update_bytes=self.settings.max_update_bytes, on_event=tracker.on_event,
        )
        grid.set_run(Run.create_empty(job.run_id))
        run_config = serverapp_run_config(
            layout.config, job.run_config, rounds=job.rounds, strategy=job.strategy,
            min_sites=job.min_sites,
        )
        launcher = self._launcher({layout.directory: "/app"}, layout.directory)
        attach(grid)
        self.audit(
            "job.start" if launcher.sandboxed else "job.start_unsandboxed",
            {"job_id": job.job_id, "code_sha256": job.code_sha256, "sites": ",".join(approved),
             "serverapp": "bubblewrap" if launcher.sandboxed
             else "in a plain process (unsafe_unsandboxed_serverapps)"},
        )
        outcome = run_serverapp_sandboxed(
            app_dir=layout.directory, serverapp=layout.serverapp,
            onnx_export=layout.onnx_export, run_id=job.run_id, job_id=job.job_id,
            run_config=run_config, grid=grid, launcher=launcher, audit=self.audit,
            log_path=root / "serverapp.log", max_update_bytes=self.settings.max_update_bytes,
            wall_s=self.settings.job_max_wall_s, cancel=job.cancel,
        )
        if not tracker.any_train_success:
            raise InsituError(ErrorCode.FAILED_PRECONDITION, "no site completed a training round")
        # The model is what the strategy returned, never the last arrays the grid sent
        # (with fraction-evaluate = 0 that is the previous round's, or the initial model).
        if outcome.arrays is None or not len(outcome.arrays):
            raise InsituError(
                ErrorCode.FAILED_PRECONDITION,
                "the ServerApp's strategy returned no model (run a Flower strategy's start())",
            )
        arrays = {k: v.numpy() for k, v in outcome.arrays.items()}
        check_final_arrays(arrays, tracker.model_layout or {})
        lineage: dict[str, Any] = {
            "job_id": job.job_id,
            "code_sha256": job.code_sha256,
            "rounds": job.rounds,
            "strategy": job.strategy,
            "sites": sorted(approved),
            "datasets": {f"{s}/{d}": job.approvals[s][2] for s, d in job.targets if s in approved},
            "epsilon_spent": {s: round(e, 6) for s, e in tracker.epsilon.items()},
            "metrics": tracker.final_metrics,
        }
        if outcome.onnx:
            scratch = root / "onnx-check"
            scratch.mkdir(exist_ok=True)
            previous, version = self._previous_signature(job.model_name)
            signature = check_onnx(outcome.onnx, self._launcher({}, scratch),
                                   previous=previous, previous_version=version)
            lineage["onnx_io"] = signature.to_json()
        record = self.registry.store(job.model_name, arrays_to_npz(arrays), outcome.onnx,
                                     lineage, job.owner, job.org)
        self.audit(
            "model.register",
            {"job_id": job.job_id, "model": job.model_name, "version": record.version,
             "code_sha256": job.code_sha256},
        )
        return record.version

    def _previous_signature(self, model_name: str) -> tuple[OnnxSignature | None, str]:
        """The ONNX I/O signature of the latest registered version of ``model_name`` (a
        site serving it can canary the new one only if they match), and that version."""
        versions = [m for m in self.registry.list() if m["name"] == model_name]
        if not versions:
            return None, ""
        latest = max(versions, key=lambda m: int(m["version"][1:]))
        io = latest.get("lineage", {}).get("onnx_io")
        return (OnnxSignature.from_json(io) if io else None), str(latest["version"])

