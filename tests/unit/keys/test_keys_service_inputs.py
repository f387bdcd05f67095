"""KeyService refuses bad input before any HTTP call, and reports an absent Vault cleanly.

The service here points at a closed loopback port: had validation been skipped, the
error would be VAULT_UNAVAILABLE instead of the code each test expects.
"""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from insitu.errors import ErrorCode, InsituError
from insitu.keys import DataKey, KeyService, coordinator_policy_hcl, free_port

URI = ["spiffe://test.insitu/site/a"]


@pytest.fixture(scope="module")
def offline() -> KeyService:
    return KeyService.from_token(f"http://127.0.0.1:{free_port()}", "not-a-real-token", timeout_s=2)


@pytest.fixture(scope="module")
def csr_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _code(excinfo: pytest.ExceptionInfo[InsituError]) -> ErrorCode:
    return excinfo.value.code


@pytest.mark.parametrize("role", ["admin", "SITE", "", "site/../sys"])
def test_unknown_role(offline: KeyService, csr_pem: str, role: str) -> None:
    with pytest.raises(InsituError) as err:
        offline.sign_csr(role, csr_pem, uri_sans=URI, ttl_seconds=60)
    assert _code(err) is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize("ttl", [0, -5, True])
def test_bad_ttl(offline: KeyService, csr_pem: str, ttl: int) -> None:
    with pytest.raises(InsituError) as err:
        offline.sign_csr("site", csr_pem, uri_sans=URI, ttl_seconds=ttl)
    assert _code(err) is ErrorCode.INVALID_ARGUMENT


def test_garbage_csr_is_refused_without_echo(offline: KeyService) -> None:
    garbage = (
        "-----BEGIN CERTIFICATE REQUEST-----\nU0VDUkVUUEFZTE9BRA==\n"
        "-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(InsituError) as err:
        offline.sign_csr("site", garbage, uri_sans=URI, ttl_seconds=60)
    assert _code(err) is ErrorCode.MALFORMED_CSR
    assert "U0VDUkVU" not in str(err.value) and "U0VDUkVU" not in err.value.public_message()


def test_csr_with_broken_signature_is_refused(offline: KeyService, csr_pem: str) -> None:
    der = bytearray(
        x509.load_pem_x509_csr(csr_pem.encode()).public_bytes(serialization.Encoding.DER)
    )
    der[-3] ^= 0x01  # inside the ECDSA signature
    import base64

    body = base64.encodebytes(bytes(der)).decode()
    tampered = f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(InsituError) as err:
        offline.sign_csr("site", tampered, uri_sans=URI, ttl_seconds=60)
    assert _code(err) is ErrorCode.MALFORMED_CSR


@pytest.mark.parametrize(
    ("kwargs"),
    [
        {"uri_sans": []},
        {"uri_sans": "spiffe://test.insitu/site/a"},
        {"uri_sans": ["spiffe://test.insitu/site/a,spiffe://test.insitu/service/x"]},
        {"uri_sans": URI, "dns_sans": ["a.site.test.insitu,coordinator.test.insitu"]},
        {"uri_sans": URI, "ip_sans": ["not-an-ip"]},
        {"uri_sans": URI, "common_name": "a\nb"},
        {"uri_sans": URI, "common_name": "x" * 65},
        {"uri_sans": URI, "common_name": ""},
    ],
)
def test_bad_sans(offline: KeyService, csr_pem: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(InsituError) as err:
        offline.sign_csr("site", csr_pem, ttl_seconds=60, **kwargs)  # type: ignore[arg-type]
    assert _code(err) is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize("name", ["../sys/mounts", "a/b", "", "Audit", "x" * 65])
def test_transit_key_names_cannot_walk_paths(offline: KeyService, name: str) -> None:
    with pytest.raises(InsituError) as err:
        offline.sign(name, b"data")
    assert _code(err) is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "path", ["", "/insitu/x", "insitu/../x", "insitu//x", "insitu/x/", "insitu/ x"]
)
def test_kv_paths_are_checked(offline: KeyService, path: str) -> None:
    with pytest.raises(InsituError) as err:
        offline.kv_get(path)
    assert _code(err) is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "wrapped", ["", "plaintext", "vault:v0:AAAA", "vault:v1:not base64!", "vault:1:AAAA"]
)
def test_wrapped_values_are_checked(offline: KeyService, wrapped: str) -> None:
    with pytest.raises(InsituError) as err:
        offline.unwrap("data-wrapping", wrapped)
    assert _code(err) is ErrorCode.INVALID_ARGUMENT
    assert wrapped == "" or wrapped not in str(err.value)


def test_absent_vault_is_unavailable(offline: KeyService, csr_pem: str) -> None:
    with pytest.raises(InsituError) as err:
        offline.sign_csr("site", csr_pem, uri_sans=URI, ttl_seconds=60)
    assert _code(err) is ErrorCode.VAULT_UNAVAILABLE
    assert "not-a-real-token" not in str(err.value)


def test_absent_vault_approle_login_is_unavailable() -> None:
    with pytest.raises(InsituError) as err:
        KeyService.from_approle(
            f"http://127.0.0.1:{free_port()}", "role", "secret-value", timeout_s=2
        )
    assert _code(err) is ErrorCode.VAULT_UNAVAILABLE
    assert "secret-value" not in str(err.value)


def test_short_signature_is_simply_false(offline: KeyService) -> None:
    assert offline.verify("audit-signing", b"data", b"\x00" * 10) is False


def test_data_key_repr_hides_plaintext() -> None:
    key = DataKey(plaintext=bytes(range(32)), wrapped="vault:v1:QUJDREVGR0hJSktMTU5PUA==")
    text = repr(key) + str(key)
    assert bytes(range(32)).hex() not in text
    assert "\\x00\\x01" not in text and "AAECAwQF" not in text
    assert "32 bytes" in text


def test_policy_is_packaged_and_least_privilege() -> None:
    hcl = coordinator_policy_hcl()
    assert 'path "pki_int/sign/site"' in hcl
    assert "sys/" not in hcl  # no control over mounts, policies or auth
    assert '"sudo"' not in hcl and '"delete"' not in hcl
    assert 'path "kv/data/insitu/*"' in hcl and 'path "kv/data/*"' not in hcl
