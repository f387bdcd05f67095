"""The coordinator's authorizer until Cedar policies (issue #4) take over: site
identities act only on their own session; admin actions need a federation_admin
role binding, held in the coordinator store or granted by `insitu admin bootstrap`
through Vault KV (which only Vault-privileged operators can write)."""

from __future__ import annotations

import threading
import time
from typing import Any

from coordinator.store import CoordinatorStore
from insitu.identity.admin_bootstrap import BOOTSTRAP_KV_PREFIX
from insitu.identity.principal import Principal
from insitu.identity.spiffe import IdentityKind
from insitu.keys import KeyService
from insitu.rpc.authz import AuthzDecision
from insitu.rpc.methods import Resource

__all__ = ["RoleAuthorizer"]

ADMIN_ACTIONS = frozenset({"token.create", "site.list", "site.get", "site.revoke"})
SITE_ACTIONS = frozenset({"session.connect", "session.renew"})
_CACHE_S = 5.0


class RoleAuthorizer:
    def __init__(self, store: CoordinatorStore, keys: KeyService) -> None:
        self.store = store
        self.keys = keys
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}

    def roles_of(self, principal: Principal) -> frozenset[str]:
        key = principal.spiffe_id.uri
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit and now - hit[0] < _CACHE_S:
                return hit[1]
        roles = set(self.store.roles_of(key, now=int(time.time())))
        if principal.kind is IdentityKind.USER:
            record = self.keys.kv_get(BOOTSTRAP_KV_PREFIX + principal.name)
            if (
                record
                and record.get("spiffe_id") == key
                and record.get("cert_serial") == f"{principal.cert_serial:x}"
            ):
                roles.add("federation_admin")
        frozen = frozenset(roles)
        with self._lock:
            self._cache[key] = (now, frozen)
        return frozen

    def authorize(
        self, principal: Principal, action: str, resource: Resource, context: dict[str, Any]
    ) -> AuthzDecision:
        if action == "health.check":
            return AuthzDecision(True, "any authenticated identity may check health")
        if action in SITE_ACTIONS:
            ok = principal.kind is IdentityKind.SITE
            return AuthzDecision(ok, "site session" if ok else "only sites hold sessions")
        if action in ADMIN_ACTIONS:
            if principal.kind is not IdentityKind.USER:
                return AuthzDecision(False, "admin actions need a user identity")
            if "federation_admin" in self.roles_of(principal):
                return AuthzDecision(True, "federation_admin")
            return AuthzDecision(False, f"{action} needs the federation_admin role")
        return AuthzDecision(False, f"no rule allows {action}")
