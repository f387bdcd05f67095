"""Witnessing at the coordinator: offer each connected site the latest coordinator
checkpoint with a consistency proof from what that site last cosigned; keep the sites'
cosignatures and the sites' own signed checkpoints (verified with their pinned keys).
Neither side can then rewrite history unnoticed: the other holds signed evidence."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from coordinator.sessions import Session, SessionRegistry
from coordinator.store import CoordinatorStore
from insitu._proto.v1 import session_pb2
from insitu.audit import AuditLog
from insitu.audit.checkpoint import verify_checkpoint, verify_cosignature
from insitu.errors import InsituError

__all__ = ["SITE_AUDIT_KEY_NAME", "CoordinatorWitness"]

log = logging.getLogger(__name__)
SITE_AUDIT_KEY_NAME = "insitu-site-audit"
Audit = Callable[[str, dict[str, Any]], None]


class CoordinatorWitness:
    def __init__(
        self,
        audit_log: AuditLog,
        sessions: SessionRegistry,
        store: CoordinatorStore,
        trust_domain: str,
        audit: Audit,
        interval_s: float = 5.0,
    ) -> None:
        self.log = audit_log
        self.sessions = sessions
        self.store = store
        self.trust_domain = trust_domain
        self.audit = audit
        self.interval_s = interval_s
        self._offered: dict[str, int] = {}  # session id -> size offered
        self._cosigned: dict[str, int] = {}  # site -> size it cosigned
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="witness", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def on_hello(self, site_id: str, witnessed_size: int) -> None:
        self._cosigned[site_id] = witnessed_size

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.offer_all()
            except Exception:  # keep witnessing alive; the next round retries
                log.exception("witness round failed")

    def offer_all(self) -> None:
        cp = self.log.latest_checkpoint()
        if cp is None:
            return
        for s in self.sessions.all():
            if s.closed.is_set() or self._offered.get(s.session_id, -1) >= cp.size:
                continue
            last = self._cosigned.get(s.site_id, 0)
            if last > cp.size:
                last = 0  # the site saw a bigger tree than we have: it will refuse, loudly
            proof = self.log.consistency_proof(last, cp.size) if 0 < last < cp.size else []
            s.outbound.put(
                session_pb2.CoordinatorMessage(
                    checkpoint_offer=session_pb2.CheckpointOffer(
                        note=cp.note, from_size=last, proof=proof
                    )
                )
            )
            self._offered[s.session_id] = cp.size

    def on_note(self, session: Session, w: session_pb2.WitnessNote) -> None:
        site = session.site_id
        key = self.store.audit_key(site)
        if key is None:
            return
        try:
            if w.kind == "cosignature":
                verify_cosignature(w.note, f"site/{site}", key)
                self.store_note(f"cosigned-by/{site}", w.size, w.note)
                self._cosigned[site] = int(w.size)
            elif w.kind == "site_checkpoint":
                cp = verify_checkpoint(
                    w.note, SITE_AUDIT_KEY_NAME, key, origin=f"{self.trust_domain}/site/{site}"
                )
                self.store_note(f"site/{site}", cp.size, w.note)
        except InsituError as e:
            self.audit(
                "audit.witness",
                {"site": site, "kind": w.kind, "outcome": "refused", "reason": e.detail[:200]},
            )

    def store_note(self, origin: str, size: int, note: str) -> None:
        self.log.store.add_witnessed(origin, size, note)
