"""Asking a job's sites to run it, and saying, per site, why one did not and what fixes it."""

from __future__ import annotations

from typing import Final

from coordinator.jobs.record import JobRecord
from insitu._proto.v1 import session_pb2

__all__ = ["proposal", "refusal_summary"]

# What unblocks a site's refusal, by what its reason says.
_FIXES: Final = (
    ("not approved", "its site_admin reviews the app and runs `insitu-site approve --app-dir "
                     "APP --by NAME`"),
    ("privacy budget", "ask for fewer rounds or more noise, or the site's data steward raises "
                       "the dataset's epsilon_budget"),
    ("requires DP", "submit with DP settings (--dp-noise-multiplier, --dp-epsilon)"),
    ("sandbox unavailable", "the site installs bubblewrap (`make sandbox-tools`)"),
    ("more than this site allows", "request less in the app's [tool.insitu.resources]"),
    ("is not registered for", "submit with a purpose the dataset is registered for"),
    ("not registered", "the site registers the dataset in its datasets.toml, or target "
                       "another dataset"),
)


def proposal(job: JobRecord, site: str) -> session_pb2.CoordinatorMessage:
    idx = [t for t, _ in job.targets].index(site)
    return session_pb2.CoordinatorMessage(
        job_proposal=session_pb2.JobProposal(
            job_id=job.job_id,
            code_sha256=job.code_sha256,
            app_bundle=job.bundle,
            dataset=job.targets[idx][1],
            run_config=job.run_config,
            dp=job.dp,
            rounds=job.rounds,
            owner=job.owner,
            purpose=job.purpose,
            partition_id=idx,
            num_partitions=len(job.targets),
            run_id=job.run_id,
        )
    )


def refusal_summary(job: JobRecord, approval_timeout_s: float) -> tuple[str, str]:
    """``(error, fix)`` for a job too few sites approved: the count, then one line per
    site that refused or did not answer, each with its fix."""
    approved = sum(1 for ok, _, _ in job.approvals.values() if ok)
    error = (f"{approved} of {len(job.targets)} sites approved; {job.min_sites} needed")
    lines: list[str] = []
    short = job.code_sha256[:12]
    for site, _ in job.targets:
        decision = job.approvals.get(site)
        if decision is None:
            lines.append(f"{site}: did not answer within {approval_timeout_s:g} s; check that "
                         f"it is connected (`insitu-site status` there)")
        elif not decision[0]:
            reason = decision[1][:200] or "refused"
            if "not approved" in reason:
                reason = f"job code not approved here (sha256 {short}…)"
            fix = next((f for needle, f in _FIXES if needle in decision[1]), "")
            lines.append(f"{site}: {reason}" + (f"; {fix}" if fix else ""))
    return error, "\n".join(lines)
