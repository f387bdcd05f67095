"""Authentication: the TLS peer certificate becomes a :class:`Principal`.

The handshake already proved possession of the key and a chain to the federation CA.
This layer adds what TLS in Python cannot: the SPIFFE id and trust domain, expiry at the
time of the call, and revocation (CRL) on every call. Identity reaches handlers through
:data:`insitu.identity.principal.principal_var`.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import grpc

from insitu.errors import ErrorCode, InsituError
from insitu.identity.credentials import CertInfo, cert_info
from insitu.identity.principal import Principal, principal_var
from insitu.rpc.chain import Call, Layer
from insitu.rpc.revocation import RevocationList

__all__ = ["Authenticator", "AuthnLayer"]

_CACHE_SIZE = 1024


class Authenticator:
    """Turns a peer certificate into a Principal, or raises UNAUTHENTICATED-class errors."""

    def __init__(
        self,
        trust_domain: str,
        revocation: RevocationList | None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.trust_domain = trust_domain
        self.revocation = revocation
        self._clock = clock
        self._cache: OrderedDict[bytes, CertInfo] = OrderedDict()
        self._lock = threading.Lock()

    def _info(self, pem: bytes) -> CertInfo:
        with self._lock:
            info = self._cache.get(pem)
            if info is not None:
                self._cache.move_to_end(pem)
                return info
        info = cert_info(pem)
        with self._lock:
            self._cache[pem] = info
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return info

    def from_context(self, context: grpc.ServicerContext) -> Principal:
        auth = context.auth_context() or {}
        certs = auth.get("x509_pem_cert") or []
        if not certs:
            raise InsituError(ErrorCode.UNAUTHENTICATED, "no client certificate")
        # Fail closed: a connection that does not report TLS 1.3 is not trusted to be it.
        if auth.get("ssl_tls_version") != [b"TLSv1.3"]:
            raise InsituError(ErrorCode.UNAUTHENTICATED, "TLS 1.3 is required")
        return self.check(self._info(certs[0]), peer=str(context.peer()))

    def check(self, info: CertInfo, *, peer: str = "") -> Principal:
        """Validate ``info`` now (identity, expiry, revocation) and return its Principal."""
        sid = info.spiffe_id
        if sid is None:
            raise InsituError(ErrorCode.UNAUTHENTICATED, "certificate has no SPIFFE id")
        if sid.trust_domain != self.trust_domain:
            raise InsituError(ErrorCode.UNAUTHENTICATED, "certificate of a foreign trust domain")
        now = self._clock()
        if now >= info.not_after:
            raise InsituError(ErrorCode.CERT_EXPIRED, f"certificate expired at {info.not_after}")
        if self.revocation is not None and self.revocation.is_revoked(info.serial):
            raise InsituError(ErrorCode.CERT_REVOKED, f"serial {info.serial:x} is revoked")
        return Principal(
            spiffe_id=sid,
            cert_fingerprint=info.fingerprint,
            cert_serial=info.serial,
            not_after=info.not_after,
            auth_method="mtls",
            peer=peer,
        )


class AuthnLayer(Layer):
    """Sets the call's principal; methods in ``public_methods`` skip authentication."""

    def __init__(
        self,
        authenticator: Authenticator,
        *,
        public_methods: frozenset[str] = frozenset(),
        on_failure: Callable[[Call, InsituError], None] | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.public_methods = public_methods
        self.on_failure = on_failure

    def around(self, call: Call, proceed: Callable[[], Any]) -> Any:
        if call.method in self.public_methods:
            return proceed()
        if call.response_streaming:
            return self._stream(call, proceed)
        token = principal_var.set(self._authenticate(call))
        try:
            return proceed()
        finally:
            _reset(token)

    def _stream(self, call: Call, proceed: Callable[[], Any]) -> Iterator[Any]:
        token = principal_var.set(self._authenticate(call))
        try:
            yield from proceed()
        finally:
            _reset(token)

    def _authenticate(self, call: Call) -> Principal:
        try:
            principal = self.authenticator.from_context(call.context)
        except InsituError as e:
            if self.on_failure is not None:
                with contextlib.suppress(InsituError):  # refused either way
                    self.on_failure(call, e)
            raise
        call.attributes["principal"] = principal
        return principal


def _reset(token: contextvars.Token[Principal | None]) -> None:
    # A stream's generator may be closed from another thread's context on cancellation.
    try:
        principal_var.reset(token)
    except ValueError:
        principal_var.set(None)
