"""The datasets a site offers for federated training, declared in ``<site-dir>/datasets.toml``.

::

    [datasets.bcw]
    path = "data/bcw.csv"          # relative to the site dir, or absolute
    format = "csv"                 # csv | parquet
    label = "target"               # the label column
    purposes = ["training", "evaluation"]
    epsilon_budget = 8.0           # total DP epsilon this dataset may ever spend
    dp = { clip_norm = 1.0, noise_multiplier = 1.1, delta = 1e-5 }  # optional: site-enforced DP
    require_dp = true              # optional: refuse jobs that bring no DP settings

Only names and fingerprints (SHA-256 of the file bytes) leave the site, for model lineage.
A job's ClientApp gets the *local path* in its ``node_config``; rows never go into a
Message.

Example::

    registry = load_datasets(site_dir)
    ds = registry.get("bcw")
    registry.check_purpose("bcw", "training")
    lineage = {"name": ds.name, "sha256": registry.fingerprint("bcw")}
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from insitu.errors import ErrorCode, InsituError
from site_node.training.dp import DpPolicy

if TYPE_CHECKING:  # pandas is heavy; the daemon imports it only when it reads a file
    import pandas as pd

__all__ = ["DATASETS_FILE", "DatasetRegistry", "RegisteredDataset", "load_datasets"]

DATASETS_FILE: Final = "datasets.toml"
FORMATS: Final = frozenset({"csv", "parquet"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FIELDS: Final = frozenset({"path", "format", "label", "purposes", "epsilon_budget"})
# A de-identification policy (policies/deid/*.yaml) makes a dataset releasable as features.
_OPTIONAL: Final = frozenset({"policy", "dp", "require_dp"})


@dataclass(frozen=True)
class RegisteredDataset:
    name: str
    path: Path
    format: str
    label: str
    purposes: tuple[str, ...]
    epsilon_budget: float
    policy: Path | None = None
    dp: DpPolicy | None = None  # the site clips and noises every update from this dataset
    require_dp: bool = False  # jobs without DP settings are refused


def _error(where: str, detail: str) -> InsituError:
    return InsituError(ErrorCode.CONFIG, f"{where}: {detail}")


def _parse_one(name: str, raw: Any, site_dir: Path, where: str) -> RegisteredDataset:
    if not _NAME.match(name):
        raise _error(where, "dataset names use letters, digits, '_', '.', '-' (at most 64)")
    if not isinstance(raw, dict):
        raise _error(where, "must be a table")
    unknown = set(raw) - _FIELDS - _OPTIONAL
    if unknown:
        raise _error(where, f"unknown key(s) {sorted(unknown)}; expected {sorted(_FIELDS)}")
    missing = _FIELDS - set(raw)
    if missing:
        raise _error(where, f"missing key(s) {sorted(missing)}")
    path, fmt, label = raw["path"], raw["format"], raw["label"]
    purposes, budget = raw["purposes"], raw["epsilon_budget"]
    if not isinstance(path, str) or not path:
        raise _error(where, "path must be a non-empty string")
    if fmt not in FORMATS:
        raise _error(where, f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if not isinstance(label, str) or not label:
        raise _error(where, "label must name the label column")
    if (
        not isinstance(purposes, list)
        or not purposes
        or not all(isinstance(p, str) and p for p in purposes)
    ):
        raise _error(where, "purposes must be a non-empty list of strings")
    if isinstance(budget, bool) or not isinstance(budget, int | float):
        raise _error(where, "epsilon_budget must be a number")
    if not math.isfinite(budget) or budget < 0:
        raise _error(where, f"epsilon_budget must be finite and >= 0, got {budget}")
    resolved = Path(path).expanduser()
    if not resolved.is_absolute():
        resolved = site_dir / resolved
    policy: Path | None = None
    if "policy" in raw:
        if not isinstance(raw["policy"], str) or not raw["policy"]:
            raise _error(where, "policy must name a de-identification policy file")
        policy = Path(raw["policy"]).expanduser()
        if not policy.is_absolute():
            policy = site_dir / policy
    dp: DpPolicy | None = None
    if "dp" in raw:
        if not isinstance(raw["dp"], dict):
            raise _error(where, "dp must be a table { clip_norm, noise_multiplier, delta }")
        dp = DpPolicy.parse(raw["dp"], where)
    require_dp = raw.get("require_dp", False)
    if not isinstance(require_dp, bool):
        raise _error(where, "require_dp must be true or false")
    return RegisteredDataset(
        name=name,
        path=resolved,
        format=fmt,
        label=label,
        purposes=tuple(dict.fromkeys(purposes)),
        epsilon_budget=float(budget),
        policy=policy,
        dp=dp,
        require_dp=require_dp,
    )


class DatasetRegistry(Mapping[str, RegisteredDataset]):
    """The site's registered datasets, by name (read-only)."""

    def __init__(self, datasets: Mapping[str, RegisteredDataset], source: Path | None = None):
        self._datasets = dict(datasets)
        self.source = source

    def __getitem__(self, name: str) -> RegisteredDataset:
        return self._datasets[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._datasets)

    def __len__(self) -> int:
        return len(self._datasets)

    def get_dataset(self, name: str) -> RegisteredDataset:
        """The dataset called ``name``; NOT_FOUND names the ones that exist."""
        try:
            return self._datasets[name]
        except KeyError:
            raise InsituError(
                ErrorCode.NOT_FOUND,
                f"dataset {name!r} is not registered at this site "
                f"(registered: {sorted(self._datasets) or 'none'})",
            ) from None

    def check_purpose(self, name: str, purpose: str) -> RegisteredDataset:
        """The dataset, if it is registered for ``purpose``; PERMISSION_DENIED otherwise."""
        dataset = self.get_dataset(name)
        if purpose not in dataset.purposes:
            raise InsituError(
                ErrorCode.PERMISSION_DENIED,
                f"dataset {name!r} is not registered for {purpose!r} "
                f"(purposes: {list(dataset.purposes)})",
            )
        return dataset

    def validate(self, name: str) -> RegisteredDataset:
        """Check the file exists and has the label column (reads the header/schema only)."""
        dataset = self.get_dataset(name)
        if not dataset.path.is_file():
            raise InsituError(
                ErrorCode.FAILED_PRECONDITION,
                f"dataset {name!r}: file {dataset.path} does not exist",
            )
        columns = _columns(dataset)
        if dataset.label not in columns:
            raise InsituError(
                ErrorCode.FAILED_PRECONDITION,
                f"dataset {name!r}: label column {dataset.label!r} not among its "
                f"{len(columns)} columns",
            )
        return dataset

    def load_frame(self, name: str) -> pd.DataFrame:
        """The dataset's rows, for site-local code only (never for a Message)."""
        dataset = self.validate(name)
        import pandas as pd

        if dataset.format == "csv":
            return pd.read_csv(dataset.path)
        return pd.read_parquet(dataset.path)

    def fingerprint(self, name: str) -> str:
        """SHA-256 (hex) of the dataset file's bytes, for lineage. Never the data."""
        dataset = self.get_dataset(name)
        digest = hashlib.sha256()
        try:
            with dataset.path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        except OSError as err:
            raise InsituError(
                ErrorCode.FAILED_PRECONDITION,
                f"dataset {name!r}: cannot read {dataset.path}: {err.strerror}",
            ) from None
        return digest.hexdigest()


def _columns(dataset: RegisteredDataset) -> list[str]:
    try:
        if dataset.format == "csv":
            import pandas as pd

            return [str(c) for c in pd.read_csv(dataset.path, nrows=0).columns]
        import pyarrow.parquet as pq

        return list(pq.read_schema(dataset.path).names)
    except Exception as err:  # pandas/pyarrow raise many types for unreadable files
        raise InsituError(
            ErrorCode.FAILED_PRECONDITION,
            f"dataset {dataset.name!r}: cannot read {dataset.format} header: "
            f"{type(err).__name__}",
        ) from None


def load_datasets(site_dir: Path) -> DatasetRegistry:
    """Parse ``<site-dir>/datasets.toml``; a site without the file offers no datasets."""
    site_dir = Path(site_dir)
    source = site_dir / DATASETS_FILE
    if not source.exists():
        return DatasetRegistry({}, None)
    try:
        document = tomllib.loads(source.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise _error(str(source), f"invalid TOML: {err}") from None
    unknown = set(document) - {"datasets"}
    if unknown:
        raise _error(str(source), f"unknown top-level key(s) {sorted(unknown)}")
    tables = document.get("datasets", {})
    if not isinstance(tables, dict):
        raise _error(str(source), "[datasets] must be a table of tables")
    datasets = {
        name: _parse_one(name, raw, site_dir, f"{source} [datasets.{name}]")
        for name, raw in tables.items()
    }
    return DatasetRegistry(datasets, source)
