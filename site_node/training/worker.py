"""The job worker: runs one job's Flower ClientApp in a process of its own.

``python -m site_node.training.worker`` is started and supervised by
:class:`site_node.training.runner.ClientAppRunner`. Job code never runs inside the site
daemon, which holds the site's keys; this process gets no secrets, only the app
directory, the run's config and the local dataset path.

It speaks the frames of :mod:`site_node.training.protocol` on its original stdout;
anything the job prints is diverted to stderr so it cannot corrupt a frame. One
``Context`` lives for the whole run so ``context.state`` persists across rounds; after each
successful message its state goes back to the daemon, which replays it into a restarted
worker (as Flower's SuperNode keeps a node's state between ClientApp processes).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import uuid
from typing import Any, BinaryIO

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode as FlowerErrorCode
from flwr.common.serde import (
    message_from_proto,
    message_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from flwr.supercore.task_identity import TaskIdentity

from insitu.errors import ErrorCode, InsituError
from insitu.flower.bundle import load_component
from site_node.training.protocol import (
    FrameKind,
    decode_json,
    encode_frame,
    encode_json,
    read_frame,
    write_frame,
)

__all__ = ["main"]

log = logging.getLogger("site_node.training.worker")


def _default_device() -> str:
    try:
        import torch
    except ImportError:  # an app without torch still gets a sensible key
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _error_reply(request: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=request)


class _Worker:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._app: ClientApp | None = None
        self._context: Context | None = None
        self._state_bytes = b""  # last good context.state, to roll back a failed message

    def _send(self, frame: bytes) -> None:
        self._out.write(frame)
        self._out.flush()

    def _send_error(self, code: ErrorCode, detail: str) -> None:
        self._send(encode_json(FrameKind.ERROR, {"code": code.value, "detail": detail}))

    def init(self, payload: bytes) -> None:
        spec: dict[str, Any] = decode_json(payload)
        run_id, node_id = int(spec["run_id"]), int(spec["node_id"])
        # Flower stamps instruction messages from this process-global identity.
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = node_id
        TaskIdentity.task_id = 0
        node_config = dict(spec["node_config"])
        if "device" not in node_config:  # only then import torch to ask
            node_config["device"] = _default_device()
        app = load_component(spec["app_dir"], spec["clientapp"])
        if not isinstance(app, ClientApp):
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT,
                f"{spec['clientapp']!r} is a {type(app).__name__}, not a flwr ClientApp",
            )
        self._app = app
        self._context = Context(
            run_id=run_id,
            node_id=node_id,
            node_config=node_config,
            state=RecordDict(),
            run_config=dict(spec["run_config"]),
        )
        self._state_bytes = recorddict_to_proto(self._context.state).SerializeToString()

    def restore_state(self, payload: bytes) -> None:
        assert self._context is not None
        self._context.state = recorddict_from_proto(ProtoRecordDict.FromString(payload))
        self._state_bytes = payload

    def handle(self, payload: bytes) -> None:
        assert self._app is not None and self._context is not None
        try:
            request = message_from_proto(ProtoMessage.FromString(payload))
        except Exception as err:
            self._send_error(ErrorCode.INVALID_ARGUMENT, f"request is not a Flower message: {err}")
            return
        ok = False
        try:
            reply = self._app(request, self._context)
            if not isinstance(reply, Message):
                log.error("ClientApp returned a %s, not a Message", type(reply).__name__)
                reply = _error_reply(
                    request,
                    FlowerErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                    f"ClientApp returned a {type(reply).__name__}, not a Message",
                )
            elif reply.metadata.reply_to_message_id != request.metadata.message_id:
                log.error("ClientApp reply does not reply to the request")
                reply = _error_reply(
                    request,
                    FlowerErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                    "ClientApp reply was not built with reply_to=<the request>",
                )
            else:
                ok = True
        except MemoryError:
            # The sandbox's memory limit: this worker ends; the daemon answers the message
            # with a code-only error and starts a fresh worker for the next one.
            self._send_error(ErrorCode.RESOURCE_EXHAUSTED, "ClientApp exceeded the memory limit")
            os._exit(3)
        except Exception as err:
            # The full traceback stays in the site's own log. The reply that leaves the
            # site names only the exception type: messages can quote local data.
            log.error("ClientApp raised:\n%s", traceback.format_exc())
            reply = _error_reply(
                request,
                FlowerErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                f"ClientApp raised {type(err).__name__}",
            )
        if ok:
            state = recorddict_to_proto(self._context.state).SerializeToString()
            self._state_bytes = state
            write_frame(self._out, FrameKind.STATE, state)
        else:
            # As Flower does: a failed message leaves the node's state as it was.
            self._context.state = recorddict_from_proto(
                ProtoRecordDict.FromString(self._state_bytes)
            )
        reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # no setter in flwr
        write_frame(self._out, FrameKind.REPLY, message_to_proto(reply).SerializeToString())

    def serve(self, stream: BinaryIO) -> int:
        first = read_frame(stream)
        if first is None:
            return 0
        kind, payload = first
        if kind is not FrameKind.INIT:
            self._send_error(ErrorCode.INTERNAL, f"expected INIT, got {kind.name}")
            return 2
        try:
            self.init(payload)
        except InsituError as err:
            self._send_error(err.code, err.detail)
            return 2
        except Exception as err:
            log.error("loading the ClientApp failed:\n%s", traceback.format_exc())
            self._send_error(ErrorCode.INVALID_ARGUMENT, f"loading the ClientApp failed: {err!r}")
            return 2
        self._send(encode_frame(FrameKind.READY, b""))
        while (frame := read_frame(stream)) is not None:
            kind, payload = frame
            if kind is FrameKind.STATE:
                self.restore_state(payload)
            elif kind is FrameKind.REQUEST:
                self.handle(payload)
            else:
                self._send_error(ErrorCode.INTERNAL, f"unexpected frame {kind.name}")
                return 2
        return 0


def main() -> int:
    """Serve frames on stdin/stdout until stdin closes."""
    # Keep the real stdout for frames; everything printed from here on goes to stderr.
    frames = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    return _Worker(frames).serve(sys.stdin.buffer)


if __name__ == "__main__":
    sys.exit(main())
