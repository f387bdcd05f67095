"""Witnessing at a site: cosign a coordinator checkpoint only if it is signed by the key
pinned at enrolment and consistent with the last one this site cosigned; send this site's
own signed checkpoints to the coordinator. A coordinator that rewrites history gets no
cosignature, and the site keeps the offending note as evidence."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from insitu._proto.v1 import session_pb2
from insitu.audit import AuditLog
from insitu.audit.signing import LocalSigner
from insitu.audit.witness import witness_checkpoint
from insitu.errors import InsituError

__all__ = ["COORDINATOR_AUDIT_KEY_NAME", "SiteWitness"]

log = logging.getLogger(__name__)
COORDINATOR_AUDIT_KEY_NAME = "insitu-audit"
Send = Callable[[session_pb2.SiteMessage], None]
Audit = Callable[[str, dict[str, Any]], None]


class SiteWitness:
    def __init__(
        self,
        site_dir: Path,
        site_id: str,
        coordinator_key: bytes,
        signer: LocalSigner,
        audit_log: AuditLog,
        send: Send,
        audit: Audit,
        interval_s: float = 5.0,
    ) -> None:
        self.dir = site_dir / "witness"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.site_id = site_id
        self.coordinator_key = coordinator_key
        self.signer = signer
        self.audit_log = audit_log
        self.send = send
        self.audit = audit
        self.interval_s = interval_s
        self._sent_size = -1
        self._lock = threading.Lock()
        self._stop = threading.Event()

    @property
    def last_note(self) -> str | None:
        p = self.dir / "coordinator.note"
        return p.read_text() if p.exists() else None

    @property
    def witnessed_size(self) -> int:
        note = self.last_note
        return int(note.splitlines()[1]) if note else 0

    def on_offer(self, offer: session_pb2.CheckpointOffer) -> bool:
        """Cosign and keep ``offer`` if it extends what we saw; True if cosigned."""
        with self._lock:
            last = self.last_note
            if last is not None and int(offer.from_size) != self.witnessed_size:
                # The proof is from another size than we hold: ask again next round.
                return False
            try:
                cosigned = witness_checkpoint(
                    offer.note,
                    log_key_name=COORDINATOR_AUDIT_KEY_NAME,
                    log_public_key=self.coordinator_key,
                    last_seen=last,
                    proof=list(offer.proof),
                    witness_name=f"site/{self.site_id}",
                    signer=self.signer.sign,
                    witness_public_key=self.signer.public_key,
                )
            except InsituError as e:
                evidence = self.dir / "refused"
                evidence.mkdir(exist_ok=True)
                (evidence / f"{len(list(evidence.iterdir())):06d}.note").write_text(offer.note)
                self.audit("audit.witness", {"outcome": "refused", "reason": e.detail[:200]})
                log.error("refused to cosign a coordinator checkpoint: %s", e.detail)
                return False
            tmp = self.dir / "coordinator.note.tmp"
            tmp.write_text(cosigned)
            tmp.replace(self.dir / "coordinator.note")
        size = int(offer.note.splitlines()[1])
        self.send(
            session_pb2.SiteMessage(
                witness=session_pb2.WitnessNote(kind="cosignature", note=cosigned, size=size)
            )
        )
        return True

    def send_own_checkpoint(self) -> None:
        cp = self.audit_log.latest_checkpoint()
        if cp is None or cp.size <= self._sent_size:
            return
        try:
            self.send(
                session_pb2.SiteMessage(
                    witness=session_pb2.WitnessNote(
                        kind="site_checkpoint", note=cp.note, size=cp.size
                    )
                )
            )
            self._sent_size = cp.size
        except InsituError:
            pass  # not connected: the next round sends it

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.send_own_checkpoint()

    def stop(self) -> None:
        self._stop.set()
