"""De-identification policies: load, validate, resolve against a base, hash.

A dataset policy (``policies/deid/<dataset>.yaml``) gives every column of one dataset an
action. Loading it checks the JSON Schema (``policies/deid/schema.json``), then the rules
a schema cannot state, then folds in its base policy (``base: safe-harbor``): a column
that carries a base tag gets the base action unless its own action is stricter. The result
is a frozen :class:`Policy` whose :attr:`Policy.hash` is the SHA-256 of the RFC 8785
canonical JSON of the *resolved* policy, so two files that resolve to the same rules hash
the same and any change to an effective rule changes the hash.

Default deny: :meth:`Policy.check_columns` refuses a data column without a rule, and a
rule for a column the data lacks.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema
import rfc8785
import yaml

from insitu.errors import ErrorCode, InsituError

__all__ = [
    "ACTIONS",
    "DEFAULT_POLICY_DIR",
    "ColumnRule",
    "Policy",
    "load_policy",
    "parse_policy",
    "strictness",
]

DEFAULT_POLICY_DIR = Path(__file__).resolve().parents[2] / "policies" / "deid"
ACTIONS = frozenset({"drop", "pseudonymize", "generalize", "truncate_pan", "noise", "keep"})
_SAFE_HARBOR_LETTERS = frozenset("ABCDEFGHIJKLMNOPQR")
_MAX_POLICY_BYTES = 1 << 20


@dataclass(frozen=True)
class ColumnRule:
    """The effective rule for one column: ``action`` plus its parameters.

    ``source`` says where the rule came from: ``"dataset"`` or ``"base:<name>/<letter>"``
    when a base policy overrode a weaker dataset action.
    """

    name: str
    action: str
    tags: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    source: str = "dataset"

    @property
    def kind(self) -> str | None:
        """The generalize kind (``date``/``age``/``zip``/``free_text``), else None."""
        kind = self.params.get("kind")
        return str(kind) if kind is not None else None

    @property
    def removes_column(self) -> bool:
        """True when the column is absent from a release."""
        return self.action == "drop" or (self.action == "generalize" and self.kind == "free_text")

    def canonical(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "tags": sorted(self.tags),
            "params": dict(self.params),
            "source": self.source,
        }


def strictness(action: str, params: Mapping[str, Any]) -> tuple[int, int]:
    """How much a rule hides, as a comparable tuple (bigger hides more).

    drop (and free text, which generalizes to drop) > pseudonymize > generalize and
    truncate_pan > noise > keep. The second element orders rules of the same action:
    a birth-date year (which also collapses ages over 89) beats a plain year, and a PAN
    truncation that keeps fewer digits beats one that keeps more.
    """
    if action == "drop" or (action == "generalize" and params.get("kind") == "free_text"):
        return (5, 0)
    if action == "pseudonymize":
        return (4, 0)
    if action == "generalize":
        return (3, 1 if params.get("birth") else 0)
    if action == "truncate_pan":
        kept = int(params.get("keep_first", 6)) + int(params.get("keep_last", 4))
        return (3, 10 - kept)
    if action == "noise":
        return (2, 0)
    return (0, 0)


@dataclass(frozen=True)
class Policy:
    """A validated, resolved dataset policy. Build it with :func:`load_policy`."""

    dataset: str
    version: int | str
    base: tuple[str, int | str] | None
    columns: tuple[ColumnRule, ...]
    quasi_identifiers: tuple[str, ...]
    k: int
    max_suppression_fraction: float
    purposes: tuple[str, ...]
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(rfc8785.dumps(self.resolved())).hexdigest()
        object.__setattr__(self, "hash", f"sha256:{digest}")

    def rule(self, column: str) -> ColumnRule:
        for rule in self.columns:
            if rule.name == column:
                return rule
        raise InsituError(ErrorCode.POLICY_INVALID, f"policy has no rule for column {column!r}")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(rule.name for rule in self.columns)

    @property
    def epsilon(self) -> float:
        """Total ε one release spends: noise columns compose sequentially (each record
        contributes to every noised column)."""
        return math.fsum(float(r.params["epsilon"]) for r in self.columns if r.action == "noise")

    def resolved(self) -> dict[str, Any]:
        """The canonical form that :attr:`hash` covers."""
        return {
            "dataset": self.dataset,
            "version": self.version,
            "base": None if self.base is None else {"name": self.base[0], "version": self.base[1]},
            "columns": {rule.name: rule.canonical() for rule in self.columns},
            "quasi_identifiers": list(self.quasi_identifiers),
            "k": self.k,
            "max_suppression_fraction": self.max_suppression_fraction,
            "purposes": sorted(self.purposes),
        }

    def check_columns(self, data_columns: Iterable[str]) -> None:
        """Default deny: every data column needs a rule and every rule a data column."""
        present = [str(c) for c in data_columns]
        if len(set(present)) != len(present):
            raise InsituError(ErrorCode.POLICY_INVALID, "data has duplicate column names")
        unmapped = sorted(set(present) - set(self.column_names))
        missing = sorted(set(self.column_names) - set(present))
        problems = []
        if unmapped:
            problems.append(f"data columns without an action (default deny): {unmapped}")
        if missing:
            problems.append(f"policy columns absent from the data: {missing}")
        if problems:
            raise InsituError(
                ErrorCode.POLICY_INVALID, f"policy {self.dataset}: " + "; ".join(problems)
            )


# ------------------------------------------------------------------------------ loading


def load_policy(
    path: Path | str,
    *,
    data_columns: Iterable[str] | None = None,
    base_dir: Path | None = None,
) -> Policy:
    """Load and resolve the dataset policy at ``path``.

    Its base (if any) is read from ``base_dir`` (default: the policy's own directory).
    With ``data_columns``, the policy is also checked against the data's columns, so an
    unmapped column is refused at load time.
    """
    path = Path(path)
    doc = _read_yaml(path)
    directory = base_dir if base_dir is not None else path.parent
    policy = parse_policy(doc, base_loader=lambda name: _read_yaml(directory / f"{name}.yaml"))
    if data_columns is not None:
        policy.check_columns(data_columns)
    return policy


def parse_policy(doc: Any, *, base_loader: Callable[[str], Any] | None = None) -> Policy:
    """Validate a parsed dataset policy document and resolve it.

    ``base_loader(name) -> document`` supplies the base policy; without one, a policy
    that names a base is refused.
    """
    _validate_schema(doc, "policy")
    if "dataset" not in doc:
        raise InsituError(ErrorCode.POLICY_INVALID, "a base policy is not a dataset policy")
    base_rules: dict[str, tuple[str, dict[str, Any]]] = {}
    base_id: tuple[str, int | str] | None = None
    if "base" in doc:
        if base_loader is None:
            raise InsituError(ErrorCode.POLICY_INVALID, f"no loader for base {doc['base']!r}")
        base_doc = base_loader(doc["base"])
        base_id, base_rules = _parse_base(base_doc, doc["base"])
    rules = tuple(
        _resolve_column(name, spec, base_rules, base_id) for name, spec in doc["columns"].items()
    )
    policy = Policy(
        dataset=doc["dataset"],
        version=doc["version"],
        base=base_id,
        columns=rules,
        quasi_identifiers=tuple(doc["quasi_identifiers"]),
        k=int(doc["k"]),
        max_suppression_fraction=float(doc["max_suppression_fraction"]),
        purposes=tuple(doc["purposes"]),
    )
    _check_semantics(policy)
    return policy


def _parse_base(doc: Any, name: str) -> tuple[tuple[str, int | str], dict[str, Any]]:
    _validate_schema(doc, f"base policy {name}")
    if doc.get("base_policy") != name:
        raise InsituError(ErrorCode.POLICY_INVALID, f"base policy file is not {name!r}")
    identifiers = doc["identifiers"]
    if name == "safe-harbor" and set(identifiers) != _SAFE_HARBOR_LETTERS:
        raise InsituError(
            ErrorCode.POLICY_INVALID,
            "safe-harbor base must map exactly the identifier types A to R of "
            "45 CFR 164.514(b)(2)(i)",
        )
    rules: dict[str, tuple[str, dict[str, Any]]] = {}
    for letter, entry in sorted(identifiers.items()):
        for tag, spec in entry["tags"].items():
            if tag in rules:
                raise InsituError(ErrorCode.POLICY_INVALID, f"base tag {tag!r} mapped twice")
            rules[tag] = (letter, _params(spec))
    return (name, doc["version"]), rules


def _params(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The action and its parameters, without the descriptive keys."""
    return {k: v for k, v in spec.items() if k not in ("tags", "note")}


def _resolve_column(
    name: str,
    spec: Mapping[str, Any],
    base_rules: Mapping[str, tuple[str, dict[str, Any]]],
    base_id: tuple[str, int | str] | None,
) -> ColumnRule:
    own = _params(spec)
    tags = tuple(spec.get("tags", ()))
    candidates = [(tag, *base_rules[tag]) for tag in tags if tag in base_rules]
    chosen, source = own, "dataset"
    if candidates and base_id is not None:
        top = max(strictness(p["action"], p) for _, _, p in candidates)
        strongest = [
            (t, letter, p) for t, letter, p in candidates if strictness(p["action"], p) == top
        ]
        if any(p != strongest[0][2] for _, _, p in strongest):
            raise InsituError(
                ErrorCode.POLICY_INVALID,
                f"column {name!r}: tags {sorted(t for t, _, _ in strongest)} map to "
                "different base actions of equal strictness; tag the column unambiguously",
            )
        _, letter, base_params = strongest[0]
        mine = strictness(own["action"], own)
        same_kind = (own["action"], own.get("kind")) == (
            base_params["action"],
            base_params.get("kind"),
        )
        if not (mine > top or (mine == top and same_kind)):
            chosen, source = base_params, f"base:{base_id[0]}/{letter}"
    params = {k: v for k, v in chosen.items() if k != "action"}
    return ColumnRule(
        name=name,
        action=chosen["action"],
        tags=tags,
        params=MappingProxyType(params),
        source=source,
    )


def _check_semantics(policy: Policy) -> None:
    names = set(policy.column_names)
    for rule in policy.columns:
        if rule.action == "noise":
            lo, hi = (float(x) for x in rule.params["clip"])
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise InsituError(
                    ErrorCode.POLICY_INVALID,
                    f"column {rule.name!r}: noise clip must be finite with low < high",
                )
        if rule.action == "generalize" and rule.params.get("birth") and rule.kind != "date":
            raise InsituError(
                ErrorCode.POLICY_INVALID, f"column {rule.name!r}: 'birth' applies to dates only"
            )
    for qi in policy.quasi_identifiers:
        if qi not in names:
            raise InsituError(
                ErrorCode.POLICY_INVALID, f"quasi-identifier {qi!r} is not a policy column"
            )
        rule = policy.rule(qi)
        if rule.removes_column:
            raise InsituError(
                ErrorCode.POLICY_INVALID,
                f"quasi-identifier {qi!r} is dropped by the policy; remove it from the list",
            )
        if rule.action == "noise":
            # Noised values are continuous: every group would have size 1.
            raise InsituError(
                ErrorCode.POLICY_INVALID, f"quasi-identifier {qi!r} cannot be a noise column"
            )
    if all(rule.removes_column for rule in policy.columns):
        raise InsituError(ErrorCode.POLICY_INVALID, "policy releases no column at all")


def _read_yaml(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InsituError(ErrorCode.POLICY_INVALID, f"policy file {path} not found") from None
    except OSError as exc:
        raise InsituError(ErrorCode.POLICY_INVALID, f"policy file {path}: {exc.strerror}") from None
    if len(raw) > _MAX_POLICY_BYTES:
        raise InsituError(ErrorCode.POLICY_INVALID, f"policy file {path} is too large")
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InsituError(
            ErrorCode.POLICY_INVALID, f"policy file {path} is not valid YAML{where}"
        ) from None


@cache
def _schema_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((DEFAULT_POLICY_DIR / "schema.json").read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def _validate_schema(doc: Any, what: str) -> None:
    _check_keys(doc)
    errors = sorted(_schema_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        # best_match picks the most specific error among the oneOf branches.
        best = jsonschema.exceptions.best_match(errors)
        where = "/".join(str(p) for p in best.absolute_path) or "(top level)"
        raise InsituError(
            ErrorCode.POLICY_INVALID, f"{what} violates the schema at {where}: {best.message}"
        )


def _check_keys(node: Any) -> None:
    """YAML allows non-string keys (``yes:``, ``1:``, dates); policies do not."""
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise InsituError(
                    ErrorCode.POLICY_INVALID,
                    f"policy keys must be strings, got {type(key).__name__}",
                )
            _check_keys(value)
    elif isinstance(node, list):
        for item in node:
            _check_keys(item)
