"""What a Flower app declares to insitu in its ``pyproject.toml`` ``[tool.insitu]`` table.

The table is part of the bundle, so the code hash a site approves covers it too::

    [tool.insitu]
    onnx-export = "pkg.task:export_onnx"          # optional
    metrics = ["train-loss", "eval-acc"]          # metric/config keys a reply may carry
    metric-records = ["metrics"]                  # names of those records (default: metrics)

    [tool.insitu.resources]                       # optional: what one site worker needs
    memory_mb = 4096
    gpu = true

``num-examples`` (Flower's weighting key) is always allowed. A site refuses a reply with
any other key, or a metric/config record by another name.

Example::

    decl = parse_declaration(config["tool"].get("insitu", {}), where="app/pyproject.toml")
    decl.metric_keys      # frozenset({"num-examples", "train-loss", "eval-acc"})
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from insitu.errors import ErrorCode, InsituError
from insitu.sandbox.limits import ResourceRequest, parse_request

__all__ = ["ALWAYS_ALLOWED_KEYS", "AppDeclaration", "parse_declaration"]

ALWAYS_ALLOWED_KEYS: Final = frozenset({"num-examples"})
DEFAULT_METRIC_RECORDS: Final = ("metrics",)
MAX_DECLARED_KEYS: Final = 256
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_KNOWN: Final = frozenset({"onnx-export", "metrics", "metric-records", "resources"})


@dataclass(frozen=True)
class AppDeclaration:
    metric_keys: frozenset[str] = ALWAYS_ALLOWED_KEYS
    metric_records: frozenset[str] = frozenset(DEFAULT_METRIC_RECORDS)
    resources: ResourceRequest = field(default_factory=ResourceRequest)


def _names(raw: object, what: str, where: str) -> frozenset[str]:
    if not isinstance(raw, list) or not all(isinstance(k, str) for k in raw):
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"{where}: {what} must be a list of strings")
    if len(raw) > MAX_DECLARED_KEYS:
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, f"{where}: {what} declares over {MAX_DECLARED_KEYS} names"
        )
    for key in raw:
        if not _KEY.match(key):
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT,
                f"{where}: {what} entry {key[:64]!r} is not a plain name "
                "(a letter, then letters, digits, '_', '.', '-'; at most 64)",
            )
    return frozenset(raw)


def parse_declaration(table: Mapping[str, object], *, where: str) -> AppDeclaration:
    """Parse the ``[tool.insitu]`` table (``onnx-export`` is read by the bundle itself)."""
    if not isinstance(table, Mapping):
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"{where}: [tool.insitu] must be a table")
    unknown = set(table) - _KNOWN
    if unknown:
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT,
            f"{where}: unknown [tool.insitu] key(s) {sorted(unknown)}; known: {sorted(_KNOWN)}",
        )
    keys = _names(table.get("metrics", []), "[tool.insitu] metrics", where)
    records = _names(
        table.get("metric-records", list(DEFAULT_METRIC_RECORDS)),
        "[tool.insitu] metric-records", where,
    )
    resources = parse_request(table.get("resources"), where=f"{where} [tool.insitu]")
    return AppDeclaration(keys | ALWAYS_ALLOWED_KEYS, records, resources)
