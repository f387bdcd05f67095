"""The operator CLI refuses bad input with a clear message and a non-zero exit code,
before contacting anything."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from insitu.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize("args,needle", [
    (["model", "deploy", "m", "--version", "v1", "--site", "a", "--canary", "abc"],
     "percentage"),
    (["model", "deploy", "m", "--version", "v1", "--site", "a", "--canary", "150%"],
     "between"),
    (["token", "create", "--site", "a", "--ttl", "forever"], "invalid duration"),
    (["job", "submit", "x", "--site", "no-equals-sign"], "KEY=VALUE"),
    (["site", "list", "--identity", "/nonexistent"], "lacks cert.pem"),
])
def test_bad_input_exits_non_zero_with_a_reason(args: list[str], needle: str) -> None:
    r = runner.invoke(app, args)
    assert r.exit_code != 0
    assert needle in (r.output + str(r.stderr if r.stderr_bytes else ""))
