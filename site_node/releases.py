"""Feature releases at a site: a data steward asks (Cedar ``features.approve`` on the
site API); the dataset's de-identification policy is applied, k-anonymity enforced,
Laplace ε charged to the dataset's ledger, the attestation signed with the site's key
and appended to the site's audit log; the batch then leaves only through the egress
guard, and the coordinator's acknowledgement is awaited."""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from insitu._proto.v1 import session_pb2, site_pb2
from insitu.attestation import SignedAttestation, sign_attestation
from insitu.audit.signing import LocalSigner, load_or_create_signer
from insitu.errors import ErrorCode, InsituError
from site_node.data.connectors import DatasetSpec, load_dataset
from site_node.deid.release import prepare_release
from site_node.egress import EgressGuard
from site_node.training.datasets import DatasetRegistry
from site_node.training.ledger import PrivacyLedger

__all__ = ["PseudonymHolder", "SiteReleases", "attestation_signer"]

CHUNK = 1 << 20
ACK_TIMEOUT_S = 60.0
ATTESTATION_KEY_FILE = "attestation-signing.key"
Send = Callable[[session_pb2.SiteMessage], None]
Audit = Callable[[str, dict[str, Any]], None]


def attestation_signer(site_dir: Path) -> LocalSigner:
    """The site's release-attestation key (Ed25519), created on first use, mode 0600."""
    return load_or_create_signer(site_dir / ATTESTATION_KEY_FILE)


class PseudonymHolder:
    """The federation pseudonym key, in memory only (sent by the coordinator per session)."""

    def __init__(self) -> None:
        self._key: bytes | None = None
        self.key_id = ""
        self._lock = threading.Lock()

    def set(self, key_id: str, key: bytes) -> None:
        if len(key) != 32:
            return
        with self._lock:
            self.key_id, self._key = key_id, key

    def get(self) -> bytes:
        with self._lock:
            if self._key is None:
                raise InsituError(
                    ErrorCode.UNAVAILABLE, "no pseudonym key from the coordinator yet"
                )
            return self._key


@dataclass
class _Waiter:
    event: threading.Event
    error: str | None = None


class SiteReleases:
    def __init__(
        self,
        *,
        site_dir: Path,
        site_id: str,
        datasets: DatasetRegistry,
        ledger: PrivacyLedger,
        signer: LocalSigner,
        guard: EgressGuard,
        pseudonyms: PseudonymHolder,
        send: Send,
        audit: Audit,
        job_dataset: Callable[[str], str | None],
    ) -> None:
        self.site_dir = site_dir
        self.site_id = site_id
        self.datasets = datasets
        self.ledger = ledger
        self.signer = signer
        self.guard = guard
        self.pseudonyms = pseudonyms
        self.send = send
        self.audit = audit
        self.job_dataset = job_dataset
        self._waiters: dict[str, _Waiter] = {}
        self._lock = threading.Lock()

    def spec(self, dataset: str) -> DatasetSpec:
        ds = self.datasets.get_dataset(dataset)
        if ds.policy is None:
            raise InsituError(
                ErrorCode.FAILED_PRECONDITION, f"dataset {dataset} has no de-identification policy"
            )
        return DatasetSpec(ds.name, ds.path, ds.format, ds.policy)

    def release(self, dataset: str, job_id: str, approver: str) -> site_pb2.ReleaseFeaturesResponse:
        if self.job_dataset(job_id) != dataset:
            raise InsituError(
                ErrorCode.FAILED_PRECONDITION,
                f"job {job_id} was not approved here for dataset {dataset}",
            )
        loaded = load_dataset(self.spec(dataset))
        release_id = uuid.uuid4().hex
        rel = prepare_release(
            loaded.frame,
            loaded.policy,
            pseudonym_key=self.pseudonyms.get(),
            approver=approver,
            dataset_fingerprint=loaded.fingerprint,
            rng=np.random.default_rng(),
        )
        att = rel.attestation
        eps = float(att.get("epsilon_charged", 0.0))
        if eps > 0:  # Laplace noise spends the dataset's budget; refused if over it
            self.ledger.reserve(dataset, release_id, eps)
            self.ledger.charge(dataset, release_id, eps)
        signed = sign_attestation(att, self.signer.sign, f"site/{self.site_id}")
        self.audit(
            "features.release",
            {
                "release_id": release_id,
                "dataset": dataset,
                "job_id": job_id,
                "policy_hash": att["policy_hash"],
                "rows_in": att["rows_in"],
                "rows_out": att["rows_out"],
                "k_achieved": att["k_achieved"],
                "epsilon_charged": str(eps),
                "batch_sha256": att["batch_sha256"],
                "attestation_signature": base64.b64encode(signed.signature).decode(),
            },
        )
        self._ship(release_id, job_id, dataset, signed, rel.batch, loaded.policy.hash)
        return site_pb2.ReleaseFeaturesResponse(
            release_id=release_id,
            rows_in=int(att["rows_in"]),
            rows_out=int(att["rows_out"]),
            k_achieved=int(att["k_achieved"]),
            epsilon_charged=eps,
            policy_hash=str(att["policy_hash"]),
        )

    def _ship(
        self,
        release_id: str,
        job_id: str,
        dataset: str,
        signed: SignedAttestation,
        batch: bytes,
        policy_hash: str,
    ) -> None:
        self.guard.check_feature_batch(
            release_id, signed, batch, self.signer.public_key, policy_hash
        )
        waiter = _Waiter(threading.Event())
        with self._lock:
            self._waiters[release_id] = waiter
        try:
            view = memoryview(batch)
            n = max(1, -(-len(batch) // CHUNK))
            for i in range(n):
                self.send(
                    session_pb2.SiteMessage(
                        feature_batch=session_pb2.FeatureChunk(
                            release_id=release_id,
                            seq=i,
                            last=i == n - 1,
                            job_id=job_id,
                            dataset=dataset,
                            total_bytes=len(batch),
                            attestation=signed.payload if i == 0 else b"",
                            signature=signed.signature if i == 0 else b"",
                            content=bytes(view[i * CHUNK : (i + 1) * CHUNK]),
                        )
                    )
                )
            if not waiter.event.wait(ACK_TIMEOUT_S):
                raise InsituError(
                    ErrorCode.DEADLINE_EXCEEDED, "the coordinator did not acknowledge"
                )
        finally:
            with self._lock:
                self._waiters.pop(release_id, None)
        if waiter.error:
            raise InsituError(ErrorCode.FAILED_PRECONDITION, f"coordinator refused: {waiter.error}")

    def on_ack(self, ack: session_pb2.FeatureAck) -> None:
        with self._lock:
            w = self._waiters.get(ack.release_id)
        if w is not None:
            w.error = None if ack.ok else (ack.error or "refused")
            w.event.set()
