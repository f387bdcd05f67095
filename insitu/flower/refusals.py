"""Why a site answered an instruction with an error: the codes that cross the wire.

A site never sends free text about a failure (it could quote local data). Its Flower
``Error`` reply carries one code from this table and, as ``reason``, the table's fixed
text for it. The coordinator renders ``"<site>: <text>"`` for the engineer.

Flower's own codes (0-99) keep their meaning; insitu's site codes start at 1000.

Example::

    reply = Message(Error(code=SiteRefusal.METRIC_KEY_UNDECLARED,
                          reason=refusal_text(SiteRefusal.METRIC_KEY_UNDECLARED)), reply_to=msg)
    refusal_text(reply.error.code)   # "metric key not declared"
"""

from __future__ import annotations

import enum
from typing import Final

from flwr.common.constant import ErrorCode as FlowerErrorCode

__all__ = ["REFUSAL_TEXT", "SiteRefusal", "refusal_text"]


class SiteRefusal(enum.IntEnum):
    WORKER_CRASHED = 1001
    WORKER_TIMEOUT = 1002
    WORKER_LIMIT = 1003
    SANDBOX_UNAVAILABLE = 1004
    ERROR_REASON_REPLACED = 1010  # the app's own Error reply: its reason never leaves
    METRIC_KEY_UNDECLARED = 1011
    METRIC_RECORD_UNDECLARED = 1012
    METRIC_VALUE_NOT_NUMERIC = 1013
    METRICS_TOO_LARGE = 1014
    ARRAYS_MISMATCH = 1015
    ARRAYS_UNEXPECTED = 1016
    REPLY_TOO_LARGE = 1017
    REPLY_MALFORMED = 1018
    DP_BUDGET_EXCEEDED = 1020
    DP_NOT_APPLICABLE = 1021
    SITE_INTERNAL = 1099


REFUSAL_TEXT: Final[dict[int, str]] = {
    SiteRefusal.WORKER_CRASHED: "job worker crashed",
    SiteRefusal.WORKER_TIMEOUT: "job worker exceeded the time limit per message",
    SiteRefusal.WORKER_LIMIT: "job worker exceeded a sandbox resource limit",
    SiteRefusal.SANDBOX_UNAVAILABLE: "job sandbox unavailable at the site",
    SiteRefusal.ERROR_REASON_REPLACED: "ClientApp replied with an error",
    SiteRefusal.METRIC_KEY_UNDECLARED: "metric key not declared",
    SiteRefusal.METRIC_RECORD_UNDECLARED: "metric record not declared",
    SiteRefusal.METRIC_VALUE_NOT_NUMERIC: "metric or config value is not a number",
    SiteRefusal.METRICS_TOO_LARGE: "metrics exceed the site's bounds",
    SiteRefusal.ARRAYS_MISMATCH: "arrays do not match the instruction",
    SiteRefusal.ARRAYS_UNEXPECTED: "arrays in a reply to an instruction without arrays",
    SiteRefusal.REPLY_TOO_LARGE: "reply exceeds the site's size bound",
    SiteRefusal.REPLY_MALFORMED: "reply is not a valid answer to the instruction",
    SiteRefusal.DP_BUDGET_EXCEEDED: "privacy budget exhausted",
    SiteRefusal.DP_NOT_APPLICABLE: "update cannot be privatized (non-float arrays)",
    SiteRefusal.SITE_INTERNAL: "site internal error",
    FlowerErrorCode.UNKNOWN: "unknown error",
    FlowerErrorCode.LOAD_CLIENT_APP_EXCEPTION: "ClientApp failed to load",
    FlowerErrorCode.CLIENT_APP_RAISED_EXCEPTION: "ClientApp raised an exception",
    FlowerErrorCode.MESSAGE_UNAVAILABLE: "message unavailable",
    FlowerErrorCode.REPLY_MESSAGE_UNAVAILABLE: "reply unavailable",
    FlowerErrorCode.NODE_UNAVAILABLE: "site unavailable",
    FlowerErrorCode.MOD_FAILED_PRECONDITION: "ClientApp mod refused the message",
    FlowerErrorCode.INVALID_FAB: "invalid app bundle",
    FlowerErrorCode.CLIENT_APP_CRASHED: "ClientApp crashed",
}


def refusal_text(code: int) -> str:
    """The fixed public text for ``code`` (any int; unknown codes get a generic text)."""
    return REFUSAL_TEXT.get(int(code), f"error code {int(code)}")
