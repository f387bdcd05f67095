"""`insitu-coordinator`: run the federation's coordinator."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from coordinator.server import Coordinator
from coordinator.settings import CoordinatorSettings
from insitu.cli.common import cli_errors
from insitu.errors import InsituError
from insitu.settings import load_settings
from insitu.telemetry.logs import setup_logging

app = typer.Typer(help="The insitu coordinator.", no_args_is_help=True)


@app.callback()
def _root() -> None:
    """The insitu coordinator."""


@app.command("serve")
@cli_errors
def serve(
    config: Annotated[Path | None, typer.Option(help="TOML with a [coordinator] table")] = None,
    data_dir: Annotated[Path | None, typer.Option()] = None,
    listen: Annotated[str | None, typer.Option(help="mTLS listener HOST:PORT")] = None,
    enrol_listen: Annotated[str | None, typer.Option(help="enrolment listener HOST:PORT")] = None,
    vault_addr: Annotated[str | None, typer.Option()] = None,
    trust_domain: Annotated[str | None, typer.Option()] = None,
    log_level: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Serve until SIGTERM or Ctrl-C; state lives in DATA_DIR, keys in Vault."""
    setup_logging(log_level.upper(), capture_uncaught=True)  # JSON lines, secrets redacted
    settings = load_settings(
        CoordinatorSettings,
        "coordinator",
        file=config,
        overrides={
            "data_dir": data_dir,
            "listen": listen,
            "enrol_listen": enrol_listen,
            "vault_addr": vault_addr,
            "trust_domain": trust_domain,
        },
    )
    coordinator = Coordinator(settings)
    coordinator.start()
    done = threading.Event()

    def on_hup(*_: object) -> None:
        # Reload in a thread: a signal handler must not block on Vault or the audit log.
        def reload() -> None:
            try:
                old, new = coordinator.reload_policy()
                logging.getLogger("insitu").info("policy reloaded %s -> %s", old[:12], new[:12])
            except InsituError as e:
                logging.getLogger("insitu").error("policy reload refused: %s", e.detail)

        threading.Thread(target=reload, daemon=True).start()

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    coordinator.stop()
