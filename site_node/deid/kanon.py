"""k-anonymity over the quasi-identifiers of a transformed table.

Rows are grouped by their (already generalized) quasi-identifier values; every row in a
group smaller than k is suppressed. If that would suppress more than the policy allows,
the release is refused with an error that states the reason and the sizes of the groups
below k, never their values. Grouping is vectorized: each column is dictionary-encoded
to integer codes (null is a value of its own) and the codes are combined with numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from insitu.errors import ErrorCode, InsituError

__all__ = ["KAnonymity", "enforce_k_anonymity", "group_sizes"]

_SIZES_SHOWN = 25
_DENSE_SPAN = 1 << 24  # count with bincount while the key space is at most this big


@dataclass(frozen=True)
class KAnonymity:
    """What enforcement did: ``keep`` marks surviving rows; ``k_achieved`` is the smallest
    surviving group (0 when nothing survives)."""

    keep: np.ndarray
    rows_in: int
    rows_out: int
    groups: int
    groups_suppressed: int
    k_achieved: int

    @property
    def suppressed_fraction(self) -> float:
        return 0.0 if self.rows_in == 0 else (self.rows_in - self.rows_out) / self.rows_in


def group_sizes(table: pa.Table, quasi_identifiers: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(group id per row, size per group)`` over the quasi-identifier columns.

    Without quasi-identifiers the whole table is one group.
    """
    n = table.num_rows
    key = np.zeros(n, dtype=np.int64)
    span = 1  # key values lie in [0, span)
    for name in quasi_identifiers:
        encoded = pc.dictionary_encode(table.column(name).combine_chunks(), null_encoding="encode")
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        width = max(len(encoded.dictionary), 1)
        if span * width > _DENSE_SPAN:
            # Re-densify so the mixed-radix key can never overflow.
            _, key = np.unique(key, return_inverse=True)
            key = key.reshape(-1)
            span = int(key.max()) + 1 if n else 1
        key = key * width + codes
        span *= width
    if n == 0:
        return key, np.zeros(0, dtype=np.int64)
    if span <= _DENSE_SPAN:
        # Small key space (the usual case: a few generalized columns): count directly.
        counts = np.bincount(key, minlength=span)
        present = np.flatnonzero(counts)
        remap = np.zeros(span, dtype=np.int64)
        remap[present] = np.arange(len(present))
        return remap[key], counts[present]
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def enforce_k_anonymity(
    table: pa.Table,
    quasi_identifiers: Sequence[str],
    *,
    k: int,
    max_suppression_fraction: float,
) -> KAnonymity:
    """Mark rows in groups smaller than ``k`` for suppression, or refuse.

    Raises ``FAILED_PRECONDITION`` when more than ``max_suppression_fraction`` of the rows
    would be suppressed, or when nothing would be left to release.
    """
    if k < 1:
        raise InsituError(ErrorCode.POLICY_INVALID, "k must be at least 1")
    rows_in = table.num_rows
    if rows_in == 0:
        raise InsituError(ErrorCode.FAILED_PRECONDITION, "the dataset has no rows to release")
    group, sizes = group_sizes(table, quasi_identifiers)
    small = sizes < k
    keep = ~small[group]
    rows_out = int(keep.sum())
    result = KAnonymity(
        keep=keep,
        rows_in=rows_in,
        rows_out=rows_out,
        groups=len(sizes),
        groups_suppressed=int(small.sum()),
        k_achieved=int(sizes[~small].min()) if rows_out else 0,
    )
    if rows_out == 0 or result.suppressed_fraction > max_suppression_fraction:
        below = np.sort(sizes[small])
        shown = ", ".join(str(int(s)) for s in below[:_SIZES_SHOWN])
        more = f", and {len(below) - _SIZES_SHOWN} more" if len(below) > _SIZES_SHOWN else ""
        raise InsituError(
            ErrorCode.FAILED_PRECONDITION,
            f"k-anonymity refused: k={k} over quasi-identifiers {list(quasi_identifiers)} "
            f"would suppress {rows_in - rows_out} of {rows_in} rows "
            f"({result.suppressed_fraction:.1%}, allowed {max_suppression_fraction:.1%}); "
            f"{len(below)} of {len(sizes)} groups are below k, sizes: [{shown}{more}]",
        )
    return result
