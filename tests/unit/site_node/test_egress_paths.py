"""Every way out of the site daemon is known: a static scan finds each gRPC channel and
network client use in site_node/. A new one fails this test until it is routed through
the egress guard (site_node/session.py) and listed here on purpose."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3] / "site_node"
CHANNEL_CALLS = {"secure_channel", "insecure_channel", "intercept_channel"}
NETWORK_MODULES = {
    "socket",
    "requests",
    "httpx",
    "urllib",
    "urllib3",
    "http",
    "aiohttp",
    "hvac",
    "smtplib",
    "ftplib",
}
# file -> why it may open a channel
ALLOWED = {
    "session.py": "the session stream to the coordinator; every message passes EgressGuard",
    "enrol.py": "one-time enrolment: sends only the site id, join token and a CSR",
}


def _uses(path: Path) -> tuple[list[str], list[str]]:
    tree = ast.parse(path.read_text())
    calls, imports = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in CHANNEL_CALLS:
                calls.append(f"{path.name}:{node.lineno} {name}")
        elif isinstance(node, ast.Import):
            imports += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            imports.append(node.module.split(".")[0])
    return calls, [m for m in imports if m in NETWORK_MODULES]


def test_only_known_files_open_channels_or_network_clients() -> None:
    found: dict[str, list[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        calls, nets = _uses(path)
        rel = str(path.relative_to(ROOT))
        if calls or nets:
            found[rel] = calls + nets
    assert set(found) == set(ALLOWED), found


def test_the_session_stream_sends_only_through_the_guard() -> None:
    src = (ROOT / "session.py").read_text()
    # outbound queue writes happen only with guard.admit(...) around the message
    puts = [line.strip() for line in src.splitlines() if "self._out.put(" in line]
    assert puts and all("guard.admit" in p or "put(None)" in p for p in puts), puts
