"""Issue #2 "must hold": who is refused at the coordinator's door, against real OpenBao
and real TLS 1.3."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from insitu._proto.v1 import admin_pb2, admin_pb2_grpc, session_pb2, session_pb2_grpc
from insitu.identity.credentials import (
    Credentials,
    build_csr,
    generate_private_key,
    key_to_pem,
)
from insitu.identity.spiffe import SpiffeId
from insitu.keys import KeyService
from insitu.rpc.server import secure_channel
from site_node.session import SiteRefused
from tests.integration.conftest import RunningCoordinator, enrol_site, wait_for


def _health(channel: grpc.Channel) -> None:
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


def _channel(
    rc: RunningCoordinator, creds: Credentials | None, ca_pem: str | None = None
) -> grpc.Channel:
    return secure_channel(
        rc.target, ca_pem=ca_pem or rc.ca_pem, creds=creds, server_name=rc.settings.server_name
    )


def _issue(keys: KeyService, role: str, sid: SpiffeId, ttl: int) -> Credentials:
    key = generate_private_key()
    cert = keys.sign_csr(role, build_csr(key, sid), uri_sans=[sid.uri], ttl_seconds=ttl)
    return Credentials(key_to_pem(key), cert.cert_pem, cert.chain_pem, keys.ca_bundle_pem())


def test_valid_user_cert_is_accepted(coord: RunningCoordinator) -> None:
    with coord.admin() as admin:
        assert admin.health() == "SERVING"


def test_client_without_certificate_is_refused(coord: RunningCoordinator) -> None:
    with _channel(coord, None) as ch, pytest.raises(grpc.RpcError) as e:
        _health(ch)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # refused in the handshake


def test_certificate_from_foreign_ca_is_refused(
    coord: RunningCoordinator, trust_domain: str
) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil root")])
    now = dt.datetime.now(dt.UTC)
    leaf_key = generate_private_key()
    sid = SpiffeId.user(trust_domain, "admin")  # claims a real-looking identity
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .issuer_name(name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(sid.uri)]), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    creds = Credentials(
        key_to_pem(leaf_key),
        leaf.public_bytes(serialization.Encoding.PEM).decode(),
        "",
        coord.ca_pem,
    )
    with _channel(coord, creds) as ch, pytest.raises(grpc.RpcError) as e:
        admin_pb2_grpc.AdminStub(ch).ListSites(admin_pb2.ListSitesRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_expired_certificate_is_refused(
    coord: RunningCoordinator, key_service: KeyService, trust_domain: str
) -> None:
    creds = _issue(key_service, "user", SpiffeId.user(trust_domain, "shortlived"), ttl=2)
    wait_for(
        lambda: dt.datetime.now(dt.UTC) > creds.info.not_after + dt.timedelta(seconds=1),
        what="certificate expiry",
    )
    with _channel(coord, creds) as ch, pytest.raises(grpc.RpcError) as e:
        _health(ch)
    assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)


def test_revoked_site_is_refused_and_its_session_ends(
    coord: RunningCoordinator, tmp_path: Path, run_site
) -> None:
    s = enrol_site(coord, "hospital-r", tmp_path / "r")
    site = run_site(s.site_dir)
    wait_for(lambda: site.status().get("connected") is True, what="connected")
    with coord.admin() as admin:
        info, n = admin.revoke_site("hospital-r", "compromised host")
    assert info.status == "revoked" and n == 1
    wait_for(lambda: not site.thread.is_alive(), what="site daemon to stop")
    assert any(isinstance(e, SiteRefused) for e in site.errors)
    # A new connection with the revoked certificate is refused on its first call.
    creds = Credentials.load(s.tls_dir)
    with _channel(coord, creds) as ch, pytest.raises(grpc.RpcError) as e:
        _health(ch)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (e.value.details() or "")


def test_revocation_from_vault_crl_is_enforced(
    coord: RunningCoordinator, key_service: KeyService, trust_domain: str
) -> None:
    """A certificate revoked in Vault directly (not through the coordinator) is refused
    once the CRL refreshes."""
    creds = _issue(key_service, "user", SpiffeId.user(trust_domain, "crl-user"), ttl=600)
    with _channel(coord, creds) as ch:
        _health(ch)
    key_service.revoke(creds.info.serial)

    def refused() -> bool:
        with _channel(coord, creds) as ch:
            try:
                _health(ch)
                return False
            except grpc.RpcError as e:
                return e.code() == grpc.StatusCode.UNAUTHENTICATED

    wait_for(refused, timeout=15, what="CRL refresh")


def test_user_certificate_cannot_call_site_rpcs(coord: RunningCoordinator) -> None:
    creds = Credentials.from_files(
        coord.admin_dir / "key.pem",
        coord.admin_dir / "cert.pem",
        coord.admin_dir / "ca.pem",
        coord.admin_dir / "chain.pem",
    )
    with _channel(coord, creds) as ch:
        stub = session_pb2_grpc.SiteSessionStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Renew(session_pb2.RenewRequest(csr_pem="x"), timeout=5)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as e2:
            list(
                stub.Connect(
                    iter([session_pb2.SiteMessage(hello=session_pb2.Hello(site_id="hospital-a"))]),
                    timeout=5,
                )
            )
        assert e2.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_site_certificate_cannot_call_admin_rpcs(coord: RunningCoordinator, tmp_path: Path) -> None:
    s = enrol_site(coord, "hospital-s", tmp_path / "s")
    with _channel(coord, Credentials.load(s.tls_dir)) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)
        for call, req in [
            (stub.ListSites, admin_pb2.ListSitesRequest()),
            (stub.CreateJoinToken, admin_pb2.CreateJoinTokenRequest(site_id="x", ttl_seconds=600)),
            (stub.RevokeSite, admin_pb2.RevokeSiteRequest(site_id="hospital-s")),
        ]:
            with pytest.raises(grpc.RpcError) as e:
                call(req, timeout=5)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_user_without_admin_role_cannot_mint_tokens(
    coord: RunningCoordinator, key_service: KeyService, trust_domain: str
) -> None:
    creds = _issue(key_service, "user", SpiffeId.user(trust_domain, "mallory"), ttl=600)
    with _channel(coord, creds) as ch, pytest.raises(grpc.RpcError) as e:
        admin_pb2_grpc.AdminStub(ch).CreateJoinToken(
            admin_pb2.CreateJoinTokenRequest(site_id="hospital-z", ttl_seconds=600), timeout=5
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_site_cannot_open_session_as_another_site(
    coord: RunningCoordinator, tmp_path: Path
) -> None:
    s = enrol_site(coord, "hospital-m", tmp_path / "m")
    with _channel(coord, Credentials.load(s.tls_dir)) as ch, pytest.raises(grpc.RpcError) as e:
        list(
            session_pb2_grpc.SiteSessionStub(ch).Connect(
                iter([session_pb2.SiteMessage(hello=session_pb2.Hello(site_id="hospital-other"))]),
                timeout=5,
            )
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_enrolment_listener_serves_only_enrol(coord: RunningCoordinator) -> None:
    ch = secure_channel(
        coord.enrol_target, ca_pem=coord.ca_pem, creds=None, server_name=coord.settings.server_name
    )
    with ch, pytest.raises(grpc.RpcError) as e:
        admin_pb2_grpc.AdminStub(ch).ListSites(admin_pb2.ListSitesRequest(), timeout=5)
    assert e.value.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAUTHENTICATED)


def test_tls13_is_negotiated(coord: RunningCoordinator) -> None:
    seen: list[dict[str, list[bytes]]] = []
    authn = coord.coordinator.authenticator
    original = authn.from_context

    def spy(context):  # type: ignore[no-untyped-def]
        seen.append(dict(context.auth_context()))
        return original(context)

    authn.from_context = spy  # type: ignore[method-assign]
    try:
        with coord.admin() as admin:
            admin.list_sites()
    finally:
        authn.from_context = original  # type: ignore[method-assign]
    ctx = seen[0]
    assert ctx["transport_security_type"] == [b"ssl"]
    assert ctx["ssl_tls_version"] == [b"TLSv1.3"]
