"""Offline verification of an exported log against a trusted checkpoint and public key.

Stages, each failing with :class:`VerificationError` carrying its number:

1. The trusted checkpoint (obtained out of band, e.g. from a witness) verifies under the
   log's public key: nothing else is believed before this.
2. Every checkpoint shipped with the export verifies under the same key and origin, and
   no two of them commit to different roots for the same size (a forked log).
3. Every entry parses, conforms to the record schema, sits at the position its ``seq``
   names (a gap means a deleted entry, a misplaced seq means reordering), and hashes to
   the leaf hash stored alongside it.
4. The root recomputed from the entries matches every signed checkpoint.
5. The export is complete: it is not shorter than the trusted checkpoint, and every entry
   is covered by some signed checkpoint (an unsigned tail is a forgery, or not yet
   checkpointed; either way it is not verified).

How precisely a bad entry is located, honestly: deletions, reordering, truncation and
unsigned appended entries are pinpointed exactly (stages 3 and 5). An edited record whose
stored leaf hash was left alone is pinpointed exactly too (stage 3). A careful forger who
also recomputes the leaf hash can only be caught by the signed roots (stage 4): the first
checkpoint whose root fails, and the last one that holds, bound the edit to
``[good size, bad size)``, and the error reports that range. The log checkpoints every N
entries, so N is the worst-case resolution; nothing weaker than a signature is trusted to
narrow it further. The earliest problem wins: roots are checked only over the prefix that
is structurally sound, so a reported range is never past a reported entry error.

Example::

    result = verify_export(lines, trusted_note, public_key, checkpoint_notes=notes)
    print(f"OK {result.size} entries, root {result.root.hex()}")
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Iterable, Sequence

import rfc8785

from insitu.audit.checkpoint import Checkpoint, _unverified_parse, verify_checkpoint
from insitu.audit.errors import AuditError, RecordInvalidError, VerificationError
from insitu.audit.export import export_lines
from insitu.audit.merkle import HASH_SIZE, hash_leaf
from insitu.audit.record import parse_json_object, validate_record
from insitu.audit.store import AuditStore
from insitu.audit.tree import CompactRange

__all__ = ["VerifyResult", "verify_export", "verify_store"]


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    size: int  # entries covered, pruned prefix included
    root: bytes  # root at ``size``, equal to a signed checkpoint's
    pruned: int
    checkpoints_checked: int
    trusted: Checkpoint


@dataclasses.dataclass
class _Entry:
    seq: int | None
    leaf: bytes
    problem: str | None


def _trusted(
    note: str, public_key: bytes, key_name: str | None, origin: str | None
) -> tuple[Checkpoint, str]:
    try:
        name = key_name or origin or _unverified_parse(note).origin
        return verify_checkpoint(note, name, public_key, origin=origin), name
    except AuditError as e:
        raise VerificationError(1, f"trusted checkpoint rejected: {e.detail}") from None


def _exported(notes: Iterable[str], name: str, public_key: bytes, origin: str) -> dict[int, bytes]:
    roots: dict[int, bytes] = {}
    for k, note in enumerate(notes):
        try:
            cp = verify_checkpoint(note, name, public_key, origin=origin)
        except AuditError as e:
            raise VerificationError(2, f"exported checkpoint #{k} rejected: {e.detail}") from None
        if cp.size in roots and roots[cp.size] != cp.root:
            raise VerificationError(
                2, f"two signed checkpoints for size {cp.size} disagree: the log forked"
            )
        roots[cp.size] = cp.root
    return roots


def _parse_line(line: str | bytes) -> tuple[str, object]:
    try:
        obj = parse_json_object(line)
    except RecordInvalidError as e:
        return "error", f"line is not a JSON object ({e.detail})"
    if set(obj) == {"pruned_prefix"}:
        return "prefix", obj["pruned_prefix"]
    if set(obj) != {"leaf_hash", "record"}:
        return "error", "line is not a {leaf_hash, record} entry"
    return "entry", obj


def _entry(obj: dict[str, object]) -> _Entry:
    rec = obj["record"]
    if not isinstance(rec, dict):
        return _Entry(None, b"", "entry has no record body (pruned or destroyed)")
    try:
        validate_record(rec)
        leaf = hash_leaf(rfc8785.dumps(rec))
    except RecordInvalidError as e:
        return _Entry(None, b"", f"record does not conform to the schema ({e.detail})")
    seq = rec["seq"]
    claimed = obj["leaf_hash"]
    problem = None
    if not isinstance(claimed, str) or claimed != leaf.hex():
        problem = "record content does not match its stored leaf hash: the record was modified"
    return _Entry(int(seq), leaf, problem)


def _prefix(value: object) -> CompactRange:
    try:
        assert isinstance(value, dict) and set(value) == {"size", "compact_range"}
        size, nodes = value["size"], value["compact_range"]
        assert isinstance(size, int) and isinstance(nodes, list)
        return CompactRange(size, [bytes.fromhex(n) for n in nodes])
    except (AssertionError, ValueError, TypeError, AuditError):
        raise VerificationError(3, "malformed pruned_prefix line") from None


def _position_problem(entries: Sequence[_Entry], base: int) -> tuple[int, str] | None:
    """The first index whose entry is malformed, misplaced or modified."""
    where = {e.seq: base + i for i, e in enumerate(entries) if e.seq is not None}
    for i, e in enumerate(entries):
        pos = base + i
        if e.seq is None:
            return pos, e.problem or "malformed entry"
        if e.seq != pos:
            if pos not in where:
                return pos, f"entry {pos} is missing (deleted): position {pos} holds seq {e.seq}"
            return pos, (
                f"entries out of order: position {pos} holds seq {e.seq}, "
                f"seq {pos} is at position {where[pos]}"
            )
        if e.problem is not None:
            return pos, e.problem
    return None


def verify_export(
    lines: Iterable[str | bytes],
    trusted_note: str,
    public_key: bytes,
    *,
    key_name: str | None = None,
    origin: str | None = None,
    checkpoint_notes: Iterable[str] = (),
) -> VerifyResult:
    """Verify an export (see :mod:`insitu.audit.export`); raise VerificationError if bad."""
    if len(public_key) != 32:
        raise VerificationError(1, "public key must be a raw 32-byte Ed25519 key")
    trusted, name = _trusted(trusted_note, public_key, key_name, origin)
    roots = _exported(checkpoint_notes, name, public_key, trusted.origin)
    if roots.get(trusted.size, trusted.root) != trusted.root:
        raise VerificationError(
            2, f"exported checkpoint for size {trusted.size} contradicts the trusted one"
        )
    roots[trusted.size] = trusted.root

    # Stage 3: per-entry checks, in order.
    cr = CompactRange()
    entries: list[_Entry] = []
    for n, raw in enumerate(lines):
        if isinstance(raw, bytes | str) and not raw.strip():
            continue
        kind, value = _parse_line(raw)
        if kind == "prefix":
            if n != 0 or entries:
                raise VerificationError(3, "pruned_prefix must be the first line")
            cr = _prefix(value)
        elif kind == "entry":
            assert isinstance(value, dict)
            entries.append(_entry(value))
        else:
            entries.append(_Entry(None, b"", str(value)))
    base = cr.size
    bad = _position_problem(entries, base)
    sound_end = bad[0] if bad else base + len(entries)

    # Stage 4: roots over the structurally sound prefix, at every signed size in it.
    checked, last_good = 0, base
    sizes = sorted(s for s in roots if base <= s <= sound_end)
    want = iter(sizes)
    target = next(want, None)
    if target == base:
        checked += _check_root(cr, roots[base], last_good, base)
        target = next(want, None)
    for e in entries[: sound_end - base]:
        if target is None:
            break
        cr.append(e.leaf)
        if cr.size == target:
            checked += _check_root(cr, roots[target], last_good, target)
            last_good = target
            target = next(want, None)
    if bad is not None:
        raise VerificationError(3, bad[1], index=bad[0])

    # Stage 5: completeness and coverage.
    total = base + len(entries)
    committed = max(roots)
    if total < committed:
        raise VerificationError(
            5,
            f"log truncated: {total} entries, a signed checkpoint commits to {committed}",
            index=total,
        )
    covered = max(s for s in roots if s <= total)
    if total > covered:
        raise VerificationError(
            5,
            f"entries from index {covered} on are not covered by any signed checkpoint "
            f"(forged or not yet checkpointed)",
            index=covered,
        )
    return VerifyResult(
        size=covered, root=roots[covered], pruned=base, checkpoints_checked=checked, trusted=trusted
    )


def _check_root(cr: CompactRange, want: bytes, last_good: int, size: int) -> int:
    got = cr.root()
    if len(want) != HASH_SIZE or not hmac.compare_digest(got, want):
        raise VerificationError(
            4,
            f"root of the first {size} entries does not match the signed checkpoint "
            f"(expected {want.hex()}, computed {got.hex()}); the last matching signed size "
            f"is {last_good}",
            index_range=(last_good, size),
        )
    return 1


def verify_store(
    store: AuditStore,
    trusted_note: str,
    public_key: bytes,
    *,
    key_name: str | None = None,
    origin: str | None = None,
) -> VerifyResult:
    """Verify a store in place, every entry included, as its full export would be.

    Entries appended after the latest stored checkpoint fail stage 5: at rest (after
    :meth:`AuditLog.close`) a healthy store has none.
    """
    notes = [c.note for c in store.checkpoints()]
    return verify_export(
        export_lines(store),
        trusted_note,
        public_key,
        key_name=key_name,
        origin=origin,
        checkpoint_notes=notes,
    )
