"""Coordinator intake of de-identified feature releases.

A site sends an Arrow batch with an attestation signed by its own Ed25519 key (pinned
here the first time the site says hello). The coordinator checks, in order: the job
exists and names this site and dataset (Cedar ``features.release`` as the site); the
signature with the pinned key; the batch digest. Then it stores the batch envelope-
encrypted (AES-256-GCM, a per-release data key wrapped by Vault transit) and serves it
only to ``features.read`` callers, for the purposes the attestation names.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from coordinator.jobs import JobManager, JobRecord
from coordinator.sessions import Session
from coordinator.store import CoordinatorStore
from insitu._proto.v1 import session_pb2
from insitu.attestation import SignedAttestation, verify_attestation
from insitu.authz import EntityRef, Resource
from insitu.errors import ErrorCode, InsituError
from insitu.identity.spiffe import SpiffeId
from insitu.keys import KeyService

__all__ = ["FeatureIntake", "PseudonymKeys", "release_resource"]

WRAPPING_KEY = "data-wrapping"
PSEUDONYM_KV = "insitu/pseudonym-key"
MAX_BATCH_BYTES = 1 << 30
Audit = Callable[[str, dict[str, Any]], None]


class PseudonymKeys:
    """The federation pseudonym key: a transit data key, kept wrapped in KV and
    unwrapped into memory only to hand to connected sites over mTLS."""

    def __init__(self, keys: KeyService) -> None:
        self.keys = keys
        self._lock = threading.Lock()

    def current(self) -> tuple[str, bytes]:
        with self._lock:
            rec = self.keys.kv_get(PSEUDONYM_KV)
            if rec is None:
                dk = self.keys.generate_data_key("pseudonym")
                rec = {"wrapped": dk.wrapped, "key_id": uuid.uuid4().hex[:16]}
                self.keys.kv_put(PSEUDONYM_KV, rec)
            return rec["key_id"], self.keys.unwrap("pseudonym", rec["wrapped"])


def _dataset(site: str, dataset: str, purposes: list[str]) -> Resource:
    return Resource(
        "Dataset", f"{site}:{dataset}", {"site": EntityRef("Site", site), "purposes": set(purposes)}
    )


def release_resource(
    job: JobRecord,
    site: str,
    dataset: str,
    purposes: list[str],
    approved: bool,
    release_id: str = "new",
) -> Resource:
    """FeatureRelease with its Job; one Dataset entity per id (the job's view reuses it)."""
    ds = _dataset(site, dataset, purposes)
    approved_ds = [
        ds if (s, d) == (site, dataset) else _dataset(s, d, [job.purpose]) for s, d in job.targets
    ]
    job_res = Resource(
        "Job",
        job.job_id,
        {
            "owner": EntityRef("User", SpiffeId.parse(job.owner).name),
            "org": EntityRef("Org", job.org or "none"),
            "purpose": job.purpose,
            "approved_datasets": approved_ds,
            "sites": [EntityRef("Site", s) for s, _ in job.targets],
        },
    )
    return Resource(
        "FeatureRelease",
        release_id,
        {"dataset": ds, "site": EntityRef("Site", site), "job": job_res, "approved": approved},
    )


@dataclass
class _Partial:
    first: session_pb2.FeatureChunk
    parts: list[bytes] = field(default_factory=list)
    size: int = 0


class FeatureIntake:
    def __init__(
        self,
        root: Path,
        keys: KeyService,
        store: CoordinatorStore,
        jobs: JobManager,
        check: Callable[[str, str, Resource], bool],
        audit: Audit,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.keys = keys
        self.store = store
        self.jobs = jobs
        self.check = check  # (site principal uri, action, resource) -> allowed
        self.audit = audit
        self._partials: dict[tuple[str, str], _Partial] = {}
        self._lock = threading.Lock()

    # -- intake ----------------------------------------------------------------------

    def on_chunk(self, session: Session, c: session_pb2.FeatureChunk) -> None:
        key = (session.session_id, c.release_id)
        with self._lock:
            p = self._partials.get(key)
            if c.seq == 0:
                if c.total_bytes > MAX_BATCH_BYTES:
                    self._ack(session, c.release_id, "batch too large")
                    return
                p = self._partials[key] = _Partial(c)
            elif p is None or c.seq != len(p.parts):
                self._partials.pop(key, None)
                self._ack(session, c.release_id, "chunk out of order")
                return
            p.parts.append(c.content)
            p.size += len(c.content)
            if not c.last:
                return
            del self._partials[key]
        try:
            info = self._accept(session.site_id, p.first, b"".join(p.parts))
            self._ack(session, c.release_id, "")
            self.audit(
                "features.intake",
                {
                    "release_id": c.release_id,
                    "site": session.site_id,
                    "dataset": info["dataset"],
                    "job_id": info["job_id"],
                    "rows_out": str(info["rows_out"]),
                    "policy_hash": info["policy_hash"],
                },
            )
        except InsituError as e:
            self.audit(
                "features.refused",
                {"release_id": c.release_id, "site": session.site_id, "reason": e.detail[:200]},
            )
            self._ack(session, c.release_id, e.detail)

    def _ack(self, session: Session, release_id: str, error: str) -> None:
        session.outbound.put(
            session_pb2.CoordinatorMessage(
                feature_ack=session_pb2.FeatureAck(
                    release_id=release_id, ok=not error, error=error[:500]
                )
            )
        )

    def _accept(self, site: str, first: session_pb2.FeatureChunk, batch: bytes) -> dict[str, Any]:
        job = self.jobs.get(first.job_id)
        if (site, first.dataset) not in job.targets:
            raise InsituError(ErrorCode.PERMISSION_DENIED, "the job does not use this dataset")
        site_key = self.store.attestation_key(site)
        if site_key is None:
            raise InsituError(ErrorCode.FAILED_PRECONDITION, "no attestation key pinned for site")
        signed = SignedAttestation(first.attestation, first.signature, f"site/{site}")
        att = verify_attestation(signed, site_key, batch=batch)
        if att["dataset"] != first.dataset:
            raise InsituError(ErrorCode.INTEGRITY, "attestation names another dataset")
        purposes = [str(x) for x in att["purposes"]]
        site_uri = SpiffeId.site(self.jobs.trust_domain, site).uri
        if not self.check(
            site_uri, "features.release", release_resource(job, site, first.dataset, purposes, True)
        ):
            raise InsituError(ErrorCode.PERMISSION_DENIED, "policy refuses this release")
        self._store(
            first.release_id,
            site,
            first.dataset,
            job.job_id,
            purposes,
            att,
            first.attestation,
            first.signature,
            batch,
        )
        return {
            "dataset": first.dataset,
            "job_id": job.job_id,
            "rows_out": att["rows_out"],
            "policy_hash": att["policy_hash"],
        }

    def _store(
        self,
        release_id: str,
        site: str,
        dataset: str,
        job_id: str,
        purposes: list[str],
        att: dict[str, Any],
        payload: bytes,
        signature: bytes,
        batch: bytes,
    ) -> None:
        if not release_id.isalnum() or len(release_id) > 64:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "malformed release id")
        final = self.root / release_id
        if final.exists():
            raise InsituError(ErrorCode.ALREADY_EXISTS, "release already stored")
        dk = self.keys.generate_data_key(WRAPPING_KEY)
        nonce = secrets.token_bytes(12)
        ct = AESGCM(dk.plaintext).encrypt(nonce, batch, release_id.encode())
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".staging-"))
        try:
            (tmp / "meta.json").write_text(
                json.dumps(
                    {
                        "release_id": release_id,
                        "site_id": site,
                        "dataset": dataset,
                        "job_id": job_id,
                        "purposes": purposes,
                        "rows_out": int(att["rows_out"]),
                        "k_achieved": int(att["k_achieved"]),
                        "policy_hash": att["policy_hash"],
                        "created": int(time.time()),
                    }
                )
            )
            (tmp / "sealed.json").write_text(
                json.dumps(
                    {"wrapped_key": dk.wrapped, "nonce": nonce.hex(), "ciphertext": ct.hex()}
                )
            )
            (tmp / "attestation").write_bytes(payload)
            (tmp / "signature").write_bytes(signature)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # -- reads -----------------------------------------------------------------------

    def infos(self) -> list[dict[str, Any]]:
        return [json.loads(m.read_text()) for m in sorted(self.root.glob("*/meta.json"))]

    def resource_of(self, info: dict[str, Any]) -> Resource:
        return release_resource(
            self.jobs.get(info["job_id"]),
            info["site_id"],
            info["dataset"],
            info["purposes"],
            True,
            info["release_id"],
        )

    def read(self, release_id: str) -> tuple[dict[str, Any], bytes, bytes, bytes]:
        d = self.root / release_id
        if not release_id.isalnum() or not (d / "meta.json").exists():
            raise InsituError(ErrorCode.NOT_FOUND, f"release {release_id} not found")
        info = json.loads((d / "meta.json").read_text())
        sealed = json.loads((d / "sealed.json").read_text())
        key = self.keys.unwrap(WRAPPING_KEY, sealed["wrapped_key"])
        try:
            batch = AESGCM(key).decrypt(
                bytes.fromhex(sealed["nonce"]),
                bytes.fromhex(sealed["ciphertext"]),
                release_id.encode(),
            )
        except Exception:
            raise InsituError(
                ErrorCode.INTEGRITY, "release ciphertext fails authentication"
            ) from None
        payload, signature = (d / "attestation").read_bytes(), (d / "signature").read_bytes()
        site_key = self.store.attestation_key(info["site_id"]) or b""
        verify_attestation(SignedAttestation(payload, signature, "site"), site_key, batch=batch)
        return info, batch, payload, signature

    def rewrap_all(self) -> int:
        """After rotating the transit wrapping key: rewrap every release's data key."""
        n = 0
        for f in self.root.glob("*/sealed.json"):
            sealed = json.loads(f.read_text())
            sealed["wrapped_key"] = self.keys.rewrap(WRAPPING_KEY, sealed["wrapped_key"])
            tmp = f.with_suffix(".tmp")
            tmp.write_text(json.dumps(sealed))
            tmp.replace(f)
            n += 1
        return n
