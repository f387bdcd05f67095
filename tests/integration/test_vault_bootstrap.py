"""bootstrap_federation: idempotent, and it configures what the rest of insitu relies on."""

from __future__ import annotations

import hvac
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from insitu.errors import ErrorCode, InsituError
from insitu.keys import DevVault, FederationPki, bootstrap_federation, coordinator_policy_hcl
from insitu.keys.bootstrap import TRANSIT_KEYS


def test_second_bootstrap_changes_nothing(
    vault_client: hvac.Client, federation: FederationPki, trust_domain: str
) -> None:
    again = bootstrap_federation(vault_client, trust_domain)
    assert again == federation


def test_ca_hierarchy(federation: FederationPki, trust_domain: str) -> None:
    root = x509.load_pem_x509_certificate(federation.root_ca_pem.encode())
    inter = x509.load_pem_x509_certificate(federation.intermediate_pem.encode())
    assert root.subject.rfc4514_string() == f"CN=insitu {trust_domain} root CA"
    assert inter.issuer == root.subject
    inter.verify_directly_issued_by(root)
    for cert in (root, inter):
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert federation.chain_pem.count("BEGIN CERTIFICATE") == 2


def test_roles_and_engines(vault_client: hvac.Client, federation: FederationPki) -> None:
    td = federation.trust_domain
    site = vault_client.read("pki_int/roles/site")["data"]
    assert site["allowed_domains"] == [f"site.{td}"] and site["allow_subdomains"]
    assert site["allowed_uri_sans"] == [f"spiffe://{td}/site/*"]
    assert not site["allow_ip_sans"] and not site["no_store"]
    user = vault_client.read("pki_int/roles/user")["data"]
    assert not user["server_flag"] and not user["allow_any_name"] and not user["allowed_domains"]
    service = vault_client.read("pki_int/roles/service")["data"]
    assert service["allow_ip_sans"] and service["allow_localhost"]
    for name, key_type in TRANSIT_KEYS.items():
        key = vault_client.read(f"transit/keys/{name}")["data"]
        assert key["type"] == key_type and not key["exportable"]
    mounts = vault_client.sys.list_mounted_secrets_engines()["data"]
    assert mounts["kv/"]["options"]["version"] == "2"
    policy = vault_client.sys.read_policy("insitu-coordinator")["data"]["rules"]
    assert policy == coordinator_policy_hcl()
    crl = vault_client.read("pki_int/config/crl")["data"]
    assert crl["expiry"] == "72h" and not crl["auto_rebuild"]


def test_wrong_existing_key_type_is_reported() -> None:
    with DevVault() as vault:
        client = hvac.Client(url=vault.address, token=vault.root_token, timeout=10)
        client.sys.enable_secrets_engine("transit", path="transit")
        client.write_data("transit/keys/pseudonym", data={"type": "ed25519"})
        with pytest.raises(InsituError) as err:
            bootstrap_federation(client, "fresh.insitu")
        assert err.value.code is ErrorCode.CONFIG
        assert "pseudonym" in err.value.detail


def test_bad_trust_domain_is_refused(vault_client: hvac.Client) -> None:
    with pytest.raises(InsituError) as err:
        bootstrap_federation(vault_client, "Not A Domain")
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
