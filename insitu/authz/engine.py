"""The policy engine: one parsed policy bundle in force, evaluated many times, swapped
atomically on reload.

Default deny everywhere: no bundle (the :meth:`PolicyEngine.deny_all` state), no permit,
a malformed request, or any policy evaluation error all yield ``allowed=False`` with the
reason. Evaluation errors fail closed because Cedar skips an erroring policy, and a
skipped ``forbid`` would otherwise widen access.

Example::

    engine = PolicyEngine(Path("policies/rbac"))
    d = engine.authorize(AuthzRequest(principal, bindings, "site.list",
                                      EntityRef("Federation", "federation")))
    if not d.allowed: raise InsituError(ErrorCode.PERMISSION_DENIED, d.reason)
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cedarpy

from insitu.authz.bundle import PolicyBundle, load_bundle
from insitu.authz.model import AuthzRequest, build_cedar_input
from insitu.errors import ErrorCode, InsituError

__all__ = ["Decision", "PolicyEngine"]

log = logging.getLogger("insitu.authz")
_POSITIONAL = re.compile(r"\bpolicy\d+\b")
_ENTITY_DUMP = re.compile(r"failed to parse entities from:.*?: (error during)", re.S)


@dataclass(frozen=True)
class Decision:
    """The outcome of one authorization, with what the audit record needs.

    ``policy_ids`` are the ``@id`` of the determining policies: the permits that allowed,
    or the forbids that denied (empty for a default deny). ``break_glass`` says the request
    claimed emergency access, whatever the outcome.
    """

    allowed: bool
    policy_ids: tuple[str, ...]
    policy_hash: str
    reasons: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    break_glass: bool = False

    @property
    def reason(self) -> str:
        """One line for logs and the client-visible denial detail."""
        return "; ".join(self.reasons + self.errors)


@dataclass(frozen=True)
class _DenyAll:
    reason: str


class _EntityCache:
    """Parsed, schema-checked entity slices by their JSON text (LRU).

    Parsing the slice is most of a decision's cost, and an RPC stream repeats the same
    slice (same caller, same model) call after call. A slice's JSON fully determines its
    parse, so reuse is exact. One cache per bundle: the schema checked against is its own.
    """

    def __init__(self, schema: cedarpy.Schema, size: int = 4096) -> None:
        self._schema = schema
        self._size = size
        self._lock = threading.Lock()
        self._handles: OrderedDict[str, cedarpy.Entities] = OrderedDict()

    def get(self, entities: list[dict[str, Any]]) -> cedarpy.Entities:
        """The parsed slice; raises ``ValueError`` if it violates the schema."""
        key = json.dumps(entities, separators=(",", ":"))
        with self._lock:
            handle = self._handles.get(key)
            if handle is not None:
                self._handles.move_to_end(key)
                return handle
        handle = cedarpy.Entities.from_json_str(key, self._schema)
        with self._lock:
            self._handles[key] = handle
            if len(self._handles) > self._size:
                self._handles.popitem(last=False)
        return handle


@dataclass(frozen=True)
class _InForce:
    bundle: PolicyBundle
    entities: _EntityCache


class PolicyEngine:
    """Holds the policy bundle in force. Thread-safe: decisions read one immutable
    snapshot; :meth:`reload` builds a new one aside and swaps the reference."""

    def __init__(
        self,
        federation_dir: str | Path,
        local_dir: str | Path | None = None,
        *,
        trust_domain: str | None = None,
    ) -> None:
        """Load and check the set now (``POLICY_INVALID`` if refused). With
        ``trust_domain``, principals of any other SPIFFE trust domain are denied: entity
        ids carry only the name part of a SPIFFE id."""
        self._federation_dir: Path | None = Path(federation_dir)
        self._local_dir = Path(local_dir) if local_dir is not None else None
        self._trust_domain = trust_domain
        self._reload_lock = threading.Lock()
        self._state: _InForce | _DenyAll = _in_force(
            load_bundle(self._federation_dir, self._local_dir)
        )

    @classmethod
    def deny_all(
        cls,
        reason: str,
        federation_dir: str | Path | None = None,
        local_dir: str | Path | None = None,
        *,
        trust_domain: str | None = None,
    ) -> PolicyEngine:
        """An engine that denies every request saying ``reason``; :meth:`reload` may later
        put a valid set in force (from the given directories)."""
        self = cls.__new__(cls)
        self._federation_dir = Path(federation_dir) if federation_dir is not None else None
        self._local_dir = Path(local_dir) if local_dir is not None else None
        self._trust_domain = trust_domain
        self._reload_lock = threading.Lock()
        self._state = _DenyAll(reason)
        return self

    @classmethod
    def load_or_deny_all(
        cls,
        federation_dir: str | Path,
        local_dir: str | Path | None = None,
        *,
        trust_domain: str | None = None,
    ) -> PolicyEngine:
        """For process startup: the engine, or, if the set is invalid, a deny-all engine
        (the refusal is logged) that a later reload can fix."""
        try:
            return cls(federation_dir, local_dir, trust_domain=trust_domain)
        except InsituError as e:
            log.error("policy set refused at startup, denying every request: %s", e.detail)
            why = f"no valid policy set: {e.detail}"
            return cls.deny_all(why, federation_dir, local_dir, trust_domain=trust_domain)

    @property
    def policy_hash(self) -> str:
        """Hash of the set in force; empty in the deny-all state."""
        s = self._state
        return s.bundle.policy_hash if isinstance(s, _InForce) else ""

    @property
    def policy_ids(self) -> tuple[str, ...]:
        s = self._state
        return s.bundle.policy_ids if isinstance(s, _InForce) else ()

    @property
    def deny_reason(self) -> str | None:
        """Why everything is denied, or ``None`` when a policy set is in force."""
        s = self._state
        return s.reason if isinstance(s, _DenyAll) else None

    def reload(
        self, federation_dir: str | Path | None = None, local_dir: str | Path | None = None
    ) -> tuple[str, str]:
        """Load a new set (default: the same directories) and put it in force atomically.

        Returns ``(old_hash, new_hash)``. On any refusal raises ``POLICY_INVALID`` and the
        previous set (or deny-all state) stays in force; the refusal is logged.
        """
        with self._reload_lock:
            fed = Path(federation_dir) if federation_dir is not None else self._federation_dir
            local = Path(local_dir) if local_dir is not None else self._local_dir
            if fed is None:
                raise InsituError(ErrorCode.POLICY_INVALID, "no policy directory to reload from")
            old = self.policy_hash
            try:
                bundle = load_bundle(fed, local)
            except InsituError as e:
                log.error(
                    "policy reload refused, %s stays in force: %s", old or "deny-all", e.detail
                )
                raise
            # One reference store: a reader sees the old set or the new one, never a mix.
            self._state = _in_force(bundle)
            self._federation_dir, self._local_dir = fed, local
            log.info("policy set reloaded: %s -> %s", old or "deny-all", bundle.policy_hash)
            return old, bundle.policy_hash

    def authorize(self, request: AuthzRequest) -> Decision:
        """Decide ``request``. Never raises for a bad request: it denies, saying why."""
        state = self._state  # read once: this decision uses one snapshot throughout
        bg = request.break_glass
        if isinstance(state, _DenyAll):
            return Decision(False, (), "", (state.reason,), (), bg)
        bundle = state.bundle
        h = bundle.policy_hash
        try:
            if self._trust_domain is not None:
                td = request.spiffe_id.trust_domain
                if td != self._trust_domain:
                    why = f"principal of foreign trust domain {td}"
                    return Decision(False, (), h, (why,), (), bg)
            cin = build_cedar_input(request)
        except InsituError as e:
            return Decision(False, (), h, (f"malformed request: {e.detail}",), (), bg)
        try:
            entities: cedarpy.Entities | list[dict[str, Any]] = state.entities.get(cin.entities)
        except ValueError:
            # The handle's error is terse; evaluating the raw slice reports which attribute.
            entities = cin.entities
        result = cedarpy.is_authorized(cin.request, bundle.policy_set, entities, bundle.schema)
        ids = tuple(sorted({bundle.ids.get(p, p) for p in result.diagnostics.reasons}))
        errors = tuple(_clean(e, bundle) for e in result.diagnostics.errors)
        if result.decision is cedarpy.Decision.NoDecision or entities is cin.entities:
            why = "request is not valid for the schema"
            return Decision(False, (), h, (why,), errors or ("entity slice rejected",), bg)
        if errors:
            # Cedar skipped the erroring policies; one of them may be a forbid.
            why = "policy evaluation error: failing closed"
            return Decision(False, (), h, (why,), errors, bg)
        if result.allowed:
            return Decision(True, ids, h, (f"permitted by {', '.join(ids)}",), (), bg)
        if ids:
            return Decision(False, ids, h, (f"forbidden by {', '.join(ids)}",), (), bg)
        why = f"no policy permits {request.action} (default deny)"
        return Decision(False, (), h, (why,), (), bg)


def _in_force(bundle: PolicyBundle) -> _InForce:
    return _InForce(bundle, _EntityCache(bundle.schema))


def _clean(msg: str, bundle: PolicyBundle) -> str:
    """Cedar's message with positional ids replaced by @ids, without echoing the entity
    slice, on one bounded line."""
    msg = _ENTITY_DUMP.sub(r"failed to parse entities: \1", msg)
    msg = _POSITIONAL.sub(lambda m: bundle.ids.get(m.group(0), m.group(0)), msg)
    return " ".join(msg.split())[:300]
