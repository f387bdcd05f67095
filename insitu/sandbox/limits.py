"""Resource limits for one sandboxed job process: what a site allows, what a job asks for.

A site states ceilings (``site.toml``); a job's app may request less (``[tool.insitu.resources]``
in its ``pyproject.toml``, covered by the code hash the site approves). The limits a worker
runs under are the request where given, else the site's ceiling; a request above a ceiling
is refused, naming the limit.

Example::

    site = Limits(memory_mb=8192, cpu_seconds=3600, processes=64, open_files=512,
                  scratch_mb=1024, message_timeout_s=600.0)
    want = parse_request({"memory_mb": 2048}, where="app pyproject.toml")
    limits = site.grant(want)        # memory 2048 MB, the rest the site's ceilings
"""

from __future__ import annotations

import dataclasses
import math
import resource
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from insitu.errors import ErrorCode, InsituError

__all__ = [
    "LIMIT_FIELDS",
    "Limits",
    "ResourceRequest",
    "apply_rlimits",
    "parse_request",
    "rlimit_command",
]


@dataclass(frozen=True)
class Limits:
    """Hard limits for one job worker. Every field is > 0."""

    # Private writable memory of each process in the sandbox (RLIMIT_DATA). Not RLIMIT_AS:
    # CUDA reserves far more address space than it uses, so an AS limit breaks GPU jobs.
    memory_mb: int
    cpu_seconds: int  # CPU time per process (RLIMIT_CPU): SIGXCPU/SIGKILL past it
    processes: int  # RLIMIT_NPROC (enforced by the kernel for a non-root site user)
    open_files: int  # RLIMIT_NOFILE
    scratch_mb: int  # size of the private, wiped scratch directory (a tmpfs)
    message_timeout_s: float  # wall time per message; the runner kills the worker past it

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InsituError(ErrorCode.CONFIG, f"limit {f.name} must be a number")
            if not math.isfinite(value) or value <= 0:
                raise InsituError(ErrorCode.CONFIG, f"limit {f.name} must be > 0, got {value}")

    def grant(self, request: ResourceRequest) -> Limits:
        """The limits for a job that asked for ``request``; raises RESOURCE_EXHAUSTED naming
        every limit the request exceeds."""
        over = [
            f"{name} {asked:g} > site limit {getattr(self, name):g}"
            for name, asked in request.asked.items()
            if asked > getattr(self, name)
        ]
        if over:
            raise InsituError(
                ErrorCode.RESOURCE_EXHAUSTED, "job requests more than this site allows: "
                + "; ".join(over)
            )
        return dataclasses.replace(self, **request.asked)  # type: ignore[arg-type]


LIMIT_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Limits))


@dataclass(frozen=True)
class ResourceRequest:
    """What a job's app asks for: a subset of the limit fields, plus whether it wants a GPU."""

    asked: Mapping[str, int | float] = dataclasses.field(default_factory=dict)
    gpu: bool = False

    def describe(self) -> str:
        parts = [f"{k}={v:g}" for k, v in sorted(self.asked.items())]
        parts.append(f"gpu={'yes' if self.gpu else 'no'}")
        return ", ".join(parts)


def parse_request(raw: object, *, where: str) -> ResourceRequest:
    """Parse ``[tool.insitu.resources]``; errors name ``where`` and the field."""
    if raw is None:
        return ResourceRequest()
    if not isinstance(raw, Mapping):
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"{where}: resources must be a table")
    unknown = set(raw) - set(LIMIT_FIELDS) - {"gpu"}
    if unknown:
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT,
            f"{where}: unknown resource(s) {sorted(unknown)}; known: "
            f"{sorted((*LIMIT_FIELDS, 'gpu'))}",
        )
    asked: dict[str, int | float] = {}
    for name in LIMIT_FIELDS:
        if name not in raw:
            continue
        value = raw[name]
        integral = name != "message_timeout_s"
        if isinstance(value, bool) or not isinstance(value, int if integral else int | float):
            kind = "an integer" if integral else "a number"
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT, f"{where}: resources.{name} must be {kind}"
            )
        if not math.isfinite(value) or value <= 0:
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT, f"{where}: resources.{name} must be > 0, got {value}"
            )
        asked[name] = value
    gpu = raw.get("gpu", False)
    if not isinstance(gpu, bool):
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"{where}: resources.gpu must be true/false")
    return ResourceRequest(asked, gpu)


# Past the CPU soft limit the kernel sends SIGXCPU (a process may see it and exit); this
# much later, SIGKILL. A worker killed so is reported as over its CPU limit.
CPU_GRACE_S = 5


def _rlimit_values(limits: Limits) -> list[tuple[str, int, int, int]]:
    mem = limits.memory_mb * 1024 * 1024
    return [
        ("data", resource.RLIMIT_DATA, mem, mem),
        ("cpu", resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + CPU_GRACE_S),
        ("nproc", resource.RLIMIT_NPROC, limits.processes, limits.processes),
        ("nofile", resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        ("core", resource.RLIMIT_CORE, 0, 0),  # a core dump would write the job's memory out
    ]


def rlimit_command(limits: Limits, argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed so that it (and every process it starts) runs under ``limits``.

    util-linux ``prlimit`` sets the limits and execs; without it a short Python shim does
    the same. (A ``preexec_fn`` is not safe in the daemon: it forks with gRPC threads.)
    """
    values = _rlimit_values(limits)
    prlimit = shutil.which("prlimit")
    if prlimit is not None:
        flags = [f"--{name}={soft}:{hard}" for name, _res, soft, hard in values]
        return [prlimit, *flags, "--", *argv]
    shim = (
        "import os,resource,sys\n"
        "for r,s,h in (x.split(':') for x in sys.argv[1].split(',')):\n"
        "    resource.setrlimit(int(r),(int(s),int(h)))\n"
        "os.execv(sys.argv[2],sys.argv[2:])"
    )
    spec = ",".join(f"{res}:{soft}:{hard}" for _n, res, soft, hard in values)
    return [sys.executable, "-S", "-c", shim, spec, *argv]


def apply_rlimits(limits: Limits) -> None:
    """Set the kernel limits on the calling process (run in the child before exec: every
    process in the sandbox inherits them)."""
    for _name, res, soft, hard in _rlimit_values(limits):
        resource.setrlimit(res, (soft, hard))
