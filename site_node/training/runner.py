"""Run one job's ClientApp in a supervised worker process, behind the site's message mods.

The site daemon holds keys, so job code never runs inside it. For each approved job it
keeps one :class:`ClientAppRunner`, whose worker process a :class:`insitu.sandbox.Launcher`
starts (the site uses a bubblewrap sandbox; a plain child process only for
``unsafe_unsandboxed_jobs`` and this module's own tests). Each task message the coordinator
sends (a serialized Flower ``Message``) goes through :meth:`ClientAppRunner.handle` (or
:meth:`ClientAppRunner.run` for a decoded one), which

1. refuses message types other than ``train``/``evaluate``/``query`` (and their
   ``.<action>`` forms) and messages addressed to another run or node, *before* they
   reach the worker;
2. calls the audit callback for every message in and out (if it raises, the message is
   not processed: fail closed);
3. hands the message to the worker and waits at most ``timeout_s`` for its reply,
   killing the worker on timeout; a crashed worker is restarted for the next message,
   with the run's ``context.state`` as it was after the last successful message;
4. checks the reply really answers the request, parsing it once
   (:class:`site_node.training.reply.ParsedReply`); the daemon's egress contract and DP
   step read that value.

Example::

    runner = ClientAppRunner(layout.directory, layout.clientapp,
                             build_node_config(0, 3, "bcw", "/data/bcw.csv"),
                             run_id=7, node_id=node_id, run_config=layout.run_config({}),
                             on_message=audit_message)
    reply_bytes = runner.handle(task_bytes)
    runner.close()
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Final, Literal

from flwr.app import Error, Message, UserConfig, UserConfigValue
from flwr.common.constant import ErrorCode as FlowerErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from google.protobuf.message import DecodeError

from insitu.errors import ErrorCode, InsituError
from insitu.sandbox import HostLauncher, Launcher, Limits
from site_node.training.protocol import (
    FrameKind,
    decode_json,
    encode_json,
    read_frame,
    write_frame,
)
from site_node.training.reply import ParsedReply

__all__ = [
    "ALLOWED_CATEGORIES",
    "AuditCallback",
    "ClientAppRunner",
    "build_node_config",
    "error_reply",
    "message_type_allowed",
    "worker_env",
]

log = logging.getLogger(__name__)

Direction = Literal["in", "out"]
AuditCallback = Callable[[Direction, str, int, bool], None]
"""``on_message(direction, message_type, size_bytes, ok)``: ``ok`` is False for a refused
incoming message and for a reply that carries an error."""

ALLOWED_CATEGORIES: Final = frozenset({"train", "evaluate", "query"})
# Limits of an unsandboxed runner built without a launcher (the runner's unit tests).
DEFAULT_LIMITS: Final = Limits(memory_mb=16_384, cpu_seconds=86_400, processes=4096,
                               open_files=4096, scratch_mb=1024, message_timeout_s=600.0)
MAX_REPLY_BYTES: Final = 2 * 1024**3 - 1
# Variables a job legitimately needs (toolchain, locale, GPU selection, thread pools).
# Everything else stays out: the daemon's environment may hold tokens.
_ENV_ALLOW: Final = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "LD_LIBRARY_PATH",
                     "PYTHONPATH", "VIRTUAL_ENV", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_ENV_ALLOW_PREFIXES: Final = ("CUDA_", "NVIDIA_", "CUBLAS_", "PYTORCH_")


def message_type_allowed(message_type: str, allowed: frozenset[str] = ALLOWED_CATEGORIES) -> bool:
    """``<category>`` or ``<category>.<action>``, with an allowed category and an identifier
    action (Flower's own grammar, minus its system messages)."""
    category, dot, action = message_type.partition(".")
    if category not in allowed:
        return False
    return not dot or (action.isidentifier() and "." not in action)


def build_node_config(
    partition_id: int,
    num_partitions: int,
    dataset_name: str,
    dataset_path: str | Path,
    *,
    device: str | None = None,
    extra: Mapping[str, UserConfigValue] | None = None,
) -> UserConfig:
    """The ``node_config`` a job's ClientApp sees.

    Flower's simulation keys ``partition-id``/``num-partitions`` (quickstart apps read
    them) and insitu's ``dataset-name``/``dataset-path`` (a local path: rows never travel
    in a Message). ``device`` is left to the worker (``cuda`` when torch sees a GPU, else
    ``cpu``) unless given, so the daemon never has to import torch.
    """
    config: UserConfig = dict(extra or {})
    config.update({
        "partition-id": partition_id,
        "num-partitions": num_partitions,
        "dataset-name": dataset_name,
        "dataset-path": str(dataset_path),
    })
    if device is not None:
        config["device"] = device
    _check_node_config(config)
    return config


def _check_node_config(config: Mapping[str, UserConfigValue]) -> None:
    pid, count = config.get("partition-id"), config.get("num-partitions")
    if not isinstance(pid, int) or not isinstance(count, int) or isinstance(pid, bool):
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT,
            "node_config needs integer 'partition-id' and 'num-partitions'",
        )
    if not 0 <= pid < count:
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, f"partition-id {pid} is outside [0, {count})"
        )
    for key in ("dataset-name", "dataset-path", "device"):
        if key in config and not isinstance(config[key], str):
            raise InsituError(ErrorCode.INVALID_ARGUMENT, f"node_config {key!r} must be a string")


def error_reply(
    request: bytes, reason: str, code: int = FlowerErrorCode.CLIENT_APP_CRASHED
) -> bytes:
    """A Flower error reply to ``request`` (e.g. after the runner raised), so the strategy
    counts this node as failed at once instead of waiting for its timeout."""
    message = message_from_proto(ProtoMessage.FromString(request))
    reply = message_to_proto(Message(Error(code=code, reason=reason), reply_to=message))
    return reply.SerializeToString()


MAX_STATE_BYTES: Final = 64 * 1024 * 1024  # context.state; it never leaves the site
_MAX_CONTROL_BYTES: Final = 1024 * 1024  # READY, ERROR
MAX_LOG_BYTES: Final = 16 * 1024 * 1024  # of a worker's stderr relayed to the site log


class _Worker:
    """One worker process plus the threads that read its stdout frames and stderr log.

    The worker is untrusted: each frame's size is checked from its header before it is
    read, at most two frames wait unread (the worker then blocks on its pipe), and its
    stderr is read in bounded chunks, up to ``MAX_LOG_BYTES``.
    """

    def __init__(
        self, argv: list[str], launcher: Launcher, tag: str, max_reply_bytes: int
    ) -> None:
        self._max_reply_bytes = max_reply_bytes
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=launcher.env, cwd=launcher.cwd,
            start_new_session=True,  # own group: kill its children too
        )
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        self.stdin: IO[bytes] = self.proc.stdin
        self.frames: queue.Queue[tuple[FrameKind, bytes] | BaseException | None] = queue.Queue(
            maxsize=2
        )
        threading.Thread(target=self._read_frames, args=(self.proc.stdout,), daemon=True,
                         name=f"{tag}-frames").start()
        threading.Thread(target=self._relay_log, args=(self.proc.stderr, tag), daemon=True,
                         name=f"{tag}-log").start()

    def _limit(self, kind: FrameKind) -> int:
        if kind is FrameKind.REPLY:
            return self._max_reply_bytes
        return MAX_STATE_BYTES if kind is FrameKind.STATE else _MAX_CONTROL_BYTES

    def _read_frames(self, stream: IO[bytes]) -> None:
        try:
            while (frame := read_frame(stream, self._limit)) is not None:  # type: ignore[arg-type]
                self.frames.put(frame)
        except BaseException as err:  # surfaced to the waiting caller, never lost
            self.frames.put(err)
        self.frames.put(None)

    @staticmethod
    def _relay_log(stream: IO[bytes], tag: str) -> None:
        # Job output stays in the site's own log; it never leaves the site. Read in
        # chunks (a line without an end must not grow without bound), up to a total.
        relayed = 0
        while chunk := stream.read1(4096):  # type: ignore[attr-defined]
            if relayed >= MAX_LOG_BYTES:
                continue  # drain and drop: the worker must not block on a full pipe
            relayed += len(chunk)
            for line in chunk.decode("utf-8", "replace").splitlines():
                log.info("[%s] %s", tag, line.rstrip())
            if relayed >= MAX_LOG_BYTES:
                log.warning("[%s] log output past %d bytes is dropped", tag, MAX_LOG_BYTES)

    def send(self, frame: bytes) -> None:
        self.stdin.write(frame)
        self.stdin.flush()

    def send_frame(self, kind: FrameKind, payload: bytes) -> None:
        write_frame(self.stdin, kind, payload)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def close(self, grace_s: float) -> None:
        try:
            self.stdin.close()  # EOF: the worker's loop ends cleanly
            self.proc.wait(timeout=grace_s)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class ClientAppRunner:
    """Supervises the worker process of one job's ClientApp at this site."""

    def __init__(
        self,
        app_dir: Path,
        clientapp_ref: str,
        node_config: Mapping[str, UserConfigValue],
        run_id: int,
        node_id: int,
        *,
        run_config: Mapping[str, UserConfigValue] | None = None,
        timeout_s: float | None = None,
        startup_timeout_s: float = 120.0,
        on_message: AuditCallback | None = None,
        allowed_categories: frozenset[str] = ALLOWED_CATEGORIES,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        launcher: Launcher | None = None,
    ) -> None:
        _check_node_config(node_config)
        if not allowed_categories <= ALLOWED_CATEGORIES:
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT,
                f"allowed categories must be among {sorted(ALLOWED_CATEGORIES)}",
            )
        self.app_dir = Path(app_dir).resolve()
        self.clientapp_ref = clientapp_ref
        self.node_config: UserConfig = dict(node_config)
        self.run_config: UserConfig = dict(run_config or {})
        self.run_id = run_id
        self.node_id = node_id
        self.timeout_s = timeout_s if timeout_s is not None else (
            launcher.limits.message_timeout_s if launcher is not None else 600.0
        )
        self.startup_timeout_s = startup_timeout_s
        self.on_message = on_message
        self.allowed_categories = allowed_categories
        self.max_reply_bytes = max_reply_bytes
        # Where the worker runs: a bubblewrap sandbox (the site's default) or, only for
        # unsafe_unsandboxed_jobs and the runner's own unit tests, a plain child process.
        self.launcher: Launcher = launcher or HostLauncher(
            DEFAULT_LIMITS, worker_env(), self.app_dir
        )
        self._argv = self.launcher.command(
            [sys.executable, "-m", "site_node.training.worker"]
        )
        self._worker: _Worker | None = None
        self._starting: _Worker | None = None
        self._state: bytes | None = None  # context.state after the last good message
        self._lock = threading.Lock()
        self._closed = False
        self.starts = 0

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> ClientAppRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The live worker's pid, if one runs."""
        worker = self._worker
        return worker.proc.pid if worker is not None and worker.alive() else None

    def start(self) -> None:
        """Start the worker now (``handle`` starts it on demand otherwise)."""
        with self._lock:
            self._ensure_worker()

    def close(self, grace_s: float = 5.0) -> None:
        """Stop the worker; the runner refuses messages afterwards."""
        with self._lock:
            self._closed = True
            if self._worker is not None:
                self._worker.close(grace_s)
                self._worker = None

    def abort(self) -> None:
        """Kill the worker now, even mid-message (that message then fails as UNAVAILABLE);
        the runner refuses messages afterwards. :meth:`close` still reaps it."""
        self._closed = True
        # No lock: a running message (or a starting worker) holds it.
        for worker in (self._worker, self._starting):
            if worker is not None:
                worker.kill()

    def _ensure_worker(self) -> _Worker:
        if self._closed:
            raise InsituError(
                ErrorCode.FAILED_PRECONDITION, f"runner of run {self.run_id} is closed"
            )
        if self._worker is not None and self._worker.alive():
            return self._worker
        if self._worker is not None:
            self._worker.kill()
            self._worker = None
        tag = f"job-worker run={self.run_id}"
        worker = _Worker(self._argv, self.launcher, tag, self.max_reply_bytes)
        self._starting = worker  # abort() reaches it before it is READY
        if self._closed:  # aborted just now: the frame wait below then ends at once
            worker.kill()
        self.starts += 1
        init = {
            "app_dir": self.launcher.inside(self.app_dir), "clientapp": self.clientapp_ref,
            "node_config": self.node_config, "run_config": self.run_config,
            "run_id": self.run_id, "node_id": self.node_id,
        }
        try:
            worker.send(encode_json(FrameKind.INIT, init))
            kind, payload = self._next_frame(worker, self.startup_timeout_s, "start")
            if kind is FrameKind.ERROR:
                raise _worker_error(payload, "starting the ClientApp")
            if kind is not FrameKind.READY:
                raise InsituError(ErrorCode.INTERNAL, f"worker sent {kind.name} instead of READY")
            if self._state is not None:
                worker.send_frame(FrameKind.STATE, self._state)
        except BaseException:
            worker.kill()
            raise
        finally:
            self._starting = None
        self._worker = worker
        if self._closed:  # aborted while it started
            worker.kill()
            raise InsituError(
                ErrorCode.FAILED_PRECONDITION, f"runner of run {self.run_id} is closed"
            )
        return worker

    def _next_frame(self, worker: _Worker, timeout_s: float, what: str) -> tuple[FrameKind, bytes]:
        try:
            item = worker.frames.get(timeout=timeout_s)
        except queue.Empty:
            worker.kill()
            raise InsituError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"ClientApp of run {self.run_id} did not answer {what} within {timeout_s:g} s; "
                "worker killed",
            ) from None
        if isinstance(item, BaseException):
            worker.kill()
            raise InsituError(ErrorCode.INTERNAL, f"bad frame from worker during {what}: {item}")
        if item is None:
            code = worker.proc.wait()
            if code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):  # bwrap reports 128 + signal
                raise InsituError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"ClientApp worker of run {self.run_id} exceeded its CPU time limit",
                )
            raise InsituError(
                ErrorCode.UNAVAILABLE,
                f"ClientApp worker of run {self.run_id} exited with code {code} during {what}",
            )
        return item

    # -- messages --------------------------------------------------------------------

    def _audit(self, direction: Direction, message_type: str, size: int, ok: bool) -> None:
        if self.on_message is not None:
            self.on_message(direction, message_type, size, ok)

    def _admit(self, request: ProtoMessage, size: int) -> None:
        meta = request.metadata
        reason = None
        if not message_type_allowed(meta.message_type, self.allowed_categories):
            reason = (ErrorCode.PERMISSION_DENIED,
                      f"message type {meta.message_type!r} is not allowed at this site")
        elif meta.run_id != self.run_id or meta.dst_node_id != self.node_id:
            reason = (ErrorCode.PERMISSION_DENIED,
                      f"message for run {meta.run_id} node {meta.dst_node_id} reached the "
                      f"runner of run {self.run_id} node {self.node_id}")
        elif meta.reply_to_message_id or not meta.message_id or request.HasField("error"):
            reason = (ErrorCode.INVALID_ARGUMENT, "task is not an instruction message")
        if reason is not None:
            self._audit("in", meta.message_type, size, False)
            raise InsituError(*reason)
        self._audit("in", meta.message_type, size, True)

    def handle(self, message: bytes) -> bytes:
        """Run one task message through the ClientApp; return the reply's proto bytes.

        Raises :class:`InsituError`: PERMISSION_DENIED (refused type, run or node),
        INVALID_ARGUMENT (not a Flower instruction message), DEADLINE_EXCEEDED (worker
        killed after ``timeout_s``), UNAVAILABLE (worker crashed; the next call restarts
        it), RESOURCE_EXHAUSTED (a sandbox limit ended the worker, or the reply is over
        ``max_reply_bytes``), INTEGRITY (the reply does not answer the request), or the
        worker's own error (e.g. the app fails to load). A ClientApp that *raises* yields
        a normal Flower error reply, as in Flower.
        """
        try:
            request = ProtoMessage.FromString(message)
        except DecodeError:
            self._audit("in", "<undecodable>", len(message), False)
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "task is not a Flower message") from None
        return self.run(request, message).raw

    def run(self, request: ProtoMessage, data: bytes | None = None) -> ParsedReply:
        """As :meth:`handle`, for an instruction already decoded (``data`` its bytes, if
        the caller has them); returns the reply parsed once."""
        with self._lock:
            self._admit(request, len(data) if data is not None else request.ByteSize())
            meta = request.metadata
            what = f"{meta.message_type} message {meta.message_id}"
            worker = self._ensure_worker()
            if not worker.frames.empty() and worker.alive():
                # Frames nobody asked for: a protocol violation. Start afresh.
                log.warning("ClientApp worker of run %s sent frames unasked; restarted",
                            self.run_id)
                worker.kill()
                self._worker = None
                worker = self._ensure_worker()
            payload_in = data if data is not None else request.SerializeToString()
            # If it died, the write fails; the frame reader then reports how it ended.
            with contextlib.suppress(OSError):
                worker.send_frame(FrameKind.REQUEST, payload_in)
            deadline = time.monotonic() + self.timeout_s
            state: bytes | None = None
            while True:
                remaining = max(0.0, deadline - time.monotonic())
                kind, payload = self._next_frame(worker, remaining, what)
                if kind is FrameKind.STATE:
                    state = payload
                elif kind is FrameKind.REPLY:
                    break
                elif kind is FrameKind.ERROR:
                    err = _worker_error(payload, what)
                    if err.code is ErrorCode.RESOURCE_EXHAUSTED:
                        worker.kill()  # a limit ends the worker; the next message restarts it
                    raise err
                else:
                    worker.kill()
                    raise InsituError(ErrorCode.INTERNAL, f"worker sent {kind.name} during {what}")
            reply = self._check_reply(request, payload)
            if state is not None:
                self._state = state
            self._audit("out", meta.message_type, len(payload), reply.error_code is None)
            return reply

    def _check_reply(self, request: ProtoMessage, data: bytes) -> ParsedReply:
        if len(data) > self.max_reply_bytes:
            raise InsituError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"reply of {len(data)} bytes exceeds the site's limit of {self.max_reply_bytes}",
            )
        reply = ParsedReply.parse(data)
        want, got = request.metadata, reply.metadata
        mismatches = [
            name for name, ok in (
                ("reply_to_message_id", got.reply_to_message_id == want.message_id),
                ("run_id", got.run_id == want.run_id),
                ("src_node_id", got.src_node_id == self.node_id),
                ("dst_node_id", got.dst_node_id == want.src_node_id),
                ("message_type", got.message_type == want.message_type),
            ) if not ok
        ]
        if mismatches:
            raise InsituError(
                ErrorCode.INTEGRITY,
                f"ClientApp reply does not answer message {want.message_id}: "
                f"{', '.join(mismatches)} differ",
            )
        return reply


def _worker_error(payload: bytes, what: str) -> InsituError:
    try:
        body = decode_json(payload)
        code = ErrorCode(body["code"])
        detail = str(body["detail"])
    except (ValueError, KeyError, TypeError):
        return InsituError(ErrorCode.INTERNAL, f"worker failed during {what}")
    return InsituError(code, f"{detail} (during {what})")


def worker_env() -> dict[str, str]:
    """The default environment of a job worker: an allowlisted subset of this process's."""
    # Reading the daemon's environment here only to *filter* it for the child.
    env = {
        key: value for key, value in os.environ.items()
        if key in _ENV_ALLOW or key.startswith(_ENV_ALLOW_PREFIXES)
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env
