"""deploy/**/*.sh: bash syntax, shellcheck (where installed), and bootstrap.sh's input
checks, which refuse before any call to Vault."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
SCRIPTS = sorted(DEPLOY.rglob("*.sh"))
BOOTSTRAP = DEPLOY / "vault" / "bootstrap.sh"


def test_there_are_scripts() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"bootstrap.sh", "init-vault.sh", "federation-init.sh", "site-entrypoint.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_script_is_strict_executable_bash(script: Path) -> None:
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(script, os.X_OK)
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(
    shutil.which("shellcheck") is None,
    reason="shellcheck not installed (apt-get install shellcheck)",
)
def test_shellcheck_is_clean() -> None:
    out = subprocess.run(
        ["shellcheck", "--severity=style", *map(str, SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout


def _bootstrap(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.defpath}
    return subprocess.run(
        ["bash", str(BOOTSTRAP), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**base, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--trust-domain is required"),
        (("--trust-domain", "Bad_Domain"), "invalid trust domain"),
        (("--trust-domain", "x.org", "--frobnicate"), "unknown argument"),
    ],
)
def test_bootstrap_refuses_bad_input(args: tuple[str, ...], message: str) -> None:
    out = _bootstrap(*args)
    assert out.returncode != 0
    assert message in out.stderr


def test_bootstrap_needs_an_address_and_a_token(tmp_path: Path) -> None:
    fake_cli = tmp_path / "bao"
    fake_cli.write_text("#!/bin/sh\nexit 99\n")  # must never be reached
    fake_cli.chmod(0o755)
    env = {"VAULT_CLI": str(fake_cli)}
    out = _bootstrap("--trust-domain", "x.org", env=env)
    assert out.returncode != 0 and "VAULT_ADDR" in out.stderr
    out = _bootstrap("--trust-domain", "x.org", env={**env, "VAULT_ADDR": "http://127.0.0.1:1"})
    assert out.returncode != 0 and "VAULT_TOKEN" in out.stderr
