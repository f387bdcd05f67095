"""One guarded doorway to the Vault HTTP API: timeouts, re-login, and error translation.

Every request insitu makes to Vault goes through :class:`VaultSession`, so that every
failure becomes an :class:`InsituError` whose detail is safe to log: no tokens, no key
material, no CSR or certificate bodies.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import hvac
import hvac.exceptions
import requests

from insitu.errors import ErrorCode, InsituError

__all__ = ["DEFAULT_TIMEOUT_S", "VaultSession", "sanitize"]

DEFAULT_TIMEOUT_S = 10.0

_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(-----END [A-Z0-9 ]+-----|$)", re.S)
# Long mixed-case base64 or hex runs are ciphertexts, keys or tokens: never let them into
# a message. Lowercase names, SPIFFE ids and colon-hex serials are left readable.
_LONG_OPAQUE = re.compile(
    r"(?=[A-Za-z0-9+/=_-]*[A-Z])(?=[A-Za-z0-9+/=_-]*[0-9])[A-Za-z0-9+/=_-]{24,}"
)
_LONG_HEX = re.compile(r"\b[0-9a-fA-F]{32,}\b")
_TOKEN_LIKE = re.compile(r"\b(?:hvs|hvb|hvr|s|b|r)\.[A-Za-z0-9_-]{8,}")
_MAX_DETAIL = 300

_UNAVAILABLE = (
    hvac.exceptions.InternalServerError,
    hvac.exceptions.VaultDown,
    hvac.exceptions.VaultNotInitialized,
    hvac.exceptions.BadGateway,
    hvac.exceptions.RateLimitExceeded,
    hvac.exceptions.UnexpectedError,
)


def sanitize(text: str) -> str:
    """Strip PEM blocks, token-like and long opaque strings, and cap the length."""
    text = _PEM_BLOCK.sub("<pem>", text)
    text = _TOKEN_LIKE.sub("<token>", text)
    text = _LONG_OPAQUE.sub("<opaque>", text)
    text = _LONG_HEX.sub("<opaque>", text)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def _server_message(exc: hvac.exceptions.VaultError) -> str:
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list) and errors:
        return sanitize("; ".join(str(e) for e in errors))
    # hvac appends ", on <method> <url>"; the path alone is enough and is not secret.
    return sanitize(str(exc).split(", on ", 1)[0])


class VaultSession:
    """An ``hvac.Client`` plus an optional login callback used to recover from expiry.

    ``login`` (if given) must authenticate ``client`` afresh; it is called once when a call
    is refused with 403, because Vault answers 403 for an expired or revoked token too.
    """

    def __init__(self, client: hvac.Client, login: Callable[[], None] | None = None) -> None:
        self.client = client
        self._login = login
        self._login_lock = threading.Lock()

    @property
    def address(self) -> str:
        url: str = self.client.url
        return url

    def read(self, what: str, path: str) -> dict[str, Any] | None:
        """GET ``path``; None when Vault has nothing there (404)."""
        try:
            result = self.call(what, lambda: self.client.read(path))
        except InsituError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return None
            raise
        return _as_dict(result)

    def write(self, what: str, path: str, **data: Any) -> dict[str, Any] | None:
        """POST ``data`` to ``path``; the JSON reply, or None for 204."""
        return _as_dict(self.call(what, lambda: self.client.write_data(path, data=data)))

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (an hvac call) with re-login on 403 and errors made safe.

        ``what`` names the operation in error messages ("sign CSR with role site").
        """
        try:
            return self._translate(what, fn)
        except InsituError as exc:
            if exc.code is not ErrorCode.PERMISSION_DENIED or self._login is None:
                raise
        self.relogin(what)
        return self._translate(what, fn)

    def relogin(self, what: str) -> None:
        """Authenticate again through the login callback (no-op without one)."""
        if self._login is None:
            return
        with self._login_lock:
            try:
                self._translate(f"log in to Vault (for: {what})", self._login)
            except InsituError as exc:
                # Vault answers a wrong or expired secret id with 400; to callers it is a
                # refusal, not a malformed request of theirs.
                if exc.code is ErrorCode.INVALID_ARGUMENT:
                    raise InsituError(ErrorCode.PERMISSION_DENIED, exc.detail) from None
                raise

    def _translate(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise InsituError(
                ErrorCode.VAULT_UNAVAILABLE,
                f"{what}: cannot reach Vault at {self.address} ({type(exc).__name__})",
            ) from None
        except requests.exceptions.RequestException as exc:
            raise InsituError(
                ErrorCode.VAULT_UNAVAILABLE, f"{what}: HTTP failure ({type(exc).__name__})"
            ) from None
        except hvac.exceptions.InvalidPath as exc:
            raise InsituError(ErrorCode.NOT_FOUND, f"{what}: {_server_message(exc)}") from None
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as exc:
            raise InsituError(
                ErrorCode.PERMISSION_DENIED, f"{what}: {_server_message(exc)}"
            ) from None
        except hvac.exceptions.InvalidRequest as exc:
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT, f"{what}: {_server_message(exc)}"
            ) from None
        except _UNAVAILABLE as exc:
            raise InsituError(
                ErrorCode.VAULT_UNAVAILABLE, f"{what}: {_server_message(exc)}"
            ) from None
        except hvac.exceptions.VaultError as exc:
            raise InsituError(ErrorCode.INTERNAL, f"{what}: {_server_message(exc)}") from None


def _as_dict(result: Any) -> dict[str, Any] | None:
    if result is None:
        return None
    if isinstance(result, dict):
        return result
    if isinstance(result, requests.Response):
        if not result.content:
            return None
        try:
            parsed = result.json()
        except ValueError:
            raise InsituError(ErrorCode.INTERNAL, "Vault answered with a non-JSON body") from None
        return parsed if isinstance(parsed, dict) else None
    raise InsituError(ErrorCode.INTERNAL, f"unexpected reply type {type(result).__name__}")
