"""Site-local dataset connectors: CSV and Parquet files named in the site config.

The site config declares each dataset by name::

    [datasets.breast-cancer-patients]
    path = "data/patients.csv"          # relative to the site directory
    format = "csv"                      # or "parquet"
    policy = "policies/deid/breast-cancer-patients.yaml"

:func:`load_dataset` reads the file's bytes once, fingerprints exactly those bytes
(``sha256:<hex>`` of the raw file), parses them, and loads the dataset's policy checked
against the columns, so an unmapped column is refused before any data is touched.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from insitu.errors import ErrorCode, InsituError
from site_node.deid.policy import Policy, load_policy

__all__ = [
    "FORMATS",
    "Dataset",
    "DatasetSpec",
    "dataset_specs",
    "fingerprint_bytes",
    "fingerprint_file",
    "load_dataset",
    "write_dataset",
]

FORMATS = frozenset({"csv", "parquet"})
# Actions whose input is an identifier string: read those CSV columns as text so a
# parser never turns "02139" into 2139 or a 19-digit PAN into a float.
_TEXT_ACTIONS = frozenset({"pseudonymize", "truncate_pan", "drop"})


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset declared in the site config."""

    name: str
    path: Path
    format: str
    policy: Path


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: the raw frame (never leaves the site), its policy (checked
    against the frame's columns) and the fingerprint of the file's bytes."""

    spec: DatasetSpec
    frame: pd.DataFrame
    policy: Policy
    fingerprint: str


def dataset_specs(
    config: Mapping[str, Mapping[str, Any]], *, base_dir: Path
) -> dict[str, DatasetSpec]:
    """Parse the ``datasets`` table of a site config; relative paths are taken from
    ``base_dir`` (the site directory)."""
    specs: dict[str, DatasetSpec] = {}
    for name, entry in config.items():
        unknown = set(entry) - {"path", "format", "policy"}
        if unknown or not {"path", "policy"} <= set(entry):
            raise InsituError(
                ErrorCode.CONFIG,
                f"dataset {name!r} needs path and policy (and optional format); "
                f"unknown keys: {sorted(unknown)}",
            )
        path = base_dir / str(entry["path"])
        fmt = str(entry.get("format", path.suffix.lstrip(".").lower()))
        if fmt not in FORMATS:
            raise InsituError(ErrorCode.CONFIG, f"dataset {name!r}: format must be csv or parquet")
        specs[name] = DatasetSpec(
            name=name, path=path, format=fmt, policy=base_dir / str(entry["policy"])
        )
    return specs


def fingerprint_bytes(raw: bytes) -> str:
    """``sha256:<hex>`` of a dataset file's raw bytes."""
    return f"sha256:{hashlib.sha256(raw).hexdigest()}"


def fingerprint_file(path: Path) -> str:
    """``sha256:<hex>`` of the file at ``path``, streamed."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise InsituError(ErrorCode.NOT_FOUND, f"dataset file {path}: {exc.strerror}") from None
    return f"sha256:{digest.hexdigest()}"


def load_dataset(spec: DatasetSpec, *, policy_base_dir: Path | None = None) -> Dataset:
    """Read, fingerprint and parse one dataset, and load its policy checked against it."""
    try:
        raw = spec.path.read_bytes()
    except OSError as exc:
        raise InsituError(
            ErrorCode.NOT_FOUND, f"dataset {spec.name!r} file {spec.path}: {exc.strerror}"
        ) from None
    columns = _columns(raw, spec)
    policy = load_policy(spec.policy, data_columns=columns, base_dir=policy_base_dir)
    if policy.dataset != spec.name:
        raise InsituError(
            ErrorCode.CONFIG, f"dataset {spec.name!r} names a policy for {policy.dataset!r}"
        )
    text_columns = [
        r.name
        for r in policy.columns
        if r.action in _TEXT_ACTIONS
        or (r.action == "generalize" and r.kind in ("zip", "free_text"))
    ]
    return Dataset(
        spec=spec,
        frame=_parse(raw, spec, text_columns),
        policy=policy,
        fingerprint=fingerprint_bytes(raw),
    )


def write_dataset(frame: pd.DataFrame, path: Path, fmt: str) -> str:
    """Write ``frame`` as ``fmt`` and return the file's fingerprint (demo/test helper)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    else:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "format must be csv or parquet")
    return fingerprint_file(path)


def _columns(raw: bytes, spec: DatasetSpec) -> list[str]:
    try:
        if spec.format == "csv":
            return [str(c) for c in pd.read_csv(io.BytesIO(raw), nrows=0).columns]
        return list(pq.read_schema(pa.BufferReader(raw)).names)
    except (ValueError, pa.ArrowException, UnicodeDecodeError):
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, f"dataset {spec.name!r} is not readable {spec.format}"
        ) from None


def _parse(raw: bytes, spec: DatasetSpec, text_columns: list[str]) -> pd.DataFrame:
    try:
        if spec.format == "csv":
            frame: pd.DataFrame = pd.read_csv(
                io.BytesIO(raw),
                dtype={c: "string" for c in text_columns},
                keep_default_na=False,
                na_values=[""],
            )
            return frame
        return pq.read_table(pa.BufferReader(raw)).to_pandas()
    except (ValueError, pa.ArrowException, UnicodeDecodeError):
        # The parser's message may quote a cell: name only the dataset.
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, f"dataset {spec.name!r} is not readable {spec.format}"
        ) from None
