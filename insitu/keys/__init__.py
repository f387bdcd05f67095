"""Keys and certificates from Vault/OpenBao: the KeyService, bootstrap, and a dev server.

:class:`KeyService` is the only code in insitu that talks to Vault. PKI issues the SPIFFE
certificates of sites, users and services; transit signs audit checkpoints and models
(Ed25519, verifiable offline) and wraps per-object data keys; KV v2 keeps small secrets.

Example::

    import hvac
    from insitu.keys import DevVault, KeyService, approle_credentials, bootstrap_federation

    with DevVault() as vault:
        admin = hvac.Client(url=vault.address, token=vault.root_token)
        pki = bootstrap_federation(admin, "demo.insitu")
        role_id, secret_id = approle_credentials(admin)
        keys = KeyService.from_approle(vault.address, role_id, secret_id)
        version, sig = keys.sign_with_version("audit-signing", b"checkpoint body")
        assert keys.verify("audit-signing", b"checkpoint body", sig)
"""

from insitu.keys.bootstrap import (
    FederationPki,
    approle_credentials,
    bootstrap_federation,
    coordinator_policy_hcl,
)
from insitu.keys.devserver import DevVault, find_bao_binary, free_port
from insitu.keys.pki import IssuedCert, serial_from_vault, serial_to_vault
from insitu.keys.service import PKI_ROLES, DataKey, KeyService

__all__ = [
    "PKI_ROLES",
    "DataKey",
    "DevVault",
    "FederationPki",
    "IssuedCert",
    "KeyService",
    "approle_credentials",
    "bootstrap_federation",
    "coordinator_policy_hcl",
    "find_bao_binary",
    "free_port",
    "serial_from_vault",
    "serial_to_vault",
]
