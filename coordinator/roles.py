"""Role-binding administration: who holds which role, for which site or org, when."""

from __future__ import annotations

from coordinator.authorization import CoordinatorAuthorizer
from coordinator.store import BindingRow, CoordinatorStore, now_s
from insitu._proto.v1 import admin_pb2
from insitu.authz import RoleBinding
from insitu.errors import ErrorCode, InsituError
from insitu.identity.spiffe import SpiffeId

__all__ = ["binding_from_proto", "grant_role", "list_roles", "revoke_role"]


def binding_from_proto(b: admin_pb2.RoleBinding, trust_domain: str) -> RoleBinding:
    """Validate a binding from the wire (identity, role, scope, window)."""
    sid = SpiffeId.parse(b.principal)
    if sid.trust_domain != trust_domain:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "principal is of another trust domain")
    if b.not_before_unix < 0 or b.not_after_unix < 0:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "validity bounds must be >= 0")
    return RoleBinding(
        principal=sid.uri,
        role=b.role,
        site=b.site or None,
        org=b.org or None,
        not_before=b.not_before_unix or None,
        not_after=b.not_after_unix or None,
    )


def _to_proto(r: BindingRow) -> admin_pb2.RoleBinding:
    return admin_pb2.RoleBinding(
        principal=r.principal,
        role=r.role,
        site=r.site,
        org=r.org,
        not_before_unix=r.not_before or 0,
        not_after_unix=r.not_after or 0,
        granted_by=r.granted_by,
    )


def grant_role(
    store: CoordinatorStore,
    authz: CoordinatorAuthorizer,
    b: admin_pb2.RoleBinding,
    trust_domain: str,
    granted_by: str,
) -> admin_pb2.RoleBinding:
    rb = binding_from_proto(b, trust_domain)
    if rb.principal == granted_by:
        raise InsituError(ErrorCode.PERMISSION_DENIED, "nobody may grant themselves a role")
    row = BindingRow(
        rb.principal, rb.role, rb.site or "", rb.org or "", rb.not_before, rb.not_after, granted_by
    )
    store.grant(row, now=now_s())
    authz.invalidate()
    return _to_proto(row)


def revoke_role(
    store: CoordinatorStore,
    authz: CoordinatorAuthorizer,
    b: admin_pb2.RoleBinding,
    trust_domain: str,
) -> bool:
    rb = binding_from_proto(b, trust_domain)
    removed = store.revoke_binding(rb.principal, rb.role, rb.site or "", rb.org or "")
    authz.invalidate()
    if not removed:
        raise InsituError(ErrorCode.NOT_FOUND, "no such role binding")
    return removed


def list_roles(store: CoordinatorStore, principal: str) -> list[admin_pb2.RoleBinding]:
    if principal:
        SpiffeId.parse(principal)
    return [_to_proto(r) for r in store.bindings_of(principal or None)]
