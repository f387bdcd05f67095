"""Rich progress for a running federated job: one bar over the rounds, one line per
round phase with its metrics and which sites took part."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from insitu._proto.v1 import jobs_pb2
from insitu.sdk.client import Client

__all__ = ["follow_job", "job_outcome", "state_name"]

def state_name(state: int) -> str:
    """``JOB_STATE_REFUSED`` -> ``refused``."""
    try:
        return jobs_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()
    except ValueError:
        return f"state {state}"


def job_outcome(job: jobs_pb2.Job) -> list[str]:
    """The lines that end a job's output: what it produced, or why not and each site's
    refusal with its fix."""
    name = state_name(job.state)
    if job.state == jobs_pb2.JOB_STATE_SUCCEEDED:
        made = f"model {job.model_name} {job.model_version}, signed" if job.model_version else (
            "no model")
        return [f"job {job.job_id} succeeded: {made}"]
    lines = [f"job {job.job_id} {name}: {job.error or 'no reason given'}"]
    # The coordinator says what fixes it: one line per refusing site, or the next step.
    lines += [f"  {line}" for line in job.fix.splitlines()]
    return lines


def follow_job(client: Client, job_id: str, rounds: int, console: Console) -> jobs_pb2.Job:
    final = client.get_job(job_id)
    with Progress(
        TextColumn("[bold]federated rounds"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("rounds", total=rounds)
        for ev in client.watch_job(job_id):
            if ev.HasField("snapshot"):
                final = ev.snapshot
                continue
            r = ev.round
            metrics = "  ".join(f"{k}={v:.4f}" for k, v in sorted(r.metrics.items()))
            why = r.site_errors or r.sites_failed
            failed = f"  [red]failed: {'; '.join(why)}[/red]" if r.sites_failed else ""
            progress.console.print(
                f"round {r.round} {r.phase:8s} sites {len(r.sites_ok)}  {metrics}{failed}"
            )
            if r.phase == "evaluate":
                progress.update(task, completed=r.round)
    return final
