"""Proof bundles: built from a log, checked by anyone, tampering detected."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from audit_support import ORIGIN, make_record

from insitu.audit.errors import AuditError, InvalidProofError, RootMismatchError, SignatureError
from insitu.audit.log import AuditLog
from insitu.audit.proofs import consistency_bundle, inclusion_bundle, verify_bundle
from insitu.audit.signing import LocalSigner
from insitu.audit.tree import MerkleTree

OpenLog = Callable[..., AuditLog]


@pytest.fixture
def setup(open_log: OpenLog) -> tuple[MerkleTree, str, str, bytes]:
    log = open_log()
    for i in range(11):
        log.append(make_record(i))
    old = log.checkpoint().note
    for i in range(11, 23):
        log.append(make_record(i))
    new = log.checkpoint().note
    tree = MerkleTree(log.store.leaf_hashes())
    record = next(log.store.entries(7, 8)).data
    assert record is not None
    return tree, old, new, record


def test_inclusion_bundle(setup: tuple[MerkleTree, str, str, bytes], signer: LocalSigner) -> None:
    tree, _, new, record = setup
    b = inclusion_bundle(tree, 7, new, record)
    assert set(b) >= {"leaf_index", "tree_size", "leaf_hash", "hashes", "root", "checkpoint"}
    assert (b["leaf_index"], b["tree_size"], b["origin"]) == (7, 23, ORIGIN)
    check = verify_bundle(b, public_key=signer.public_key)
    assert check.signed and check.tree_size == 23
    assert not verify_bundle(b).signed  # math only, without the key


def test_consistency_bundle(setup: tuple[MerkleTree, str, str, bytes], signer: LocalSigner) -> None:
    tree, old, new, _ = setup
    b = consistency_bundle(tree, 11, new, old)
    assert (b["old_size"], b["tree_size"]) == (11, 23)
    assert verify_bundle(b, public_key=signer.public_key).signed


def _flip(h: str) -> str:
    return ("1" if h[0] == "0" else "0") + h[1:]


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda b: b["hashes"].__setitem__(0, _flip(b["hashes"][0])), RootMismatchError),
        (lambda b: b.__setitem__("leaf_index", 8), AuditError),
        (lambda b: b.__setitem__("leaf_hash", _flip(b["leaf_hash"])), RootMismatchError),
        (lambda b: b["record"].__setitem__("outcome", "denied"), RootMismatchError),
        (lambda b: b.__setitem__("root", _flip(b["root"])), RootMismatchError),
        (lambda b: b.__setitem__("extra", 1), InvalidProofError),
        (lambda b: b["hashes"].append("00" * 32), InvalidProofError),
        (lambda b: b.__setitem__("tree_size", "23"), InvalidProofError),
    ],
)
def test_tampered_inclusion_bundles_fail(
    setup: tuple[MerkleTree, str, str, bytes],
    signer: LocalSigner,
    mutate: Callable[[dict[str, Any]], None],
    error: type[Exception],
) -> None:
    tree, _, new, record = setup
    b = copy.deepcopy(inclusion_bundle(tree, 7, new, record))
    mutate(b)
    with pytest.raises(error):
        verify_bundle(b, public_key=signer.public_key)


def test_bundle_checkpoint_from_another_key(
    setup: tuple[MerkleTree, str, str, bytes], signer: LocalSigner
) -> None:
    tree, _, new, _ = setup
    b = inclusion_bundle(tree, 3, new)
    with pytest.raises(SignatureError):
        verify_bundle(b, public_key=LocalSigner.generate().public_key)


def test_bundle_for_a_checkpoint_beyond_the_tree(setup: tuple[MerkleTree, str, str, bytes]) -> None:
    tree, _, new, _ = setup
    with pytest.raises(InvalidProofError):
        inclusion_bundle(MerkleTree(tree.leaf_hashes()[:5]), 3, new)
