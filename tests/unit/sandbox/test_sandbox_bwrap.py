"""The bubblewrap sandbox, tried from inside: what a job process can and cannot reach."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from insitu.errors import ErrorCode, InsituError
from insitu.sandbox import (
    INSIDE_UID,
    BwrapLauncher,
    HostLauncher,
    Limits,
    ResourceRequest,
    SandboxSpec,
    SandboxUnavailable,
    gpu_device_args,
    parse_request,
    require_bwrap,
    runtime_paths,
)

LIMITS = Limits(memory_mb=1024, cpu_seconds=30, processes=64, open_files=64, scratch_mb=8,
                message_timeout_s=30.0)


def _run(launcher: BwrapLauncher | HostLauncher, code: str, timeout: float = 60) -> str:
    done = subprocess.run(
        launcher.command([sys.executable, "-c", code]), env=launcher.env, cwd=launcher.cwd,
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    d = tmp_path / "site"
    d.mkdir()
    (d / "key.pem").write_text("PRIVATE KEY")
    (d / "data.csv").write_text("a,b\n1,2\n")
    return d


def test_inside_the_sandbox_only_the_granted_file_and_the_runtime_are_visible(
    secret_dir: Path,
) -> None:
    spec = SandboxSpec(limits=LIMITS, ro={secret_dir / "data.csv": "/data/d/data.csv"},
                       env={"ONLY": "this"})
    out = _run(BwrapLauncher(spec, bwrap=require_bwrap()), f"""
import os
print(os.getuid(), os.getgid())
print(open('/data/d/data.csv').read().splitlines()[1])
for p in ({str(secret_dir / 'key.pem')!r}, {str(secret_dir)!r}, '/etc/passwd', '/root/.ssh',
          os.path.expanduser('~/.bash_history')):
    print(p, os.path.exists(p))
print(sorted(k for k in os.environ if k not in ('PWD', 'SHLVL', '_')))
print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])
""")
    lines = out.splitlines()
    assert lines[0] == f"{INSIDE_UID} {INSIDE_UID}"
    assert lines[1] == "1,2"
    assert all(line.endswith("False") for line in lines[2:7]), lines
    assert "ONLY" in lines[7] and "INSITU" not in lines[7]
    assert int(lines[8], 16) == 0  # no capabilities


def test_no_network_not_even_loopback_and_no_name_resolution() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    got: list[bytes] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test: nobody connected
            got.append(server.accept()[0].recv(10))

    threading.Thread(target=accept, daemon=True).start()
    try:
        out = _run(BwrapLauncher(SandboxSpec(limits=LIMITS), bwrap=require_bwrap()), f"""
import socket
for what, fn in (("connect", lambda: socket.create_connection(("127.0.0.1", {port}), 2)),
                 ("resolve", lambda: socket.getaddrinfo("localhost", 80))):
    try:
        fn(); print(what, "ok")
    except OSError as e:
        print(what, type(e).__name__)
""")
    finally:
        server.close()
    assert "connect ok" not in out and "resolve ok" not in out, out
    assert got == []


def test_writes_land_only_in_bounded_private_scratch(tmp_path: Path) -> None:
    target = tmp_path / "outside.txt"
    out = _run(BwrapLauncher(SandboxSpec(limits=LIMITS), bwrap=require_bwrap()), f"""
import os
for p in ({str(target)!r}, '/usr/evil', '/scratch/ok'):
    try:
        open(p, 'w').write('x'); print(p, 'written')
    except OSError as e:
        print(p, type(e).__name__)
try:
    open('/scratch/big', 'wb').write(b'0' * (16 * 1024 * 1024)); print('big written')
except OSError as e:
    print('big', type(e).__name__)
print(os.environ['HOME'], os.getcwd())
""")
    assert not target.exists()
    assert "/scratch/ok written" in out and "big written" not in out, out
    assert "/usr/evil written" not in out
    assert out.splitlines()[-1] == "/scratch /scratch"


def test_memory_limit_applies_inside() -> None:
    out = _run(BwrapLauncher(SandboxSpec(limits=LIMITS), bwrap=require_bwrap()), """
try:
    b = bytearray(2 * 1024**3); print('allocated')
except MemoryError:
    print('MemoryError')
""")
    assert out == "MemoryError"


def test_processes_die_with_the_sandbox(tmp_path: Path) -> None:
    marker = f"linger-{os.getpid()}-{id(tmp_path)}"
    launcher = BwrapLauncher(SandboxSpec(limits=LIMITS), bwrap=require_bwrap())
    _run(launcher, f"""
import subprocess, sys
subprocess.Popen([sys.executable, '-c', 'import time\\nwhile 1: time.sleep(1)', {marker!r}],
                 start_new_session=True)
""")
    alive = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, marker)]
    assert alive == []


def _cmdline_has(proc: Path, marker: str) -> bool:
    try:
        return marker.encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


def test_runtime_binds_are_package_dirs_never_the_checkout_around_them() -> None:
    repo = Path(__file__).resolve().parents[3]
    paths = runtime_paths()
    assert repo not in paths
    assert all(not repo.is_relative_to(p) for p in paths)


def test_gpu_grant_binds_only_that_device_node(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).write_text("")
    args = gpu_device_args(1, dev_root=str(tmp_path))
    pairs = [(args[i + 1], args[i + 2]) for i in range(0, len(args), 3)]
    assert all(args[i] == "--dev-bind" for i in range(0, len(args), 3))
    assert (str(tmp_path / "nvidia1"), "/dev/nvidia1") in pairs
    assert not [p for p in pairs if p[1] == "/dev/nvidia0"]
    assert (str(tmp_path / "nvidiactl"), "/dev/nvidiactl") in pairs
    with pytest.raises(InsituError, match="nvidia3 is missing"):
        gpu_device_args(3, dev_root=str(tmp_path))


def test_granted_gpu_is_the_only_visible_cuda_device() -> None:
    spec = SandboxSpec(limits=LIMITS)
    launcher = BwrapLauncher(spec, bwrap="/usr/bin/bwrap")
    args = launcher.arguments()
    assert "--unshare-all" in args and "--die-with-parent" in args and "--new-session" in args
    assert args[args.index("--cap-drop") + 1] == "ALL"
    assert "CUDA_VISIBLE_DEVICES" in args and not [a for a in args if a.startswith("/dev/nvidia")]
    if Path("/dev/nvidia0").exists():  # a lent GPU machine
        gpu = BwrapLauncher(SandboxSpec(limits=LIMITS, gpu=0), bwrap="/usr/bin/bwrap")
        gargs = gpu.arguments()
        assert "/dev/nvidia0" in gargs
        i = gargs.index("CUDA_VISIBLE_DEVICES")
        assert gargs[i + 1] == "0"


def test_missing_bwrap_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable) as err:
        require_bwrap()
    assert err.value.code is ErrorCode.FAILED_PRECONDITION
    assert "apt-get install bubblewrap" in err.value.detail
    assert "unsafe_unsandboxed_jobs" in err.value.detail
    with pytest.raises(SandboxUnavailable, match="unsafe_unsandboxed_serverapps"):
        require_bwrap(escape_hatch="unsafe_unsandboxed_serverapps to true in [coordinator]")
    broken = tmp_path / "bwrap"
    broken.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\n"
                      "exit 1\n")
    broken.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="cannot create a sandbox"):
        require_bwrap(str(broken))


def test_requests_are_granted_within_the_site_limits_or_refused_naming_the_limit() -> None:
    want = parse_request({"memory_mb": 512, "message_timeout_s": 5.5, "gpu": True}, where="w")
    assert LIMITS.grant(want).memory_mb == 512 and LIMITS.grant(want).cpu_seconds == 30
    with pytest.raises(InsituError, match="memory_mb 4096 > site limit 1024") as err:
        LIMITS.grant(ResourceRequest({"memory_mb": 4096}))
    assert err.value.code is ErrorCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(("raw", "needle"), [
    ({"memory": 1}, "unknown resource"),
    ({"memory_mb": "lots"}, "resources.memory_mb must be an integer"),
    ({"memory_mb": True}, "resources.memory_mb must be an integer"),
    ({"cpu_seconds": 0}, "resources.cpu_seconds must be > 0"),
    ({"message_timeout_s": float("inf")}, "message_timeout_s must be > 0"),
    ({"gpu": "yes"}, "resources.gpu must be true/false"),
    ([1, 2], "must be a table"),
])
def test_malformed_resource_requests_are_refused_naming_the_field(
    raw: object, needle: str
) -> None:
    with pytest.raises(InsituError, match=needle):
        parse_request(raw, where="app/pyproject.toml")


def test_kernel_tunables_nested_namespaces_and_the_root_are_out_of_reach() -> None:
    out = _run(BwrapLauncher(SandboxSpec(limits=LIMITS), bwrap=require_bwrap()), """
import os, subprocess
def t(name, fn):
    try:
        fn(); print(name, "OK")
    except Exception as e:
        print(name, "blocked", type(e).__name__)
t("sysctl", lambda: open("/proc/sys/vm/swappiness", "w").write("60"))
t("userns", lambda: subprocess.run(["unshare", "-Ur", "true"], check=True, capture_output=True))
t("root", lambda: open("/big", "w").write("x"))
t("dev", lambda: open("/dev/big", "w").write("x"))
t("shm", lambda: open("/dev/shm/big", "wb").write(b"0" * (16 * 1024 * 1024)))
t("devnull", lambda: open("/dev/null", "w").write("x"))
""")
    results = dict(line.split(" ", 1) for line in out.splitlines())
    assert results["devnull"] == "OK"
    for name in ("sysctl", "userns", "root", "dev", "shm"):
        assert results[name].startswith("blocked"), (name, out)


def test_frames_over_their_limit_are_refused_from_the_header() -> None:
    import io
    import struct

    from site_node.training.protocol import FrameKind, read_frame

    header = struct.pack(">IB", 2**31, FrameKind.STATE)  # claims 2 GiB, sends nothing
    with pytest.raises(InsituError, match="STATE frame of 2147483648 bytes") as err:
        read_frame(io.BytesIO(header), lambda kind: 1024)
    assert err.value.code is ErrorCode.RESOURCE_EXHAUSTED


def test_a_runtime_installed_under_tmp_is_still_visible(tmp_path: Path) -> None:
    # CI clones into a temporary folder: the venv and packages then live under /tmp,
    # which the sandbox also mounts as its own /tmp.
    runtime = tmp_path / "venv-like"
    runtime.mkdir()
    (runtime / "marker.txt").write_text("here")
    spec = SandboxSpec(limits=LIMITS, ro={runtime: str(runtime)})
    out = _run(BwrapLauncher(spec, bwrap=require_bwrap()), f"""
print(open({str(runtime / 'marker.txt')!r}).read())
open('/tmp/scratch-file', 'w').write('x')
print('tmp writable')
""")
    assert out.splitlines() == ["here", "tmp writable"]
