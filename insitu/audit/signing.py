"""A local Ed25519 signer for development, tests and offline tools.

Production signs checkpoints with the Vault transit key ``audit-signing`` through
``KeyService``; this exists so unit tests and the offline CLI can sign without Vault.
The private key file holds the base64 of the 32-byte seed; keep it mode 0600.

Example::

    signer = LocalSigner.generate()
    note = sign_checkpoint(cp, "insitu/dev", signer.sign, signer.public_key)
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from insitu.errors import ErrorCode, InsituError

__all__ = ["LocalSigner", "load_or_create_signer"]


class LocalSigner:
    """Holds an Ed25519 private key in memory; ``sign`` returns raw 64-byte signatures."""

    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> LocalSigner:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, path: Path) -> LocalSigner:
        try:
            seed = base64.b64decode(path.read_bytes().strip(), validate=True)
            return cls(Ed25519PrivateKey.from_private_bytes(seed))
        except (OSError, binascii.Error, ValueError):
            raise InsituError(
                ErrorCode.CONFIG, f"cannot read an Ed25519 seed from {path}"
            ) from None

    def save(self, path: Path) -> None:
        seed = self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64encode(seed) + b"\n")

    @property
    def public_key(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def public_key_b64(self) -> str:
        return base64.b64encode(self.public_key).decode()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return "LocalSigner(<private key redacted>)"


def load_or_create_signer(path: Path) -> LocalSigner:
    """The Ed25519 key at ``path``, generated on first use (mode 0600 from the start)."""
    if not path.exists():
        from insitu.identity.credentials import write_private_file

        seed = LocalSigner.generate()._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        write_private_file(path, base64.b64encode(seed) + b"\n")
    return LocalSigner.from_file(path)
