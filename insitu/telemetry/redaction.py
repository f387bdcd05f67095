"""Masking of secret-shaped text: what log lines are passed through before they leave
the process.

Two mechanisms:

- **shapes**: PEM blocks, Vault/OpenBao tokens (``hvs.``/``hvb.``/``s.``/``b.``), join
  tokens (``isj_``), bearer tokens and ``password=``-style pairs, payment card numbers
  (13-19 digits, spaces or dashes allowed, Luhn-valid), SSNs (``ddd-dd-dddd``), e-mail
  addresses, and long base64 blobs (mixed case and digits, at least 40 characters);
- **registered values**: :func:`register_secret` adds a known secret (a root token, an
  unwrapped data key) and its hex and base64 forms, masked wherever they appear.

Example::

    register_secret(data_key.plaintext)
    redact(f"key={data_key.plaintext.hex()}")    # -> "key=[REDACTED:secret]"
"""

from __future__ import annotations

import base64
import contextlib
import re
import threading
from collections.abc import Callable

from insitu.errors import ErrorCode, InsituError

__all__ = ["MIN_SECRET_LEN", "forget_secret", "redact", "register_secret"]

MIN_SECRET_LEN = 8


def _mask(kind: str) -> str:
    return f"[REDACTED:{kind}]"


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _pan(m: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", m.group(0))
    return _mask("pan") if 13 <= len(digits) <= 19 and _luhn_ok(digits) else m.group(0)


def _blob(m: re.Match[str]) -> str:
    s = m.group(0)
    has_mix = (
        any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s)
    )
    # File paths are long runs of this alphabet too, but with a '/' every few characters.
    pathish = s.count("/") * 12 > len(s)
    return _mask("blob") if has_mix and not pathish else s


_Rule = tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]

_SHAPES: list[_Rule] = [
    (re.compile(r"-----BEGIN ([A-Z0-9 ]{1,64})-----[\s\S]*?-----END \1-----"), _mask("pem")),
    # A block cut short (a truncated line) still must not show its body.
    (re.compile(r"-----BEGIN [A-Z0-9 ]{0,64}(?:PRIVATE KEY|CERTIFICATE)-----[\s\S]*"),
     _mask("pem")),
    (re.compile(r"(?<![A-Za-z0-9_.])(?:hv[sbr]|[sbr])\.[A-Za-z0-9_+/=-]{20,}"), _mask("vault")),
    (re.compile(r"(?<![A-Za-z0-9])isj_[A-Za-z0-9_-]{8,}"), _mask("join_token")),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + _mask("token")),
    (re.compile(
        r"(?i)([A-Za-z0-9_-]*(?:token|password|passwd|passphrase|secret|secret_id|api[_-]?key))"
        r"(\"?'?\s*[:=]\s*\"?'?)([^\s\"',;&}]{4,})"),
     r"\1\2" + _mask("secret")),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
     _mask("email")),
    (re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])"), _mask("ssn")),
    (re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)"), _pan),
    (re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{40,}={0,2}"), _blob),
    (re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{40,}"), _blob),
]  # fmt: skip

_lock = threading.Lock()
_secrets: set[str] = set()
_secret_re: re.Pattern[str] | None = None


def _forms(value: str | bytes) -> set[str]:
    raw = value.encode() if isinstance(value, str) else bytes(value)
    forms = {
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
    }
    forms |= {f.rstrip("=") for f in forms}
    if isinstance(value, str):
        forms.add(value)
    else:
        with contextlib.suppress(UnicodeDecodeError):
            forms.add(raw.decode("utf-8"))
    return {f for f in forms if len(f) >= MIN_SECRET_LEN}


def _rebuild() -> None:
    global _secret_re
    ordered = sorted(_secrets, key=len, reverse=True)  # longest first: no partial masks
    _secret_re = re.compile("|".join(map(re.escape, ordered))) if ordered else None


def register_secret(value: str | bytes) -> None:
    """Mask ``value`` (and its hex and base64 forms) in every redacted text from now on.

    Secrets shorter than :data:`MIN_SECRET_LEN` are refused: they cannot be masked
    without masking ordinary text too.
    """
    if len(value) < MIN_SECRET_LEN:
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, f"a registered secret needs >= {MIN_SECRET_LEN} characters"
        )
    with _lock:
        _secrets.update(_forms(value))
        _rebuild()


def forget_secret(value: str | bytes) -> None:
    """Stop masking ``value`` (e.g. a rotated-out key)."""
    with _lock:
        _secrets.difference_update(_forms(value))
        _rebuild()


def redact(text: str) -> str:
    """``text`` with registered secrets and secret-shaped substrings masked."""
    pattern = _secret_re
    if pattern is not None:
        text = pattern.sub(_mask("secret"), text)
    for rule, repl in _SHAPES:
        text = rule.sub(repl, text)
    return text
