"""Shared fixtures: one real OpenBao dev server per test session, bootstrapped once.

Fixtures (all session-scoped, started lazily by the first test that asks):

- ``dev_vault``: a running :class:`insitu.keys.DevVault` (``.address``, ``.root_token``).
- ``vault_client``: an ``hvac.Client`` holding the root token (admin/bootstrap work).
- ``trust_domain``: ``"test.insitu"``.
- ``federation``: the :class:`insitu.keys.FederationPki` after ``bootstrap_federation``.
- ``key_service``: a :class:`insitu.keys.KeyService` on the root token.
- ``approle_credentials_pair``: ``(role_id, secret_id)`` of the ``coordinator`` AppRole.
- ``approle_key_service``: a KeyService logged in through that AppRole (the least-privilege
  identity the coordinator runs with).

State in Vault is shared by the whole session: tests must not assume an empty CRL, a
given transit key version, or unused KV paths (use unique names, e.g. ``uuid4().hex``).
"""

from __future__ import annotations

from collections.abc import Iterator

import hvac
import pytest

from insitu.keys import (
    DevVault,
    FederationPki,
    KeyService,
    approle_credentials,
    bootstrap_federation,
)


@pytest.fixture(scope="session")
def dev_vault() -> Iterator[DevVault]:
    vault = DevVault()
    vault.start()
    try:
        yield vault
    finally:
        vault.stop()


@pytest.fixture(scope="session")
def vault_client(dev_vault: DevVault) -> hvac.Client:
    return hvac.Client(url=dev_vault.address, token=dev_vault.root_token, timeout=10)


@pytest.fixture(scope="session")
def trust_domain() -> str:
    return "test.insitu"


@pytest.fixture(scope="session")
def federation(vault_client: hvac.Client, trust_domain: str) -> FederationPki:
    return bootstrap_federation(vault_client, trust_domain)


@pytest.fixture(scope="session")
def key_service(dev_vault: DevVault, federation: FederationPki) -> KeyService:
    return KeyService.from_token(dev_vault.address, dev_vault.root_token)


@pytest.fixture(scope="session")
def approle_credentials_pair(
    vault_client: hvac.Client, federation: FederationPki
) -> tuple[str, str]:
    return approle_credentials(vault_client)


@pytest.fixture(scope="session")
def approle_key_service(
    dev_vault: DevVault, approle_credentials_pair: tuple[str, str]
) -> KeyService:
    role_id, secret_id = approle_credentials_pair
    return KeyService.from_approle(dev_vault.address, role_id, secret_id)
