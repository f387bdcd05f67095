"""Run untrusted job code inside a bubblewrap (``bwrap``) sandbox.

A :class:`SandboxSpec` says what one job process may see; :class:`BwrapLauncher` turns it
into a command line (``prlimit`` for the rlimits, then ``bwrap``) and an environment. The
sandbox has:

- every namespace unshared (user, mount, pid, net, ipc, uts, cgroup): **no network at
  all**, not even loopback to the host;
- an unprivileged uid/gid (65534) inside, no capabilities, a new session, and it dies
  with its parent (``--die-with-parent``; the pid namespace ends with its init);
- read-only: the Python runtime (interpreter, venv, insitu's own packages, system
  libraries) and what the spec lists (the job's unpacked app, the granted dataset files);
- writable: size-bounded tmpfs mounts at ``/scratch`` (``HOME``), ``/tmp`` (``TMPDIR``) and
  ``/dev/shm``, each at most ``scratch_mb``, gone when the sandbox exits; the rest of the
  sandbox's root and ``/dev`` are read-only;
- nothing else of the host: no site directory, keys, approvals, audit or ledger files;
- only the environment the spec gives (``--clearenv``);
- a GPU only when granted: that one ``/dev/nvidia<N>`` node plus the control nodes, and
  ``CUDA_VISIBLE_DEVICES`` naming it.

What it does not do: it does not limit GPU memory, and the process limit (RLIMIT_NPROC)
is not enforced by the kernel for a site daemon running as root.

Example::

    launcher = BwrapLauncher(SandboxSpec(ro={app_dir: "/app"}, limits=limits, env=env),
                             bwrap=require_bwrap())
    proc = subprocess.Popen(launcher.command([sys.executable, "-m", "worker"]),
                            env=launcher.env, cwd=launcher.cwd, ...)
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from insitu.errors import ErrorCode, InsituError
from insitu.sandbox.limits import Limits, rlimit_command

__all__ = [
    "INSIDE_UID",
    "SCRATCH",
    "BwrapLauncher",
    "HostLauncher",
    "Launcher",
    "SandboxSpec",
    "SandboxUnavailable",
    "find_bwrap",
    "gpu_device_args",
    "launcher_for",
    "require_bwrap",
    "runtime_paths",
    "sandbox_env",
]

INSIDE_UID: Final = 65534
SCRATCH: Final = "/scratch"
# Host paths the runtime needs besides Python itself: shared libraries and the dynamic
# linker's cache. /etc as a whole stays out (it holds host names, users, secrets).
_SYSTEM_RO: Final = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
_ETC_RO: Final = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime")
_GPU_CONTROL_NODES: Final = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
SITE_ESCAPE_HATCH: Final = "unsafe_unsandboxed_jobs to true in site.toml"


def _fix(escape_hatch: str) -> str:
    return ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; `make venv` does "
            f"it), or, to run job code unsandboxed, set {escape_hatch} (audited)")


# The whole environment of a sandboxed process; nothing of the caller's is inherited but
# thread-pool sizes, and the driver's library path when a GPU is granted.
_BASE_ENV: Final = {
    "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
}
_THREAD_VARS: Final = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_GPU_VARS: Final = ("LD_LIBRARY_PATH",)


def sandbox_env(caller_env: Mapping[str, str], *, gpu: bool = False) -> dict[str, str]:
    """The allow-listed environment of a sandboxed job process."""
    env = dict(_BASE_ENV)
    keep = _THREAD_VARS + (_GPU_VARS if gpu else ())
    env.update({k: caller_env[k] for k in keep if k in caller_env})
    return env


class SandboxUnavailable(InsituError):
    """bubblewrap is missing or cannot create the sandbox here; the text names the fix."""

    code = ErrorCode.FAILED_PRECONDITION


@dataclass(frozen=True)
class SandboxSpec:
    """What one sandboxed process may see and use.

    ``ro`` maps host paths to paths inside (read-only binds); ``env`` is the whole
    environment inside; ``gpu`` is the granted device index, or None for no GPU.
    """

    limits: Limits
    ro: Mapping[Path, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    gpu: int | None = None
    cwd: str = SCRATCH


class Launcher(Protocol):
    """How a supervisor starts one job process: the command (limits applied), its
    environment and working directory, and where a host path appears to the process."""

    @property
    def sandboxed(self) -> bool: ...

    @property
    def env(self) -> dict[str, str]: ...

    @property
    def cwd(self) -> str: ...

    @property
    def limits(self) -> Limits: ...

    def command(self, argv: Sequence[str]) -> list[str]: ...

    def inside(self, host_path: Path) -> str: ...


def find_bwrap() -> str | None:
    """The ``bwrap`` executable on PATH, or None."""
    return shutil.which("bwrap")


_WORKING: set[str] = set()  # bwrap paths that built a sandbox (a failure is retried)


def _probe(bwrap: str) -> str | None:
    """None when ``bwrap`` can build the sandbox this module uses, else why not."""
    if bwrap in _WORKING:
        return None
    args = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", "--cap-drop", "ALL",
            "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID), "--proc", "/proc",
            "--dev", "/dev", *_system_args(), "--", "/bin/true"]
    try:
        done = subprocess.run(args, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{type(err).__name__}"
    if done.returncode != 0:
        return done.stderr.decode("utf-8", "replace").strip()[:300] or f"exit {done.returncode}"
    _WORKING.add(bwrap)
    return None


def require_bwrap(bwrap: str | None = None, *, escape_hatch: str = SITE_ESCAPE_HATCH) -> str:
    """The path of a working ``bwrap``, or :class:`SandboxUnavailable` naming the fix
    (installing bubblewrap, or the caller's ``escape_hatch`` setting)."""
    path = bwrap or find_bwrap()
    if path is None:
        raise SandboxUnavailable(
            detail=f"job sandbox unavailable: bwrap is not on PATH; {_fix(escape_hatch)}"
        )
    why = _probe(path)
    if why is not None:
        raise SandboxUnavailable(
            detail=f"job sandbox unavailable: {path} cannot create a sandbox ({why}); "
            f"{_fix(escape_hatch)}"
        )
    return path


# Kernel tunables and triggers under /proc. A daemon running as root maps the sandbox's uid
# to host root, and bwrap leaves these writable then; they are made read-only.
_PROC_READ_ONLY: Final = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus",
                          "/proc/fs")


def _proc_read_only_args() -> list[str]:
    args: list[str] = []
    for p in _PROC_READ_ONLY:
        if os.path.exists(p):
            args += ["--ro-bind", p, p]
    return args


def _system_args() -> list[str]:
    args: list[str] = []
    for p in _SYSTEM_RO:
        if os.path.islink(p):  # merged /usr: /lib -> usr/lib
            args += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            args += ["--ro-bind", p, p]
    for p in _ETC_RO:
        if os.path.exists(p):
            args += ["--ro-bind", p, p]
    return args


@functools.cache
def runtime_paths() -> tuple[Path, ...]:
    """Host directories the job's Python needs read-only: the interpreter's prefix, the
    venv, and the directories of insitu's own packages when installed in editable mode
    (only those package directories, never the checkout around them)."""
    paths: list[Path] = [Path(sys.base_prefix), Path(sys.prefix)]
    for pkg in ("insitu", "site_node", "coordinator"):
        spec = importlib.util.find_spec(pkg)
        if spec is not None and spec.submodule_search_locations:
            paths += [Path(p) for p in spec.submodule_search_locations]
    exe = Path(sys.executable)
    paths.append(exe.resolve().parent)
    out: list[Path] = []
    for p in sorted({p.resolve() for p in paths}, key=lambda p: len(p.parts)):
        if not any(p.is_relative_to(q) for q in out) and not p.is_relative_to("/usr"):
            out.append(p)
    return tuple(out)


def gpu_device_args(index: int, dev_root: str = "/dev") -> list[str]:
    """The bwrap arguments that expose GPU ``index`` (and only it) to the sandbox: its
    ``/dev/nvidia<index>`` node plus the driver's control nodes that exist. Raises
    FAILED_PRECONDITION if the device node is missing."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise InsituError(ErrorCode.CONFIG, f"GPU index must be an integer >= 0, got {index!r}")
    node = f"{dev_root}/nvidia{index}"
    if not os.path.exists(node):
        raise InsituError(
            ErrorCode.FAILED_PRECONDITION, f"GPU {index} granted but {node} is missing"
        )
    args = ["--dev-bind", node, f"/dev/nvidia{index}"]
    for name in _GPU_CONTROL_NODES:
        if os.path.exists(f"{dev_root}/{name}"):
            args += ["--dev-bind", f"{dev_root}/{name}", f"/dev/{name}"]
    for caps in sorted(glob.glob(f"{dev_root}/nvidia-caps/*")):
        args += ["--dev-bind", caps, "/dev/nvidia-caps/" + os.path.basename(caps)]
    # The driver reads its version and the GPUs' bus info from /proc/driver/nvidia.
    return args


class BwrapLauncher:
    """Starts a process inside the bubblewrap sandbox that ``spec`` describes."""

    sandboxed = True

    def __init__(self, spec: SandboxSpec, *, bwrap: str) -> None:
        self.spec = spec
        self._bwrap = bwrap
        env = dict(spec.env)
        env.update({"HOME": SCRATCH, "TMPDIR": "/tmp", "USER": "insitu-job",  # noqa: S108
                    "LOGNAME": "insitu-job"})
        if spec.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = "0"  # the only device node inside is the granted one
            env["NVIDIA_VISIBLE_DEVICES"] = str(spec.gpu)
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""
        self._env = env

    @property
    def env(self) -> dict[str, str]:
        # bwrap itself gets no environment; the job's comes from --setenv after --clearenv.
        return {"PATH": "/usr/bin:/bin"}

    @property
    def cwd(self) -> str:
        return "/"

    @property
    def limits(self) -> Limits:
        return self.spec.limits

    def inside(self, host_path: Path) -> str:
        host = Path(host_path).resolve()
        for src, dst in self.spec.ro.items():
            src = Path(src).resolve()
            if host == src:
                return dst
            if host.is_relative_to(src):
                return f"{dst}/{host.relative_to(src).as_posix()}"
        raise InsituError(ErrorCode.INTERNAL, "path is not mounted in the sandbox")

    def arguments(self) -> list[str]:
        """The bwrap options (without the command)."""
        spec = self.spec
        size = str(spec.limits.scratch_mb * 1024 * 1024)
        args = [
            # --unshare-user as well: --disable-userns needs it (no nested user namespaces,
            # the usual door to kernel attack surface).
            "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", "--cap-drop", "ALL",
            "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID), "--hostname", "insitu-job",
            "--proc", "/proc", "--dev", "/dev",
            *_proc_read_only_args(),
            # /tmp first: a runtime installed under /tmp is bound on top of it.
            "--size", size, "--tmpfs", "/tmp",  # noqa: S108
            *_system_args(),
        ]
        for path in runtime_paths():
            args += ["--ro-bind", str(path), str(path)]
        for src, dst in spec.ro.items():
            args += ["--ro-bind", str(Path(src).resolve()), dst]
        if spec.gpu is not None:
            args += gpu_device_args(spec.gpu)
            if os.path.isdir("/proc/driver/nvidia"):
                args += ["--ro-bind", "/proc/driver/nvidia", "/proc/driver/nvidia"]
            if os.path.isdir("/sys"):  # the CUDA driver reads PCI topology from sysfs
                args += ["--ro-bind", "/sys", "/sys"]
        # All the job can write: bounded tmpfs mounts at /scratch, /tmp and /dev/shm (each
        # at most scratch_mb); the sandbox's root and /dev are remounted read-only last.
        args += ["--size", size, "--tmpfs", SCRATCH,
                 "--size", size, "--tmpfs", "/dev/shm",  # noqa: S108
                 "--remount-ro", "/dev", "--remount-ro", "/"]
        args += ["--chdir", spec.cwd, "--clearenv"]
        for key, value in sorted(self._env.items()):
            args += ["--setenv", key, value]
        return args

    def command(self, argv: Sequence[str]) -> list[str]:
        return rlimit_command(self.spec.limits, [self._bwrap, *self.arguments(), "--", *argv])


def launcher_for(
    spec: SandboxSpec, *, unsafe: bool, host_cwd: Path, escape_hatch: str = SITE_ESCAPE_HATCH
) -> Launcher:
    """The bubblewrap sandbox ``spec`` describes (SandboxUnavailable, naming the fix and
    ``escape_hatch``, when it cannot be built); only when ``unsafe`` is set, a plain process
    with the same limits and environment instead, working in ``host_cwd``."""
    if unsafe:
        return HostLauncher(spec.limits, spec.env, host_cwd)
    return BwrapLauncher(spec, bwrap=require_bwrap(escape_hatch=escape_hatch))


class HostLauncher:
    """No sandbox: the process runs as the daemon's user with its filesystem and network.
    Only for ``unsafe_unsandboxed_jobs``; rlimits still apply."""

    sandboxed = False

    def __init__(self, limits: Limits, env: Mapping[str, str], cwd: Path) -> None:
        self._limits = limits
        self._env = dict(env)
        self._cwd = str(cwd)

    @property
    def env(self) -> dict[str, str]:
        return dict(self._env)

    @property
    def cwd(self) -> str:
        return self._cwd

    @property
    def limits(self) -> Limits:
        return self._limits

    def inside(self, host_path: Path) -> str:
        return str(Path(host_path).resolve())

    def command(self, argv: Sequence[str]) -> list[str]:
        return rlimit_command(self._limits, argv)
