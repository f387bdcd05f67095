"""Facts about one served RPC that tracing and metrics both report: its status code,
a coarse outcome, and the caller's identity *kind* (never the identity itself)."""

from __future__ import annotations

import grpc

from insitu.errors import CATALOG, InsituError
from insitu.rpc.chain import Call

__all__ = ["outcome_of", "principal_kind", "rpc_status", "split_method"]

_DENIED = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})


def split_method(full: str) -> tuple[str, str]:
    """``"/insitu.v1.Admin/GetSite"`` → ``("insitu.v1.Admin", "GetSite")``."""
    service, _, method = full.lstrip("/").rpartition("/")
    return service, method


def rpc_status(call: Call, exc: BaseException | None) -> grpc.StatusCode:
    """The status the client sees for ``call``, which ended with ``exc`` (or normally).

    Works both outside the error layer (``context.abort`` has already set the code) and
    inside it (the exception is still a domain error the error layer will map).
    """
    get_code = getattr(call.context, "code", None)
    code = get_code() if callable(get_code) else None
    if isinstance(code, grpc.StatusCode):
        return code
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, GeneratorExit):
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, InsituError):
        return CATALOG[exc.code].status
    # The error layer turns anything else into INTERNAL.
    return grpc.StatusCode.INTERNAL


def outcome_of(code: grpc.StatusCode) -> str:
    """One of ``ok``, ``denied``, ``cancelled``, ``error``."""
    if code is grpc.StatusCode.OK:
        return "ok"
    if code in _DENIED:
        return "denied"
    if code is grpc.StatusCode.CANCELLED:
        return "cancelled"
    return "error"


def principal_kind(call: Call) -> str:
    """``site``, ``user``, ``service`` or ``none``: the kind only, never the name."""
    principal = call.attributes.get("principal")
    kind = getattr(principal, "kind", None)
    value = getattr(kind, "value", None)
    return value if value in ("site", "user", "service") else "none"
