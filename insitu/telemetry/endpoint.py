"""The process's ``/metrics`` HTTP endpoint: several registries, one scrape target,
bound to loopback unless a wider bind is asked for explicitly.

Example::

    server, port = start_metrics_server("127.0.0.1:0", [process_metrics().registry])
    server.add_registry(serving_metrics.registry)      # e.g. once serving starts
    ...
    server.close()
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from insitu.errors import ErrorCode, InsituError

__all__ = ["MetricsServer", "parse_listen", "start_metrics_server"]


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` / ``"[::1]:0"`` / ``"localhost:0"`` → (host, port)."""
    host, sep, port_s = listen.rpartition(":")
    if not sep or not host or not port_s.isdigit() or int(port_s) > 65535:
        raise InsituError(ErrorCode.CONFIG, "metrics listen address must be host:port")
    return host.strip("[]"), int(port_s)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Merged:
    """A read-only view over several registries (the text format needs only collect)."""

    def __init__(self, registries: Iterable[Collector]) -> None:
        self._lock = threading.Lock()
        self._registries: list[Collector] = list(registries)

    def add(self, registry: Collector) -> None:
        with self._lock:
            if registry not in self._registries:
                self._registries.append(registry)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            registries = list(self._registries)
        for r in registries:
            yield from r.collect()


class MetricsServer:
    """A running endpoint; :meth:`close` stops it."""

    def __init__(self, httpd: ThreadingHTTPServer, merged: _Merged) -> None:
        self._httpd = httpd
        self._merged = merged
        self._thread = threading.Thread(
            target=httpd.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def add_registry(self, registry: Collector) -> None:
        """Serve ``registry`` too (metric names must not clash with the others)."""
        self._merged.add(registry)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def _handler_for(merged: _Merged) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            body = generate_latest(merged)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None  # scrapes every few seconds would flood the process log

    return Handler


def start_metrics_server(
    listen: str = "127.0.0.1:0",
    registries: Sequence[Collector] | None = None,
    *,
    allow_non_loopback: bool = False,
) -> tuple[MetricsServer, int]:
    """Serve ``registries`` (default: the process metrics) on ``http://listen/metrics``.

    A host that is not loopback (e.g. ``0.0.0.0`` inside a container network) is refused
    unless ``allow_non_loopback=True``.
    """
    host, port = parse_listen(listen)
    if not _is_loopback(host) and not allow_non_loopback:
        raise InsituError(
            ErrorCode.CONFIG,
            "metrics endpoint binds to loopback unless allow_non_loopback=True is given",
        )
    if registries is None:
        from insitu.telemetry.metrics import process_metrics

        registries = [process_metrics().registry]
    merged = _Merged(registries)

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = _family(host)

    httpd = _Server((host, port), _handler_for(merged))
    server = MetricsServer(httpd, merged)
    return server, server.port


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET
