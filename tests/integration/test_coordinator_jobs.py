"""#12 with real processes: concurrent jobs from two engineers on three sites give the
same models as the same jobs run alone; a job keeps every site through two certificate
renewals each, with no extra worker; job logs and refusals with their fix."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from coordinator.settings import CoordinatorSettings
from insitu._proto.v1 import jobs_pb2
from insitu.flower.bundle import app_from_module, code_hash, pack_app
from insitu.keys import KeyService
from insitu.sdk import Client, InsituRpcError
from site_node.approvals import ApprovedCode
from tests.integration.conftest import RunningCoordinator, wait_for
from tests.integration.federation import APP, SITES, Federation, start_federation, user_client

pytestmark = pytest.mark.slow


@pytest.fixture
def fed(
    make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
    coordinator_settings: CoordinatorSettings,
    key_service: KeyService,
    tmp_path: Path,
) -> Iterator[Federation]:
    rc = make_coordinator(replace(coordinator_settings, job_approval_timeout_s=30,
                                  site_cert_ttl_s=8))
    f = start_federation(rc, key_service, tmp_path, job_max_concurrent=3)
    yield f
    f.close()


def _model(client: Client, fed: Federation, name: str, version: str) -> dict[str, np.ndarray]:
    art = client.get_model(name, version, signing_key=fed.signing_key)
    with np.load(io.BytesIO(art.state)) as z:
        return {k: z[k] for k in z.files}


def _finish(client: Client, job_id: str) -> jobs_pb2.Job:
    final = list(client.watch_job(job_id, timeout=300))[-1].snapshot
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, (final.error, final.fix)
    return final


def _processes_naming(text: str) -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                n += text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    return n


@pytest.mark.timeout(900)  # six jobs, each starting four sandboxes, on two cores
def test_three_concurrent_jobs_equal_the_same_jobs_run_alone(
    fed: Federation, key_service: KeyService, tmp_path: Path
) -> None:
    rc = fed.coord
    with rc.admin() as admin:
        admin.grant_role(f"spiffe://{rc.settings.trust_domain}/user/bob", "ml_engineer",
                         org="acme")
    bob = user_client(rc, key_service, "bob", tmp_path / "bob")
    owners = [fed.engineer, fed.engineer, bob]
    targets = {s: "bcw" for s in SITES}

    def submit(i: int, name: str) -> str:
        job = owners[i].submit_job(APP, targets, rounds=1, model_name=f"{name}-{i}",
                                   run_config={"local-epochs": 1, "seed": i + 1})
        return job.job_id

    together = [submit(i, "together") for i in range(3)]
    finals = [_finish(owners[i], j) for i, j in enumerate(together)]
    # They ran at once: every job started before any ended (the coordinator's audit order).
    order = [(e.seq, e.data) for e in rc.coordinator.audit_log.store.entries() if e.data]
    starts = [s for s, d in order if b'"job.start"' in d and any(j.encode() in d for j in together)]
    ends = [s for s, d in order if b'"job.end"' in d and any(j.encode() in d for j in together)]
    assert len(starts) == 3 and len(ends) == 3 and max(starts) < min(ends)

    for i in range(3):
        _finish(owners[i], submit(i, "alone"))
    for i in range(3):
        a = _model(owners[i], fed, f"together-{i}", finals[i].model_version)
        b = _model(owners[i], fed, f"alone-{i}", "v1")
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], atol=1e-6, rtol=0)
    # Different seeds, different models: the comparison above can fail.
    m0, m1 = _model(owners[0], fed, "alone-0", "v1"), _model(owners[1], fed, "alone-1", "v1")
    assert any(not np.allclose(m0[k], m1[k], atol=1e-6) for k in m0)
    bob.close()


def test_a_job_keeps_every_site_through_two_renewals_without_a_new_worker(
    fed: Federation,
) -> None:
    eng = fed.engineer
    job = eng.submit_job(APP, {s: "bcw" for s in SITES}, rounds=400, model_name="renewed",
                         run_config={"local-epochs": 1})
    wait_for(lambda: eng.get_job(job.job_id).current_round >= 1, timeout=120, what="round 1")
    job_dirs = {s: str(fed.settings[s].site_dir / "jobs" / job.job_id) for s in SITES}
    workers = {s: _processes_naming(d) for s, d in job_dirs.items()}
    assert all(workers.values()), workers
    renewals0 = {s: fed.daemons[s].session.status.renewals for s in SITES}

    def renewed_twice() -> bool:
        for s in SITES:
            assert _processes_naming(job_dirs[s]) <= workers[s], f"{s} started another worker"
        return all(fed.daemons[s].session.status.renewals >= renewals0[s] + 2 for s in SITES)

    wait_for(renewed_twice, timeout=90, what="two renewals at every site")
    assert eng.get_job(job.job_id).state == jobs_pb2.JOB_STATE_RUNNING
    eng.cancel_job(job.job_id)
    final = list(eng.watch_job(job.job_id, timeout=120))[-1].snapshot
    assert final.state == jobs_pb2.JOB_STATE_CANCELLED
    full = [r for r in final.history if r.phase in ("train", "evaluate")]
    assert len(full) >= 4
    for r in full:
        assert sorted(r.sites_ok) == list(SITES), (r.round, r.phase, list(r.site_errors))
    for s, d in job_dirs.items():
        wait_for(lambda d=d: _processes_naming(d) == 0, timeout=30,  # type: ignore[misc]
                 what=f"{s}'s worker to stop")


def test_refusal_names_each_site_and_its_fix_and_logs_are_readable(
    fed: Federation, tmp_path: Path
) -> None:
    eng = fed.engineer
    # The same app with one more comment line: a new code hash hospital-b never approved.
    variant = tmp_path / "variant"
    shutil.copytree(app_from_module(APP), variant)
    with (variant / "pyproject.toml").open("a") as f:
        f.write("# variant\n")
    variant_hash = code_hash(pack_app(variant))
    for site in ("hospital-a", "hospital-c"):
        ApprovedCode(fed.settings[site].site_dir).approve(variant_hash, "test")
    job = eng.submit_job(variant, {s: "bcw" for s in SITES}, rounds=1, model_name="refused",
                         min_sites=3, run_config={"local-epochs": 1})
    final = list(eng.watch_job(job.job_id, timeout=120))[-1].snapshot
    assert final.state == jobs_pb2.JOB_STATE_REFUSED
    assert final.error == "2 of 3 sites approved; 3 needed"
    assert f"hospital-b: job code not approved here (sha256 {variant_hash[:12]}" in final.fix
    assert "insitu-site approve" in final.fix
    assert "hospital-a" not in final.fix and "hospital-c" not in final.fix
    logs = eng.job_logs(job.job_id)
    assert logs.data == b"" and not logs.truncated  # it never ran a ServerApp

    done = eng.submit_job(APP, {s: "bcw" for s in SITES}, rounds=1, model_name="logged",
                          run_config={"local-epochs": 1})
    _finish(eng, done.job_id)
    full = eng.job_logs(done.job_id)
    tail = eng.job_logs(done.job_id, tail_bytes=10)
    assert len(tail.data) <= 10 and full.data.endswith(tail.data)
    assert tail.truncated == (len(full.data) > 10)
    with pytest.raises(InsituRpcError):
        eng.job_logs("no-such-job")
