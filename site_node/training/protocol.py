"""The frames the site daemon and a job's ClientApp worker exchange over the worker's pipes.

A frame is a 5-byte header, ``uint32`` big-endian payload length then one kind byte,
followed by the payload. stdout carries frames only; the worker logs to stderr.

daemon -> worker: ``INIT`` (JSON), optional ``STATE`` (a Flower RecordDict proto: the
run's ``context.state`` to resume from), then ``REQUEST`` (a Flower ``ProtoMessage``)
frames. worker -> daemon: ``READY`` or ``ERROR`` after init; then per request a
``REPLY`` (ProtoMessage) followed by ``STATE``, or an ``ERROR`` (JSON ``code`` + ``detail``).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from typing import Any, BinaryIO

from insitu.sandbox.frames import HEADER, MAX_FRAME_BYTES, encode_frame, write_frame
from insitu.sandbox.frames import read_frame as _read_frame

__all__ = [
    "HEADER",
    "MAX_FRAME_BYTES",
    "FrameKind",
    "decode_json",
    "encode_frame",
    "encode_json",
    "read_frame",
    "write_frame",
]


class FrameKind(enum.IntEnum):
    INIT = 1
    STATE = 2
    REQUEST = 3
    READY = 4
    REPLY = 5
    ERROR = 6


def encode_json(kind: FrameKind, obj: Any) -> bytes:
    return encode_frame(kind, json.dumps(obj, sort_keys=True).encode("utf-8"))


def decode_json(payload: bytes) -> Any:
    return json.loads(payload.decode("utf-8"))


def read_frame(
    stream: BinaryIO, max_payload: Callable[[FrameKind], int] | None = None
) -> tuple[FrameKind, bytes] | None:
    """The next frame from a blocking stream, or ``None`` at a clean end of stream.

    ``max_payload(kind)`` bounds each kind's payload; a larger frame is refused from its
    header, before a byte of it is read (the sender may be hostile).
    """
    return _read_frame(stream, FrameKind, max_payload)
