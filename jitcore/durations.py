"""Durations as people type them in chat: ``90m``, ``2h``, ``1h30m``, ``45s``."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+)([dhms])")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
MAX_SECONDS = 366 * 86400


def parse_duration(text: str) -> timedelta:
    """Parse ``1h30m``-style text; raise ValueError naming the accepted forms."""
    value = text.strip().lower()
    if not value.isascii() or not value or _PART.sub("", value) != "" or len(value) > 20:
        shown = text if len(text) <= 20 else text[:19] + "…"
        raise ValueError(
            f"`{shown}` is not a duration; use a number with a unit, like 90m, 2h or 1h30m"
        )
    seconds = sum(int(amount) * _UNITS[unit] for amount, unit in _PART.findall(value))
    if seconds <= 0:
        raise ValueError(f"`{text}` is not a duration longer than zero")
    if seconds > MAX_SECONDS:
        raise ValueError(f"`{text}` is longer than any policy allows (at most 24h)")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """Render a timedelta in the same compact form users type, e.g. ``1h30m``."""
    total = int(delta.total_seconds())
    if total <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, total = divmod(total, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)
