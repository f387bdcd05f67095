"""Dataset connectors: config parsing, CSV/Parquet loading, fingerprints, default deny."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from insitu.errors import ErrorCode, InsituError
from site_node.data import dataset_specs, generate_patients, load_dataset, write_dataset
from site_node.deid import DEFAULT_POLICY_DIR, prepare_release


@pytest.fixture(scope="module")
def patients() -> pd.DataFrame:
    return generate_patients(200, seed=6)


def _site(tmp_path: Path, frame: pd.DataFrame, fmt: str) -> dict[str, dict[str, str]]:
    (tmp_path / "policies").mkdir()
    for name in ("breast-cancer-patients", "safe-harbor"):
        shutil.copy(DEFAULT_POLICY_DIR / f"{name}.yaml", tmp_path / "policies")
    write_dataset(frame, tmp_path / "data" / f"patients.{fmt}", fmt)
    return {
        "breast-cancer-patients": {
            "path": f"data/patients.{fmt}",
            "format": fmt,
            "policy": "policies/breast-cancer-patients.yaml",
        }
    }


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_load_fingerprints_the_raw_bytes(tmp_path: Path, patients: pd.DataFrame, fmt: str) -> None:
    specs = dataset_specs(_site(tmp_path, patients, fmt), base_dir=tmp_path)
    dataset = load_dataset(specs["breast-cancer-patients"])
    raw = (tmp_path / "data" / f"patients.{fmt}").read_bytes()
    assert dataset.fingerprint == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert list(dataset.frame.columns) == list(patients.columns)
    assert len(dataset.frame) == 200
    release = prepare_release(
        dataset.frame,
        dataset.policy,
        pseudonym_key=bytes(32),
        approver="s",
        dataset_fingerprint=dataset.fingerprint,
        rng=np.random.default_rng(0),
    )
    assert release.attestation["dataset_fingerprint"] == dataset.fingerprint


def test_csv_keeps_zip_leading_zeros(tmp_path: Path, patients: pd.DataFrame) -> None:
    specs = dataset_specs(_site(tmp_path, patients, "csv"), base_dir=tmp_path)
    frame = load_dataset(specs["breast-cancer-patients"]).frame
    assert frame["zip"].str.startswith("0").any()
    assert (frame["zip"].astype(str) == patients["zip"]).all()


def test_unmapped_column_is_refused_at_load(tmp_path: Path, patients: pd.DataFrame) -> None:
    specs = dataset_specs(
        _site(tmp_path, patients.assign(insurance_id="X1"), "csv"), base_dir=tmp_path
    )
    with pytest.raises(InsituError) as err:
        load_dataset(specs["breast-cancer-patients"])
    assert err.value.code is ErrorCode.POLICY_INVALID and "insurance_id" in err.value.detail


def test_policy_for_another_dataset_is_refused(tmp_path: Path, patients: pd.DataFrame) -> None:
    config = _site(tmp_path, patients, "csv")
    config = {"other-name": config["breast-cancer-patients"]}
    with pytest.raises(InsituError) as err:
        load_dataset(dataset_specs(config, base_dir=tmp_path)["other-name"])
    assert err.value.code is ErrorCode.CONFIG


@pytest.mark.parametrize(
    "entry",
    [
        {"path": "x.csv"},
        {"path": "x.json", "policy": "p.yaml"},
        {"path": "x.csv", "policy": "p.yaml", "sql": "select"},
    ],
)
def test_bad_config_entries(tmp_path: Path, entry: dict[str, str]) -> None:
    with pytest.raises(InsituError) as err:
        dataset_specs({"d": entry}, base_dir=tmp_path)
    assert err.value.code is ErrorCode.CONFIG


def test_format_defaults_to_the_suffix(tmp_path: Path) -> None:
    spec = dataset_specs({"d": {"path": "a/b.parquet", "policy": "p.yaml"}}, base_dir=tmp_path)
    assert spec["d"].format == "parquet" and spec["d"].path == tmp_path / "a/b.parquet"


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    specs = dataset_specs(
        {
            "d": {"path": "none.csv", "policy": "p.yaml"},
            "e": {"path": "bad.parquet", "policy": "p.yaml"},
        },
        base_dir=tmp_path,
    )
    with pytest.raises(InsituError) as err:
        load_dataset(specs["d"])
    assert err.value.code is ErrorCode.NOT_FOUND
    (tmp_path / "bad.parquet").write_bytes(b"not parquet 123-45-6789")
    with pytest.raises(InsituError) as err:
        load_dataset(specs["e"])
    assert "123-45-6789" not in str(err.value)
