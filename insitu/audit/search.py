"""Search audit records by actor, action, resource, outcome, event type and time range,
and answer "does value X appear?" for HMAC'd sensitive values.

Records come as parsed JSON objects from a store or an export; searching does not verify
them (run ``insitu-audit verify`` for that).

Example::

    q = SearchQuery(actor="spiffe://demo.insitu/user/alice", outcome="denied")
    for rec in search(records_from_store(store), q):
        print(rec["seq"], rec["action"])
"""

from __future__ import annotations

import dataclasses
import hmac
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from insitu.audit.errors import RecordInvalidError
from insitu.audit.record import parse_time
from insitu.audit.sensitive import SensitiveValueHasher
from insitu.audit.store import AuditStore

__all__ = [
    "SearchQuery",
    "hmac_occurrences",
    "records_from_export",
    "records_from_store",
    "search",
]


@dataclasses.dataclass(frozen=True)
class SearchQuery:
    """All given criteria must hold. ``actor`` and ``action`` match as substrings;
    ``resource`` matches ``type:id``, ``type`` or ``id`` exactly; times are inclusive
    ``since`` and exclusive ``until``."""

    actor: str | None = None
    action: str | None = None
    resource: str | None = None
    outcome: str | None = None
    event_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, rec: dict[str, Any]) -> bool:
        try:
            actor = rec["actor"]
            if self.actor is not None and self.actor not in (actor.get("spiffe_id") or ""):
                return False
            if self.action is not None and self.action not in rec["action"]:
                return False
            if self.resource is not None:
                r = rec["resource"]
                if self.resource not in (f"{r['type']}:{r['id']}", r["type"], r["id"]):
                    return False
            if self.outcome is not None and rec["outcome"] != self.outcome:
                return False
            if self.event_type is not None and rec["event_type"] != self.event_type:
                return False
            if self.since is not None or self.until is not None:
                t = parse_time(rec["time"])
                if self.since is not None and t < self.since:
                    return False
                if self.until is not None and t >= self.until:
                    return False
        except (KeyError, TypeError, AttributeError, RecordInvalidError):
            return False
        return True


def search(records: Iterable[dict[str, Any]], query: SearchQuery) -> Iterator[dict[str, Any]]:
    return (r for r in records if query.matches(r))


def records_from_store(store: AuditStore) -> Iterator[dict[str, Any]]:
    """Parsed records of a store (pruned entries skipped)."""
    for e in store.entries(store.prune_horizon()):
        if e.data is not None:
            try:
                obj = json.loads(e.data)
            except ValueError:
                continue
            if isinstance(obj, dict):
                yield obj


def records_from_export(path: Path) -> Iterator[dict[str, Any]]:
    """Parsed records of an export file (the pruned-prefix line skipped)."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("record"), dict):
                yield obj["record"]


def hmac_occurrences(
    records: Iterable[dict[str, Any]], hasher: SensitiveValueHasher, value: str
) -> Iterator[tuple[int, str]]:
    """(seq, field) for every sensitive field whose HMAC is that of ``value``."""
    target = hasher.hmac(value)
    for rec in records:
        sens = rec.get("sensitive")
        if not isinstance(sens, dict):
            continue
        for name, h in sens.items():
            if isinstance(h, str) and hmac.compare_digest(h.encode(), target.encode()):
                yield int(rec.get("seq", -1)), str(name)
