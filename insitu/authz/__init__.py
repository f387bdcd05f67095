"""Cedar authorization: the policy engine, the principal/action/resource model, and the
policy test table runner.

Example::

    from insitu.authz import AuthzRequest, EntityRef, PolicyEngine, RoleBinding

    engine = PolicyEngine("policies/rbac")             # parse + validate once
    alice = "spiffe://demo.insitu/user/alice"
    d = engine.authorize(AuthzRequest(
        principal=alice,
        bindings=[RoleBinding(alice, "federation_admin")],
        action="site.revoke",
        resource=EntityRef("Site", "hospital-b"),
    ))
    assert d.allowed and d.policy_ids == ("federation_admin.manage_federation",)
    old_hash, new_hash = engine.reload()                # atomic; a bad set raises
"""

from insitu.authz.bundle import SCHEMA_FILE, PolicyBundle, load_bundle, policy_set_hash
from insitu.authz.engine import Decision, PolicyEngine
from insitu.authz.model import (
    ENTITY_TYPES,
    ROLE_SCOPES,
    AuthzRequest,
    EntityRef,
    Resource,
    RoleBinding,
    build_cedar_input,
)
from insitu.authz.policytest import (
    CaseFailure,
    CheckReport,
    PolicyCase,
    check_policies,
    load_cases,
    run_case,
)

__all__ = [
    "ENTITY_TYPES",
    "ROLE_SCOPES",
    "SCHEMA_FILE",
    "AuthzRequest",
    "CaseFailure",
    "CheckReport",
    "Decision",
    "EntityRef",
    "PolicyBundle",
    "PolicyCase",
    "PolicyEngine",
    "Resource",
    "RoleBinding",
    "build_cedar_input",
    "check_policies",
    "load_bundle",
    "load_cases",
    "policy_set_hash",
    "run_case",
]
