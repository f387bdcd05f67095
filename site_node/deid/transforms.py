"""Column transforms of a de-identification policy, vectorized over Arrow arrays.

Every transform takes a whole column and returns a whole column (plus how many non-null
values it had to null out because they were malformed). Work runs in Arrow compute
kernels or numpy; the only Python-level loop is the keyed HMAC of
:func:`pseudonymize`, once per *distinct* value (a keyed hash is per value by nature).

Malformed values (an unparseable date, a PAN that fails Luhn, a ZIP that is not 5
digits) become null: they are suppressed, never passed through. Exceptions never carry
cell values: Arrow's messages can quote data, so they are replaced by our own.
"""

from __future__ import annotations

import binascii
import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from insitu.errors import ErrorCode, InsituError

__all__ = [
    "LOW_POPULATION_ZIP3",
    "PSEUDONYM_KEY_BYTES",
    "Column",
    "age_band",
    "date_to_year",
    "laplace_noise",
    "luhn_valid",
    "pseudonym_key_id",
    "pseudonymize",
    "truncate_pan",
    "zip3",
]

# HHS de-identification guidance (2000 census): ZIP3 areas with 20,000 people or fewer
# must be released as 000.
LOW_POPULATION_ZIP3 = frozenset(
    {
        "036",
        "059",
        "063",
        "102",
        "203",
        "556",
        "692",
        "790",
        "821",
        "823",
        "830",
        "831",
        "878",
        "879",
        "884",
        "890",
        "893",
    }
)
PSEUDONYM_KEY_BYTES = 32
_AGE_LABELS = pa.array([f"{5 * i}-{5 * i + 4}" for i in range(18)] + ["90+"], pa.string())
_SAMPLE, _SAMPLE_FROM = 4096, 65536  # distinctness probe for pseudonymize
_PAN_WIDTH = 19
_PAN_MIN_MASKED = 6
_NUMERIC = r"^\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$"


@dataclass(frozen=True)
class Column:
    """A transformed column and the count of non-null inputs it nulled as malformed."""

    values: pa.Array | pa.ChunkedArray
    invalid: int = 0


def _flat(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        # One chunk (the usual case) is used as is; combine_chunks would copy it.
        return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    return values


def _nulled(before: pa.Array, after: pa.Array) -> int:
    return int(after.null_count) - int(before.null_count)


def _as_string(values: pa.Array, what: str) -> pa.Array:
    """Strings as is; integers as their decimal text; anything else is refused."""
    t = values.type
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return values.cast(pa.string())
    if pa.types.is_string(t):
        return values
    if pa.types.is_integer(t) or pa.types.is_null(t):
        return values.cast(pa.string())
    if pa.types.is_dictionary(t):
        return _as_string(values.dictionary_decode(), what)
    raise InsituError(ErrorCode.INVALID_ARGUMENT, f"{what}: needs text or integers, not {t}")


def _as_float(values: pa.Array, what: str) -> pa.Array:
    """Numbers as float64; numeric text parsed (other text becomes null)."""
    t = values.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return values.cast(pa.float64())
    if pa.types.is_boolean(t) or pa.types.is_null(t):
        return values.cast(pa.float64())
    text = _as_string(values, what)
    ok = pc.fill_null(pc.match_substring_regex(text, _NUMERIC), False)
    cleaned = pc.if_else(ok, pc.utf8_trim_whitespace(text), pa.scalar(None, pa.string()))
    return cleaned.cast(pa.float64())


# ------------------------------------------------------------------------- pseudonyms


def _hmac_states(key: bytes, domain: str) -> tuple[hashlib._Hash, hashlib._Hash]:
    """SHA-256 states after the HMAC ipad/opad blocks (RFC 2104), the inner one also
    after the domain prefix. Copying a state is far cheaper than re-keying an HMAC per
    value (about 2.4x faster than ``hmac.digest`` per value, same output)."""
    if not isinstance(key, bytes | bytearray) or len(key) != PSEUDONYM_KEY_BYTES:
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, f"pseudonym key must be {PSEUDONYM_KEY_BYTES} bytes"
        )
    block = bytes(key).ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    # Domain separation: the same SSN in two columns (or two federations' purposes)
    # pseudonymizes differently; NUL cannot occur inside a domain name from a policy.
    inner.update(domain.encode("utf-8") + b"\0")
    return inner, outer


def _hmac_many(key: bytes, domain: str, messages: list[bytes]) -> bytes:
    """Concatenated 32-byte HMAC-SHA256(key, domain || 0x00 || m) for each message."""
    inner, outer = _hmac_states(key, domain)
    icopy, ocopy = inner.copy, outer.copy

    def one(message: bytes) -> bytes:
        h = icopy()
        h.update(message)
        o = ocopy()
        o.update(h.digest())
        return o.digest()

    return b"".join(map(one, messages))


def _hex_strings(digests: bytes, width: int) -> pa.Array:
    """Lowercase hex of each ``width``-byte digest as a string array: one C-level
    ``hexlify`` over the whole buffer, then fixed-stride offsets."""
    n = len(digests) // width
    text = binascii.hexlify(digests)
    offsets = np.arange(0, 2 * width * (n + 1), 2 * width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(text)])


def pseudonymize(values: pa.Array | pa.ChunkedArray, *, key: bytes, domain: str) -> Column:
    """Keyed HMAC-SHA256 pseudonyms as 64 lowercase hex characters; nulls stay null.

    Deterministic for one ``key`` and ``domain`` (sites of a federation share the key, so
    their pseudonyms join) and unrelated under another key. Each distinct value is hashed
    once (dictionary encoding) and mapped back to its rows. When a sample shows the column
    is mostly distinct (SSNs, MRNs), encoding would cost more than it saves, so every
    value is hashed directly, once.
    """
    text = _as_string(_flat(values), "pseudonymize")
    if _mostly_distinct(text):
        messages = pc.fill_null(text.cast(pa.binary()), b"").to_pylist()
        hashed = _hex_strings(_hmac_many(key, domain, messages), 32)
        if text.null_count:
            hashed = pc.if_else(text.is_valid(), hashed, pa.scalar(None, pa.string()))
        return Column(hashed)
    encoded = pc.dictionary_encode(text)
    uniques = encoded.dictionary.cast(pa.binary()).to_pylist()
    hashed = _hex_strings(_hmac_many(key, domain, uniques), 32)
    return Column(hashed.take(encoded.indices))


def _mostly_distinct(text: pa.Array) -> bool:
    """True when an evenly spaced sample of a large column is over 90% distinct."""
    if len(text) < _SAMPLE_FROM:
        return False
    sample = text.take(pa.array(np.linspace(0, len(text) - 1, _SAMPLE, dtype=np.int64)))
    distinct = pc.count_distinct(sample, mode="only_valid").as_py()
    return bool(distinct > 0.9 * max(len(sample) - sample.null_count, 1))


def pseudonym_key_id(key: bytes) -> str:
    """A public identifier of a pseudonym key (HMAC of a fixed label): releases with
    equal ids are joinable; it reveals nothing about the key."""
    inner, outer = _hmac_states(key, "insitu/pseudonym-key-id")
    outer.update(inner.digest())
    return outer.hexdigest()[:16]


# ----------------------------------------------------------------------- generalizing


def zip3(values: pa.Array | pa.ChunkedArray) -> Column:
    """5-digit ZIP (or ZIP+4) → its first 3 digits; the low-population ZIP3s → ``000``.

    Integers are zero-padded to 5 digits first (a CSV reader may have eaten the leading
    zero). Anything that is not a ZIP becomes null.
    """
    flat = _flat(values)
    text = _as_string(flat, "zip")
    if pa.types.is_integer(flat.type):
        text = pc.utf8_lpad(text, width=5, padding="0")
    text = pc.utf8_trim_whitespace(text)
    valid = pc.fill_null(pc.match_substring_regex(text, r"^[0-9]{5}(-[0-9]{4})?$"), False)
    head = pc.utf8_slice_codeunits(text, 0, 3)
    low = pc.is_in(head, value_set=pa.array(sorted(LOW_POPULATION_ZIP3), pa.string()))
    head = pc.if_else(pc.fill_null(low, False), pa.scalar("000"), head)
    out = pc.if_else(valid, head, pa.scalar(None, pa.string()))
    return Column(out, _nulled(flat, out))


def age_band(values: pa.Array | pa.ChunkedArray) -> Column:
    """Age in years → ``"0-4"``, ``"5-9"``, …, ``"85-89"``, and ``"90+"`` for 90 and over.

    Negative, non-numeric or absurd (> 150) ages become null.
    """
    flat = _flat(values)
    ages = _as_float(flat, "age").to_numpy(zero_copy_only=False)
    bad = np.isnan(ages) | (ages < 0) | (ages > 150)
    index = np.minimum(np.floor(np.where(bad, 0, ages) / 5), 18).astype(np.int32)
    out = _AGE_LABELS.take(pa.array(index, mask=bad))
    return Column(out, _nulled(flat, out))


def date_to_year(
    values: pa.Array | pa.ChunkedArray, *, birth: bool = False, reference_year: int
) -> Column:
    """Dates (date/timestamp types, or ISO ``YYYY-MM-DD…`` text) → the year as int32.

    With ``birth``, years that reveal an age over 89 in ``reference_year`` are collapsed
    into one category: every year up to ``reference_year - 90`` is released as
    ``reference_year - 90`` (read: that year *or earlier*).
    """
    flat = _flat(values)
    t = flat.type
    if pa.types.is_date(t) or pa.types.is_timestamp(t):
        years = pc.year(flat).cast(pa.int32())
    else:
        text = _as_string(flat, "date")
        parts = pc.extract_regex(
            text, r"^\s*(?P<y>[0-9]{4})-(?P<m>[0-9]{2})-(?P<d>[0-9]{2})(?:$|[T ])"
        )
        y = pc.struct_field(parts, "y").cast(pa.int32())
        m = pc.struct_field(parts, "m").cast(pa.int32())
        d = pc.struct_field(parts, "d").cast(pa.int32())
        ok = pc.and_(
            pc.and_(pc.greater_equal(m, 1), pc.less_equal(m, 12)),
            pc.and_(pc.greater_equal(d, 1), pc.less_equal(d, 31)),
        )
        ok = pc.and_(parts.is_valid(), pc.fill_null(ok, False))
        years = pc.if_else(ok, y, pa.scalar(None, pa.int32()))
    if birth:
        years = pc.max_element_wise(
            years, pa.scalar(reference_year - 90, pa.int32()), skip_nulls=False
        )
    return Column(years, _nulled(flat, years))


# ------------------------------------------------------------------------------- PANs


def _pan_digits(values: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Digits of each PAN right-aligned in a (n, 19) uint8 matrix, their lengths, and
    which rows are 12 to 19 digits long (spaces and dashes removed)."""
    text = pc.replace_substring_regex(_as_string(values, "truncate_pan"), r"[ -]", "")
    shaped = pc.fill_null(pc.match_substring_regex(text, r"^[1-9][0-9]{11,18}$"), False)
    text = pc.if_else(shaped, text, pa.scalar("0" * 12))
    lengths = pc.utf8_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
    padded = _flat(pc.utf8_lpad(text, width=_PAN_WIDTH, padding="0"))
    n = len(padded)
    offsets = np.frombuffer(padded.buffers()[1], dtype=np.int32)[
        padded.offset : padded.offset + n + 1
    ]
    data = np.frombuffer(padded.buffers()[2], dtype=np.uint8)
    if n and offsets[-1] - offsets[0] != n * _PAN_WIDTH:
        raise InsituError(ErrorCode.INTERNAL, "PAN padding produced uneven widths")
    matrix = data[offsets[0] : offsets[0] + n * _PAN_WIDTH].reshape(n, _PAN_WIDTH) - ord("0")
    return matrix.astype(np.uint8), lengths, shaped.to_numpy(zero_copy_only=False)


def _luhn_rows(digits: np.ndarray) -> np.ndarray:
    """Luhn check of each right-aligned digit row (left zero padding does not change it)."""
    from_right = np.arange(_PAN_WIDTH - 1, -1, -1)
    doubled = digits.astype(np.int32) * np.where(from_right % 2 == 1, 2, 1)
    doubled = np.where(doubled > 9, doubled - 9, doubled)
    return np.asarray(doubled.sum(axis=1) % 10 == 0)


def luhn_valid(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Boolean per row: a 12-19 digit PAN (spaces/dashes allowed) passing the Luhn check."""
    digits, _, shaped = _pan_digits(_flat(values))
    return np.asarray(shaped & _luhn_rows(digits))


def truncate_pan(
    values: pa.Array | pa.ChunkedArray, *, keep_first: int = 6, keep_last: int = 4
) -> Column:
    """Mask a PAN to at most its first 6 and last 4 digits: ``411111******1111``.

    At least 6 digits are always masked (a short PAN keeps fewer leading digits). A value
    that is not a 12-19 digit Luhn-valid PAN becomes null: suppressed, never passed on.
    """
    if not (0 <= keep_first <= 6 and 0 <= keep_last <= 4):
        raise InsituError(ErrorCode.POLICY_INVALID, "truncate_pan keeps at most first 6/last 4")
    flat = _flat(values)
    digits, lengths, shaped = _pan_digits(flat)
    ok = shaped & _luhn_rows(digits)
    n = len(flat)
    first = np.clip(lengths - keep_last - _PAN_MIN_MASKED, 0, keep_first)
    position = np.arange(_PAN_WIDTH)[None, :] - (_PAN_WIDTH - lengths)[:, None]
    visible = (position < first[:, None]) | (position >= (lengths - keep_last)[:, None])
    chars = np.where(visible, digits + ord("0"), ord("*")).astype(np.uint8)
    body = chars[position >= 0]  # row-major, so each row's characters stay contiguous
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    masked = pa.Array.from_buffers(
        pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(body.tobytes())]
    )
    out = pc.if_else(pa.array(ok, pa.bool_()), masked, pa.scalar(None, pa.string()))
    return Column(out, _nulled(flat, out))


# ------------------------------------------------------------------------------ noise


def laplace_noise(
    values: pa.Array | pa.ChunkedArray,
    *,
    epsilon: float,
    clip: tuple[float, float],
    rng: np.random.Generator,
) -> Column:
    """ε-differentially private values: clip to ``clip``, add Laplace((hi - lo) / ε).

    Each released value is one query of sensitivity ``hi - lo`` (one person's value can
    move anywhere inside the clip range), so the column costs ``epsilon``. Noise is drawn
    for every row (nulls too) so the generator's state does not depend on the data.
    """
    lo, hi = float(clip[0]), float(clip[1])
    if not (epsilon > 0 and lo < hi):
        raise InsituError(ErrorCode.POLICY_INVALID, "noise needs epsilon > 0 and clip low < high")
    flat = _flat(values)
    numbers = _as_float(flat, "noise").to_numpy(zero_copy_only=False)
    missing = np.isnan(numbers)
    noise = rng.laplace(0.0, (hi - lo) / epsilon, size=len(numbers))
    noisy = np.clip(np.where(missing, 0.0, numbers), lo, hi) + noise
    out = pa.array(noisy, pa.float64(), mask=missing)
    return Column(out, _nulled(flat, out))
