"""RFC 6962 Merkle tree hashing, proofs and their verifiers, as small pure functions.

Leaves hash as ``SHA-256(0x00 || data)``, interior nodes as ``SHA-256(0x01 || l || r)``,
the empty tree as ``SHA-256("")``. Verifiers check every precondition (index < size,
hash and proof lengths) before hashing, and compare roots in constant time; a mismatch
raises :class:`RootMismatchError` naming the expected and the computed root. The
verifier algorithms follow the bit-twiddling formulation of transparency-dev/merkle.

The builders here take the full list of leaf hashes and cost O(n) per call; the log
keeps an incremental :class:`insitu.audit.tree.MerkleTree` for O(log² n) proofs.

Example::

    leaves = [hash_leaf(b"a"), hash_leaf(b"b"), hash_leaf(b"c")]
    proof = inclusion_proof(leaves, 2, 3)
    verify_inclusion(leaves[2], 2, 3, proof, root(leaves))
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

from insitu.audit.errors import InvalidProofError, RootMismatchError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "NodeHash",
    "build_consistency_proof",
    "build_inclusion_proof",
    "consistency_proof",
    "hash_children",
    "hash_leaf",
    "inclusion_proof",
    "largest_power_of_two_below",
    "root",
    "root_from_inclusion_proof",
    "verify_consistency",
    "verify_inclusion",
    "verify_match",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeHash = Callable[[int, int], bytes]
"""``node(start, end)``: the RFC 6962 hash of leaves ``[start, end)``."""


def hash_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def largest_power_of_two_below(n: int) -> int:
    """The largest power of two strictly less than ``n`` (n >= 2): RFC 6962's split k."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over ``leaf_hashes``, bottom-up: pair neighbours, promote an odd last node."""
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        nxt = [hash_children(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def build_inclusion_proof(node: NodeHash, index: int, size: int) -> list[bytes]:
    """RFC 6962 PATH(index, D[0:size]) given a range-hash function (leaf to root order)."""
    if not 0 <= index < size:
        raise InvalidProofError(f"index {index} is not below tree size {size}")
    path: list[bytes] = []
    start, end, m = 0, size, index
    while end - start > 1:
        k = largest_power_of_two_below(end - start)
        if m < k:
            path.append(node(start + k, end))
            end = start + k
        else:
            path.append(node(start, start + k))
            start, m = start + k, m - k
    path.reverse()
    return path


def build_consistency_proof(node: NodeHash, m: int, n: int) -> list[bytes]:
    """RFC 6962 PROOF(m, D[0:n]); empty when m == 0 or m == n."""
    if not 0 <= m <= n:
        raise InvalidProofError(f"consistency needs 0 <= {m} <= {n}")
    if m == 0 or m == n:
        return []
    proof: list[bytes] = []
    start, end, mm, complete = 0, n, m, True
    while True:
        size = end - start
        if mm == size:
            if not complete:
                proof.append(node(start, end))
            break
        k = largest_power_of_two_below(size)
        if mm <= k:
            proof.append(node(start + k, end))
            end = start + k
        else:
            proof.append(node(start, start + k))
            start, mm, complete = start + k, mm - k, False
    proof.reverse()
    return proof


def _range_node(leaf_hashes: Sequence[bytes]) -> NodeHash:
    def node(start: int, end: int) -> bytes:
        return root(leaf_hashes[start:end])

    return node


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """Inclusion proof of leaf ``index`` in the tree of the first ``size`` leaves."""
    if size > len(leaf_hashes):
        raise InvalidProofError(f"tree size {size} exceeds {len(leaf_hashes)} leaves")
    return build_inclusion_proof(_range_node(leaf_hashes), index, size)


def consistency_proof(leaf_hashes: Sequence[bytes], m: int, n: int) -> list[bytes]:
    """Consistency proof between the trees of the first ``m`` and ``n`` leaves."""
    if n > len(leaf_hashes):
        raise InvalidProofError(f"tree size {n} exceeds {len(leaf_hashes)} leaves")
    return build_consistency_proof(_range_node(leaf_hashes), m, n)


# --- verification -------------------------------------------------------------------


def verify_match(computed: bytes, expected: bytes, what: str = "root") -> None:
    """Constant-time equality of two hashes; RootMismatchError otherwise."""
    if not hmac.compare_digest(computed, expected):
        raise RootMismatchError(expected, computed, what)


def _check_hashes(what: str, hashes: Sequence[bytes]) -> None:
    for i, h in enumerate(hashes):
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise InvalidProofError(f"{what}[{i}] is not a {HASH_SIZE}-byte hash")


def _decomp_inclusion(index: int, size: int) -> tuple[int, int]:
    inner = (index ^ (size - 1)).bit_length()
    border = bin(index >> inner).count("1")
    return inner, border


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        seed = hash_children(seed, h) if (index >> i) & 1 == 0 else hash_children(h, seed)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        if (index >> i) & 1:
            seed = hash_children(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    for h in proof:
        seed = hash_children(h, seed)
    return seed


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """The root implied by an inclusion proof; InvalidProofError on bad inputs."""
    if not 0 <= index < size:
        raise InvalidProofError(f"index {index} is not below tree size {size}")
    _check_hashes("leaf_hash", [leaf_hash])
    _check_hashes("proof", proof)
    inner, border = _decomp_inclusion(index, size)
    if len(proof) != inner + border:
        raise InvalidProofError(f"proof has {len(proof)} hashes, want {inner + border}")
    res = _chain_inner(leaf_hash, proof[:inner], index)
    return _chain_border_right(res, proof[inner:])


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes
) -> None:
    """Raise unless ``proof`` shows leaf ``index`` with ``leaf_hash`` in tree ``root_hash``."""
    _check_hashes("root", [root_hash])
    verify_match(root_from_inclusion_proof(leaf_hash, index, size, proof), root_hash)


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Raise unless ``proof`` shows the tree (size1, root1) is a prefix of (size2, root2)."""
    if size1 < 0 or size2 < size1:
        raise InvalidProofError(f"consistency needs 0 <= size1 ({size1}) <= size2 ({size2})")
    _check_hashes("root", [root1, root2])
    _check_hashes("proof", proof)
    if size1 == size2:
        if proof:
            raise InvalidProofError("size1 == size2 but the proof is not empty")
        verify_match(root1, root2)
        return
    if size1 == 0:
        # Every tree extends the empty tree; a non-empty proof is malformed.
        if proof:
            raise InvalidProofError("size1 == 0 but the proof is not empty")
        return
    if not proof:
        raise InvalidProofError("empty consistency proof")
    inner, border = _decomp_inclusion(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1
    inner -= shift
    # The proof starts with the hash of the subtree of size 2^shift, unless size1 is it.
    if size1 == 1 << shift:
        seed, rest = root1, proof
    else:
        seed, rest = proof[0], proof[1:]
    if len(rest) != inner + border:
        want = inner + border + (len(proof) - len(rest))
        raise InvalidProofError(f"proof has {len(proof)} hashes, want {want}")
    mask = (size1 - 1) >> shift
    hash1 = _chain_border_right(_chain_inner_right(seed, rest[:inner], mask), rest[inner:])
    verify_match(hash1, root1, "old root")
    hash2 = _chain_border_right(_chain_inner(seed, rest[:inner], mask), rest[inner:])
    verify_match(hash2, root2, "new root")
