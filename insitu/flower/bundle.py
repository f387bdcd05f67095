"""Flower app bundles: a deterministic zip of a Flower app directory, and its safe unpacking.

An app directory is exactly Flower's own layout, so a user's existing Flower app works
unchanged::

    myapp/
      pyproject.toml      [tool.flwr.app.components] serverapp = "pkg.server_app:app"
                                                     clientapp = "pkg.client_app:app"
                          [tool.flwr.app.config]     run config defaults
                          [tool.insitu]              onnx-export, declared metric keys, resources
                                                     (see insitu.flower.declaration)
      pkg/__init__.py, pkg/client_app.py, pkg/server_app.py, ...

The bundle bytes are what gets hashed (:func:`code_hash`), approved by each site, and
unpacked at the site: the hash names the code that actually runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import shutil
import stat
import tomllib
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from flwr.app import UserConfig, UserConfigValue
from flwr.common.config import flatten_dict, validate_fields_in_config
from flwr.supercore.object_ref import load_app

from insitu.errors import ErrorCode, InsituError
from insitu.flower.declaration import AppDeclaration, parse_declaration

__all__ = [
    "MAX_BUNDLE_BYTES",
    "MAX_FILES",
    "MAX_TOTAL_BYTES",
    "AppLayout",
    "app_from_module",
    "code_hash",
    "load_component",
    "pack_app",
    "read_app",
    "unpack_app",
]

MAX_FILES = 2_000
MAX_TOTAL_BYTES = 64 * 1024 * 1024  # uncompressed; apps are code, not data or weights
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
PYPROJECT = "pyproject.toml"

# 1980-01-01 is the earliest date a zip header can hold; a fixed stamp makes packing
# reproducible regardless of checkout times.
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o100644
_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_EXCLUDED_DIRS = frozenset({"__pycache__"})
_EXCLUDED_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class AppLayout:
    """A Flower app on disk, as described by its ``pyproject.toml``."""

    directory: Path
    name: str
    version: str
    publisher: str
    serverapp: str
    clientapp: str
    onnx_export: str | None = None
    config: UserConfig = field(default_factory=dict)
    declaration: AppDeclaration = field(default_factory=AppDeclaration)

    def run_config(self, overrides: Mapping[str, UserConfigValue] | None = None) -> UserConfig:
        """The app's default run config (flattened) with ``overrides`` applied.

        Keys the app does not declare are added rather than refused: insitu passes a few
        of its own (DP settings, strategy) that a plain Flower app may simply ignore.
        """
        fused: UserConfig = dict(self.config)
        for key, value in (overrides or {}).items():
            if not isinstance(value, bool | int | float | str):
                raise InsituError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"run config {key!r} must be a bool, int, float or str, "
                    f"not {type(value).__name__}",
                )
            fused[key] = value
        return fused


def code_hash(bundle: bytes) -> str:
    """SHA-256 (hex) of the bundle bytes: the identity sites approve and audit events carry."""
    return hashlib.sha256(bundle).hexdigest()


def _bundle_files(directory: Path) -> list[tuple[str, Path]]:
    """The files a bundle holds, as (archive name, path), sorted by archive name."""
    files: list[tuple[str, Path]] = []
    for path in directory.rglob("*"):
        rel = path.relative_to(directory)
        if any(part.startswith(".") or part in _EXCLUDED_DIRS for part in rel.parts):
            continue
        if path.is_symlink():
            # A link could pull files from outside the app (keys, data) into the bundle.
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT, f"app contains a symlink: {rel.as_posix()}"
            )
        if not path.is_file() or path.name.endswith(_EXCLUDED_SUFFIXES):
            continue
        files.append((rel.as_posix(), path))
    files.sort(key=lambda item: item[0])
    return files


def pack_app(
    directory: Path,
    *,
    max_files: int = MAX_FILES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> bytes:
    """Zip a Flower app directory deterministically: same files, same bytes, same hash.

    Entries are sorted, with fixed timestamps and modes; ``__pycache__``, ``*.pyc`` and
    hidden files are left out. The app's ``pyproject.toml`` is validated first.
    """
    directory = Path(directory)
    read_app(directory)  # refuse to pack something no site could run
    files = _bundle_files(directory)
    if len(files) > max_files:
        raise InsituError(
            ErrorCode.RESOURCE_EXHAUSTED,
            f"app has {len(files)} files; a bundle holds at most {max_files}",
        )
    total = 0
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, path in files:
            data = path.read_bytes()
            total += len(data)
            if total > max_total_bytes:
                raise InsituError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"app files exceed {max_total_bytes} bytes (at {name}); "
                    "ship data and weights separately",
                )
            info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
            info.create_system = 3  # unix, so the mode bits mean the same everywhere
            info.external_attr = _FILE_MODE << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data, compresslevel=6)
    return buffer.getvalue()


def _safe_member_name(info: zipfile.ZipInfo) -> PurePosixPath:
    name = info.filename
    path = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or "\x00" in name
        or path.is_absolute()
        or ".." in path.parts
        or re.match(r"^[A-Za-z]:", name)
    ):
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"unsafe path in bundle: {name!r}")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"bundle entry is a symlink: {name!r}")
    kind = stat.S_IFMT(mode)  # 0 when the archiver recorded permission bits only
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, f"bundle entry is not a regular file: {name!r}"
        )
    return path


def unpack_app(
    bundle: bytes,
    dest: Path,
    *,
    max_files: int = MAX_FILES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_bundle_bytes: int = MAX_BUNDLE_BYTES,
) -> AppLayout:
    """Extract a bundle into ``dest`` (absent or empty) and read its layout.

    Refuses absolute paths, ``..``, symlinks and special files, duplicate entries, and
    anything over the caps; sizes are counted as bytes are actually inflated, never taken
    from the (attacker-controlled) headers alone.
    """
    if len(bundle) > max_bundle_bytes:
        raise InsituError(
            ErrorCode.RESOURCE_EXHAUSTED,
            f"bundle is {len(bundle)} bytes; the limit is {max_bundle_bytes}",
        )
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise InsituError(ErrorCode.FAILED_PRECONDITION, f"unpack target is not empty: {dest}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(bundle))
    except zipfile.BadZipFile as err:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"bundle is not a zip: {err}") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > max_files:
            raise InsituError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"bundle has {len(infos)} entries; the limit is {max_files}",
            )
        seen: set[PurePosixPath] = set()
        declared = 0
        for info in infos:
            path = _safe_member_name(info)
            if path in seen:
                raise InsituError(
                    ErrorCode.INVALID_ARGUMENT, f"duplicate bundle entry: {info.filename!r}"
                )
            seen.add(path)
            declared += info.file_size
        if declared > max_total_bytes:
            raise InsituError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"bundle inflates to {declared} bytes; the limit is {max_total_bytes}",
            )
        dest.mkdir(parents=True, exist_ok=True)
        try:
            _extract(archive, infos, dest.resolve(), max_total_bytes)
        except BaseException as err:
            # Leave nothing half-written behind for anyone to import by mistake.
            for child in dest.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            if isinstance(err, zipfile.BadZipFile | zlib.error | EOFError):
                raise InsituError(
                    ErrorCode.INVALID_ARGUMENT, f"bundle is corrupt: {err}"
                ) from None
            raise
    return read_app(dest)


def _extract(
    archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], root: Path, max_total_bytes: int
) -> None:
    written = 0
    for info in infos:
        target = (root / info.filename).resolve()
        if root not in target.parents:
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT, f"unsafe path in bundle: {info.filename!r}"
            )
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as src, target.open("wb") as out:
            while chunk := src.read(1 << 16):
                written += len(chunk)
                if written > max_total_bytes:  # a header that lied about its size
                    raise InsituError(
                        ErrorCode.RESOURCE_EXHAUSTED,
                        f"bundle inflates past {max_total_bytes} bytes",
                    )
                out.write(chunk)
        target.chmod(0o644)


def _component(components: Mapping[str, Any], key: str, where: Path) -> str:
    ref = components.get(key)
    if not isinstance(ref, str) or not _REF.match(ref):
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT,
            f"{where}: [tool.flwr.app.components] {key} must look like 'module:attribute', "
            f"got {ref!r}",
        )
    return ref


def read_app(directory: Path) -> AppLayout:
    """Read and validate the ``pyproject.toml`` of a Flower app directory."""
    directory = Path(directory)
    toml_path = directory / PYPROJECT
    if not toml_path.is_file():
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, f"no {PYPROJECT} in app directory {directory}"
        )
    try:
        config = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"{toml_path}: invalid TOML: {err}") from None
    try:
        valid, errors, _warnings = validate_fields_in_config(config)
    except ValueError as err:  # a run config value of an unsupported type
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"{toml_path}: {err}") from None
    if not valid:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"{toml_path}: " + "; ".join(errors))
    app = config["tool"]["flwr"]["app"]
    components = app["components"]
    insitu_table = config["tool"].get("insitu", {})
    declaration = parse_declaration(insitu_table, where=str(toml_path))
    onnx_export = insitu_table.get("onnx-export")
    if onnx_export is not None:
        onnx_export = _component({"onnx-export": onnx_export}, "onnx-export", toml_path)
    return AppLayout(
        directory=directory,
        name=str(config["project"]["name"]),
        version=str(config["project"]["version"]),
        publisher=str(app["publisher"]),
        serverapp=_component(components, "serverapp", toml_path),
        clientapp=_component(components, "clientapp", toml_path),
        onnx_export=onnx_export,
        config=flatten_dict(app.get("config", {})),
        declaration=declaration,
    )


def app_from_module(module_name: str) -> Path:
    """The app directory of an installed package that ships its ``pyproject.toml``.

    ``app_from_module("insitu.apps.breast_cancer")`` is the directory of that package.
    """
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as err:
        raise InsituError(
            ErrorCode.NOT_FOUND, f"cannot find module {module_name!r}: {err}"
        ) from None
    if spec is None or not spec.submodule_search_locations:
        raise InsituError(ErrorCode.NOT_FOUND, f"{module_name!r} is not an installed package")
    for location in spec.submodule_search_locations:
        candidate = Path(location)
        if (candidate / PYPROJECT).is_file():
            return candidate
    raise InsituError(
        ErrorCode.NOT_FOUND, f"package {module_name!r} holds no {PYPROJECT}: not a Flower app"
    )


def load_component(app_dir: Path, ref: str) -> Any:
    """Import ``module:attribute`` with ``app_dir`` first on ``sys.path`` (Flower's loader).

    Modules stay cached in ``sys.modules``: load one app per process (the worker does).
    """
    if not _REF.match(ref):
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"bad object reference {ref!r}")
    try:
        return load_app(ref, ValueError, project_dir=Path(app_dir))
    except ValueError as err:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"cannot load {ref!r}: {err}") from None
    except ImportError as err:
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, f"cannot import {ref!r} from {app_dir}: {err}"
        ) from None
