"""The site's registered datasets: datasets.toml parsing, validation, fingerprints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from insitu.errors import ErrorCode, InsituError
from site_node.training import load_datasets

GOOD = """
[datasets.bcw]
path = "data/bcw.csv"
format = "csv"
label = "target"
purposes = ["training", "evaluation"]
epsilon_budget = 8.0

[datasets.claims]
path = "{abs}"
format = "parquet"
label = "fraud"
purposes = ["training"]
epsilon_budget = 0
"""


def _site(tmp_path: Path, text: str) -> Path:
    (tmp_path / "datasets.toml").write_text(text)
    return tmp_path


def _write_tables(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    pd.DataFrame({"a": [1.0, 2.0], "target": [0, 1]}).to_csv(tmp_path / "data" / "bcw.csv", index=False)
    parquet = tmp_path / "claims.parquet"
    pd.DataFrame({"amount": [3.5], "fraud": [True]}).to_parquet(parquet)
    return parquet


def test_parses_and_resolves_paths(tmp_path: Path) -> None:
    parquet = _write_tables(tmp_path)
    registry = load_datasets(_site(tmp_path, GOOD.format(abs=parquet)))
    assert sorted(registry) == ["bcw", "claims"]
    bcw = registry.get_dataset("bcw")
    assert bcw.path == tmp_path / "data" / "bcw.csv"
    assert bcw.purposes == ("training", "evaluation")
    assert bcw.epsilon_budget == 8.0
    assert registry.get_dataset("claims").path == parquet
    assert registry.validate("bcw") is bcw
    assert registry.validate("claims").format == "parquet"
    assert list(registry.load_frame("bcw").columns) == ["a", "target"]


def test_fingerprint_is_sha256_of_file_bytes(tmp_path: Path) -> None:
    parquet = _write_tables(tmp_path)
    registry = load_datasets(_site(tmp_path, GOOD.format(abs=parquet)))
    expected = hashlib.sha256((tmp_path / "data" / "bcw.csv").read_bytes()).hexdigest()
    assert registry.fingerprint("bcw") == expected
    (tmp_path / "data" / "bcw.csv").write_text("a,target\n9,1\n")
    assert registry.fingerprint("bcw") != expected


def test_missing_file_means_no_datasets(tmp_path: Path) -> None:
    registry = load_datasets(tmp_path)
    assert len(registry) == 0
    with pytest.raises(InsituError, match="registered: none") as caught:
        registry.get_dataset("bcw")
    assert caught.value.code is ErrorCode.NOT_FOUND


def test_purpose_is_enforced(tmp_path: Path) -> None:
    parquet = _write_tables(tmp_path)
    registry = load_datasets(_site(tmp_path, GOOD.format(abs=parquet)))
    registry.check_purpose("bcw", "evaluation")
    with pytest.raises(InsituError, match="not registered for 'evaluation'") as caught:
        registry.check_purpose("claims", "evaluation")
    assert caught.value.code is ErrorCode.PERMISSION_DENIED


def test_validate_reports_missing_file_and_label(tmp_path: Path) -> None:
    registry = load_datasets(_site(tmp_path, GOOD.format(abs=tmp_path / "nope.parquet")))
    with pytest.raises(InsituError, match="does not exist") as caught:
        registry.validate("bcw")
    assert caught.value.code is ErrorCode.FAILED_PRECONDITION
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bcw.csv").write_text("a,label\n1,0\n")
    with pytest.raises(InsituError, match="label column 'target'"):
        registry.validate("bcw")
    with pytest.raises(InsituError, match="cannot read"):
        registry.fingerprint("claims")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[datasets.x]\npath = "a.csv"\nformat = "csv"\nlabel = "y"\npurposes = ["t"]\n',
         "missing key(s) ['epsilon_budget']"),
        ('[datasets.x]\npath = "a.csv"\nformat = "xlsx"\nlabel = "y"\npurposes = ["t"]\nepsilon_budget = 1\n',
         "format must be one of"),
        ('[datasets.x]\npath = "a.csv"\nformat = "csv"\nlabel = "y"\npurposes = []\nepsilon_budget = 1\n',
         "purposes must be a non-empty list"),
        ('[datasets.x]\npath = "a.csv"\nformat = "csv"\nlabel = "y"\npurposes = ["t"]\nepsilon_budget = -1\n',
         "finite and >= 0"),
        ('[datasets.x]\npath = "a.csv"\nformat = "csv"\nlabel = "y"\npurposes = ["t"]\nepsilon_budget = "lots"\n',
         "must be a number"),
        ('[datasets.x]\npath = "a.csv"\nformat = "csv"\nlabel = "y"\npurposes = ["t"]\nepsilon_budget = inf\n',
         "finite"),
        ('[datasets.x]\npath = "a.csv"\nformat = "csv"\nlabel = "y"\npurposes = ["t"]\nepsilon_budget = 1\ncolour = "red"\n',
         "unknown key(s) ['colour']"),
        ('[datasets."bad name!"]\npath = "a.csv"\nformat = "csv"\nlabel = "y"\npurposes = ["t"]\nepsilon_budget = 1\n',
         "dataset names use"),
        ('[datasets.x]\npath = ""\nformat = "csv"\nlabel = "y"\npurposes = ["t"]\nepsilon_budget = 1\n',
         "path must be"),
        ("[other]\nx = 1\n", "unknown top-level key(s) ['other']"),
        ("[datasets\n", "invalid TOML"),
        ("datasets = 3\n", "table of tables"),
    ],
)
def test_config_errors_are_precise(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(InsituError) as caught:
        load_datasets(_site(tmp_path, body))
    assert caught.value.code is ErrorCode.CONFIG
    assert message in caught.value.detail
    assert "datasets.toml" in caught.value.detail
