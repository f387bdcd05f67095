"""The audit slot of the chain, and the one place RPC facts become audit records.

Fail closed: the request record is appended (durably) before the handler runs; if that
append fails the call fails with UNAVAILABLE and the handler never runs. The outcome is
appended after, in ``finally``. Denials by authn or authz get their own records. Records
carry identities, actions, resources, outcomes and the ids that handlers ``annotate``,
never request payloads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from insitu.audit import AuditLog, AuditRecord, EventType, Outcome
from insitu.audit.record import Actor, AuthzInfo, Origin
from insitu.audit.record import Resource as AuditResource
from insitu.errors import ErrorCode, InsituError
from insitu.identity.principal import Principal
from insitu.rpc.chain import Call, Layer
from insitu.telemetry.metrics import process_metrics
from insitu.telemetry.tracing import current_trace_id

__all__ = ["AuditLayer", "RpcAuditor"]

_MAX_ATTR = 256


def _attrs(notes: Mapping[str, Any]) -> dict[str, str | int | bool]:
    out: dict[str, str | int | bool] = {}
    for k, v in notes.items():
        out[str(k)[:64]] = v if isinstance(v, bool | int) else str(v)[:_MAX_ATTR]
    return out


class RpcAuditor:
    """Builds and appends the records of RPCs and other domain events of one process."""

    def __init__(self, log: AuditLog, node: str) -> None:
        self.log = log
        self.node = node

    def _append(self, record: AuditRecord) -> None:
        with process_metrics().audit_append_timer():
            self.log.append(record)

    def _actor(self, principal: Principal | None, role: str | None = None) -> Actor:
        if principal is None:
            return Actor(spiffe_id=None, auth_method="none")
        site = principal.name if principal.kind.value == "site" else None
        return Actor(
            spiffe_id=principal.spiffe_id.uri,
            auth_method=principal.auth_method,
            cert_fingerprint=principal.cert_fingerprint,
            role=role,
            site=site,
        )

    def _resource(self, call: Call) -> AuditResource:
        r = call.attributes.get("resource")
        if r is None:
            return AuditResource("rpc", call.method)
        return AuditResource(r.type, r.id or "-")

    def _authz(self, call: Call) -> AuthzInfo | None:
        d = call.attributes.get("authz")
        if d is None:
            return None
        return AuthzInfo(
            "allow" if d.allowed else "deny", d.policy_hash or None, tuple(d.policy_ids)
        )

    def record_call(
        self,
        call: Call,
        event: str,
        outcome: str,
        reason: str | None = None,
        *,
        break_glass: bool = False,
    ) -> None:
        rule = call.attributes.get("rule")
        self._append(
            AuditRecord(
                event_type=event,
                actor=self._actor(call.attributes.get("principal")),
                action=rule.action if rule is not None else call.method,
                resource=self._resource(call),
                outcome=outcome,
                origin=Origin(node=self.node, peer=call.peer),
                reason_code=reason,
                correlation_id=call.correlation_id,
                trace_id=call.attributes.get("trace_id"),
                authz=self._authz(call),
                break_glass=break_glass,
                attrs=_attrs({"method": call.method, **call.attributes.get("notes", {})}),
            )
        )

    def event(
        self,
        event: str,
        action: str,
        resource: tuple[str, str],
        *,
        outcome: str = Outcome.SUCCESS,
        principal: Principal | None = None,
        reason: str | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """A domain event outside the RPC path (a round, a release, a rotation)."""
        self._append(
            AuditRecord(
                event_type=event,
                actor=self._actor(principal),
                action=action,
                resource=AuditResource(*resource),
                outcome=outcome,
                origin=Origin(node=self.node),
                reason_code=reason,
                attrs=_attrs(attrs or {}),
                trace_id=current_trace_id(),
            )
        )


def _outcome_of(exc: BaseException | None) -> tuple[str, str | None]:
    if exc is None:
        return Outcome.SUCCESS, None
    if isinstance(exc, InsituError):
        denied = exc.code in (
            ErrorCode.PERMISSION_DENIED,
            ErrorCode.UNAUTHENTICATED,
            ErrorCode.CERT_REVOKED,
            ErrorCode.SITE_REVOKED,
        )
        return (Outcome.DENIED if denied else Outcome.FAILURE), exc.code.value
    return Outcome.FAILURE, "internal"


class AuditLayer(Layer):
    """Append before (gate) and after (outcome) every call that passed authz."""

    def __init__(self, auditor: RpcAuditor) -> None:
        self.auditor = auditor

    def around(self, call: Call, proceed: Callable[[], Any]) -> Any:
        if call.response_streaming:
            return self._stream(call, proceed)
        self.auditor.record_call(call, EventType.RPC_REQUEST, Outcome.SUCCESS, "received")
        exc: BaseException | None = None
        try:
            return proceed()
        except BaseException as e:
            exc = e
            raise
        finally:
            self._after(call, exc)

    def _stream(self, call: Call, proceed: Callable[[], Any]) -> Iterator[Any]:
        self.auditor.record_call(call, EventType.RPC_REQUEST, Outcome.SUCCESS, "received")
        exc: BaseException | None = None
        try:
            yield from proceed()
        except BaseException as e:
            exc = e
            raise
        finally:
            self._after(call, exc)

    def _after(self, call: Call, exc: BaseException | None) -> None:
        outcome, reason = _outcome_of(exc)
        if isinstance(exc, GeneratorExit):
            outcome, reason = Outcome.FAILURE, "cancelled"
        self.auditor.record_call(call, EventType.RPC_OUTCOME, outcome, reason)
