"""Typed SDK errors: one class per gRPC status a caller may want to handle."""

from __future__ import annotations

import grpc

__all__ = [
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InsituRpcError",
    "IntegrityError",
    "InternalError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
]


class InsituRpcError(Exception):
    """A call failed; ``code`` is the gRPC status, ``details`` the server's public text."""

    def __init__(self, code: grpc.StatusCode, details: str, correlation_id: str = "") -> None:
        self.code = code
        self.details = details
        self.correlation_id = correlation_id
        super().__init__(f"{code.name}: {details}")


class InvalidArgument(InsituRpcError): ...


class NotFound(InsituRpcError): ...


class AlreadyExists(InsituRpcError): ...


class PermissionDenied(InsituRpcError): ...


class Unauthenticated(InsituRpcError): ...


class Unavailable(InsituRpcError): ...


class DeadlineExceeded(InsituRpcError): ...


class FailedPrecondition(InsituRpcError): ...


class ResourceExhausted(InsituRpcError): ...


class InternalError(InsituRpcError): ...


class IntegrityError(InsituRpcError): ...


_BY_CODE: dict[grpc.StatusCode, type[InsituRpcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.DATA_LOSS: IntegrityError,
}


def from_rpc_error(e: grpc.RpcError) -> InsituRpcError:
    code = e.code() if callable(getattr(e, "code", None)) else grpc.StatusCode.UNKNOWN
    details = e.details() if callable(getattr(e, "details", None)) else ""
    cid = ""
    trailing = e.trailing_metadata() if callable(getattr(e, "trailing_metadata", None)) else None
    for k, v in trailing or ():
        if k == "insitu-correlation-id":
            cid = str(v)
    cls = _BY_CODE.get(code, InsituRpcError)
    return cls(code, details or "", cid)
