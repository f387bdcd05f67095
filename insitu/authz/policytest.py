"""The policy test table: YAML rows of (principal, bindings, action, resource, context,
expected outcome) run against a policy set. ``insitu policy check`` and ``make test`` both
run it, so a policy change that breaks an expectation cannot ship.

Files in the tests directory: ``_*.yaml`` are shared fixtures, every other ``*.yaml``
holds rows. Each may have::

    now: 1800000000                 # default context.now (epoch seconds)
    entities:                       # "Type::id": attributes
      Site::hospital-a: {org: Org::acme}
      Dataset::d-a1: {site: Site::hospital-a, purposes: [treatment]}
    principals:                     # short names for rows
      alice: {id: "spiffe://demo.insitu/user/alice",
              bindings: [{role: site_admin, site: hospital-a}]}
    rows:
      - name: site_admin of hospital-a deploys to hospital-b
        principal: alice            # a name above, or a SPIFFE URI
        bindings: [...]             # optional, replaces the principal's bindings
        action: model.deploy
        resource: ModelVersion::m1-at-b      # or {type: ..., id: ..., attrs: {...}}
        context: {emergency_access: true, reason: "...", job: Job::j1}
        expect: deny                # allow | deny
        by: site_admin.deploy       # optional: a determining @id, or "default" (no policy)
        errors: false               # optional: whether evaluation errors are expected

A string ``Type::id`` whose type is a schema entity type is an entity reference (only in
these trusted files; the engine itself never guesses types from strings). Every fixture
entity is in every row's entity slice.

Example::

    report = check_policies(Path("policies/rbac"))
    for f in report.failures: print(f.case_id, f.message)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from insitu.authz.engine import PolicyEngine
from insitu.authz.model import ENTITY_TYPES, AuthzRequest, EntityRef, Resource, RoleBinding
from insitu.errors import ErrorCode, InsituError

__all__ = ["CaseFailure", "CheckReport", "PolicyCase", "check_policies", "load_cases", "run_case"]

_REF = re.compile(r"^([A-Z][A-Za-z]*)::(.+)$")
_ROW_KEYS = frozenset(
    {"name", "principal", "bindings", "action", "resource", "context", "expect", "by", "errors"}
)


@dataclass(frozen=True)
class PolicyCase:
    """One row of the table."""

    file: str
    name: str
    request: AuthzRequest
    expect_allow: bool
    by: str | None = None
    expect_errors: bool = False

    @property
    def case_id(self) -> str:
        return f"{self.file}::{self.name}"


@dataclass(frozen=True)
class CaseFailure:
    case_id: str
    message: str


@dataclass(frozen=True)
class CheckReport:
    """Result of :func:`check_policies`. ``error`` is set when the set itself is refused."""

    policy_hash: str
    policy_count: int
    cases: int
    failures: tuple[CaseFailure, ...]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failures


def _bad(where: str, why: str) -> InsituError:
    return InsituError(ErrorCode.POLICY_INVALID, f"{where}: {why}")


def _conv(v: Any) -> Any:
    """YAML value -> model attribute value (``Type::id`` strings become references)."""
    if isinstance(v, str):
        m = _REF.fullmatch(v)
        if m and m.group(1) in ENTITY_TYPES:
            return EntityRef(m.group(1), m.group(2))
        return v
    if isinstance(v, bool | int):
        return v
    if isinstance(v, list):
        return [_conv(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _conv(x) for k, x in v.items()}
    raise ValueError(f"unsupported value {v!r}")


def _entities(raw: Any, where: str) -> dict[str, Resource]:
    out: dict[str, Resource] = {}
    for key, attrs in (raw or {}).items():
        ref = _conv(key)
        if not isinstance(ref, EntityRef) or not isinstance(attrs or {}, dict):
            raise _bad(where, f"entity key {key!r} must be Type::id mapping to attributes")
        out[key] = Resource(ref.type, ref.id, _conv(attrs or {}))
    return out


def _bindings(uri: str, raw: Any, where: str) -> list[RoleBinding]:
    out = []
    for b in raw or []:
        if not isinstance(b, dict) or "role" not in b:
            raise _bad(where, f"binding {b!r} needs at least a role")
        out.append(
            RoleBinding(
                uri,
                b["role"],
                site=b.get("site"),
                org=b.get("org"),
                not_before=b.get("not_before"),
                not_after=b.get("not_after"),
            )
        )
    return out


@dataclass
class _Fixtures:
    now: int | None = None
    entities: dict[str, Resource] | None = None
    principals: dict[str, Any] | None = None

    def merged(self, doc: Mapping[str, Any], where: str) -> _Fixtures:
        return _Fixtures(
            now=doc.get("now", self.now),
            entities={**(self.entities or {}), **_entities(doc.get("entities"), where)},
            principals={**(self.principals or {}), **(doc.get("principals") or {})},
        )


def _load_yaml(path: Path) -> Mapping[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise _bad(path.name, f"cannot load: {' '.join(str(e).split())[:300]}") from None
    if not isinstance(doc, dict):
        raise _bad(path.name, "must be a mapping")
    return doc


def _row(fx: _Fixtures, file: str, i: int, row: Any) -> PolicyCase:
    where = f"{file} row {i}"
    if not isinstance(row, dict):
        raise _bad(where, "must be a mapping")
    unknown = set(row) - _ROW_KEYS
    if unknown:
        raise _bad(where, f"unknown keys {sorted(unknown)}")
    name = str(row.get("name") or f"row{i}")
    where = f"{file}::{name}"
    if row.get("expect") not in ("allow", "deny"):
        raise _bad(where, "expect must be allow or deny")
    p = row.get("principal")
    principals = fx.principals or {}
    if isinstance(p, str) and p in principals:
        uri = principals[p]["id"]
        raw_bindings = row.get("bindings", principals[p].get("bindings"))
    elif isinstance(p, str) and p.startswith("spiffe://"):
        uri, raw_bindings = p, row.get("bindings")
    else:
        raise _bad(where, f"principal {p!r} is neither a known name nor a SPIFFE URI")
    try:
        bindings = _bindings(uri, raw_bindings, where)
        res_raw = row.get("resource")
        entities = fx.entities or {}
        if isinstance(res_raw, str) and res_raw in entities:
            resource: Resource | EntityRef = entities[res_raw]
        elif isinstance(res_raw, str) and isinstance(_conv(res_raw), EntityRef):
            resource = _conv(res_raw)
        elif isinstance(res_raw, dict) and {"type", "id"} <= set(res_raw):
            resource = Resource(
                res_raw["type"], str(res_raw["id"]), _conv(res_raw.get("attrs") or {})
            )
        else:
            raise _bad(where, f"resource {res_raw!r} must be Type::id or {{type, id, attrs}}")
        context = _conv(dict(row.get("context") or {}))
    except InsituError as e:
        raise _bad(where, e.detail) from None
    except ValueError as e:
        raise _bad(where, str(e)) from None
    if "now" not in context and fx.now is not None:
        context["now"] = fx.now
    request = AuthzRequest(
        principal=uri,
        bindings=bindings,
        action=str(row.get("action")),
        resource=resource,
        context=context,
        related=tuple(entities.values()),
    )
    return PolicyCase(
        file=file,
        name=name,
        request=request,
        expect_allow=row["expect"] == "allow",
        by=row.get("by"),
        expect_errors=bool(row.get("errors", False)),
    )


def load_cases(tests_dir: str | Path) -> list[PolicyCase]:
    """Every row of ``tests_dir/*.yaml``; raises ``POLICY_INVALID`` on a malformed file."""
    d = Path(tests_dir)
    files = sorted(d.glob("*.yaml"))
    base = _Fixtures()
    for f in files:
        if f.name.startswith("_"):
            base = base.merged(_load_yaml(f), f.name)
    cases: list[PolicyCase] = []
    names: set[str] = set()
    for f in files:
        if f.name.startswith("_"):
            continue
        doc = _load_yaml(f)
        fx = base.merged(doc, f.name)
        for i, row in enumerate(doc.get("rows") or [], start=1):
            case = _row(fx, f.stem, i, row)
            if case.case_id in names:
                raise _bad(case.case_id, "duplicate row name")
            names.add(case.case_id)
            cases.append(case)
    return cases


def run_case(engine: PolicyEngine, case: PolicyCase) -> CaseFailure | None:
    """Run one row; ``None`` when the engine decided as the row expects."""
    d = engine.authorize(case.request)
    problems = []
    if d.allowed != case.expect_allow:
        got = "allow" if d.allowed else "deny"
        problems.append(f"expected {'allow' if case.expect_allow else 'deny'}, got {got}")
    if case.by == "default":
        if d.policy_ids:
            problems.append(f"expected a default deny, determined by {list(d.policy_ids)}")
    elif case.by is not None and case.by not in d.policy_ids:
        problems.append(f"expected {case.by!r} among determining policies {list(d.policy_ids)}")
    if bool(d.errors) != case.expect_errors:
        problems.append(f"evaluation errors {list(d.errors)} (expected: {case.expect_errors})")
    if not problems:
        return None
    return CaseFailure(case.case_id, "; ".join(problems) + f" [{d.reason}]")


def check_policies(
    directory: str | Path,
    local_dir: str | Path | None = None,
    tests_dir: str | Path | None = None,
) -> CheckReport:
    """Validate the set against its schema and run the test table (default:
    ``directory/tests``). Never raises for a bad set or table: the report says why."""
    try:
        engine = PolicyEngine(directory, local_dir)
    except InsituError as e:
        return CheckReport("", 0, 0, (), f"policy set refused: {e.detail}")
    try:
        cases = load_cases(Path(tests_dir) if tests_dir is not None else Path(directory) / "tests")
    except InsituError as e:
        return CheckReport(engine.policy_hash, len(engine.policy_ids), 0, (), e.detail)
    failures = tuple(f for f in (run_case(engine, c) for c in cases) if f is not None)
    if not cases:
        return CheckReport(engine.policy_hash, len(engine.policy_ids), 0, (), "no test rows")
    return CheckReport(engine.policy_hash, len(engine.policy_ids), len(cases), failures)
