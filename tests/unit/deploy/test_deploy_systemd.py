"""deploy/systemd: the units pass `systemd-analyze verify` with no diagnostic, score "OK"
(exposure <= 2.0) in `systemd-analyze security --offline`, carry the hardening the
install guide promises, and start commands the real CLIs accept."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import click
import pytest

UNIT_DIR = Path(__file__).resolve().parents[3] / "deploy" / "systemd"
UNITS = ["insitu-site.service", "insitu-coordinator.service"]
INSTALL_BIN = "/opt/insitu/venv/bin/"
MAX_EXPOSURE = 2.0  # systemd's "OK" band

needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (systemd is not part of this container image)",
)


def _directives(unit: str) -> dict[str, list[str]]:
    """``Key -> [values]`` of the [Service] section (systemd allows repeated keys)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in (UNIT_DIR / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.fixture
def installed_copy(tmp_path: Path) -> Callable[[str], Path]:
    """The unit with ExecStart pointing at a stub: verify checks that the binary exists,
    and /opt/insitu is not installed on a test machine. Nothing else changes."""

    def make(unit: str) -> Path:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        text = (UNIT_DIR / unit).read_text()
        for exe in set(re.findall(re.escape(INSTALL_BIN) + r"([\w-]+)", text)):
            stub = bin_dir / exe
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
        path = tmp_path / unit
        path.write_text(text.replace(INSTALL_BIN, f"{bin_dir}/"))
        return path

    return make


@needs_systemd
@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_is_clean(unit: str, installed_copy: Callable[[str], Path]) -> None:
    # verify exits 0 even for unknown keys or bad values; it only prints them. So any
    # output at all is a failure.
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(installed_copy(unit))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr


@needs_systemd
def test_verify_would_catch_a_broken_directive(
    tmp_path: Path, installed_copy: Callable[[str], Path]
) -> None:
    good = installed_copy("insitu-site.service")
    bad = tmp_path / "bad" / "insitu-site.service"
    bad.parent.mkdir()
    bad.write_text(good.read_text().replace("ProtectSystem=strict", "ProtectSystem=stric"))
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "stric" in out.stdout + out.stderr  # the diagnostic names the bad value


@needs_systemd
@pytest.mark.parametrize("unit", UNITS)
def test_exposure_level_is_ok(unit: str, installed_copy: Callable[[str], Path]) -> None:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(installed_copy(unit))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, out.stdout


_REQUIRED = {
    "User": "insitu",
    "Group": "insitu",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
    "Restart": "on-failure",
    "UMask": "0077",
}


@pytest.mark.parametrize("unit", UNITS)
def test_unit_carries_the_promised_hardening(unit: str) -> None:
    d = _directives(unit)
    for key, value in _REQUIRED.items():
        assert d.get(key) == [value], f"{unit}: {key}={d.get(key)}"
    assert "@system-service" in d["SystemCallFilter"]
    state = d["StateDirectory"][0]
    assert d["ReadWritePaths"] == [f"/var/lib/{state}"]
    assert d["StateDirectoryMode"] == ["0700"]


def test_site_unit_stops_when_the_federation_refuses_it() -> None:
    from insitu.cli.common import EXIT_REFUSED

    assert _directives("insitu-site.service")["RestartPreventExitStatus"] == [str(EXIT_REFUSED)]


def test_coordinator_credentials_are_systemd_credentials() -> None:
    d = _directives("insitu-coordinator.service")
    loaded = {v.split(":", 1)[0] for v in d["LoadCredential"]}
    env = dict(v.split("=", 1) for v in d["Environment"] if "=" in v and " " not in v)
    assert env["INSITU_COORDINATOR_VAULT_ROLE_ID_FILE"] == "%d/vault-role-id"
    assert env["INSITU_COORDINATOR_VAULT_SECRET_ID_FILE"] == "%d/vault-secret-id"
    assert {"vault-role-id", "vault-secret-id"} <= loaded
    assert "INSITU_COORDINATOR_VAULT_TOKEN_FILE" not in env  # dev-only setting


@pytest.mark.parametrize("unit", UNITS)
def test_exec_start_is_a_command_the_cli_accepts(
    unit: str, check_cli: Callable[[Sequence[str]], click.Command]
) -> None:
    (cmd,) = _directives(unit)["ExecStart"]
    argv = shlex.split(cmd)
    assert argv[0].startswith(INSTALL_BIN)
    check_cli(argv)
