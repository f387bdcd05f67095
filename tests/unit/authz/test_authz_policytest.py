"""check_policies: validation plus the test table, and that the table catches regressions."""

from __future__ import annotations

from pathlib import Path

from insitu.authz import check_policies

from ._support import POLICY_DIR


def test_shipped_policies_pass_their_table() -> None:
    report = check_policies(POLICY_DIR)
    assert report.ok, [f.message for f in report.failures]
    assert report.cases >= 40 and report.policy_count > 0 and len(report.policy_hash) == 64


def test_removing_the_guard_rails_fails_the_table(policy_copy: Path) -> None:
    (policy_copy / "guardrails.cedar").unlink()
    report = check_policies(policy_copy)
    assert not report.ok and report.error is None
    failed = {f.case_id for f in report.failures}
    assert "cross_site::site_admin of hospital-a deploying to hospital-b" in failed
    assert "escalation::site identity creates a join token" in failed


def test_a_widening_permit_fails_the_table(policy_copy: Path) -> None:
    (policy_copy / "oops.cedar").write_text(
        '@id("oops.everyone_predicts")\n'
        'permit (principal, action == Insitu::Action::"predict", resource);\n'
    )
    report = check_policies(policy_copy)
    failed = {f.case_id for f in report.failures}
    assert "data_access::inference_client not among grantees" in failed
    # The auditor forbid still wins, so that row keeps passing.
    assert "data_access::auditor calling predict" not in failed


def test_refused_set_and_malformed_table_are_reported(policy_copy: Path, tmp_path: Path) -> None:
    (policy_copy / "bad.cedar").write_text("permit (principal, action, resource)")
    report = check_policies(policy_copy)
    assert not report.ok and report.error is not None and "refused" in report.error
    (policy_copy / "bad.cedar").unlink()

    tests = tmp_path / "t"
    tests.mkdir()
    (tests / "x.yaml").write_text(
        "rows:\n  - {name: a, principal: nobody, action: x, expect: maybe}\n"
    )
    report = check_policies(policy_copy, tests_dir=tests)
    assert report.error is not None and "expect must be allow or deny" in report.error
    (tests / "x.yaml").write_text("rows: []\n")
    assert check_policies(policy_copy, tests_dir=tests).error == "no test rows"


def test_wrong_expected_policy_id_is_a_failure(policy_copy: Path, tmp_path: Path) -> None:
    tests = tmp_path / "t"
    tests.mkdir()
    (tests / "x.yaml").write_text(
        "rows:\n"
        "  - name: health\n"
        "    principal: spiffe://demo.insitu/user/x\n"
        "    action: health.check\n"
        "    resource: Federation::federation\n"
        "    context: {now: 1}\n"
        "    expect: allow\n"
        "    by: some.other_policy\n"
    )
    report = check_policies(policy_copy, tests_dir=tests)
    assert [f.case_id for f in report.failures] == ["x::health"]
    assert "some.other_policy" in report.failures[0].message
