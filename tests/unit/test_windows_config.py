"""Duration parsing and window / windowed-aggregate configuration errors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from raystream.errors import ConfigError
from raystream.operators import aggregations as A
from raystream.operators.windows import (
    HoppingWindow,
    SessionWindow,
    SlidingWindow,
    TumblingWindow,
    WindowedAggregateSpec,
    hopping,
    session,
    sliding,
    tumbling,
)
from raystream.timeutil import parse_duration


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (250, 250),
        (0, 0),
        ("500ms", 500),
        ("10s", 10_000),
        ("1m", 60_000),
        ("1h", 3_600_000),
        ("1d", 86_400_000),
        ("1m30s", 90_000),
        (" 2 s ", 2_000),
        ("1.5s", 1_500),
        ("10S", 10_000),
        (timedelta(seconds=3, milliseconds=5), 3_005),
    ],
)
def test_parse_duration(value: Any, ms: int) -> None:
    assert parse_duration(value) == ms


@pytest.mark.parametrize(
    "value",
    [
        "",
        "10",
        "ten seconds",
        "10x",
        "-5s",
        -1,
        1.5,
        True,
        None,
        "1.0005s",
        "s",
        timedelta(microseconds=1),
    ],
)
def test_bad_durations_name_the_field(value: Any) -> None:
    with pytest.raises(ConfigError, match="grace"):
        parse_duration(value, "grace")


def test_zero_can_be_refused() -> None:
    with pytest.raises(ConfigError, match="must be positive"):
        parse_duration("0s", "size", allow_zero=False)


def test_window_constructors_parse_durations() -> None:
    assert tumbling("1m") == TumblingWindow(60_000)
    assert hopping("1m", "10s") == HoppingWindow(60_000, 10_000)
    assert sliding("5s") == SlidingWindow(5_000)
    assert session("30s") == SessionWindow(30_000)


@pytest.mark.parametrize(
    "make",
    [
        lambda: tumbling(0),
        lambda: tumbling("-1s"),
        lambda: hopping("10s", "20s"),
        lambda: hopping("10s", 0),
        lambda: sliding(0),
        lambda: session("0ms"),
        lambda: TumblingWindow(-5),
    ],
)
def test_bad_windows_fail_fast(make: Any) -> None:
    with pytest.raises(ConfigError):
        make()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"emit": "eventually"}, "emit"),
        ({"grace": "-1s"}, "grace"),
        ({"out_of_orderness": "soon"}, "out_of_orderness"),
        ({"key_name": "window_start"}, "key_name"),
        ({"aggs": {"window_end": A.count()}}, "window_end"),
        ({"aggs": {"key": A.count()}}, "key"),
        ({"aggs": {}}, "at least one"),
        ({"window": "1m"}, "window"),
        (
            {"window": session("1m"), "aggs": {"c": A.custom(initial=int, add=lambda a, r: a)}},
            "merge",
        ),
    ],
)
def test_bad_spec_fails_fast_naming_the_problem(kwargs: dict[str, Any], match: str) -> None:
    window = kwargs.pop("window", tumbling("1m"))
    aggs = kwargs.pop("aggs", {"n": A.count()})
    with pytest.raises(ConfigError, match=match):
        WindowedAggregateSpec.of(window, aggs, **kwargs)


def test_spec_is_frozen_and_builds_two_port_operators() -> None:
    spec = WindowedAggregateSpec.of(tumbling("1m"), {"n": A.count()}, grace="10s")
    assert spec.grace_ms == 10_000 and spec.ports == 2 and spec.kind == "window_aggregate"
    with pytest.raises(AttributeError):
        spec.grace_ms = 0  # type: ignore[misc]
    assert spec.build("w").ports == 2
