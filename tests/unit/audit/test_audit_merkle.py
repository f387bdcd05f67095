"""RFC 6962 hashing and proofs: known answers, transparency-dev probes, and a property
test against a naive recursive reference tree."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from insitu.audit import merkle
from insitu.audit.errors import AuditError, InvalidProofError, RootMismatchError
from insitu.audit.tree import CompactRange, MerkleTree

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
INCLUSION = sorted((VECTORS / "transparency-dev" / "inclusion").glob("*.json"))
CONSISTENCY = sorted((VECTORS / "transparency-dev" / "consistency").glob("*.json"))


def _b64(v: str | None) -> bytes:
    return base64.b64decode(v or "")


def _proof(v: list[str] | None) -> list[bytes]:
    return [_b64(h) for h in (v or [])]


# --- naive reference, straight from RFC 6962 section 2.1 ----------------------------


def ref_mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [ref_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, leaves[:k], b), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


# --- known answers -------------------------------------------------------------------


def test_rfc6962_known_answer_roots() -> None:
    ka = json.loads((VECTORS / "rfc6962" / "known-answers.json").read_text())
    assert merkle.root([]) == bytes.fromhex(ka["empty_root"]) == merkle.EMPTY_ROOT
    leaves = [merkle.hash_leaf(bytes.fromhex(x)) for x in ka["leaves"]]
    for n, want in enumerate(ka["roots"], start=1):
        assert merkle.root(leaves[:n]).hex() == want
        assert MerkleTree(leaves[:n]).root().hex() == want
        cr = CompactRange()
        for lh in leaves[:n]:
            cr.append(lh)
        assert cr.root().hex() == want


def test_leaf_and_node_domain_separation() -> None:
    assert merkle.hash_leaf(b"") == hashlib.sha256(b"\x00").digest()
    assert (
        merkle.hash_children(b"a" * 32, b"b" * 32)
        == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )


@pytest.mark.parametrize("path", INCLUSION, ids=lambda p: p.name)
def test_inclusion_probe(path: Path) -> None:
    v: dict[str, Any] = json.loads(path.read_text())
    args = (_b64(v["leafHash"]), v["leafIdx"], v["treeSize"], _proof(v["proof"]), _b64(v["root"]))
    if v["wantErr"]:
        with pytest.raises(AuditError):
            merkle.verify_inclusion(*args)
    else:
        merkle.verify_inclusion(*args)


@pytest.mark.parametrize("path", CONSISTENCY, ids=lambda p: p.name)
def test_consistency_probe(path: Path) -> None:
    v: dict[str, Any] = json.loads(path.read_text())
    args = (v["size1"], v["size2"], _proof(v["proof"]), _b64(v["root1"]), _b64(v["root2"]))
    if v["wantErr"]:
        with pytest.raises(AuditError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


def test_vector_files_are_present() -> None:
    # A glob that silently matches nothing would make the probe tests vacuous.
    assert len(INCLUSION) >= 10 and len(CONSISTENCY) >= 10
    assert any(json.loads(p.read_text())["wantErr"] for p in INCLUSION)
    assert any(not json.loads(p.read_text())["wantErr"] for p in CONSISTENCY)


# --- errors and preconditions --------------------------------------------------------


def test_root_mismatch_names_expected_and_computed() -> None:
    leaves = [merkle.hash_leaf(bytes([i])) for i in range(5)]
    proof = merkle.inclusion_proof(leaves, 3, 5)
    wrong = b"\x11" * 32
    with pytest.raises(RootMismatchError) as ei:
        merkle.verify_inclusion(leaves[3], 3, 5, proof, wrong)
    assert ei.value.expected == wrong
    assert ei.value.computed == merkle.root(leaves)
    assert wrong.hex() in str(ei.value) and merkle.root(leaves).hex() in str(ei.value)


@pytest.mark.parametrize(
    ("index", "size", "proof_len", "leaf_len"),
    [(5, 5, 3, 32), (-1, 5, 3, 32), (0, 0, 0, 32), (0, 5, 2, 32), (0, 5, 3, 31)],
)
def test_inclusion_preconditions(index: int, size: int, proof_len: int, leaf_len: int) -> None:
    with pytest.raises(InvalidProofError):
        merkle.root_from_inclusion_proof(
            b"\x00" * leaf_len, index, size, [b"\x00" * 32] * proof_len
        )


def test_consistency_preconditions() -> None:
    r = b"\x00" * 32
    with pytest.raises(InvalidProofError):
        merkle.verify_consistency(5, 4, [r], r, r)
    with pytest.raises(InvalidProofError):
        merkle.verify_consistency(0, 4, [r], r, r)
    with pytest.raises(InvalidProofError):
        merkle.verify_consistency(3, 3, [r], r, r)
    with pytest.raises(InvalidProofError):
        merkle.verify_consistency(2, 4, [b"short"], r, r)
    merkle.verify_consistency(0, 4, [], r, b"\x01" * 32)  # the empty tree precedes any tree
    with pytest.raises(InvalidProofError):
        merkle.inclusion_proof([r], 0, 2)


def test_tree_rejects_sizes_it_does_not_hold() -> None:
    t = MerkleTree([merkle.hash_leaf(b"x")])
    with pytest.raises(InvalidProofError):
        t.root(2)
    with pytest.raises(InvalidProofError):
        t.inclusion_proof(0, 2)
    with pytest.raises(InvalidProofError):
        t.leaf_hash(1)
    with pytest.raises(InvalidProofError):
        CompactRange(3, [r for r in [b"\x00" * 32]])


# --- properties against the reference ------------------------------------------------

leaf_lists = st.lists(st.binary(max_size=8), min_size=1, max_size=70)


@settings(max_examples=120, deadline=None)
@given(data=leaf_lists, pick=st.data())
def test_roots_and_proofs_match_reference(data: list[bytes], pick: st.DataObject) -> None:
    leaves = [merkle.hash_leaf(d) for d in data]
    n = len(leaves)
    tree = MerkleTree(leaves)
    assert merkle.root(leaves) == ref_mth(data) == tree.root()

    size = pick.draw(st.integers(1, n))
    index = pick.draw(st.integers(0, size - 1))
    want = ref_path(index, data[:size])
    assert merkle.inclusion_proof(leaves, index, size) == want
    assert tree.inclusion_proof(index, size) == want
    merkle.verify_inclusion(leaves[index], index, size, want, ref_mth(data[:size]))
    if size > 1:
        # Any single flipped bit in the proof must break it.
        bad = list(want)
        j = pick.draw(st.integers(0, len(bad) - 1))
        bad[j] = bytes([bad[j][0] ^ 1]) + bad[j][1:]
        with pytest.raises(RootMismatchError):
            merkle.verify_inclusion(leaves[index], index, size, bad, ref_mth(data[:size]))

    m = pick.draw(st.integers(0, n))
    cons = [] if m in (0, n) else ref_subproof(m, data, True)
    assert merkle.consistency_proof(leaves, m, n) == cons
    assert tree.consistency_proof(m, n) == cons
    merkle.verify_consistency(m, n, cons, ref_mth(data[:m]), ref_mth(data))
    if 0 < m < n:
        with pytest.raises(RootMismatchError):
            merkle.verify_consistency(m, n, cons, ref_mth(data[:m]), b"\x42" * 32)

    cr = CompactRange(m, tree.compact_range(m))
    for lh in leaves[m:]:
        cr.append(lh)
    assert cr.root() == tree.root()
