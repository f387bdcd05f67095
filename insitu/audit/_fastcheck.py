"""A fast, hand-written twin of ``schema/audit-record.schema.json``.

jsonschema costs about 300 us a record, which would dominate both appending and offline
verification. This check mirrors the schema rule by rule and is deliberately *stricter*
where Python and JSON Schema semantics differ (patterns must match the whole string, an
integer must be a JSON integer, not 5.0). A property test keeps the two honest: whatever
this accepts, the JSON Schema accepts too. The schema stays the normative definition and
produces the error message whenever this check rejects something.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

__all__ = ["first_violation"]

_MAX_SAFE = 9007199254740991
_TOP = frozenset(
    (
        "v", "event_id", "seq", "time", "clock", "event_type", "actor", "action", "resource",
        "outcome", "reason_code", "origin", "correlation_id", "trace_id", "authz",
        "break_glass", "sensitive", "attrs",
    )
)  # fmt: skip
_ACTOR = frozenset(("spiffe_id", "cert_fingerprint", "auth_method", "role", "org", "site"))
_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_CLOCK = re.compile(r"[a-z0-9][a-z0-9._:/-]{0,127}")
_EVENT = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")
_SPIFFE = re.compile(r"spiffe://[^\s]{1,512}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_METHOD = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_TRACE = re.compile(r"[0-9a-f]{32}")
_SENS_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_SENS_VAL = re.compile(r"hmac-sha256:[0-9a-f]{64}")
_ATTR_KEY = re.compile(r"[a-z][a-z0-9_.]{0,63}")

Violation = tuple[str, str]  # (JSON path, schema keyword)


def _str(v: Any, max_len: int, min_len: int = 0, pattern: re.Pattern[str] | None = None) -> bool:
    if type(v) is not str or not min_len <= len(v) <= max_len:
        return False
    return pattern is None or pattern.fullmatch(v) is not None


def _opt(v: Any, max_len: int, pattern: re.Pattern[str] | None = None) -> bool:
    return v is None or _str(v, max_len, 0, pattern)


def _int(v: Any, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def _time_ok(v: Any) -> bool:
    if not _str(v, 27, 27, _TIME):
        return False
    try:
        datetime.strptime(v, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return False
    return True


def _actor(a: Any) -> Violation | None:
    if type(a) is not dict or set(a) != _ACTOR:
        return ("actor", "properties")
    ok = (
        (a["spiffe_id"] is None or _str(a["spiffe_id"], 521, 0, _SPIFFE))
        and _opt(a["cert_fingerprint"], 64, _HEX64)
        and _str(a["auth_method"], 32, 1, _METHOD)
        and _opt(a["role"], 128)
        and _opt(a["org"], 128)
        and _opt(a["site"], 128)
    )
    return None if ok else ("actor", "properties")


def _authz(a: Any) -> Violation | None:
    if a is None:
        return None
    if type(a) is not dict or set(a) != {"decision", "policy_hash", "policy_ids"}:
        return ("authz", "oneOf")
    ids = a["policy_ids"]
    ok = (
        a["decision"] in ("allow", "deny")
        and type(a["decision"]) is str
        and _opt(a["policy_hash"], 128)
        and type(ids) is list
        and len(ids) <= 64
        and all(_str(i, 256) for i in ids)
    )
    return None if ok else ("authz", "oneOf")


def _maps(d: dict[str, Any]) -> Violation | None:
    sens, attrs = d["sensitive"], d["attrs"]
    if type(sens) is not dict or len(sens) > 32:
        return ("sensitive", "type")
    for k, v in sens.items():
        if not _SENS_KEY.fullmatch(k) or not _str(v, 76, 76, _SENS_VAL):
            return (f"sensitive/{k}", "pattern")
    if type(attrs) is not dict or len(attrs) > 32:
        return ("attrs", "type")
    for k, v in attrs.items():
        ok = type(v) is bool or _int(v, -_MAX_SAFE, _MAX_SAFE) or _str(v, 256)
        if not _ATTR_KEY.fullmatch(k) or not ok:
            return (f"attrs/{k}", "oneOf")
    if d["break_glass"] is True and "break_glass_reason" not in sens:
        return ("sensitive", "required")
    return None


def first_violation(d: Any) -> Violation | None:
    """None when ``d`` is a valid record; else (path, keyword) of the first violation."""
    if type(d) is not dict:
        return ("(record)", "type")
    keys = set(d)
    if keys - _TOP:
        return ("(record)", "additionalProperties")
    if _TOP - keys:
        return ("(record)", "required")
    checks: list[tuple[str, bool]] = [
        ("v", type(d["v"]) is int and d["v"] == 1),
        ("event_id", _str(d["event_id"], 36, 36, _UUID4)),
        ("seq", _int(d["seq"], 0, _MAX_SAFE)),
        ("time", _time_ok(d["time"])),
        ("clock", _str(d["clock"], 128, 1, _CLOCK)),
        ("event_type", _str(d["event_type"], 64, 1, _EVENT)),
        ("action", _str(d["action"], 256, 1)),
        ("outcome", type(d["outcome"]) is str and d["outcome"] in ("success", "failure", "denied")),
        ("reason_code", _opt(d["reason_code"], 128)),
        ("correlation_id", _opt(d["correlation_id"], 128)),
        ("trace_id", _opt(d["trace_id"], 32, _TRACE)),
        ("break_glass", type(d["break_glass"]) is bool),
    ]
    for path, ok in checks:
        if not ok:
            return (path, "type/pattern")
    r, o = d["resource"], d["origin"]
    if not (
        type(r) is dict
        and set(r) == {"type", "id"}
        and _str(r["type"], 64, 1)
        and _str(r["id"], 512)
    ):
        return ("resource", "properties")
    if not (
        type(o) is dict
        and set(o) == {"peer", "node"}
        and _opt(o["peer"], 256)
        and _str(o["node"], 256, 1)
    ):
        return ("origin", "properties")
    return _actor(d["actor"]) or _authz(d["authz"]) or _maps(d)
