"""The site's side of the session: dial out to the coordinator, keep one mTLS stream
open with heartbeats, reconnect with exponential backoff and full jitter, and renew the
certificate at 2/3 of its lifetime without dropping the session (make-before-break: the
new stream is welcomed before the old one closes).

Each stream's Hello says which jobs the site holds (``active_job_ids``); the Welcome that
answers it says which ones the coordinator runs with this site, and ``on_welcome`` (the
daemon reconciles its jobs) runs before the stream's next message is read.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import grpc

from insitu._proto.v1 import session_pb2, session_pb2_grpc
from insitu.errors import ErrorCode, InsituError
from insitu.identity.credentials import Credentials, build_csr, generate_private_key, key_to_pem
from insitu.identity.spiffe import SpiffeId
from insitu.rpc.server import secure_channel
from site_node.egress import EgressGuard
from site_node.settings import SiteSettings
from site_node.training.capacity import JobSlot

__all__ = ["SessionStatus", "SiteRefused", "SiteSession"]

log = logging.getLogger(__name__)

WELCOME_TIMEOUT_S = 15.0
SOFTWARE_VERSION = "insitu-site/0.1"


class SiteRefused(InsituError):
    """The federation refused this site's identity (revoked or expired): stop dialling."""


@dataclass
class SessionStatus:
    connected: bool = False
    session_id: str = ""
    connects: int = 0
    heartbeats_acked: int = 0
    renewals: int = 0
    cert_serial: str = ""
    cert_not_after: int = 0
    last_error: str = ""
    api_port: int = 0
    metrics_port: int = 0
    sandbox: str = "bubblewrap"  # or "off (unsafe_unsandboxed_jobs)"
    unsandboxed_job_starts: int = 0
    jobs: list[JobSlot] = field(default_factory=list)  # running, then queued


Inbound = Callable[[session_pb2.CoordinatorMessage], None]
WelcomeHook = Callable[[session_pb2.Welcome], None]


class _Stream:
    """One Connect call on its own channel. Every message it sends passes the guard."""

    def __init__(
        self,
        s: SiteSettings,
        creds: Credentials,
        guard: EgressGuard,
        on_inbound: Inbound | None,
        hello: session_pb2.Hello,
        on_welcome: WelcomeHook | None = None,
    ) -> None:
        self.settings = s
        self.guard = guard
        self.on_inbound = on_inbound
        self.on_welcome = on_welcome
        self.creds = creds
        self.hello = hello
        self.channel = secure_channel(
            s.coordinator, ca_pem=creds.ca_pem, creds=creds, server_name=s.server_name
        )
        self._out: queue.Queue[session_pb2.SiteMessage | None] = queue.Queue()
        self.welcomed = threading.Event()
        self.ended = threading.Event()
        self.error: grpc.RpcError | None = None
        self.goodbye = ""
        self.session_id = ""
        self.acks = 0
        self._call: grpc.Future | None = None

    def _requests(self) -> Iterator[session_pb2.SiteMessage]:
        yield self.guard.admit(session_pb2.SiteMessage(hello=self.hello))
        while True:
            item = self._out.get()
            if item is None:
                return
            yield item

    def start(self) -> None:
        threading.Thread(target=self._run, name="site-stream", daemon=True).start()

    def _run(self) -> None:
        try:
            call = session_pb2_grpc.SiteSessionStub(self.channel).Connect(self._requests())
            self._call = call
            for msg in call:
                kind = msg.WhichOneof("body")
                if kind == "welcome":
                    self.session_id = msg.welcome.session_id
                    self._welcome(msg.welcome)
                    self.welcomed.set()
                elif kind == "heartbeat_ack":
                    self.acks += 1
                elif kind == "goodbye":
                    self.goodbye = msg.goodbye.reason
                elif self.on_inbound is not None:
                    self.on_inbound(msg)
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.ended.set()

    def _welcome(self, welcome: session_pb2.Welcome) -> None:
        # In this reader thread, before the stream's next message is read: the site agrees
        # with the coordinator's list of jobs before any proposal or task that follows it.
        if self.on_welcome is None:
            return
        try:
            self.on_welcome(welcome)
        except Exception:  # the session must survive a failed reconcile
            log.exception("handling the Welcome of session %s failed", welcome.session_id)

    def send(self, msg: session_pb2.SiteMessage) -> None:
        self._out.put(self.guard.admit(msg))

    def heartbeat(self, seq: int) -> None:
        self.send(
            session_pb2.SiteMessage(
                heartbeat=session_pb2.Heartbeat(seq=seq, sent_unix_ms=int(time.time() * 1000))
            )
        )

    def close(self) -> None:
        self._out.put(None)  # half-close: the coordinator ends the stream cleanly
        self.ended.wait(5)
        if self._call is not None and not self.ended.is_set():
            self._call.cancel()
        self.channel.close()


class SiteSession:
    """Supervises the session stream until :meth:`stop`."""

    def __init__(
        self,
        settings: SiteSettings,
        guard: EgressGuard | None = None,
        on_inbound: Inbound | None = None,
        attestation_key: bytes = b"",
        audit_key: bytes = b"",
    ) -> None:
        self.settings = settings
        self.attestation_key = attestation_key
        self.audit_key = audit_key
        # Set by the daemon: what the Hello reports, what a Welcome triggers, what status shows.
        self.witnessed_size: Callable[[], int] = lambda: 0
        self.active_job_ids: Callable[[], list[str]] = lambda: []
        self.on_welcome: WelcomeHook | None = None
        self.job_slots: Callable[[], list[JobSlot]] = lambda: []
        self._status_lock = threading.Lock()
        self.guard = guard or EgressGuard(lambda kind, reason: None)
        self.on_inbound = on_inbound
        self._current: _Stream | None = None
        self.status = SessionStatus()
        self.refused = ""  # why the federation refused us, once it has
        self._stop = threading.Event()
        self._hb_seq = 0

    def stop(self) -> None:
        self._stop.set()

    def send(self, msg: session_pb2.SiteMessage) -> None:
        """Send on the live stream (through the egress guard); UNAVAILABLE if none."""
        stream = self._current
        if stream is None or stream.ended.is_set():
            raise InsituError(ErrorCode.UNAVAILABLE, "no session with the coordinator")
        stream.send(msg)

    def status_changed(self) -> None:
        """Rewrite ``status.json`` now (e.g. a job started or was queued)."""
        self._write_status()

    def _write_status(self) -> None:
        path = self.settings.site_dir / "status.json"
        tmp = path.with_suffix(".tmp")
        with self._status_lock:  # the session loop and job threads both write it
            self.status.jobs = self.job_slots()
            tmp.write_text(json.dumps(asdict(self.status)))
            tmp.replace(path)

    def _hello(self, replaces: str = "") -> session_pb2.Hello:
        return session_pb2.Hello(
            site_id=self.settings.site_id,
            software_version=SOFTWARE_VERSION,
            replaces_session_id=replaces,
            attestation_key=self.attestation_key,
            audit_key=self.audit_key,
            witnessed_size=self.witnessed_size(),
            active_job_ids=self.active_job_ids(),
        )

    def _backoff(self, attempt: int) -> float:
        cap = min(self.settings.backoff_max_s, self.settings.backoff_initial_s * (2**attempt))
        return random.uniform(0, cap)  # full jitter: reconnect storms spread out

    def run(self) -> None:
        """Blocking. Raises :class:`SiteRefused` if the federation refuses this identity."""
        attempt = 0
        while not self._stop.is_set():
            creds = Credentials.load(self.settings.tls_dir)
            self._note_cert(creds)
            stream = _Stream(
                self.settings, creds, self.guard, self.on_inbound, self._hello(), self.on_welcome
            )
            # Replies to what arrives right after Welcome go on this stream.
            self._current = stream
            stream.start()
            if not self._await_welcome(stream):
                self._fail(stream)
                delay = self._backoff(attempt)
                attempt += 1
                log.info("coordinator unreachable; retrying in %.1fs", delay)
                self._stop.wait(delay)
                continue
            attempt = 0
            self._on_connected(stream)
            stream = self._steady(stream)
            self.status.connected = False
            self._write_status()
            if self._stop.is_set():
                stream.close()
                break
            self._fail(stream)
        self._write_status()

    def _await_welcome(self, stream: _Stream) -> bool:
        deadline = time.monotonic() + WELCOME_TIMEOUT_S
        while time.monotonic() < deadline and not self._stop.is_set():
            if stream.welcomed.wait(0.1):
                return True
            if stream.ended.is_set():
                return False
        stream.close()
        return False

    def _fail(self, stream: _Stream) -> None:
        err = stream.error
        if err is None:
            return
        stream.channel.close()
        self.status.last_error = f"{err.code().name}: {err.details()}"
        self._write_status()
        if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            details = err.details() or ""
            if "revoked" in details or "expired" in details:
                raise SiteRefused(ErrorCode.SITE_REVOKED, details)

    def _on_connected(self, stream: _Stream) -> None:
        self._current = stream
        self.status.connected = True
        self.status.connects += 1
        self.status.session_id = stream.session_id
        self.status.last_error = ""
        self._write_status()
        log.info("session %s open", stream.session_id)

    def _note_cert(self, creds: Credentials) -> None:
        info = creds.info
        self.status.cert_serial = f"{info.serial:x}"
        self.status.cert_not_after = int(info.not_after.timestamp())

    def _steady(self, stream: _Stream) -> _Stream:
        interval = self.settings.heartbeat_interval_ms / 1000
        next_hb = time.monotonic()
        acked = 0
        while not self._stop.is_set() and not stream.ended.is_set():
            now = time.monotonic()
            if now >= next_hb:
                self._hb_seq += 1
                stream.heartbeat(self._hb_seq)
                next_hb = now + interval
            if stream.acks != acked:
                self.status.heartbeats_acked += stream.acks - acked
                acked = stream.acks
                self._write_status()
            if self._renewal_due(stream.creds):
                replacement = self._renew(stream)
                if replacement is not None:
                    stream, acked = replacement, 0
            self._stop.wait(min(0.1, interval))
        return stream

    def _renewal_due(self, creds: Credentials) -> bool:
        elapsed = creds.info.lifetime_fraction_elapsed(datetime.now(UTC))
        return elapsed >= self.settings.renew_at_fraction

    def _renew(self, old: _Stream) -> _Stream | None:
        """New key, new CSR over the live mTLS identity; then make-before-break."""
        sid = SpiffeId.site(self.settings.trust_domain, self.settings.site_id)
        key = generate_private_key()
        try:
            reply = session_pb2_grpc.SiteSessionStub(old.channel).Renew(
                session_pb2.RenewRequest(csr_pem=build_csr(key, sid)), timeout=15
            )
        except grpc.RpcError as e:
            self.status.last_error = f"renewal failed: {e.code().name}"
            self._write_status()
            return None
        c = reply.certificate
        creds = Credentials(key_to_pem(key), c.cert_pem, c.chain_pem, c.ca_pem)
        if creds.info.spiffe_id != sid:
            log.error("renewed certificate names another identity; keeping the old one")
            return None
        creds.save(self.settings.tls_dir)
        new = _Stream(
            self.settings, creds, self.guard, self.on_inbound, self._hello(old.session_id),
            self.on_welcome,
        )
        new.start()
        if not new.welcomed.wait(WELCOME_TIMEOUT_S):
            new.close()
            return None
        self._current = new
        old.close()
        self._note_cert(creds)
        self.status.renewals += 1
        self.status.session_id = new.session_id
        self._write_status()
        log.info(
            "certificate renewed (serial %s); session %s replaces %s",
            self.status.cert_serial,
            new.session_id,
            old.session_id,
        )
        return new
