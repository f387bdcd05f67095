"""The principal / action / resource model: what callers hand the engine, and how it
becomes one Cedar request plus its entity slice.

The slice is built per call, for ONE principal, so each role binding of that principal
becomes one ``Role`` entity carrying the binding's validity window (see the comment at
the top of ``policies/rbac/schema.cedarschema``). ``Site`` and ``Org`` entities always get
their ``roles`` record derived here, never from caller input, so no request can point a
site's ``site_admin`` at some other role.

Example::

    req = AuthzRequest(
        principal="spiffe://demo.insitu/user/alice",
        bindings=[RoleBinding("spiffe://demo.insitu/user/alice", "site_admin", site="hospital-a")],
        action="model.deploy",
        resource=Resource("ModelVersion", "m1@3", {"model": EntityRef("Model", "m1"),
                                                   "site": EntityRef("Site", "hospital-a")}),
        context={"now": 1_800_000_000},
    )
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from insitu.errors import ErrorCode, InsituError
from insitu.identity.principal import Principal
from insitu.identity.spiffe import IdentityKind, SpiffeId, validate_name

__all__ = [
    "ENTITY_TYPES",
    "NAMESPACE",
    "ROLE_SCOPES",
    "AttrValue",
    "AuthzRequest",
    "CedarInput",
    "EntityRef",
    "Resource",
    "RoleBinding",
    "build_cedar_input",
]

NAMESPACE = "Insitu"
# Cedar Long is a signed 64-bit integer: "no end" of a validity window.
_FOREVER = 2**63 - 1

Scope: TypeAlias = Literal["global", "site", "org"]
#: Every shipped role and the scope a binding of it must have.
ROLE_SCOPES: Mapping[str, Scope] = {
    "federation_admin": "global",
    "auditor": "global",
    "inference_client": "global",
    "site_admin": "site",
    "data_steward": "site",
    "ml_engineer": "org",
}
_SITE_ROLES = tuple(r for r, s in ROLE_SCOPES.items() if s == "site")
_ORG_ROLES = tuple(r for r, s in ROLE_SCOPES.items() if s == "org")

#: Entity types of the schema (without the namespace).
ENTITY_TYPES = frozenset(
    {
        "User", "Site", "Service", "Role", "Org", "Federation", "RoleBinding", "Dataset",
        "Job", "Model", "ModelVersion", "FeatureRelease", "AuditLog",
    }
)  # fmt: skip
_KIND_TYPE = {IdentityKind.USER: "User", IdentityKind.SITE: "Site", IdentityKind.SERVICE: "Service"}
# Derived entities: a caller may describe a Site's org, never its roles.
_DERIVED_ONLY = frozenset({"Role", "User", "Service"})


@dataclass(frozen=True)
class RoleBinding:
    """``principal`` (a SPIFFE URI) holds ``role`` for ``site`` or ``org`` (per the role's
    scope in :data:`ROLE_SCOPES`), from ``not_before`` until before ``not_after`` (epoch
    seconds; ``None`` = unbounded)."""

    principal: str
    role: str
    site: str | None = None
    org: str | None = None
    not_before: int | None = None
    not_after: int | None = None

    def __post_init__(self) -> None:
        scope = ROLE_SCOPES.get(self.role)
        if scope is None:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, f"unknown role {self.role!r}")
        sid = SpiffeId.parse(self.principal)
        if sid.kind is IdentityKind.SITE:
            # A node's rights come from its identity kind (site.cedar), never a binding.
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "site identities hold no role bindings")
        if (scope == "site") != (self.site is not None):
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT, f"role {self.role} needs exactly a site scope"
            )
        if (scope == "org") != (self.org is not None):
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT, f"role {self.role} needs exactly an org scope"
            )
        if self.site is not None:
            validate_name(self.site, "site")
        if self.org is not None:
            validate_name(self.org, "org")
        if (
            self.not_before is not None
            and self.not_after is not None
            and self.not_after <= self.not_before
        ):
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "binding window is empty")

    @property
    def role_id(self) -> str:
        """Id of the ``Role`` entity this binding puts its holder in."""
        if self.site is not None:
            return _scoped_role_id(self.role, "site", self.site)
        if self.org is not None:
            return _scoped_role_id(self.role, "org", self.org)
        return self.role

    def valid_at(self, now: int) -> bool:
        lo = self.not_before if self.not_before is not None else -_FOREVER
        hi = self.not_after if self.not_after is not None else _FOREVER
        return lo <= now < hi


def _scoped_role_id(role: str, scope: str, name: str) -> str:
    return f"{role}@{scope}:{name}"


@dataclass(frozen=True)
class EntityRef:
    """A reference to an entity by type (``"Site"``) and id (``"hospital-a"``)."""

    type: str
    id: str


@dataclass(frozen=True)
class Resource:
    """An entity with attributes: the resource of a request, or one it refers to.

    Attribute values may be ``str``, ``int``, ``bool``, :class:`EntityRef`, a nested
    :class:`Resource` (added to the slice and referenced), a set/list/tuple of those, or a
    mapping (a Cedar record). ``Site`` and ``Org`` entities referenced only by
    :class:`EntityRef` are created automatically.
    """

    type: str
    id: str
    attrs: Mapping[str, AttrValue] = field(default_factory=dict)

    @property
    def ref(self) -> EntityRef:
        return EntityRef(self.type, self.id)


AttrValue: TypeAlias = (
    "str | int | bool | EntityRef | Resource | Sequence[AttrValue] | frozenset[Any] "
    "| set[Any] | Mapping[str, AttrValue]"
)


@dataclass(frozen=True)
class AuthzRequest:
    """One authorization question: may ``principal``, holding ``bindings``, perform
    ``action`` on ``resource`` in ``context``?

    ``context`` keys: ``now`` (epoch seconds; default: the wall clock),
    ``emergency_access`` (bool) and ``reason`` (str) for break-glass, and ``job`` (a
    :class:`Resource`) for the actions that act on behalf of a job. ``related`` are further
    entities the policies read through the resource (e.g. the Dataset and Job of a
    FeatureRelease). Bindings of other principals are ignored.
    """

    principal: Principal | SpiffeId | str
    bindings: Sequence[RoleBinding]
    action: str
    resource: Resource | EntityRef
    context: Mapping[str, Any] = field(default_factory=dict)
    related: Sequence[Resource] = ()

    @property
    def spiffe_id(self) -> SpiffeId:
        p = self.principal
        if isinstance(p, Principal):
            return p.spiffe_id
        if isinstance(p, SpiffeId):
            return p
        return SpiffeId.parse(p)

    @property
    def break_glass(self) -> bool:
        """Whether the request claims emergency access (allowed or not)."""
        return self.context.get("emergency_access") is True


@dataclass(frozen=True)
class CedarInput:
    """What ``cedarpy.is_authorized`` takes: the request dict and the entity slice."""

    request: dict[str, Any]
    entities: list[dict[str, Any]]
    now: int


def _uid(type_: str, id_: str) -> dict[str, str]:
    return {"type": f"{NAMESPACE}::{type_}", "id": id_}


def _check_type(type_: str) -> str:
    if type_ not in ENTITY_TYPES:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"unknown entity type {type_!r}")
    return type_


class _Slice:
    """Accumulates the entities of one request, deduplicated by uid."""

    def __init__(self) -> None:
        self.entities: dict[tuple[str, str], dict[str, Any]] = {}
        self.sites: set[str] = set()
        self.orgs: set[str] = set()
        self.explicit: dict[tuple[str, str], Resource] = {}

    def put(self, key: tuple[str, str], entity: dict[str, Any]) -> None:
        if key in self.entities:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, f"entity {key[0]}::{key[1]} given twice")
        self.entities[key] = entity

    def value(self, v: Any) -> Any:
        """Cedar JSON for one attribute value, adding referenced entities."""
        if isinstance(v, bool | int | str):
            return v
        if isinstance(v, EntityRef):
            return {"__entity": _uid(self.ref(v), v.id)}
        if isinstance(v, Resource):
            self.add(v)
            return {"__entity": _uid(v.type, v.id)}
        if isinstance(v, Mapping):
            return {str(k): self.value(x) for k, x in v.items()}
        if isinstance(v, Sequence | set | frozenset) and not isinstance(v, bytes | bytearray):
            return [self.value(x) for x in v]
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, f"unsupported attribute value of type {type(v).__name__}"
        )

    def ref(self, r: EntityRef) -> str:
        t = _check_type(r.type)
        if t == "Site":
            self.sites.add(r.id)
        elif t == "Org":
            self.orgs.add(r.id)
        return t

    def add(self, r: Resource) -> None:
        t = _check_type(r.type)
        if t in _DERIVED_ONLY:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, f"{t} entities are derived, not given")
        key = (t, r.id)
        prior = self.explicit.get(key)
        if prior is not None:
            if prior != r:
                raise InsituError(
                    ErrorCode.INVALID_ARGUMENT, f"entity {t}::{r.id} given twice, differently"
                )
            return
        self.explicit[key] = r
        self.ref(r.ref)
        if t in ("Site", "Org"):
            return  # emitted by finish(), with the derived roles record
        self.put(key, {"uid": _uid(t, r.id), "attrs": self.value(r.attrs), "parents": []})

    def finish(self) -> list[dict[str, Any]]:
        for site in sorted(self.sites):
            attrs: dict[str, Any] = {}
            given = self.explicit.get(("Site", site))
            if given is not None and "org" in given.attrs:
                attrs["org"] = self.value(given.attrs["org"])
            attrs["roles"] = {
                r: {"__entity": _uid("Role", _scoped_role_id(r, "site", site))} for r in _SITE_ROLES
            }
            self.put(("Site", site), {"uid": _uid("Site", site), "attrs": attrs, "parents": []})
        for org in sorted(self.orgs):
            roles = {
                r: {"__entity": _uid("Role", _scoped_role_id(r, "org", org))} for r in _ORG_ROLES
            }
            self.put(
                ("Org", org), {"uid": _uid("Org", org), "attrs": {"roles": roles}, "parents": []}
            )
        return list(self.entities.values())


def _role_entities(
    sid: SpiffeId, bindings: Sequence[RoleBinding], now: int
) -> dict[str, RoleBinding]:
    """The principal's bindings by Role entity id. Two bindings of one role and scope
    collapse to one entity; the one valid at ``now`` is kept (else the first)."""
    uri = sid.uri
    chosen: dict[str, RoleBinding] = {}
    for b in bindings:
        if b.principal != uri:
            continue
        prior = chosen.get(b.role_id)
        if prior is None or (not prior.valid_at(now) and b.valid_at(now)):
            chosen[b.role_id] = b
    return chosen


def build_cedar_input(req: AuthzRequest, default_now: int | None = None) -> CedarInput:
    """Translate ``req`` into a Cedar request and entity slice.

    Raises :class:`InsituError` (INVALID_ARGUMENT) for a malformed request; the engine
    turns that into a deny.
    """
    sid = req.spiffe_id
    ctx = dict(req.context)
    now = ctx.get("now")
    if now is None:
        now = default_now if default_now is not None else int(time.time())
    if not isinstance(now, int) or isinstance(now, bool):
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "context.now must be an integer")
    emergency = ctx.get("emergency_access", False)
    reason = ctx.get("reason", "")
    if not isinstance(emergency, bool) or not isinstance(reason, str):
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, "emergency_access must be a bool and reason a string"
        )
    sl = _Slice()
    for r in req.related:
        sl.add(r)
    res = req.resource
    if isinstance(res, Resource):
        sl.add(res)
        res_ref = res.ref
    else:
        res_ref = res
        sl.ref(res)
    ctx["now"] = now
    ctx["emergency_access"] = emergency
    # Whitespace is no reason: the policies test `reason != ""`.
    ctx["reason"] = reason.strip()
    ctx = {k: sl.value(v) for k, v in ctx.items()}

    ptype = _KIND_TYPE[sid.kind]
    pkey = (ptype, sid.name)
    if ptype == "Site":
        sl.sites.add(sid.name)  # the node's own Site entity doubles as its principal
    else:
        roles = _role_entities(sid, req.bindings, now)
        pattrs: dict[str, Any] = {"uri": sid.uri}
        sites = {b.site for b in roles.values()}
        if ptype == "User" and len(sites) == 1 and None not in sites:
            home = next(iter(sites))
            assert home is not None
            pattrs["site"] = {"__entity": _uid("Site", home)}
            sl.sites.add(home)
        for rid, b in roles.items():
            sl.put(
                ("Role", rid),
                {
                    "uid": _uid("Role", rid),
                    "attrs": {
                        "name": b.role,
                        "not_before": b.not_before if b.not_before is not None else -_FOREVER,
                        "not_after": b.not_after if b.not_after is not None else _FOREVER,
                    },
                    "parents": [],
                },
            )
        sl.put(
            pkey,
            {
                "uid": _uid(ptype, sid.name),
                "attrs": pattrs,
                "parents": [_uid("Role", rid) for rid in roles],
            },
        )
    request = {
        "principal": _uid(ptype, sid.name),
        "action": {"type": f"{NAMESPACE}::Action", "id": req.action},
        "resource": _uid(_check_type(res_ref.type), res_ref.id),
        "context": ctx,
    }
    return CedarInput(request=request, entities=sl.finish(), now=now)
