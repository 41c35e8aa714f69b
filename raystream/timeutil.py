"""Durations in configuration: ``"500ms"``, ``"10s"``, ``"1m"``, ``"1h"``, ``"1d"``, ``"1m30s"``.

Every duration in raystream is an ``int`` number of milliseconds once parsed. Users may write a
plain ``int`` (milliseconds), a ``datetime.timedelta`` or a string of one or more
``<number><unit>`` parts (units ``ms``, ``s``, ``m``, ``h``, ``d``; fractions allowed when they
give whole milliseconds, e.g. ``"1.5s"``).
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation

from raystream.errors import ConfigError

Duration = int | str | timedelta

_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d)\s*)+")


def parse_duration(value: object, field: str = "duration", *, allow_zero: bool = True) -> int:
    """Milliseconds in ``value``; raise :class:`ConfigError` naming ``field`` when it is invalid.

    Negative durations are always rejected; zero is rejected when ``allow_zero`` is false.
    """
    ms = _to_ms(value, field)
    if ms < 0:
        raise ConfigError(f"{field} must not be negative, got {value!r}")
    if ms == 0 and not allow_zero:
        raise ConfigError(f"{field} must be positive, got {value!r}; give e.g. '10s' or 500 (ms)")
    return ms


def _to_ms(value: object, field: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{field} must be a duration such as '10s' or 500 (ms), got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, timedelta):
        micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
        if micros % 1_000:
            raise ConfigError(f"{field} must be a whole number of milliseconds, got {value!r}")
        return micros // 1_000
    if isinstance(value, str):
        text = value.strip().lower()
        if text.startswith("-"):
            raise ConfigError(f"{field} must not be negative, got {value!r}")
        if not text or not _WHOLE.fullmatch(text):
            raise ConfigError(
                f"{field} must be a duration such as '500ms', '10s', '1m', '1h', '1d' or "
                f"'1m30s' (an int means milliseconds), got {value!r}"
            )
        total = Decimal(0)
        try:
            for number, unit in _PART.findall(text):
                total += Decimal(number) * _UNIT_MS[unit]
        except InvalidOperation as exc:  # pragma: no cover - the regex only admits decimals
            raise ConfigError(f"{field}: cannot read {value!r} as a duration") from exc
        if total != total.to_integral_value():
            raise ConfigError(f"{field} must be a whole number of milliseconds, got {value!r}")
        return int(total)
    raise ConfigError(
        f"{field} must be an int (ms), a str such as '10s' or a timedelta, "
        f"got {type(value).__name__}"
    )
