"""The frames between the coordinator and a job's sandboxed ServerApp worker.

coordinator -> worker: ``INIT`` (JSON: app dir, components, run id, run config), then one
``RETURN`` or ``FAIL`` per ``CALL``. worker -> coordinator: ``CALL`` frames (a Grid call:
one op byte, then its body), and at the end ``RESULT`` (the final arrays as a Flower
RecordDict proto), ``EXPORT`` (the ONNX bytes, possibly empty) and ``DONE``; or ``ERROR``
(JSON ``detail``) if the ServerApp failed. Messages travel as length-prefixed Flower
Message protos.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable

from flwr.proto.message_pb2 import Message as ProtoMessage

from insitu.errors import ErrorCode, InsituError

__all__ = ["Kind", "Op", "pack_messages", "unpack_messages"]


class Kind(enum.IntEnum):
    INIT = 1
    CALL = 2
    RETURN = 3
    FAIL = 4
    RESULT = 5
    EXPORT = 6
    DONE = 7
    ERROR = 8


class Op(enum.IntEnum):
    GET_NODES = 1
    PUSH = 2
    PULL = 3
    SEND_AND_RECEIVE = 4


_LEN = struct.Struct(">I")


def pack_messages(messages: Iterable[ProtoMessage]) -> bytes:
    parts = []
    for m in messages:
        data = m.SerializeToString()
        parts += [_LEN.pack(len(data)), data]
    return b"".join(parts)


def unpack_messages(data: bytes, limit: int = 100_000) -> list[ProtoMessage]:
    out: list[ProtoMessage] = []
    i = 0
    while i < len(data):
        if len(out) >= limit or i + _LEN.size > len(data):
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "malformed message list")
        (size,) = _LEN.unpack_from(data, i)
        i += _LEN.size
        if i + size > len(data):
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "malformed message list")
        out.append(ProtoMessage.FromString(data[i:i + size]))
        i += size
    return out
