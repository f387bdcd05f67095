"""Process metrics: fixed label vocabularies, callbacks, and the loopback endpoint."""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from insitu.errors import InsituError
from insitu.telemetry import InsituMetrics, process_metrics, start_metrics_server
from insitu.telemetry.metrics import label_vocabularies
from site_node.serving.metrics import ServingMetrics

CANARY = "canary-hospital-a-eve"


def _fetch(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return str(r.read().decode())


def _feed_canaries(m: InsituMetrics) -> None:
    """Every recording API, called with identifier-like values where labels come from."""
    m.observe_rpc(f"/insitu.v1.Admin/{CANARY}", grpc.StatusCode.OK, 0.01)
    m.observe_rpc("/insitu.v1.Admin/GetSite", grpc.StatusCode.OK, 0.002)
    m.observe_round(CANARY, 1.5, sites_ok=2, sites_failed=1, bytes_down=100, bytes_up=40)
    m.observe_round("train", 2.0, sites_ok=3, sites_failed=0, bytes_down=10, bytes_up=20)
    m.add_round_bytes(CANARY, 5)
    m.watch_cert_expiry(CANARY, lambda: datetime.now(UTC) + timedelta(hours=1))
    m.watch_cert_expiry("site", lambda: datetime.now(UTC) + timedelta(hours=2))
    with m.vault_call(CANARY):
        pass
    with pytest.raises(RuntimeError), m.vault_call("sign"):
        raise RuntimeError(CANARY)
    with m.audit_append_timer():
        pass


def test_rpc_and_round_metrics_record_by_fixed_labels() -> None:
    m = InsituMetrics()
    _feed_canaries(m)
    v = m.registry.get_sample_value
    assert v("insitu_rpc_requests_total", {"method": "other", "code": "OK"}) == 1
    assert v("insitu_rpc_requests_total", {"method": "insitu.v1.Admin/GetSite", "code": "OK"}) == 1
    assert v("insitu_round_sites", {"phase": "train", "outcome": "ok"}) == 3
    assert v("insitu_round_sites", {"phase": "other", "outcome": "failed"}) == 1
    assert v("insitu_round_duration_seconds_count", {}) == 2
    assert v("insitu_round_bytes_total", {"direction": "down"}) == 110
    assert v("insitu_round_bytes_total", {"direction": "up"}) == 60
    assert v("insitu_round_bytes_total", {"direction": "other"}) == 5
    assert v("insitu_vault_errors_total", {"operation": "sign"}) == 1
    assert v("insitu_vault_errors_total", {"operation": "other"}) is None
    assert v("insitu_vault_request_seconds_count", {"operation": "other"}) == 1
    assert v("insitu_audit_append_seconds_count", {}) == 1
    left = v("insitu_cert_expiry_seconds", {"identity_kind": "site"})
    assert left is not None and 7000 < left <= 7200


def test_callbacks_that_fail_or_have_nothing_report_nan_not_a_broken_scrape() -> None:
    m = InsituMetrics()
    m.watch_checkpoint_age(lambda: None)
    assert math.isnan(m.registry.get_sample_value("insitu_audit_checkpoint_age_seconds") or 0)

    def boom() -> datetime:
        raise RuntimeError("vault down")

    m.watch_cert_expiry("service", boom)
    v = m.registry.get_sample_value("insitu_cert_expiry_seconds", {"identity_kind": "service"})
    assert v is not None and math.isnan(v)
    m.watch_checkpoint_age(lambda: time.time() - 30)
    age = m.registry.get_sample_value("insitu_audit_checkpoint_age_seconds")
    assert age is not None and 29 <= age < 60


def test_endpoint_serves_several_registries_and_nothing_but_metrics() -> None:
    m, serving = InsituMetrics(), ServingMetrics()
    _feed_canaries(m)
    serving.request("mlp", "3", "ok", seconds=0.001)
    server, port = start_metrics_server("127.0.0.1:0", [m.registry])
    try:
        server.add_registry(serving.registry)
        page = _fetch(port)
        with pytest.raises(urllib.error.HTTPError) as e:
            _fetch(port, "/")
        assert e.value.code == 404
    finally:
        server.close()
    names = {f.name for f in text_string_to_metric_families(page)}
    assert {"insitu_rpc_requests", "insitu_rpc_latency_seconds", "insitu_round_duration_seconds",
            "insitu_round_sites", "insitu_round_bytes", "insitu_audit_append_seconds",
            "insitu_audit_checkpoint_age_seconds", "insitu_cert_expiry_seconds",
            "insitu_vault_request_seconds", "insitu_vault_errors",
            "insitu_serving_requests"} <= names  # fmt: skip
    assert CANARY not in page
    vocab = label_vocabularies()
    for family in text_string_to_metric_families(page):
        if not family.name.startswith("insitu_serving"):
            for sample in family.samples:
                for label, value in sample.labels.items():
                    assert label == "le" or value in vocab[label], (family.name, label, value)


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "10.1.2.3:9464", "[::]:0", "metrics.example:0"])
def test_non_loopback_bind_must_be_explicit(listen: str) -> None:
    with pytest.raises(InsituError):
        start_metrics_server(listen)


@pytest.mark.parametrize("listen", ["127.0.0.1", ":9464", "127.0.0.1:http", "127.0.0.1:70000"])
def test_malformed_listen_addresses_are_refused(listen: str) -> None:
    with pytest.raises(InsituError):
        start_metrics_server(listen)


def test_explicit_wildcard_bind_and_process_default() -> None:
    process_metrics().observe_rpc("/insitu.v1.Admin/ListSites", grpc.StatusCode.OK, 0.001)
    server, port = start_metrics_server("0.0.0.0:0", allow_non_loopback=True)
    try:
        assert "insitu_rpc_requests_total" in _fetch(port)
    finally:
        server.close()
    assert process_metrics() is process_metrics()
