"""Windows and aggregations wired through the topology API and the task runtime (no broker)."""

from __future__ import annotations

import pytest

import raystream as rs
from raystream.errors import TopologyError
from raystream.testing import TopologyTestDriver


def test_tumbling_window_on_the_stream_key_needs_no_repartition() -> None:
    app = rs.App("w", brokers="unused:1")
    (
        app.stream("payments", key="customer", time="ts")
        .group_by("customer")
        .window(rs.tumbling("10s"), grace="2s")
        .agg(n=rs.count(), total=rs.sum("amount"))
        .to("per-customer")
    )
    plan = app.plan()
    assert plan.internal_topics() == {}
    d = TopologyTestDriver(app)
    d.pipe(
        "payments",
        [
            {"customer": "a", "amount": 5, "ts": 1_000},
            {"customer": "b", "amount": 7, "ts": 2_000},
            {"customer": "a", "amount": 1, "ts": 9_999},
            {"customer": "a", "amount": 100, "ts": 11_500},  # window [10s, 20s)
        ],
    )
    assert d.read("per-customer") == []  # watermark 11.5s < 10s end + 2s grace: still open
    # The watermark reaches 12.6s, past [0, 10s) + 2s grace: that window is final now.
    d.pipe("payments", [{"customer": "b", "amount": 1, "ts": 12_600}])
    rows = sorted(d.read_values("per-customer"), key=lambda r: r["customer"])
    assert rows == [
        {"customer": "a", "window_start": 0, "window_end": 10_000, "n": 2, "total": 6},
        {"customer": "b", "window_start": 0, "window_end": 10_000, "n": 1, "total": 7},
    ]
    # A record for the closed window is late: it goes to the late topic, untouched, with why.
    d.pipe("payments", [{"customer": "a", "amount": 3, "ts": 500}])
    late = d.read("w.late")
    assert [r.json() for r in late] == [{"customer": "a", "amount": 3, "ts": 500}]
    assert "window closed" in late[0].headers["rs.late.reason"]
    assert late[0].headers["rs.operator"].startswith("window_aggregate")
    d.finish()
    rest = sorted(d.read_values("per-customer"), key=lambda r: r["customer"])
    assert [(r["customer"], r["n"], r["total"]) for r in rest] == [("a", 1, 100), ("b", 1, 1)]


def test_group_by_another_field_repartitions_through_an_internal_topic() -> None:
    app = rs.App("rp", brokers="unused:1")
    (
        app.stream("payments", key="customer", time="ts")
        .group_by("merchant")
        .agg(n=rs.count(), spent=rs.sum("amount"))
        .to("per-merchant")
    )
    plan = app.plan()
    (topic,) = plan.internal_topics()
    assert topic.startswith("rp-key_by-") and topic.endswith("-repartition")
    assert plan.resolve_partitions({"payments": 6})[topic] == 6
    d = TopologyTestDriver(app, partitions=3)
    rows = [
        {"customer": f"c{i}", "merchant": f"m{i % 4}", "amount": i, "ts": 1000 + i}
        for i in range(40)
    ]
    for p in range(3):
        d.pipe("payments", rows[p::3], keys=[r["customer"] for r in rows[p::3]], partition=p)
    out = d.read("per-merchant")
    assert all(r.key == r.json()["merchant"].encode() for r in out)  # re-keyed by merchant
    latest: dict[str, dict] = {}
    for r in out:
        latest[r.json()["merchant"]] = r.json()
    assert {m: (r["n"], r["spent"]) for m, r in latest.items()} == {
        f"m{k}": (10, sum(i for i in range(40) if i % 4 == k)) for k in range(4)
    }
    # Each merchant is aggregated by exactly one task: the repartition put its records together.
    tasks_of: dict[str, set[str]] = {}
    for r in out:
        tasks_of.setdefault(r.json()["merchant"], set()).add(r.headers["rs.task"])
    assert all(len(t) == 1 for t in tasks_of.values())


def test_session_windows_and_update_mode() -> None:
    app = rs.App("s", brokers="unused:1")
    (
        app.stream("clicks", key="user", time="ts")
        .group_by()
        .window(rs.session("5s"))
        .agg(emit="update", clicks=rs.count())
        .to("sessions")
    )
    d = TopologyTestDriver(app)
    d.pipe("clicks", [{"user": "u", "ts": 0}, {"user": "u", "ts": 3000}])
    assert d.read_values("sessions") == [
        {"user": "u", "window_start": 0, "window_end": 3000, "clicks": 2}
    ]
    d.pipe("clicks", [{"user": "u", "ts": 7000}])
    assert d.read_values("sessions") == [
        {"user": "u", "window_start": 0, "window_end": 7000, "clicks": 3}
    ]


def test_agg_needs_an_aggregation() -> None:
    app = rs.App("x", brokers="unused:1")
    g = app.stream("a", key="k").group_by()
    with pytest.raises(TopologyError, match="at least one aggregation"):
        g.agg()
    with pytest.raises(TopologyError, match="at least one aggregation"):
        g.window(rs.tumbling(1000)).agg()
    with pytest.raises(rs.ConfigError, match="emit"):
        g.window(rs.tumbling(1000)).agg(emit="sometimes", n=rs.count())


def _idle_app(idle_timeout_ms: int | None) -> rs.App:
    app = rs.App("idle", brokers="unused:1", idle_timeout_ms=idle_timeout_ms)
    (
        app.stream("t", key="k", time="ts")
        .group_by()
        .window(rs.tumbling(1_000))
        .agg(n=rs.count())
        .to("out")
    )
    return app


def test_an_idle_partition_closes_its_windows_after_the_idle_timeout() -> None:
    d = TopologyTestDriver(_idle_app(5_000))
    d.pipe("t", [{"k": "a", "ts": 100}, {"k": "a", "ts": 200}])
    d.advance_time(4_999)
    assert d.read_values("out") == []  # not idle long enough
    d.advance_time(1)  # idle 5s: event time is taken to have moved on 5s from 200
    assert d.read_values("out") == [{"k": "a", "window_start": 0, "window_end": 1_000, "n": 2}]


def test_without_an_idle_timeout_windows_wait_for_event_time() -> None:
    d = TopologyTestDriver(_idle_app(None))
    d.pipe("t", [{"k": "a", "ts": 100}])
    d.advance_time(3_600_000)
    assert d.read_values("out") == []
    with pytest.raises(rs.ConfigError, match="idle_timeout_ms"):
        _idle_app(0)
