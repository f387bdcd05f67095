"""Serving one site's session stream: Hello, heartbeats, pushed work, and the reasons a
stream ends (revocation, expiry, silence, replacement)."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from coordinator.sessions import Session, SessionRegistry
from coordinator.store import CoordinatorStore
from insitu._proto.v1 import session_pb2
from insitu.errors import ErrorCode, InsituError
from insitu.identity.principal import Principal

__all__ = ["serve_session"]

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
MISSED_HEARTBEATS = 3


def _first_message(requests: Iterator[session_pb2.SiteMessage]) -> session_pb2.SiteMessage:
    box: list[session_pb2.SiteMessage] = []
    done = threading.Event()

    def read() -> None:
        # An empty box after the wait says it all: no Hello arrived.
        with contextlib.suppress(StopIteration, Exception):
            box.append(next(requests))
        done.set()

    threading.Thread(target=read, daemon=True).start()
    if not done.wait(HELLO_TIMEOUT_S) or not box:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "session must start with Hello")
    return box[0]


def serve_session(
    requests: Iterator[session_pb2.SiteMessage],
    principal: Principal,
    registry: SessionRegistry,
    store: CoordinatorStore,
    heartbeat_interval_ms: int,
    on_message: Callable[[Session, session_pb2.SiteMessage], None] | None = None,
    on_hello: Callable[[str, int], None] | None = None,
    active_jobs: Callable[[str], list[str]] | None = None,
) -> Iterator[session_pb2.CoordinatorMessage]:
    first = _first_message(requests)
    if first.WhichOneof("body") != "hello":
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "session must start with Hello")
    site_id = principal.name
    if first.hello.site_id != site_id:
        raise InsituError(ErrorCode.PERMISSION_DENIED, "Hello.site_id differs from the certificate")
    site = store.get_site(site_id)
    if site is None or site.status != "enrolled":
        raise InsituError(ErrorCode.SITE_REVOKED, f"site {site_id} may not open a session")

    key = first.hello.attestation_key
    if len(key) == 32 and not store.pin_attestation_key(site_id, key, now=int(time.time())):
        log.warning("site %s presented an attestation key other than the pinned one", site_id)
    akey = first.hello.audit_key
    if len(akey) == 32 and not store.pin_audit_key(site_id, akey, now=int(time.time())):
        log.warning("site %s presented an audit key other than the pinned one", site_id)
    if on_hello is not None:
        on_hello(site_id, int(first.hello.witnessed_size))
    held = frozenset(j[:64] for j in first.hello.active_job_ids[:1024])
    session = registry.open(site_id, principal.cert_serial, principal.not_after, held)
    stop_reader = threading.Event()

    def reader() -> None:
        try:
            for msg in requests:
                if stop_reader.is_set():
                    break
                session.touch()
                kind = msg.WhichOneof("body")
                if kind == "heartbeat":
                    session.outbound.put(
                        session_pb2.CoordinatorMessage(
                            heartbeat_ack=session_pb2.HeartbeatAck(
                                seq=msg.heartbeat.seq, received_unix_ms=int(time.time() * 1000)
                            )
                        )
                    )
                elif on_message is not None:
                    on_message(session, msg)
            session.close("site closed the stream")
        except Exception as e:  # the stream broke: cancelled, reset or deadline
            session.close(f"stream ended ({type(e).__name__})")

    threading.Thread(target=reader, name=f"session-{site_id}", daemon=True).start()
    silence_s = MISSED_HEARTBEATS * heartbeat_interval_ms / 1000
    try:
        yield session_pb2.CoordinatorMessage(
            welcome=session_pb2.Welcome(
                session_id=session.session_id,
                site_id=site_id,
                heartbeat_interval_ms=heartbeat_interval_ms,
                active_job_ids=active_jobs(site_id) if active_jobs is not None else [],
            )
        )
        while not session.closed.is_set():
            try:
                yield session.outbound.get(timeout=0.25)
                continue
            except queue.Empty:
                pass
            if datetime.now(UTC) >= session.cert_not_after:
                session.close("certificate expired", ErrorCode.CERT_EXPIRED.value)
            elif time.time() - session.last_seen > silence_s:
                session.close("heartbeats stopped")
        # Drain what was queued before the close (e.g. the last acks).
        while True:
            try:
                yield session.outbound.get_nowait()
            except queue.Empty:
                break
        if session.close_code:
            raise InsituError(ErrorCode(session.close_code), session.close_reason)
        if session.close_reason == "replaced by a newer session":
            yield session_pb2.CoordinatorMessage(
                goodbye=session_pb2.Goodbye(reason=session.close_reason)
            )
    finally:
        stop_reader.set()
        registry.remove(session)
        log.info("session %s of %s closed: %s", session.session_id, site_id, session.close_reason)
