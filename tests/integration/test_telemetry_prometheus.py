"""A real Prometheus server (Debian's ``prometheus`` package) scrapes two insitu metrics
endpoints on loopback, one shaped like a coordinator's and one like a site's (with the
serving registry beside the process one), and its query API returns the series."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from insitu.telemetry import InsituMetrics, MetricsServer, start_metrics_server
from site_node.serving.metrics import ServingMetrics

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

pytestmark = pytest.mark.skipif(
    not Path(PROMETHEUS).exists(),
    reason="Debian's prometheus binary is missing: apt-get install -y prometheus "
    "(the Makefile's test setup installs it)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success"
    return list(body["data"]["result"])


@pytest.fixture
def endpoints() -> Iterator[dict[str, int]]:
    coordinator, site, serving = InsituMetrics(), InsituMetrics(), ServingMetrics()
    coordinator.observe_rpc("/insitu.v1.Admin/ListSites", grpc.StatusCode.OK, 0.002)
    coordinator.observe_round("train", 1.2, sites_ok=3, sites_failed=0, bytes_down=10)
    site.observe_rpc("/insitu.v1.SiteApi/Predict", grpc.StatusCode.OK, 0.001)
    serving.request("mlp", "1", "ok", seconds=0.001)
    servers: list[MetricsServer] = []
    try:
        c, c_port = start_metrics_server("127.0.0.1:0", [coordinator.registry])
        servers.append(c)
        s, s_port = start_metrics_server("127.0.0.1:0", [site.registry, serving.registry])
        servers.append(s)
        yield {"coordinator": c_port, "site": s_port}
    finally:
        for server in servers:
            server.close()


def test_prometheus_scrapes_coordinator_and_site(tmp_path: Path, endpoints: dict[str, int]) -> None:
    config = tmp_path / "prometheus.yml"
    jobs = "\n".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']"
        for job, port in endpoints.items()
    )
    config.write_text(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                      f"scrape_configs:\n{jobs}\n")  # fmt: skip
    if Path(PROMTOOL).exists():
        subprocess.run([PROMTOOL, "check", "config", str(config)], check=True,
                       capture_output=True, timeout=30)  # fmt: skip
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wanted = {
            ("coordinator", "insitu_rpc_requests_total"),
            ("coordinator", "insitu_round_duration_seconds_count"),
            ("site", "insitu_rpc_requests_total"),
            ("site", "insitu_serving_requests_total"),
        }
        found: set[tuple[str, str]] = set()
        deadline = time.monotonic() + 60
        while found != wanted and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.5)
            for job, metric in wanted - found:
                try:
                    result = _query(port, f'{metric}{{job="{job}"}}')
                except OSError:
                    break  # not listening yet
                if result:
                    found.add((job, metric))
        assert found == wanted, f"missing series: {wanted - found}"
        [series] = _query(port, 'insitu_rpc_requests_total{job="coordinator"}')
        assert series["metric"]["method"] == "insitu.v1.Admin/ListSites"
        assert series["metric"]["code"] == "OK"
        assert float(series["value"][1]) == 1.0
        up = _query(port, "up")
        assert {s["metric"]["job"] for s in up if s["value"][1] == "1"} == set(endpoints)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
