"""A job's run_config cannot undo its validated fields: more rounds than asked, fewer
sites than the minimum, or a strategy outside the federation's allow-list."""

from __future__ import annotations

import pytest

from coordinator.jobs import validate_submit
from insitu._proto.v1 import jobs_pb2
from insitu.errors import ErrorCode, InsituError
from insitu.flower.bundle import app_from_module, code_hash, pack_app

BUNDLE = pack_app(app_from_module("insitu.apps.breast_cancer"))


def _request(**run_config: str) -> jobs_pb2.SubmitJobRequest:
    return jobs_pb2.SubmitJobRequest(
        app_bundle=BUNDLE, code_sha256=code_hash(BUNDLE), rounds=3, strategy="fedavg",
        min_sites=2, round_timeout_s=60, model_name="m",
        targets=[jobs_pb2.SiteDataset(site_id=s, dataset="bcw") for s in ("a", "b", "c")],
        run_config=run_config,
    )


@pytest.mark.parametrize(("run_config", "field"), [
    ({"num-server-rounds": "50"}, "num-server-rounds"),
    ({"num-server-rounds": "0"}, "num-server-rounds"),
    ({"num-server-rounds": "two"}, "num-server-rounds"),
    ({"min-nodes": "1"}, "min-nodes"),
    ({"min-nodes": "9"}, "min-nodes"),
    ({"strategy": "my-own-aggregator"}, "strategy"),
])
def test_run_config_cannot_override_validated_fields(
    run_config: dict[str, str], field: str
) -> None:
    with pytest.raises(InsituError) as err:
        validate_submit(_request(**run_config), max_rounds=1000)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert f"run_config {field}" in err.value.detail


def test_run_config_within_the_validated_fields_is_accepted() -> None:
    validate_submit(_request(**{"num-server-rounds": "2", "min-nodes": "3",
                                "strategy": "median", "lr": "0.1"}), max_rounds=1000)
