"""App bundles: deterministic packing, stable hashes, and refusal of unsafe archives."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from insitu.errors import ErrorCode, InsituError
from insitu.flower import (
    app_from_module,
    code_hash,
    load_component,
    pack_app,
    read_app,
    unpack_app,
)

PYPROJECT = """\
[project]
name = "tiny"
version = "0.1.0"

[tool.flwr.app]
publisher = "tests"

[tool.flwr.app.components]
serverapp = "tiny.server_app:app"
clientapp = "tiny.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 3
lr = 0.1
nested.depth = 2

[tool.insitu]
onnx-export = "tiny.task:export_onnx"
"""


def _app(root: Path) -> Path:
    (root / "tiny").mkdir(parents=True)
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "tiny" / "__init__.py").write_text("")
    (root / "tiny" / "client_app.py").write_text("app = 'client'\n")
    (root / "tiny" / "server_app.py").write_text("app = 'server'\n")
    (root / "tiny" / "task.py").write_text("def export_onnx(arrays):\n    return b'onnx'\n")
    return root


def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return buffer.getvalue()


def test_packing_is_deterministic_and_ignores_noise(tmp_path: Path) -> None:
    first = _app(tmp_path / "a")
    second = _app(tmp_path / "b")
    # Noise that must not change the bundle: caches, hidden files, times, modes.
    (second / "tiny" / "__pycache__").mkdir()
    (second / "tiny" / "__pycache__" / "client_app.cpython-311.pyc").write_bytes(b"\x00")
    (second / "tiny" / "stale.pyc").write_bytes(b"\x00")
    (second / ".git").mkdir()
    (second / ".git" / "HEAD").write_text("ref")
    (second / ".env").write_text("TOKEN=x")
    os.utime(second / "tiny" / "task.py", (1_000_000_000, 1_000_000_000))
    (second / "tiny" / "task.py").chmod(0o755)
    bundle = pack_app(first)
    assert pack_app(second) == bundle
    assert code_hash(bundle) == code_hash(pack_app(first))
    names = zipfile.ZipFile(io.BytesIO(bundle)).namelist()
    assert names == sorted(names)
    assert ".env" not in names and not any("pycache" in n or n.endswith(".pyc") for n in names)


def test_hash_changes_with_code(tmp_path: Path) -> None:
    app = _app(tmp_path / "a")
    before = code_hash(pack_app(app))
    (app / "tiny" / "task.py").write_text("def export_onnx(arrays):\n    return b'other'\n")
    assert code_hash(pack_app(app)) != before
    assert len(before) == 64 and int(before, 16) >= 0


def test_hash_of_shipped_app_is_stable_across_calls() -> None:
    app_dir = app_from_module("insitu.apps.breast_cancer")
    assert code_hash(pack_app(app_dir)) == code_hash(pack_app(app_dir))


def test_round_trip_reads_flower_components(tmp_path: Path) -> None:
    bundle = pack_app(_app(tmp_path / "src"))
    layout = unpack_app(bundle, tmp_path / "dest")
    assert layout.directory == tmp_path / "dest"
    assert (layout.serverapp, layout.clientapp) == ("tiny.server_app:app", "tiny.client_app:app")
    assert layout.onnx_export == "tiny.task:export_onnx"
    assert layout.config == {"num-server-rounds": 3, "lr": 0.1, "nested.depth": 2}
    assert layout.run_config({"lr": 0.5, "dp-noise-multiplier": 1.0}) == {
        "num-server-rounds": 3, "lr": 0.5, "nested.depth": 2, "dp-noise-multiplier": 1.0
    }
    assert stat.S_IMODE((tmp_path / "dest" / "tiny" / "task.py").stat().st_mode) == 0o644
    assert pack_app(tmp_path / "dest") == bundle  # unpack then repack is the same code


def test_load_component_imports_from_the_app_dir(tmp_path: Path) -> None:
    app = _app(tmp_path / "loadable")
    (app / "tiny").rename(app / "tinyload")  # a unique package name for this process
    assert load_component(app, "tinyload.client_app:app") == "client"
    with pytest.raises(InsituError, match="nothere"):
        load_component(app, "tinyload.client_app:nothere")
    with pytest.raises(InsituError, match="cannot import"):
        load_component(app, "missing_pkg_xyz.mod:app")
    with pytest.raises(InsituError, match="bad object reference"):
        load_component(app, "no-colon")


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "../escape.py", "pkg/../../escape.py", "C:/windows.py", "pkg\\evil.py"],
)
def test_unsafe_paths_are_refused(tmp_path: Path, name: str) -> None:
    bundle = _zip([("pyproject.toml", PYPROJECT.encode()), (name, b"x")])
    with pytest.raises(InsituError, match="unsafe path") as caught:
        unpack_app(bundle, tmp_path / "dest")
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert not (tmp_path / "escape.py").exists()


def test_symlink_entries_are_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("tiny/key.pem")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    bundle = _zip([("pyproject.toml", PYPROJECT.encode()), (link, b"/etc/ssl/private/key.pem")])
    with pytest.raises(InsituError, match="symlink"):
        unpack_app(bundle, tmp_path / "dest")


def test_symlink_in_app_dir_is_not_packed(tmp_path: Path) -> None:
    app = _app(tmp_path / "a")
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    (app / "tiny" / "data.txt").symlink_to(secret)
    with pytest.raises(InsituError, match="symlink"):
        pack_app(app)


def test_oversize_and_too_many_files_are_refused(tmp_path: Path) -> None:
    bomb = _zip([("pyproject.toml", PYPROJECT.encode()), ("tiny/zeros.bin", b"\0" * 200_000)])
    assert len(bomb) < 5_000  # compresses to almost nothing: sizes must be checked inflated
    with pytest.raises(InsituError, match="inflates") as caught:
        unpack_app(bomb, tmp_path / "d1", max_total_bytes=100_000)
    assert caught.value.code is ErrorCode.RESOURCE_EXHAUSTED
    with pytest.raises(InsituError, match=r"limit is 100$"):
        unpack_app(bomb, tmp_path / "d2", max_bundle_bytes=100)
    many = _zip([("pyproject.toml", PYPROJECT.encode())] + [(f"f{i}.py", b"") for i in range(5)])
    with pytest.raises(InsituError, match="entries"):
        unpack_app(many, tmp_path / "d3", max_files=3)
    app = _app(tmp_path / "big")
    (app / "tiny" / "weights.bin").write_bytes(b"\1" * 4096)
    with pytest.raises(InsituError, match="exceed"):
        pack_app(app, max_total_bytes=1024)
    with pytest.raises(InsituError, match="files"):
        pack_app(app, max_files=2)


def test_lying_size_header_is_caught_while_inflating(tmp_path: Path) -> None:
    bundle = bytearray(_zip([("pyproject.toml", PYPROJECT.encode()), ("t.bin", b"\0" * 50_000)]))
    # Patch the central directory's uncompressed size of t.bin down to 10 bytes.
    cd = bundle.rfind(b"PK\x01\x02")
    bundle[cd + 24 : cd + 28] = (10).to_bytes(4, "little")
    with pytest.raises(InsituError) as caught:  # zipfile's own size/CRC check, or ours
        unpack_app(bytes(bundle), tmp_path / "dest", max_total_bytes=20_000)
    assert caught.value.code in (ErrorCode.INVALID_ARGUMENT, ErrorCode.RESOURCE_EXHAUSTED)
    assert list((tmp_path / "dest").iterdir()) == []  # nothing half-written left behind


def test_not_a_zip_and_not_an_app(tmp_path: Path) -> None:
    with pytest.raises(InsituError, match="not a zip"):
        unpack_app(b"hello", tmp_path / "d1")
    with pytest.raises(InsituError, match=r"no pyproject\.toml"):
        unpack_app(_zip([("tiny/x.py", b"")]), tmp_path / "d2")
    broken = PYPROJECT.replace('clientapp = "tiny.client_app:app"\n', "")
    with pytest.raises(InsituError, match="clientapp"):
        unpack_app(_zip([("pyproject.toml", broken.encode())]), tmp_path / "d3")
    bad_ref = PYPROJECT.replace('"tiny.client_app:app"', '"tiny.client_app"')
    with pytest.raises(InsituError, match="module:attribute"):
        unpack_app(_zip([("pyproject.toml", bad_ref.encode())]), tmp_path / "d4")


def test_unpack_refuses_a_non_empty_target(tmp_path: Path) -> None:
    bundle = pack_app(_app(tmp_path / "src"))
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "other").write_text("x")
    with pytest.raises(InsituError) as caught:
        unpack_app(bundle, tmp_path / "dest")
    assert caught.value.code is ErrorCode.FAILED_PRECONDITION


def test_app_from_module() -> None:
    app_dir = app_from_module("insitu.apps.breast_cancer")
    layout = read_app(app_dir)
    assert layout.clientapp == "bcw.client_app:app"
    assert layout.onnx_export == "bcw.task:export_onnx"
    with pytest.raises(InsituError) as caught:
        app_from_module("insitu.errors")  # a module, not a package
    assert caught.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(InsituError, match="not a Flower app"):
        app_from_module("insitu.flower")
    with pytest.raises(InsituError):
        app_from_module("no_such_package_anywhere")
