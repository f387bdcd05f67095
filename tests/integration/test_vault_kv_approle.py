"""KV v2 and the least-privilege AppRole identity against a real OpenBao."""

from __future__ import annotations

import uuid

import hvac
import hvac.exceptions
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from insitu.errors import ErrorCode, InsituError
from insitu.keys import DevVault, KeyService


def test_kv_roundtrip(approle_key_service: KeyService) -> None:
    path = f"insitu/tests/{uuid.uuid4().hex}"
    assert approle_key_service.kv_get(path) is None
    approle_key_service.kv_put(path, {"wrapped": "vault:v1:abc", "note": "first"})
    assert approle_key_service.kv_get(path) == {"wrapped": "vault:v1:abc", "note": "first"}
    approle_key_service.kv_put(path, {"note": "second"})
    assert approle_key_service.kv_get(path) == {"note": "second"}


def test_kv_values_must_be_strings(key_service: KeyService) -> None:
    with pytest.raises(InsituError) as err:
        key_service.kv_put("insitu/tests/x", {"n": 1})  # type: ignore[dict-item]
    assert err.value.code is ErrorCode.INVALID_ARGUMENT


def test_approle_kv_outside_insitu_is_denied(
    approle_key_service: KeyService, key_service: KeyService
) -> None:
    path = f"other/{uuid.uuid4().hex}"
    key_service.kv_put(path, {"secret": "root-only"})
    with pytest.raises(InsituError) as err:
        approle_key_service.kv_get(path)
    assert err.value.code is ErrorCode.PERMISSION_DENIED
    with pytest.raises(InsituError) as err:
        approle_key_service.kv_put(path, {"a": "b"})
    assert err.value.code is ErrorCode.PERMISSION_DENIED
    assert key_service.kv_get(path) == {"secret": "root-only"}


def test_approle_token_is_confined_to_its_policy(
    dev_vault: DevVault, approle_credentials_pair: tuple[str, str]
) -> None:
    role_id, secret_id = approle_credentials_pair
    client = hvac.Client(url=dev_vault.address, timeout=10)
    client.auth.approle.login(role_id=role_id, secret_id=secret_id)
    assert client.is_authenticated()
    with pytest.raises(hvac.exceptions.Forbidden):
        client.sys.enable_secrets_engine("kv", path=f"rogue-{uuid.uuid4().hex[:8]}")
    with pytest.raises(hvac.exceptions.Forbidden):
        client.sys.create_or_update_policy("rogue", 'path "*" { capabilities = ["sudo"] }')
    with pytest.raises(hvac.exceptions.Forbidden):
        client.write_data("pki/root/sign-intermediate", data={"csr": "x"})
    with pytest.raises(hvac.exceptions.Forbidden):
        client.write_data("transit/keys/audit-signing/config", data={"exportable": True})
    with pytest.raises(hvac.exceptions.Forbidden):
        client.write_data("pki_int/roles/site", data={"allow_any_name": True})


def test_approle_can_do_its_job(approle_key_service: KeyService, trust_domain: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    issued = approle_key_service.sign_csr(
        "site",
        csr.public_bytes(serialization.Encoding.PEM).decode(),
        uri_sans=[f"spiffe://{trust_domain}/site/approle"],
        ttl_seconds=600,
    )
    assert issued.serial > 0
    assert "BEGIN CERTIFICATE" in approle_key_service.ca_bundle_pem()
    assert approle_key_service.key_version("audit-signing") >= 1


def test_bad_approle_credentials_are_refused(
    dev_vault: DevVault, approle_credentials_pair: tuple[str, str]
) -> None:
    role_id, _ = approle_credentials_pair
    wrong = f"wrong-{uuid.uuid4()}"
    with pytest.raises(InsituError) as err:
        KeyService.from_approle(dev_vault.address, role_id, wrong)
    assert err.value.code is ErrorCode.PERMISSION_DENIED
    assert wrong not in str(err.value) and role_id not in str(err.value)


def test_relogin_after_token_revocation(
    dev_vault: DevVault, vault_client: hvac.Client, approle_credentials_pair: tuple[str, str]
) -> None:
    role_id, secret_id = approle_credentials_pair
    service = KeyService.from_approle(dev_vault.address, role_id, secret_id)
    first_token = service._vault.client.token
    vault_client.auth.token.revoke(first_token)
    # The first call meets a 403 for the dead token, logs in again, and succeeds.
    assert service.key_version("data-wrapping") >= 1
    assert service._vault.client.token != first_token


def test_root_token_kv_and_errors_never_echo_tokens(dev_vault: DevVault) -> None:
    bogus = KeyService.from_token(dev_vault.address, "bogus-token-value-123")
    with pytest.raises(InsituError) as err:
        bogus.kv_get("insitu/x")
    assert err.value.code is ErrorCode.PERMISSION_DENIED
    assert "bogus-token-value-123" not in str(err.value)
