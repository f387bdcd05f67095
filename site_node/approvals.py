"""Which job code this site runs: an allow-list of app code hashes that a site_admin
approved locally (``insitu-site approve``). Nothing else runs here."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from insitu.errors import ErrorCode, InsituError

__all__ = ["ApprovedCode"]

APPROVALS_FILE = "approved-code.txt"
_HASH = re.compile(r"^[0-9a-f]{64}$")


class ApprovedCode:
    def __init__(self, site_dir: Path) -> None:
        self.path = site_dir / APPROVALS_FILE
        self._lock = threading.Lock()

    def hashes(self) -> set[str]:
        if not self.path.exists():
            return set()
        out = set()
        for line in self.path.read_text().splitlines():
            h = line.split("#", 1)[0].strip()
            if h:
                out.add(h)
        return out

    def is_approved(self, code_sha256: str) -> bool:
        return code_sha256 in self.hashes()

    def approve(self, code_sha256: str, note: str = "") -> None:
        if not _HASH.fullmatch(code_sha256):
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "code hash must be 64 lowercase hex")
        if "\n" in note:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "note must be one line")
        with self._lock:
            if code_sha256 in self.hashes():
                return
            with self.path.open("a") as f:
                f.write(f"{code_sha256}  # {note}\n" if note else f"{code_sha256}\n")
