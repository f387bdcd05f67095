"""Structured (JSON lines) logging with redaction applied before anything is written.

Every record that reaches the handler :func:`setup_logging` installs is redacted
(:mod:`insitu.telemetry.redaction`): the formatted message (so ``%s`` arguments too),
the exception text, the stack, and extra fields; the finished line is redacted once
more, so a secret cannot slip through a field this module does not know about.

Example::

    setup_logging("INFO", json=True, capture_uncaught=True)
    register_secret(root_token)
    logging.getLogger(__name__).info("site %s enrolled", site_id)
"""

from __future__ import annotations

import json as _json
import logging
import sys
import threading
import traceback
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

from opentelemetry import trace

from insitu.telemetry.redaction import redact

__all__ = ["JsonFormatter", "RedactingFilter", "RedactingFormatter", "setup_logging"]

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "_insitu_redacted",
}  # fmt: skip


def _redact_record(record: logging.LogRecord) -> None:
    """Replace the record's message, args, exception and stack by redacted text, once."""
    if getattr(record, "_insitu_redacted", False):
        return
    try:
        message = record.getMessage()
    except Exception:  # a bad format string must not lose the line or leak the args
        message = f"{record.msg!s} (unformattable arguments)"
    record.msg, record.args = redact(message), None
    if record.exc_info:
        record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        # Drop the live exception: a later handler would format it afresh, unredacted.
        record.exc_info = None
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    for key, value in list(vars(record).items()):
        if key not in _STANDARD:
            setattr(record, key, _redact_value(value))
    record._insitu_redacted = True


def _redact_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record before any formatter sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


class RedactingFormatter(logging.Formatter):
    """Plain-text formatting, redacted (record fields first, then the whole line)."""

    def format(self, record: logging.LogRecord) -> str:
        _redact_record(record)
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, thread, trace ids, exc, extras."""

    def format(self, record: logging.LogRecord) -> str:
        _redact_record(record)
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "thread": record.threadName,
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            out["trace_id"] = f"{span.trace_id:032x}"
            out["span_id"] = f"{span.span_id:016x}"
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        return redact(_json.dumps(out, default=str))


_installed_lock = threading.Lock()
_installed: logging.Handler | None = None


def setup_logging(
    level: int | str = "INFO",
    *,
    json: bool = True,
    stream: TextIO | None = None,
    capture_uncaught: bool = False,
) -> logging.Handler:
    """Install insitu's redacting handler on the root logger (replacing one installed
    by an earlier call) and return it.

    ``capture_uncaught`` routes uncaught exceptions (main and other threads) through the
    same handler, so their tracebacks are redacted too; daemons should set it.
    """
    global _installed
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RedactingFilter())
    text_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(JsonFormatter() if json else RedactingFormatter(text_format))
    root = logging.getLogger()
    with _installed_lock:
        if _installed is not None:
            root.removeHandler(_installed)
        root.addHandler(handler)
        _installed = handler
    root.setLevel(level)
    logging.captureWarnings(True)
    if capture_uncaught:
        _capture_uncaught()
    return handler


def _capture_uncaught() -> None:
    log = logging.getLogger("insitu.uncaught")

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        log.critical("uncaught exception", exc_info=(exc_type, exc, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            log.critical(
                "uncaught exception in thread %s",
                args.thread.name if args.thread else "?",
                exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
            )

    sys.excepthook = hook
    threading.excepthook = thread_hook
