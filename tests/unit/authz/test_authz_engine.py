"""PolicyEngine: loading and refusing policy sets, atomic reload, default deny, decision
contents, parse-once evaluation, local policies that can only restrict."""

from __future__ import annotations

import builtins
import logging
import threading
import time
from pathlib import Path
from typing import Any

import cedarpy
import pytest

from insitu.authz import (
    SCHEMA_FILE,
    AuthzRequest,
    EntityRef,
    PolicyEngine,
    Resource,
    RoleBinding,
    policy_set_hash,
)
from insitu.errors import ErrorCode, InsituError

from ._support import ALICE, NOW, POLICY_DIR, ROOT, SITE_A

LIST_SITES = AuthzRequest(
    principal=ROOT,
    bindings=[RoleBinding(ROOT, "federation_admin")],
    action="site.list",
    resource=EntityRef("Federation", "federation"),
    context={"now": NOW},
)

# A local restriction a site might add: nobody lists sites from here.
LOCAL_FORBID = """
@id("local.no_site_listing")
forbid (principal, action == Insitu::Action::"site.list", resource);
"""


def _refused(fed: Path, local: Path | None = None) -> str:
    with pytest.raises(InsituError) as ei:
        PolicyEngine(fed, local)
    assert ei.value.code is ErrorCode.POLICY_INVALID
    return ei.value.detail


# --- loading ---------------------------------------------------------------------------


def test_shipped_set_loads_with_ids_and_hash() -> None:
    engine = PolicyEngine(POLICY_DIR)
    assert len(engine.policy_hash) == 64 and int(engine.policy_hash, 16) >= 0
    assert "guard.site_never_admin" in engine.policy_ids
    assert engine.deny_reason is None
    # Same files, same hash: the hash names the set, not the load.
    assert PolicyEngine(POLICY_DIR).policy_hash == engine.policy_hash


def test_syntax_error_is_refused_naming_the_file(policy_copy: Path) -> None:
    (policy_copy / "broken.cedar").write_text('@id("x.y") permit (principal, action resource);\n')
    assert "federation/broken.cedar: syntax error" in _refused(policy_copy)


def test_schema_violation_is_refused_naming_the_policy(policy_copy: Path) -> None:
    (policy_copy / "typo.cedar").write_text(
        '@id("typo.attr") permit (principal, action == Insitu::Action::"site.get", resource)\n'
        "when { resource.sitee == principal };\n"
    )
    why = _refused(policy_copy)
    assert "federation/typo.cedar" in why and "'typo.attr' violates the schema" in why


def test_unknown_action_is_a_schema_violation(policy_copy: Path) -> None:
    (policy_copy / "x.cedar").write_text(
        '@id("x.a") permit (principal, action == Insitu::Action::"site.nuke", resource);\n'
    )
    assert "violates the schema" in _refused(policy_copy)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("permit (principal, action, resource);", "needs an @id"),
        ('@id("Bad Id") permit (principal, action, resource);', "needs an @id"),
        ('@id("common.health_check") permit (principal, action, resource);', "already used"),
        ('@id("t.t") permit (principal == ?principal, action, resource);', "templates"),
    ],
)
def test_id_rules(policy_copy: Path, text: str, expected: str) -> None:
    (policy_copy / "zz.cedar").write_text(text + "\n")
    assert expected in _refused(policy_copy)


def test_bad_schema_is_refused(policy_copy: Path) -> None:
    (policy_copy / SCHEMA_FILE).write_text("namespace Insitu { entity ; }")
    assert SCHEMA_FILE in _refused(policy_copy)


def test_missing_directory_and_missing_schema_are_refused(tmp_path: Path) -> None:
    assert "does not exist" in _refused(tmp_path / "nope")
    assert "is missing" in _refused(tmp_path)


def test_empty_policy_set_is_refused(tmp_path: Path) -> None:
    (tmp_path / SCHEMA_FILE).write_bytes((POLICY_DIR / SCHEMA_FILE).read_bytes())
    assert "empty policy set denies everything" in _refused(tmp_path)
    (tmp_path / "comments.cedar").write_text("// nothing here\n")
    assert "empty policy set denies everything" in _refused(tmp_path)


def test_startup_with_invalid_set_denies_everything_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / SCHEMA_FILE).write_bytes((POLICY_DIR / SCHEMA_FILE).read_bytes())
    with caplog.at_level(logging.ERROR, logger="insitu.authz"):
        engine = PolicyEngine.load_or_deny_all(tmp_path)
    assert "empty policy set" in caplog.text
    assert engine.deny_reason is not None and engine.policy_hash == ""
    d = engine.authorize(LIST_SITES)
    assert not d.allowed and d.policy_ids == () and "empty policy set" in d.reason
    # Health checks too: deny-all means all.
    health = AuthzRequest(ROOT, [], "health.check", EntityRef("Federation", "federation"))
    assert not engine.authorize(health).allowed


def test_deny_all_engine_can_be_fixed_by_reload(tmp_path: Path) -> None:
    engine = PolicyEngine.deny_all("operator said so", POLICY_DIR)
    assert engine.authorize(LIST_SITES).reasons == ("operator said so",)
    old, new = engine.reload()
    assert old == "" and new == PolicyEngine(POLICY_DIR).policy_hash
    assert engine.authorize(LIST_SITES).allowed
    with pytest.raises(InsituError):
        PolicyEngine.deny_all("no dirs").reload()


# --- reload -----------------------------------------------------------------------------


def test_failed_reload_keeps_previous_policy_and_is_logged(
    policy_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = PolicyEngine(policy_copy)
    before = engine.policy_hash
    (policy_copy / "broken.cedar").write_text('@id("b.b") permit (principal action, resource);')
    with caplog.at_level(logging.ERROR, logger="insitu.authz"), pytest.raises(InsituError) as ei:
        engine.reload()
    assert ei.value.code is ErrorCode.POLICY_INVALID
    assert "reload refused" in caplog.text and before in caplog.text
    assert engine.policy_hash == before
    d = engine.authorize(LIST_SITES)
    assert d.allowed and d.policy_hash == before


def test_reload_swaps_and_reports_old_and_new_hash(
    policy_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = PolicyEngine(policy_copy)
    before = engine.policy_hash
    (policy_copy / "federation_admin.cedar").write_text(
        (policy_copy / "federation_admin.cedar")
        .read_text()
        .replace('Insitu::Action::"site.list",', "")
    )
    with caplog.at_level(logging.INFO, logger="insitu.authz"):
        old, new = engine.reload()
    assert (old, new) == (before, engine.policy_hash) and old != new
    assert f"{old} -> {new}" in caplog.text
    d = engine.authorize(LIST_SITES)
    assert not d.allowed and d.policy_hash == new


def test_hash_covers_names_contents_and_schema() -> None:
    base = {"schema.cedarschema": b"s", "federation/a.cedar": b"x"}
    h = policy_set_hash(base)
    assert h != policy_set_hash({**base, "federation/a.cedar": b"y"})
    assert h != policy_set_hash({"schema.cedarschema": b"s", "federation/b.cedar": b"x"})
    assert h != policy_set_hash({**base, "schema.cedarschema": b"t"})
    # Length prefixes: moving bytes between name and content changes the hash.
    assert policy_set_hash({"ab": b"c"}) != policy_set_hash({"a": b"bc"})


def test_decisions_during_reloads_use_one_consistent_snapshot(tmp_path: Path) -> None:
    """Readers racing a reloader always see a whole set: the decision matches its hash."""
    local = tmp_path / "local"
    local.mkdir()
    engine = PolicyEngine(POLICY_DIR, local)
    open_hash = engine.policy_hash
    (local / "deny.cedar").write_text(LOCAL_FORBID)
    engine.reload()
    closed_hash = engine.policy_hash
    (local / "deny.cedar").unlink()
    engine.reload()

    seen: list[tuple[bool, str]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            d = engine.authorize(LIST_SITES)
            seen.append((d.allowed, d.policy_hash))
            time.sleep(0)  # let the reloader have the GIL now and then

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(10):
        if i % 2 == 0:
            (local / "deny.cedar").write_text(LOCAL_FORBID)
        else:
            (local / "deny.cedar").unlink()
        engine.reload()
    stop.set()
    for t in threads:
        t.join()
    assert seen
    assert all((h == open_hash) == allowed for allowed, h in seen)
    assert {h for _, h in seen} <= {open_hash, closed_hash}


# --- local policies ---------------------------------------------------------------------


def test_local_permit_is_refused(tmp_path: Path) -> None:
    (tmp_path / "widen.cedar").write_text(
        '@id("local.widen")\npermit (principal, action == Insitu::Action::"predict", resource);\n'
    )
    why = _refused(POLICY_DIR, tmp_path)
    assert "local/widen.cedar" in why and "'local.widen' is a permit" in why
    assert "may only forbid" in why


def test_local_forbid_restricts(tmp_path: Path) -> None:
    assert PolicyEngine(POLICY_DIR).authorize(LIST_SITES).allowed
    (tmp_path / "restrict.cedar").write_text(LOCAL_FORBID)
    engine = PolicyEngine(POLICY_DIR, tmp_path)
    d = engine.authorize(LIST_SITES)
    assert not d.allowed and d.policy_ids == ("local.no_site_listing",)
    assert engine.policy_hash != PolicyEngine(POLICY_DIR).policy_hash


def test_local_policy_is_schema_checked_and_missing_local_dir_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.cedar").write_text(
        '@id("local.bad") forbid (principal, action, resource) when { resource.nope };\n'
    )
    assert "local/bad.cedar" in _refused(POLICY_DIR, tmp_path)
    assert "does not exist" in _refused(POLICY_DIR, tmp_path / "absent")


# --- decisions --------------------------------------------------------------------------


def test_allow_reports_determining_ids_hash_and_reason() -> None:
    engine = PolicyEngine(POLICY_DIR)
    d = engine.authorize(LIST_SITES)
    assert d.allowed
    assert d.policy_ids == ("federation_admin.manage_federation",)
    assert d.policy_hash == engine.policy_hash
    assert "federation_admin.manage_federation" in d.reason
    assert not d.break_glass and d.errors == ()


def test_forbid_and_default_deny_are_told_apart() -> None:
    engine = PolicyEngine(POLICY_DIR)
    node = AuthzRequest(SITE_A, [], "token.create", EntityRef("Site", "hospital-a"), {"now": NOW})
    d = engine.authorize(node)
    assert not d.allowed and d.policy_ids == ("guard.site_never_admin",)
    assert "forbidden by guard.site_never_admin" in d.reason
    nobody = AuthzRequest(ALICE, [], "site.list", EntityRef("Federation", "federation"))
    d = engine.authorize(nobody)
    assert not d.allowed and d.policy_ids == () and "default deny" in d.reason


def test_break_glass_flag_is_reported_even_when_denied() -> None:
    engine = PolicyEngine(POLICY_DIR)
    req = AuthzRequest(
        ROOT,
        [RoleBinding(ROOT, "federation_admin")],
        "site.list",
        EntityRef("Federation", "federation"),
        {"now": NOW, "emergency_access": True},
    )
    d = engine.authorize(req)
    assert d.break_glass and not d.allowed
    assert d.policy_ids == ("breakglass.reason_required",)


def test_malformed_requests_deny_instead_of_raising() -> None:
    engine = PolicyEngine(POLICY_DIR)
    bad_now = AuthzRequest(ROOT, [], "site.list", EntityRef("Federation", "f"), {"now": "soon"})
    d = engine.authorize(bad_now)
    assert not d.allowed and "malformed request" in d.reason
    bad_type = AuthzRequest(ROOT, [], "site.list", EntityRef("Galaxy", "f"))
    assert "unknown entity type" in engine.authorize(bad_type).reason
    # A context key the schema does not know is refused by Cedar's request validation.
    extra = AuthzRequest(
        ROOT,
        [RoleBinding(ROOT, "federation_admin")],
        "site.list",
        EntityRef("Federation", "federation"),
        {"now": NOW, "sneaky": True},
    )
    d = engine.authorize(extra)
    assert not d.allowed and d.errors
    # An attribute of the wrong type is refused without echoing the entity slice.
    wrong = AuthzRequest(
        ALICE,
        [RoleBinding(ALICE, "site_admin", site="hospital-a")],
        "dataset.manage",
        Resource("Dataset", "d", {"site": "hospital-a", "purposes": ["x"]}),
        {"now": NOW},
    )
    d = engine.authorize(wrong)
    assert not d.allowed and d.errors
    assert all("purposes" not in e for e in d.errors)


def test_evaluation_error_fails_closed(tmp_path: Path) -> None:
    """Cedar skips an erroring forbid (and would allow); the engine denies."""
    (tmp_path / "ghost.cedar").write_text(
        '@id("local.ghost")\n'
        'forbid (principal, action == Insitu::Action::"site.list", resource)\n'
        'when { Insitu::Dataset::"ghost".purposes.contains("x") };\n'
    )
    engine = PolicyEngine(POLICY_DIR, tmp_path)
    raw = cedarpy.is_authorized(
        {
            "principal": 'Insitu::User::"root"',
            "action": 'Insitu::Action::"site.list"',
            "resource": 'Insitu::Federation::"federation"',
            "context": {"now": NOW, "emergency_access": False, "reason": ""},
        },
        (POLICY_DIR / "federation_admin.cedar").read_text()
        + (tmp_path / "ghost.cedar").read_text(),
        [
            {
                "uid": {"type": "Insitu::User", "id": "root"},
                "attrs": {},
                "parents": [{"type": "Insitu::Role", "id": "federation_admin"}],
            },
            {
                "uid": {"type": "Insitu::Role", "id": "federation_admin"},
                "attrs": {"not_before": 0, "not_after": 2 * NOW},
                "parents": [],
            },
        ],
    )
    assert raw.allowed  # what plain Cedar does
    d = engine.authorize(LIST_SITES)
    assert not d.allowed and "failing closed" in d.reason
    assert any("local.ghost" in e for e in d.errors)


# --- parse once, evaluate many ----------------------------------------------------------


def test_authorize_never_parses_policies_or_touches_the_filesystem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = PolicyEngine(POLICY_DIR)
    real_policy_set, real_schema = cedarpy.PolicySet, cedarpy.Schema
    real_is_authorized = cedarpy.is_authorized
    parses: list[str] = []
    handles: list[tuple[Any, Any]] = []

    class CountingPolicySet:
        @staticmethod
        def from_str(text: str) -> Any:
            parses.append("policy")
            return real_policy_set.from_str(text)

    class CountingSchema:
        @staticmethod
        def from_str(text: str) -> Any:
            parses.append("schema")
            return real_schema.from_str(text)

    def spy(request: Any, policies: Any, entities: Any, schema: Any = None) -> Any:
        handles.append((policies, schema))
        return real_is_authorized(request, policies, entities, schema)

    def no_fs(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("authorize touched the filesystem")

    monkeypatch.setattr(cedarpy, "PolicySet", CountingPolicySet)
    monkeypatch.setattr(cedarpy, "Schema", CountingSchema)
    monkeypatch.setattr(cedarpy, "is_authorized", spy)
    monkeypatch.setattr(cedarpy, "validate_policies", no_fs)
    monkeypatch.setattr(builtins, "open", no_fs)
    monkeypatch.setattr(Path, "read_bytes", no_fs)
    monkeypatch.setattr(Path, "read_text", no_fs)
    for _ in range(25):
        assert engine.authorize(LIST_SITES).allowed
    monkeypatch.undo()

    assert parses == []
    assert len(handles) == 25
    # The same pre-parsed handles every time, never policy text.
    assert all(isinstance(p, real_policy_set) and isinstance(s, real_schema) for p, s in handles)
    assert len({id(p) for p, _ in handles}) == 1


def test_load_parses_each_file_then_the_set_once(monkeypatch: pytest.MonkeyPatch) -> None:
    real = cedarpy.PolicySet
    calls: list[int] = []

    class Counting:
        @staticmethod
        def from_str(text: str) -> Any:
            calls.append(len(text))
            return real.from_str(text)

    monkeypatch.setattr(cedarpy, "PolicySet", Counting)
    engine = PolicyEngine(POLICY_DIR)
    n_files = len(list(POLICY_DIR.glob("*.cedar")))
    assert len(calls) == n_files + 1  # per-file checks, then the combined set
    calls.clear()
    for _ in range(10):
        engine.authorize(LIST_SITES)
    assert calls == []


def test_entity_slices_are_parsed_once_and_never_reused_for_another_slice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = PolicyEngine(POLICY_DIR)
    real = cedarpy.Entities.from_json_str
    parsed: list[str] = []

    def counting(s: str, schema: Any = None, **kw: Any) -> Any:
        parsed.append(s)
        return real(s, schema, **kw)

    monkeypatch.setattr(cedarpy.Entities, "from_json_str", counting)
    dana = "spiffe://demo.insitu/user/dana"

    def predict(grantees: list[EntityRef]) -> AuthzRequest:
        model = Resource(
            "Model",
            "m",
            {"owner": EntityRef("User", "bob"), "org": EntityRef("Org", "acme"),
             "grantees": grantees, "service_grantees": []},
        )  # fmt: skip
        return AuthzRequest(
            dana, [RoleBinding(dana, "inference_client")], "predict", model, {"now": NOW}
        )

    granted = predict([EntityRef("User", "dana")])
    for i in range(10):
        # `now` lives in the context, so a changing clock still reuses the slice.
        req = AuthzRequest(
            granted.principal, granted.bindings, "predict", granted.resource, {"now": NOW + i}
        )
        assert engine.authorize(req).allowed
    assert len(parsed) == 1
    assert not engine.authorize(predict([])).allowed
    assert len(parsed) == 2


def test_foreign_trust_domain_is_denied_when_configured() -> None:
    engine = PolicyEngine(POLICY_DIR, trust_domain="demo.insitu")
    assert engine.authorize(LIST_SITES).allowed
    foreign = "spiffe://evil.example/site/hospital-a"
    req = AuthzRequest(
        foreign, [], "session.connect", EntityRef("Site", "hospital-a"), {"now": NOW}
    )
    d = engine.authorize(req)
    assert not d.allowed and "foreign trust domain" in d.reason
    # Without the setting the name alone decides (authn must pin the trust domain).
    assert PolicyEngine(POLICY_DIR).authorize(req).allowed


def test_editor_dotfiles_are_not_policy(policy_copy: Path) -> None:
    (policy_copy / ".#guardrails.cedar").write_text("not cedar at all")
    assert PolicyEngine(policy_copy).policy_hash == PolicyEngine(POLICY_DIR).policy_hash
