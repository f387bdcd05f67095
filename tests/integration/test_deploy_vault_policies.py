"""deploy/vault/*.hcl against the real OpenBao: each policy does its job, and nothing else.

Each policy is written to the session's server under a unique name, and a token is made
that holds only it. "Allowed" tests use a token without even the ``default`` policy (the
policy alone must suffice); "refused" tests use a token that also has ``default``, as real
login tokens do (the refusal must hold for them too).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from insitu.identity.credentials import build_csr, generate_private_key
from insitu.identity.spiffe import SpiffeId
from insitu.keys import DevVault, FederationPki, KeyService

REPO = Path(__file__).resolve().parents[2]
POLICY_DIR = REPO / "deploy" / "vault"
ROLES = ("coordinator", "site", "auditor")


@dataclass(frozen=True)
class RoleTokens:
    only: hvac.Client  # holds exactly the policy
    real: hvac.Client  # the policy plus ``default``, like a login token


def _token_client(root: hvac.Client, address: str, policy: str, *, default: bool) -> hvac.Client:
    reply = root.auth.token.create(
        policies=[policy], no_default_policy=not default, ttl="20m", renewable=False
    )
    return hvac.Client(url=address, token=reply["auth"]["client_token"], timeout=10)


@pytest.fixture(scope="module")
def tokens(
    dev_vault: DevVault, vault_client: hvac.Client, federation: FederationPki
) -> Iterator[dict[str, RoleTokens]]:
    suffix = uuid.uuid4().hex[:8]
    out: dict[str, RoleTokens] = {}
    for role in ROLES:
        name = f"deploy-test-{role}-{suffix}"
        text = (POLICY_DIR / f"insitu-{role}.hcl").read_text()
        vault_client.sys.create_or_update_acl_policy(name=name, policy=text)
        out[role] = RoleTokens(
            only=_token_client(vault_client, dev_vault.address, name, default=False),
            real=_token_client(vault_client, dev_vault.address, name, default=True),
        )
    yield out
    for role in ROLES:
        vault_client.sys.delete_acl_policy(f"deploy-test-{role}-{suffix}")


def _keys(client: hvac.Client) -> KeyService:
    return KeyService(client)


def test_deploy_coordinator_policy_is_the_shipped_one() -> None:
    shipped = REPO / "insitu" / "keys" / "policies" / "insitu-coordinator.hcl"
    assert (POLICY_DIR / "insitu-coordinator.hcl").read_bytes() == shipped.read_bytes()


# ------------------------------------------------------------------ each role's job


def test_coordinator_policy_does_the_coordinators_job(
    tokens: dict[str, RoleTokens], trust_domain: str
) -> None:
    keys = _keys(tokens["coordinator"].only)
    # PKI: sign CSRs for each identity kind (private keys stay with their owners) ...
    issued = {}
    for kind, sid in (
        ("site", SpiffeId.site(trust_domain, f"h-{uuid.uuid4().hex[:8]}")),
        ("user", SpiffeId.user(trust_domain, f"u-{uuid.uuid4().hex[:8]}")),
        ("service", SpiffeId.service(trust_domain, "coordinator")),
    ):
        csr = build_csr(generate_private_key(), sid)
        issued[kind] = keys.sign_csr(kind, csr, uri_sans=[sid.uri], ttl_seconds=600)
    # ... revoke one, and see the revocation on the verified CRL.
    serial = x509.load_pem_x509_certificate(issued["site"].cert_pem.encode()).serial_number
    keys.revoke(serial)
    assert serial in keys.revoked_serials()
    assert "BEGIN CERTIFICATE" in keys.ca_bundle_pem()
    # Transit: sign checkpoints and models; envelope encryption with rotation by rewrap.
    for signing_key in ("audit-signing", "model-signing"):
        sig = keys.sign(signing_key, b"checkpoint body")
        Ed25519PublicKey.from_public_bytes(keys.public_key(signing_key)).verify(
            sig, b"checkpoint body"
        )
    dk = keys.generate_data_key("data-wrapping")
    assert keys.unwrap("data-wrapping", keys.rewrap("data-wrapping", dk.wrapped)) == dk.plaintext
    # KV: its own subtree.
    path = f"insitu/deploy-test/{uuid.uuid4().hex}"
    keys.kv_put(path, {"wrapped": dk.wrapped})
    assert keys.kv_get(path) == {"wrapped": dk.wrapped}


def test_site_policy_reads_public_keys_and_gets_the_pseudonym_key(
    tokens: dict[str, RoleTokens], key_service: KeyService
) -> None:
    keys = _keys(tokens["site"].only)
    for signing_key in ("audit-signing", "model-signing"):
        sig = key_service.sign(signing_key, b"model digest")
        Ed25519PublicKey.from_public_bytes(keys.public_key(signing_key)).verify(
            sig, b"model digest"
        )
    dk = keys.generate_data_key("pseudonym")
    assert keys.unwrap("pseudonym", dk.wrapped) == dk.plaintext
    # The CA certificate is public (Vault serves it without a token): enrolment needs it.
    assert "BEGIN CERTIFICATE" in keys.ca_bundle_pem()


def test_auditor_policy_reads_the_audit_signing_public_key(
    tokens: dict[str, RoleTokens], key_service: KeyService
) -> None:
    sig = key_service.sign("audit-signing", b"tree size 7")
    pub = _keys(tokens["auditor"].only).public_key("audit-signing")
    Ed25519PublicKey.from_public_bytes(pub).verify(sig, b"tree size 7")


# ------------------------------------------------------------------ out-of-role calls

# (role, method, path, body, why it must be refused)
_REFUSED: list[tuple[str, str, str, dict[str, Any] | None, str]] = [
    ("coordinator", "POST", "sys/policies/acl/rogue", {"policy": 'path "*" {}'}, "write policy"),
    ("coordinator", "POST", "sys/policy/rogue", {"policy": 'path "*" {}'}, "write policy (old)"),
    ("coordinator", "GET", "sys/raw/core/mounts", None, "read raw storage"),
    ("coordinator", "POST", "sys/mounts/rogue", {"type": "kv"}, "create a mount"),
    ("coordinator", "POST", "sys/auth/rogue", {"type": "userpass"}, "enable an auth method"),
    ("coordinator", "DELETE", "sys/audit/file", None, "disable Vault's audit device"),
    ("coordinator", "POST", "pki/root/sign-intermediate", {"csr": "x"}, "use the root CA"),
    ("coordinator", "POST", "pki/root/generate/internal", {"common_name": "x"}, "new root"),
    ("coordinator", "POST", "pki_int/roles/site", {"allow_any_name": True}, "widen a role"),
    (
        "coordinator",
        "POST",
        "transit/keys/audit-signing/config",
        {"exportable": True},
        "make a signing key exportable",
    ),
    ("coordinator", "GET", "transit/export/signing-key/audit-signing", None, "export a key"),
    ("coordinator", "POST", "auth/approle/role/coordinator/secret-id", {}, "mint own creds"),
    ("coordinator", "GET", "kv/data/other/secret", None, "KV outside insitu/"),
    ("coordinator", "DELETE", "kv/metadata/insitu/anything", None, "destroy KV history"),
    ("site", "POST", "pki_int/sign/site", {"csr": "x"}, "sign certificates"),
    ("site", "POST", "pki_int/issue/site", {"common_name": "x"}, "issue certificates"),
    ("site", "POST", "pki_int/revoke", {"serial_number": "00"}, "revoke certificates"),
    ("site", "POST", "transit/sign/audit-signing", {"input": "eA=="}, "sign checkpoints"),
    ("site", "POST", "transit/sign/model-signing", {"input": "eA=="}, "sign models"),
    ("site", "POST", "transit/datakey/plaintext/data-wrapping", {}, "model/feature keys"),
    ("site", "POST", "transit/decrypt/data-wrapping", {"ciphertext": "vault:v1:x"}, "decrypt"),
    ("site", "POST", "transit/keys/pseudonym/rotate", {}, "rotate the pseudonym key"),
    ("site", "GET", "transit/export/encryption-key/pseudonym", None, "export a key"),
    ("site", "GET", "kv/data/insitu/coordinator/approle", None, "read the coordinator's creds"),
    ("site", "GET", "sys/mounts", None, "list mounts"),
    ("site", "GET", "sys/policies/acl/insitu-coordinator", None, "read policies"),
    ("site", "GET", "auth/approle/role/coordinator/role-id", None, "read AppRole ids"),
    ("auditor", "POST", "transit/sign/audit-signing", {"input": "eA=="}, "sign checkpoints"),
    ("auditor", "GET", "transit/keys/model-signing", None, "keys beyond audit-signing"),
    ("auditor", "POST", "transit/decrypt/data-wrapping", {"ciphertext": "vault:v1:x"}, "decrypt"),
    ("auditor", "POST", "transit/datakey/plaintext/pseudonym", {}, "pseudonym key"),
    ("auditor", "GET", "kv/data/insitu/anything", None, "read KV"),
    ("auditor", "POST", "pki_int/sign/user", {"csr": "x"}, "sign certificates"),
    ("auditor", "POST", "pki_int/revoke", {"serial_number": "00"}, "revoke certificates"),
    ("auditor", "GET", "sys/mounts", None, "list mounts"),
]


@pytest.mark.parametrize(
    ("role", "method", "path", "body", "why"),
    _REFUSED,
    ids=[f"{r[0]}-{r[4].replace(' ', '_')}" for r in _REFUSED],
)
def test_out_of_role_call_is_refused(
    tokens: dict[str, RoleTokens],
    role: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    why: str,
) -> None:
    client = tokens[role].real
    kwargs: dict[str, Any] = {} if body is None else {"json": body}
    with pytest.raises(hvac.exceptions.Forbidden):
        client.adapter.request(method, f"/v1/{path}", **kwargs)


def test_refusals_are_not_mere_404s(vault_client: hvac.Client) -> None:
    """The read-only refused paths exist: the root token reads them (so a typo in the
    table above, which Vault would also answer with 403 for a non-root token, shows)."""
    checked = 0
    for _role, method, path, _body, _why in _REFUSED:
        if method != "GET" or path.startswith(("sys/raw", "transit/export", "kv/")):
            continue  # raw storage is off; keys are not exportable; KV paths are free names
        vault_client.adapter.request(method, f"/v1/{path}")
        checked += 1
    assert checked >= 4
