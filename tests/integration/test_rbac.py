"""Issue #4 at the coordinator: Cedar on every call, decisions audited with the policy
hash, role bindings managed over audited RPCs, atomic reload that keeps the old set."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from coordinator.settings import CoordinatorSettings, default_policy_dir
from insitu.keys import KeyService
from insitu.sdk import InvalidArgument, PermissionDenied
from insitu.sdk.errors import FailedPrecondition
from tests.integration.conftest import RunningCoordinator
from tests.integration.federation import user_client


def _records(rc: RunningCoordinator, event: str) -> list[dict[str, object]]:
    store = rc.coordinator.audit_log.store
    out = []
    for e in store.entries():
        if e.data and f'"{event}"'.encode() in e.data:
            rec = json.loads(e.data)
            if rec["event_type"] == event:
                out.append(rec)
    return out


@pytest.fixture
def rc(
    make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
    coordinator_settings: CoordinatorSettings,
    tmp_path: Path,
) -> RunningCoordinator:
    pol = tmp_path / "policies"
    shutil.copytree(default_policy_dir(), pol)
    return make_coordinator(replace(coordinator_settings, policy_dir=pol))


def test_denials_are_audited_with_the_policy_hash(
    rc: RunningCoordinator, key_service: KeyService, tmp_path: Path
) -> None:
    with user_client(rc, key_service, "mallory", tmp_path / "m") as mallory:
        with pytest.raises(PermissionDenied):
            mallory.list_sites()
        with pytest.raises(PermissionDenied):
            mallory.create_join_token("hospital-x", 600)
    denied = [r for r in _records(rc, "authz.decision") if r["outcome"] == "denied"]
    assert len(denied) >= 2
    for r in denied:
        assert r["actor"]["spiffe_id"].endswith("/user/mallory")
        assert r["authz"]["decision"] == "deny"
        assert r["authz"]["policy_hash"] == rc.coordinator.engine.policy_hash
    # allowed admin calls carry the determining policy id in their request record
    with rc.admin() as admin:
        admin.list_sites()
    allowed = [r for r in _records(rc, "rpc.request") if r["action"] == "site.list"]
    assert allowed and "federation_admin.manage_federation" in allowed[-1]["authz"]["policy_ids"]


def test_role_bindings_are_managed_authorized_and_audited(
    rc: RunningCoordinator, key_service: KeyService, tmp_path: Path
) -> None:
    td = rc.settings.trust_domain
    alice = f"spiffe://{td}/user/alice"
    with rc.admin() as admin:
        admin.grant_role(alice, "site_admin", site="hospital-a")
        assert [b.role for b in admin.list_roles(alice)] == ["site_admin"]
        with pytest.raises(InvalidArgument):
            admin.grant_role(alice, "site_admin")  # site-scoped role without a site
        with pytest.raises(InvalidArgument):
            admin.grant_role(alice, "overlord")
        with pytest.raises(InvalidArgument):
            admin.grant_role(f"spiffe://{td}/site/hospital-a", "auditor")
        with pytest.raises(InvalidArgument):
            admin.grant_role("spiffe://other.td/user/alice", "auditor")
    with user_client(rc, key_service, "alice", tmp_path / "a") as alice_c:
        # a site_admin may not escalate to federation_admin, nor grant herself anything
        with pytest.raises(PermissionDenied):
            alice_c.grant_role(f"spiffe://{td}/user/bob", "federation_admin")
        with pytest.raises(PermissionDenied):
            alice_c.grant_role(alice, "data_steward", site="hospital-a")
        with pytest.raises(PermissionDenied):
            alice_c.revoke_site("hospital-b")
    with rc.admin() as admin:
        assert admin.revoke_role(alice, "site_admin", site="hospital-a")
        assert admin.list_roles(alice) == []
    grants = [r for r in _records(rc, "rpc.outcome") if r["action"] == "role.grant"]
    assert any(r["outcome"] == "success" for r in grants)
    rejected = [r for r in _records(rc, "rpc.rejected") if r["action"] == "role.grant"]
    assert len(rejected) == 4 and all(r["reason_code"] == "invalid_argument" for r in rejected)
    denied = [r for r in _records(rc, "authz.decision") if r["action"] == "role.grant"]
    assert len(denied) == 2 and all(r["actor"]["spiffe_id"] == alice for r in denied)


def test_bad_policy_reload_is_refused_logged_and_old_set_stays(rc: RunningCoordinator) -> None:
    pol = rc.coordinator.policy_dir
    before = rc.coordinator.engine.policy_hash
    (pol / "broken.cedar").write_text('@id("x") permit (principal, action, resource) when { ;')
    with rc.admin() as admin:
        with pytest.raises(FailedPrecondition):
            admin.reload_policy()
        assert admin.list_sites() == []  # the old set still authorizes the admin
    assert rc.coordinator.engine.policy_hash == before
    (pol / "broken.cedar").write_text(
        '@id("x.bad") permit (principal, action == Insitu::Action::"no.such", resource);'
    )
    with rc.admin() as admin, pytest.raises(FailedPrecondition):
        admin.reload_policy()
    refusals = [r for r in _records(rc, "policy.reload") if r["outcome"] == "failure"]
    assert len(refusals) == 2 and refusals[0]["attrs"]["old_hash"] == before
    (pol / "broken.cedar").unlink()
    (pol / "extra.cedar").write_text(
        '@id("extra.none") forbid (principal, action == Insitu::Action::"health.check", '
        "resource) when { false };"
    )
    with rc.admin() as admin:
        old, new = admin.reload_policy()
    assert old == before and new != before == old
    ok = [r for r in _records(rc, "policy.reload") if r["outcome"] == "success"]
    assert ok[-1]["attrs"]["new_hash"] == new


def test_auditor_cannot_read_models_or_submit_jobs(
    rc: RunningCoordinator, key_service: KeyService, tmp_path: Path
) -> None:
    td = rc.settings.trust_domain
    with rc.admin() as admin:
        admin.grant_role(f"spiffe://{td}/user/quinn", "auditor")
    with user_client(rc, key_service, "quinn", tmp_path / "q") as quinn:
        assert quinn.list_models() == []
        with pytest.raises(PermissionDenied) as denied:
            quinn.submit_job("insitu.apps.breast_cancer", {"hospital-a": "bcw"}, rounds=1)
    # The caller learns the action was refused, never which policy refused it (#13); the
    # determining policy id is in the audit record for the auditor.
    assert denied.value.details == "permission denied: job.submit is not permitted"
    refused = [r for r in _records(rc, "authz.decision")
               if r["outcome"] == "denied" and r["actor"]["spiffe_id"].endswith("/user/quinn")]
    assert refused and refused[-1]["authz"]["decision"] == "deny", refused
