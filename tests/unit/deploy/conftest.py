"""Helpers for the static checks of deploy/: the repository paths, and a check that a
command line written in a deployment file is one the real CLIs accept."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import click
import pytest
import typer.main

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"


@pytest.fixture(scope="session")
def deploy_dir() -> Path:
    return DEPLOY


@pytest.fixture
def check_cli(monkeypatch: pytest.MonkeyPatch) -> Callable[[Sequence[str]], click.Command]:
    """Parse ``argv`` with the real click command (no invocation); raise on an unknown
    command, an unknown option or a missing required one. Returns the leaf command."""
    from coordinator.cli import app as coordinator_app
    from insitu.cli.main import app as insitu_app
    from site_node.cli import app as site_app

    apps = {"insitu": insitu_app, "insitu-coordinator": coordinator_app, "insitu-site": site_app}
    # Deployment files hand the join token over in the environment, never on argv.
    monkeypatch.setenv("INSITU_JOIN_TOKEN", "placeholder")

    def check(argv: Sequence[str]) -> click.Command:
        prog = Path(argv[0]).name
        assert prog in apps, f"not an insitu command: {argv[0]}"
        cmd: click.Command = typer.main.get_command(apps[prog])
        args = list(argv[1:])
        name = prog
        while isinstance(cmd, click.Group):
            assert args, f"{prog}: no subcommand given"
            sub = cmd.commands.get(args[0])
            assert sub is not None, f"{prog}: unknown subcommand {args[0]!r}"
            name, cmd, args = args[0], sub, args[1:]
        cmd.make_context(name, args)  # raises click.UsageError on a bad command line
        return cmd

    return check
