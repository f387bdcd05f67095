"""Signed model artifact metadata (``artifact.json``) and the exact bytes that are signed.

The coordinator signs every model version with the Vault transit Ed25519 key
``model-signing``; a site verifies that signature before anything reaches its serving
path. The signed message is the RFC 8785 canonical JSON of::

    {"type": "insitu.model-artifact.v1", "model": <name>, "version": <int>,
     "sha256": <lowercase hex of model.onnx>, "inputs": [<spec>...], "outputs": [<spec>...],
     "key_version": <int>}

where each ``<spec>`` is ``{"name", "dtype", "shape"}`` (``-1`` for free dims). So the
signature binds the ONNX bytes, the model name and version, the declared I/O signature
and the signing key version: none can be swapped without breaking it. Transit signs the
raw message (``prehashed=false``); the 64-byte Ed25519 signature after transit's
``vault:vN:`` prefix is stored base64 in ``signature``.

The coordinator must build the message the same way; this module depends only on
``insitu`` and ``rfc8785`` so it can move to ``insitu/`` to be shared.

Example::

    meta = ArtifactMetadata.unsigned("mlp", 3, onnx_bytes, inputs, outputs, key_version=1)
    meta = meta.with_signature(transit_sign(meta.signing_message()))
    ok = ed25519_verifier(public_key)(meta.signing_message(), meta.signature)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from insitu.errors import ErrorCode, InsituError
from insitu.model_artifact import ARTIFACT_FORMAT, MESSAGE_TYPE
from insitu.model_artifact import signing_message as shared_signing_message
from site_node.serving.config import TensorSpec, validate_model_name

__all__ = [
    "MESSAGE_TYPE",
    "ArtifactMetadata",
    "Verifier",
    "ed25519_verifier",
    "signing_message",
]

FORMAT = ARTIFACT_FORMAT
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

Verifier = Callable[[bytes, bytes], bool]
"""``verify(message, signature) -> bool``: True only for a valid signature by a trusted key."""


def signing_message(
    model: str,
    version: int,
    sha256_hex: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    key_version: int,
) -> bytes:
    """The canonical bytes a model artifact's signature covers (see the module doc);
    built by the one function the coordinator signs with."""
    return shared_signing_message(
        model, version, sha256_hex, [s.to_json() for s in inputs],
        [s.to_json() for s in outputs], key_version,
    )


def ed25519_verifier(public_key: bytes) -> Verifier:
    """A verifier for one raw 32-byte Ed25519 public key (as transit ``read_key`` gives)."""
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise InsituError(
            ErrorCode.CONFIG, "model-signing key is not a 32-byte Ed25519 key"
        ) from None

    def verify(message: bytes, signature: bytes) -> bool:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    return verify


@dataclass(frozen=True)
class ArtifactMetadata:
    """What ``artifact.json`` says about one model version. Trust it only after
    :meth:`verify` succeeded (the repository does that before installing)."""

    model: str
    version: int
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    key_version: int
    signature: bytes = b""

    @classmethod
    def unsigned(
        cls,
        model: str,
        version: int,
        onnx_bytes: bytes,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        key_version: int,
    ) -> ArtifactMetadata:
        """Metadata for ``onnx_bytes``, ready to be signed (the publisher's side)."""
        return cls(
            model,
            version,
            hashlib.sha256(onnx_bytes).hexdigest(),
            tuple(inputs),
            tuple(outputs),
            key_version,
        )

    def with_signature(self, signature: bytes) -> ArtifactMetadata:
        return replace(self, signature=signature)

    def signing_message(self) -> bytes:
        return signing_message(
            self.model, self.version, self.sha256, self.inputs, self.outputs, self.key_version
        )

    def verify(self, verify: Verifier) -> None:
        """Raise INTEGRITY unless the signature is valid for this metadata."""
        try:
            ok = len(self.signature) == 64 and verify(self.signing_message(), self.signature)
        except Exception:
            ok = False  # a verifier that throws is a failed verification, never a pass
        if not ok:
            raise InsituError(
                ErrorCode.INTEGRITY,
                f"artifact.json: signature of {self.model} v{self.version} "
                f"(key version {self.key_version}) does not verify",
            )

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "model": self.model,
            "version": self.version,
            "sha256": self.sha256,
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "key_version": self.key_version,
            "signature": base64.b64encode(self.signature).decode(),
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json_unverified(cls, data: bytes | str | dict[str, Any]) -> ArtifactMetadata:
        """Parse strictly; the result is *not yet verified* (call :meth:`verify`)."""
        if isinstance(data, dict):
            doc: object = data
        else:
            try:
                doc = json.loads(data)
            except (ValueError, UnicodeDecodeError):
                raise _bad("artifact.json", "not valid JSON") from None
        keys = {"format", "model", "version", "sha256", "inputs", "outputs", "key_version",
                "signature"}  # fmt: skip
        if not isinstance(doc, dict) or set(doc) != keys:
            raise _bad("artifact.json", f"must have exactly the keys {sorted(keys)}")
        if doc["format"] != FORMAT:
            raise _bad("artifact.json.format", f"must be {FORMAT}")
        try:
            validate_model_name(doc["model"])
        except InsituError:
            raise _bad("artifact.json.model", "not a valid model name") from None
        version, key_version = doc["version"], doc["key_version"]
        for field_name, v in (("version", version), ("key_version", key_version)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise _bad(f"artifact.json.{field_name}", "must be an integer >= 1")
        sha = doc["sha256"]
        if not isinstance(sha, str) or not _SHA256_HEX.fullmatch(sha):
            raise _bad("artifact.json.sha256", "must be 64 lowercase hex digits")
        specs: dict[str, tuple[TensorSpec, ...]] = {}
        for part in ("inputs", "outputs"):
            raw = doc[part]
            if not isinstance(raw, list) or not raw:
                raise _bad(f"artifact.json.{part}", "must be a non-empty list")
            try:
                specs[part] = tuple(
                    TensorSpec.parse(s, f"artifact.json.{part}[{i}]") for i, s in enumerate(raw)
                )
            except InsituError as e:
                raise _bad(f"artifact.json.{part}", e.detail) from None
        sig = doc["signature"]
        try:
            signature = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
        except (binascii.Error, ValueError):
            signature = b""
        if len(signature) != 64:
            raise InsituError(
                ErrorCode.INTEGRITY, "artifact.json.signature: must be 64 bytes, base64"
            )
        return cls(
            doc["model"], version, sha, specs["inputs"], specs["outputs"], key_version, signature
        )


def _bad(where: str, what: str) -> InsituError:
    return InsituError(ErrorCode.INVALID_ARGUMENT, f"{where}: {what}")
