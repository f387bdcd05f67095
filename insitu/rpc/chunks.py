"""Splitting one Flower message into session-stream chunks and putting it back together.

A message travels as (metadata, content | error) protobuf bytes; content is sliced into
fixed-size chunks so a 100 MB update never becomes one gRPC message. Reassembly keeps
the slices and joins them once, and refuses gaps, reordering and oversize messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from insitu._proto.v1 import session_pb2
from insitu.errors import ErrorCode, InsituError

__all__ = ["CHUNK_BYTES", "Assembled", "Reassembler", "split_message"]

CHUNK_BYTES = 1 << 20


def split_message(
    job_id: str,
    message_id: str,
    metadata: bytes,
    content: bytes | None,
    error: bytes | None,
    chunk_bytes: int = CHUNK_BYTES,
    trace: dict[str, str] | None = None,
) -> Iterator[session_pb2.TaskChunk]:
    """Yield the chunks of one message; the first carries metadata (and the error)."""
    payload = memoryview(content or b"")
    total = len(payload)
    n = max(1, -(-total // chunk_bytes))
    for i in range(n):
        part = payload[i * chunk_bytes : (i + 1) * chunk_bytes]
        yield session_pb2.TaskChunk(
            job_id=job_id,
            message_id=message_id,
            seq=i,
            last=(i == n - 1),
            metadata=metadata if i == 0 else b"",
            content=bytes(part),
            error=(error or b"") if i == 0 else b"",
            total_bytes=total,
            trace=(trace or {}) if i == 0 else {},
        )


@dataclass
class Assembled:
    job_id: str
    message_id: str
    metadata: bytes
    content: bytes | None
    error: bytes | None


@dataclass
class _Partial:
    metadata: bytes
    error: bytes
    total: int
    parts: list[bytes] = field(default_factory=list)
    received: int = 0


class Reassembler:
    """Collects chunks per (job, message) from ONE peer; bounded in size and count."""

    def __init__(self, max_message_bytes: int, max_partials: int = 64) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_partials = max_partials
        self._partials: dict[tuple[str, str], _Partial] = {}

    def add(self, chunk: session_pb2.TaskChunk) -> Assembled | None:
        key = (chunk.job_id, chunk.message_id)
        p = self._partials.get(key)
        if chunk.seq == 0:
            if p is not None:
                raise InsituError(ErrorCode.INVALID_ARGUMENT, "message restarted mid-stream")
            if chunk.total_bytes > self.max_message_bytes:
                raise InsituError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"message of {chunk.total_bytes} bytes exceeds {self.max_message_bytes}",
                )
            if len(self._partials) >= self.max_partials:
                raise InsituError(ErrorCode.RESOURCE_EXHAUSTED, "too many messages in flight")
            p = _Partial(chunk.metadata, chunk.error, chunk.total_bytes)
            self._partials[key] = p
        elif p is None or chunk.seq != len(p.parts):
            self._partials.pop(key, None)
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "chunk out of order")
        p.parts.append(chunk.content)
        p.received += len(chunk.content)
        if p.received > p.total:
            self._partials.pop(key, None)
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "more bytes than announced")
        if not chunk.last:
            return None
        del self._partials[key]
        if p.received != p.total:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "fewer bytes than announced")
        content = b"".join(p.parts) if p.parts and p.total else b""
        return Assembled(
            chunk.job_id,
            chunk.message_id,
            p.metadata,
            content if not p.error else None,
            p.error or None,
        )
