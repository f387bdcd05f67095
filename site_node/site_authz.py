"""Authorization at a site, decided locally: the federation's Cedar policies (plus the
site's restrict-only local policies), with the role bindings, model grants and revoked
serials the coordinator syncs over the session. Until the first sync arrives,
revocation status is unknown and every call fails closed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from insitu._proto.v1 import session_pb2
from insitu.authz import AuthzRequest, Decision, EntityRef, PolicyEngine, Resource, RoleBinding
from insitu.errors import ErrorCode, InsituError
from insitu.identity.principal import Principal
from insitu.identity.spiffe import IdentityKind, SpiffeId
from insitu.rpc.methods import Resource as MethodResource

__all__ = ["SiteAuthState", "SiteAuthorizer"]


class SiteAuthState:
    """The latest AuthzSync from the coordinator (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sync: session_pb2.AuthzSync | None = None
        self._revoked: frozenset[int] = frozenset()

    def update(self, sync: session_pb2.AuthzSync) -> None:
        revoked = frozenset(int(s, 16) for s in sync.revoked_serials)
        with self._lock:
            self._sync = sync
            self._revoked = revoked

    def revoked(self) -> frozenset[int]:
        """For RevocationList: raises until the first sync (fail closed)."""
        with self._lock:
            if self._sync is None:
                raise InsituError(ErrorCode.UNAVAILABLE, "no revocation state from the coordinator")
            return self._revoked

    def bindings(self, uri: str) -> list[RoleBinding]:
        with self._lock:
            sync = self._sync
        if sync is None:
            return []
        out = []
        for b in sync.bindings:
            if b.principal == uri:
                out.append(
                    RoleBinding(
                        b.principal,
                        b.role,
                        b.site or None,
                        b.org or None,
                        b.not_before_unix or None,
                        b.not_after_unix or None,
                    )
                )
        return out

    def model(self, name: str) -> Resource:
        with self._lock:
            sync = self._sync
        if sync is None or name not in sync.model_owners:
            raise InsituError(ErrorCode.NOT_FOUND, f"model {name!r} is not known here")
        grantees = [SpiffeId.parse(g.principal) for g in sync.grants if g.model == name]
        owner = SpiffeId.parse(sync.model_owners[name])
        return Resource(
            "Model",
            name,
            {
                "owner": EntityRef("User", owner.name),
                "org": EntityRef("Org", "none"),
                "grantees": [
                    EntityRef("User", g.name) for g in grantees if g.kind is IdentityKind.USER
                ],
                "service_grantees": [
                    EntityRef("Service", g.name) for g in grantees if g.kind is IdentityKind.SERVICE
                ],
            },
        )


class SiteAuthorizer:
    def __init__(
        self,
        policy_dir: Path,
        local_dir: Path | None,
        trust_domain: str,
        state: SiteAuthState,
        site_id: str,
    ) -> None:
        self.engine = PolicyEngine.load_or_deny_all(
            policy_dir, local_dir, trust_domain=trust_domain
        )
        self.state = state
        self.site_id = site_id
        self.release_resource: Callable[[str, str], Resource] | None = None

    def _resource(
        self, action: str, resource: MethodResource, request: Any
    ) -> Resource | EntityRef:
        if action == "predict":
            return self.state.model(resource.id)
        if action == "features.approve":
            if self.release_resource is None or request is None:
                raise InsituError(ErrorCode.FAILED_PRECONDITION, "feature releases are off")
            return self.release_resource(request.dataset, request.job_id)
        if resource.type == "Federation":
            return EntityRef("Federation", "federation")
        return EntityRef(resource.type, resource.id or self.site_id)

    def authorize(
        self, principal: Principal, action: str, resource: MethodResource, context: dict[str, Any]
    ) -> Decision:
        try:
            res = self._resource(action, resource, context.get("request"))
        except InsituError as e:
            if e.code in (
                ErrorCode.NOT_FOUND,
                ErrorCode.INVALID_ARGUMENT,
                ErrorCode.FAILED_PRECONDITION,
            ):
                raise
            raise
        ctx: dict[str, Any] = {"now": int(time.time())}
        if context.get("emergency_access"):
            ctx.update(emergency_access=True, reason=context.get("reason", ""))
        return self.engine.authorize(
            AuthzRequest(
                principal=principal,
                bindings=self.state.bindings(principal.spiffe_id.uri),
                action=action,
                resource=res,
                context=ctx,
            )
        )

    def guard_model(self, principal: Principal, model: str) -> None:
        """Per-model check for streams (the interceptor sees no model on a client stream)."""
        d = self.authorize(principal, "predict", MethodResource("Model", model), {})
        if not d.allowed:
            raise InsituError(ErrorCode.PERMISSION_DENIED, d.reason or "predict")
