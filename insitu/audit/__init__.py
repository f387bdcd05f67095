"""The tamper-evident audit log: records, RFC 6962 Merkle tree, signed checkpoints, stores.

Services append :class:`AuditRecord` s to an :class:`AuditLog` (durable before ``append``
returns; fail closed on any error). Auditors verify exports offline with
:func:`verify_export` (or the ``insitu-audit`` CLI) against a trusted checkpoint.

Example::

    from insitu.audit import (Actor, AuditLog, AuditRecord, Origin, Outcome, Resource,
                              SqliteAuditStore)

    keys = KeyService.from_approle(...)
    log = AuditLog(SqliteAuditStore(data_dir / "audit.db"), origin="insitu/coordinator",
                   signer=lambda m: keys.sign("audit-signing", m),
                   key_name="insitu/coordinator",
                   public_key=keys.public_key("audit-signing"))
    seq = log.append(AuditRecord(
        event_type="rpc.request", actor=Actor("spiffe://demo.insitu/site/a", "mtls"),
        action="/insitu.v1.Coordinator/Heartbeat", resource=Resource("site", "a"),
        outcome=Outcome.SUCCESS, origin=Origin(node="coordinator", peer="ipv4:10.0.0.7:5123")))
    signed = log.checkpoint()          # SignedCheckpoint(checkpoint, note)
    log.close()
"""

from insitu.audit.checkpoint import (
    Checkpoint,
    Cosignature,
    Signer,
    add_cosignature,
    parse_public_key,
    sign_checkpoint,
    verify_checkpoint,
    verify_cosignature,
)
from insitu.audit.errors import (
    AuditError,
    AuditUnavailableError,
    CheckpointFormatError,
    InvalidProofError,
    RecordInvalidError,
    RetentionError,
    RootMismatchError,
    SequenceConflictError,
    SignatureError,
    VerificationError,
)
from insitu.audit.log import AuditLog, SignedCheckpoint
from insitu.audit.merkle import (
    hash_children,
    hash_leaf,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from insitu.audit.record import (
    Actor,
    AuditRecord,
    AuthzInfo,
    EventType,
    Origin,
    Outcome,
    Resource,
    format_time,
)
from insitu.audit.sensitive import SensitiveValueHasher
from insitu.audit.sqlite_store import SqliteAuditStore
from insitu.audit.store import AuditStore, StoredCheckpoint, StoredEntry, WitnessedNote
from insitu.audit.verify import VerifyResult, verify_export, verify_store
from insitu.audit.witness import check_extends, witness_checkpoint

__all__ = [
    "Actor",
    "AuditError",
    "AuditLog",
    "AuditRecord",
    "AuditStore",
    "AuditUnavailableError",
    "AuthzInfo",
    "Checkpoint",
    "CheckpointFormatError",
    "Cosignature",
    "EventType",
    "InvalidProofError",
    "Origin",
    "Outcome",
    "RecordInvalidError",
    "Resource",
    "RetentionError",
    "RootMismatchError",
    "SensitiveValueHasher",
    "SequenceConflictError",
    "SignatureError",
    "SignedCheckpoint",
    "Signer",
    "SqliteAuditStore",
    "StoredCheckpoint",
    "StoredEntry",
    "VerificationError",
    "VerifyResult",
    "WitnessedNote",
    "add_cosignature",
    "check_extends",
    "format_time",
    "hash_children",
    "hash_leaf",
    "parse_public_key",
    "root_from_inclusion_proof",
    "sign_checkpoint",
    "verify_checkpoint",
    "verify_consistency",
    "verify_cosignature",
    "verify_export",
    "verify_inclusion",
    "verify_store",
    "witness_checkpoint",
]
