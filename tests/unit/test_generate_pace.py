"""Pacing of generated records: exact average rate, duration cut-off, progress reports."""

from __future__ import annotations

import pytest

from raystream.errors import ConfigError
from raystream.generate.pace import paced


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s > 0
        self.now += s
        self.slept += s


def test_unpaced_yields_everything_without_sleeping() -> None:
    clock = FakeClock()
    reports: list[int] = []
    out = list(
        paced(range(2_500), progress=lambda n, _: reports.append(n), clock=clock, sleep=clock.sleep)
    )
    assert out == list(range(2_500))
    assert clock.slept == 0
    assert reports == [1_000, 2_000, 2_500]


def test_rate_releases_item_i_at_i_over_rate() -> None:
    clock = FakeClock()
    released = []
    for _ in paced(range(50), rate=10.0, clock=clock, sleep=clock.sleep):
        released.append(round(clock.now - 100.0, 6))
    assert released == [i / 10 for i in range(50)]


def test_duration_stops_a_paced_stream() -> None:
    clock = FakeClock()
    out = list(paced(iter(range(10**9)), rate=100.0, duration=2.0, clock=clock, sleep=clock.sleep))
    assert len(out) == 200
    assert clock.now - 100.0 < 2.0


def test_duration_stops_an_unpaced_stream() -> None:
    clock = FakeClock()

    def items():  # each item costs 1 ms of (fake) time
        i = 0
        while True:
            clock.now += 0.001
            yield i
            i += 1

    out = list(paced(items(), duration=1.0, clock=clock, sleep=clock.sleep))
    assert 990 <= len(out) <= 1_000


def test_bad_arguments_say_what_to_pass() -> None:
    with pytest.raises(ConfigError, match="rate must be >= 0"):
        list(paced([1], rate=-1))
    with pytest.raises(ConfigError, match="duration must be a positive"):
        list(paced([1], duration=0))
