"""Run-config values travel as strings on the wire; Flower apps expect typed values."""

from __future__ import annotations

__all__ = ["config_value"]


def config_value(text: str) -> str | int | float | bool:
    """``"3"`` → 3, ``"0.5"`` → 0.5, ``"true"`` → True, anything else stays a string."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text
