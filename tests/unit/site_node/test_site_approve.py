"""``insitu-site approve``: shows what is approved, refuses requests above the site's
limits naming the limit, audits the approval naming the approver (fail closed), and keeps
approvals in a 0700 directory with a 0600 file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from insitu.audit import SqliteAuditStore
from insitu.flower.bundle import code_hash, pack_app
from site_node.approvals import ApprovedCode
from site_node.cli import app

HOSTILE = Path(__file__).resolve().parents[2] / "apps" / "hostile"
runner = CliRunner()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    d = tmp_path / "site"
    d.mkdir()
    (d / "site.toml").write_text(
        '[site]\nsite_id = "hospital-a"\ntrust_domain = "t.insitu"\n'
        'coordinator = "127.0.0.1:1"\njob_memory_mb = 2048\n'
    )
    return d


def _audit(site: Path) -> list[bytes]:
    with SqliteAuditStore(site / "audit.db") as store:
        return [e.data for e in store.entries() if e.data]


def test_approve_shows_what_it_approves_and_audits_the_approver(site: Path) -> None:
    r = runner.invoke(app, ["approve", "--site-dir", str(site), "--app-dir", str(HOSTILE),
                            "--by", "dr-alice", "--note", "reviewed"])
    assert r.exit_code == 0, r.output
    digest = code_hash(pack_app(HOSTILE))
    for needle in (digest, "hostile.client_app:app", "train-loss", "memory_mb=1024",
                   "approved by dr-alice"):
        assert needle in r.output, needle
    approvals = ApprovedCode(site)
    assert approvals.is_approved(digest)
    (approval,) = approvals.approvals()
    assert approval.approver == "dr-alice" and "train-loss" in approval.summary["metric_keys"]
    assert (approvals.directory.stat().st_mode & 0o777) == 0o700
    assert (approvals.path.stat().st_mode & 0o777) == 0o600
    records = [d for d in _audit(site) if b"code.approve" in d]
    assert len(records) == 1 and b"dr-alice" in records[0] and digest.encode() in records[0]


def test_request_above_the_site_limit_is_refused_naming_the_limit(
    site: Path, tmp_path: Path
) -> None:
    greedy = tmp_path / "greedy"
    shutil.copytree(HOSTILE, greedy)
    toml = greedy / "pyproject.toml"
    toml.write_text(toml.read_text().replace("memory_mb = 1024", "memory_mb = 65536"))
    r = runner.invoke(app, ["approve", "--site-dir", str(site), "--app-dir", str(greedy)])
    assert r.exit_code != 0
    assert "memory_mb 65536 > site limit 2048" in r.output
    assert ApprovedCode(site).approvals() == []
    assert not (site / "audit.db").exists() or not [
        d for d in _audit(site) if b"code.approve" in d]


def test_approval_is_refused_when_the_audit_log_cannot_be_written(site: Path) -> None:
    (site / "audit.db").mkdir()  # not a database: the audit append cannot happen
    r = runner.invoke(app, ["approve", "--site-dir", str(site), "--app-dir", str(HOSTILE)])
    assert r.exit_code != 0
    assert ApprovedCode(site).approvals() == []


def test_undeclared_tool_insitu_keys_are_refused(site: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(HOSTILE, bad)
    toml = bad / "pyproject.toml"
    toml.write_text(toml.read_text().replace('metrics = ["train-loss"',
                                             'metricz = ["x"]\nmetrics = ["train-loss"'))
    r = runner.invoke(app, ["approve", "--site-dir", str(site), "--app-dir", str(bad)])
    assert r.exit_code != 0 and "metricz" in r.output
