"""Live site sessions: one bidirectional stream per connected site.

The registry ends a session when its site is revoked, when its certificate serial is
revoked or expires, when heartbeats stop, or when a newer stream of the same site
replaces it (make-before-break renewal). Work for a site is queued on its session.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from insitu._proto.v1 import session_pb2

__all__ = ["Session", "SessionRegistry"]


@dataclass
class Session:
    site_id: str
    cert_serial: int
    cert_not_after: datetime
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    opened_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    outbound: queue.Queue[session_pb2.CoordinatorMessage] = field(default_factory=queue.Queue)
    closed: threading.Event = field(default_factory=threading.Event)
    close_reason: str = ""
    close_code: str = ""  # an ErrorCode value when the close is a refusal
    # The jobs the site said (in its Hello) it holds a worker or reservation for.
    site_jobs: frozenset[str] = frozenset()

    def touch(self) -> None:
        self.last_seen = time.time()

    def close(self, reason: str, code: str = "") -> None:
        if not self.closed.is_set():
            self.close_reason = reason
            self.close_code = code
            self.closed.set()


class SessionRegistry:
    """Thread-safe map of site id → live session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_site: dict[str, Session] = {}
        self._listeners: list[Callable[[str, Session], None]] = []

    def on_change(self, cb: Callable[[str, Session], None]) -> None:
        """``cb(event, session)`` with event "open" or "close"."""
        self._listeners.append(cb)

    def _emit(self, event: str, s: Session) -> None:
        for cb in self._listeners:
            cb(event, s)

    def open(
        self, site_id: str, cert_serial: int, cert_not_after: datetime,
        site_jobs: frozenset[str] = frozenset(),
    ) -> Session:
        s = Session(site_id, cert_serial, cert_not_after, site_jobs=site_jobs)
        with self._lock:
            old = self._by_site.get(site_id)
            self._by_site[site_id] = s
        if old is not None:
            old.close("replaced by a newer session")
        self._emit("open", s)
        return s

    def remove(self, s: Session) -> None:
        with self._lock:
            if self._by_site.get(s.site_id) is s:
                del self._by_site[s.site_id]
        self._emit("close", s)

    def get(self, site_id: str) -> Session | None:
        with self._lock:
            return self._by_site.get(site_id)

    def all(self) -> list[Session]:
        with self._lock:
            return list(self._by_site.values())

    def terminate_site(self, site_id: str, reason: str, code: str) -> None:
        s = self.get(site_id)
        if s is not None:
            s.close(reason, code)

    def terminate_serial(self, serial: int, reason: str, code: str) -> None:
        for s in self.all():
            if s.cert_serial == serial:
                s.close(reason, code)
