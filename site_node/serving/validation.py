"""Wire tensors to numpy and back, and validation of inputs against a model's schema.

A ``Tensor`` carries ``dtype`` (``float32``, ``float64``, ``int64`` or ``int32``), a
``shape`` and ``data``: the elements in C order, little-endian. Decoding checks the dtype
allow-list, the shape against the data length and a size cap; schema validation checks
names, dtype, shape (the batch dimension is free) and that floats are finite.

Errors are ``INVALID_ARGUMENT`` with ``"<field>: <what>"``, naming the offending field.
They never quote input values: callers' rows may be PHI, and error texts reach clients
and logs.

Example::

    arrays = validate_inputs(decode_tensors(request.inputs), config.inputs)
    response.outputs.extend(encode_tensors(outputs))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from insitu._proto.v1.site_pb2 import Tensor
from insitu.errors import ErrorCode, InsituError
from site_node.serving.config import ALLOWED_DTYPES, TensorSpec

__all__ = [
    "MAX_ELEMENTS",
    "MAX_INPUTS",
    "decode_tensors",
    "encode_tensors",
    "validate_inputs",
]

MAX_INPUTS = 64
MAX_ELEMENTS = 16 * 1024 * 1024  # per tensor; with 8-byte dtypes, the 64 MiB message cap
_MAX_RANK = 8
_WIRE = {name: np.dtype(name).newbyteorder("<") for name in ALLOWED_DTYPES}


def _bad(field: str, what: str) -> InsituError:
    return InsituError(ErrorCode.INVALID_ARGUMENT, f"{field}: {what}")


def decode_tensors(tensors: Sequence[Tensor]) -> dict[str, np.ndarray]:
    """Decode wire tensors to read-only native-endian arrays keyed by name."""
    if len(tensors) > MAX_INPUTS:
        raise _bad("inputs", f"more than {MAX_INPUTS} tensors")
    out: dict[str, np.ndarray] = {}
    for i, t in enumerate(tensors):
        field = f"inputs[{i}]"
        if not t.name:
            raise _bad(f"{field}.name", "is empty")
        if t.name in out:
            raise _bad(f"{field}.name", "duplicates an earlier input")
        wire = _WIRE.get(t.dtype)
        if wire is None:
            raise _bad(f"{field}.dtype", f"must be one of {sorted(ALLOWED_DTYPES)}")
        shape = tuple(t.shape)
        if not 1 <= len(shape) <= _MAX_RANK or any(d < 0 for d in shape):
            raise _bad(f"{field}.shape", f"must have 1-{_MAX_RANK} non-negative dims")
        count = math.prod(shape)
        if count > MAX_ELEMENTS:
            raise _bad(f"{field}.shape", f"more than {MAX_ELEMENTS} elements")
        if len(t.data) != count * wire.itemsize:
            raise _bad(
                f"{field}.data",
                f"has {len(t.data)} bytes; shape {list(shape)} of {t.dtype} needs "
                f"{count * wire.itemsize}",
            )
        arr = np.frombuffer(t.data, dtype=wire).reshape(shape)
        out[t.name] = arr.astype(wire.newbyteorder("="), copy=False)
    return out


def validate_inputs(
    inputs: Mapping[str, np.ndarray], schema: Sequence[TensorSpec]
) -> dict[str, np.ndarray]:
    """Check ``inputs`` against ``schema``; returns them in schema order.

    Every schema input must be present, no others; dtypes equal; shapes equal except
    ``-1`` dims; all inputs share the batch size (>= 1); floats are finite.
    """
    expected = {s.name for s in schema}
    unknown = [n for n in inputs if n not in expected]
    if unknown:
        # The caller's unknown names are not echoed: only the schema's are named.
        raise _bad("inputs", f"unexpected input name(s); the model takes {sorted(expected)}")
    rows: int | None = None
    out: dict[str, np.ndarray] = {}
    for spec in schema:
        field = f"inputs['{spec.name}']"
        arr = inputs.get(spec.name)
        if arr is None:
            raise _bad(field, "is missing")
        if not isinstance(arr, np.ndarray):
            raise _bad(field, "must be an array")
        if arr.dtype != np.dtype(spec.dtype):
            raise _bad(f"{field}.dtype", f"must be {spec.dtype}, got {arr.dtype.name}")
        if arr.ndim != len(spec.shape) or any(
            want != -1 and got != want for got, want in zip(arr.shape, spec.shape, strict=True)
        ):
            raise _bad(f"{field}.shape", f"must be {list(spec.shape)}, got {list(arr.shape)}")
        if arr.shape[0] == 0:
            raise _bad(f"{field}.shape", "has no rows")
        if rows is None:
            rows = arr.shape[0]
        elif arr.shape[0] != rows:
            raise _bad(f"{field}.shape", f"has {arr.shape[0]} rows, other inputs have {rows}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad_row = int(np.argwhere(~np.isfinite(arr.reshape(arr.shape[0], -1)))[0][0])
            raise _bad(field, f"row {bad_row} contains NaN or infinite values")
        out[spec.name] = arr
    return out


def encode_tensors(
    arrays: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
) -> list[Tensor]:
    """Encode arrays as wire tensors (little-endian, C order)."""
    items = arrays.items() if isinstance(arrays, Mapping) else arrays
    out = []
    for name, arr in items:
        wire = _WIRE.get(arr.dtype.name)
        if wire is None:
            raise InsituError(
                ErrorCode.INTERNAL, f"output '{name}' has unsupported dtype {arr.dtype.name}"
            )
        data = np.ascontiguousarray(arr, dtype=wire).tobytes()
        out.append(Tensor(name=name, dtype=wire.name, shape=list(arr.shape), data=data))
    return out
