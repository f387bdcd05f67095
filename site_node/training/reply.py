"""A job's task messages, parsed once at the site's boundary.

The worker's reply bytes are decoded here exactly once into a :class:`ParsedReply`; the
egress contract, the site's DP step and the ledger all read that value, and
:meth:`ParsedReply.encode` writes the one message that may leave. The instruction it
answers is kept as a :class:`ParsedInstruction` (its array layout, and the global model
arrays the DP step subtracts).

Only what the contract allows survives :meth:`ParsedReply.encode`: the reply's metadata
is rebuilt from the instruction (no field of the app's own metadata leaves), and every
array is re-encoded from its decoded values, so bytes hidden behind an array's declared
shape cannot ride along.

Example::

    instruction = ParsedInstruction.parse(proto)
    reply = ParsedReply.parse(reply_bytes)
    reply.arrays["arrays"]["fc1.weight"]      # ArraySpec(shape=(32, 30), dtype="float32")
    out = reply.encode(instruction, node_id)  # ProtoMessage ready for the egress guard
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from flwr.proto.error_pb2 import Error as ProtoError
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.proto.message_pb2 import Metadata as ProtoMetadata
from flwr.proto.recorddict_pb2 import Array as ProtoArray
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from google.protobuf.message import DecodeError

from insitu.errors import ErrorCode, InsituError

__all__ = [
    "NDARRAY_STYPE",
    "ArraySpec",
    "ParsedInstruction",
    "ParsedReply",
    "decode_array",
    "error_message",
    "reply_metadata",
]

NDARRAY_STYPE: Final = "numpy.ndarray"
Scalar = float | int | bool
Entry = Scalar | list[float] | list[int] | list[bool] | str | bytes | list[str] | list[bytes]


@dataclass(frozen=True)
class ArraySpec:
    shape: tuple[int, ...]
    dtype: str
    stype: str


def _spec(arr: ProtoArray) -> ArraySpec:
    return ArraySpec(tuple(int(d) for d in arr.shape), arr.dtype, arr.stype)


def decode_array(arr: ProtoArray) -> np.ndarray:
    """The array's values, checked against its declared shape and dtype (no pickles)."""
    if arr.stype != NDARRAY_STYPE:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"array serialization {arr.stype[:32]!r}")
    try:
        value: np.ndarray = np.load(io.BytesIO(arr.data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "array bytes are not an .npy array") from None
    if tuple(value.shape) != tuple(arr.shape) or str(value.dtype) != arr.dtype:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "array bytes do not match its shape/dtype")
    return value


def _encode_array(value: np.ndarray) -> ProtoArray:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(value), allow_pickle=False)
    return ProtoArray(dtype=str(value.dtype), shape=list(value.shape), stype=NDARRAY_STYPE,
                      data=buf.getvalue())


def _entry(value: object) -> tuple[str | None, Entry]:
    kind = value.WhichOneof("value")  # type: ignore[attr-defined]
    raw = getattr(value, kind) if kind else None
    if kind is not None and kind.endswith("_list"):
        return kind, list(raw.vals)  # type: ignore[union-attr]
    return kind, raw  # type: ignore[return-value]


def _set_entry(target: object, kind: str, value: Entry) -> None:
    if kind.endswith("_list"):
        getattr(target, kind).vals.extend(value)
    else:
        setattr(target, kind, value)


@dataclass(frozen=True)
class ParsedInstruction:
    """An instruction the site received: its metadata and its arrays."""

    proto: ProtoMessage
    arrays: Mapping[str, Mapping[str, ArraySpec]]

    @classmethod
    def parse(cls, proto: ProtoMessage) -> ParsedInstruction:
        arrays: dict[str, dict[str, ArraySpec]] = {}
        for item in proto.content.items:
            if item.WhichOneof("value") == "array_record":
                arrays[item.key] = {a.key: _spec(a.value) for a in item.array_record.items}
        return cls(proto, arrays)

    def array_values(self) -> dict[str, dict[str, np.ndarray]]:
        """The instruction's arrays decoded (the global model, for the DP step)."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for item in self.proto.content.items:
            if item.WhichOneof("value") == "array_record":
                out[item.key] = {a.key: decode_array(a.value) for a in item.array_record.items}
        return out


@dataclass
class ParsedReply:
    """A ClientApp's reply, decoded once. ``arrays`` holds layouts; values are decoded on
    demand (:meth:`array_values`) and replaced by :meth:`replace_arrays` (DP)."""

    error_code: int | None
    arrays: dict[str, dict[str, ArraySpec]]
    metrics: dict[str, dict[str, Entry]]
    configs: dict[str, dict[str, Entry]]
    record_bytes: int  # serialized size of the metric and config records
    size: int  # bytes of the whole reply as the worker sent it
    duplicate_keys: bool = False
    unknown_records: bool = False  # a record of no known kind (or an entry of no value)
    metadata: ProtoMetadata = field(default_factory=ProtoMetadata, repr=False)
    raw: bytes = field(default=b"", repr=False)  # the bytes as the worker sent them
    _content: ProtoRecordDict = field(default_factory=ProtoRecordDict, repr=False)
    _replaced: dict[str, dict[str, np.ndarray]] | None = field(default=None, repr=False)
    # (record kind, record name) -> entry key -> (value field, value): what encode rebuilds
    _typed: dict[tuple[str, str], dict[str, tuple[str, Entry]]] = field(
        default_factory=dict, repr=False
    )

    @classmethod
    def parse(cls, data: bytes) -> ParsedReply:
        try:
            proto = ProtoMessage.FromString(data)
        except DecodeError:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "reply is not a Flower message") from None
        error = int(proto.error.code) if proto.HasField("error") else None
        arrays: dict[str, dict[str, ArraySpec]] = {}
        metrics: dict[str, dict[str, Entry]] = {}
        configs: dict[str, dict[str, Entry]] = {}
        typed: dict[tuple[str, str], dict[str, tuple[str, Entry]]] = {}
        record_bytes, seen, duplicate, unknown = 0, set(), False, False
        for item in proto.content.items:
            duplicate |= item.key in seen
            seen.add(item.key)
            kind = item.WhichOneof("value")
            if kind == "array_record":
                specs = {a.key: _spec(a.value) for a in item.array_record.items}
                duplicate |= len(specs) != len(item.array_record.items)
                arrays[item.key] = specs
            elif kind in ("metric_record", "config_record"):
                rec = getattr(item, kind)
                pairs = {e.key: _entry(e.value) for e in rec.items}
                duplicate |= len(pairs) != len(rec.items)
                unknown |= any(k is None for k, _v in pairs.values())
                typed[(kind, item.key)] = {
                    key: (k, v) for key, (k, v) in pairs.items() if k is not None
                }
                entries = {key: v for key, (_k, v) in pairs.items()}
                (metrics if kind == "metric_record" else configs)[item.key] = entries
                record_bytes += rec.ByteSize() + len(item.key.encode())
            else:  # a key with no record: it would carry its name and nothing else checked
                unknown = True
        return cls(error, arrays, metrics, configs, record_bytes, len(data), duplicate,
                   unknown, proto.metadata, data, proto.content, None, typed)

    def array_values(self) -> dict[str, dict[str, np.ndarray]]:
        """The reply's arrays decoded and checked against their declared layout."""
        if self._replaced is not None:
            return self._replaced
        out: dict[str, dict[str, np.ndarray]] = {}
        for item in self._content.items:
            if item.WhichOneof("value") == "array_record":
                out[item.key] = {a.key: decode_array(a.value) for a in item.array_record.items}
        return out

    def replace_arrays(self, arrays: dict[str, dict[str, np.ndarray]]) -> None:
        """Swap in new values with the same layout (the privatized update)."""
        for rec, names in self.arrays.items():
            got = arrays.get(rec, {})
            if set(got) != set(names) or any(
                tuple(got[n].shape) != names[n].shape or str(got[n].dtype) != names[n].dtype
                for n in names
            ):
                raise InsituError(ErrorCode.INTERNAL, f"replacement arrays differ in {rec!r}")
        self._replaced = arrays

    def encode(self, instruction: ParsedInstruction, node_id: int) -> ProtoMessage:
        """The reply that may leave, built only from checked values in a fixed order:
        metadata from ``instruction``; arrays re-encoded from their values, in the
        instruction's order; metric then config records, by name, their entries by key,
        rebuilt field by field (no unknown protobuf fields, no order of the app's
        choosing). Error replies are built with :func:`error_message`."""
        if self.error_code is not None or self.unknown_records:
            raise InsituError(ErrorCode.INTERNAL, "only a checked, valueful reply is encoded")
        values = self.array_values() if self.arrays else {}
        content = ProtoRecordDict()
        for record, names in instruction.arrays.items():
            if record not in values:
                continue
            out = content.items.add(key=record)
            for name in names:
                out.array_record.items.add(key=name).value.CopyFrom(
                    _encode_array(values[record][name])
                )
        for kind, name in sorted(self._typed):
            rec = getattr(content.items.add(key=name), kind)
            for key, (field_kind, value) in sorted(self._typed[(kind, name)].items()):
                _set_entry(rec.items.add(key=key).value, field_kind, value)
        return ProtoMessage(metadata=reply_metadata(instruction, node_id), content=content)


def reply_metadata(instruction: ParsedInstruction, node_id: int) -> ProtoMetadata:
    """Metadata for the reply to ``instruction``, built by the site, never by the app."""
    want = instruction.proto.metadata
    return ProtoMetadata(
        run_id=want.run_id,
        message_id=uuid.uuid4().hex,
        src_node_id=node_id,
        dst_node_id=want.src_node_id,
        reply_to_message_id=want.message_id,
        group_id=want.group_id,
        created_at=time.time(),
        ttl=want.ttl,
        message_type=want.message_type,
    )


def error_message(
    instruction: ParsedInstruction, node_id: int, code: int, reason: str
) -> ProtoMessage:
    """A code-only error reply to ``instruction``; ``reason`` must be catalog text."""
    return ProtoMessage(metadata=reply_metadata(instruction, node_id),
                        error=ProtoError(code=code, reason=reason))
