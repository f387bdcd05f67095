"""One audit event: a frozen record, its JSON Schema, and its RFC 8785 canonical bytes.

The Merkle leaf of an event is ``SHA-256(0x00 || canonical_bytes)`` where the canonical
bytes are the RFC 8785 JSON of the full record, ``seq`` and ``time`` included, so a
record is bound to its position. The schema (``schema/audit-record.schema.json``) is
checked on append and on import; unknown fields are rejected everywhere. Validation
messages name the failing field and constraint, never the offending value (it might be
a PAN someone forgot to HMAC).

Example::

    rec = AuditRecord(
        event_type=EventType.RPC_REQUEST,
        actor=Actor(spiffe_id="spiffe://demo.insitu/site/a", auth_method="mtls"),
        action="/insitu.v1.Coordinator/Heartbeat",
        resource=Resource("site", "a"),
        outcome=Outcome.SUCCESS,
        origin=Origin(node="coordinator", peer="ipv4:127.0.0.1:5555"),
    )
    seq = audit_log.append(rec)
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import jsonschema
import rfc8785

from insitu.audit._fastcheck import first_violation
from insitu.audit.errors import RecordInvalidError

__all__ = [
    "SCHEMA_VERSION",
    "Actor",
    "AuditRecord",
    "AuthzInfo",
    "EventType",
    "Origin",
    "Outcome",
    "Resource",
    "canonical_bytes",
    "format_time",
    "parse_record",
    "parse_time",
    "record_schema",
    "validate_record",
]

SCHEMA_VERSION = 1
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"


class EventType(enum.StrEnum):
    """Event types insitu emits. The schema accepts any dotted lowercase name."""

    RPC_REQUEST = "rpc.request"
    RPC_OUTCOME = "rpc.outcome"
    TOKEN_CREATE = "token.create"  # noqa: S105 (an event name, not a secret)
    SITE_ENROL = "site.enrol"
    SITE_REVOKE = "site.revoke"
    CERT_ISSUE = "cert.issue"
    CERT_RENEW = "cert.renew"
    KEY_CREATE = "key.create"
    KEY_ROTATE = "key.rotate"
    AUTHZ_DECISION = "authz.decision"
    BREAK_GLASS = "break_glass"
    AUDIT_START = "audit.start"
    AUDIT_STOP = "audit.stop"
    AUDIT_CHECKPOINT = "audit.checkpoint"
    AUDIT_WITNESS = "audit.witness"
    AUDIT_EXPORT = "audit.export"
    AUDIT_PRUNE = "audit.prune"
    ADMIN_BOOTSTRAP = "admin.bootstrap"
    FEATURES_RELEASE = "features.release"
    MODEL_DEPLOY = "model.deploy"
    JOB_SUBMIT = "job.submit"


@dataclasses.dataclass(frozen=True)
class Actor:
    """Who acted: SPIFFE id and certificate fingerprint when authenticated over mTLS."""

    spiffe_id: str | None
    auth_method: str
    cert_fingerprint: str | None = None
    role: str | None = None
    org: str | None = None
    site: str | None = None

    @classmethod
    def system(cls, auth_method: str = "local") -> Actor:
        """The process itself (startup, timers), with no remote caller."""
        return cls(spiffe_id=None, auth_method=auth_method)


@dataclasses.dataclass(frozen=True)
class Resource:
    type: str
    id: str


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where the event came from: the node that logged it and the remote peer, if any."""

    node: str
    peer: str | None = None


@dataclasses.dataclass(frozen=True)
class AuthzInfo:
    """The authorization decision, with the hash of the policy set and matching rule ids."""

    decision: str  # "allow" | "deny"
    policy_hash: str | None = None
    policy_ids: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class AuditRecord:
    """An audit event. ``seq`` and ``time`` are assigned by the log when left as None."""

    event_type: str
    actor: Actor
    action: str
    resource: Resource
    outcome: str
    origin: Origin
    reason_code: str | None = None
    correlation_id: str | None = None
    trace_id: str | None = None
    authz: AuthzInfo | None = None
    break_glass: bool = False
    sensitive: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)
    attrs: Mapping[str, str | int | bool] = dataclasses.field(default_factory=dict, hash=False)
    event_id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    seq: int | None = None
    time: str | None = None
    clock: str = "system-utc"

    def positioned(self, seq: int, time: str | None = None) -> AuditRecord:
        """This record at log position ``seq``, stamped with ``time`` unless it has one."""
        return dataclasses.replace(self, seq=seq, time=self.time or time or format_time())

    def to_dict(self) -> dict[str, Any]:
        """The JSON object form; ``seq``/``time`` must be set (see :meth:`positioned`)."""
        authz = None
        if self.authz is not None:
            authz = {
                "decision": self.authz.decision,
                "policy_hash": self.authz.policy_hash,
                "policy_ids": list(self.authz.policy_ids),
            }
        return {
            "v": SCHEMA_VERSION,
            "event_id": self.event_id,
            "seq": self.seq,
            "time": self.time,
            "clock": self.clock,
            "event_type": str(self.event_type),
            "actor": dataclasses.asdict(self.actor),
            "action": self.action,
            "resource": {"type": self.resource.type, "id": self.resource.id},
            "outcome": str(self.outcome),
            "reason_code": self.reason_code,
            "origin": {"peer": self.origin.peer, "node": self.origin.node},
            "correlation_id": self.correlation_id,
            "trace_id": self.trace_id,
            "authz": authz,
            "break_glass": self.break_glass,
            "sensitive": dict(self.sensitive),
            "attrs": dict(self.attrs),
        }

    def canonical_bytes(self) -> bytes:
        """Validated RFC 8785 bytes: exactly what the Merkle leaf hashes."""
        return canonical_bytes(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AuditRecord:
        """Build from a (validated) JSON object; raises RecordInvalidError otherwise."""
        validate_record(d)
        a = d["authz"]
        return cls(
            event_type=d["event_type"],
            actor=Actor(**d["actor"]),
            action=d["action"],
            resource=Resource(**d["resource"]),
            outcome=d["outcome"],
            origin=Origin(node=d["origin"]["node"], peer=d["origin"]["peer"]),
            reason_code=d["reason_code"],
            correlation_id=d["correlation_id"],
            trace_id=d["trace_id"],
            authz=None
            if a is None
            else AuthzInfo(a["decision"], a["policy_hash"], tuple(a["policy_ids"])),
            break_glass=d["break_glass"],
            sensitive=dict(d["sensitive"]),
            attrs=dict(d["attrs"]),
            event_id=d["event_id"],
            seq=d["seq"],
            time=d["time"],
            clock=d["clock"],
        )


def format_time(dt: datetime | None = None) -> str:
    """RFC 3339 UTC with microseconds (``...T10:00:00.000000Z``); now when ``dt`` is None."""
    dt = datetime.now(UTC) if dt is None else dt.astimezone(UTC)
    return dt.strftime(_TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """Inverse of :func:`format_time`; raises RecordInvalidError on any other shape."""
    try:
        return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)
    except (TypeError, ValueError):
        raise RecordInvalidError("time is not RFC 3339 UTC with microseconds") from None


@functools.cache
def record_schema() -> dict[str, Any]:
    """The audit-record JSON Schema (draft 2020-12), shipped as package data."""
    text = resources.files("insitu.audit").joinpath("schema/audit-record.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(record_schema())
    cls.check_schema(record_schema())
    v: jsonschema.protocols.Validator = cls(record_schema())
    return v


def validate_record(d: Mapping[str, Any]) -> None:
    """Raise RecordInvalidError unless ``d`` conforms to the schema.

    A fast twin of the schema (:mod:`insitu.audit._fastcheck`) decides; the JSON Schema
    itself explains rejections. The message names the JSON path and the failed keyword,
    never the value.
    """
    bad = first_violation(d)
    if bad is None:
        return
    err = jsonschema.exceptions.best_match(_validator().iter_errors(d))
    if err is not None:
        path = "/".join(str(p) for p in err.absolute_path) or "(record)"
        if err.validator == "additionalProperties":
            raise RecordInvalidError(f"{path}: unknown field not allowed by the schema")
        raise RecordInvalidError(f"{path}: violates schema keyword '{err.validator}'")
    raise RecordInvalidError(f"{bad[0]}: violates schema keyword '{bad[1]}'")


def canonical_bytes(d: Mapping[str, Any]) -> bytes:
    """Validate ``d`` and return its RFC 8785 canonical JSON bytes."""
    validate_record(d)
    return rfc8785.dumps(dict(d))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            # Two parsers could disagree on which duplicate wins: refuse the ambiguity.
            raise RecordInvalidError(f"duplicate key '{k}'")
        out[k] = v
    return out


def parse_json_object(data: bytes | str) -> dict[str, Any]:
    """Strict JSON object parse: duplicate keys, NaN and non-objects are rejected."""

    def _no_constants(name: str) -> Any:
        raise RecordInvalidError(f"non-JSON constant {name}")

    try:
        obj = json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError):
        raise RecordInvalidError("not valid JSON") from None
    if not isinstance(obj, dict):
        raise RecordInvalidError("not a JSON object")
    return obj


def parse_record(data: bytes | str) -> dict[str, Any]:
    """Parse and validate one imported record (e.g. a line of an export)."""
    obj = parse_json_object(data)
    validate_record(obj)
    return obj
