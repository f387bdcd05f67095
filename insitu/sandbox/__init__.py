"""Sandboxes for untrusted job code (site ClientApps, coordinator ServerApps).

Example::

    from insitu.sandbox import BwrapLauncher, Limits, SandboxSpec, require_bwrap

    limits = Limits(memory_mb=4096, cpu_seconds=3600, processes=64, open_files=256,
                    scratch_mb=512, message_timeout_s=600.0)
    launcher = BwrapLauncher(SandboxSpec(limits=limits, ro={app_dir: "/app"}),
                             bwrap=require_bwrap())
    argv = launcher.command([sys.executable, "-m", "site_node.training.worker"])
"""

from insitu.sandbox.bwrap import (
    INSIDE_UID,
    SCRATCH,
    BwrapLauncher,
    HostLauncher,
    Launcher,
    SandboxSpec,
    SandboxUnavailable,
    find_bwrap,
    gpu_device_args,
    launcher_for,
    require_bwrap,
    runtime_paths,
    sandbox_env,
)
from insitu.sandbox.limits import (
    LIMIT_FIELDS,
    Limits,
    ResourceRequest,
    apply_rlimits,
    parse_request,
)

__all__ = [
    "INSIDE_UID",
    "LIMIT_FIELDS",
    "SCRATCH",
    "BwrapLauncher",
    "HostLauncher",
    "Launcher",
    "Limits",
    "ResourceRequest",
    "SandboxSpec",
    "SandboxUnavailable",
    "apply_rlimits",
    "find_bwrap",
    "gpu_device_args",
    "launcher_for",
    "parse_request",
    "require_bwrap",
    "runtime_paths",
    "sandbox_env",
]
