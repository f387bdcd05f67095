"""Which versions of one model serve whom: serving, canary split, promote and rollback.

State (``<model>/state.json``, written atomically) survives restarts::

    {"format": 1, "serving": 3, "canary": {"version": 4, "basis_points": 1000},
     "history": [1, 2]}

``history`` holds earlier serving versions, newest last. The newest is kept loaded and
its files stay on disk, so :meth:`ModelVersions.rollback` works with no registry or
coordinator reachable.

Canary routing is sticky per caller: ``SHA-256(model || 0x00 || caller)`` picks a bucket
in 0..9999 and buckets below the canary's basis points go to the canary. The same caller
always lands on the same version until the split changes, and the split is exact in
expectation over distinct callers.

Every change loads what it needs *first*; if loading fails, the state stays as it was.

Example::

    mv = ModelVersions("mlp", repo.model_dir("mlp"), loader, servable=[2, 3])
    mv.activate(4, canary_basis_points=1000)   # 10 % of callers
    v = mv.route("spiffe://demo.insitu/user/app-1")
    mv.promote()                                # or mv.rollback()
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from insitu.errors import ErrorCode, InsituError
from site_node.serving.repository import atomic_write

__all__ = ["Loaded", "ModelVersions", "ServingState", "route_bucket"]

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
BUCKETS = 10_000
_MAX_HISTORY = 16


def route_bucket(model: str, caller: str) -> int:
    """The caller's sticky bucket (0..9999) for ``model``."""
    digest = hashlib.sha256(model.encode() + b"\x00" + caller.encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


class Loaded(Protocol):
    """A loaded version, as the router needs it."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class ServingState:
    serving: int | None = None
    canary: int | None = None
    canary_basis_points: int = 0  # share of callers (out of 10,000) routed to the canary
    history: tuple[int, ...] = ()

    def to_json(self) -> bytes:
        canary = (
            None
            if self.canary is None
            else {"version": self.canary, "basis_points": self.canary_basis_points}
        )
        doc = {
            "format": 1,
            "serving": self.serving,
            "canary": canary,
            "history": list(self.history),
        }
        return json.dumps(doc, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> ServingState:
        try:
            doc: Any = json.loads(data)
            assert isinstance(doc, dict) and doc.get("format") == 1
            serving, canary, history = doc["serving"], doc["canary"], doc["history"]
            assert serving is None or _is_version(serving)
            assert isinstance(history, list) and all(_is_version(v) for v in history)
            if canary is not None:
                assert _is_version(canary["version"])
                bp = canary["basis_points"]
                assert isinstance(bp, int) and 0 < bp < BUCKETS
                return cls(serving, canary["version"], bp, tuple(history))
            return cls(serving, None, 0, tuple(history))
        except (AssertionError, ValueError, KeyError, TypeError):
            raise InsituError(ErrorCode.CONFIG, f"{STATE_FILE}: malformed") from None


L = TypeVar("L", bound=Loaded)


class ModelVersions(Generic[L]):
    """The loaded versions of one model and the routing between them (thread-safe)."""

    def __init__(
        self,
        model: str,
        model_dir: Path,
        loader: Callable[[int], L],
        *,
        servable: Iterable[int] = (),
    ) -> None:
        self.model = model
        self._path = Path(model_dir) / STATE_FILE
        self._loader = loader
        self._lock = threading.RLock()  # guards state and the loaded map together
        self._servable = sorted(servable)
        self._loaded: dict[int, L] = {}
        self._failed: set[int] = set()
        if self._path.is_file():
            self._state = ServingState.from_json(self._path.read_bytes())
        else:  # first start: the newest servable version serves
            self._state = ServingState(serving=self._servable[-1] if self._servable else None)
        for v in sorted(self._wanted(self._state)):
            try:
                self._load(v)
            except InsituError as e:
                # Keep serving what does load; a broken version is reported, not fatal.
                self._failed.add(v)
                log.error("model %s v%d failed to load: %s", model, v, e.detail)

    # -- reading -----------------------------------------------------------------------

    @property
    def state(self) -> ServingState:
        with self._lock:
            return self._state

    def route(self, caller: str) -> int:
        """The version that serves ``caller`` when it names none."""
        with self._lock:
            s = self._state
        if s.canary is not None and route_bucket(self.model, caller) < s.canary_basis_points:
            return s.canary
        if s.serving is None:
            raise InsituError(ErrorCode.UNAVAILABLE, f"model '{self.model}' has no serving version")
        return s.serving

    def addressable(self) -> list[int]:
        """Versions a caller may name explicitly: policy-servable, serving and canary."""
        with self._lock:
            s = self._state
            extra = {v for v in (s.serving, s.canary) if v is not None}
            return sorted((set(self._servable) | extra) & set(self._loaded))

    def get(self, version: int) -> L:
        """The loaded ``version``; NOT_FOUND unless it is addressable."""
        with self._lock:
            if version in self.addressable():
                return self._loaded[version]
            if version in self._failed:
                raise InsituError(
                    ErrorCode.UNAVAILABLE, f"model '{self.model}' version {version} failed to load"
                )
        raise InsituError(ErrorCode.NOT_FOUND, f"model '{self.model}' has no version {version}")

    def loaded_versions(self) -> list[int]:
        with self._lock:
            return sorted(self._loaded)

    # -- changing ----------------------------------------------------------------------

    def activate(self, version: int, *, canary_basis_points: int | None = None) -> ServingState:
        """Serve ``version`` (replacing the serving one), or canary it to a share of
        callers. Loads it first; a failed load changes nothing."""
        with self._lock:
            s = self._state
            if canary_basis_points is None:
                if version == s.serving:
                    return self._commit(s)  # persists a first-start default
                new = ServingState(
                    serving=version,
                    canary=None if s.canary == version else s.canary,
                    canary_basis_points=0 if s.canary == version else s.canary_basis_points,
                    history=_push(s.history, s.serving),
                )
            else:
                if not 0 < canary_basis_points < BUCKETS:
                    raise InsituError(
                        ErrorCode.INVALID_ARGUMENT, "canary: percentage must be in (0, 100)"
                    )
                if version == s.serving:
                    raise InsituError(
                        ErrorCode.FAILED_PRECONDITION, f"version {version} is already serving"
                    )
                if s.serving is None:
                    raise InsituError(
                        ErrorCode.FAILED_PRECONDITION, "a canary needs a serving version"
                    )
                new = replace(s, canary=version, canary_basis_points=canary_basis_points)
            return self._commit(new)

    def promote(self) -> ServingState:
        """Make the canary the serving version for everyone."""
        with self._lock:
            s = self._state
            if s.canary is None:
                raise InsituError(ErrorCode.FAILED_PRECONDITION, "there is no canary to promote")
            return self._commit(ServingState(serving=s.canary, history=_push(s.history, s.serving)))

    def rollback(self) -> ServingState:
        """Withdraw the canary if there is one; otherwise serve the previous version."""
        with self._lock:
            s = self._state
            if s.canary is not None:
                return self._commit(replace(s, canary=None, canary_basis_points=0))
            if not s.history:
                raise InsituError(
                    ErrorCode.FAILED_PRECONDITION, f"model '{self.model}' has no previous version"
                )
            return self._commit(ServingState(serving=s.history[-1], history=s.history[:-1]))

    def set_servable(self, servable: Iterable[int]) -> None:
        """Apply a new version-policy selection (after an install or config change)."""
        with self._lock:
            old = self._servable
            self._servable = sorted(servable)
            try:
                self._commit(self._state)
            except InsituError:
                self._servable = old
                raise

    def close(self) -> None:
        with self._lock:
            loaded, self._loaded = self._loaded, {}
        for lv in loaded.values():
            lv.close()

    # -- internals ---------------------------------------------------------------------

    def _wanted(self, s: ServingState) -> set[int]:
        wanted = set(self._servable)
        wanted.update(v for v in (s.serving, s.canary) if v is not None)
        if s.history:
            wanted.add(s.history[-1])  # the rollback target stays warm
        return wanted

    def _load(self, version: int) -> None:
        if version not in self._loaded:
            self._loaded[version] = self._loader(version)
            self._failed.discard(version)

    def _commit(self, new: ServingState) -> ServingState:
        """Load what ``new`` needs, persist it, switch to it, unload what it does not."""
        wanted = self._wanted(new)
        must = {v for v in (new.serving, new.canary) if v is not None}
        fresh: list[int] = []
        try:
            for v in sorted(wanted - set(self._loaded)):
                try:
                    self._load(v)
                    fresh.append(v)
                except InsituError:
                    if v in must:
                        raise
                    self._failed.add(v)
            if new != self._state or not self._path.exists():
                atomic_write(self._path, new.to_json())
        except BaseException:
            for v in fresh:
                self._loaded.pop(v).close()
            raise
        self._state = new
        for v in sorted(set(self._loaded) - wanted):
            self._loaded.pop(v).close()
        return new


def _push(history: tuple[int, ...], version: int | None) -> tuple[int, ...]:
    if version is None:
        return history
    return (*tuple(h for h in history if h != version), version)[-_MAX_HISTORY:]


def _is_version(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1
