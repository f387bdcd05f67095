"""deploy/docker/insitu_probe.py, the exec probe of the images: the site checks, on files
(the coordinator check runs against a real coordinator in tests/integration)."""

from __future__ import annotations

import importlib.util
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PROBE = Path(__file__).resolve().parents[3] / "deploy" / "docker" / "insitu_probe.py"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("insitu_probe", PROBE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_cert(site_dir: Path, not_after: datetime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - timedelta(hours=8))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    (site_dir / "tls").mkdir(parents=True, exist_ok=True)
    (site_dir / "tls" / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_status(site_dir: Path, connected: bool, age_s: float) -> None:
    path = site_dir / "status.json"
    path.write_text(json.dumps({"connected": connected, "session_id": "s"}))
    t = NOW.timestamp() - age_s
    os.utime(path, (t, t))


def test_site_is_live_with_an_unexpired_identity(probe: ModuleType, tmp_path: Path) -> None:
    _write_cert(tmp_path, NOW + timedelta(hours=1))
    probe.check_site(tmp_path, "live", 60, now=NOW.timestamp())


def test_site_is_not_live_without_identity_or_with_an_expired_one(
    probe: ModuleType, tmp_path: Path
) -> None:
    with pytest.raises(probe.ProbeFailed, match="no readable identity"):
        probe.check_site(tmp_path, "live", 60, now=NOW.timestamp())
    _write_cert(tmp_path, NOW - timedelta(seconds=1))
    with pytest.raises(probe.ProbeFailed, match="expired"):
        probe.check_site(tmp_path, "live", 60, now=NOW.timestamp())


def test_site_readiness_follows_the_session(probe: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(probe.ProbeFailed, match="no readable status"):
        probe.check_site(tmp_path, "ready", 60, now=NOW.timestamp())
    _write_status(tmp_path, connected=True, age_s=5)
    probe.check_site(tmp_path, "ready", 60, now=NOW.timestamp())
    _write_status(tmp_path, connected=False, age_s=5)
    with pytest.raises(probe.ProbeFailed, match="not connected"):
        probe.check_site(tmp_path, "ready", 60, now=NOW.timestamp())
    _write_status(tmp_path, connected=True, age_s=120)  # heartbeats stopped
    with pytest.raises(probe.ProbeFailed, match="old"):
        probe.check_site(tmp_path, "ready", 60, now=NOW.timestamp())


def test_main_exit_codes(
    probe: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_cert(tmp_path, datetime.now(UTC) + timedelta(hours=1))
    assert probe.main(["site", "--site-dir", str(tmp_path), "--check", "live"]) == 0
    assert probe.main(["site", "--site-dir", str(tmp_path), "--check", "ready"]) == 1
    assert "no readable status" in capsys.readouterr().err
    missing_ca = tmp_path / "nope.pem"
    argv = ["coordinator", "--ca-file", str(missing_ca), "--server-name", "coordinator.x"]
    assert probe.main(argv) == 1
