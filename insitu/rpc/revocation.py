"""Revocation status kept fresh from Vault's CRL.

Python's gRPC TLS credentials take no CRL, so authn asks this list on every call. If the
CRL could not be refreshed for longer than ``max_stale_s``, every check fails closed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from insitu.errors import ErrorCode, InsituError

__all__ = ["RevocationList"]

log = logging.getLogger(__name__)


class RevocationList:
    """Revoked certificate serials, refreshed in the background from ``fetch``."""

    def __init__(
        self,
        fetch: Callable[[], frozenset[int]],
        *,
        refresh_s: float = 15.0,
        max_stale_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if refresh_s <= 0 or max_stale_s < refresh_s:
            raise InsituError(ErrorCode.CONFIG, "need 0 < refresh_s <= max_stale_s")
        self._fetch = fetch
        self._refresh_s = refresh_s
        self._max_stale_s = max_stale_s
        self._clock = clock
        self._lock = threading.Lock()
        self._serials: frozenset[int] = frozenset()
        self._local: set[int] = set()
        self._fresh_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[int], None]] = []

    def refresh(self) -> None:
        """Fetch the CRL now; on failure keep the old list (staleness decides)."""
        serials = self._fetch()
        with self._lock:
            self._serials = serials
            self._fresh_at = self._clock()

    def start(self, *, initial: bool = True) -> None:
        """Fetch once (raising if that fails; skipped with ``initial=False``, leaving the
        status unknown, i.e. failing closed, until a refresh succeeds) and keep refreshing
        in the background."""
        if initial:
            self.refresh()
        self._thread = threading.Thread(target=self._loop, name="crl-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._refresh_s):
            try:
                self.refresh()
            except Exception as e:  # keep serving from the old list until it is stale
                log.warning("CRL refresh failed: %s", type(e).__name__)

    def add(self, serial: int) -> None:
        """Record a revocation done here, effective at once (before the next CRL)."""
        with self._lock:
            self._local.add(serial)
            listeners = list(self._listeners)
        for cb in listeners:
            cb(serial)

    def on_revoke(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(serial)`` whenever a serial is revoked through :meth:`add`."""
        with self._lock:
            self._listeners.append(callback)

    def snapshot(self) -> frozenset[int]:
        """Every serial known to be revoked (CRL plus local revocations)."""
        with self._lock:
            return self._serials | frozenset(self._local)

    def is_revoked(self, serial: int) -> bool:
        """True if revoked. Raises UNAVAILABLE if revocation status is unknown (stale)."""
        with self._lock:
            fresh_at = self._fresh_at
            if fresh_at is None or self._clock() - fresh_at > self._max_stale_s:
                raise InsituError(ErrorCode.UNAVAILABLE, "revocation status is unknown")
            return serial in self._serials or serial in self._local
