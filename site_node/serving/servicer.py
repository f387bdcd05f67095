"""``insitu.v1.SiteApi``: unary ``Predict`` and bidirectional ``PredictStream``.

Thin: unpack the request, call :class:`ServingRuntime`, pack the reply. Errors are
:class:`InsituError` and reach the client through the chain's error layer. The caller is
the principal the authn layer set; the audit layer gets metadata only (model, version,
rows, latency) through :func:`insitu.rpc.chain.annotate`, never inputs or outputs.

``PredictStream`` pipelines: a reader thread validates and queues each request as it
arrives (at most ``stream_window`` in flight), and responses go back in request order,
so one stream keeps the batcher fed. The first bad request ends the stream with its
status after the responses before it. Because the authz layer sees no single model for a
client stream, ``model_guard(principal, model)`` (if given) is asked once per distinct
model a stream names.

Example::

    servicer = SiteApiServicer(runtime, model_guard=cedar_check)
    site_pb2_grpc.add_SiteApiServicer_to_server(servicer, server)
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from insitu._proto.v1 import site_pb2, site_pb2_grpc
from insitu.errors import ErrorCode, InsituError
from insitu.identity.principal import Principal, current_principal
from insitu.rpc.chain import annotate
from site_node.serving.service import PendingPrediction, Prediction, ServingRuntime
from site_node.serving.validation import encode_tensors

__all__ = ["SiteApiServicer"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0  # when the client sets no deadline, a request still ends
_Item = tuple[site_pb2.PredictRequest, PendingPrediction] | InsituError | None


def _timeout(context: grpc.ServicerContext) -> float:
    remaining = context.time_remaining()
    return DEFAULT_TIMEOUT_S if remaining is None else max(0.0, min(remaining, 3600.0))


def _response(request: site_pb2.PredictRequest, p: Prediction) -> site_pb2.PredictResponse:
    return site_pb2.PredictResponse(
        model=p.model,
        version=str(p.version),
        outputs=encode_tensors(p.outputs),
        request_id=request.request_id,
    )


class SiteApiServicer(site_pb2_grpc.SiteApiServicer):
    def __init__(
        self,
        runtime: ServingRuntime,
        *,
        model_guard: Callable[[Principal, str], None] | None = None,
        stream_window: int = 64,
    ) -> None:
        self._runtime = runtime
        self._guard = model_guard
        self._window = stream_window

    def Predict(
        self, request: site_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> site_pb2.PredictResponse:
        principal = current_principal()
        annotate(model=request.model)
        t0 = time.perf_counter()
        p = self._runtime.predict(
            request.model,
            request.version,
            request.inputs,
            principal.spiffe_id.uri,
            timeout=_timeout(context),
        )
        annotate(
            version=str(p.version),
            rows=str(p.rows),
            latency_ms=f"{(time.perf_counter() - t0) * 1000:.3f}",
        )
        return _response(request, p)

    def PredictStream(
        self, request_iterator: Iterator[site_pb2.PredictRequest], context: grpc.ServicerContext
    ) -> Iterator[site_pb2.PredictResponse]:
        principal = current_principal()
        items: queue.Queue[_Item] = queue.Queue(maxsize=self._window)
        stop = threading.Event()
        reader = threading.Thread(
            target=self._read,
            args=(request_iterator, principal, items, stop),
            name="predict-stream-reader",
            daemon=True,
        )
        t0 = time.perf_counter()
        messages = rows = 0
        models: set[str] = set()
        versions: set[str] = set()
        reader.start()
        try:
            while True:
                item = items.get()
                if item is None:
                    return
                if isinstance(item, InsituError):
                    raise item
                request, pending = item
                p = pending.result(_timeout(context))
                messages, rows = messages + 1, rows + p.rows
                models.add(p.model)
                versions.add(f"{p.model}:{p.version}")
                yield _response(request, p)
        finally:
            stop.set()
            annotate(
                model=",".join(sorted(models)[:8]),
                version=",".join(sorted(versions)[:8]),
                messages=str(messages),
                rows=str(rows),
                latency_ms=f"{(time.perf_counter() - t0) * 1000:.3f}",
            )

    def _read(
        self,
        requests: Iterator[site_pb2.PredictRequest],
        principal: Principal,
        items: queue.Queue[_Item],
        stop: threading.Event,
    ) -> None:
        caller = principal.spiffe_id.uri
        allowed: set[str] = set()
        final: _Item = None
        try:
            for request in requests:
                if stop.is_set():
                    return
                if self._guard is not None and request.model not in allowed:
                    self._guard(principal, request.model)
                    allowed.add(request.model)
                pending = self._runtime.submit(
                    request.model, request.version, request.inputs, caller
                )
                if not _put(items, (request, pending), stop):
                    return
        except InsituError as e:
            final = e
        except grpc.RpcError:
            final = None  # the client went away; the stream is ending anyway
        except Exception:
            log.exception("PredictStream reader failed")
            final = InsituError(ErrorCode.INTERNAL, "stream reader failed")
        finally:
            _put(items, final, stop)


def _put(items: queue.Queue[_Item], item: _Item, stop: threading.Event) -> bool:
    """Put with backpressure; gives up when the response side has stopped."""
    while not stop.is_set():
        try:
            items.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
