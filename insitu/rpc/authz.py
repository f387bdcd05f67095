"""Authorization slot of the chain. Default deny: a method without a rule is refused.

The transport-level gate (which identity kinds may call a method) always applies; the
pluggable :class:`Authorizer` then decides on principal, action and resource.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from insitu.errors import ErrorCode, InsituError
from insitu.identity.principal import Principal
from insitu.rpc.chain import Call, Layer
from insitu.rpc.methods import MethodRule, Resource, rule_for

__all__ = ["Authorizer", "AuthzDecision", "AuthzLayer"]


@dataclass(frozen=True)
class AuthzDecision:
    allowed: bool
    reason: str = ""
    policy_hash: str = ""
    policy_ids: tuple[str, ...] = ()
    break_glass: bool = False


class DecisionLike(Protocol):
    @property
    def allowed(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def policy_hash(self) -> str: ...
    @property
    def policy_ids(self) -> tuple[str, ...]: ...
    @property
    def break_glass(self) -> bool: ...


class DenialRecorder(Protocol):
    def record_call(
        self,
        call: Call,
        event: str,
        outcome: str,
        reason: str | None = None,
        *,
        break_glass: bool = False,
    ) -> None: ...


class Authorizer(Protocol):
    def authorize(
        self, principal: Principal, action: str, resource: Resource, context: dict[str, Any]
    ) -> DecisionLike: ...


class AuthzLayer(Layer):
    """Refuses calls the method table or the authorizer does not allow."""

    def __init__(
        self,
        authorizer: Authorizer | None,
        *,
        public_methods: frozenset[str] = frozenset(),
        recorder: DenialRecorder | None = None,
    ) -> None:
        self.authorizer = authorizer
        self.public_methods = public_methods
        self.recorder = recorder

    def around(self, call: Call, proceed: Callable[[], Any]) -> Any:
        rule = rule_for(call.method)
        if rule is None:
            raise InsituError(ErrorCode.PERMISSION_DENIED, "method is not in the method table")
        call.attributes["rule"] = rule
        if call.method in self.public_methods:
            return proceed()
        principal: Principal = call.attributes["principal"]
        self.check(call, rule, principal)
        return proceed()

    def check(self, call: Call, rule: MethodRule, principal: Principal) -> None:
        # Client-streaming calls have no single request message to read a resource from.
        resource = rule.resource(call.request if _is_msg(call.request) else None)
        call.attributes["resource"] = resource
        decision: DecisionLike
        if principal.kind not in rule.kinds:
            decision = AuthzDecision(
                False, f"{principal.kind.value} identities may not call {rule.action}"
            )
        elif self.authorizer is None or rule.per_item:
            decision = AuthzDecision(True, "transport rule; items are authorized one by one")
        else:
            context: dict[str, Any] = {"request": call.request if _is_msg(call.request) else None}
            context.update(_break_glass(call))
            try:
                decision = self.authorizer.authorize(principal, rule.action, resource, context)
            except InsituError as e:
                # A malformed or unknown target: answered precisely, and still audited.
                if self.recorder is not None:
                    with contextlib.suppress(InsituError):
                        self.recorder.record_call(call, "rpc.rejected", "failure", e.code.value)
                raise
        call.attributes["authz"] = decision
        if decision.break_glass and self.recorder is not None:
            # Break-glass is always loudly audited, allowed or not, and must be durable.
            self.recorder.record_call(
                call,
                "break_glass",
                "success" if decision.allowed else "denied",
                "emergency_access",
                break_glass=True,
            )
        if not decision.allowed:
            if self.recorder is not None:
                with contextlib.suppress(InsituError):  # the call is refused either way
                    self.recorder.record_call(call, "authz.decision", "denied", "policy")
            # The caller learns what was refused, never which policy refused it or why (the
            # policy ids and reasons are in the audit record).
            raise InsituError(ErrorCode.PERMISSION_DENIED, f"{rule.action} is not permitted")


EMERGENCY_HEADER = "insitu-emergency-access"
REASON_HEADER = "insitu-emergency-reason"


def _break_glass(call: Call) -> dict[str, Any]:
    """Break-glass is asked for explicitly, per call, with a reason (gRPC metadata)."""
    md = dict(call.context.invocation_metadata() or ())
    if str(md.get(EMERGENCY_HEADER, "")).lower() != "true":
        return {}
    return {"emergency_access": True, "reason": str(md.get(REASON_HEADER, ""))[:512]}


def _is_msg(obj: Any) -> bool:
    return hasattr(obj, "DESCRIPTOR")
