"""Canary values: plant unique markers in raw identifier columns, then look for them
(raw, hex, base64) in anything that left the site.

A canary is long and uses letters outside the hex alphabet, so it cannot turn up by
chance inside a pseudonym or a float. PAN canaries are 19-digit Luhn-valid numbers
(a format check would otherwise null them out before they were ever at risk).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Collection, Iterable, Sequence

import pandas as pd

from insitu.errors import ErrorCode, InsituError
from site_node.data.synthetic import luhn_check_digit

__all__ = ["canary_forms", "find_canaries", "make_canaries", "plant_canaries"]


def make_canaries(
    columns: Sequence[str],
    prefix: str,
    *,
    per_column: int = 3,
    pan_columns: Collection[str] = (),
) -> dict[str, list[str]]:
    """Fresh, unique canary values per column (random, so two runs never share one)."""
    if not prefix.isalnum():
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "canary prefix must be alphanumeric")
    out: dict[str, list[str]] = {}
    for column in columns:
        if column in pan_columns:
            bodies = [
                "9" + "".join(secrets.choice("0123456789") for _ in range(17))
                for _ in range(per_column)
            ]
            out[column] = [b + luhn_check_digit(b) for b in bodies]
        else:
            tag = "".join(ch for ch in column.upper() if ch.isalnum())[:8]
            out[column] = [
                f"CANARY{prefix}Q{tag}Q{i}Q{secrets.token_hex(8).upper()}ZZ"
                for i in range(per_column)
            ]
    return out


def plant_canaries(
    frame: pd.DataFrame,
    columns: Sequence[str],
    prefix: str,
    *,
    per_column: int = 3,
    pan_columns: Collection[str] = (),
) -> dict[str, list[str]]:
    """Overwrite ``per_column`` spread-out rows of each column with canaries, in place;
    returns the canaries by column."""
    if len(frame) < per_column:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "frame has fewer rows than canaries")
    canaries = make_canaries(columns, prefix, per_column=per_column, pan_columns=pan_columns)
    step = len(frame) // per_column
    positions = [i * step for i in range(per_column)]
    for column, values in canaries.items():
        if column not in frame.columns:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, f"no column {column!r} to plant into")
        frame[column] = frame[column].astype(object)
        frame.iloc[positions, frame.columns.get_loc(column)] = values
    return canaries


def _b64_fragments(data: bytes) -> list[bytes]:
    """The base64 text that ``data`` produces wherever it sits in a longer stream: one
    fragment per alignment, without the characters shared with neighbouring bytes."""
    fragments = []
    for align in range(3):
        encoded = base64.b64encode(b"\0" * align + data).rstrip(b"=")
        head = {0: 0, 1: 2, 2: 3}[align]
        tail = 0 if (align + len(data)) % 3 == 0 else 1
        fragment = encoded[head : len(encoded) - tail]
        fragments += [fragment, fragment.replace(b"+", b"-").replace(b"/", b"_")]
    return fragments


def canary_forms(value: str) -> list[bytes]:
    """Byte patterns that reveal ``value``: UTF-8, hex (both cases), base64 (standard and
    URL-safe, every alignment)."""
    raw = value.encode("utf-8")
    forms = [raw, raw.hex().encode(), raw.hex().upper().encode(), *_b64_fragments(raw)]
    return list(dict.fromkeys(f for f in forms if f))


def find_canaries(blob: bytes, canaries: Iterable[str]) -> list[str]:
    """The canaries any of whose forms occur in ``blob``."""
    return [c for c in canaries if any(form in blob for form in canary_forms(c))]
