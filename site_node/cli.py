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
    code_sha256: Annotated[str | None, typer.Option(help="app code hash to allow")] = None,
    app_dir: Annotated[Path | None, typer.Option(help="or: hash this Flower app folder")] = None,
    note: Annotated[str, typer.Option()] = "",
) -> None:
    """Allow job code (by hash) to run at this site: the site_admin's approval."""
    from insitu.flower.bundle import code_hash, pack_app

    if (code_sha256 is None) == (app_dir is None):
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, "give exactly one of --code-sha256, --app-dir"
        )
    h = code_sha256 or code_hash(pack_app(app_dir))  # type: ignore[arg-type]
    ApprovedCode(site_dir).approve(h, note)
    print(h)
