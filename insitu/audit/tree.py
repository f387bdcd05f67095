"""Incremental RFC 6962 trees: a full tree for fast proofs, and a compact range.

:class:`MerkleTree` stores every perfect subtree hash, level by level, in flat
``bytearray`` s (32 bytes a node, about 64 MiB for a million leaves). Appending costs one
hash amortized; the root or any proof for any past size costs O(log² n) hashes, because
every node an RFC 6962 proof needs is either a stored perfect subtree or a right edge
folded from O(log n) of them.

:class:`CompactRange` keeps only the perfect subtrees covering ``[0, size)``: enough to
compute the root and keep appending. A pruned log's archive carries one, so the tree stays
verifiable without the pruned leaves.

Example::

    t = MerkleTree()
    for data in (b"a", b"b", b"c"):
        t.append(hash_leaf(data))
    proof = t.inclusion_proof(1, 3)
    verify_inclusion(t.leaf_hash(1), 1, 3, proof, t.root())
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from insitu.audit.errors import InvalidProofError
from insitu.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    build_consistency_proof,
    build_inclusion_proof,
    hash_children,
    largest_power_of_two_below,
)

__all__ = ["CompactRange", "MerkleTree"]


class MerkleTree:
    """An append-only RFC 6962 tree over leaf hashes. Not thread-safe: callers lock."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        if len(leaf_hash) != HASH_SIZE:
            raise InvalidProofError(f"leaf hash must be {HASH_SIZE} bytes")
        levels = self._levels
        levels[0] += leaf_hash
        idx, h = self._size, 0
        self._size += 1
        # Each completed right child closes a perfect parent one level up.
        while idx & 1:
            lvl = levels[h]
            off = (idx - 1) * HASH_SIZE
            parent = hash_children(
                bytes(lvl[off : off + HASH_SIZE]), bytes(lvl[off + HASH_SIZE : off + 2 * HASH_SIZE])
            )
            if len(levels) == h + 1:
                levels.append(bytearray())
            levels[h + 1] += parent
            idx >>= 1
            h += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        for lh in leaf_hashes:
            self.append(lh)

    def leaf_hash(self, index: int) -> bytes:
        if not 0 <= index < self._size:
            raise InvalidProofError(f"index {index} is not below tree size {self._size}")
        return bytes(self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def leaf_hashes(self) -> list[bytes]:
        lvl = self._levels[0]
        return [bytes(lvl[i : i + HASH_SIZE]) for i in range(0, len(lvl), HASH_SIZE)]

    def node(self, start: int, end: int) -> bytes:
        """The RFC 6962 hash of leaves ``[start, end)`` (``end <= size``)."""
        n = end - start
        if n <= 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and start % n == 0:
            h = n.bit_length() - 1
            off = (start >> h) * HASH_SIZE
            return bytes(self._levels[h][off : off + HASH_SIZE])
        k = largest_power_of_two_below(n)
        return hash_children(self.node(start, start + k), self.node(start + k, end))

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self._size:
            raise InvalidProofError(f"tree size {size} exceeds the {self._size} leaves held")

    def root(self, size: int | None = None) -> bytes:
        size = self._size if size is None else size
        self._check_size(size)
        return self.node(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        self._check_size(size)
        return build_inclusion_proof(self.node, index, size)

    def consistency_proof(self, m: int, n: int) -> list[bytes]:
        self._check_size(n)
        return build_consistency_proof(self.node, m, n)

    def compact_range(self, size: int | None = None) -> list[bytes]:
        """The perfect subtrees covering ``[0, size)``, largest (leftmost) first."""
        size = self._size if size is None else size
        self._check_size(size)
        out: list[bytes] = []
        start = 0
        for h in range(size.bit_length() - 1, -1, -1):
            if size >> h & 1:
                out.append(self.node(start, start + (1 << h)))
                start += 1 << h
        return out


class CompactRange:
    """The left frontier of a tree of ``size`` leaves: root and appends, no proofs."""

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(nodes) != bin(size).count("1"):
            raise InvalidProofError(
                f"a compact range of size {size} has {bin(max(size, 0)).count('1')} nodes,"
                f" got {len(nodes)}"
            )
        for n in nodes:
            if len(n) != HASH_SIZE:
                raise InvalidProofError(f"compact range nodes must be {HASH_SIZE} bytes")
        self.size = size
        self.nodes = list(nodes)

    def append(self, leaf_hash: bytes) -> None:
        if len(leaf_hash) != HASH_SIZE:
            raise InvalidProofError(f"leaf hash must be {HASH_SIZE} bytes")
        carry, s = leaf_hash, self.size
        while s & 1:
            carry = hash_children(self.nodes.pop(), carry)
            s >>= 1
        self.nodes.append(carry)
        self.size += 1

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        acc = self.nodes[-1]
        for n in reversed(self.nodes[:-1]):
            acc = hash_children(n, acc)
        return acc
