"""The first operator identity: a federation_admin user certificate issued straight from
Vault. It needs Vault credentials (not a join token). The grant is recorded in Vault KV,
where the coordinator reads it, and the coordinator audits its first use."""

from __future__ import annotations

import time
from pathlib import Path

from insitu.identity.credentials import Credentials, build_csr, generate_private_key, key_to_pem
from insitu.identity.spiffe import SpiffeId, validate_name
from insitu.keys import KeyService

__all__ = ["BOOTSTRAP_KV_PREFIX", "bootstrap_admin"]

BOOTSTRAP_KV_PREFIX = "insitu/bootstrap-admins/"


def bootstrap_admin(
    keys: KeyService, trust_domain: str, user: str, out: Path, ttl_seconds: int = 8 * 3600
) -> Credentials:
    """Issue ``spiffe://<td>/user/<user>`` to ``out`` (key 0600) and grant federation_admin."""
    validate_name(user, "user")
    sid = SpiffeId.user(trust_domain, user)
    key = generate_private_key()
    cert = keys.sign_csr("user", build_csr(key, sid), uri_sans=[sid.uri], ttl_seconds=ttl_seconds)
    creds = Credentials(key_to_pem(key), cert.cert_pem, cert.chain_pem, keys.ca_bundle_pem())
    creds.save(out)
    keys.kv_put(
        BOOTSTRAP_KV_PREFIX + user,
        {
            "spiffe_id": sid.uri,
            "role": "federation_admin",
            "cert_serial": f"{cert.serial:x}",
            "issued_at": str(int(time.time())),
        },
    )
    return creds
