"""`make demo` end to end, as real processes; and its clean shutdown on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _ps() -> dict[int, str]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    procs = {}
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        procs[int(pid)] = args
    return procs


def _leftovers(before: dict[int, str], workspace: Path, output: str) -> list[str]:
    """Processes the demo started that are still alive: its workspace in their command
    line (coordinator, sites) or its OpenBao server (found by the address it printed;
    other tests may run their own OpenBao meanwhile)."""
    m = re.search(r"OpenBao at http://(127\.0\.0\.1:\d+)", output)
    bao = m.group(1) if m else "\0"
    return [
        args
        for pid, args in _ps().items()
        if pid not in before and (str(workspace) in args or bao in args)
    ]


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    before = _ps()
    r = subprocess.run(
        [str(BIN / "insitu"), "demo", "--workspace", str(ws)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "demo complete" in r.stdout
    assert "within 3" in r.stdout  # federated vs central accuracy
    assert r.stdout.count(" OK ") >= 4  # coordinator + 3 site logs verify offline
    for site in ("hospital-a", "hospital-b", "hospital-c"):
        assert site in r.stdout
    assert _leftovers(before, ws, r.stdout) == []


@pytest.mark.slow
def test_demo_cleans_up_on_ctrl_c(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    before = _ps()
    p = subprocess.Popen(
        [str(BIN / "insitu"), "demo", "--workspace", str(ws)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (ws / "sites").exists():
        time.sleep(0.2)
    assert (ws / "sites").exists(), "demo never reached site enrolment"
    os.kill(p.pid, signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode != 0
    assert "all processes stopped" in out
    time.sleep(0.5)
    assert _leftovers(before, ws, out) == []
