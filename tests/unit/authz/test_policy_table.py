"""One test per row of policies/rbac/tests/*.yaml, against the shipped policy set."""

from __future__ import annotations

import pytest

from insitu.authz import PolicyCase, PolicyEngine, load_cases, run_case

from ._support import POLICY_DIR

CASES = load_cases(POLICY_DIR / "tests")


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(POLICY_DIR)


def test_table_is_big_enough_and_covers_the_must_holds() -> None:
    names = {c.case_id for c in CASES}
    assert len(CASES) >= 40
    for must in (
        "cross_site::site_admin of hospital-a deploying to hospital-b",
        "data_access::auditor calling predict",
        "data_access::ml_engineer reads raw features of a dataset not approved for the job",
        "escalation::site identity creates a join token",
        "breakglass::site_admin break-glass without a reason",
    ):
        assert must in names
        assert not next(c for c in CASES if c.case_id == must).expect_allow


@pytest.mark.parametrize("case", CASES, ids=[c.case_id for c in CASES])
def test_row(engine: PolicyEngine, case: PolicyCase) -> None:
    failure = run_case(engine, case)
    assert failure is None, failure.message
