"""Export a stored log to JSONL (plus its checkpoints), and read such exports back.

Export format, one JSON object per line (UTF-8):

- optionally first, when the store was pruned:
  ``{"pruned_prefix": {"size": h, "compact_range": ["<hex>", ...]}}`` - the perfect
  subtree hashes covering ``[0, h)``, enough to recompute every later root;
- then one line per entry from seq ``h`` on: ``{"leaf_hash": "<hex>", "record": {...}}``,
  where ``record`` is the stored canonical record verbatim and ``leaf_hash`` is the hash
  the store recorded at append time (a claim the verifier re-checks, not a trust anchor).

The checkpoints file holds one ``{"size": n, "note": "<signed note>"}`` per line, and the
``.checkpoint`` file the latest signed note as plain text.

Example::

    summary = export_store(store, Path("coordinator.jsonl"))
    # -> coordinator.jsonl, coordinator.checkpoints.jsonl, coordinator.checkpoint
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from insitu.audit.errors import CheckpointFormatError
from insitu.audit.store import AuditStore, StoredCheckpoint
from insitu.audit.tree import CompactRange

__all__ = [
    "ExportSummary",
    "checkpoints_path_for",
    "export_lines",
    "export_store",
    "latest_checkpoint_path_for",
    "read_checkpoint_notes",
    "write_checkpoints",
]


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    entries: int
    pruned: int
    checkpoints: int
    log_path: Path
    checkpoints_path: Path
    latest_checkpoint_path: Path | None


def checkpoints_path_for(log_path: Path) -> Path:
    return log_path.with_name(log_path.stem + ".checkpoints.jsonl")


def latest_checkpoint_path_for(log_path: Path) -> Path:
    return log_path.with_name(log_path.stem + ".checkpoint")


def export_lines(store: AuditStore, end: int | None = None) -> Iterator[str]:
    """The export's JSONL lines (without newlines) for entries below ``end``."""
    horizon = store.prune_horizon()
    if horizon > 0:
        cr = CompactRange()
        for lh in store.leaf_hashes(0, horizon):
            cr.append(lh)
        prefix = {"size": horizon, "compact_range": [n.hex() for n in cr.nodes]}
        yield json.dumps({"pruned_prefix": prefix}, separators=(",", ":"))
    for e in store.entries(horizon, end):
        # The body goes out verbatim (not re-serialized) so the export carries exactly
        # the bytes that were hashed; a corrupt body shows up as such at verification.
        body = "null" if e.data is None else e.data.decode("utf-8", errors="replace")
        yield '{"leaf_hash":"' + e.leaf_hash.hex() + '","record":' + body + "}"


def _write_atomic(path: Path, lines: Iterable[str]) -> int:
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


def write_checkpoints(path: Path, checkpoints: Iterable[StoredCheckpoint]) -> int:
    return _write_atomic(
        path,
        (json.dumps({"size": c.size, "note": c.note}, separators=(",", ":")) for c in checkpoints),
    )


def export_store(
    store: AuditStore, log_path: Path, *, include_unsigned_tail: bool = False
) -> ExportSummary:
    """Write ``log_path`` plus its ``.checkpoints.jsonl`` and ``.checkpoint`` siblings.

    Checkpoints are read first and, by default, entries only up to the latest one: a live
    log's newest entries are not signed yet and would (rightly) fail verification.
    """
    cps = store.checkpoints()
    horizon = store.prune_horizon()
    end = None if include_unsigned_tail or not cps else cps[-1].size
    n = _write_atomic(log_path, export_lines(store, end))
    cps_path = checkpoints_path_for(log_path)
    write_checkpoints(cps_path, cps)
    latest_path: Path | None = None
    if cps:
        latest_path = latest_checkpoint_path_for(log_path)
        _write_atomic(latest_path, [cps[-1].note.rstrip("\n")])
    return ExportSummary(
        entries=n - (1 if horizon > 0 else 0),
        pruned=horizon,
        checkpoints=len(cps),
        log_path=log_path,
        checkpoints_path=cps_path,
        latest_checkpoint_path=latest_path,
    )


def read_checkpoint_notes(path: Path) -> list[str]:
    """Notes from a checkpoints JSONL file (each line ``{"size": n, "note": "..."}``)."""
    notes: list[str] = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                note = obj["note"]
            except (ValueError, KeyError, TypeError):
                raise CheckpointFormatError(
                    f"{path.name} line {i}: not a {{size, note}} object"
                ) from None
            if not isinstance(note, str):
                raise CheckpointFormatError(f"{path.name} line {i}: note is not a string")
            notes.append(note)
    return notes
