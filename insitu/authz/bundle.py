"""A policy bundle: the schema and every policy file, read, checked and parsed ONCE into
cedarpy handles, with the hash that names this exact set in the audit log.

Loading is strict and all-or-nothing. It refuses, with :class:`InsituError`
(``POLICY_INVALID``) and a message naming the file and policy:
  1. a missing directory or schema, or a schema that does not parse;
  2. no policy at all (an empty set would deny everything without saying why);
  3. a file that does not parse, or a policy that does not validate against the schema;
  4. a policy without a unique ``@id("...")`` annotation, or a template;
  5. a ``permit`` in a site's local directory: local policies may only ``forbid``, so by
     Cedar's semantics (forbid wins, default deny) they can only restrict.

Example::

    bundle = load_bundle(Path("policies/rbac"), local_dir=Path("/etc/insitu/policy.d"))
    print(bundle.policy_hash, len(bundle.policy_ids))
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cedarpy

from insitu.errors import ErrorCode, InsituError

__all__ = ["SCHEMA_FILE", "PolicyBundle", "load_bundle", "policy_set_hash"]

SCHEMA_FILE = "schema.cedarschema"
_ID = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,127}$")


@dataclass(frozen=True)
class PolicyBundle:
    """An immutable, parsed policy set; safe to share between threads."""

    policy_set: cedarpy.PolicySet
    schema: cedarpy.Schema
    policy_hash: str
    # Cedar's positional policy id ("policy12") -> the policy's @id annotation.
    ids: Mapping[str, str]
    files: tuple[str, ...]

    @property
    def policy_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self.ids.values()))


def _refuse(why: str) -> InsituError:
    return InsituError(ErrorCode.POLICY_INVALID, why)


def policy_set_hash(files: Mapping[str, bytes]) -> str:
    """SHA-256 (hex) over the files sorted by label, each as length-prefixed label and
    content, so no two distinct sets (renames included) share a hash."""
    h = hashlib.sha256()
    for label in sorted(files):
        name = label.encode()
        data = files[label]
        h.update(len(name).to_bytes(8, "big") + name)
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def _read(path: Path) -> tuple[bytes, str]:
    try:
        data = path.read_bytes()
        return data, data.decode("utf-8")
    except OSError as e:
        raise _refuse(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise _refuse(f"{path}: not UTF-8") from None


def _one_line(msg: str) -> str:
    return " ".join(msg.split())[:500]


def _check_file(
    label: str, text: str, schema: cedarpy.Schema, local: bool, seen: dict[str, str]
) -> int:
    """Steps 3-5 for one file; returns its number of policies."""
    try:
        pst = cedarpy.PolicySet.from_str(text).to_pst()
    except ValueError as e:
        raise _refuse(f"{label}: syntax error: {_one_line(str(e))}") from None
    if pst.templates:
        raise _refuse(f"{label}: templates (?principal / ?resource slots) are not allowed")
    for pid, pol in pst.static_policies.items():
        annotated = pol.annotations.get("id")
        where = f"{label}: policy #{pid.removeprefix('policy')}"
        if annotated is None or not _ID.fullmatch(annotated):
            raise _refuse(f'{where} needs an @id("...") of lowercase letters, digits, . _ -')
        if annotated in seen:
            raise _refuse(f"{label}: @id {annotated!r} is already used in {seen[annotated]}")
        seen[annotated] = label
        if local and pol.effect != "forbid":
            raise _refuse(
                f"{label}: policy {annotated!r} is a {pol.effect}; local policies may only "
                "forbid (they can restrict the federation policy, never widen it)"
            )
    result = cedarpy.validate_policies(text, schema)
    if not result.validation_passed:
        names = result.id_annotations_by_policy_id
        first = result.errors[0]
        pol_id = names.get(first.policy_id, first.policy_id)
        more = f" (+{len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
        raise _refuse(
            f"{label}: policy {pol_id!r} violates the schema: {_one_line(first.error)}{more}"
        )
    return len(pst.static_policies)


def _policy_files(d: Path) -> list[Path]:
    # Dotfiles are editor droppings (.#x.cedar, .x.cedar.swp), not policy.
    return sorted(p for p in d.glob("*.cedar") if not p.name.startswith("."))


def load_bundle(federation_dir: Path, local_dir: Path | None = None) -> PolicyBundle:
    """Read, check and parse the policy set; raise ``POLICY_INVALID`` saying why not."""
    if not federation_dir.is_dir():
        raise _refuse(f"policy directory {federation_dir} does not exist")
    if local_dir is not None and not local_dir.is_dir():
        raise _refuse(f"local policy directory {local_dir} does not exist")
    schema_path = federation_dir / SCHEMA_FILE
    if not schema_path.is_file():
        raise _refuse(f"{schema_path} is missing")
    schema_bytes, schema_text = _read(schema_path)
    try:
        schema = cedarpy.Schema.from_str(schema_text)
    except ValueError as e:
        raise _refuse(f"{SCHEMA_FILE}: {_one_line(str(e))}") from None

    sources = [(f"federation/{p.name}", p, False) for p in _policy_files(federation_dir)]
    if local_dir is not None:
        sources += [(f"local/{p.name}", p, True) for p in _policy_files(local_dir)]
    hashed: dict[str, bytes] = {SCHEMA_FILE: schema_bytes}
    texts: list[str] = []
    seen: dict[str, str] = {}
    count = 0
    for label, path, local in sources:
        data, text = _read(path)
        hashed[label] = data
        count += _check_file(label, text, schema, local, seen)
        texts.append(text)
    if count == 0:
        raise _refuse(
            f"no policies in {federation_dir}/*.cedar: an empty policy set denies everything"
        )

    # Parse the whole set once; this handle is what every decision evaluates.
    combined = cedarpy.PolicySet.from_str("\n".join(texts))
    pst = combined.to_pst()
    ids = {pid: pol.annotations["id"] for pid, pol in pst.static_policies.items()}
    if len(ids) != count:  # would mean the concatenation changed what the files say
        raise _refuse(f"policy count mismatch after concatenation ({len(ids)} != {count})")
    return PolicyBundle(
        policy_set=combined,
        schema=schema,
        policy_hash=policy_set_hash(hashed),
        ids=ids,
        files=tuple(label for label, _, _ in sources),
    )


def default_policy_dir() -> Path:
    """The federation policies shipped with insitu (``policies/rbac`` beside the package)."""
    return Path(__file__).resolve().parents[2] / "policies" / "rbac"
