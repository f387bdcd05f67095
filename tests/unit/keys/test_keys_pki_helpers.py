"""Serial conversions and verified CRL parsing, against CAs built locally with cryptography."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from insitu.errors import ErrorCode, InsituError
from insitu.keys import serial_from_vault, serial_to_vault
from insitu.keys.pki import (
    IssuedCert,
    crl_pem_to_der,
    is_self_signed,
    pem_certificates,
    verified_revoked_serials,
)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _crl(key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate, serials: list[int]) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(NOW)
        .next_update(NOW + timedelta(hours=72))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW).build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("value", "text"),
    [(1, "01"), (0x3A1F, "3a:1f"), (0xFF, "ff"), (0x0100, "01:00"), (2**159 + 5, None)],
)
def test_serial_roundtrip(value: int, text: str | None) -> None:
    vault = serial_to_vault(value)
    if text is not None:
        assert vault == text
    assert serial_from_vault(vault) == value
    assert serial_from_vault(vault.upper().replace(":", "-")) == value


@pytest.mark.parametrize("bad", [0, -1, True])
def test_serial_to_vault_rejects_non_positive(bad: int) -> None:
    with pytest.raises(InsituError) as err:
        serial_to_vault(bad)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize("bad", ["", "3a:1", "zz", "3a::1f", "00", "3a:1f:"])
def test_serial_from_vault_rejects_malformed(bad: str) -> None:
    with pytest.raises(InsituError) as err:
        serial_from_vault(bad)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT


def test_verified_crl_lists_serials_and_next_update() -> None:
    key, ca = _ca("issuing")
    serials, next_update = verified_revoked_serials(_crl(key, ca, [7, 2**100]), ca)
    assert serials == frozenset({7, 2**100})
    assert next_update == NOW + timedelta(hours=72)


def test_crl_from_another_key_with_same_name_is_refused() -> None:
    _, ca = _ca("issuing")
    forger_key, _ = _ca("issuing")
    with pytest.raises(InsituError) as err:
        verified_revoked_serials(_crl(forger_key, ca, []), ca)
    assert err.value.code is ErrorCode.INTEGRITY
    assert "signature" in err.value.detail


def test_crl_from_another_issuer_is_refused() -> None:
    key, ca = _ca("issuing")
    _, other = _ca("someone else")
    with pytest.raises(InsituError) as err:
        verified_revoked_serials(_crl(key, ca, [1]), other)
    assert err.value.code is ErrorCode.INTEGRITY


def test_garbage_crl_is_refused() -> None:
    _, ca = _ca("issuing")
    with pytest.raises(InsituError) as err:
        verified_revoked_serials(b"\x30\x03garbage", ca)
    assert err.value.code is ErrorCode.INTEGRITY


def test_crl_pem_to_der_roundtrip() -> None:
    key, ca = _ca("issuing")
    der = _crl(key, ca, [3])
    pem = x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM).decode()
    assert crl_pem_to_der(pem) == der


def test_self_signed_detection_and_pem_split() -> None:
    key, root = _ca("root")
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(root.subject)
        .public_key(leaf_key.public_key())
        .serial_number(9)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    bundle = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in (leaf, root))
    certs = pem_certificates(bundle)
    assert [c.serial_number for c in certs] == [9, root.serial_number]
    assert is_self_signed(root) and not is_self_signed(leaf)


def test_issued_cert_requires_aware_not_after() -> None:
    with pytest.raises(InsituError):
        IssuedCert(cert_pem="", chain_pem="", serial=1, not_after=datetime(2030, 1, 1))
