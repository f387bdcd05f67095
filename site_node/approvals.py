"""Which job code this site runs: the approvals a site_admin gave locally with
``insitu-site approve``. Nothing else runs here.

Each approval is one JSON line in ``<site-dir>/approvals/approvals.jsonl`` (directory 0700,
file 0600, owned by the daemon's user): the code hash, who approved it and when, and what
was shown to them (components, declared metric keys, requested resources). Job code never
sees this directory: the sandbox mounts nothing of the site directory.

Example::

    approvals = ApprovedCode(site_dir)
    approvals.approve(code_hash, note="reviewed", approver="alice", summary=app_summary(layout))
    approvals.is_approved(code_hash)
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from insitu.errors import ErrorCode, InsituError
from insitu.flower.bundle import AppLayout

__all__ = ["APPROVALS_DIR", "Approval", "ApprovedCode", "app_summary"]

APPROVALS_DIR = "approvals"
APPROVALS_FILE = "approvals.jsonl"
_HASH = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Approval:
    code_sha256: str
    approver: str
    approved_at: str
    note: str = ""
    summary: Mapping[str, Any] = field(default_factory=dict)


def app_summary(layout: AppLayout) -> dict[str, Any]:
    """What a site_admin approves besides the hash: the app's identity, components,
    declared metric keys and records, and requested resources."""
    decl = layout.declaration
    return {
        "app": f"{layout.publisher}/{layout.name} {layout.version}",
        "components": {
            "serverapp": layout.serverapp,
            "clientapp": layout.clientapp,
            **({"onnx-export": layout.onnx_export} if layout.onnx_export else {}),
        },
        "metric_keys": sorted(decl.metric_keys),
        "metric_records": sorted(decl.metric_records),
        "resources": {**dict(decl.resources.asked), "gpu": decl.resources.gpu},
    }


class ApprovedCode:
    def __init__(self, site_dir: Path) -> None:
        self.directory = Path(site_dir) / APPROVALS_DIR
        self.path = self.directory / APPROVALS_FILE
        self._lock = threading.Lock()

    def approvals(self) -> list[Approval]:
        """Every approval, oldest first; a malformed line is an error, never skipped."""
        if not self.path.exists():
            return []
        out = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                approval = Approval(
                    code_sha256=raw["code_sha256"], approver=raw["approver"],
                    approved_at=raw["approved_at"], note=raw.get("note", ""),
                    summary=raw.get("summary", {}),
                )
            except (ValueError, KeyError, TypeError):
                raise InsituError(
                    ErrorCode.CONFIG, f"{self.path}: line {n} is not a valid approval"
                ) from None
            if not _HASH.fullmatch(str(approval.code_sha256)):
                raise InsituError(ErrorCode.CONFIG, f"{self.path}: line {n}: bad code hash")
            out.append(approval)
        return out

    def hashes(self) -> set[str]:
        return {a.code_sha256 for a in self.approvals()}

    def is_approved(self, code_sha256: str) -> bool:
        return code_sha256 in self.hashes()

    def approve(
        self,
        code_sha256: str,
        note: str = "",
        *,
        approver: str = "",
        summary: Mapping[str, Any] | None = None,
    ) -> Approval:
        """Record an approval (idempotent: an approved hash keeps its first record)."""
        if not _HASH.fullmatch(code_sha256):
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "code hash must be 64 lowercase hex")
        if "\n" in note or len(note) > 500:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "note must be one line (<= 500 chars)")
        approver = approver or _os_user()
        with self._lock:
            for existing in self.approvals():
                if existing.code_sha256 == code_sha256:
                    return existing
            approval = Approval(code_sha256, approver, datetime.now(UTC).isoformat(), note,
                                dict(summary or {}))
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(json.dumps({
                    "code_sha256": approval.code_sha256, "approver": approval.approver,
                    "approved_at": approval.approved_at, "note": approval.note,
                    "summary": approval.summary,
                }, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            return approval


def _os_user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid:{os.getuid()}"
