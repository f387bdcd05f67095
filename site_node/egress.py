"""The egress guard: the one choke point every outbound message of the site daemon
passes. It admits only session control, answers to instructions this site actually
received (model updates, metrics), attested feature batches, and checkpoints; anything
else is refused and audited.

A model update must carry exactly the arrays of the global model it answers (same
names, shapes, dtypes) and only numeric records: free-form strings or bytes in a reply
would be a side channel for raw data, so ConfigRecords may hold only numbers and bools.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from flwr.common.serde import recorddict_from_proto
from flwr.proto.message_pb2 import Message as ProtoMessage

from insitu._proto.v1 import session_pb2
from insitu.attestation import SignedAttestation, verify_attestation
from insitu.errors import ErrorCode, InsituError

__all__ = ["EgressGuard", "EgressRefused"]

CONTROL = frozenset({"hello", "heartbeat", "job_decision", "deploy_result", "witness"})
MAX_CONFIG_ENTRIES = 64


class EgressRefused(InsituError):
    code = ErrorCode.PERMISSION_DENIED


class EgressGuard:
    """Thread-safe; ``on_refused(kind, reason)`` is the audit hook."""

    def __init__(
        self, on_refused: Callable[[str, str], None], *, max_reply_bytes: int = 512 * 1024 * 1024
    ) -> None:
        self._on_refused = on_refused
        self.max_reply_bytes = max_reply_bytes
        self._lock = threading.Lock()
        # (job id, message id) -> the instruction's array shapes, for replies we owe.
        self._owed: dict[tuple[str, str], dict[str, dict[str, tuple[tuple[int, ...], str]]]] = {}
        self._cleared: set[tuple[str, str]] = set()  # whole replies checked, chunks pending
        self._cleared_releases: set[str] = set()
        self.admitted = 0

    def expect_reply(self, job_id: str, message_id: str, instruction: ProtoMessage) -> None:
        """Record an instruction received; exactly one reply to it may leave."""
        shapes: dict[str, dict[str, tuple[tuple[int, ...], str]]] = {}
        if instruction.HasField("content"):
            rd = recorddict_from_proto(instruction.content)
            for key, rec in rd.array_records.items():
                shapes[key] = {n: (tuple(a.shape), a.dtype) for n, a in rec.items()}
        with self._lock:
            self._owed[(job_id, message_id)] = shapes

    def forget_job(self, job_id: str) -> None:
        with self._lock:
            for k in [k for k in self._owed if k[0] == job_id]:
                del self._owed[k]

    def _refuse(self, kind: str, reason: str) -> EgressRefused:
        self._on_refused(kind, reason)
        return EgressRefused(detail=f"egress refused ({kind}): {reason}")

    def check_reply(self, job_id: str, message_id: str, reply: ProtoMessage, size: int) -> None:
        """Admit a whole reply before it is chunked; consumes the owed slot."""
        with self._lock:
            shapes = self._owed.pop((job_id, message_id), None)
        if shapes is None:
            raise self._refuse("task_reply", "no instruction is awaiting this reply")
        if size > self.max_reply_bytes:
            raise self._refuse("task_reply", f"{size} bytes exceed the reply bound")
        if reply.HasField("error") or not reply.HasField("content"):
            self._clear(job_id, message_id)
            return
        rd = recorddict_from_proto(reply.content)
        for key, rec in rd.array_records.items():
            want = shapes.get(key)
            got = {n: (tuple(a.shape), a.dtype) for n, a in rec.items()}
            if want is None or got != want:
                raise self._refuse(
                    "task_reply", f"array record {key!r} does not match the global model it answers"
                )
        for key, cfg in rd.config_records.items():
            if len(cfg) > MAX_CONFIG_ENTRIES:
                raise self._refuse("task_reply", f"config record {key!r} is too large")
            for name, value in cfg.items():
                vals = value if isinstance(value, list) else [value]
                if any(isinstance(v, str | bytes) for v in vals):
                    raise self._refuse("task_reply", f"config {key}.{name} carries text or bytes")
        self._clear(job_id, message_id)

    def _clear(self, job_id: str, message_id: str) -> None:
        with self._lock:
            self._cleared.add((job_id, message_id))

    def check_feature_batch(
        self,
        release_id: str,
        signed: SignedAttestation,
        batch: bytes,
        site_key: bytes,
        current_policy_hash: str,
    ) -> None:
        """A feature batch leaves only with a valid attestation whose policy hash is the
        dataset's current policy (a stale or tampered attestation is refused)."""
        try:
            verify_attestation(
                signed, site_key, batch=batch, expected_policy_hash=current_policy_hash
            )
        except InsituError as e:
            raise self._refuse("feature_batch", e.detail) from None
        with self._lock:
            self._cleared_releases.add(release_id)

    def admit(self, msg: session_pb2.SiteMessage) -> session_pb2.SiteMessage:
        """Every outbound SiteMessage passes here; returns it or raises EgressRefused."""
        kind = msg.WhichOneof("body")
        if kind in CONTROL:
            self.admitted += 1
            return msg
        if kind == "task_reply":
            # Only chunks of a whole reply that check_reply cleared may leave.
            key = (msg.task_reply.job_id, msg.task_reply.message_id)
            with self._lock:
                if key not in self._cleared:
                    pass
                elif msg.task_reply.last:
                    self._cleared.discard(key)
                    self.admitted += 1
                    return msg
                else:
                    self.admitted += 1
                    return msg
            raise self._refuse("task_reply", "chunk of a reply that was not cleared")
        if kind == "feature_batch":
            rid = msg.feature_batch.release_id
            with self._lock:
                if rid in self._cleared_releases:
                    if msg.feature_batch.last:
                        self._cleared_releases.discard(rid)
                    self.admitted += 1
                    return msg
            raise self._refuse("feature_batch", "batch without a verified attestation")
        raise self._refuse(kind or "empty", "message kind is not allowed to leave the site")
