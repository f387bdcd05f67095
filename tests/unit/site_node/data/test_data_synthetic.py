"""The synthetic generator: determinism, real features, valid PANs, canaries, splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.datasets import load_breast_cancer

from insitu.errors import InsituError
from site_node.data import (
    FEATURE_COLUMNS,
    IDENTIFIER_COLUMNS,
    PATIENT_COLUMNS,
    TRANSACTION_COLUMNS,
    canary_forms,
    find_canaries,
    generate_patients,
    generate_transactions,
    make_canaries,
    plant_canaries,
    split_label_skew,
    split_vertical,
)
from site_node.deid.transforms import luhn_valid


@pytest.fixture(scope="module")
def patients() -> pd.DataFrame:
    return generate_patients(569, seed=4)


def test_feature_names_match_scikit_learn() -> None:
    names = [c for c in load_breast_cancer(as_frame=True).frame.columns if c != "target"]
    assert list(FEATURE_COLUMNS) == names


def test_patients_shape_and_real_features(patients: pd.DataFrame) -> None:
    assert list(patients.columns) == [*PATIENT_COLUMNS, *FEATURE_COLUMNS, "target"]
    assert len(patients) == 569
    real = load_breast_cancer(as_frame=True).frame
    # Every row of the real data appears exactly once (n == 569 is a permutation).
    merged = patients[[*FEATURE_COLUMNS, "target"]].merge(real, how="inner")
    assert len(merged) == 569
    assert patients["ssn"].str.fullmatch(r"\d{3}-\d{2}-\d{4}").all()
    assert patients["zip"].str.fullmatch(r"\d{5}").all()
    assert patients["age"].max() >= 90  # Safe Harbor's 90+ case occurs


def test_ages_agree_with_dates(patients: pd.DataFrame) -> None:
    years = pd.to_datetime(patients["admission_date"]) - pd.to_datetime(patients["birth_date"])
    assert ((years.dt.days / 365.25).astype(int) == patients["age"]).mean() > 0.95


def test_generation_is_deterministic() -> None:
    pd.testing.assert_frame_equal(generate_patients(50, seed=9), generate_patients(50, seed=9))
    assert not generate_patients(50, seed=9)["ssn"].equals(generate_patients(50, seed=10)["ssn"])
    pd.testing.assert_frame_equal(
        generate_transactions(300, seed=9), generate_transactions(300, seed=9)
    )


def test_more_patients_than_real_rows() -> None:
    assert len(generate_patients(700, seed=1)) == 700


def test_transactions_have_valid_pans() -> None:
    cards = generate_transactions(1000, seed=1, cards=40)
    assert list(cards.columns) == list(TRANSACTION_COLUMNS)
    assert luhn_valid(pa.array(cards["pan"].tolist())).all()
    assert cards["pan"].nunique() <= 40
    assert cards.groupby("pan")["cardholder_name"].nunique().max() == 1


def test_generator_plants_given_canaries() -> None:
    canaries = {"ssn": ["CANARY-SSN-1", "CANARY-SSN-2"], "patient_name": ["CANARY NAME"]}
    frame = generate_patients(40, seed=2, canaries=canaries)
    assert frame.loc[0, "ssn"] == "CANARY-SSN-1" and frame.loc[20, "ssn"] == "CANARY-SSN-2"
    assert "CANARY NAME" in frame.loc[0, "note"]  # notes quote names, canaries included


def test_plant_canaries_in_place(patients: pd.DataFrame) -> None:
    frame = patients.copy()
    canaries = plant_canaries(frame, IDENTIFIER_COLUMNS["patients"], "T1", per_column=3)
    assert set(canaries) == set(IDENTIFIER_COLUMNS["patients"])
    for column, values in canaries.items():
        assert set(values) <= set(frame[column])
    assert len({v for vs in canaries.values() for v in vs}) == 3 * len(canaries)


def test_pan_canaries_are_luhn_valid() -> None:
    canaries = make_canaries(["pan"], "P", pan_columns={"pan"})
    assert luhn_valid(pa.array(canaries["pan"])).all()
    assert all(len(p) == 19 for p in canaries["pan"])


def test_canary_forms_cover_base64_alignments() -> None:
    import base64

    canary = "CANARYxQ1Q0123456789ABCDEFZZ"
    for pad in (b"", b"a", b"ab", b"abc"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            assert find_canaries(
                b"<" + encode(pad + canary.encode() + b"tail") + b">", [canary]
            ) == [canary]
    assert find_canaries(canary.encode().hex().upper().encode(), [canary]) == [canary]
    assert find_canaries(b"nothing here", [canary]) == []
    assert len(canary_forms(canary)) >= 5


def test_label_skew_split_partitions_all_rows(patients: pd.DataFrame) -> None:
    parts = split_label_skew(patients, 3, alpha=0.3, seed=1, min_rows=20)
    assert sum(len(p) for p in parts) == len(patients)
    assert pd.concat(parts)["ssn"].is_unique
    shares = [p["target"].mean() for p in parts]
    assert max(shares) - min(shares) > 0.1  # non-IID: label mixes differ
    again = split_label_skew(patients, 3, alpha=0.3, seed=1, min_rows=20)
    assert all(a.equals(b) for a, b in zip(parts, again, strict=True))


def test_label_skew_split_rejects_bad_input(patients: pd.DataFrame) -> None:
    with pytest.raises(InsituError):
        split_label_skew(patients, 0)
    with pytest.raises(InsituError):
        split_label_skew(patients.iloc[:5], 3, min_rows=2)


def test_vertical_split_shares_keys(patients: pd.DataFrame) -> None:
    a, b = split_vertical(patients, ["ssn"], [FEATURE_COLUMNS[:10], FEATURE_COLUMNS[10:]])
    assert list(a.columns) == ["ssn", *FEATURE_COLUMNS[:10]]
    assert (a["ssn"] == b["ssn"]).all()
    assert np.intersect1d(a.columns[1:], b.columns[1:]).size == 0
