"""Asking a job's sites to run it, saying per site why one did not (with what fixes it),
and the run config the job's ServerApp gets: validated fields always win."""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.jobs.approval import proposal, refusal_summary
from coordinator.jobs.record import JobRecord
from coordinator.jobs.submit import STRATEGIES, serverapp_run_config
from insitu._proto.v1 import session_pb2

SHA = "ab" * 32
SITES = ("hospital-a", "hospital-b", "hospital-c")
APPROVE_FIX = (
    "its site_admin reviews the app and runs `insitu-site approve --app-dir APP --by NAME`"
)


def _job(**kw: Any) -> JobRecord:
    fields: dict[str, Any] = {
        "job_id": "job-1",
        "owner": "spiffe://test.insitu/user/alice",
        "code_sha256": SHA,
        "bundle": b"zip bytes",
        "targets": [(s, f"ds-{i}") for i, s in enumerate(SITES)],
        "rounds": 4,
        "strategy": "fedavg",
        "run_config": {"lr": "0.1"},
        "min_sites": 2,
        "round_timeout_s": 60,
        "dp": session_pb2.DpSettings(
            noise_multiplier=1.0, max_grad_norm=1.0, epsilon=2.0, delta=1e-5
        ),
        "purpose": "research",
        "model_name": "m",
        "run_id": 4242,
    }
    fields.update(kw)
    return JobRecord(**fields)


# -- proposal -------------------------------------------------------------------------


@pytest.mark.parametrize(("index", "site"), list(enumerate(SITES)))
def test_a_proposal_carries_the_site_s_partition_and_dataset(index: int, site: str) -> None:
    job = _job()
    msg = proposal(job, site)
    assert msg.WhichOneof("body") == "job_proposal"
    p = msg.job_proposal
    assert (p.partition_id, p.num_partitions, p.dataset) == (index, 3, f"ds-{index}")
    assert (p.job_id, p.code_sha256, p.app_bundle) == ("job-1", SHA, b"zip bytes")
    assert (p.run_id, p.rounds, p.owner, p.purpose) == (4242, 4, job.owner, "research")
    assert dict(p.run_config) == {"lr": "0.1"}
    assert p.dp == job.dp


# -- refusal_summary --------------------------------------------------------------------


def test_the_error_counts_approvals_against_the_minimum() -> None:
    job = _job(approvals={"hospital-a": (True, "", "fp"), "hospital-b": (False, "nope", "")})
    error, _fix = refusal_summary(job, 60)
    assert error == "1 of 3 sites approved; 2 needed"


def test_an_approving_site_gets_no_line() -> None:
    job = _job(
        targets=[("hospital-a", "d"), ("hospital-b", "d")],
        approvals={"hospital-a": (True, "", "fp"), "hospital-b": (False, "odd", "")},
    )
    _error, fix = refusal_summary(job, 60)
    assert fix == "hospital-b: odd"


def test_unapproved_code_names_its_hash_and_the_approve_command() -> None:
    job = _job(
        targets=[("hospital-a", "d")],
        approvals={"hospital-a": (False, f"code {SHA} not approved at this site", "")},
    )
    _error, fix = refusal_summary(job, 60)
    # The site's own words are replaced; the hash is shortened to 12 hex digits.
    assert fix == f"hospital-a: job code not approved here (sha256 {SHA[:12]}…); {APPROVE_FIX}"


@pytest.mark.parametrize(
    ("reason", "fix"),
    [
        (
            "privacy budget exhausted for dataset d",
            "ask for fewer rounds or more noise, or the site's data steward raises the dataset's "
            "epsilon_budget",
        ),
        ("dataset d requires DP", "submit with DP settings (--dp-noise-multiplier, --dp-epsilon)"),
        (
            "sandbox unavailable: bwrap missing",
            "the site installs bubblewrap (`make sandbox-tools`)",
        ),
        (
            "the app asks more than this site allows",
            "request less in the app's [tool.insitu.resources]",
        ),
        (
            "dataset d is not registered for purpose marketing",
            "submit with a purpose the dataset is registered for",
        ),
        (
            "dataset d not registered",
            "the site registers the dataset in its datasets.toml, or target another dataset",
        ),
    ],
)
def test_a_known_refusal_gets_its_fix(reason: str, fix: str) -> None:
    job = _job(targets=[("hospital-a", "d")], approvals={"hospital-a": (False, reason, "")})
    assert refusal_summary(job, 60)[1] == f"hospital-a: {reason}; {fix}"


@pytest.mark.parametrize(
    ("reason", "line"),
    [
        ("the moon is in the wrong phase", "hospital-a: the moon is in the wrong phase"),
        ("", "hospital-a: refused"),
        ("x" * 300, "hospital-a: " + "x" * 200),
    ],
)
def test_an_unknown_refusal_has_no_fix(reason: str, line: str) -> None:
    job = _job(targets=[("hospital-a", "d")], approvals={"hospital-a": (False, reason, "")})
    assert refusal_summary(job, 60)[1] == line


@pytest.mark.parametrize(("timeout", "shown"), [(60.0, "60"), (0.25, "0.25"), (90, "90")])
def test_an_undecided_site_did_not_answer(timeout: float, shown: str) -> None:
    job = _job(targets=[("hospital-a", "d")])
    error, fix = refusal_summary(job, timeout)
    assert error == "0 of 1 sites approved; 2 needed"
    assert fix == (
        f"hospital-a: did not answer within {shown} s; check that it is connected "
        "(`insitu-site status` there)"
    )


def test_one_line_per_site_in_target_order() -> None:
    job = _job(
        approvals={
            "hospital-c": (False, "dataset ds-2 not registered", ""),
            "hospital-a": (False, "not approved", ""),
        }
    )
    lines = refusal_summary(job, 5)[1].splitlines()
    assert [ln.split(":")[0] for ln in lines] == list(SITES)
    assert "did not answer within 5 s" in lines[1]
    assert lines[2].endswith("or target another dataset")


# -- the ServerApp's run config -----------------------------------------------------------


def _config(app: dict[str, Any] | None = None, **run_config: str) -> dict[str, Any]:
    return serverapp_run_config(app or {}, run_config, rounds=3, strategy="fedavg", min_sites=2)


def test_the_platform_keys_override_the_app_defaults() -> None:
    cfg = _config(
        {
            "num-server-rounds": 10,
            "strategy": "median",
            "min-nodes": 1,
            "lr": 0.01,
            "fraction-train": 0.5,
        }
    )
    assert cfg == {
        "num-server-rounds": 3,
        "strategy": "fedavg",
        "min-nodes": 2,
        "fraction-train": 1.0,
        "fraction-evaluate": 1.0,
        "lr": 0.01,
    }


@pytest.mark.parametrize(("given", "rounds"), [("50", 3), ("3", 3), ("2", 2)])
def test_rounds_are_clamped_to_the_request(given: str, rounds: int) -> None:
    assert _config(**{"num-server-rounds": given})["num-server-rounds"] == rounds


@pytest.mark.parametrize(("given", "min_nodes"), [("1", 2), ("2", 2), ("3", 3)])
def test_min_nodes_never_go_below_min_sites(given: str, min_nodes: int) -> None:
    assert _config(**{"min-nodes": given})["min-nodes"] == min_nodes


@pytest.mark.parametrize(
    ("given", "strategy"),
    [
        ("my-own-aggregator", "fedavg"),
        ("7", "fedavg"),
        ("median", "median"),
    ],
)
def test_the_strategy_stays_in_the_allow_list(given: str, strategy: str) -> None:
    assert _config(strategy=given)["strategy"] == strategy
    assert strategy in STRATEGIES


def test_other_run_config_values_arrive_typed() -> None:
    cfg = _config(lr="0.5", epochs="2", shuffle="true", name="x", **{"fraction-evaluate": "0"})
    assert (cfg["lr"], cfg["epochs"], cfg["shuffle"], cfg["name"]) == (0.5, 2, True, "x")
    assert cfg["fraction-evaluate"] == 0
