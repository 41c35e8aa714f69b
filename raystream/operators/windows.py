"""Window definitions and the windowed-aggregate operator spec.

This module holds the *specs* (frozen, built by the topology API); the runtime logic lives in
``windows_time`` (tumbling, hopping), ``windows_sliding`` and ``windows_session``, with the shared
machinery in ``windows_common``.

Windows and their bounds, as in Kafka Streams:

* ``tumbling(size)``: ``[start, start + size)``, starts aligned to multiples of ``size`` (epoch 0).
* ``hopping(size, advance)``: ``[start, start + size)``, starts aligned to multiples of
  ``advance``; a record belongs to every window that contains it (up to ``ceil(size/advance)``).
* ``sliding(time_difference)``: Kafka Streams' ``SlidingWindows``. Both bounds are *inclusive*:
  ``[start, end]`` with ``end - start = time_difference``. The windows of a key are those that
  start or end on a record: every record at ``t`` has a *left* window ``[t - diff, t]``, and a
  *right* window ``[t + 1, t + 1 + diff]`` when that window contains at least one record. Windows
  are identified by their start (a right and a left window with the same start are one window), so
  each distinct set of records that fits within ``time_difference`` is emitted once. Unlike Kafka
  Streams, windows are not clamped at time 0 (it puts records earlier than ``time_difference`` into
  one ``[0, diff]`` window because its stores cannot hold negative times).
* ``session(gap)``: ``[first, last]`` record times, both inclusive. A record at ``t`` joins every
  open session with ``start - gap <= t <= end + gap``; when it touches several they merge into one.

Time: each operator keeps a watermark ``W = max(event time seen) - out_of_orderness``, raised also
by ``on_watermark`` (the task's idle timeout or other inputs). It is updated record by record in
batch order, *including* the record being processed (Kafka Streams' stream time), so results never
depend on where batch boundaries fall. A window *closes* when ``W >= close time``::

    tumbling/hopping:  close = end + grace                (end exclusive)
    sliding:           close = end + 1 + grace            (end inclusive)
    session:           close = end + gap + 1 + grace      (a session may grow until end + gap)

A record is added to a window only while the window is open; a record that no window accepts is
*late*: it goes, untouched, to port 1. For hopping and sliding windows a record can be too late
for some of its windows only; those ignore it and it is not sent to port 1. A sliding record is
late when ``t + diff + 1 + grace <= W`` (every window that could hold it is closed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from raystream.errors import ConfigError
from raystream.operators.aggregations import Aggregation, normalize_aggs
from raystream.operators.base import Operator, OperatorSpec
from raystream.timeutil import Duration, parse_duration

EMIT_MODES = ("final", "update")


class WindowDef:
    """A window definition (tumbling, hopping, sliding or session)."""

    kind: ClassVar[str] = "window"


@dataclass(frozen=True)
class TumblingWindow(WindowDef):
    """Fixed, non-overlapping windows ``[k * size, (k + 1) * size)``."""

    size_ms: int
    kind = "tumbling"

    def __post_init__(self) -> None:
        _positive(self.size_ms, "tumbling window size")


@dataclass(frozen=True)
class HoppingWindow(WindowDef):
    """Windows of ``size_ms`` starting every ``advance_ms``."""

    size_ms: int
    advance_ms: int
    kind = "hopping"

    def __post_init__(self) -> None:
        _positive(self.size_ms, "hopping window size")
        _positive(self.advance_ms, "hopping window advance")
        if self.advance_ms > self.size_ms:
            raise ConfigError(
                f"hopping window advance ({self.advance_ms} ms) must not exceed its size "
                f"({self.size_ms} ms); records between windows would belong to none"
            )


@dataclass(frozen=True)
class SlidingWindow(WindowDef):
    """Kafka Streams sliding windows: ``[start, start + time_difference_ms]``, inclusive."""

    time_difference_ms: int
    kind = "sliding"

    def __post_init__(self) -> None:
        _positive(self.time_difference_ms, "sliding window time difference")


@dataclass(frozen=True)
class SessionWindow(WindowDef):
    """Sessions of activity separated by more than ``gap_ms`` of inactivity."""

    gap_ms: int
    kind = "session"

    def __post_init__(self) -> None:
        _positive(self.gap_ms, "session window gap")


def _positive(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{what} must be a positive number of ms, got {value!r}")


def tumbling(size: Duration) -> TumblingWindow:
    """Tumbling windows of ``size`` (e.g. ``"1m"``)."""
    return TumblingWindow(parse_duration(size, "tumbling window size", allow_zero=False))


def hopping(size: Duration, advance: Duration) -> HoppingWindow:
    """Hopping windows of ``size`` starting every ``advance`` (``advance <= size``)."""
    return HoppingWindow(
        parse_duration(size, "hopping window size", allow_zero=False),
        parse_duration(advance, "hopping window advance", allow_zero=False),
    )


def sliding(time_difference: Duration) -> SlidingWindow:
    """Kafka Streams sliding windows: records at most ``time_difference`` apart share a window."""
    return SlidingWindow(
        parse_duration(time_difference, "sliding window time difference", allow_zero=False)
    )


def session(gap: Duration) -> SessionWindow:
    """Session windows closed by ``gap`` of inactivity per key."""
    return SessionWindow(parse_duration(gap, "session window gap", allow_zero=False))


@dataclass(frozen=True)
class WindowedAggregateSpec(OperatorSpec):
    """Spec of ``stream.window(w, grace=...).agg(...)``: per key and window, the aggregations.

    Port 0 carries result rows (``key_name``, ``window_start``, ``window_end`` as int64 ms, then
    one column per aggregation; the result batch's keys are the group keys, its timestamps the
    last millisecond inside the window: ``window_end - 1`` for tumbling/hopping, ``window_end``
    for sliding and session windows, whose ends are inclusive). Port 1 carries the late records,
    untouched. ``emit="final"`` gives exactly one row per window, when it closes;
    ``emit="update"`` gives, after each micro-batch, one row per window the batch changed (the
    update granularity is the micro-batch, like Kafka Streams' record cache).
    """

    window: WindowDef
    aggs: tuple[tuple[str, Aggregation], ...]
    grace_ms: int = 0
    out_of_orderness_ms: int = 0
    emit: str = "final"
    key_name: str = "key"
    kind = "window_aggregate"
    ports = 2

    def __post_init__(self) -> None:
        if not isinstance(self.window, WindowDef):
            raise ConfigError(
                f"window must come from tumbling(), hopping(), sliding() or session(), "
                f"got {self.window!r}"
            )
        if self.emit not in EMIT_MODES:
            raise ConfigError(f"emit must be 'final' or 'update', got {self.emit!r}")
        for what, v in (("grace", self.grace_ms), ("out_of_orderness", self.out_of_orderness_ms)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{what} must be a non-negative number of ms, got {v!r}")
        if not isinstance(self.key_name, str) or not self.key_name:
            raise ConfigError(f"key_name must be a non-empty str, got {self.key_name!r}")
        if self.key_name in ("window_start", "window_end"):
            raise ConfigError(f"key_name {self.key_name!r} clashes with a window column")
        object.__setattr__(
            self,
            "aggs",
            normalize_aggs(self.aggs, reserved=(self.key_name, "window_start", "window_end")),
        )
        if isinstance(self.window, SessionWindow):
            for name, agg in self.aggs:
                if not agg.mergeable:
                    raise ConfigError(
                        f"aggregation {name!r} has no merge function, which session windows "
                        "need (sessions merge when a record bridges two): pass "
                        "custom(..., merge=...)"
                    )

    @staticmethod
    def of(
        window: WindowDef,
        aggs: Mapping[str, Aggregation] | Sequence[tuple[str, Aggregation]],
        *,
        grace: Duration = 0,
        out_of_orderness: Duration = 0,
        emit: str = "final",
        key_name: str = "key",
    ) -> WindowedAggregateSpec:
        """Build a spec from user-facing values (durations as ``"10s"`` or ms)."""
        return WindowedAggregateSpec(
            window,
            normalize_aggs(aggs),
            parse_duration(grace, "grace"),
            parse_duration(out_of_orderness, "out_of_orderness"),
            emit,
            key_name,
        )

    def build(self, name: str) -> Operator:
        from raystream.operators.windows_panes import columnar
        from raystream.operators.windows_panes_op import PaneWindowAggregateOperator
        from raystream.operators.windows_session import SessionAggregateOperator
        from raystream.operators.windows_sliding import SlidingAggregateOperator
        from raystream.operators.windows_time import TimeWindowAggregateOperator

        if isinstance(self.window, SessionWindow):
            return SessionAggregateOperator(name, self)
        if isinstance(self.window, SlidingWindow):
            return SlidingAggregateOperator(name, self)
        if columnar([a for _, a in self.aggs]):
            return PaneWindowAggregateOperator(name, self)
        return TimeWindowAggregateOperator(name, self)
