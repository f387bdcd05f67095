"""The audit package's error tree: one root, narrow subclasses that say what to do next.

Every error here is an :class:`insitu.errors.InsituError`; only the CLI entry point turns
them into exit codes, and the RPC layer maps them through the error catalog. Details name
sizes, indexes and hashes, never record contents (which may hold pseudonymized data).

Example::

    try:
        verify_inclusion(leaf_hash, index, size, proof, root)
    except RootMismatchError as e:
        print(e.expected.hex(), e.computed.hex())
"""

from __future__ import annotations

from insitu.errors import ErrorCode, InsituError

__all__ = [
    "AuditError",
    "AuditUnavailableError",
    "CheckpointFormatError",
    "InvalidProofError",
    "RecordInvalidError",
    "RetentionError",
    "RootMismatchError",
    "SequenceConflictError",
    "SignatureError",
    "VerificationError",
]


class AuditError(InsituError):
    """Root of every audit error; by default an integrity failure."""

    code = ErrorCode.INTEGRITY

    def __init__(self, detail: str = "", *, code: ErrorCode | None = None) -> None:
        super().__init__(code, detail)


class InvalidProofError(AuditError):
    """A proof or its inputs violate a precondition (index >= size, wrong length, ...).

    Remediation: the proof was built for other parameters, or is corrupt; request it again.
    """


class RootMismatchError(AuditError):
    """A recomputed Merkle root differs from the one that was expected."""

    def __init__(self, expected: bytes, computed: bytes, what: str = "root") -> None:
        self.expected = expected
        self.computed = computed
        super().__init__(f"{what} mismatch: expected {expected.hex()}, computed {computed.hex()}")


class CheckpointFormatError(AuditError):
    """A checkpoint or signed note is malformed (it is rejected before any field is used)."""


class SignatureError(AuditError):
    """No valid signature by the expected key; the checkpoint must not be trusted.

    Remediation: check that the public key and key name are the log's, and that the
    checkpoint came from the log (not from another log or key).
    """


class RecordInvalidError(AuditError):
    """A record does not conform to the audit-record JSON Schema (unknown fields included)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail, code=ErrorCode.INVALID_ARGUMENT)


class AuditUnavailableError(AuditError):
    """The audit store could not durably append; the audited action must not proceed."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail, code=ErrorCode.AUDIT_UNAVAILABLE)


class SequenceConflictError(AuditError):
    """The store's size is not what the appender expected (another writer appended).

    Remediation (inside :class:`~insitu.audit.log.AuditLog`): reload the tail and retry.
    """

    def __init__(self, expected: int, actual: int) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"append expected store size {expected}, store has {actual}",
            code=ErrorCode.FAILED_PRECONDITION,
        )


class RetentionError(AuditError):
    """A prune would remove records still inside the retention period, or nothing at all."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail, code=ErrorCode.FAILED_PRECONDITION)


class VerificationError(AuditError):
    """Offline verification failed at a numbered stage, at (or within) a given index.

    ``index`` is the first bad entry when it can be pinpointed; ``index_range`` is the
    half-open range known to contain it when only signed checkpoints bound it.
    """

    def __init__(
        self,
        stage: int,
        reason: str,
        *,
        index: int | None = None,
        index_range: tuple[int, int] | None = None,
    ) -> None:
        self.stage = stage
        self.reason = reason
        self.index = index
        self.index_range = index_range
        where = ""
        if index is not None:
            where = f" at index {index}"
        if index_range is not None:
            where += f" (first bad entry in [{index_range[0]}, {index_range[1]}))"
        super().__init__(f"stage {stage}{where}: {reason}")
