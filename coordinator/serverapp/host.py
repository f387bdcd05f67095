"""The coordinator's side of a sandboxed ServerApp: start it, serve its Grid calls from
the job's SessionGrid, and collect the strategy's final arrays and ONNX export.

The worker is untrusted. Every Grid call is checked before it reaches a site: a message
must carry the job's run id and be addressed to one of the job's sites; a refused call is
audited (``job.serverapp_refused``) and answered with FAIL. Frames are size-checked from
their headers. The worker's stderr goes to the job's log (bounded), never to the
coordinator's own log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from flwr.app import ArrayRecord, Message
from flwr.common.serde import message_from_proto, message_to_proto, recorddict_from_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from coordinator.flower_grid import SessionGrid
from coordinator.serverapp.protocol import Kind, Op, pack_messages, unpack_messages
from insitu.errors import ErrorCode, InsituError
from insitu.sandbox import Launcher
from insitu.sandbox.frames import read_frame, write_frame

__all__ = ["MAX_LOG_BYTES", "ServerAppCancelled", "ServerAppOutcome", "run_serverapp_sandboxed"]

MAX_LOG_BYTES: Final = 16 * 1024 * 1024
_MAX_SMALL: Final = 1024 * 1024
_MAX_ONNX: Final = 1024 * 1024 * 1024

Audit = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class ServerAppOutcome:
    """What the ServerApp returned: the strategy's final arrays (None if it ran no
    strategy) and the ONNX export (empty if the app declares none)."""

    arrays: ArrayRecord | None
    onnx: bytes


class ServerAppCancelled(InsituError):
    """The job was cancelled while its ServerApp ran; the process was stopped."""

    code = ErrorCode.FAILED_PRECONDITION


class _Refused(Exception):
    pass


def _relay_log(stream: IO[bytes], path: Path) -> None:
    written = 0
    with path.open("ab") as f:
        while chunk := stream.read1(65536):  # type: ignore[attr-defined]
            if written < MAX_LOG_BYTES:
                f.write(chunk[: MAX_LOG_BYTES - written])
                f.flush()
                written += len(chunk)


class _Calls:
    """Serves one job's Grid calls, checked against the job's run id and sites."""

    def __init__(self, grid: SessionGrid, run_id: int, job_id: str, audit: Audit) -> None:
        self.grid, self.run_id, self.job_id, self.audit = grid, run_id, job_id, audit

    def _messages(self, data: bytes) -> list[Message]:
        msgs = [message_from_proto(p) for p in unpack_messages(data)]
        for m in msgs:
            if m.metadata.run_id != self.run_id:
                raise _Refused("message for another run")
            if not self.grid.has_node(m.metadata.dst_node_id):
                raise _Refused("message for a node outside the job")
            if m.metadata.reply_to_message_id:
                raise _Refused("a ServerApp sends instructions, not replies")
        return msgs

    def handle(self, op: Op, body: bytes) -> bytes:
        if op is Op.GET_NODES:
            return json.dumps(list(self.grid.get_node_ids())).encode()
        if op is Op.PUSH:
            return json.dumps(list(self.grid.push_messages(self._messages(body)))).encode()
        if op is Op.PULL:
            ids = json.loads(body)
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise _Refused("malformed pull")
            replies = self.grid.pull_messages(ids)
            return pack_messages(message_to_proto(m) for m in replies)
        if op is Op.SEND_AND_RECEIVE:
            (size,) = struct.unpack_from(">I", body)
            header = json.loads(body[4:4 + size])
            timeout = header.get("timeout")
            if timeout is not None and not isinstance(timeout, int | float):
                raise _Refused("malformed timeout")
            replies = self.grid.send_and_receive(self._messages(body[4 + size:]),
                                                 timeout=timeout)
            return pack_messages(message_to_proto(m) for m in replies)
        raise _Refused(f"unknown grid call {op}")


def run_serverapp_sandboxed(
    *,
    app_dir: Path,
    serverapp: str,
    onnx_export: str | None,
    run_id: int,
    job_id: str,
    run_config: Mapping[str, Any],
    grid: SessionGrid,
    launcher: Launcher,
    audit: Audit,
    log_path: Path,
    max_update_bytes: int,
    wall_s: float,
    cancel: threading.Event | None = None,
) -> ServerAppOutcome:
    """Run the job's ServerApp in ``launcher``'s sandbox until it finishes, at most
    ``wall_s`` seconds.

    Raises FAILED_PRECONDITION when the ServerApp fails (its traceback is in
    ``log_path``), DEADLINE_EXCEEDED past ``wall_s``, :class:`ServerAppCancelled` once
    ``cancel`` is set (the process is killed either way), INTERNAL on a protocol violation."""
    argv = launcher.command([sys.executable, "-m", "coordinator.serverapp.worker"])
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=launcher.env, cwd=launcher.cwd, start_new_session=True,
    )
    assert proc.stdin and proc.stdout and proc.stderr
    threading.Thread(target=_relay_log, args=(proc.stderr, log_path), daemon=True,
                     name=f"serverapp-log-{job_id}").start()
    limits = {Kind.CALL: min(2**32 - 1, max_update_bytes * 16),
              Kind.RESULT: max_update_bytes * 2, Kind.EXPORT: _MAX_ONNX}
    calls = _Calls(grid, run_id, job_id, audit)
    expired, finished = threading.Event(), threading.Event()
    cancelled = cancel or threading.Event()

    def watch() -> None:
        # Kill the ServerApp at its wall-clock limit, or as soon as the job is cancelled.
        deadline = time.monotonic() + wall_s
        while not finished.is_set():
            if cancelled.wait(min(0.2, max(0.0, deadline - time.monotonic()))):
                break
            if time.monotonic() >= deadline:
                expired.set()
                break
        if not finished.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    watchdog = threading.Thread(target=watch, daemon=True, name=f"serverapp-watch-{job_id}")
    watchdog.start()
    arrays: ArrayRecord | None = None
    onnx = b""

    def stopped(code: int | None) -> InsituError:
        """Why the process ended: cancelled, past its limit, or by itself."""
        if cancelled.is_set():
            return ServerAppCancelled(detail="job cancelled; its ServerApp was stopped")
        if expired.is_set():
            return InsituError(ErrorCode.DEADLINE_EXCEEDED,
                               f"ServerApp exceeded the job's wall-clock limit of "
                               f"{wall_s:g} s and was stopped (see the job log)")
        return InsituError(ErrorCode.FAILED_PRECONDITION,
                           f"ServerApp process ended with code {code} (see the job log)")

    try:
        write_frame(proc.stdin, Kind.INIT, json.dumps({
            "app_dir": launcher.inside(app_dir), "serverapp": serverapp,
            "onnx_export": onnx_export, "run_id": run_id, "run_config": dict(run_config),
        }).encode())
        while True:
            frame = read_frame(proc.stdout, Kind, lambda k: limits.get(k, _MAX_SMALL))
            if frame is None:
                raise stopped(proc.wait())
            kind, payload = frame
            if kind is Kind.CALL and payload:
                try:
                    reply = calls.handle(Op(payload[0]), payload[1:])
                    write_frame(proc.stdin, Kind.RETURN, reply)
                except (_Refused, ValueError, struct.error) as e:
                    rule = str(e) if isinstance(e, _Refused) else "malformed grid call"
                    audit("job.serverapp_refused", {"job_id": job_id, "rule": rule})
                    write_frame(proc.stdin, Kind.FAIL, rule.encode())
                except InsituError as e:
                    write_frame(proc.stdin, Kind.FAIL, (e.detail or e.code.value).encode())
            elif kind is Kind.RESULT:
                rd = recorddict_from_proto(ProtoRecordDict.FromString(payload))
                if list(rd.array_records) != ["arrays"] or rd.metric_records or rd.config_records:
                    raise InsituError(ErrorCode.INTERNAL, "malformed ServerApp result")
                arrays = rd.array_records["arrays"]
            elif kind is Kind.EXPORT:
                onnx = payload
            elif kind is Kind.DONE:
                return ServerAppOutcome(arrays, onnx)
            elif kind is Kind.ERROR:
                detail = json.loads(payload).get("detail", "ServerApp failed")
                raise InsituError(ErrorCode.FAILED_PRECONDITION,
                                  f"{str(detail)[:200]} (see the job log)")
            else:
                raise InsituError(ErrorCode.INTERNAL, f"ServerApp sent {kind.name}")
    except Exception as e:
        # Killed (cancel, wall clock) or dead while we wrote to it, or a frame cut short by
        # the kill: say which, rather than the pipe error.
        if isinstance(e, OSError) or cancelled.is_set() or expired.is_set():
            raise stopped(proc.wait()) from None
        raise
    finally:
        finished.set()
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
