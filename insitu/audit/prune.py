"""Retention: prune old record bodies while keeping the log verifiable.

Pruning never removes a leaf hash, so the tree, its roots and every later proof stay
intact. It removes only the record bytes of entries ``[old horizon, new horizon)``, after
writing them to an archive that verifies on its own:

- the archived entries (leaf hash + record, as in an export);
- the compact range of ``[0, old horizon)`` (the subtrees before the segment);
- a signed checkpoint of size ``N >= new horizon`` and a consistency proof from the
  new horizon to ``N``: the segment's root, recomputed from the prefix and the entries,
  must be a prefix of the signed tree.

A prune is refused unless the cutoff is older than the retention period (PCI DSS 10.5.1:
twelve months by default). It is itself logged (an ``audit.prune`` record carrying the
archive's SHA-256) before the bodies go, and checkpointed after.

Example::

    result = prune(log, before=datetime(2025, 1, 1, tzinfo=UTC), archive_path=Path("a.json"),
                   actor=Actor("spiffe://demo.insitu/user/ops", "mtls", role="admin"))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from insitu.audit.checkpoint import verify_checkpoint
from insitu.audit.errors import AuditError, RetentionError
from insitu.audit.log import AuditLog, SignedCheckpoint
from insitu.audit.merkle import hash_leaf, verify_consistency
from insitu.audit.record import (
    Actor,
    AuditRecord,
    EventType,
    Origin,
    Outcome,
    Resource,
    canonical_bytes,
    parse_json_object,
    parse_time,
)
from insitu.audit.store import AuditStore
from insitu.audit.tree import CompactRange

__all__ = ["ARCHIVE_FORMAT", "DEFAULT_RETENTION", "PruneResult", "prune", "verify_archive"]

ARCHIVE_FORMAT = "insitu-audit-archive/v1"
DEFAULT_RETENTION = timedelta(days=365)


@dataclasses.dataclass(frozen=True)
class PruneResult:
    start: int
    end: int
    archive_path: Path
    archive_sha256: str
    checkpoint: SignedCheckpoint


def _horizon_for(store: AuditStore, before: datetime, start: int) -> int:
    """First seq at or after ``start`` whose record is not older than ``before``."""
    for e in store.entries(start):
        if e.data is None:
            raise AuditError(f"entry {e.seq} above the prune horizon has no body")
        t = parse_time(json.loads(e.data)["time"])
        if t >= before:
            return e.seq
    return store.size()


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prune(
    log: AuditLog,
    *,
    before: datetime,
    archive_path: Path,
    actor: Actor,
    retention: timedelta = DEFAULT_RETENTION,
    now: datetime | None = None,
) -> PruneResult:
    """Archive and prune the bodies of entries older than ``before``."""
    now = now or datetime.now(UTC)
    cutoff_limit = now - retention
    if before > cutoff_limit:
        raise RetentionError(
            f"refused: records after {cutoff_limit.date().isoformat()} are inside the "
            f"{retention.days}-day retention period"
        )
    store = log.store
    start = store.prune_horizon()
    end = _horizon_for(store, before, start)
    if end <= start:
        raise RetentionError(f"nothing to prune before {before.date().isoformat()}")
    signed = log.checkpoint()  # size >= end: every entry below end is committed
    archive = {
        "format": ARCHIVE_FORMAT,
        "origin": log.origin,
        "start": start,
        "end": end,
        "prefix": {"size": start, "compact_range": [h.hex() for h in log.compact_range(start)]},
        "entries": [
            {"leaf_hash": e.leaf_hash.hex(), "record": json.loads(e.data or b"null")}
            for e in store.entries(start, end)
        ],
        "checkpoint": signed.note,
        "consistency_proof": [h.hex() for h in log.consistency_proof(end, signed.size)],
    }
    data = json.dumps(archive, separators=(",", ":")).encode()
    verify_archive(data, log.public_key, key_name=log.key_name)  # never prune into a bad archive
    _write(archive_path, data)
    digest = hashlib.sha256(data).hexdigest()
    log.append(
        AuditRecord(
            event_type=EventType.AUDIT_PRUNE,
            actor=actor,
            action="audit.prune",
            resource=Resource("audit_log", log.origin),
            outcome=Outcome.SUCCESS,
            origin=Origin(node=log.node),
            attrs={
                "prune.start": start,
                "prune.end": end,
                "archive.sha256": digest,
                "checkpoint.size": signed.size,
            },
        )
    )
    store.prune_bodies(end)
    return PruneResult(start, end, archive_path, digest, log.checkpoint())


def verify_archive(
    data: bytes | str, public_key: bytes, *, key_name: str | None = None
) -> tuple[int, int, int]:
    """Check an archive against its signed checkpoint; returns (start, end, checkpoint size)."""
    a: dict[str, Any] = parse_json_object(data)
    try:
        if a.get("format") != ARCHIVE_FORMAT:
            raise AuditError("not an insitu audit archive")
        origin, start, end = str(a["origin"]), int(a["start"]), int(a["end"])
        cp = verify_checkpoint(a["checkpoint"], key_name or origin, public_key, origin=origin)
        prefix = a["prefix"]
        cr = CompactRange(int(prefix["size"]), [bytes.fromhex(h) for h in prefix["compact_range"]])
        if cr.size != start or len(a["entries"]) != end - start:
            raise AuditError("archive ranges are inconsistent")
        for i, e in enumerate(a["entries"]):
            rec = e["record"]
            leaf = hash_leaf(canonical_bytes(rec))
            if rec["seq"] != start + i or e["leaf_hash"] != leaf.hex():
                raise AuditError(f"archived entry {start + i} is modified or misplaced")
            cr.append(leaf)
        proof = [bytes.fromhex(h) for h in a["consistency_proof"]]
    except (KeyError, TypeError, ValueError):
        raise AuditError("archive is malformed") from None
    verify_consistency(end, cp.size, proof, cr.root(), cp.root)
    return start, end, cp.size
