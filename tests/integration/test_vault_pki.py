"""PKI through KeyService against a real OpenBao: roles, SAN rules, TTL, chain, revocation."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from insitu.errors import ErrorCode, InsituError
from insitu.keys import FederationPki, IssuedCert, KeyService


def make_csr(*, cn: str = "ignored", dns: tuple[str, ...] = ()) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def sans(cert: x509.Certificate) -> tuple[list[str], list[str], list[str]]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], [], []
    return (
        sorted(ext.get_values_for_type(x509.UniformResourceIdentifier)),
        sorted(ext.get_values_for_type(x509.DNSName)),
        sorted(str(ip) for ip in ext.get_values_for_type(x509.IPAddress)),
    )


def eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def load(issued: IssuedCert) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issued.cert_pem.encode())


@pytest.mark.parametrize(
    ("role", "path", "dns", "ips", "server"),
    [
        ("site", "site/hospital-a", ["hospital-a.site.test.insitu"], [], True),
        ("user", "user/alice", [], [], False),
        (
            "service",
            "service/coordinator",
            ["coordinator.test.insitu", "localhost"],
            ["127.0.0.1"],
            True,
        ),
    ],
)
def test_sign_per_role(
    key_service: KeyService,
    federation: FederationPki,
    role: str,
    path: str,
    dns: list[str],
    ips: list[str],
    server: bool,
) -> None:
    uri = f"spiffe://{federation.trust_domain}/{path}"
    # The CSR's own names must be ignored: only what the caller passes is certified.
    csr = make_csr(cn="coordinator.test.insitu", dns=("coordinator.test.insitu", "evil.example"))
    issued = key_service.sign_csr(
        role, csr, uri_sans=[uri], dns_sans=dns, ip_sans=ips, ttl_seconds=3600
    )
    cert = load(issued)
    assert sans(cert) == ([uri], sorted(dns), sorted(ips))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    assert issued.serial == cert.serial_number
    assert issued.not_after == cert.not_valid_after_utc and issued.not_after.tzinfo is not None
    usages = eku(cert)
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    assert (ExtendedKeyUsageOID.SERVER_AUTH in usages) is server
    # Chain: leaf <- intermediate (chain_pem, no root) <- root (the trust anchor).
    intermediate = x509.load_pem_x509_certificate(issued.chain_pem.encode())
    root = x509.load_pem_x509_certificate(federation.root_ca_pem.encode())
    cert.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(root)
    assert issued.chain_pem.count("BEGIN CERTIFICATE") == 1


def test_ca_accessors_match_bootstrap(key_service: KeyService, federation: FederationPki) -> None:
    assert key_service.ca_bundle_pem() == federation.root_ca_pem
    got = x509.load_pem_x509_certificate(key_service.issuing_chain_pem().encode())
    assert got == x509.load_pem_x509_certificate(federation.intermediate_pem.encode())


def test_common_name_is_kept_out_of_dns_sans(key_service: KeyService, trust_domain: str) -> None:
    issued = key_service.sign_csr(
        "site",
        make_csr(),
        uri_sans=[f"spiffe://{trust_domain}/site/b"],
        common_name="b.site.test.insitu",
        ttl_seconds=600,
    )
    cert = load(issued)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "b.site.test.insitu"
    assert sans(cert)[1] == []


@pytest.mark.parametrize(
    ("role", "path", "extra"),
    [
        # a site must never be able to pose as the coordinator
        ("site", "site/a", {"dns_sans": ["coordinator.test.insitu"]}),
        ("site", "site/a", {"common_name": "coordinator.test.insitu"}),
        ("site", "site/a", {"dns_sans": ["localhost"]}),
        ("site", "site/a", {"ip_sans": ["127.0.0.1"]}),
        ("user", "user/alice", {"dns_sans": ["alice.test.insitu"]}),
        ("user", "user/alice", {"ip_sans": ["10.0.0.1"]}),
        ("service", "service/x", {"dns_sans": ["x.other.example"]}),
        # URI SANs outside the role's own pattern or trust domain
        ("site", "service/coordinator", {}),
        ("site", "user/alice", {}),
        ("user", "site/a", {}),
        ("service", "site/a", {}),
    ],
)
def test_role_restrictions(
    key_service: KeyService, trust_domain: str, role: str, path: str, extra: dict[str, object]
) -> None:
    with pytest.raises(InsituError) as err:
        key_service.sign_csr(
            role,
            make_csr(),
            uri_sans=[f"spiffe://{trust_domain}/{path}"],
            ttl_seconds=600,
            **extra,  # type: ignore[arg-type]
        )
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert "BEGIN CERTIFICATE REQUEST" not in str(err.value)


def test_foreign_trust_domain_is_refused(key_service: KeyService) -> None:
    with pytest.raises(InsituError) as err:
        key_service.sign_csr(
            "site", make_csr(), uri_sans=["spiffe://other.insitu/site/a"], ttl_seconds=60
        )
    assert err.value.code is ErrorCode.INVALID_ARGUMENT


def test_ttl_is_honored(key_service: KeyService, trust_domain: str) -> None:
    ttl = 900
    before = datetime.now(UTC).replace(microsecond=0)
    issued = key_service.sign_csr(
        "site", make_csr(), uri_sans=[f"spiffe://{trust_domain}/site/t"], ttl_seconds=ttl
    )
    after = datetime.now(UTC)
    # Validity is a certificate property, not a timing measurement; a minute of slack
    # covers clock rounding and slow machines.
    assert (
        before + timedelta(seconds=ttl - 60)
        <= issued.not_after
        <= after + timedelta(seconds=ttl + 60)
    )
    longer = key_service.sign_csr(
        "site", make_csr(), uri_sans=[f"spiffe://{trust_domain}/site/t"], ttl_seconds=4 * ttl
    )
    assert longer.not_after - issued.not_after >= timedelta(seconds=2 * ttl)


def test_revocation_reaches_the_verified_crl(
    key_service: KeyService, approle_key_service: KeyService, trust_domain: str
) -> None:
    uri = [f"spiffe://{trust_domain}/site/revoked-one"]
    doomed = key_service.sign_csr("site", make_csr(), uri_sans=uri, ttl_seconds=600)
    kept = key_service.sign_csr("site", make_csr(), uri_sans=uri, ttl_seconds=600)
    assert doomed.serial not in key_service.revoked_serials()
    approle_key_service.revoke(doomed.serial)
    for service in (key_service, approle_key_service):
        revoked = service.revoked_serials()
        assert doomed.serial in revoked and kept.serial not in revoked
    crl = x509.load_der_x509_crl(key_service.crl_der())
    assert crl.get_revoked_certificate_by_serial_number(doomed.serial) is not None
    key_service.revoke(doomed.serial)  # revoking again is harmless


def test_revoking_an_unknown_serial_is_not_found(key_service: KeyService) -> None:
    with pytest.raises(InsituError) as err:
        key_service.revoke(0x0DDBA11)
    assert err.value.code is ErrorCode.NOT_FOUND


def test_stale_crl_fails_closed(approle_key_service: KeyService) -> None:
    # Pretend it is long past the CRL's next update: the service re-signs the CRL (which
    # the coordinator policy must allow, else this would be PERMISSION_DENIED); Vault's
    # fresh CRL is still stale relative to that fake now, so the service refuses it.
    with pytest.raises(InsituError) as err:
        approle_key_service.revoked_serials(now=datetime.now(UTC) + timedelta(days=30))
    assert err.value.code is ErrorCode.VAULT_UNAVAILABLE
    assert "expired CRL" in err.value.detail


def test_ip_sans_are_normalised(key_service: KeyService, trust_domain: str) -> None:
    issued = key_service.sign_csr(
        "service",
        make_csr(),
        uri_sans=[f"spiffe://{trust_domain}/service/ipv6"],
        ip_sans=["::1"],
        ttl_seconds=600,
    )
    assert sans(load(issued))[2] == [str(ipaddress.ip_address("::1"))]
