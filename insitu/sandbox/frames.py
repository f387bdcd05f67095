"""Length-prefixed frames between a supervisor and the sandboxed process it runs.

A frame is a 5-byte header, ``uint32`` big-endian payload length then one kind byte,
followed by the payload. Each side of a protocol names its kinds in its own ``IntEnum``.
The reader is written for a hostile sender: ``max_payload(kind)`` is checked from the
header, before any of the payload is read.

Example::

    write_frame(proc.stdin, Kind.CALL, payload)
    kind, payload = read_frame(proc.stdout, Kind, lambda k: 1 << 20)
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import IO, TypeVar

from insitu.errors import ErrorCode, InsituError

__all__ = ["HEADER", "MAX_FRAME_BYTES", "encode_frame", "read_frame", "write_frame"]

HEADER = struct.Struct(">IB")
MAX_FRAME_BYTES = 2**32 - 1  # the header's limit; readers enforce tighter caps
K = TypeVar("K", bound=enum.IntEnum)


def encode_frame(kind: int, payload: bytes) -> bytes:
    """Header plus payload, ready to write."""
    if len(payload) > MAX_FRAME_BYTES:
        raise InsituError(ErrorCode.RESOURCE_EXHAUSTED, f"frame of {len(payload)} bytes")
    return HEADER.pack(len(payload), kind) + payload


def write_frame(stream: IO[bytes], kind: int, payload: bytes) -> None:
    """Write one frame and flush; the payload is written as is, never copied."""
    if len(payload) > MAX_FRAME_BYTES:
        raise InsituError(ErrorCode.RESOURCE_EXHAUSTED, f"frame of {len(payload)} bytes")
    stream.write(HEADER.pack(len(payload), kind))
    stream.write(payload)
    stream.flush()


def _read_exact(stream: IO[bytes], size: int) -> bytes | None:
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
    stream: IO[bytes], kinds: type[K], max_payload: Callable[[K], int] | None = None
) -> tuple[K, bytes] | None:
    """The next frame from a blocking stream, or ``None`` at a clean end of stream.
    An unknown kind, or a payload over ``max_payload(kind)``, is refused from the header."""
    header = _read_exact(stream, HEADER.size)
    if header is None:
        return None
    size, raw_kind = HEADER.unpack(header)
    try:
        kind = kinds(raw_kind)
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
