"""The model registry: versioned, signed, envelope-encrypted model artifacts.

Each version stores the final global arrays (npz) and, where the app provides an ONNX
exporter, the ONNX graph for serving. A canonical JSON manifest (RFC 8785) names both by
SHA-256 plus the lineage (job, code hash, rounds, sites, dataset names + fingerprints,
ε spent, metrics) and is signed with the Vault transit Ed25519 key ``model-signing``.
Bytes at rest are AES-256-GCM under a per-object data key wrapped by Vault transit.
Loading verifies the signature and both digests before returning anything.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from insitu.errors import ErrorCode, InsituError
from insitu.keys import KeyService

__all__ = ["ModelRecord", "ModelRegistry", "arrays_to_npz", "verify_manifest"]

SIGNING_KEY = "model-signing"
WRAPPING_KEY = "data-wrapping"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def arrays_to_npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def verify_manifest(manifest: bytes, signature: bytes, public_key: bytes) -> dict[str, Any]:
    """Verify ``signature`` over ``manifest`` with an Ed25519 key; return the manifest."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, manifest)
    except (InvalidSignature, ValueError):
        raise InsituError(ErrorCode.INTEGRITY, "model manifest signature does not verify") from None
    parsed: dict[str, Any] = json.loads(manifest)
    return parsed


@dataclass(frozen=True)
class ModelRecord:
    name: str
    version: str
    manifest: bytes
    signature: bytes
    key_version: int
    state: bytes
    onnx: bytes

    @property
    def info(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.manifest)
        return parsed


class ModelRegistry:
    def __init__(self, root: Path, keys: KeyService) -> None:
        self.root = root
        self.keys = keys
        self._store_lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _dir(self, name: str, version: str) -> Path:
        if not _NAME.fullmatch(name) or not re.fullmatch(r"^v[0-9]{1,9}$", version):
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "invalid model name or version")
        return self.root / name / version

    def next_version(self, name: str) -> str:
        d = self.root / name
        existing = (
            [int(p.name[1:]) for p in d.iterdir() if re.fullmatch(r"v\d+", p.name)]
            if d.exists()
            else []
        )
        return f"v{max(existing, default=0) + 1}"

    def _seal(self, data: bytes, aad: bytes) -> dict[str, str]:
        dk = self.keys.generate_data_key(WRAPPING_KEY)
        nonce = secrets.token_bytes(12)
        ct = AESGCM(dk.plaintext).encrypt(nonce, data, aad)
        return {"wrapped_key": dk.wrapped, "nonce": nonce.hex(), "ciphertext": ct.hex()}

    def _open(self, sealed: dict[str, str], aad: bytes) -> bytes:
        key = self.keys.unwrap(WRAPPING_KEY, sealed["wrapped_key"])
        try:
            return AESGCM(key).decrypt(
                bytes.fromhex(sealed["nonce"]), bytes.fromhex(sealed["ciphertext"]), aad
            )
        except Exception:
            raise InsituError(
                ErrorCode.INTEGRITY, "model ciphertext fails authentication"
            ) from None

    def store(
        self,
        name: str,
        state: bytes,
        onnx: bytes,
        lineage: dict[str, Any],
        owner: str,
        org: str = "",
    ) -> ModelRecord:
        with self._store_lock:  # concurrent jobs may register the same model name
            return self._store(name, state, onnx, lineage, owner, org)

    def _store(
        self, name: str, state: bytes, onnx: bytes, lineage: dict[str, Any], owner: str,
        org: str,
    ) -> ModelRecord:
        version = self.next_version(name)
        final = self._dir(name, version)
        manifest = rfc8785.dumps(
            {
                "name": name,
                "version": version,
                "owner": owner,
                "org": org,
                "created": int(time.time()),
                "state_sha256": hashlib.sha256(state).hexdigest(),
                "onnx_sha256": hashlib.sha256(onnx).hexdigest() if onnx else "",
                "lineage": lineage,
            }
        )
        key_version, signature = self.keys.sign_with_version(SIGNING_KEY, manifest)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".staging-"))
        try:
            blob = {
                "state": self._seal(state, f"{name}/{version}/state".encode()),
                "onnx": self._seal(onnx, f"{name}/{version}/onnx".encode()) if onnx else None,
            }
            (tmp / "sealed.json").write_text(json.dumps(blob))
            (tmp / "manifest.json").write_bytes(manifest)
            (tmp / "signature").write_text(
                json.dumps({"signature": signature.hex(), "key_version": key_version})
            )
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return ModelRecord(name, version, manifest, signature, key_version, state, onnx)

    def load(self, name: str, version: str) -> ModelRecord:
        """Decrypt and verify; a tampered manifest, signature or blob raises INTEGRITY."""
        d = self._dir(name, version)
        if not d.exists():
            raise InsituError(ErrorCode.NOT_FOUND, f"model {name} {version} not found")
        manifest = (d / "manifest.json").read_bytes()
        sig = json.loads((d / "signature").read_text())
        signature, key_version = bytes.fromhex(sig["signature"]), int(sig["key_version"])
        if not self.keys.verify(SIGNING_KEY, manifest, signature, version=key_version):
            raise InsituError(ErrorCode.INTEGRITY, f"model {name} {version}: signature invalid")
        info = json.loads(manifest)
        if info.get("name") != name or info.get("version") != version:
            raise InsituError(ErrorCode.INTEGRITY, "manifest names another model")
        sealed = json.loads((d / "sealed.json").read_text())
        state = self._open(sealed["state"], f"{name}/{version}/state".encode())
        onnx = (
            self._open(sealed["onnx"], f"{name}/{version}/onnx".encode())
            if sealed.get("onnx")
            else b""
        )
        if hashlib.sha256(state).hexdigest() != info["state_sha256"] or (
            onnx and hashlib.sha256(onnx).hexdigest() != info["onnx_sha256"]
        ):
            raise InsituError(ErrorCode.INTEGRITY, f"model {name} {version}: digest mismatch")
        return ModelRecord(name, version, manifest, signature, key_version, state, onnx)

    def list(self) -> list[dict[str, Any]]:
        out = []
        for m in sorted(self.root.glob("*/v*/manifest.json")):
            out.append(json.loads(m.read_bytes()))
        return out

    def rewrap_all(self) -> int:
        """After a transit key rotation: rewrap every data key to the newest key version."""
        n = 0
        for f in self.root.glob("*/v*/sealed.json"):
            sealed = json.loads(f.read_text())
            for part in ("state", "onnx"):
                if sealed.get(part):
                    sealed[part]["wrapped_key"] = self.keys.rewrap(
                        WRAPPING_KEY, sealed[part]["wrapped_key"]
                    )
                    n += 1
            tmp = f.with_suffix(".tmp")
            tmp.write_text(json.dumps(sealed))
            tmp.replace(f)
        return n
