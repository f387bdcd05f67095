"""The server-side layer chain: one grpc interceptor that runs insitu's layers in order
around every handler, for all four RPC shapes.

A layer sees one :class:`Call` and a ``proceed`` callable. For response-streaming RPCs
``proceed()`` returns an iterator, and a layer that must act at the end (audit) does so
by wrapping that iterator: the RPC is over when the iterator is exhausted or closed.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

__all__ = ["Call", "Layer", "LayerInterceptor", "annotate", "current_call"]


@dataclass
class Call:
    """One RPC as the layers see it."""

    method: str  # full method, e.g. "/insitu.v1.Admin/ListSites"
    context: grpc.ServicerContext
    request: Any  # the request message, or the request iterator for client streams
    response_streaming: bool
    correlation_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def peer(self) -> str:
        return str(self.context.peer())


_current_call: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "insitu_call", default=None
)


def current_call() -> Call | None:
    """The RPC being served on this thread, if any."""
    return _current_call.get()


def annotate(**notes: str) -> None:
    """Attach non-secret facts (ids, serials) to the current call for its audit record."""
    call = _current_call.get()
    if call is not None:
        call.attributes.setdefault("notes", {}).update(notes)


class Layer:
    """One concern of the request path. Subclasses override :meth:`around`."""

    def around(self, call: Call, proceed: Callable[[], Any]) -> Any:
        return proceed()


def _run(layers: list[Layer], call: Call, handler: Callable[[], Any]) -> Any:
    _current_call.set(call)

    def step(i: int) -> Any:
        if i == len(layers):
            return handler()
        return layers[i].around(call, lambda: step(i + 1))

    return step(0)


class LayerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Wraps every method handler so ``layers`` run, outermost first."""

    def __init__(self, layers: list[Layer]) -> None:
        self._layers = list(layers)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        layers = self._layers

        def wrap(behavior: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
            if streaming:

                def stream_behavior(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    call = Call(method, context, request, True)
                    result = _run(layers, call, lambda: behavior(call.request, context))
                    yield from result

                return stream_behavior

            def unary_behavior(request: Any, context: grpc.ServicerContext) -> Any:
                call = Call(method, context, request, False)
                return _run(layers, call, lambda: behavior(call.request, context))

            return unary_behavior

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap(handler.unary_unary, False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap(handler.unary_stream, True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap(handler.stream_unary, False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            wrap(handler.stream_stream, True),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
