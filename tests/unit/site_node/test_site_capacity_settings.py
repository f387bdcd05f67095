"""The site's job budget in site.toml: ``job_max_concurrent`` and ``job_total_memory_mb``
(default 4 x ``job_memory_mb``); a bad value fails at start naming the file and the field,
and ``insitu-site approve`` refuses an app whose memory the whole budget cannot hold."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from insitu.errors import ErrorCode, InsituError
from insitu.flower.bundle import code_hash, pack_app
from site_node.approvals import ApprovedCode
from site_node.cli import app
from site_node.settings import load_site_settings

BASE = '[site]\nsite_id = "a"\ntrust_domain = "t"\ncoordinator = "127.0.0.1:1"\n'
HOSTILE = Path(__file__).resolve().parents[2] / "apps" / "hostile"  # asks for 1024 MB


@pytest.mark.parametrize(("line", "field"), [
    ("job_max_concurrent = 0", "job_max_concurrent"),
    ("job_max_concurrent = -1", "job_max_concurrent"),
    ("job_total_memory_mb = 0", "job_total_memory_mb"),
    ("job_gpus = [1, 1]", "job_gpus"),
])
def test_a_bad_job_budget_fails_at_start_naming_file_and_field(
    tmp_path: Path, line: str, field: str
) -> None:
    (tmp_path / "site.toml").write_text(BASE + line + "\n")
    with pytest.raises(InsituError) as err:
        load_site_settings(tmp_path)
    assert err.value.code is ErrorCode.CONFIG
    assert str(tmp_path / "site.toml") in err.value.detail and field in err.value.detail


def test_budget_defaults_follow_the_per_job_ceiling(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text(BASE + "job_memory_mb = 3000\njob_gpus = [0, 3]\n")
    budget = load_site_settings(tmp_path).job_capacity()
    assert (budget.max_jobs, budget.total_memory_mb, budget.gpus) == (2, 12_000, (0, 3))
    (tmp_path / "site.toml").write_text(BASE + "job_max_concurrent = 5\n"
                                        "job_total_memory_mb = 1000\n")
    budget = load_site_settings(tmp_path).job_capacity()
    assert (budget.max_jobs, budget.total_memory_mb) == (5, 1000)


def test_approve_refuses_an_app_above_the_whole_job_budget(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text(BASE + "job_total_memory_mb = 512\n")
    result = CliRunner().invoke(app, ["approve", "--site-dir", str(tmp_path),
                                      "--app-dir", str(HOSTILE), "--by", "steward"])
    assert result.exit_code != 0
    assert "job_total_memory_mb 512" in result.output
    assert not ApprovedCode(tmp_path).is_approved(code_hash(pack_app(HOSTILE)))
