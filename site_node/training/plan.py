"""What an approved job runs as at this site: its plan (fixed when the site approves the
proposal) and the sandboxed runner built from it.

The plan is made once, at approval: the verified app bundle unpacked, the limits granted
against the site's ceilings, the run config. The runner is built from the plan twice at
most: at approval without a GPU (which checks the sandbox and the node config; no process
starts), and again when the job's slot comes with a GPU, since a GPU index is granted only
then (:mod:`site_node.training.capacity`).

Example::

    plan = plan_job(proposal, site_dir / "jobs" / job_id / "app", dataset, policy, ceilings)
    runner = build_runner(plan, gpu=None, node_id=node_id, daemon_env=os.environ,
                          unsafe_unsandboxed=False, audit=audit)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from insitu._proto.v1 import session_pb2
from insitu.flower.bundle import AppLayout, unpack_app
from insitu.flower.config import config_value
from insitu.sandbox import BwrapLauncher, Launcher, Limits, SandboxSpec, launcher_for, sandbox_env
from site_node.training.capacity import Grant, JobNeed
from site_node.training.datasets import RegisteredDataset
from site_node.training.dp import DpPolicy
from site_node.training.runner import ClientAppRunner, build_node_config

__all__ = ["JobPlan", "build_runner", "plan_job", "start_attrs"]

Audit = Callable[[str, dict[str, str]], None]


@dataclass(frozen=True)
class JobPlan:
    """An approved job, ready to run: fixed at approval; the GPU comes with its slot."""

    job_id: str
    code_sha256: str
    run_id: int
    partition_id: int
    num_partitions: int
    layout: AppLayout
    dataset: RegisteredDataset
    limits: Limits
    run_config: Mapping[str, str | int | float | bool]
    policy: DpPolicy | None  # the DP the site enforces, if any

    @property
    def need(self) -> JobNeed:
        """What its worker holds while it runs."""
        return JobNeed(self.limits.memory_mb, self.layout.declaration.resources.gpu)


def plan_job(
    p: session_pb2.JobProposal, app_dir: Path, ds: RegisteredDataset,
    policy: DpPolicy | None, ceilings: Limits,
) -> JobPlan:
    """Unpack the (verified) bundle into ``app_dir`` and fix what the job runs with; raises
    RESOURCE_EXHAUSTED when its app asks for more than ``ceilings``."""
    if app_dir.exists():  # a rejoin after a restart: extract the verified bundle anew
        shutil.rmtree(app_dir)
    layout = unpack_app(p.app_bundle, app_dir)
    run_config: dict[str, str | int | float | bool] = dict(layout.config)
    run_config.update({k: config_value(v) for k, v in p.run_config.items()})
    if p.dp.noise_multiplier > 0:  # the app may also run DP-SGD; its ε is a claim
        run_config.update(
            {
                "dp-noise-multiplier": float(p.dp.noise_multiplier),
                "dp-max-grad-norm": float(p.dp.max_grad_norm or 1.0),
                "dp-delta": float(p.dp.delta or 1e-5),
            }
        )
    else:
        run_config["dp-noise-multiplier"] = 0.0
    return JobPlan(
        job_id=p.job_id, code_sha256=p.code_sha256, run_id=int(p.run_id),
        partition_id=p.partition_id, num_partitions=p.num_partitions, layout=layout,
        dataset=ds, limits=ceilings.grant(layout.declaration.resources),
        run_config=run_config, policy=policy,
    )


def build_runner(
    plan: JobPlan,
    gpu: int | None,
    *,
    node_id: int,
    daemon_env: Mapping[str, str],
    unsafe_unsandboxed: bool,
    audit: Audit,
) -> ClientAppRunner:
    """The job's runner, its worker sandboxed (bubblewrap) with GPU ``gpu`` or none. Starts
    no process; raises SandboxUnavailable naming the fix where bubblewrap cannot run."""
    ds, layout = plan.dataset, plan.layout
    spec = SandboxSpec(
        limits=plan.limits,
        ro={layout.directory: "/app", ds.path: f"/data/{ds.name}/{ds.path.name}"},
        env=sandbox_env(daemon_env, gpu=gpu is not None),
        gpu=gpu,
    )
    launcher = launcher_for(spec, unsafe=unsafe_unsandboxed, host_cwd=layout.directory)
    return ClientAppRunner(
        layout.directory,
        layout.clientapp,
        build_node_config(
            plan.partition_id, plan.num_partitions, ds.name, launcher.inside(ds.path),
            device=None if _has_gpu(launcher) else "cpu",
        ),
        run_id=plan.run_id,
        node_id=node_id,
        run_config=plan.run_config,
        launcher=launcher,
        on_message=lambda direction, mtype, size, ok: audit(
            "job.message",
            {
                "job_id": plan.job_id,
                "direction": direction,
                "message_type": mtype,
                "bytes": str(size),
                "ok": str(ok),
                "code_sha256": plan.code_sha256,
            },
        ),
    )


def start_attrs(plan: JobPlan, launcher: Launcher, grant: Grant) -> dict[str, str]:
    """What the audit records when a job's worker may start: sandbox, limits, GPU, DP."""
    limits, policy = launcher.limits, plan.policy
    return {
        "job_id": plan.job_id,
        "code_sha256": plan.code_sha256,
        "dataset": plan.dataset.name,
        "sandbox": "bubblewrap" if launcher.sandboxed else "none (unsafe_unsandboxed_jobs)",
        "limits": (f"memory_mb={limits.memory_mb} cpu_seconds={limits.cpu_seconds} "
                   f"processes={limits.processes} open_files={limits.open_files} "
                   f"scratch_mb={limits.scratch_mb} "
                   f"message_timeout_s={limits.message_timeout_s:g}"),
        "gpu": "no" if grant.gpu is None else str(grant.gpu),
        "site_dp": (
            f"clip_norm={policy.clip_norm:g} noise_multiplier={policy.noise_multiplier:g} "
            f"delta={policy.delta:g}" if policy else "none"
        ),
    }


def _has_gpu(launcher: Launcher) -> bool:
    return isinstance(launcher, BwrapLauncher) and launcher.spec.gpu is not None
