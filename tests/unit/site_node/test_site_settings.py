"""A malformed sandbox limit, GPU grant or egress bound in site.toml, or a malformed ``dp``
table in datasets.toml, fails at site start naming the file, the dataset and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from insitu.errors import ErrorCode, InsituError
from site_node.settings import load_site_settings
from site_node.training.datasets import load_datasets

BASE = '[site]\nsite_id = "a"\ntrust_domain = "t"\ncoordinator = "127.0.0.1:1"\n'


@pytest.mark.parametrize(("line", "field"), [
    ("job_memory_mb = 0", "memory_mb"),
    ("job_cpu_seconds = -5", "cpu_seconds"),
    ("job_scratch_mb = 0", "scratch_mb"),
    ("job_message_timeout_s = 0.0", "message_timeout_s"),
    ("job_open_files = 0", "open_files"),
    ("job_processes = 0", "processes"),
    ("job_gpus = [-1]", "job_gpus"),
    ("egress_max_entries = 0", "max_entries"),
    ("egress_max_record_bytes = -1", "max_record_bytes"),
])
def test_bad_sandbox_limits_fail_at_start_naming_file_and_field(
    tmp_path: Path, line: str, field: str
) -> None:
    (tmp_path / "site.toml").write_text(BASE + line + "\n")
    with pytest.raises(InsituError) as err:
        load_site_settings(tmp_path)
    assert err.value.code is ErrorCode.CONFIG
    assert str(tmp_path / "site.toml") in err.value.detail and field in err.value.detail


def test_defaults_sandbox_on(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text(BASE)
    s = load_site_settings(tmp_path)
    assert s.unsafe_unsandboxed_jobs is False and s.job_limits().memory_mb == 8192


DATASET = ('[datasets.bcw]\npath = "d.csv"\nformat = "csv"\nlabel = "y"\n'
           'purposes = ["research"]\nepsilon_budget = 8.0\n')


@pytest.mark.parametrize(("line", "needle"), [
    ("dp = { clip_norm = 1.0, noise_multiplier = 1.1 }", "dp.delta is missing"),
    ("dp = { clip_norm = 0.0, noise_multiplier = 1.1, delta = 1e-5 }", "dp.clip_norm"),
    ('dp = { clip_norm = 1.0, noise_multiplier = "high", delta = 1e-5 }',
     "dp.noise_multiplier must be a number"),
    ("dp = { clip_norm = 1.0, noise_multiplier = 1.1, delta = 1.5 }", "dp.delta"),
    ("dp = { clip_norm = 1.0, noise_multiplier = 1.1, delta = 1e-5, eps = 3 }", "dp.eps"),
    ("dp = 3", "dp must be a table"),
    ('require_dp = "yes"', "require_dp must be true or false"),
])
def test_malformed_dp_fails_at_start_naming_file_dataset_and_field(
    tmp_path: Path, line: str, needle: str
) -> None:
    (tmp_path / "datasets.toml").write_text(DATASET + line + "\n")
    with pytest.raises(InsituError) as err:
        load_datasets(tmp_path)
    assert err.value.code is ErrorCode.CONFIG
    assert str(tmp_path / "datasets.toml") in err.value.detail
    assert "[datasets.bcw]" in err.value.detail and needle in err.value.detail


def test_dp_table_parses(tmp_path: Path) -> None:
    (tmp_path / "datasets.toml").write_text(
        DATASET + "dp = { clip_norm = 2.0, noise_multiplier = 1.5, delta = 1e-6 }\n"
        "require_dp = true\n")
    ds = load_datasets(tmp_path)["bcw"]
    assert ds.dp is not None and ds.dp.clip_norm == 2.0 and ds.require_dp
