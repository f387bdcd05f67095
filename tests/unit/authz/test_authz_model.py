"""The request model: binding validation and the entity slice the engine evaluates."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from insitu.authz import AuthzRequest, EntityRef, Resource, RoleBinding, build_cedar_input
from insitu.errors import ErrorCode, InsituError
from insitu.identity.principal import Principal
from insitu.identity.spiffe import SpiffeId

from ._support import ALICE, NOW, SITE_A

BOB = "spiffe://demo.insitu/user/bob"


def _by_uid(entities: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{e['uid']['type']}::{e['uid']['id']}": e for e in entities}


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"principal": ALICE, "role": "root"}, "unknown role"),
        ({"principal": ALICE, "role": "site_admin"}, "site scope"),
        ({"principal": ALICE, "role": "federation_admin", "site": "hospital-a"}, "site scope"),
        ({"principal": ALICE, "role": "ml_engineer"}, "org scope"),
        ({"principal": ALICE, "role": "auditor", "not_before": 5, "not_after": 5}, "empty"),
        ({"principal": SITE_A, "role": "auditor"}, "site identities"),
        ({"principal": "alice", "role": "auditor"}, "spiffe"),
        ({"principal": ALICE, "role": "site_admin", "site": "Hospital A"}, "site must be"),
    ],
)
def test_bad_bindings_are_refused(kwargs: dict[str, Any], why: str) -> None:
    with pytest.raises(InsituError) as ei:
        RoleBinding(**kwargs)
    assert ei.value.code is ErrorCode.INVALID_ARGUMENT
    assert why in ei.value.detail


def test_binding_role_ids_and_windows() -> None:
    assert (
        RoleBinding(ALICE, "site_admin", site="hospital-a").role_id == "site_admin@site:hospital-a"
    )
    assert RoleBinding(ALICE, "ml_engineer", org="acme").role_id == "ml_engineer@org:acme"
    b = RoleBinding(ALICE, "auditor", not_before=10, not_after=20)
    assert b.role_id == "auditor"
    assert [b.valid_at(t) for t in (9, 10, 19, 20)] == [False, True, True, False]


def test_slice_for_a_site_scoped_user() -> None:
    req = AuthzRequest(
        principal=ALICE,
        bindings=[
            RoleBinding(ALICE, "site_admin", site="hospital-a", not_after=NOW + 60),
            RoleBinding(BOB, "federation_admin"),  # someone else's: ignored
        ],
        action="model.deploy",
        resource=Resource("ModelVersion", "v1", {"model": EntityRef("Model", "m"),
                                                 "site": EntityRef("Site", "hospital-b")}),
        context={"now": NOW},
    )  # fmt: skip
    cin = build_cedar_input(req)
    ents = _by_uid(cin.entities)
    user = ents["Insitu::User::alice"]
    assert user["parents"] == [{"type": "Insitu::Role", "id": "site_admin@site:hospital-a"}]
    assert user["attrs"]["uri"] == ALICE
    assert user["attrs"]["site"] == {"__entity": {"type": "Insitu::Site", "id": "hospital-a"}}
    role = ents["Insitu::Role::site_admin@site:hospital-a"]["attrs"]
    assert role["name"] == "site_admin" and role["not_after"] == NOW + 60
    assert "Insitu::Role::federation_admin" not in ents
    # Both sites exist with derived roles, so policies can compare them.
    site_b = ents["Insitu::Site::hospital-b"]["attrs"]["roles"]
    assert site_b["site_admin"] == {
        "__entity": {"type": "Insitu::Role", "id": "site_admin@site:hospital-b"}
    }
    assert "Insitu::Site::hospital-a" in ents
    assert cin.request["context"] == {"now": NOW, "emergency_access": False, "reason": ""}
    assert cin.request["action"] == {"type": "Insitu::Action", "id": "model.deploy"}


def test_users_with_bindings_on_several_sites_have_no_home_site() -> None:
    req = AuthzRequest(
        ALICE,
        [RoleBinding(ALICE, "site_admin", site="hospital-a"), RoleBinding(ALICE, "auditor")],
        "site.list",
        EntityRef("Federation", "federation"),
    )
    assert (
        "site"
        not in _by_uid(build_cedar_input(req, default_now=NOW).entities)["Insitu::User::alice"][
            "attrs"
        ]
    )


def test_site_roles_cannot_be_supplied_by_the_caller() -> None:
    hostile = Resource(
        "Site", "hospital-b",
        {"org": EntityRef("Org", "x"),
         "roles": {"site_admin": EntityRef("Role", "inference_client")}},
    )  # fmt: skip
    req = AuthzRequest(ALICE, [], "site.get", hostile, {"now": NOW})
    site = _by_uid(build_cedar_input(req).entities)["Insitu::Site::hospital-b"]
    assert site["attrs"]["roles"]["site_admin"]["__entity"]["id"] == "site_admin@site:hospital-b"
    assert site["attrs"]["org"] == {"__entity": {"type": "Insitu::Org", "id": "x"}}


@pytest.mark.parametrize("derived", ["Role", "User", "Service"])
def test_derived_entity_types_cannot_be_given(derived: str) -> None:
    req = AuthzRequest(ALICE, [], "site.list", Resource(derived, "x", {}), {"now": NOW})
    with pytest.raises(InsituError, match="derived"):
        build_cedar_input(req)


def test_conflicting_duplicates_are_refused_identical_ones_merged() -> None:
    d1 = Resource("Dataset", "d", {"site": EntityRef("Site", "a"), "purposes": ["x"]})
    d2 = Resource("Dataset", "d", {"site": EntityRef("Site", "b"), "purposes": ["x"]})
    ok = AuthzRequest(ALICE, [], "dataset.manage", d1, {"now": NOW}, related=[d1])
    assert len([e for e in build_cedar_input(ok).entities if e["uid"]["id"] == "d"]) == 1
    bad = AuthzRequest(ALICE, [], "dataset.manage", d1, {"now": NOW}, related=[d2])
    with pytest.raises(InsituError, match="differently"):
        build_cedar_input(bad)


def test_nested_resources_and_context_entities_join_the_slice() -> None:
    ds = Resource("Dataset", "d", {"site": EntityRef("Site", "hospital-a"), "purposes": {"x"}})
    job = Resource("Job", "j", {"owner": EntityRef("User", "bob"), "org": EntityRef("Org", "acme"),
                                "purpose": "x", "approved_datasets": [ds], "sites": []})  # fmt: skip
    req = AuthzRequest(SITE_A, [], "features.read_raw", ds.ref, {"now": NOW, "job": job})
    cin = build_cedar_input(req)
    ents = _by_uid(cin.entities)
    assert {"Insitu::Dataset::d", "Insitu::Job::j", "Insitu::Org::acme"} <= set(ents)
    assert ents["Insitu::Dataset::d"]["attrs"]["purposes"] == ["x"]
    assert cin.request["context"]["job"] == {"__entity": {"type": "Insitu::Job", "id": "j"}}
    # The node's own Site entity doubles as its principal.
    assert cin.request["principal"] == {"type": "Insitu::Site", "id": "hospital-a"}
    assert "roles" in ents["Insitu::Site::hospital-a"]["attrs"]


def test_principal_forms_and_break_glass_reason_normalised() -> None:
    sid = SpiffeId.parse(ALICE)
    p = Principal(sid, "00" * 32, 1, datetime(2030, 1, 1, tzinfo=UTC))
    ctx = {"now": NOW, "emergency_access": True, "reason": "  INC-1  "}
    for who in (p, sid, ALICE):
        req = AuthzRequest(who, [], "site.list", EntityRef("Federation", "f"), ctx)
        cin = build_cedar_input(req)
        assert cin.request["principal"] == {"type": "Insitu::User", "id": "alice"}
        assert cin.request["context"]["reason"] == "INC-1"
        assert req.break_glass


@pytest.mark.parametrize(
    "ctx", [{"now": "1"}, {"now": True}, {"emergency_access": "yes"}, {"reason": 3}]
)
def test_bad_context_values_are_refused(ctx: dict[str, Any]) -> None:
    req = AuthzRequest(ALICE, [], "site.list", EntityRef("Federation", "f"), ctx)
    with pytest.raises(InsituError):
        build_cedar_input(req)


def test_duplicate_bindings_keep_the_one_valid_now() -> None:
    req = AuthzRequest(
        ALICE,
        [
            RoleBinding(ALICE, "auditor", not_after=NOW - 1),
            RoleBinding(ALICE, "auditor", not_before=NOW),
        ],
        "audit.read",
        EntityRef("AuditLog", "coordinator"),
        {"now": NOW},
    )
    role = _by_uid(build_cedar_input(req).entities)["Insitu::Role::auditor"]["attrs"]
    assert role["not_before"] == NOW
