"""Fixtures for the serving tests. Models are exported once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_support import (
    CNN_CONFIG,
    CNN_IN,
    CNN_OUT,
    Models,
    Signer,
    export_cnn,
    export_mlp,
    mlp_config,
)

from site_node.serving import ModelRepository, ServingRuntime


@pytest.fixture(scope="session")
def models() -> Models:
    return Models(mlp={v: export_mlp(seed=v) for v in (1, 2, 3)}, cnn=export_cnn(seed=7))


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer()


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    return ModelRepository(tmp_path / "models")


@pytest.fixture
def runtime(repo: ModelRepository, models: Models, signer: Signer) -> Iterator[ServingRuntime]:
    """A runtime serving mlp v1 (batcher on) and cnn v1."""
    rt = ServingRuntime(repo, verifier=signer.verifier)
    rt.deploy(
        "mlp", 1, models.mlp[1], signer.sign("mlp", 1, models.mlp[1]), signer.verifier,
        config_yaml=mlp_config(),
    )  # fmt: skip
    rt.deploy(
        "cnn", 1, models.cnn, signer.sign("cnn", 1, models.cnn, CNN_IN, CNN_OUT),
        signer.verifier, config_yaml=CNN_CONFIG,
    )  # fmt: skip
    try:
        yield rt
    finally:
        rt.close()
