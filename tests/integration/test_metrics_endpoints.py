"""Issue #8: a real coordinator and a real site daemon each serve /metrics on loopback with
the listed series, and no identifier ever appears in a label; Debian's prometheus scrapes
both when it is installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from insitu.keys import free_port
from site_node.daemon import SiteDaemon
from site_node.settings import load_site_settings
from tests.integration.conftest import RunningCoordinator, enrol_site, wait_for

SERIES_BOTH = ("insitu_rpc_requests_total", "insitu_rpc_latency_seconds",
               "insitu_audit_append_seconds", "insitu_audit_checkpoint_age_seconds",
               "insitu_cert_expiry_seconds")


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def test_coordinator_and_site_expose_metrics_and_prometheus_scrapes_them(
        coord: RunningCoordinator, tmp_path: Path) -> None:
    s = enrol_site(coord, "hospital-x", tmp_path / "x")
    daemon = SiteDaemon(load_site_settings(s.site_dir, heartbeat_interval_ms=300))
    t = threading.Thread(target=daemon.run, daemon=True)
    t.start()
    try:
        wait_for(lambda: json.loads((s.site_dir / "status.json").read_text()).get("connected")
                 is True if (s.site_dir / "status.json").exists() else False, what="site up")
        with coord.admin() as admin:
            admin.list_sites()
        c_port = coord.coordinator.metrics_port
        s_port = json.loads((s.site_dir / "status.json").read_text())["metrics_port"]
        c_text, s_text = _get(c_port), _get(s_port)
        for name in (*SERIES_BOTH, "insitu_vault_request_seconds"):
            assert name in c_text, name
        for name in SERIES_BOTH:
            assert name in s_text, name
        assert 'method="insitu.v1.Admin/ListSites"' in c_text
        assert "hospital-x" not in c_text + s_text  # labels carry kinds, never names
        prometheus = shutil.which("prometheus")
        if prometheus is None:
            pytest.skip(reason="Debian prometheus is not installed (make test installs it)")
        port = free_port()
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(
            "global: {scrape_interval: 1s}\nscrape_configs:\n"
            f"  - job_name: coordinator\n    static_configs: [{{targets: ['127.0.0.1:{c_port}']}}]\n"
            f"  - job_name: site\n    static_configs: [{{targets: ['127.0.0.1:{s_port}']}}]\n")
        p = subprocess.Popen([prometheus, f"--config.file={cfg}",
                              f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                              f"--web.listen-address=127.0.0.1:{port}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def scraped() -> bool:
                url = (f"http://127.0.0.1:{port}/api/v1/query?"
                       "query=count%20by%20(job)%20(insitu_rpc_requests_total)")
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        res = json.loads(r.read())["data"]["result"]
                except OSError:
                    return False
                return {x["metric"]["job"] for x in res} == {"coordinator", "site"}
            wait_for(scraped, timeout=60, what="prometheus to scrape both")
        finally:
            p.terminate()
            p.wait(10)
    finally:
        daemon.stop()
        t.join(10)
        time.sleep(0)
