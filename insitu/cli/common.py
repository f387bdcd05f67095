"""What every insitu command line shares: durations, the client profile, and the one
place where errors become exit codes."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from insitu.errors import ErrorCode, InsituError
from insitu.sdk.client import Client
from insitu.sdk.errors import InsituRpcError
from insitu.settings import load_settings

__all__ = ["ClientSettings", "cli_errors", "connect", "err_console", "parse_duration"]

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True)
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

EXIT_INPUT = 2
EXIT_REFUSED = 3
EXIT_FAILED = 1


def parse_duration(text: str) -> int:
    """'90s', '30m', '1h', '7d' → seconds."""
    m = _DURATION.fullmatch(text.strip())
    if not m or int(m.group(1)) <= 0:
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, f"invalid duration {text!r}: use e.g. 90s, 30m, 1h, 7d"
        )
    return int(m.group(1)) * _UNITS[m.group(2)]


def cli_errors(fn: F) -> F:
    """Turn insitu errors into a one-line message and a non-zero exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InsituRpcError as e:
            err_console.print(f"[red]error:[/red] {e.code.name}: {e.details}")
            sys.exit(EXIT_REFUSED)
        except InsituError as e:
            err_console.print(f"[red]error:[/red] {e}")
            sys.exit(EXIT_INPUT)

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class ClientSettings:
    """Where the CLI's client commands connect, and as whom."""

    coordinator: str = "127.0.0.1:7443"
    identity: Path = Path("~/.config/insitu/identity")
    trust_domain: str = "demo.insitu"


def connect(
    coordinator: str | None, identity: Path | None, trust_domain: str | None, config: Path | None
) -> Client:
    s = load_settings(
        ClientSettings,
        "client",
        file=config,
        overrides={"coordinator": coordinator, "identity": identity, "trust_domain": trust_domain},
    )
    ident = s.identity.expanduser()
    for name in ("cert.pem", "key.pem", "ca.pem"):
        if not (ident / name).exists():
            raise InsituError(ErrorCode.CONFIG, f"identity folder {ident} lacks {name}")
    return Client(
        s.coordinator,
        ident / "cert.pem",
        ident / "key.pem",
        ident / "ca.pem",
        server_name=f"coordinator.{s.trust_domain}",
    )
