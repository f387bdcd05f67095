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
import struct
from collections.abc import Callable
from typing import Any, BinaryIO

from insitu.errors import ErrorCode, InsituError

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

HEADER = struct.Struct(">IB")
MAX_FRAME_BYTES = 2**32 - 1  # the header's limit; the runner enforces a tighter cap


class FrameKind(enum.IntEnum):
    INIT = 1
    STATE = 2
    REQUEST = 3
    READY = 4
    REPLY = 5
    ERROR = 6


def encode_frame(kind: FrameKind, payload: bytes) -> bytes:
    """Header plus payload, ready to write."""
    if len(payload) > MAX_FRAME_BYTES:
        raise InsituError(ErrorCode.RESOURCE_EXHAUSTED, f"frame of {len(payload)} bytes")
    return HEADER.pack(len(payload), kind) + payload


def write_frame(stream: BinaryIO, kind: FrameKind, payload: bytes) -> None:
    """Write one frame and flush; the payload is written as is, never copied (updates can
    be hundreds of MB)."""
    if len(payload) > MAX_FRAME_BYTES:
        raise InsituError(ErrorCode.RESOURCE_EXHAUSTED, f"frame of {len(payload)} bytes")
    stream.write(HEADER.pack(len(payload), kind))
    stream.write(payload)
    stream.flush()


def encode_json(kind: FrameKind, obj: Any) -> bytes:
    return encode_frame(kind, json.dumps(obj, sort_keys=True).encode("utf-8"))


def decode_json(payload: bytes) -> Any:
    return json.loads(payload.decode("utf-8"))


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(
    stream: BinaryIO, max_payload: Callable[[FrameKind], int] | None = None
) -> tuple[FrameKind, bytes] | None:
    """The next frame from a blocking stream, or ``None`` at a clean end of stream.

    ``max_payload(kind)`` bounds each kind's payload; a larger frame is refused from its
    header, before a byte of it is read (the sender may be hostile).
    """
    header = _read_exact(stream, HEADER.size)
    if header is None:
        return None
    size, raw_kind = HEADER.unpack(header)
    try:
        kind = FrameKind(raw_kind)
    except ValueError:
        raise InsituError(ErrorCode.INTERNAL, f"unknown frame kind {raw_kind}") from None
    if max_payload is not None and size > max_payload(kind):
        raise InsituError(
            ErrorCode.RESOURCE_EXHAUSTED,
            f"{kind.name} frame of {size} bytes exceeds its limit of {max_payload(kind)}",
        )
    payload = _read_exact(stream, size)
    if payload is None:
        raise InsituError(ErrorCode.INTERNAL, "stream ended inside a frame")
    return kind, payload
