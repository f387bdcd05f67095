"""Issue #8: one trace id links the SDK call that submitted a job, the coordinator's
handler and each site's handling of the job's round messages (via audit records, which
carry the trace id)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from opentelemetry import trace

from coordinator.settings import CoordinatorSettings
from insitu.keys import KeyService
from insitu.telemetry import setup_tracing, tracer
from tests.integration.conftest import RunningCoordinator
from tests.integration.federation import APP, SITES, start_federation


@pytest.mark.slow
def test_one_trace_links_sdk_coordinator_and_sites(
        make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
        coordinator_settings: CoordinatorSettings, key_service: KeyService,
        tmp_path: Path) -> None:
    setup_tracing("insitu-test")
    rc = make_coordinator(replace(coordinator_settings, job_approval_timeout_s=30))
    fed = start_federation(rc, key_service, tmp_path)
    try:
        with tracer().start_as_current_span("insitu.test") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            job = fed.engineer.submit_job(APP, {s: "bcw" for s in SITES}, rounds=1,
                                          run_config={"local-epochs": 1})
        assert trace.get_current_span().get_span_context().trace_id == 0
        final = list(fed.engineer.watch_job(job.job_id, timeout=300))[-1].snapshot
        assert final.state == 3, final.error
        store = rc.coordinator.audit_log.store
        submit = [json.loads(e.data) for e in store.entries()
                  if e.data and b'"job.submit"' in e.data]
        assert any(r["trace_id"] == trace_id for r in submit)
        rounds = [json.loads(e.data) for e in store.entries()
                  if e.data and b'"job.round"' in e.data]
        assert rounds and all(r["trace_id"] == trace_id for r in rounds)
        for site, d in fed.daemons.items():
            msgs = [json.loads(e.data) for e in d.audit_log.store.entries()
                    if e.data and b'"job.message"' in e.data]
            assert msgs and all(m["trace_id"] == trace_id for m in msgs), site
    finally:
        fed.close()
