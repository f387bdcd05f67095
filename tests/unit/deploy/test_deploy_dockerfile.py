"""deploy/Dockerfile: the base image, a non-root numeric user, and COPY sources that exist
and are let through by the build's .dockerignore (no Docker engine here to build it)."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "deploy" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_base_image_is_python_311_slim() -> None:
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()
    froms = [rest for op, rest in _instructions() if op == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]


def test_runs_as_a_non_root_numeric_user() -> None:
    users = [rest for op, rest in _instructions() if op == "USER"]
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0


def test_no_secret_enters_the_image() -> None:
    for op, rest in _instructions():
        assert op != "ADD", "ADD fetches and unpacks: use COPY"
        if op in ("ENV", "ARG"):
            assert not re.search(r"TOKEN|SECRET|PASSWORD", rest, re.IGNORECASE), rest


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!")
        hit = fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat.removesuffix("/**"))
        hit = hit or (pat.endswith("/**") and path.startswith(pat[:-2]))
        if hit:
            ignored = not neg
    return ignored


def test_copy_sources_exist_and_reach_the_build() -> None:
    patterns = [
        ln.strip()
        for ln in (REPO / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    checked = 0
    for op, rest in _instructions():
        if op != "COPY" or "--from=" in rest:
            continue
        *sources, _dest = [w for w in rest.split() if not w.startswith("--")]
        for src in sources:
            matches = list(REPO.glob(src))
            assert matches, f"COPY source {src} does not exist"
            for m in matches:
                rel = m.relative_to(REPO).as_posix()
                assert not _ignored(rel, patterns), f"{rel} is excluded by the .dockerignore"
                checked += 1
    assert checked >= 8


def test_the_runtime_image_installs_bubblewrap() -> None:
    """The site (ClientApps) and the coordinator (ServerApps) run job code under bwrap,
    and run no job without it."""
    ops = _instructions()
    final = max(i for i, (op, _) in enumerate(ops) if op == "FROM")
    installs = [rest for op, rest in ops[final:] if op == "RUN" and "apt-get install" in rest]
    assert any(re.search(r"\bbubblewrap\b", rest) for rest in installs), installs
    # Installed before the image drops to the unprivileged user (apt needs root).
    user_at = max(i for i, (op, _) in enumerate(ops) if op == "USER")
    assert all(
        i < user_at for i, (op, rest) in enumerate(ops) if op == "RUN" and "bubblewrap" in rest
    )
