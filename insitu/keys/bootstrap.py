"""Bring a Vault/OpenBao server to the state insitu expects; safe to run again and again.

One federation is: a root CA (mount ``pki``), an issuing intermediate (mount ``pki_int``)
with roles ``site``, ``user`` and ``service``, transit keys for signing and envelope
encryption, KV v2 at ``kv``, and an AppRole ``coordinator`` bound to a least-privilege
policy. Existing pieces are left as they are, so a second run changes nothing that
matters (roles and the policy are rewritten to their declared form).

Example::

    pki = bootstrap_federation(root_client, "demo.insitu")
    role_id, secret_id = approle_credentials(root_client)
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from typing import Any

import hvac

from insitu.errors import ErrorCode, InsituError
from insitu.identity.spiffe import validate_trust_domain
from insitu.keys._vault import VaultSession

__all__ = [
    "COORDINATOR_POLICY",
    "PKI_INT_MOUNT",
    "PKI_ROOT_MOUNT",
    "TRANSIT_KEYS",
    "FederationPki",
    "approle_credentials",
    "bootstrap_federation",
    "coordinator_policy_hcl",
]

PKI_ROOT_MOUNT = "pki"
PKI_INT_MOUNT = "pki_int"
TRANSIT_MOUNT = "transit"
KV_MOUNT = "kv"
APPROLE_MOUNT = "approle"
COORDINATOR_POLICY = "insitu-coordinator"
COORDINATOR_ROLE = "coordinator"

# name -> transit key type. Ed25519 because signatures must verify offline with plain
# `cryptography`; AES-GCM for wrapping data keys.
TRANSIT_KEYS: dict[str, str] = {
    "audit-signing": "ed25519",
    "model-signing": "ed25519",
    "data-wrapping": "aes256-gcm96",
    "pseudonym": "aes256-gcm96",
}

_CRL_EXPIRY = "72h"
_ROLE_MAX_TTL = "720h"


@dataclass(frozen=True)
class FederationPki:
    """The trust material of a federation: the root (trust anchor) and the issuing CA."""

    trust_domain: str
    root_ca_pem: str
    intermediate_pem: str

    @property
    def chain_pem(self) -> str:
        """Intermediate then root: what a verifier needs beyond a leaf."""
        return self.intermediate_pem.rstrip("\n") + "\n" + self.root_ca_pem.rstrip("\n") + "\n"


def coordinator_policy_hcl() -> str:
    """The HCL text of the ``insitu-coordinator`` policy (shipped as package data)."""
    ref = importlib.resources.files("insitu.keys").joinpath("policies/insitu-coordinator.hcl")
    return ref.read_text(encoding="utf-8")


def bootstrap_federation(
    client: hvac.Client,
    trust_domain: str,
    *,
    max_ttl: str = "8760h",
    secret_id_ttl: str = "720h",  # noqa: S107  (a duration, not a secret)
) -> FederationPki:
    """Configure PKI, transit, KV and AppRole for ``trust_domain``; idempotent.

    ``client`` must hold a token allowed to mount engines and write policies (root in dev).
    ``max_ttl`` bounds the CA lifetimes (Go duration); ``secret_id_ttl`` bounds how long a
    coordinator secret id may be used to log in again.
    """
    td = validate_trust_domain(trust_domain)
    vault = VaultSession(client)
    _ensure_mounts(vault, max_ttl)
    _ensure_root_ca(vault, td, max_ttl)
    _ensure_intermediate(vault, td, max_ttl)
    _write_roles(vault, td)
    _ensure_transit_keys(vault)
    _ensure_approle(vault, secret_id_ttl)
    return FederationPki(
        trust_domain=td,
        root_ca_pem=_ca_pem(vault, PKI_ROOT_MOUNT),
        intermediate_pem=_ca_pem(vault, PKI_INT_MOUNT),
    )


def approle_credentials(client: hvac.Client, role: str = COORDINATOR_ROLE) -> tuple[str, str]:
    """``(role_id, secret_id)`` for AppRole ``role``; every call mints a fresh secret id."""
    vault = VaultSession(client)
    base = f"auth/{APPROLE_MOUNT}/role/{role}"
    reply = vault.read(f"read role id of AppRole {role}", f"{base}/role-id")
    if reply is None:
        raise InsituError(ErrorCode.NOT_FOUND, f"AppRole role {role!r} does not exist")
    role_id = _data(reply)
    secret = _data(vault.write(f"mint secret id for AppRole {role}", f"{base}/secret-id"))
    try:
        return str(role_id["role_id"]), str(secret["secret_id"])
    except KeyError:
        raise InsituError(ErrorCode.INTERNAL, "AppRole reply lacks role_id/secret_id") from None


def _ensure_mounts(vault: VaultSession, max_ttl: str) -> None:
    mounts = _data(vault.read("list secrets engines", "sys/mounts"))
    wanted: list[tuple[str, str, dict[str, Any]]] = [
        (PKI_ROOT_MOUNT, "pki", {}),
        (PKI_INT_MOUNT, "pki", {}),
        (TRANSIT_MOUNT, "transit", {}),
        (KV_MOUNT, "kv", {"version": "2"}),
    ]
    for path, kind, options in wanted:
        existing = mounts.get(f"{path}/")
        if existing is None:
            vault.write(
                f"enable {kind} at {path}/",
                f"sys/mounts/{path}",
                type=kind,
                options=options,
                config={"max_lease_ttl": max_ttl},
            )
        elif existing.get("type") != kind:
            raise InsituError(
                ErrorCode.CONFIG,
                f"mount {path}/ exists with type {existing.get('type')!r}, expected {kind!r}",
            )
    for path in (PKI_ROOT_MOUNT, PKI_INT_MOUNT):
        vault.write(f"tune {path}/", f"sys/mounts/{path}/tune", max_lease_ttl=max_ttl)
        vault.write(
            f"configure URLs of {path}/",
            f"{path}/config/urls",
            issuing_certificates=[f"{vault.address}/v1/{path}/ca"],
            crl_distribution_points=[f"{vault.address}/v1/{path}/crl"],
        )
        # Auto-rebuild off: Vault then rebuilds the CRL on every revocation, which the
        # per-call revocation check relies on. KeyService re-signs an expired CRL.
        vault.write(
            f"configure CRL of {path}/",
            f"{path}/config/crl",
            expiry=_CRL_EXPIRY,
            auto_rebuild=False,
        )


def _has_default_issuer(vault: VaultSession, mount: str) -> bool:
    cfg = vault.read(f"read issuers config of {mount}/", f"{mount}/config/issuers")
    return bool(cfg and cfg.get("data", {}).get("default"))


def _ensure_root_ca(vault: VaultSession, td: str, max_ttl: str) -> None:
    if not _has_default_issuer(vault, PKI_ROOT_MOUNT):
        vault.write(
            "generate root CA",
            f"{PKI_ROOT_MOUNT}/root/generate/internal",
            common_name=f"insitu {td} root CA",
            key_type="ec",
            key_bits=384,
            ttl=max_ttl,
            exclude_cn_from_sans=True,
        )
    # Re-signing the intermediate later must not fail near the root's end of life.
    vault.write(
        "set root issuer expiry behaviour",
        f"{PKI_ROOT_MOUNT}/issuer/default",
        leaf_not_after_behavior="truncate",
    )


def _ensure_intermediate(vault: VaultSession, td: str, max_ttl: str) -> None:
    if _has_default_issuer(vault, PKI_INT_MOUNT):
        return
    common_name = f"insitu {td} intermediate CA"
    csr = _data(
        vault.write(
            "generate intermediate CSR",
            f"{PKI_INT_MOUNT}/intermediate/generate/internal",
            common_name=common_name,
            key_type="ec",
            key_bits=256,
            exclude_cn_from_sans=True,
        )
    )["csr"]
    signed = _data(
        vault.write(
            "sign intermediate with root",
            f"{PKI_ROOT_MOUNT}/root/sign-intermediate",
            csr=csr,
            common_name=common_name,
            ttl=max_ttl,
            use_csr_values=False,
            exclude_cn_from_sans=True,
        )
    )["certificate"]
    # Only the intermediate is imported: pki_int must hold no root, so its ca_chain (and
    # so IssuedCert.chain_pem) stops below the trust anchor.
    vault.write(
        "install signed intermediate",
        f"{PKI_INT_MOUNT}/intermediate/set-signed",
        certificate=signed,
    )


def _write_roles(vault: VaultSession, td: str) -> None:
    common: dict[str, Any] = {
        "key_type": "ec",
        "key_bits": 256,
        "require_cn": False,
        "use_csr_common_name": False,
        "use_csr_sans": False,
        "enforce_hostnames": True,
        "allow_bare_domains": False,
        "allow_glob_domains": False,
        "allow_any_name": False,
        "allow_wildcard_certificates": False,
        "no_store": False,  # revocation needs the serials
        "generate_lease": False,
        "max_ttl": _ROLE_MAX_TTL,
        # Small clock-skew allowance: short test TTLs keep their 2/3 renewal point.
        "not_before_duration": "5s",
    }
    roles: dict[str, dict[str, Any]] = {
        "site": {
            "client_flag": True,
            "server_flag": True,
            "allowed_domains": [f"site.{td}"],
            "allow_subdomains": True,
            "allow_localhost": False,
            "allow_ip_sans": False,
            "allowed_uri_sans": [f"spiffe://{td}/site/*"],
        },
        "user": {
            "client_flag": True,
            "server_flag": False,
            "allowed_domains": [],
            "allow_subdomains": False,
            "allow_localhost": False,
            "allow_ip_sans": False,
            "allowed_uri_sans": [f"spiffe://{td}/user/*"],
        },
        "service": {
            "client_flag": True,
            "server_flag": True,
            "allowed_domains": [td],
            "allow_subdomains": True,
            "allow_localhost": True,
            "allow_ip_sans": True,
            "allowed_uri_sans": [f"spiffe://{td}/service/*"],
        },
    }
    for name, specific in roles.items():
        vault.write(f"write PKI role {name}", f"{PKI_INT_MOUNT}/roles/{name}", **common, **specific)


def _ensure_transit_keys(vault: VaultSession) -> None:
    for name, key_type in TRANSIT_KEYS.items():
        existing = vault.read(f"read transit key {name}", f"{TRANSIT_MOUNT}/keys/{name}")
        if existing is None:
            vault.write(f"create transit key {name}", f"{TRANSIT_MOUNT}/keys/{name}", type=key_type)
            continue
        # Vault silently ignores a create for an existing name, so a wrong type would
        # otherwise go unnoticed until the first sign or decrypt.
        actual = existing.get("data", {}).get("type")
        if actual != key_type:
            raise InsituError(
                ErrorCode.CONFIG,
                f"transit key {name} exists with type {actual!r}, expected {key_type!r}",
            )


def _ensure_approle(vault: VaultSession, secret_id_ttl: str) -> None:
    auths = _data(vault.read("list auth methods", "sys/auth"))
    if f"{APPROLE_MOUNT}/" not in auths:
        vault.write("enable AppRole auth", f"sys/auth/{APPROLE_MOUNT}", type="approle")
    vault.write(
        f"write policy {COORDINATOR_POLICY}",
        f"sys/policies/acl/{COORDINATOR_POLICY}",
        policy=coordinator_policy_hcl(),
    )
    vault.write(
        f"write AppRole {COORDINATOR_ROLE}",
        f"auth/{APPROLE_MOUNT}/role/{COORDINATOR_ROLE}",
        token_policies=[COORDINATOR_POLICY],
        token_ttl="1h",  # noqa: S106  (a duration, not a secret)
        token_max_ttl="4h",  # noqa: S106
        secret_id_ttl=secret_id_ttl,
        bind_secret_id=True,
    )


def _ca_pem(vault: VaultSession, mount: str) -> str:
    pem = _data(vault.read(f"read CA certificate of {mount}/", f"{mount}/cert/ca")).get(
        "certificate", ""
    )
    if not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem:
        raise InsituError(ErrorCode.INTERNAL, f"{mount}/ has no CA certificate")
    return pem.strip() + "\n"


def _data(reply: dict[str, Any] | None) -> dict[str, Any]:
    """The ``data`` member of a Vault reply (sys/ endpoints also answer at top level)."""
    if reply is None:
        return {}
    data = reply.get("data")
    return data if isinstance(data, dict) else reply
