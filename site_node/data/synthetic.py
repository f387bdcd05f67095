"""Synthetic raw data with a real shape: patients and card transactions.

Identities come from Faker (seeded, so the same ``seed`` gives the same frame); clinical
features are the real Wisconsin breast-cancer data shipped inside scikit-learn
(569 rows, 30 features, ``target``: 0 malignant, 1 benign), joined row by row. Nothing
here is real PII. Card numbers are Luhn-valid test-range PANs built in numpy.

Example::

    patients = generate_patients(569, seed=7)
    canaries = plant_canaries(patients, IDENTIFIER_COLUMNS["patients"], "siteA")
    cards = generate_transactions(5_000, seed=7)
    site_frames = split_label_skew(patients, 2, label="target", alpha=0.5, seed=7)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from insitu.errors import ErrorCode, InsituError

__all__ = [
    "FEATURE_COLUMNS",
    "IDENTIFIER_COLUMNS",
    "PATIENT_COLUMNS",
    "TRANSACTION_COLUMNS",
    "generate_patients",
    "generate_transactions",
    "luhn_check_digit",
    "split_label_skew",
    "split_vertical",
]

PATIENT_COLUMNS = (
    "patient_name",
    "ssn",
    "mrn",
    "birth_date",
    "admission_date",
    "age",
    "zip",
    "email",
    "phone",
    "address",
    "note",
)
TRANSACTION_COLUMNS = (
    "pan",
    "cardholder_name",
    "amount",
    "merchant",
    "mcc",
    "merchant_zip",
    "timestamp",
    "is_fraud",
)
# String columns that hold direct identifiers (the canary test plants values here).
IDENTIFIER_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "patients": ("patient_name", "ssn", "mrn", "email", "phone", "address", "note"),
    "transactions": ("pan", "cardholder_name"),
}
# A hospital's patients live near it: a few ZIP3 areas, one of them (036) low-population.
DEFAULT_ZIP3 = ("021", "024", "036")
_MERCHANTS = (
    ("Corner Grocery", "5411"),
    ("City Fuel", "5541"),
    ("Blue Diner", "5812"),
    ("Metro Transit", "4111"),
    ("Book Nook", "5942"),
    ("Pharma Plus", "5912"),
    ("Electro World", "5732"),
    ("Sky Airlines", "4511"),
)
_PAN_PREFIXES = ("4", "51", "52", "53", "54", "55")


def _faker(seed: int) -> Any:
    from faker import Faker  # imported lazily, like scikit-learn

    fake = Faker("en_US")
    fake.seed_instance(seed)
    return fake


def _features() -> pd.DataFrame:
    # Imported here: scikit-learn is slow to import and only the generator needs it.
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame: pd.DataFrame = bunch.frame
    return frame


# The 30 Wisconsin features, as sklearn names them (a unit test checks they still match).
FEATURE_COLUMNS: tuple[str, ...] = (
    "mean radius",
    "mean texture",
    "mean perimeter",
    "mean area",
    "mean smoothness",
    "mean compactness",
    "mean concavity",
    "mean concave points",
    "mean symmetry",
    "mean fractal dimension",
    "radius error",
    "texture error",
    "perimeter error",
    "area error",
    "smoothness error",
    "compactness error",
    "concavity error",
    "concave points error",
    "symmetry error",
    "fractal dimension error",
    "worst radius",
    "worst texture",
    "worst perimeter",
    "worst area",
    "worst smoothness",
    "worst compactness",
    "worst concavity",
    "worst concave points",
    "worst symmetry",
    "worst fractal dimension",
)


def generate_patients(
    n: int = 569,
    seed: int = 0,
    *,
    canaries: Mapping[str, Sequence[str]] | None = None,
    zip3_pool: Sequence[str] = DEFAULT_ZIP3,
    admission_year: int = 2025,
) -> pd.DataFrame:
    """``n`` synthetic patients beside real breast-cancer features and ``target``.

    With ``n`` up to 569 each patient gets a distinct row of the real data; beyond that
    rows are drawn with replacement. ``canaries[column][i]`` replaces that column's value
    in row ``i * (n // len)``; the free-text ``note`` is written afterwards, so a canary
    name also shows up inside a note, as real notes quote names.
    """
    if n < 1:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "n must be positive")
    rng = np.random.default_rng(seed)
    fake = _faker(seed)
    features = _features()
    rows = (
        rng.permutation(len(features))[:n]
        if n <= len(features)
        else rng.integers(0, len(features), size=n)
    )
    clinical = features.iloc[rows].reset_index(drop=True)

    # Ages of breast-cancer patients: mean about 60, a tail past 90 (Safe Harbor's 90+).
    age = np.clip(np.rint(rng.normal(60, 13, size=n)), 22, 97).astype(np.int64)
    admission_day = rng.integers(0, 365, size=n)
    admitted = [date(admission_year, 1, 1) + timedelta(days=int(d)) for d in admission_day]
    birth = [
        a - timedelta(days=int(365.25 * int(y)) + int(extra))
        for a, y, extra in zip(admitted, age, rng.integers(0, 365, size=n), strict=True)
    ]
    pool = np.array(list(zip3_pool))
    zips = [
        f"{p}{s:02d}"
        for p, s in zip(rng.choice(pool, size=n), rng.integers(0, 100, n), strict=True)
    ]
    frame = pd.DataFrame(
        {
            "patient_name": [fake.name() for _ in range(n)],
            "ssn": [fake.ssn() for _ in range(n)],
            "mrn": [f"MRN{v:09d}" for v in rng.choice(10**9, size=n, replace=False)],
            "birth_date": [d.isoformat() for d in birth],
            "admission_date": [d.isoformat() for d in admitted],
            "age": age,
            "zip": zips,
            "email": [fake.email() for _ in range(n)],
            "phone": [fake.phone_number() for _ in range(n)],
            "address": [fake.street_address() for _ in range(n)],
        }
    )
    _plant(frame, canaries)
    frame["note"] = [
        f"Seen {adm}: {name}, {a} y. {fake.sentence(nb_words=8)}"
        for adm, name, a in zip(
            frame["admission_date"], frame["patient_name"], frame["age"], strict=True
        )
    ]
    if canaries and "note" in canaries:
        _plant(frame, {"note": canaries["note"]})
    return pd.concat([frame, clinical], axis=1)


def generate_transactions(
    n: int,
    seed: int = 0,
    *,
    cards: int | None = None,
    canaries: Mapping[str, Sequence[str]] | None = None,
    zip3_pool: Sequence[str] = ("100", "112", "021"),
    year: int = 2025,
) -> pd.DataFrame:
    """``n`` card transactions over ``cards`` cardholders (default ``n // 20``)."""
    if n < 1:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "n must be positive")
    rng = np.random.default_rng(seed)
    fake = _faker(seed)
    holders = max(1, cards if cards is not None else n // 20)
    pans = _luhn_pans(holders, rng)
    names = np.array([fake.name() for _ in range(holders)], dtype=object)
    card = rng.integers(0, holders, size=n)
    merchant = rng.integers(0, len(_MERCHANTS), size=n)
    seconds = rng.integers(0, 365 * 86400, size=n)
    stamps = pd.Timestamp(year=year, month=1, day=1) + pd.to_timedelta(seconds, unit="s")
    pool = np.array(list(zip3_pool))
    frame = pd.DataFrame(
        {
            "pan": pans[card],
            "cardholder_name": names[card],
            "amount": np.round(rng.lognormal(3.2, 1.0, size=n), 2),
            "merchant": [_MERCHANTS[m][0] for m in merchant],
            "mcc": [_MERCHANTS[m][1] for m in merchant],
            "merchant_zip": np.char.add(
                rng.choice(pool, size=n).astype(str),
                np.char.zfill(rng.integers(0, 100, size=n).astype(str), 2),
            ).astype(object),
            "timestamp": stamps.strftime("%Y-%m-%dT%H:%M:%S"),
            "is_fraud": (rng.random(n) < 0.02).astype(np.int64),
        }
    )
    _plant(frame, canaries)
    return frame


def luhn_check_digit(body: str) -> str:
    """The digit that makes ``body + digit`` pass the Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


def _luhn_pans(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct-ish 16-digit Luhn-valid PANs (Visa/Mastercard prefixes)."""
    prefixes = rng.choice(np.array(_PAN_PREFIXES), size=count)
    out = []
    for prefix in prefixes:
        body = prefix + "".join(rng.choice(list("0123456789"), size=15 - len(prefix)))
        out.append(body + luhn_check_digit(body))
    return np.array(out, dtype=object)


def _plant(frame: pd.DataFrame, canaries: Mapping[str, Sequence[str]] | None) -> None:
    for column, values in (canaries or {}).items():
        if column not in frame.columns:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, f"no column {column!r} to plant into")
        if not values:
            continue
        if len(values) > len(frame):
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "more canaries than rows")
        step = len(frame) // len(values)
        rows = [i * step for i in range(len(values))]
        frame[column] = frame[column].astype(object)
        frame.loc[rows, column] = list(values)


# ---------------------------------------------------------------------------- splits


def split_label_skew(
    frame: pd.DataFrame,
    sites: int,
    *,
    label: str = "target",
    alpha: float = 0.5,
    seed: int = 0,
    min_rows: int = 1,
) -> list[pd.DataFrame]:
    """Non-IID partition over ``sites``: each label's rows are shared out by Dirichlet(alpha)
    proportions (small alpha: strong skew). Every row goes to exactly one site; each site
    gets at least ``min_rows`` rows (proportions are redrawn until so)."""
    if sites < 1 or alpha <= 0:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "need sites >= 1 and alpha > 0")
    if sites * min_rows > len(frame):
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "not enough rows for min_rows per site")
    rng = np.random.default_rng(seed)
    labels = frame[label].to_numpy()
    for _ in range(1000):
        owner = np.empty(len(frame), dtype=np.int64)
        for value in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == value))
            cuts = (np.cumsum(rng.dirichlet([alpha] * sites))[:-1] * len(idx)).astype(int)
            for site, part in enumerate(np.split(idx, cuts)):
                owner[part] = site
        if np.bincount(owner, minlength=sites).min() >= min_rows:
            return [frame[owner == s].reset_index(drop=True) for s in range(sites)]
    raise InsituError(ErrorCode.FAILED_PRECONDITION, "could not meet min_rows; raise alpha")


def split_vertical(
    frame: pd.DataFrame, key_columns: Sequence[str], groups: Sequence[Sequence[str]]
) -> list[pd.DataFrame]:
    """Vertical partition: site ``i`` holds the same people (``key_columns``, e.g. the
    identifiers to pseudonymize and join on) and only the columns in ``groups[i]``."""
    return [frame[list(key_columns) + list(g)].copy() for g in groups]
