"""The coordinator's registry state in SQLite: join tokens (hashed), sites, the
certificates issued to them, and role bindings.

Every mutation is one transaction; readers never see half an enrolment.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from insitu.errors import ErrorCode, InsituError

__all__ = [
    "BindingRow",
    "CoordinatorStore",
    "IssuedCertRow",
    "JoinToken",
    "SiteRow",
    "hash_token",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS join_tokens (
  token_id TEXT PRIMARY KEY,
  token_hash TEXT NOT NULL UNIQUE,
  site_id TEXT NOT NULL,
  created_by TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  used_at INTEGER
);
CREATE TABLE IF NOT EXISTS sites (
  site_id TEXT PRIMARY KEY,
  spiffe_id TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('enrolled', 'revoked')),
  enrolled_at INTEGER NOT NULL,
  revoked_at INTEGER,
  revoke_reason TEXT
);
CREATE TABLE IF NOT EXISTS site_certs (
  serial_hex TEXT PRIMARY KEY,
  site_id TEXT NOT NULL REFERENCES sites(site_id),
  issued_at INTEGER NOT NULL,
  not_after INTEGER NOT NULL,
  revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS site_certs_site ON site_certs(site_id);
CREATE TABLE IF NOT EXISTS site_keys (
  site_id TEXT PRIMARY KEY,
  attestation_key BLOB NOT NULL,
  pinned_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS site_audit_keys (
  site_id TEXT PRIMARY KEY,
  audit_key BLOB NOT NULL,
  pinned_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS model_grants (
  model TEXT NOT NULL,
  principal TEXT NOT NULL,
  PRIMARY KEY (model, principal)
);
CREATE TABLE IF NOT EXISTS role_bindings (
  principal TEXT NOT NULL,
  role TEXT NOT NULL,
  site TEXT NOT NULL DEFAULT '',
  org TEXT NOT NULL DEFAULT '',
  not_before INTEGER,
  not_after INTEGER,
  granted_by TEXT NOT NULL,
  granted_at INTEGER NOT NULL,
  PRIMARY KEY (principal, role, site, org)
);
"""


def hash_token(token: str) -> str:
    """Tokens carry 256 bits of entropy, so a plain SHA-256 is a safe at-rest form."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class JoinToken:
    token_id: str
    site_id: str
    created_by: str
    created_at: int
    expires_at: int
    used_at: int | None


@dataclass(frozen=True)
class SiteRow:
    site_id: str
    spiffe_id: str
    status: str
    enrolled_at: int
    revoked_at: int | None
    revoke_reason: str | None


@dataclass(frozen=True)
class BindingRow:
    principal: str
    role: str
    site: str
    org: str
    not_before: int | None
    not_after: int | None
    granted_by: str = ""


@dataclass(frozen=True)
class IssuedCertRow:
    serial_hex: str
    site_id: str
    issued_at: int
    not_after: int
    revoked: bool


class CoordinatorStore:
    """Thread-safe SQLite state of one coordinator."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- join tokens ---------------------------------------------------------------

    def add_token(
        self, token: str, token_id: str, site_id: str, created_by: str, expires_at: int, *, now: int
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO join_tokens VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (token_id, hash_token(token), site_id, created_by, now, expires_at),
            )

    def find_token(self, token: str) -> JoinToken | None:
        with self._lock:
            row = self._db.execute(
                "SELECT token_id, site_id, created_by, created_at, expires_at, used_at"
                " FROM join_tokens WHERE token_hash = ?",
                (hash_token(token),),
            ).fetchone()
        return JoinToken(*row) if row else None

    def check_token(self, token: str, site_id: str, *, now: int) -> JoinToken:
        """The token if it may enrol ``site_id`` now; a precise error otherwise."""
        t = self.find_token(token)
        if t is None:
            raise InsituError(ErrorCode.TOKEN_UNKNOWN, "no such join token")
        if t.site_id != site_id:
            raise InsituError(
                ErrorCode.TOKEN_SITE_MISMATCH, f"token {t.token_id} is for another site"
            )
        if t.used_at is not None:
            raise InsituError(ErrorCode.TOKEN_USED, f"token {t.token_id} was used")
        if now >= t.expires_at:
            raise InsituError(ErrorCode.TOKEN_EXPIRED, f"token {t.token_id} expired")
        return t

    def complete_enrolment(
        self, token: str, site_id: str, spiffe_id: str, serial_hex: str, not_after: int, *, now: int
    ) -> None:
        """Consume the token and record the site and its certificate, atomically.

        Raises TOKEN_USED if another enrolment consumed the token first.
        """
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE join_tokens SET used_at = ? WHERE token_hash = ? AND site_id = ?"
                " AND used_at IS NULL AND expires_at > ?",
                (now, hash_token(token), site_id, now),
            )
            if cur.rowcount != 1:
                raise InsituError(ErrorCode.TOKEN_USED, "token was consumed concurrently")
            db.execute(
                "INSERT INTO sites (site_id, spiffe_id, status, enrolled_at)"
                " VALUES (?, ?, 'enrolled', ?) ON CONFLICT(site_id) DO UPDATE SET"
                " status='enrolled', spiffe_id=excluded.spiffe_id,"
                " enrolled_at=excluded.enrolled_at, revoked_at=NULL, revoke_reason=NULL",
                (site_id, spiffe_id, now),
            )
            db.execute(
                "INSERT INTO site_certs (serial_hex, site_id, issued_at, not_after)"
                " VALUES (?, ?, ?, ?)",
                (serial_hex, site_id, now, not_after),
            )

    def count_unused_tokens(self) -> int:
        with self._lock:
            (n,) = self._db.execute(
                "SELECT COUNT(*) FROM join_tokens WHERE used_at IS NULL"
            ).fetchone()
        return int(n)

    # -- sites ---------------------------------------------------------------------

    def record_cert(self, site_id: str, serial_hex: str, not_after: int, *, now: int) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO site_certs (serial_hex, site_id, issued_at, not_after)"
                " VALUES (?, ?, ?, ?)",
                (serial_hex, site_id, now, not_after),
            )

    def get_site(self, site_id: str) -> SiteRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT site_id, spiffe_id, status, enrolled_at, revoked_at, revoke_reason"
                " FROM sites WHERE site_id = ?",
                (site_id,),
            ).fetchone()
        return SiteRow(*row) if row else None

    def list_sites(self) -> list[SiteRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT site_id, spiffe_id, status, enrolled_at, revoked_at, revoke_reason"
                " FROM sites ORDER BY site_id"
            ).fetchall()
        return [SiteRow(*r) for r in rows]

    def site_certs(self, site_id: str) -> list[IssuedCertRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT serial_hex, site_id, issued_at, not_after, revoked FROM site_certs"
                " WHERE site_id = ? ORDER BY issued_at",
                (site_id,),
            ).fetchall()
        return [IssuedCertRow(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    def mark_revoked(self, site_id: str, reason: str, serials: list[str], *, now: int) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE sites SET status='revoked', revoked_at=?, revoke_reason=? WHERE site_id=?",
                (now, reason, site_id),
            )
            db.executemany(
                "UPDATE site_certs SET revoked=1 WHERE serial_hex=?", [(s,) for s in serials]
            )

    # -- role bindings ---------------------------------------------------------------

    def grant(self, b: BindingRow, *, now: int) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO role_bindings VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(principal, role, site, org) DO UPDATE SET"
                " not_before=excluded.not_before, not_after=excluded.not_after,"
                " granted_by=excluded.granted_by, granted_at=excluded.granted_at",
                (b.principal, b.role, b.site, b.org, b.not_before, b.not_after, b.granted_by, now),
            )

    def revoke_binding(self, principal: str, role: str, site: str, org: str) -> bool:
        with self.transaction() as db:
            cur = db.execute(
                "DELETE FROM role_bindings WHERE principal=? AND role=? AND site=? AND org=?",
                (principal, role, site, org),
            )
            return cur.rowcount == 1

    def pin_attestation_key(self, site_id: str, key: bytes, *, now: int) -> bool:
        """Pin the site's first attestation key; True if ``key`` is (now) the pinned one."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO site_keys VALUES (?, ?, ?)", (site_id, key, now))
            (pinned,) = db.execute(
                "SELECT attestation_key FROM site_keys WHERE site_id = ?", (site_id,)
            ).fetchone()
        return bytes(pinned) == key

    def pin_audit_key(self, site_id: str, key: bytes, *, now: int) -> bool:
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO site_audit_keys VALUES (?, ?, ?)", (site_id, key, now)
            )
            (pinned,) = db.execute(
                "SELECT audit_key FROM site_audit_keys WHERE site_id = ?", (site_id,)
            ).fetchone()
        return bytes(pinned) == key

    def audit_key(self, site_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT audit_key FROM site_audit_keys WHERE site_id = ?", (site_id,)
            ).fetchone()
        return bytes(row[0]) if row else None

    def attestation_key(self, site_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT attestation_key FROM site_keys WHERE site_id = ?", (site_id,)
            ).fetchone()
        return bytes(row[0]) if row else None

    def grant_model(self, model: str, principal: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO model_grants VALUES (?, ?)", (model, principal))

    def model_grants(self) -> list[tuple[str, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT model, principal FROM model_grants ORDER BY model, principal"
            ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def bindings_of(self, principal: str | None) -> list[BindingRow]:
        q = (
            "SELECT principal, role, site, org, not_before, not_after, granted_by"
            " FROM role_bindings"
        )
        args: tuple[str, ...] = ()
        if principal is not None:
            q += " WHERE principal = ?"
            args = (principal,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY principal, role, site, org", args).fetchall()
        return [BindingRow(*r) for r in rows]


def now_s() -> int:
    return int(time.time())
