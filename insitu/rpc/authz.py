"""Authorization slot of the chain. Default deny: a method without a rule is refused.

The transport-level gate (which identity kinds may call a method) always applies; the
pluggable :class:`Authorizer` then decides on principal, action and resource.
"""

from __future__ import annotations

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


class Authorizer(Protocol):
    def authorize(
        self, principal: Principal, action: str, resource: Resource, context: dict[str, Any]
    ) -> AuthzDecision: ...


class AuthzLayer(Layer):
    """Refuses calls the method table or the authorizer does not allow."""

    def __init__(
        self, authorizer: Authorizer | None, *, public_methods: frozenset[str] = frozenset()
    ) -> None:
        self.authorizer = authorizer
        self.public_methods = public_methods

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
        if principal.kind not in rule.kinds:
            decision = AuthzDecision(
                False, f"{principal.kind.value} identities may not call {rule.action}"
            )
        elif self.authorizer is None:
            decision = AuthzDecision(True, "transport rule")
        else:
            decision = self.authorizer.authorize(principal, rule.action, resource, {})
        call.attributes["authz"] = decision
        if not decision.allowed:
            raise InsituError(ErrorCode.PERMISSION_DENIED, decision.reason or rule.action)


def _is_msg(obj: Any) -> bool:
    return hasattr(obj, "DESCRIPTOR")
