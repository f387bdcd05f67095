"""What a served model's signature covers, shared by the coordinator (which signs with
Vault transit ``model-signing`` at deploy time) and every site (which verifies before
anything reaches its serving path).

The signed message is the RFC 8785 canonical JSON of
``{"type": "insitu.model-artifact.v1", "model", "version" (int), "sha256" (of the ONNX
bytes), "inputs", "outputs" ([{name, dtype, shape}], -1 for free dims), "key_version"}``.

Example::

    inputs, outputs = onnx_io(onnx_bytes)
    msg = signing_message("mlp", 3, sha256_hex, inputs, outputs, key_version=1)
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import rfc8785

from insitu.errors import ErrorCode, InsituError

__all__ = ["ARTIFACT_FORMAT", "MESSAGE_TYPE", "artifact_document", "onnx_io", "signing_message"]

MESSAGE_TYPE = "insitu.model-artifact.v1"
ARTIFACT_FORMAT = 1
_ONNX_DTYPES = {1: "float32", 11: "float64", 7: "int64", 6: "int32"}


def signing_message(
    model: str,
    version: int,
    sha256_hex: str,
    inputs: Sequence[Mapping[str, Any]],
    outputs: Sequence[Mapping[str, Any]],
    key_version: int,
) -> bytes:
    return bytes(
        rfc8785.dumps(
            {
                "type": MESSAGE_TYPE,
                "model": model,
                "version": version,
                "sha256": sha256_hex,
                "inputs": [dict(s) for s in inputs],
                "outputs": [dict(s) for s in outputs],
                "key_version": key_version,
            }
        )
    )


def onnx_io(onnx_bytes: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The graph's input and output specs; unsupported element types are refused."""
    import onnx

    try:
        graph = onnx.load_from_string(onnx_bytes).graph
    except Exception:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "not a loadable ONNX model") from None
    initializers = {i.name for i in graph.initializer}

    def spec(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        dtype = _ONNX_DTYPES.get(t.elem_type)
        if dtype is None:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, f"{v.name}: unsupported element type")
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return {"name": v.name, "dtype": dtype, "shape": shape}

    return (
        [spec(v) for v in graph.input if v.name not in initializers],
        [spec(v) for v in graph.output],
    )


def artifact_document(
    model: str,
    version: int,
    onnx_bytes: bytes,
    inputs: Sequence[Mapping[str, Any]],
    outputs: Sequence[Mapping[str, Any]],
    key_version: int,
    signature: bytes,
) -> dict[str, Any]:
    """The ``artifact.json`` document a site installs alongside ``model.onnx``."""
    return {
        "format": ARTIFACT_FORMAT,
        "model": model,
        "version": version,
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "inputs": [dict(s) for s in inputs],
        "outputs": [dict(s) for s in outputs],
        "key_version": key_version,
        "signature": base64.b64encode(signature).decode(),
    }
