"""The site's model repository on disk, Triton-style::

    <root>/<model>/config.yaml           batching, version policy, input schema
    <root>/<model>/<version>/model.onnx  one immutable directory per version (1, 2, ...)
    <root>/<model>/<version>/artifact.json
    <root>/<model>/state.json            serving/canary/history (written by versions.py)

A version directory appears only complete and verified: :meth:`install_version` checks
the signature, the ONNX bytes' hash and the graph's I/O signature *before* it writes
anything under the model directory, then writes into a hidden temp directory and renames
it into place. A refused artifact leaves the repository byte-for-byte unchanged.

Example::

    repo = ModelRepository(site_dir / "models")
    repo.write_config("mlp", config_yaml)
    meta = ArtifactMetadata.from_json_unverified(artifact_json)
    repo.install_version("mlp", 3, onnx_bytes, meta, ed25519_verifier(pubkey))
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from insitu.errors import ErrorCode, InsituError
from site_node.serving.artifact import ArtifactMetadata, Verifier
from site_node.serving.config import (
    ALLOWED_DTYPES,
    ModelConfig,
    TensorSpec,
    parse_config,
    validate_model_name,
)
from site_node.serving.runtime import OnnxSession, check_signature

__all__ = ["ModelRepository", "atomic_write"]

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.onnx"
ARTIFACT_FILE = "artifact.json"
MAX_MODEL_BYTES = 2 * 1024**3  # protobuf's own limit for a single ONNX file


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelRepository:
    """Reads and (atomically) extends the on-disk model repository under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- reading -----------------------------------------------------------------------

    def model_dir(self, name: str) -> Path:
        return self.root / validate_model_name(name)

    def version_dir(self, name: str, version: int) -> Path:
        return self.model_dir(name) / str(_version(version))

    def models(self) -> list[str]:
        """Models that have a ``config.yaml``, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file()
        )

    def config(self, name: str) -> ModelConfig:
        path = self.model_dir(name) / CONFIG_FILE
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            raise InsituError(ErrorCode.NOT_FOUND, f"model '{name}' has no config.yaml") from None
        return parse_config(text)

    def versions(self, name: str) -> list[int]:
        """Every installed version on disk (complete directories only), ascending."""
        d = self.model_dir(name)
        if not d.is_dir():
            return []
        found = []
        for p in d.iterdir():
            if p.name.isdigit() and p.name[0] != "0" and (p / ARTIFACT_FILE).is_file():
                found.append(int(p.name))
        return sorted(found)

    def servable_versions(self, name: str) -> list[int]:
        """The versions the model's version policy makes servable, ascending."""
        return self.config(name).version_policy.select(self.versions(name))

    def model_path(self, name: str, version: int) -> Path:
        path = self.version_dir(name, version) / MODEL_FILE
        if not path.is_file():
            raise InsituError(ErrorCode.NOT_FOUND, f"model '{name}' has no version {version}")
        return path

    def metadata(self, name: str, version: int) -> ArtifactMetadata:
        """The stored metadata; it was verified when installed."""
        path = self.version_dir(name, version) / ARTIFACT_FILE
        try:
            return ArtifactMetadata.from_json_unverified(path.read_bytes())
        except FileNotFoundError:
            raise InsituError(
                ErrorCode.NOT_FOUND, f"model '{name}' has no version {version}"
            ) from None

    def verify_installed(self, name: str, version: int, verify: Verifier) -> None:
        """Re-check an installed version at rest (signature and hash); INTEGRITY if not."""
        meta = self.metadata(name, version)
        meta.verify(verify)
        digest = hashlib.sha256(self.model_path(name, version).read_bytes()).hexdigest()
        if not hmac.compare_digest(digest, meta.sha256):
            raise InsituError(
                ErrorCode.INTEGRITY, f"{name}/{version}/model.onnx: sha256 does not match"
            )

    # -- writing -----------------------------------------------------------------------

    def config_bytes(self, name: str) -> bytes | None:
        """The raw ``config.yaml``, or None if the model has none."""
        try:
            return (self.model_dir(name) / CONFIG_FILE).read_bytes()
        except FileNotFoundError:
            return None

    def write_config(self, name: str, config_yaml: str | bytes) -> ModelConfig:
        """Validate and atomically (re)place ``<name>/config.yaml``."""
        config = parse_config(config_yaml)
        data = config_yaml.encode() if isinstance(config_yaml, str) else config_yaml
        atomic_write(self.model_dir(name) / CONFIG_FILE, data)
        return config

    def install_version(
        self,
        name: str,
        version: int,
        onnx_bytes: bytes,
        metadata: ArtifactMetadata,
        verify: Verifier,
        *,
        config: ModelConfig | None = None,
    ) -> Path:
        """Verify and install one version; returns its directory.

        Steps, each with its own error, all before any write:

        1. the metadata names this model and version (INVALID_ARGUMENT);
        2. its signature verifies (INTEGRITY);
        3. the ONNX bytes hash to the signed sha256 (INTEGRITY);
        4. ONNX Runtime loads the graph (INVALID_ARGUMENT: malformed ONNX);
        5. the graph's inputs/outputs equal the signed declaration, and the declaration
           agrees with ``config`` (default: the model's ``config.yaml``) (INVALID_ARGUMENT).

        Re-installing identical bytes is a no-op; different bytes under an existing
        version are ALREADY_EXISTS (versions are immutable).
        """
        validate_model_name(name)
        _version(version)
        if metadata.model != name or metadata.version != version:
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT,
                f"artifact.json: describes {metadata.model} v{metadata.version}, "
                f"not {name} v{version}",
            )
        metadata.verify(verify)
        if len(onnx_bytes) > MAX_MODEL_BYTES:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "model.onnx: larger than 2 GiB")
        digest = hashlib.sha256(onnx_bytes).hexdigest()
        if not hmac.compare_digest(digest, metadata.sha256):
            raise InsituError(
                ErrorCode.INTEGRITY, f"model.onnx: sha256 of {name} v{version} does not match"
            )
        target = self.version_dir(name, version)
        if (target / ARTIFACT_FILE).is_file():
            if hmac.compare_digest(self.metadata(name, version).sha256, digest):
                return target
            raise InsituError(ErrorCode.ALREADY_EXISTS, f"model '{name}' version {version} exists")
        session = OnnxSession(onnx_bytes, providers=["CPUExecutionProvider"])
        check_signature(metadata.inputs, metadata.outputs, session)
        for spec in metadata.outputs:
            if spec.dtype not in ALLOWED_DTYPES:  # pragma: no cover - TensorSpec enforces it
                raise InsituError(ErrorCode.INVALID_ARGUMENT, f"outputs['{spec.name}'].dtype")
        self._check_against_config(name, metadata, config)
        self._write_version_dir(target, onnx_bytes, metadata)
        return target

    def _check_against_config(
        self, name: str, metadata: ArtifactMetadata, config: ModelConfig | None
    ) -> None:
        if config is None:
            try:
                config = self.config(name)
            except InsituError as e:
                if e.code is ErrorCode.NOT_FOUND:
                    return  # the config may be written after the first version
                raise
        declared = {s.name: s for s in metadata.inputs}
        if set(declared) != {s.name for s in config.inputs}:
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT,
                f"inputs: artifact declares {sorted(declared)}, config.yaml "
                f"{sorted(s.name for s in config.inputs)}",
            )
        for spec in config.inputs:
            if not _compatible(spec, declared[spec.name]):
                raise InsituError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"inputs['{spec.name}']: config.yaml {spec.dtype}{list(spec.shape)} does "
                    f"not fit the artifact's {declared[spec.name].dtype}"
                    f"{list(declared[spec.name].shape)}",
                )
        missing = sorted(set(config.outputs) - {s.name for s in metadata.outputs})
        if missing:
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT, f"outputs: config.yaml names {missing}, not in graph"
            )

    def _write_version_dir(self, target: Path, onnx_bytes: bytes, meta: ArtifactMetadata) -> None:
        parent = target.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".tmp-{target.name}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            for fname, data in ((MODEL_FILE, onnx_bytes), (ARTIFACT_FILE, meta.to_json())):
                with open(tmp / fname, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            _fsync_dir(tmp)
            # rename(2) of a directory is atomic and refuses a non-empty target, so two
            # concurrent installs of one version cannot interleave.
            os.rename(tmp, target)
            _fsync_dir(parent)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if target.is_dir() and (target / ARTIFACT_FILE).is_file():
                raise InsituError(
                    ErrorCode.ALREADY_EXISTS, f"version {target.name} was installed concurrently"
                ) from None
            raise InsituError(ErrorCode.INTERNAL, f"writing {target.name}: {e.strerror}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _compatible(config_spec: TensorSpec, declared: TensorSpec) -> bool:
    if config_spec.dtype != declared.dtype or len(config_spec.shape) != len(declared.shape):
        return False
    return all(d == -1 or c == d for c, d in zip(config_spec.shape, declared.shape, strict=True))


def _version(version: int) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "version: must be an integer >= 1")
    return version
