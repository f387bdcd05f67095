"""The error layer: domain errors become gRPC statuses through the one catalog in
:mod:`insitu.errors`; anything unexpected becomes INTERNAL with generic text, and the
detail goes only to the server log under the call's correlation id."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc

from insitu.errors import CATALOG, InsituError
from insitu.rpc.chain import Call, Layer

__all__ = ["ErrorLayer", "abort_with"]

log = logging.getLogger(__name__)


def _already_aborted(context: grpc.ServicerContext) -> bool:
    # context.abort() sets the code and raises a bare Exception; pass that through.
    code = getattr(context, "code", None)
    return callable(code) and code() is not None


def abort_with(call: Call, exc: BaseException) -> NoReturn:
    """Abort ``call`` with the status that ``exc`` maps to."""
    context = call.context
    if isinstance(exc, InsituError):
        entry = CATALOG[exc.code]
        if exc.code.value == "internal":
            log.error(
                "internal error cid=%s method=%s: %s", call.correlation_id, call.method, exc.detail
            )
        context.set_trailing_metadata((("insitu-correlation-id", call.correlation_id),))
        context.abort(entry.status, exc.public_message())
    log.exception(
        "unhandled error cid=%s method=%s", call.correlation_id, call.method, exc_info=exc
    )
    context.set_trailing_metadata((("insitu-correlation-id", call.correlation_id),))
    context.abort(
        grpc.StatusCode.INTERNAL, f"internal error (correlation id {call.correlation_id})"
    )
    raise AssertionError("unreachable")  # pragma: no cover


class ErrorLayer(Layer):
    """Outermost layer: maps every escaping exception to a sanitized status."""

    def around(self, call: Call, proceed: Callable[[], Any]) -> Any:
        if call.response_streaming:
            return self._stream(call, proceed)
        try:
            return proceed()
        except Exception as e:
            if _already_aborted(call.context):
                raise
            abort_with(call, e)

    def _stream(self, call: Call, proceed: Callable[[], Any]) -> Iterator[Any]:
        try:
            yield from proceed()
        except Exception as e:
            if _already_aborted(call.context):
                raise
            abort_with(call, e)
