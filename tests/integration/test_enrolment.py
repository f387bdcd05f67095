"""Issue #2: join tokens, enrolment, renewal, restart survival, and key hygiene."""

from __future__ import annotations

import stat
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from coordinator.settings import CoordinatorSettings
from coordinator.store import now_s
from insitu._proto.v1 import enrolment_pb2, enrolment_pb2_grpc
from insitu.errors import InsituError
from insitu.identity.credentials import Credentials, build_csr, generate_private_key
from insitu.identity.spiffe import SpiffeId
from insitu.keys import free_port
from insitu.rpc.server import secure_channel
from insitu.sdk import InvalidArgument, NotFound
from site_node.enrol import enrol
from tests.integration.conftest import RunningCoordinator, enrol_site, wait_for


def _enrol_raw(rc: RunningCoordinator, site_id: str, token: str, csr_pem: str) -> grpc.RpcError:
    ch = secure_channel(
        rc.enrol_target, ca_pem=rc.ca_pem, creds=None, server_name=rc.settings.server_name
    )
    with ch, pytest.raises(grpc.RpcError) as e:
        enrolment_pb2_grpc.EnrolmentStub(ch).Enrol(
            enrolment_pb2.EnrolRequest(site_id=site_id, join_token=token, csr_pem=csr_pem),
            timeout=10,
        )
    return e.value


def _state(rc: RunningCoordinator) -> tuple[object, ...]:
    store = rc.coordinator.store
    sites = store.list_sites()
    certs = [store.site_certs(s.site_id) for s in sites]
    return (tuple(sites), tuple(tuple(c) for c in certs), store.count_unused_tokens())


def _csr(rc: RunningCoordinator, site_id: str) -> str:
    return build_csr(generate_private_key(), SpiffeId.site(rc.settings.trust_domain, site_id))


def test_enrolment_issues_site_identity_with_private_key_0600(
    coord: RunningCoordinator, tmp_path: Path
) -> None:
    s = enrol_site(coord, "hospital-a", tmp_path / "a")
    creds = Credentials.load(s.tls_dir)
    assert creds.info.spiffe_id == SpiffeId.site(coord.settings.trust_domain, "hospital-a")
    for f in s.tls_dir.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE(s.tls_dir.resolve().stat().st_mode) == 0o700


def test_private_key_is_never_sent(
    coord: RunningCoordinator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_site
) -> None:
    # The servicers pass every request field to these handlers; record them all.
    captured: list[bytes] = []
    from coordinator import enrolment

    orig_enrol, orig_renew = enrolment.enrol_site, enrolment.renew_site_cert

    def spy_enrol(store, keys, settings, site_id, token, csr_pem):  # type: ignore[no-untyped-def]
        captured.append(f"{site_id}{token}{csr_pem}".encode())
        return orig_enrol(store, keys, settings, site_id, token, csr_pem)

    def spy_renew(store, keys, settings, site_id, csr_pem):  # type: ignore[no-untyped-def]
        captured.append(csr_pem.encode())
        return orig_renew(store, keys, settings, site_id, csr_pem)

    monkeypatch.setattr(enrolment, "enrol_site", spy_enrol)
    monkeypatch.setattr(enrolment, "renew_site_cert", spy_renew)
    s = enrol_site(coord, "hospital-k", tmp_path / "k")
    keys_seen = [Credentials.load(s.tls_dir).key_pem]
    # Force one renewal so the renewal path is covered too.
    site = run_site(s.site_dir, renew_at_fraction=0.0)
    wait_for(lambda: int(site.status().get("renewals", 0)) >= 1, what="renewal")
    site.stop()
    keys_seen.append(Credentials.load(s.tls_dir).key_pem)
    assert len(captured) >= 2
    blob = b"".join(captured)
    for pem in keys_seen:
        key = serialization.load_pem_private_key(pem, None)
        scalar = key.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for secret in (pem, der, scalar):
            assert secret not in blob
    assert b"PRIVATE KEY" not in blob


def test_join_token_is_single_use_and_state_unchanged(
    coord: RunningCoordinator, tmp_path: Path
) -> None:
    with coord.admin() as admin:
        token = admin.create_join_token("hospital-b", 600).token
    enrol(
        enrol_target=coord.enrol_target,
        coordinator=coord.target,
        site_id="hospital-b",
        token=token,
        ca_pem=coord.ca_pem,
        site_dir=tmp_path / "b",
        trust_domain=coord.settings.trust_domain,
    )
    before = _state(coord)
    err = _enrol_raw(coord, "hospital-b", token, _csr(coord, "hospital-b"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "already been used" in (err.details() or "")
    assert _state(coord) == before


def test_expired_join_token_is_refused(coord: RunningCoordinator) -> None:
    now = now_s()
    coord.coordinator.store.add_token(
        "isj_expired-token-for-test",
        "t-expired",
        "hospital-e",
        "test",
        expires_at=now - 1,
        now=now - 120,
    )
    before = _state(coord)
    err = _enrol_raw(coord, "hospital-e", "isj_expired-token-for-test", _csr(coord, "hospital-e"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (err.details() or "")
    assert _state(coord) == before


def test_token_for_another_site_is_refused_and_stays_usable(
    coord: RunningCoordinator, tmp_path: Path
) -> None:
    with coord.admin() as admin:
        token = admin.create_join_token("hospital-c", 600).token
    before = _state(coord)
    err = _enrol_raw(coord, "hospital-d", token, _csr(coord, "hospital-d"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "another site" in (err.details() or "")
    assert _state(coord) == before
    enrol(
        enrol_target=coord.enrol_target,
        coordinator=coord.target,
        site_id="hospital-c",
        token=token,
        ca_pem=coord.ca_pem,
        site_dir=tmp_path / "c",
        trust_domain=coord.settings.trust_domain,
    )


@pytest.mark.parametrize(
    "csr,needle",
    [
        ("", "empty"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n",
            "not a PEM",
        ),
        ("x" * 9000, "exceeds"),
        ("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n", "private key"),
    ],
)
def test_malformed_csr_gets_precise_error_and_state_unchanged(
    coord: RunningCoordinator, csr: str, needle: str
) -> None:
    with coord.admin() as admin:
        token = admin.create_join_token("hospital-f", 600).token
    before = _state(coord)
    err = _enrol_raw(coord, "hospital-f", token, csr)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (err.details() or "")
    assert "abc" not in (err.details() or "")
    assert _state(coord) == before


def test_unknown_token_and_bad_site_id(coord: RunningCoordinator) -> None:
    err = _enrol_raw(coord, "hospital-g", "isj_nope", _csr(coord, "hospital-g"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    err = _enrol_raw(coord, "Bad Site!", "isj_nope", _csr(coord, "hospital-g"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_admin_calls_validate_input(coord: RunningCoordinator) -> None:
    with coord.admin() as admin:
        with pytest.raises(InvalidArgument):
            admin.create_join_token("Not A Site", 600)
        with pytest.raises(InvalidArgument, match="ttl_seconds"):
            admin.create_join_token("hospital-h", 5)
        with pytest.raises(InvalidArgument, match="ttl_seconds"):
            admin.create_join_token("hospital-h", 10**9)
        with pytest.raises(NotFound):
            admin.get_site("hospital-nowhere")
        with pytest.raises(NotFound):
            admin.revoke_site("hospital-nowhere")
        with pytest.raises(InvalidArgument):
            admin.revoke_site("hospital-h", "x" * 10_000)


def test_renewal_replaces_cert_without_dropping_session(
    make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
    coordinator_settings: CoordinatorSettings,
    tmp_path: Path,
    run_site,
) -> None:
    from dataclasses import replace

    rc = make_coordinator(replace(coordinator_settings, site_cert_ttl_s=8))
    s = enrol_site(rc, "hospital-n", tmp_path / "n")
    first_serial = Credentials.load(s.tls_dir).info.serial
    site = run_site(s.site_dir)
    wait_for(lambda: site.status().get("connected") is True, what="connected")
    wait_for(lambda: int(site.status().get("renewals", 0)) >= 2, timeout=40, what="two renewals")
    st = site.status()
    assert st["connects"] == 1, "the session was never re-dialled after a failure"
    assert st["connected"] is True
    new = Credentials.load(s.tls_dir).info
    assert new.serial != first_serial
    with rc.admin() as admin:
        info = admin.get_site("hospital-n")
    assert info.connected
    assert int(info.cert_serial_hex, 16) in {new.serial} | {int(st["cert_serial"], 16)}
    assert site.errors == []


def test_site_session_survives_coordinator_restart(
    make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
    coordinator_settings: CoordinatorSettings,
    tmp_path: Path,
    run_site,
) -> None:
    from dataclasses import replace

    settings = replace(
        coordinator_settings,
        listen=f"127.0.0.1:{free_port()}",
        enrol_listen=f"127.0.0.1:{free_port()}",
    )
    rc = make_coordinator(settings)
    s = enrol_site(rc, "hospital-p", tmp_path / "p")
    site = run_site(s.site_dir)
    wait_for(lambda: site.status().get("connected") is True, what="connected")
    rc.coordinator.stop(0.2)
    wait_for(lambda: site.status().get("connected") is False, what="disconnect noticed")
    time.sleep(0.5)
    rc2 = make_coordinator(settings)  # same data dir, same ports: a restart
    wait_for(
        lambda: site.status().get("connected") is True and site.status()["connects"] == 2,
        timeout=30,
        what="reconnect after restart",
    )
    with rc2.admin() as admin:
        assert admin.get_site("hospital-p").connected
    assert site.errors == []


def test_store_rejects_invalid_site_names_before_touching_state(coord: RunningCoordinator) -> None:
    from coordinator.enrolment import mint_join_token

    with pytest.raises(InsituError):
        mint_join_token(coord.coordinator.store, coord.settings, "../etc", 600, "t")
