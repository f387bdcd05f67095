"""Cedar authorization at the coordinator: who holds which role (the role-binding store
plus the bootstrap admin recorded in Vault KV), and the attribute-rich resources the
policies reason about (jobs, models, sites). One :meth:`authorize` for the interceptor
and for handlers' domain checks alike; policies are parsed once by the engine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from coordinator.store import CoordinatorStore
from insitu.authz import AuthzRequest, Decision, EntityRef, PolicyEngine, Resource, RoleBinding
from insitu.errors import ErrorCode, InsituError
from insitu.identity.admin_bootstrap import BOOTSTRAP_KV_PREFIX
from insitu.identity.principal import Principal
from insitu.identity.spiffe import IdentityKind
from insitu.keys import KeyService
from insitu.rpc.methods import Resource as MethodResource

__all__ = ["CoordinatorAuthorizer", "ResourceResolver"]

_CACHE_S = 2.0
_DECISION_TTL_S = 1.0
# Builds the policy resource for an action from (principal, bare resource, request).
ResourceResolver = Callable[[Principal, MethodResource, Any], Resource | EntityRef]


class CoordinatorAuthorizer:
    def __init__(
        self, engine: PolicyEngine, store: CoordinatorStore, keys: KeyService, trust_domain: str
    ) -> None:
        self.trust_domain = trust_domain
        self.engine = engine
        self.store = store
        self.keys = keys
        self.resolvers: dict[str, ResourceResolver] = {}
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, tuple[RoleBinding, ...]]] = {}
        # Decisions on plain entity references (sites, the federation) for the same caller
        # certificate repeat often (health, list, get); reuse them briefly. Keyed by policy
        # hash, so a reload never reuses a decision of the old set; role changes clear it.
        self._decisions: dict[tuple[str, int, str, str, str, str], tuple[float, Decision]] = {}
        self.on_bootstrap_seen: Callable[[str], None] | None = None
        self._bootstraps_seen: set[str] = set()

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()
            self._decisions.clear()

    def bindings(self, principal: Principal) -> tuple[RoleBinding, ...]:
        uri = principal.spiffe_id.uri
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(uri)
            if hit and now - hit[0] < _CACHE_S:
                return hit[1]
        out = [
            RoleBinding(
                r.principal, r.role, r.site or None, r.org or None, r.not_before, r.not_after
            )
            for r in self.store.bindings_of(uri)
        ]
        if principal.kind is IdentityKind.USER:
            rec = self.keys.kv_get(BOOTSTRAP_KV_PREFIX + principal.name)
            if (
                rec
                and rec.get("spiffe_id") == uri
                and rec.get("cert_serial") == f"{principal.cert_serial:x}"
            ):
                out.append(RoleBinding(uri, "federation_admin"))
                if uri not in self._bootstraps_seen:
                    self._bootstraps_seen.add(uri)
                    if self.on_bootstrap_seen:
                        self.on_bootstrap_seen(uri)
        frozen = tuple(out)
        with self._lock:
            self._cache[uri] = (now, frozen)
        return frozen

    def org_of(self, principal: Principal, role: str = "ml_engineer") -> str | None:
        for b in self.bindings(principal):
            if b.role == role and b.org:
                return b.org
        return None

    def resolve(
        self, principal: Principal, action: str, resource: MethodResource, request: Any
    ) -> Resource | EntityRef:
        resolver = self.resolvers.get(action)
        if resolver is not None:
            return resolver(principal, resource, request)
        if action in ("session.connect", "session.renew"):
            return EntityRef("Site", principal.name)
        if resource.type == "Site":
            return EntityRef("Site", resource.id or "-")
        return EntityRef(resource.type, resource.id or resource.type.lower())

    def authorize(
        self, principal: Principal, action: str, resource: MethodResource, context: dict[str, Any]
    ) -> Decision:
        try:
            res = self.resolve(principal, action, resource, context.get("request"))
        except InsituError as e:
            if e.code in (ErrorCode.NOT_FOUND, ErrorCode.INVALID_ARGUMENT):
                raise  # a precise answer about the request, not a policy decision
            return _deny(e.detail)
        ctx: dict[str, Any] = {"now": int(time.time())}
        key = None
        if context.get("emergency_access"):
            ctx["emergency_access"] = True
            ctx["reason"] = context.get("reason", "")
        elif isinstance(res, EntityRef):
            key = (principal.spiffe_id.uri, principal.cert_serial, action, res.type, res.id,
                   self.engine.policy_hash)
            with self._lock:
                hit = self._decisions.get(key)
            if hit is not None and time.monotonic() < hit[0]:
                return hit[1]
        decision = self.engine.authorize(
            AuthzRequest(
                principal=principal,
                bindings=self.bindings(principal),
                action=action,
                resource=res,
                context=ctx,
            )
        )
        if key is not None:
            with self._lock:
                if len(self._decisions) > 4096:
                    self._decisions.clear()
                self._decisions[key] = (time.monotonic() + _DECISION_TTL_S, decision)
        return decision

    def check(self, principal: Principal, action: str, resource: Resource | EntityRef) -> bool:
        """Domain check inside a handler (e.g. filtering a list)."""
        d = self.engine.authorize(
            AuthzRequest(
                principal=principal,
                bindings=self.bindings(principal),
                action=action,
                resource=resource,
                context={"now": int(time.time())},
            )
        )
        return bool(d.allowed)


def _deny(reason: str) -> Decision:
    return Decision(
        allowed=False,
        policy_ids=(),
        policy_hash="",
        reasons=(reason,),
        errors=(),
        break_glass=False,
    )
