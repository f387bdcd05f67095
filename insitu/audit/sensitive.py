"""Keyed HMAC-SHA256 of sensitive values, so records can say "this PAN" without holding it.

The key is a data key (in production a Vault transit data key, unwrapped in memory at
start by the caller through ``KeyService``); this module only ever sees raw key bytes.
Like Vault's ``sys/audit-hash``, whoever holds the key can answer "does value X appear
in the log?" with :meth:`SensitiveValueHasher.matches`, and nobody without it can.

Example::

    hasher = SensitiveValueHasher(data_key_bytes)
    rec = AuditRecord(..., sensitive={"pan": hasher.hmac("4111111111111111")})
    assert hasher.matches("4111111111111111", rec.sensitive["pan"])
"""

from __future__ import annotations

import hashlib
import hmac

from insitu.errors import ErrorCode, InsituError

__all__ = ["HMAC_PREFIX", "SensitiveValueHasher"]

HMAC_PREFIX = "hmac-sha256:"
_MIN_KEY_BYTES = 16


class SensitiveValueHasher:
    """HMAC-SHA256 under one data key. The key never appears in repr, str or errors."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) < _MIN_KEY_BYTES:
            raise InsituError(ErrorCode.CONFIG, f"HMAC key must be at least {_MIN_KEY_BYTES} bytes")
        self._key = bytes(key)

    def hmac(self, value: str | bytes) -> str:
        """``hmac-sha256:<64 hex>`` of ``value`` (str is UTF-8 encoded)."""
        data = value.encode() if isinstance(value, str) else value
        return HMAC_PREFIX + hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def matches(self, value: str | bytes, hmac_str: str) -> bool:
        """Whether ``hmac_str`` is the HMAC of ``value`` under this key (constant time)."""
        return hmac.compare_digest(self.hmac(value).encode(), hmac_str.encode())

    def __repr__(self) -> str:
        return "SensitiveValueHasher(key=<redacted>)"
