"""DevVault: starts a real bao dev server, keeps the token out of logs, and leaves nothing
running when stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import hvac
import pytest

from insitu.errors import ErrorCode, InsituError
from insitu.keys import DevVault, find_bao_binary, free_port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_find_bao_binary() -> None:
    path = find_bao_binary()
    assert path.is_file() and os.access(path, os.X_OK)


def test_lifecycle_and_redacted_log(tmp_path: Path) -> None:
    log = tmp_path / "bao.log"
    vault = DevVault(port=free_port(), root_token="tok-" + "x7" * 12, log_path=log)
    with vault:
        assert vault.start() is vault  # idempotent
        pid = vault.pid
        assert pid is not None and _alive(pid)
        client = hvac.Client(url=vault.address, token=vault.root_token, timeout=10)
        assert client.is_authenticated()
        assert vault.address == f"http://127.0.0.1:{vault.port}"
    assert vault.pid is None and not _alive(pid)
    vault.stop()  # idempotent
    text = log.read_text()
    assert "OpenBao server configuration" in text  # the log really was written
    assert vault.root_token not in text
    assert "Root Token: <redacted>" in text and "Unseal Key: <redacted>" in text
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    assert vault.root_token not in repr(vault)


def test_temporary_log_is_removed_and_process_group_gone() -> None:
    vault = DevVault().start()
    pid, log = vault.pid, vault.log_path
    assert pid is not None and log is not None and log.exists()
    assert os.getpgid(pid) == pid  # own process group: a terminal Ctrl-C does not reach it
    vault.stop()
    assert not _alive(pid) and not log.exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_port_in_use_fails_precisely() -> None:
    with DevVault() as first:
        second = DevVault(port=first.port)
        with pytest.raises(InsituError) as err:
            second.start()
        assert err.value.code is ErrorCode.VAULT_UNAVAILABLE
        assert "exited" in err.value.detail and second.root_token not in err.value.detail
        assert second.pid is None


@pytest.mark.parametrize("port", [0, 70000])
def test_bad_port(port: int) -> None:
    with pytest.raises(InsituError):
        DevVault(port=port)


def _dead_or_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_server_dies_with_a_killed_parent(tmp_path: Path) -> None:
    """A test run killed outright (SIGKILL, no atexit) must not leave a server behind."""
    script = (
        "import sys, time\n"
        "from insitu.keys import DevVault\n"
        "v = DevVault().start()\n"
        "print(v.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert _alive(pid) and not _dead_or_zombie(pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 20
    while not _dead_or_zombie(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dead_or_zombie(pid), "bao outlived its SIGKILLed parent"
