"""`insitu-site`: enrol this site and run its daemon."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from insitu.cli.common import EXIT_REFUSED, cli_errors, err_console
from insitu.errors import ErrorCode, InsituError
from insitu.telemetry.logs import setup_logging
from site_node.approvals import ApprovedCode
from site_node.daemon import SiteDaemon
from site_node.enrol import enrol
from site_node.session import SiteRefused
from site_node.settings import load_site_settings

app = typer.Typer(help="The insitu site daemon.", no_args_is_help=True)


@app.callback()
def _root() -> None:
    """The insitu site daemon."""


@app.command("enrol")
@cli_errors
def enrol_cmd(
    coordinator: Annotated[str, typer.Option(help="coordinator mTLS address HOST:PORT")],
    token: Annotated[str, typer.Option(help="one-time join token", envvar="INSITU_JOIN_TOKEN")],
    ca_file: Annotated[Path, typer.Option(help="federation CA certificate (PEM)")],
    site_dir: Annotated[Path, typer.Option(help="this site's state folder")],
    site_id: Annotated[str, typer.Option()],
    enrol_address: Annotated[
        str | None,
        typer.Option(help="enrolment listener HOST:PORT (default: coordinator port + 1)"),
    ] = None,
    trust_domain: Annotated[str, typer.Option()] = "demo.insitu",
) -> None:
    """Generate this site's key (0600, never sent) and exchange a CSR + token for a cert."""
    if enrol_address is None:
        host, _, port = coordinator.rpartition(":")
        enrol_address = f"{host}:{int(port) + 1}"
    s = enrol(
        enrol_target=enrol_address,
        coordinator=coordinator,
        site_id=site_id,
        token=token,
        ca_pem=ca_file.read_text(),
        site_dir=site_dir,
        trust_domain=trust_domain,
    )
    print(f"enrolled {s.site_id}; identity in {s.tls_dir}")


@app.command("run")
@cli_errors
def run(
    site_dir: Annotated[Path, typer.Option(help="this site's state folder")],
    heartbeat_ms: Annotated[int | None, typer.Option()] = None,
    log_level: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Dial out to the coordinator and keep the session open until SIGTERM or Ctrl-C."""
    setup_logging(log_level.upper(), capture_uncaught=True)  # JSON lines, secrets redacted
    settings = load_site_settings(site_dir, heartbeat_interval_ms=heartbeat_ms)
    daemon = SiteDaemon(settings)
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    refused: list[str] = []
    t = threading.Thread(target=_run, args=(daemon, refused), daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.5)
    if refused:
        err_console.print(f"[red]refused by the federation:[/red] {refused[0]}")
        sys.exit(EXIT_REFUSED)


def _run(daemon: SiteDaemon, refused: list[str]) -> None:
    try:
        daemon.run()
    except SiteRefused as e:
        refused.append(e.detail)


@app.command("approve")
@cli_errors
def approve(
    site_dir: Annotated[Path, typer.Option(help="this site's state folder")],
    app_dir: Annotated[Path, typer.Option(help="the Flower app folder to review and allow")],
    by: Annotated[
        str | None, typer.Option(help="who approves (default: the OS user running this)")
    ] = None,
    note: Annotated[str, typer.Option()] = "",
) -> None:
    """Allow job code to run at this site: shows what is approved (code hash, components,
    declared metric keys, requested resources), refuses requests above this site's limits,
    audits the approval naming the approver, and records it where job code cannot write."""
    import tempfile

    from insitu.flower.bundle import code_hash, pack_app, unpack_app
    from insitu.rpc.audit import RpcAuditor
    from site_node.approvals import app_summary
    from site_node.daemon import open_site_audit_log
    from site_node.training.capacity import JobNeed

    settings = load_site_settings(site_dir)
    # Pack once; show what is in the packed bundle, so the hash approved is the code shown.
    bundle = pack_app(app_dir)
    digest = code_hash(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        layout = unpack_app(bundle, Path(tmp) / "app")
    summary = app_summary(layout)
    print(f"code sha256     {digest}")
    print(f"app             {summary['app']}")
    for name, ref in summary["components"].items():
        print(f"component       {name} = {ref}")
    print(f"metric keys     {', '.join(summary['metric_keys'])}")
    print(f"metric records  {', '.join(summary['metric_records'])}")
    print(f"resources       {layout.declaration.resources.describe()}")
    try:
        limits = settings.job_limits().grant(layout.declaration.resources)
        settings.job_capacity().check(JobNeed(limits.memory_mb, layout.declaration.resources.gpu))
    except InsituError as e:
        raise InsituError(ErrorCode.RESOURCE_EXHAUSTED, f"not approved: {e.detail}") from None
    if layout.declaration.resources.gpu and not settings.job_gpus:
        err_console.print("[yellow]the app asks for a GPU; this site grants none "
                          "(job_gpus): it will run on CPU[/yellow]")
    approvals = ApprovedCode(site_dir)
    approver = by or _os_user()
    if approvals.is_approved(digest):
        print(f"already approved: {digest}")
        return
    # Audit first: if the record cannot be written, the approval is refused (fail closed).
    with open_site_audit_log(settings) as log:
        RpcAuditor(log, f"site/{settings.site_id}").event(
            "code.approve", "code.approve", ("AppCode", digest),
            attrs={"approver": approver, "app": summary["app"], "note": note[:200],
                   "metric_keys": ",".join(summary["metric_keys"]),
                   "resources": layout.declaration.resources.describe()},
        )
    approvals.approve(digest, note, approver=approver, summary=summary)
    print(f"approved by {approver}")


@app.command("status")
@cli_errors
def status(site_dir: Annotated[Path, typer.Option(help="this site's state folder")]) -> None:
    """The running daemon's status: session, certificate, ports, whether job code runs
    sandboxed (with the count of unsandboxed job starts), and each job as running (with the
    memory and GPU it holds) or queued (with what it waits for)."""
    import json

    path = site_dir / "status.json"
    if not path.exists():
        raise InsituError(ErrorCode.NOT_FOUND, f"{path} does not exist (is the daemon running?)")
    body = json.loads(path.read_text())
    jobs = body.pop("jobs", [])
    for key, value in body.items():
        print(f"{key:24} {value}")
    running = sum(1 for j in jobs if j.get("state") == "running")
    print(f"{'jobs':24} {running} running, {len(jobs) - running} queued")
    for j in jobs:
        print(f"  {_job_line(j)}")


def _job_line(job: dict[str, object]) -> str:
    memory, gpu = job.get("memory_mb"), job.get("gpu")
    if job.get("state") == "running":
        return f"{job.get('job_id')}  running  holds memory_mb={memory} gpu={gpu}"
    wants = "a GPU" if gpu == "wanted" else "no GPU"
    return (f"{job.get('job_id')}  queued #{job.get('queue_position')}  "
            f"waits for memory_mb={memory} and {wants}")


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
