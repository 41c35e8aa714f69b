"""Pacing: hand out generated records at a target rate, for a count or a duration.

Pure Python with an injectable clock, so it is unit-tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from raystream.errors import ConfigError

T = TypeVar("T")

#: How often (records) the progress callback hears about an unpaced run.
_REPORT_EVERY = 1_000


def paced(
    items: Iterable[T],
    *,
    rate: float = 0.0,
    duration: float | None = None,
    progress: Callable[[int, float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[T]:
    """Yield ``items`` at ``rate`` per second (0: as fast as possible), stopping after
    ``duration`` seconds if given (or when ``items`` ends).

    Item ``i`` is released no earlier than ``start + i / rate``, so the average rate is exact
    and a slow consumer catches up in a burst rather than drifting. ``progress(n, elapsed)`` is
    called now and then (at most every 0.1 s when paced, every 1,000 items when not) and once
    at the end.
    """
    if rate < 0:
        raise ConfigError(f"rate must be >= 0 records/s (0: as fast as possible), got {rate}")
    if duration is not None and duration <= 0:
        raise ConfigError(f"duration must be a positive number of seconds, got {duration}")
    start = clock()
    last_report = start
    n = 0
    try:
        for item in items:
            now = clock()
            if duration is not None and now - start >= duration:
                break
            if rate > 0:
                due = start + n / rate
                if due > now:
                    if duration is not None and due - start >= duration:
                        break
                    sleep(due - now)
                    now = due
            yield item
            n += 1
            if progress is not None and (
                (rate > 0 and now - last_report >= 0.1) or (rate == 0 and n % _REPORT_EVERY == 0)
            ):
                progress(n, now - start)
                last_report = now
    finally:
        if progress is not None:
            progress(n, clock() - start)
