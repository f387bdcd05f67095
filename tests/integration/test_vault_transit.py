"""Transit through KeyService against a real OpenBao: Ed25519 signatures verified offline,
wrapped data keys, rotation with rewrap."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator

import hvac
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from insitu.errors import ErrorCode, InsituError
from insitu.keys import DevVault, FederationPki, KeyService

NOTE = b"test.insitu/audit\n42\nq2VhP2Rc3P0yLhE5zzl1m0cTtWmLXX3qvJgqfGvCw6s=\n"


@pytest.fixture
def scratch_key(
    vault_client: hvac.Client, federation: FederationPki
) -> Iterator[Callable[[str], str]]:
    """A transit key of this test's own, so rotations do not disturb shared keys."""
    names: list[str] = []

    def make(key_type: str) -> str:
        name = f"scratch-{uuid.uuid4().hex[:12]}"
        vault_client.write_data(f"transit/keys/{name}", data={"type": key_type})
        names.append(name)
        return name

    yield make
    for name in names:
        vault_client.write_data(f"transit/keys/{name}/config", data={"deletion_allowed": True})
        vault_client.delete(f"transit/keys/{name}")


def test_design_claims_hold_on_this_server(
    key_service: KeyService, vault_client: hvac.Client
) -> None:
    """DESIGN.md: the transit signature is `vault:v<N>:` + a plain 64-byte Ed25519
    signature over the raw body, and read_key gives the 32-byte public key."""
    reply = vault_client.write_data(
        "transit/sign/audit-signing", data={"input": base64.b64encode(NOTE).decode()}
    )
    prefix, version, b64 = reply["data"]["signature"].split(":")
    assert prefix == "vault" and version.startswith("v")
    raw_sig = base64.b64decode(b64)
    assert len(raw_sig) == 64
    key_info = vault_client.read("transit/keys/audit-signing")["data"]
    pub = base64.b64decode(key_info["keys"][version[1:]]["public_key"])
    assert len(pub) == 32
    Ed25519PublicKey.from_public_bytes(pub).verify(raw_sig, NOTE)  # raises if wrong
    assert key_service.public_keys("audit-signing")[int(version[1:])] == pub


@pytest.mark.parametrize("key", ["audit-signing", "model-signing"])
def test_sign_then_verify_offline(approle_key_service: KeyService, key: str) -> None:
    version, sig = approle_key_service.sign_with_version(key, NOTE)
    assert version >= 1 and len(sig) == 64
    pub = approle_key_service.public_key(key)
    Ed25519PublicKey.from_public_bytes(pub).verify(sig, NOTE)
    assert approle_key_service.verify(key, NOTE, sig)
    assert approle_key_service.verify(key, NOTE, sig, version=version)
    assert not approle_key_service.verify(key, NOTE + b"x", sig)
    tampered = bytes([sig[0] ^ 1]) + sig[1:]
    assert not approle_key_service.verify(key, NOTE, tampered)
    with pytest.raises(InvalidSignature):
        Ed25519PublicKey.from_public_bytes(pub).verify(tampered, NOTE)


def test_signature_of_one_key_does_not_verify_under_another(key_service: KeyService) -> None:
    sig = key_service.sign("audit-signing", NOTE)
    assert not key_service.verify("model-signing", NOTE, sig)


def test_vault_accepts_our_raw_signature(
    key_service: KeyService, vault_client: hvac.Client
) -> None:
    version, sig = key_service.sign_with_version("audit-signing", NOTE)
    reply = vault_client.write_data(
        "transit/verify/audit-signing",
        data={
            "input": base64.b64encode(NOTE).decode(),
            "signature": f"vault:v{version}:{base64.b64encode(sig).decode()}",
        },
    )
    assert reply["data"]["valid"] is True


def test_rotated_signing_key_keeps_old_signatures_valid(
    key_service: KeyService, dev_vault: DevVault, scratch_key: Callable[[str], str]
) -> None:
    name = scratch_key("ed25519")
    v1, sig1 = key_service.sign_with_version(name, NOTE)
    assert key_service.verify(name, NOTE, sig1)  # caches v1 only
    other = KeyService.from_token(dev_vault.address, dev_vault.root_token)
    other.rotate(name)
    v2, sig2 = key_service.sign_with_version(name, NOTE)
    assert (v1, v2) == (1, 2)
    # v2 is not in the cache yet: asking for it by version must refresh the cache.
    assert key_service.verify(name, NOTE, sig2, version=2)
    assert set(key_service.public_keys(name)) == {1, 2}
    assert key_service.verify(name, NOTE, sig1, version=1)
    assert not key_service.verify(name, NOTE, sig1, version=2)


def test_public_keys_of_an_aes_key_are_refused(key_service: KeyService) -> None:
    with pytest.raises(InsituError) as err:
        key_service.public_keys("data-wrapping")
    assert err.value.code is ErrorCode.INVALID_ARGUMENT


def test_data_key_wrap_unwrap(approle_key_service: KeyService) -> None:
    dk = approle_key_service.generate_data_key()
    assert len(dk.plaintext) == 32 and dk.wrapped.startswith("vault:v")
    assert approle_key_service.unwrap("data-wrapping", dk.wrapped) == dk.plaintext
    assert dk.plaintext.hex() not in repr(dk)
    again = approle_key_service.generate_data_key()
    assert again.plaintext != dk.plaintext and again.wrapped != dk.wrapped
    pseudonym = approle_key_service.generate_data_key("pseudonym")
    assert approle_key_service.unwrap("pseudonym", pseudonym.wrapped) == pseudonym.plaintext


def test_data_key_is_bound_to_its_wrapping_key(key_service: KeyService) -> None:
    dk = key_service.generate_data_key("data-wrapping")
    with pytest.raises(InsituError) as err:
        key_service.unwrap("pseudonym", dk.wrapped)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert dk.wrapped not in str(err.value)


def test_tampered_wrapped_key_is_refused(key_service: KeyService) -> None:
    dk = key_service.generate_data_key()
    head, body = dk.wrapped.rsplit(":", 1)
    raw = bytearray(base64.b64decode(body))
    raw[-1] ^= 1
    tampered = f"{head}:{base64.b64encode(bytes(raw)).decode()}"
    with pytest.raises(InsituError) as err:
        key_service.unwrap("data-wrapping", tampered)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert tampered not in str(err.value) and body not in str(err.value)


def test_rotate_and_rewrap_keep_old_data_readable(
    key_service: KeyService, scratch_key: Callable[[str], str]
) -> None:
    name = scratch_key("aes256-gcm96")
    dk = key_service.generate_data_key(name)
    assert key_service.key_version(name) == 1
    key_service.rotate(name)
    assert key_service.key_version(name) == 2
    assert key_service.unwrap(name, dk.wrapped) == dk.plaintext  # old wrap still opens
    rewrapped = key_service.rewrap(name, dk.wrapped)
    assert rewrapped.startswith("vault:v2:") and dk.wrapped.startswith("vault:v1:")
    assert key_service.unwrap(name, rewrapped) == dk.plaintext


def test_approle_cannot_rotate_signing_keys(approle_key_service: KeyService) -> None:
    with pytest.raises(InsituError) as err:
        approle_key_service.rotate("audit-signing")
    assert err.value.code is ErrorCode.PERMISSION_DENIED


def test_unknown_key_is_an_error(key_service: KeyService, dev_vault: DevVault) -> None:
    with pytest.raises(InsituError) as err:
        key_service.key_version("no-such-key")
    assert err.value.code is ErrorCode.NOT_FOUND
    assert dev_vault.root_token not in str(err.value)
