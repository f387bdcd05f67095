"""Proof bundles: self-contained JSON an auditor can check with nothing but a public key.

An inclusion bundle says "entry ``leaf_index`` is in the tree of size ``tree_size``"; a
consistency bundle says "the tree of size ``old_size`` is a prefix of the tree of size
``tree_size``". Each carries the RFC 6962 proof (``hashes``, hex, leaf to root), the roots,
and the signed checkpoint(s) the roots come from, so the claim is tied to the log's key.

Example::

    bundle = inclusion_bundle(tree, 42, checkpoint_note, record_bytes)
    check = verify_bundle(bundle, public_key=pub)
    assert check.signed
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from insitu.audit.checkpoint import Checkpoint, _unverified_parse, verify_checkpoint
from insitu.audit.errors import InvalidProofError
from insitu.audit.merkle import hash_leaf, verify_consistency, verify_inclusion, verify_match
from insitu.audit.record import canonical_bytes, parse_json_object
from insitu.audit.tree import MerkleTree

__all__ = ["BundleCheck", "consistency_bundle", "inclusion_bundle", "verify_bundle"]

_INCLUSION_KEYS = {
    "type",
    "origin",
    "leaf_index",
    "tree_size",
    "leaf_hash",
    "hashes",
    "root",
    "checkpoint",
}
_CONSISTENCY_KEYS = {
    "type",
    "origin",
    "old_size",
    "tree_size",
    "old_root",
    "hashes",
    "root",
    "checkpoint",
    "old_checkpoint",
}


@dataclasses.dataclass(frozen=True)
class BundleCheck:
    kind: str
    tree_size: int
    root: bytes
    signed: bool  # the root is vouched for by a checkpoint signature verified here


def _checkpoint_for(tree: MerkleTree, note: str) -> Checkpoint:
    cp = _unverified_parse(note)
    if cp.size > tree.size:
        raise InvalidProofError(f"checkpoint size {cp.size} exceeds the {tree.size} entries held")
    verify_match(tree.root(cp.size), cp.root, f"root at checkpoint size {cp.size}")
    return cp


def inclusion_bundle(
    tree: MerkleTree, index: int, checkpoint_note: str, record: bytes | None = None
) -> dict[str, Any]:
    """Bundle proving entry ``index`` is in the tree the checkpoint commits to."""
    cp = _checkpoint_for(tree, checkpoint_note)
    bundle: dict[str, Any] = {
        "type": "inclusion",
        "origin": cp.origin,
        "leaf_index": index,
        "tree_size": cp.size,
        "leaf_hash": tree.leaf_hash(index).hex(),
        "hashes": [h.hex() for h in tree.inclusion_proof(index, cp.size)],
        "root": cp.root.hex(),
        "checkpoint": checkpoint_note,
    }
    if record is not None:
        bundle["record"] = json.loads(record)
    return bundle


def consistency_bundle(
    tree: MerkleTree, old_size: int, checkpoint_note: str, old_checkpoint_note: str | None = None
) -> dict[str, Any]:
    """Bundle proving the tree of ``old_size`` is a prefix of the checkpointed tree."""
    cp = _checkpoint_for(tree, checkpoint_note)
    if old_checkpoint_note is not None:
        old = _checkpoint_for(tree, old_checkpoint_note)
        if old.size != old_size:
            raise InvalidProofError(f"old checkpoint has size {old.size}, not {old_size}")
    return {
        "type": "consistency",
        "origin": cp.origin,
        "old_size": old_size,
        "tree_size": cp.size,
        "old_root": tree.root(old_size).hex(),
        "hashes": [h.hex() for h in tree.consistency_proof(old_size, cp.size)],
        "root": cp.root.hex(),
        "checkpoint": checkpoint_note,
        "old_checkpoint": old_checkpoint_note,
    }


def _hex(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidProofError(f"{what} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise InvalidProofError(f"{what} is not hex") from None


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidProofError(f"{what} must be a non-negative integer")
    return value


def _hashes(value: Any) -> list[bytes]:
    if not isinstance(value, list):
        raise InvalidProofError("hashes must be a list of hex strings")
    return [_hex(h, f"hashes[{i}]") for i, h in enumerate(value)]


def _vouch(
    note: Any, size: int, root: bytes, public_key: bytes | None, key_name: str | None, origin: Any
) -> bool:
    """Tie (size, root) to a checkpoint; True when its signature was verified here."""
    if note is None:
        return False
    if not isinstance(note, str):
        raise InvalidProofError("checkpoint must be a signed note string")
    if public_key is None:
        cp = _unverified_parse(note)
    else:
        cp = verify_checkpoint(note, key_name or str(origin), public_key, origin=str(origin))
    if cp.size != size:
        raise InvalidProofError(f"checkpoint size {cp.size} differs from the bundle's {size}")
    verify_match(root, cp.root, "checkpoint root")
    return public_key is not None


def verify_bundle(
    bundle: Mapping[str, Any] | bytes | str,
    *,
    public_key: bytes | None = None,
    key_name: str | None = None,
) -> BundleCheck:
    """Check a bundle's proof (RFC 6962) and, given the log's key, its checkpoint signature.

    Without ``public_key`` only the math is checked and ``signed`` is False: the roots are
    then just claims.
    """
    b = parse_json_object(bundle) if isinstance(bundle, bytes | str) else dict(bundle)
    kind = b.get("type")
    if kind == "inclusion":
        extra = set(b) - _INCLUSION_KEYS - {"record"}
        if extra or not set(b) >= _INCLUSION_KEYS:
            raise InvalidProofError("inclusion bundle has missing or unknown fields")
        index, size = _int(b["leaf_index"], "leaf_index"), _int(b["tree_size"], "tree_size")
        leaf, root = _hex(b["leaf_hash"], "leaf_hash"), _hex(b["root"], "root")
        if "record" in b:
            rec = b["record"]
            if not isinstance(rec, dict) or rec.get("seq") != index:
                raise InvalidProofError("bundled record is not the entry at leaf_index")
            verify_match(hash_leaf(canonical_bytes(rec)), leaf, "leaf hash of the bundled record")
        verify_inclusion(leaf, index, size, _hashes(b["hashes"]), root)
        signed = _vouch(b["checkpoint"], size, root, public_key, key_name, b["origin"])
        return BundleCheck("inclusion", size, root, signed)
    if kind == "consistency":
        if set(b) != _CONSISTENCY_KEYS:
            raise InvalidProofError("consistency bundle has missing or unknown fields")
        old_size, size = _int(b["old_size"], "old_size"), _int(b["tree_size"], "tree_size")
        old_root, root = _hex(b["old_root"], "old_root"), _hex(b["root"], "root")
        verify_consistency(old_size, size, _hashes(b["hashes"]), old_root, root)
        signed = _vouch(b["checkpoint"], size, root, public_key, key_name, b["origin"])
        if b["old_checkpoint"] is not None:
            signed = (
                _vouch(b["old_checkpoint"], old_size, old_root, public_key, key_name, b["origin"])
                and signed
            )
        return BundleCheck("consistency", size, root, signed)
    raise InvalidProofError("bundle type must be 'inclusion' or 'consistency'")
