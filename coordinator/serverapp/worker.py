"""The sandboxed side: runs one job's ServerApp against a Grid that lives in the
coordinator, reached only over this process's stdin/stdout.

``python -m coordinator.serverapp.worker`` is started by
:func:`coordinator.serverapp.host.run_serverapp_sandboxed`. Anything the ServerApp
prints goes to stderr (the job's log at the coordinator).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import sys
import time
import traceback
from collections.abc import Iterable
from typing import Any, BinaryIO

from flwr.app import Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import message_from_proto, message_to_proto, recorddict_to_proto
from flwr.server.run_serverapp import run as run_serverapp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from coordinator.flower_compat import RunGrid, set_message_id
from coordinator.serverapp.protocol import Kind, Op, pack_messages, unpack_messages
from insitu.flower.bundle import load_component
from insitu.flower.observe import observe_strategies
from insitu.sandbox.frames import read_frame, write_frame

__all__ = ["PipeGrid", "main"]

log = logging.getLogger("coordinator.serverapp.worker")


class GridCallFailed(RuntimeError):
    """The coordinator refused a Grid call (the text says why)."""


class PipeGrid(RunGrid):
    """Flower's Grid, each call forwarded to the coordinator over the pipes."""

    def __init__(self, inp: BinaryIO, out: BinaryIO, run_id: int) -> None:
        self._in, self._out = inp, out
        self.set_run(Run.create_empty(run_id))

    def _call(self, op: Op, body: bytes) -> bytes:
        write_frame(self._out, Kind.CALL, bytes([op]) + body)
        frame = read_frame(self._in, Kind)
        if frame is None:
            raise GridCallFailed("the coordinator closed the channel")
        kind, payload = frame
        if kind is Kind.FAIL:
            raise GridCallFailed(payload.decode("utf-8", "replace"))
        if kind is not Kind.RETURN:
            raise GridCallFailed(f"unexpected {kind.name}")
        return payload

    def get_node_ids(self) -> Iterable[int]:
        return [int(n) for n in json.loads(self._call(Op.GET_NODES, b""))]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        msgs = list(messages)
        ids = [str(i) for i in json.loads(self._call(
            Op.PUSH, pack_messages(message_to_proto(m) for m in msgs)))]
        for m, mid in zip(msgs, ids, strict=True):
            set_message_id(m, mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        body = json.dumps(list(message_ids)).encode()
        return [message_from_proto(p) for p in unpack_messages(self._call(Op.PULL, body))]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        header = json.dumps({"timeout": timeout}).encode()
        body = struct.pack(">I", len(header)) + header + pack_messages(
            message_to_proto(m) for m in messages)
        return [message_from_proto(p) for p in
                unpack_messages(self._call(Op.SEND_AND_RECEIVE, body))]


def _serve(inp: BinaryIO, out: BinaryIO) -> int:
    first = read_frame(inp, Kind)
    if first is None or first[0] is not Kind.INIT:
        return 2
    spec: dict[str, Any] = json.loads(first[1])
    run_id = int(spec["run_id"])
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE_ID, 1
    grid = PipeGrid(inp, out, run_id)
    context = Context(run_id=run_id, node_id=SUPERLINK_NODE_ID, node_config={},
                      state=RecordDict(), run_config=dict(spec["run_config"]))
    try:
        with observe_strategies() as results:
            run_serverapp(grid=grid, context=context, server_app_dir=spec["app_dir"],
                          server_app_attr=spec["serverapp"])
        arrays = results[-1].arrays if results else None
        onnx = b""
        if arrays is not None and len(arrays) and spec.get("onnx_export"):
            export = load_component(spec["app_dir"], spec["onnx_export"])
            onnx = bytes(export(arrays))
    except Exception as err:
        log.error("ServerApp failed:\n%s", traceback.format_exc())
        write_frame(out, Kind.ERROR, json.dumps(
            {"detail": f"ServerApp raised {type(err).__name__}"}).encode())
        return 1
    if arrays is not None and len(arrays):
        write_frame(out, Kind.RESULT,
                    recorddict_to_proto(RecordDict({"arrays": arrays})).SerializeToString())
    write_frame(out, Kind.EXPORT, onnx)
    write_frame(out, Kind.DONE, b"")
    return 0


def main() -> int:
    frames = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    code = _serve(sys.stdin.buffer, frames)
    log.info("ServerApp worker done in %.1f s (exit %d)", time.monotonic() - started, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
