"""Audit records: schema (unknown fields rejected), canonical bytes, HMAC'd values."""

from __future__ import annotations

import dataclasses
import json

import pytest
import rfc8785
from audit_support import make_record

from insitu.audit.errors import RecordInvalidError
from insitu.audit.record import (
    AuditRecord,
    canonical_bytes,
    format_time,
    parse_record,
    record_schema,
    validate_record,
)
from insitu.audit.sensitive import SensitiveValueHasher
from insitu.errors import ErrorCode

KEY = bytes(range(32))


def _positioned() -> dict[str, object]:
    return make_record(1).positioned(7, "2026-11-21T10:00:00.123456Z").to_dict()


def test_schema_is_strict_everywhere() -> None:
    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                assert node.get("additionalProperties") is False, node
            for k, v in node.items():
                if k not in ("if", "then"):  # conditions, not object definitions
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    schema = record_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    walk(schema)


def test_round_trip_and_canonical_bytes() -> None:
    d = _positioned()
    data = canonical_bytes(d)
    assert data == rfc8785.dumps(d)
    assert json.loads(data) == d
    rec = AuditRecord.from_dict(parse_record(data))
    assert rec.canonical_bytes() == data
    # Key order of the input does not matter, only content.
    assert canonical_bytes(dict(reversed(list(d.items())))) == data


@pytest.mark.parametrize(
    "path",
    [(), ("actor",), ("resource",), ("origin",), ("authz",)],
    ids=["top", "actor", "resource", "origin", "authz"],
)
def test_unknown_fields_are_rejected(path: tuple[str, ...]) -> None:
    d = _positioned()
    target: dict[str, object] = d
    for p in path:
        target = target[p]  # type: ignore[assignment]
    target["note"] = "x"
    with pytest.raises(RecordInvalidError, match="unknown field"):
        validate_record(d)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("outcome", "maybe"),
        ("seq", -1),
        ("time", "2026-11-21T10:00:00Z"),
        ("time", "2026-13-21T10:00:00.000000Z"),
        ("event_id", "not-a-uuid"),
        ("trace_id", "xyz"),
        ("break_glass", "yes"),
        ("v", 2),
    ],
)
def test_invalid_values_are_rejected(field: str, value: object) -> None:
    d = _positioned()
    d[field] = value
    with pytest.raises(RecordInvalidError) as ei:
        validate_record(d)
    assert ei.value.code is ErrorCode.INVALID_ARGUMENT


def test_missing_field_is_rejected() -> None:
    d = _positioned()
    del d["correlation_id"]
    with pytest.raises(RecordInvalidError):
        validate_record(d)


def test_validation_errors_never_echo_the_value() -> None:
    pan = "4111111111111111"
    d = _positioned()
    d["sensitive"] = {"pan": pan}  # a raw PAN where an HMAC belongs
    with pytest.raises(RecordInvalidError) as ei:
        validate_record(d)
    assert pan not in str(ei.value) and "sensitive/pan" in str(ei.value)


def test_break_glass_requires_an_hmacd_reason() -> None:
    h = SensitiveValueHasher(KEY)
    with pytest.raises(RecordInvalidError):
        make_record(break_glass=True).positioned(0).canonical_bytes()
    ok = make_record(break_glass=True, sensitive={"break_glass_reason": h.hmac("ER, no consent")})
    ok.positioned(0).canonical_bytes()


def test_strict_json_parse() -> None:
    data = canonical_bytes(_positioned()).decode()
    with pytest.raises(RecordInvalidError, match="duplicate"):
        parse_record(data[:-1] + ',"seq":8}')
    with pytest.raises(RecordInvalidError):
        parse_record("[1]")
    with pytest.raises(RecordInvalidError):
        parse_record(b"\xff")


def test_positioned_keeps_a_given_time() -> None:
    rec = dataclasses.replace(make_record(), time="2026-01-01T00:00:00.000000Z")
    assert rec.positioned(3).time == "2026-01-01T00:00:00.000000Z"
    assert make_record().positioned(3).time is not None
    assert len(format_time()) == 27


def test_hasher() -> None:
    h = SensitiveValueHasher(KEY)
    mac = h.hmac("4111111111111111")
    assert mac.startswith("hmac-sha256:") and len(mac) == 12 + 64
    assert h.matches("4111111111111111", mac)
    assert not h.matches("4111111111111112", mac)
    assert not SensitiveValueHasher(bytes(32)).matches("4111111111111111", mac)
    assert h.hmac(b"abc") == h.hmac("abc")
    assert "redacted" in repr(h) and KEY.hex() not in repr(h)
    with pytest.raises(Exception, match="at least"):
        SensitiveValueHasher(b"short")
